//! The knowledge base: a user's documents in folders (ltree paths of generated
//! labels), immutable versions, `[[Title]]` and manual links with backlinks,
//! ingestion of storage objects (PDF, DOCX, HTML, Markdown, text) as jobs with a
//! visible status, structure-following chunks with citations pinned to a
//! version, page and span, vectors from the [`crate::embed::Embedder`], and
//! search you can explain: BM25 kept in PostgreSQL, vector, and their weighted
//! reciprocal-rank fusion with every signal's score on each result.

pub mod chunk;
pub mod db;
pub mod extract;
pub mod ingest;
mod routes;
pub mod service;
pub mod types;

use std::path::PathBuf;
use std::sync::Arc;

pub use routes::routes;

use crate::config::KnowledgeConfig;
use crate::embed::Embedder;

/// The state of the knowledge area.
#[derive(Debug, Clone)]
pub struct Knowledge {
    /// The database pool.
    pub pool: sqlx::PgPool,
    /// The active embedder.
    pub embedder: Embedder,
    /// Storage (objects are read from it for ingestion).
    pub storage: Arc<crate::storage::Storage>,
    /// Chunking and ingestion settings.
    pub config: KnowledgeConfig,
    /// The program whose `extract` command extracts text in a child process.
    pub extractor: PathBuf,
}

impl Knowledge {
    /// The knowledge state from the configuration (loading the embedder).
    pub fn open(
        config: &crate::config::Config,
        pool: sqlx::PgPool,
        storage: Arc<crate::storage::Storage>,
    ) -> Result<Knowledge, crate::embed::EmbedError> {
        let extractor = config
            .knowledge
            .extractor
            .clone()
            .unwrap_or_else(|| std::env::current_exe().unwrap_or_else(|_| PathBuf::from("carmenta")));
        Ok(Knowledge {
            pool,
            embedder: Embedder::open(&config.knowledge.embedder)?,
            storage,
            config: config.knowledge.clone(),
            extractor,
        })
    }
}
