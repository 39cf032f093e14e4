//! Memory: what the assistant knows about a user. Memories (profile slots, facts,
//! preferences, instructions) carry provenance (conversation, messages and the
//! quoted words, or the app, or the user), validity (`valid_from`/`valid_to`), the
//! memory that superseded them, and a history row for every change. Extraction
//! from conversations runs as jobs through any OpenAI-compatible model
//! (`extract.rs`, `parse.rs`, `jobs.rs`), never storing secrets (`secrets.rs`);
//! search fuses BM25, vectors and recency (`service.rs`); context assembly packs
//! profile, memories, knowledge and recent messages into a token budget
//! (`context.rs`). Statements in `db.rs`, shapes in `types.rs`, handlers in
//! `routes.rs`.

pub mod context;
pub mod db;
pub mod extract;
pub mod jobs;
pub mod parse;
mod routes;
pub mod secrets;
pub mod service;
pub mod types;

use std::sync::Arc;

pub use routes::routes;

use crate::config::MemoryConfig;
use crate::embed::Embedder;
use crate::llm::Llm;

/// The state of the memory area.
#[derive(Debug, Clone)]
pub struct Memory {
    /// The database pool.
    pub pool: sqlx::PgPool,
    /// The embedder (the knowledge base's).
    pub embedder: Embedder,
    /// The extraction model, if configured.
    pub llm: Option<Llm>,
    /// Settings.
    pub config: MemoryConfig,
    /// The knowledge base (for context assembly).
    pub knowledge: Arc<crate::knowledge::Knowledge>,
}

impl Memory {
    /// The memory state from the configuration, sharing the knowledge base's embedder.
    pub fn open(
        config: &crate::config::Config,
        pool: sqlx::PgPool,
        knowledge: Arc<crate::knowledge::Knowledge>,
    ) -> Memory {
        Memory {
            pool,
            embedder: knowledge.embedder.clone(),
            llm: config.memory.llm.as_ref().map(Llm::new),
            config: config.memory.clone(),
            knowledge,
        }
    }
}
