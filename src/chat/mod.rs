//! Chat: conversations and messages stored losslessly as AI SDK `UIMessage`s
//! (`parts` and `metadata` verbatim), idempotent appends, cursor paging in both
//! directions, truncation for edits, feedback, and full-text search.

pub mod db;
mod routes;
pub mod service;
pub mod types;

pub use routes::routes;
