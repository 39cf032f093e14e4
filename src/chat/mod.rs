//! Chat: conversations and messages stored losslessly as AI SDK `UIMessage`s
//! (`parts` and `metadata` verbatim), idempotent appends, cursor paging in both
//! directions, truncation for edits, feedback, and full-text search.

pub mod db;
mod routes;
pub mod service;
pub mod types;

pub use routes::routes;

/// The state of chat: the pool and the message size limit.
#[derive(Debug, Clone)]
pub struct Chat {
    /// The database pool.
    pub pool: sqlx::PgPool,
    /// Largest serialised message (`CARMENTA_CHAT_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// The embedder (vectors of messages for hybrid recall).
    pub embedder: crate::embed::Embedder,
}
