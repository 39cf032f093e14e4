//! Ingestion of storage objects as jobs (`knowledge.ingest`): read the object,
//! detect its format, extract its text in the sandboxed child process, chunk it
//! into a new document version, and compute vectors only for chunks whose hash is
//! new. Every step is visible in the file's status (`queued`, `extracting`,
//! `chunking`, `embedding`, `ready`, `failed` with a code and reason, `removed`).
//! A database trigger queues the job whenever a watched object changes or goes,
//! whatever path changed it. Also the `knowledge.embed` job: vectors for a
//! document written through the API with a remote embedder, and the background
//! re-embedding after a model change.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Knowledge;
use super::db::{self, FileUpdate};
use super::extract::{self, ExtractError, Limits};
use super::service::{self, VersionInput};
use crate::jobs::{self, Attempt, Job, JobError};

/// Ingest (or re-ingest, or remove) one watched file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ingest {
    /// The `kb_files` row.
    pub file_id: Uuid,
}

impl Job for Ingest {
    const KIND: &'static str = "knowledge.ingest";
    const MAX_ATTEMPTS: i32 = 3;
}

/// Compute missing vectors: of one document, or of every chunk (model change).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Embed {
    /// The document; None for all.
    pub document_id: Option<Uuid>,
}

impl Job for Embed {
    const KIND: &'static str = "knowledge.embed";
    const MAX_ATTEMPTS: i32 = 8;
}

/// Queues ingestion of a file in the caller's transaction.
pub async fn queue(conn: &mut sqlx::PgConnection, file: Uuid) -> Result<(), sqlx::Error> {
    jobs::enqueue(
        conn,
        &Ingest { file_id: file },
        jobs::Options { unique_key: Some(file.to_string()), ..Default::default() },
    )
    .await?;
    Ok(())
}

/// Queues ingestion even if the object has not changed.
pub async fn force(conn: &mut sqlx::PgConnection, file: Uuid) -> Result<(), sqlx::Error> {
    db::update_file(conn, file, &FileUpdate { status: "queued", ..Default::default() }).await?;
    db::forget_ingested(conn, file).await?;
    queue(conn, file).await
}

async fn set(k: &Knowledge, file: Uuid, u: FileUpdate<'_>) -> Result<(), sqlx::Error> {
    let mut conn = k.pool.acquire().await?;
    db::update_file(&mut conn, file, &u).await
}

async fn fail(k: &Knowledge, file: Uuid, e: &ExtractError) -> Result<(), JobError> {
    tracing::info!(file = %file, code = %e.code, "ingestion failed");
    set(
        k,
        file,
        FileUpdate { status: "failed", progress: 1.0, error: Some((&e.code, &e.message)), ..Default::default() },
    )
    .await?;
    Ok(())
}

/// The job: brings the file's document up to date with its object.
pub async fn run(k: &Knowledge, job: Ingest, attempt: Attempt) -> Result<(), JobError> {
    match ingest(k, job.file_id).await {
        Err(e) if attempt.number >= attempt.max => {
            // The last attempt: the file must not stay in a working state.
            let err = ExtractError::new("internal", format!("ingestion failed after {} attempts: {e}", attempt.number));
            fail(k, job.file_id, &err).await?;
            Err(e)
        }
        other => other,
    }
}

async fn ingest(k: &Knowledge, file_id: Uuid) -> Result<(), JobError> {
    let Some(file) = db::file(&k.pool, None, file_id).await? else { return Ok(()) };
    let space = file.space_id;
    let object = match service::space(k, space).await? {
        Some(s) => service::source_object(k, s, &file.bucket_id, &file.object_name).await?,
        None => None,
    };
    let Some(object) = object else {
        // The object is gone (or no longer the space's to read): its document goes too.
        let mut tx = k.pool.begin().await?;
        db::lock_space(&mut tx, space).await?;
        if let Some(doc) = file.document_id {
            db::apply_stats(&mut tx, space, &[doc], -1).await?;
            db::delete_document(&mut tx, space, doc).await?;
        }
        db::file_removed(&mut tx, file_id).await?;
        tx.commit().await?;
        return Ok(());
    };
    if file.ingested_version == Some(object.version) && file.status == "ready" {
        return Ok(());
    }
    if object.size as u64 > k.config.max_file_size {
        let e = ExtractError::new(
            "too_large",
            format!("the file is {} bytes; at most {} are ingested", object.size, k.config.max_file_size),
        );
        return fail(k, file_id, &e).await;
    }
    set(k, file_id, FileUpdate { status: "extracting", progress: 0.1, ..Default::default() }).await?;
    let bytes = k
        .storage
        .blobs
        .read_all(&crate::storage::blobs::Blobs::blob_path(object.version))
        .await
        .map_err(JobError::failed)?;
    let format = match extract::detect(&object.content_type, &object.name, &bytes) {
        Ok(f) => f,
        Err(e) => return fail(k, file_id, &e).await,
    };
    let limits = Limits { max_pages: k.config.max_pages, max_text_bytes: 5 * 1024 * 1024 };
    let extracted = match extract::isolated::extract(
        &k.extractor,
        format,
        bytes.to_vec(),
        limits,
        k.config.extract_timeout,
    )
    .await
    {
        Ok(x) => x,
        Err(e) => {
            let mut u = FileUpdate { status: "failed", progress: 1.0, ..Default::default() };
            u.format = Some(format.as_str());
            u.error = Some((&e.code, &e.message));
            set(k, file_id, u).await?;
            return Ok(());
        }
    };
    let pages = (!extracted.page_starts.is_empty()).then_some(extracted.page_starts.len() as i32);
    set(
        k,
        file_id,
        FileUpdate { status: "chunking", progress: 0.4, format: Some(format.as_str()), pages, ..Default::default() },
    )
    .await?;
    let name = object.name.rsplit('/').next().unwrap_or(&object.name).to_string();
    let title: String = extracted.title.clone().unwrap_or(name).chars().take(500).collect();

    let mut tx = k.pool.begin().await?;
    db::lock_space(&mut tx, space).await?;
    let existing = match file.document_id {
        Some(d) => db::lock_document(&mut tx, space, d).await?.map(|v| (d, v)),
        None => None,
    };
    let input = VersionInput {
        title: &title,
        body: &extracted.body,
        page_starts: &extracted.page_starts,
        source_version: Some(object.version),
    };
    let (doc, written) = match existing {
        Some((doc, current)) => (doc, service::write_version(&mut tx, k, space, doc, current + 1, &input).await?),
        None => {
            let doc = Uuid::now_v7();
            db::insert_document(
                &mut tx,
                &db::NewDocument {
                    id: doc,
                    space,
                    folder_id: file.folder_id,
                    title: &title,
                    tags: &[],
                    metadata: &serde_json::json!({}),
                    source_kind: "upload",
                    source_url: None,
                    source_bucket: Some(&file.bucket_id),
                    source_object: Some(&file.object_name),
                },
            )
            .await?;
            (doc, service::write_version(&mut tx, k, space, doc, 1, &input).await?)
        }
    };
    let chunks = written.chunks;
    let u = FileUpdate {
        status: "embedding",
        progress: 0.6,
        chunks: Some(chunks as i32),
        document_id: Some(doc),
        ..Default::default()
    };
    db::update_file(&mut tx, file_id, &u).await?;
    tx.commit().await?;

    let total = chunks.max(1);
    let pool = k.pool.clone();
    let embedded = service::embed_pending(k, Some(doc), |done| {
        let pool = pool.clone();
        let p = 0.6 + 0.4 * (done.min(total) as f32 / total as f32);
        // Progress is advisory: a lost update is replaced by the next.
        tokio::spawn(async move {
            if let Ok(mut c) = pool.acquire().await {
                let _ = db::set_progress(&mut c, file_id, p.min(0.99)).await;
            }
        });
    })
    .await
    .map_err(JobError::failed)?;
    let mut conn = k.pool.acquire().await?;
    db::update_file(
        &mut conn,
        file_id,
        &FileUpdate {
            status: "ready",
            progress: 1.0,
            chunks_embedded: Some((written.embedded + embedded) as i32),
            ingested_version: Some(object.version),
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// The embed job.
pub async fn embed(k: &Knowledge, job: Embed) -> Result<(), JobError> {
    let n = service::embed_pending(k, job.document_id, |_| {}).await.map_err(JobError::failed)?;
    if job.document_id.is_none() && n > 0 {
        tracing::info!(chunks = n, model = k.embedder.model(), "re-embedded chunks for the active model");
    }
    Ok(())
}

/// At start: the vector index of the active model exists, and chunks embedded
/// by another model (or not at all) are queued for re-embedding.
pub async fn prepare(k: &Knowledge) -> Result<(), sqlx::Error> {
    db::ensure_vector_index(&k.pool, k.embedder.model(), k.embedder.dim()).await?;
    if crate::db::shared::any_stale(&k.pool, "kb_chunks", k.embedder.model()).await? {
        service::queue_embed(k, None).await?;
    }
    Ok(())
}
