//! Memory's jobs: `memory.extract` (one conversation's unread messages),
//! `memory.embed` (vectors for a user's messages and memories; queued by a trigger
//! on every new or changed message) and `memory.scan` (periodic: conversations
//! with enough new messages, or quiet long enough, get an extraction).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Memory as State;
use super::db;
use super::extract::{self, RunResult};
use crate::jobs::{self, Attempt, Job, JobError};

/// Extract memories from a conversation's unread messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Extract {
    /// The conversation.
    pub conversation_id: Uuid,
}

impl Job for Extract {
    const KIND: &'static str = "memory.extract";
    const MAX_ATTEMPTS: i32 = 3;
}

/// Compute missing vectors of a user's messages and memories (None: every user's
/// memories, after a model change).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Embed {
    /// The user.
    pub user_id: Option<Uuid>,
}

impl Job for Embed {
    const KIND: &'static str = "memory.embed";
    const MAX_ATTEMPTS: i32 = 8;
}

/// Find conversations due for extraction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scan {}

impl Job for Scan {
    const KIND: &'static str = "memory.scan";
    const MAX_ATTEMPTS: i32 = 1;
}

/// Queues an extraction of a conversation (one queued per conversation).
pub async fn queue_extract(conn: &mut sqlx::PgConnection, conversation: Uuid) -> Result<Uuid, sqlx::Error> {
    let (id, _) = jobs::enqueue(
        conn,
        &Extract { conversation_id: conversation },
        jobs::Options { unique_key: Some(conversation.to_string()), ..Default::default() },
    )
    .await?;
    Ok(id)
}

/// Queues the embedding of a user's new messages and memories.
pub async fn queue_embed(conn: &mut sqlx::PgConnection, user: Uuid) -> Result<(), sqlx::Error> {
    jobs::enqueue(
        conn,
        &Embed { user_id: Some(user) },
        jobs::Options { unique_key: Some(user.to_string()), ..Default::default() },
    )
    .await?;
    Ok(())
}

/// The extraction job.
pub async fn run_extract(m: &State, job: Extract, attempt: Attempt) -> Result<(), JobError> {
    let Some(llm) = m.llm.as_ref() else {
        return Ok(());
    };
    let last = attempt.number >= attempt.max;
    let outcome = match extract::run(m, llm, job.conversation_id, attempt.number, last).await {
        Ok(o) => o,
        Err(e) => {
            // Visible on the run, not only in the job's error.
            let message = format!("storing the run failed: {e}");
            db::close_running(&m.pool, job.conversation_id, "internal", &message).await?;
            return Err(e.into());
        }
    };
    match outcome {
        RunResult::Nothing | RunResult::Done(_) => Ok(()),
        RunResult::Failed(f) if f.retry && !last => Err(JobError::Failed(format!("{}: {}", f.code, f.message))),
        // Recorded on the extraction row; the job itself is finished.
        RunResult::Failed(_) => Ok(()),
    }
}

/// Texts embedded per batch.
const BATCH: i64 = 256;

/// The embedding job: a user's messages and memories without vectors of the active model.
pub async fn run_embed(m: &State, job: Embed) -> Result<(), JobError> {
    let model = m.embedder.model().to_string();
    if let Some(user) = job.user_id {
        loop {
            // One batch at a time per user (a running job and its queued successor
            // may run together; updating the same rows in two orders deadlocks).
            let mut tx = m.pool.begin().await?;
            db::lock_embedding(&mut tx, user).await?;
            let rows = db::unembedded_messages(&mut tx, user, BATCH).await?;
            if rows.is_empty() {
                break;
            }
            let (ids, texts): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
            let vectors = m.embedder.embed(texts).await.map_err(JobError::failed)?;
            let vectors = vectors.into_iter().map(pgvector::Vector::from).collect();
            db::set_message_vectors(&mut tx, user, &ids, vectors, &model).await?;
            tx.commit().await?;
            if (ids.len() as i64) < BATCH {
                break;
            }
        }
    }
    loop {
        let rows = db::unembedded(&m.pool, job.user_id, &model, BATCH).await?;
        if rows.is_empty() {
            break;
        }
        let n = rows.len() as i64;
        let (ids, texts): (Vec<Uuid>, Vec<String>) = rows.into_iter().unzip();
        let vectors = m.embedder.embed(texts).await.map_err(JobError::failed)?;
        db::set_vectors(&m.pool, &ids, vectors.into_iter().map(pgvector::Vector::from).collect(), &model).await?;
        if n < BATCH {
            break;
        }
    }
    Ok(())
}

/// The scan: queues extractions of due conversations.
pub async fn run_scan(m: &State) -> Result<(), JobError> {
    if m.llm.is_none() {
        return Ok(());
    }
    let idle_before = OffsetDateTime::now_utc() - m.config.idle;
    let due = db::due(&m.pool, m.config.extract_after as i32, idle_before, 500).await?;
    if due.is_empty() {
        return Ok(());
    }
    let mut tx = m.pool.begin().await?;
    for c in due {
        queue_extract(&mut tx, c).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// At start: the HNSW index over memories of the active model exists, and memories
/// without its vectors are queued for embedding.
pub async fn prepare(m: &State) -> Result<(), sqlx::Error> {
    crate::db::shared::ensure_hnsw(&m.pool, "memories", m.embedder.model(), m.embedder.dim()).await?;
    if crate::db::shared::any_stale(&m.pool, "memories", m.embedder.model()).await? {
        let mut conn = m.pool.acquire().await?;
        jobs::enqueue(
            &mut conn,
            &Embed { user_id: None },
            jobs::Options { unique_key: Some("all".into()), ..Default::default() },
        )
        .await?;
    }
    Ok(())
}
