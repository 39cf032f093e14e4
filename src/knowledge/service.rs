//! The knowledge base's operations: folders (create, rename, move and delete
//! with their subtree), documents and versions (a replace writes a new version,
//! its chunks and BM25 statistics in one transaction), `[[Title]]` and manual
//! links, vectors (reused by chunk hash, computed for the rest), files fed from
//! storage, and search (BM25, vector and their weighted reciprocal-rank fusion).

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Knowledge;
use super::chunk::{ChunkConfig, chunk};
use super::db::{self, FolderRow, NewChunk};
use super::types::*;
use crate::error::ApiError;
use crate::pagination;
use crate::rank::Lists;

/// Fusion weights (full-text, vector) used unless a request sets its own: chosen
/// on LoCoMo turn retrieval (`cargo bench --bench knowledge`, see benches/README.md).
pub const DEFAULT_WEIGHTS: [f64; 2] = [1.0, 0.1];
/// The reciprocal-rank constant.
pub const RRF_K: f64 = crate::rank::RRF_K;
/// Candidates taken from each list before fusion.
const CANDIDATES: i64 = 100;
/// Deepest result a cursor may reach.
const MAX_DEPTH: i64 = 200;
/// Users with at most this many current chunks (or any filtered search) get an
/// exact vector scan; above it, the HNSW index with an iterative scan.
pub const EXACT_SCAN_LIMIT: i64 = 50_000;

fn folder_not_found() -> ApiError {
    ApiError::not_found("folder not found")
}

fn document_not_found() -> ApiError {
    ApiError::not_found("document not found")
}

fn sha256_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(p.as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// A generated ltree label: `f` and 12 base-36 characters (PostgreSQL 15 labels
/// allow only `[A-Za-z0-9_]`, so labels never come from names).
fn new_label() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = String::from("f");
    for _ in 0..12 {
        s.push(ALPHABET[rand::random_range(0..ALPHABET.len())] as char);
    }
    s
}

fn check_name(field: &'static str, name: &str, max: usize) -> Result<String, ApiError> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > max || n.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            field,
            format!("must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(n.to_string())
}

fn check_tags(tags: &[String]) -> Result<Vec<String>, ApiError> {
    if tags.len() > 50 {
        return Err(ApiError::unprocessable("invalid_tags", "at most 50 tags"));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        let t = check_name("invalid_tags", t, 100)?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

fn folder_view(r: FolderRow) -> Folder {
    Folder {
        id: r.id,
        name: r.name,
        parent_id: r.parent_id,
        depth: r.depth,
        org_id: r.org_id,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn summary(r: db::DocumentRow) -> (DocumentSummary, serde_json::Value) {
    (
        DocumentSummary {
            id: r.id,
            title: r.title,
            folder_id: r.folder_id,
            tags: r.tags,
            source: Source {
                kind: r.source_kind,
                url: r.source_url,
                bucket: r.source_bucket,
                object: r.source_object,
                object_version: r.source_version,
            },
            version: r.current_version,
            content_hash: r.content_hash,
            org_id: r.org_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        },
        r.metadata,
    )
}

pub use crate::auth::shared::Need;
pub use db::Held;

/// The knowledge space a request works in: the caller's own, or an organization's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// The space's id (the user's or the organization's).
    pub id: Uuid,
    /// The organization, for a shared space.
    pub org: Option<Uuid>,
}

impl Space {
    /// A user's own space (same id as the user).
    pub fn own(user: Uuid) -> Space {
        Space { id: user, org: None }
    }
}

fn missing(held: Held) -> ApiError {
    match held {
        Held::Folder => folder_not_found(),
        Held::Document => document_not_found(),
        Held::File => ApiError::not_found("file not found"),
    }
}

/// Whether `user` may do `need` in space `s`: their own, or an organization's in
/// which their role has `org:knowledge:read`/`write` (asked on every call). Anyone
/// else gets `gone()`, the 404 of what was asked for.
async fn enter(
    k: &Knowledge,
    user: Uuid,
    s: db::SpaceRow,
    need: Need,
    gone: impl FnOnce() -> ApiError,
) -> Result<Space, ApiError> {
    match (s.user_id, s.org_id) {
        (Some(owner), _) if owner == user => Ok(Space { id: s.id, org: None }),
        (_, Some(org)) => {
            crate::auth::shared::grant(&k.pool, org, user, "knowledge", need).await?.answer(gone)?;
            Ok(Space { id: s.id, org: Some(org) })
        }
        _ => Err(gone()),
    }
}

/// The space holding folder, document or file `id`, if `user` may do `need` there.
pub async fn space_of(k: &Knowledge, user: Uuid, held: Held, id: Uuid, need: Need) -> Result<Space, ApiError> {
    let s = db::space_of(&k.pool, held, id).await?.ok_or_else(|| missing(held))?;
    enter(k, user, s, need, || missing(held)).await
}

/// The caller's own space, or organization `org`'s if `user` may do `need` there
/// (a non-member gets 404 `organization not found`).
pub async fn space_for(k: &Knowledge, user: Uuid, org: Option<Uuid>, need: Need) -> Result<Space, ApiError> {
    let gone = || ApiError::not_found("organization not found");
    match org {
        None => Ok(Space::own(user)),
        Some(org) => {
            let s = db::space(&k.pool, org).await?.ok_or_else(gone)?;
            enter(k, user, s, need, gone).await
        }
    }
}

/// Where something new goes: organization `org`'s space when named, else the space
/// of folder `within`, else the caller's own; `user` must be allowed to write there.
pub async fn space_for_new(
    k: &Knowledge,
    user: Uuid,
    org: Option<Uuid>,
    within: Option<Uuid>,
) -> Result<Space, ApiError> {
    match (org, within) {
        (None, Some(folder)) => space_of(k, user, Held::Folder, folder, Need::Write).await,
        _ => space_for(k, user, org, Need::Write).await,
    }
}

/// The storage object space `space` may ingest: in a user's own space an object the
/// user owns outside organizations' buckets (what a team shares does not flow into
/// a member's own knowledge, where it would outlive their membership); in an
/// organization's, any object in one of that organization's buckets.
pub async fn source_object(
    k: &Knowledge,
    space: Space,
    bucket: &str,
    name: &str,
) -> Result<Option<crate::storage::db::ObjectRow>, sqlx::Error> {
    let Some(b) = crate::storage::db::bucket(&k.pool, bucket).await? else { return Ok(None) };
    if b.org_id != space.org {
        return Ok(None);
    }
    let owner = if space.org.is_some() { None } else { Some(space.id) };
    crate::storage::db::object(&k.pool, bucket, name, owner).await
}

/// The space a stored row names (the ingestion job acts for it).
pub async fn space(k: &Knowledge, id: Uuid) -> Result<Option<Space>, sqlx::Error> {
    Ok(db::space(&k.pool, id).await?.map(|s| Space { id: s.id, org: s.org_id }))
}

async fn crumbs(k: &Knowledge, space: Uuid, path: &str) -> Result<Vec<Crumb>, ApiError> {
    Ok(db::breadcrumbs(&k.pool, space, path).await?.into_iter().map(|(id, name)| Crumb { id, name }).collect())
}

/// The space's folder, or 404.
async fn own_folder(k: &Knowledge, space: Uuid, id: Uuid) -> Result<FolderRow, ApiError> {
    db::folder(&k.pool, space, id).await?.ok_or_else(folder_not_found)
}

fn name_taken(e: &sqlx::Error) -> bool {
    crate::auth::db::is_unique_violation(e)
}

fn folder_exists() -> ApiError {
    ApiError::conflict("folder_exists", "a folder with this name already exists here")
}

/// Creates a folder.
pub async fn create_folder(k: &Knowledge, space: Uuid, req: CreateFolder) -> Result<Folder, ApiError> {
    let name = check_name("invalid_name", &req.name, 200)?;
    match db::insert_folder(&k.pool, space, Uuid::now_v7(), req.parent_id, &new_label(), &name).await {
        Ok(Some(r)) => Ok(folder_view(r)),
        Ok(None) => Err(folder_not_found()),
        Err(e) if name_taken(&e) => Err(folder_exists()),
        Err(e) => Err(e.into()),
    }
}

/// The top-level folders.
pub async fn top_folders(k: &Knowledge, space: Uuid) -> Result<Vec<Folder>, ApiError> {
    Ok(db::child_folders(&k.pool, space, None).await?.into_iter().map(folder_view).collect())
}

/// A folder with breadcrumbs, children and documents.
pub async fn folder(k: &Knowledge, space: Uuid, id: Uuid) -> Result<FolderView, ApiError> {
    let f = own_folder(k, space, id).await?;
    let children = db::child_folders(&k.pool, space, Some(&f.path)).await?.into_iter().map(folder_view).collect();
    let documents = db::list_documents(&k.pool, space, Some(id), false, None, 100)
        .await?
        .into_iter()
        .map(|r| summary(r).0)
        .collect();
    let breadcrumbs = crumbs(k, space, &f.path).await?;
    Ok(FolderView { folder: folder_view(f), breadcrumbs, children, documents })
}

/// Renames and/or moves a folder (its subtree moves with it).
pub async fn patch_folder(k: &Knowledge, space: Uuid, id: Uuid, req: PatchFolder) -> Result<Folder, ApiError> {
    let f = own_folder(k, space, id).await?;
    let mut tx = k.pool.begin().await?;
    db::lock_space(&mut tx, space).await?;
    if let Some(parent) = req.parent_id {
        let label = f.path.rsplit('.').next().unwrap_or(&f.path).to_string();
        let new_path = match parent {
            None => label,
            Some(p) => {
                let parent = own_folder(k, space, p).await?;
                if parent.path == f.path || parent.path.starts_with(&format!("{}.", f.path)) {
                    return Err(ApiError::unprocessable(
                        "folder_cycle",
                        "a folder cannot move into itself or one of its subfolders",
                    ));
                }
                format!("{}.{label}", parent.path)
            }
        };
        if new_path != f.path {
            match db::move_subtree(&mut tx, space, &f.path, &new_path).await {
                Ok(_) => {}
                Err(e) if name_taken(&e) => return Err(folder_exists()),
                Err(e) => return Err(e.into()),
            }
        }
    }
    tx.commit().await?;
    if let Some(name) = req.name {
        let name = check_name("invalid_name", &name, 200)?;
        match db::rename_folder(&k.pool, space, id, &name).await {
            Ok(_) => {}
            Err(e) if name_taken(&e) => return Err(folder_exists()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(folder_view(own_folder(k, space, id).await?))
}

/// Deletes a folder with its subfolders and their documents.
pub async fn delete_folder(k: &Knowledge, space: Uuid, id: Uuid) -> Result<(), ApiError> {
    let f = own_folder(k, space, id).await?;
    let mut tx = k.pool.begin().await?;
    db::lock_space(&mut tx, space).await?;
    let docs = db::documents_in_subtree(&mut tx, space, &f.path).await?;
    db::apply_stats(&mut tx, space, &docs, -1).await?;
    db::delete_subtree(&mut tx, space, &f.path).await?;
    tx.commit().await?;
    Ok(())
}

/// What a new version is made of.
pub struct VersionInput<'a> {
    /// Title.
    pub title: &'a str,
    /// Body.
    pub body: &'a str,
    /// Page starts (paged sources).
    pub page_starts: &'a [i32],
    /// The object version read (uploads).
    pub source_version: Option<Uuid>,
}

/// `[[Title]]` and `[[Title|label]]` references in a body (distinct, in order).
pub fn wiki_links(body: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("[[") {
        rest = &rest[i + 2..];
        let Some(j) = rest.find("]]") else { break };
        let inner = &rest[..j];
        rest = &rest[j + 2..];
        let title = inner.split('|').next().unwrap_or("").trim();
        if !title.is_empty()
            && title.chars().count() <= 500
            && !title.contains('\n')
            && !out.iter().any(|t| t.eq_ignore_ascii_case(title))
        {
            out.push(title.to_string());
        }
        if out.len() >= 1000 {
            break;
        }
    }
    out
}

/// What writing a version did.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// Chunks of the new version.
    pub chunks: usize,
    /// Chunks whose vectors were computed (the rest were reused by chunk hash, or
    /// are left to the embed job for a remote embedder).
    pub embedded: usize,
}

/// Writes version `version` of `doc` and makes it current, in the caller's
/// transaction (which holds the space's lock): chunks with the vectors of unchanged
/// chunks reused by hash and, for the built-in model, the others computed here;
/// statistics; links.
pub async fn write_version(
    conn: &mut sqlx::PgConnection,
    k: &Knowledge,
    space: Uuid,
    doc: Uuid,
    version: i32,
    v: &VersionInput<'_>,
) -> Result<Written, sqlx::Error> {
    let config = ChunkConfig { tokens: k.config.chunk_tokens, overlap: k.config.chunk_overlap };
    let pieces = chunk(v.body, v.page_starts, &config);
    let mut chunks: Vec<NewChunk> = pieces
        .into_iter()
        .map(|c| {
            let mut context = v.title.to_string();
            for h in &c.headings {
                context.push_str(" › ");
                context.push_str(h);
            }
            NewChunk { hash: sha256_hex(&[&context, &c.text]), chunk: c, context, embedding: None }
        })
        .collect();
    let model = k.embedder.model();
    if version > 1 {
        let hashes: Vec<String> = chunks.iter().map(|c| c.hash.clone()).collect();
        let known: HashMap<String, pgvector::Vector> =
            db::vectors_by_hash(conn, doc, model, &hashes).await?.into_iter().collect();
        for c in chunks.iter_mut() {
            c.embedding = known.get(&c.hash).cloned();
        }
    }
    let missing: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i].embedding.is_none()).collect();
    let mut embedded = 0;
    if k.embedder.is_local() && !missing.is_empty() {
        // The built-in model is cheap enough (microseconds a chunk) to run inline.
        let texts: Vec<String> =
            missing.iter().map(|&i| format!("{}\n{}", chunks[i].context, chunks[i].chunk.text)).collect();
        match k.embedder.embed_blocking(&texts) {
            Ok(vectors) => {
                for (i, vector) in missing.iter().zip(vectors) {
                    chunks[*i].embedding = Some(pgvector::Vector::from(vector));
                    embedded += 1;
                }
            }
            // Left without vectors: the embed job retries; full-text search works meanwhile.
            Err(e) => {
                tracing::warn!(error = %e, "embedding chunks with the built-in model");
                let job = super::ingest::Embed { document_id: Some(doc) };
                let options = crate::jobs::Options { unique_key: Some(doc.to_string()), ..Default::default() };
                crate::jobs::enqueue(conn, &job, options).await?;
            }
        }
    }
    db::apply_stats(conn, space, &[doc], -1).await?;
    let hash = sha256_hex(&[v.body]);
    db::insert_version(
        conn,
        &db::NewVersion {
            document_id: doc,
            version,
            title: v.title,
            body: v.body,
            content_hash: &hash,
            page_starts: (!v.page_starts.is_empty()).then_some(v.page_starts),
            source_version: v.source_version,
        },
    )
    .await?;
    db::insert_chunks(conn, space, doc, version, &chunks, model).await?;
    db::set_current(conn, doc, version, v.title).await?;
    db::apply_stats(conn, space, &[doc], 1).await?;
    db::replace_wiki_links(conn, space, doc, &wiki_links(v.body)).await?;
    db::resolve_links(conn, space, doc, v.title).await?;
    Ok(Written { chunks: chunks.len(), embedded })
}

/// Computes the missing vectors of a document's chunks (all documents' when
/// None), in batches; returns how many were computed.
pub async fn embed_pending(
    k: &Knowledge,
    doc: Option<Uuid>,
    mut progress: impl FnMut(usize),
) -> Result<usize, EmbedFailure> {
    let model = k.embedder.model().to_string();
    let mut done = 0;
    loop {
        let batch = db::unembedded(&k.pool, doc, &model, 256).await?;
        if batch.is_empty() {
            return Ok(done);
        }
        let ids: Vec<i64> = batch.iter().map(|b| b.0).collect();
        let texts: Vec<String> = batch.into_iter().map(|(_, context, text)| format!("{context}\n{text}")).collect();
        let vectors = k.embedder.embed(texts).await?;
        db::set_vectors(&k.pool, &ids, vectors.into_iter().map(pgvector::Vector::from).collect(), &model).await?;
        done += ids.len();
        progress(done);
    }
}

/// Why vectors could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedFailure {
    /// The database.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The embedder.
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
}

/// After a write: the built-in model embedded inside it; a remote one works in a job.
async fn embed_after_write(k: &Knowledge, doc: Uuid) -> Result<(), ApiError> {
    if !k.embedder.is_local() {
        queue_embed(k, Some(doc)).await?;
    }
    Ok(())
}

/// Queues the embedding job for one document (or every stale chunk).
pub async fn queue_embed(k: &Knowledge, doc: Option<Uuid>) -> Result<(), sqlx::Error> {
    let mut conn = k.pool.acquire().await?;
    let key = doc.map_or_else(|| "all".to_string(), |d| d.to_string());
    crate::jobs::enqueue(
        &mut conn,
        &super::ingest::Embed { document_id: doc },
        crate::jobs::Options { unique_key: Some(key), ..Default::default() },
    )
    .await?;
    Ok(())
}

fn check_body(body: &str) -> Result<(), ApiError> {
    if body.len() > 5 * 1024 * 1024 {
        return Err(ApiError::unprocessable("body_too_large", "a document body is at most 5 MB"));
    }
    Ok(())
}

/// Creates a document (version 1).
pub async fn create_document(k: &Knowledge, space: Uuid, req: CreateDocument) -> Result<Document, ApiError> {
    let title = check_name("invalid_title", &req.title, 500)?;
    check_body(&req.body)?;
    let tags = check_tags(&req.tags)?;
    let metadata = req.metadata.unwrap_or_else(|| serde_json::json!({}));
    crate::error::check_metadata(&metadata)?;
    if let Some(f) = req.folder_id {
        own_folder(k, space, f).await?;
    }
    let source_url = match req.source_url.as_deref() {
        None => None,
        Some(u) => match url::Url::parse(u) {
            Ok(p) if matches!(p.scheme(), "http" | "https") && u.len() <= 2048 => Some(p.to_string()),
            _ => return Err(ApiError::unprocessable("invalid_url", "source_url must be an http(s) URL")),
        },
    };
    let id = Uuid::now_v7();
    let mut tx = k.pool.begin().await?;
    db::lock_space(&mut tx, space).await?;
    db::insert_document(
        &mut tx,
        &db::NewDocument {
            id,
            space,
            folder_id: req.folder_id,
            title: &title,
            tags: &tags,
            metadata: &metadata,
            source_kind: if source_url.is_some() { "url" } else { "manual" },
            source_url: source_url.as_deref(),
            source_bucket: None,
            source_object: None,
        },
    )
    .await?;
    write_version(
        &mut tx,
        k,
        space,
        id,
        1,
        &VersionInput { title: &title, body: &req.body, page_starts: &[], source_version: None },
    )
    .await?;
    tx.commit().await?;
    embed_after_write(k, id).await?;
    get_document(k, space, id).await
}

/// A document with its current body.
pub async fn get_document(k: &Knowledge, space: Uuid, id: Uuid) -> Result<Document, ApiError> {
    let mut conn = k.pool.acquire().await?;
    let row = db::document(&mut conn, space, id).await?.ok_or_else(document_not_found)?;
    drop(conn);
    let (body, chunks) = db::current_body(&k.pool, space, id).await?.ok_or_else(document_not_found)?;
    let breadcrumbs = match row.folder_id {
        Some(f) => match db::folder(&k.pool, space, f).await? {
            Some(folder) => crumbs(k, space, &folder.path).await?,
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    let (summary, metadata) = summary(row);
    Ok(Document { summary, metadata, body, breadcrumbs, chunks })
}

/// The space's documents, newest change first (in one folder, or at the top level
/// with `top_only`).
pub async fn list_documents(
    k: &Knowledge,
    space: Uuid,
    folder: Option<Uuid>,
    top_only: bool,
    page: &pagination::PageQuery,
) -> Result<pagination::Page<DocumentSummary>, ApiError> {
    let limit = page.limit()?;
    if let Some(f) = folder {
        own_folder(k, space, f).await?;
    }
    let after = page.cursor_text()?.map(|t| pagination::parse_time_id(&t)).transpose()?;
    let rows = db::list_documents(&k.pool, space, folder, top_only, after, limit + 1).await?;
    let rows: Vec<DocumentSummary> = rows.into_iter().map(|r| summary(r).0).collect();
    Ok(pagination::Page::from_rows(rows, limit, |d| pagination::time_id_cursor(d.updated_at, d.id)))
}

/// Writes a new version of a document (unless title and body are unchanged).
pub async fn replace_document(
    k: &Knowledge,
    space: Uuid,
    id: Uuid,
    title: Option<String>,
    body: Option<String>,
    if_version: Option<i64>,
) -> Result<Document, ApiError> {
    let title = title.map(|t| check_name("invalid_title", &t, 500)).transpose()?;
    if let Some(b) = &body {
        check_body(b)?;
    }
    let mut tx = k.pool.begin().await?;
    db::lock_space(&mut tx, space).await?;
    let current = db::lock_document(&mut tx, space, id).await?.ok_or_else(document_not_found)?;
    if if_version.is_some_and(|v| v != i64::from(current)) {
        return Err(ApiError::conflict(
            "version_conflict",
            format!("the document is at version {current}, not {}", if_version.unwrap_or_default()),
        ));
    }
    let versions = db::versions(&k.pool, space, id, Some(current)).await?;
    let old = versions.into_iter().next().ok_or_else(document_not_found)?;
    let old_body = old.body.unwrap_or_default();
    let new_title = title.unwrap_or(old.title.clone());
    let new_body = body.unwrap_or(old_body.clone());
    if new_title != old.title || new_body != old_body {
        let pages = if new_body == old_body { old.page_starts.unwrap_or_default() } else { Vec::new() };
        let input = VersionInput { title: &new_title, body: &new_body, page_starts: &pages, source_version: None };
        write_version(&mut tx, k, space, id, current + 1, &input).await?;
    }
    tx.commit().await?;
    embed_after_write(k, id).await?;
    get_document(k, space, id).await
}

/// Moves a document, changes tags or metadata, or retitles it (a new version).
pub async fn patch_document(k: &Knowledge, space: Uuid, id: Uuid, req: PatchDocument) -> Result<Document, ApiError> {
    let tags = req.tags.as_deref().map(check_tags).transpose()?;
    if let Some(m) = &req.metadata {
        crate::error::check_metadata(m)?;
    }
    if let Some(Some(f)) = req.folder_id {
        own_folder(k, space, f).await?;
    }
    let mut conn = k.pool.acquire().await?;
    if !db::patch_document(&mut conn, space, id, req.folder_id, tags.as_deref(), req.metadata.as_ref()).await? {
        return Err(document_not_found());
    }
    drop(conn);
    if req.title.is_some() {
        return replace_document(k, space, id, req.title, None, None).await;
    }
    get_document(k, space, id).await
}

/// Deletes a document with its versions, chunks and vectors.
pub async fn delete_document(k: &Knowledge, space: Uuid, id: Uuid) -> Result<(), ApiError> {
    let mut tx = k.pool.begin().await?;
    db::lock_space(&mut tx, space).await?;
    db::apply_stats(&mut tx, space, &[id], -1).await?;
    if !db::delete_document(&mut tx, space, id).await? {
        return Err(document_not_found());
    }
    tx.commit().await?;
    Ok(())
}

fn version_view(r: db::VersionRow) -> Version {
    Version {
        version: r.version,
        title: r.title,
        content_hash: r.content_hash,
        current: r.current,
        source_version: r.source_version,
        page_starts: r.page_starts,
        body: r.body,
        created_at: r.created_at,
    }
}

/// A document's versions, newest first (a document has at least one: none means
/// it is not the caller's).
pub async fn versions(k: &Knowledge, space: Uuid, id: Uuid) -> Result<Vec<Version>, ApiError> {
    let rows = db::versions(&k.pool, space, id, None).await?;
    if rows.is_empty() {
        return Err(document_not_found());
    }
    Ok(rows.into_iter().map(version_view).collect())
}

/// One version with its body.
pub async fn version(k: &Knowledge, space: Uuid, id: Uuid, n: i32) -> Result<Version, ApiError> {
    db::versions(&k.pool, space, id, Some(n))
        .await?
        .into_iter()
        .next()
        .map(version_view)
        .ok_or_else(|| ApiError::not_found("version not found"))
}

/// The chunks of a version (current by default).
pub async fn chunks(k: &Knowledge, space: Uuid, id: Uuid, v: Option<i32>) -> Result<Vec<ChunkView>, ApiError> {
    let mut conn = k.pool.acquire().await?;
    db::document(&mut conn, space, id).await?.ok_or_else(document_not_found)?;
    drop(conn);
    Ok(db::chunks(&k.pool, space, id, v, k.embedder.model()).await?)
}

/// A document's links both ways.
pub async fn links(k: &Knowledge, space: Uuid, id: Uuid) -> Result<Links, ApiError> {
    let mut conn = k.pool.acquire().await?;
    db::document(&mut conn, space, id).await?.ok_or_else(document_not_found)?;
    drop(conn);
    let (out, back) = db::links(&k.pool, space, id).await?;
    let view = |(document_id, title, kind): db::LinkRow| Link { document_id, title, kind };
    Ok(Links { outgoing: out.into_iter().map(view).collect(), backlinks: back.into_iter().map(view).collect() })
}

/// Adds a manual link.
pub async fn add_link(k: &Knowledge, space: Uuid, id: Uuid, target: Uuid) -> Result<Links, ApiError> {
    if !db::add_link(&k.pool, space, id, target).await? {
        return Err(document_not_found());
    }
    links(k, space, id).await
}

/// Removes a manual link.
pub async fn delete_link(k: &Knowledge, space: Uuid, id: Uuid, target: Uuid) -> Result<(), ApiError> {
    if db::delete_link(&k.pool, space, id, target).await? { Ok(()) } else { Err(ApiError::not_found("link not found")) }
}

/// Starts ingesting a storage object into `space` (again, if already known): in the
/// caller's own space an object they own; in an organization's, an object in one of
/// its buckets, which `user` must be allowed to read (`org:storage:read`).
pub async fn add_file(k: &Knowledge, user: Uuid, space: Space, req: CreateFile) -> Result<FileStatus, ApiError> {
    if let Some(f) = req.folder_id {
        own_folder(k, space.id, f).await?;
    }
    let object_gone = || ApiError::not_found("object not found");
    if let Some(org) = space.org {
        crate::auth::shared::grant(&k.pool, org, user, "storage", Need::Read).await?.answer(object_gone)?;
    }
    source_object(k, space, &req.bucket, &req.name).await?.ok_or_else(object_gone)?;
    let mut tx = k.pool.begin().await?;
    let row = db::upsert_file(&mut tx, Uuid::now_v7(), space.id, &req.bucket, &req.name, req.folder_id).await?;
    super::ingest::queue(&mut tx, row.id).await?;
    tx.commit().await?;
    Ok(row)
}

/// A file's status.
pub async fn file(k: &Knowledge, space: Uuid, id: Uuid) -> Result<FileStatus, ApiError> {
    db::file(&k.pool, Some(space), id).await?.ok_or_else(|| ApiError::not_found("file not found"))
}

/// The space's files, newest first.
pub async fn files(
    k: &Knowledge,
    space: Uuid,
    page: &pagination::PageQuery,
) -> Result<pagination::Page<FileStatus>, ApiError> {
    let limit = page.limit()?;
    let after = page.cursor_text()?.map(|t| pagination::parse_time_id(&t)).transpose()?;
    let rows: Vec<FileStatus> = db::list_files(&k.pool, space, after, limit + 1).await?.into_iter().collect();
    Ok(pagination::Page::from_rows(rows, limit, |f| pagination::time_id_cursor(f.created_at, f.id)))
}

/// Queues a file's ingestion again.
pub async fn reingest(k: &Knowledge, space: Uuid, id: Uuid) -> Result<FileStatus, ApiError> {
    let row = db::file(&k.pool, Some(space), id).await?.ok_or_else(|| ApiError::not_found("file not found"))?;
    let mut tx = k.pool.begin().await?;
    super::ingest::force(&mut tx, row.id).await?;
    tx.commit().await?;
    file(k, space, id).await
}

/// Stops watching a file (the document stays).
pub async fn delete_file(k: &Knowledge, space: Uuid, id: Uuid) -> Result<(), ApiError> {
    if db::delete_file(&k.pool, space, id).await? { Ok(()) } else { Err(ApiError::not_found("file not found")) }
}

/// Search mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BM25 only.
    Fulltext,
    /// Vectors only.
    Vector,
    /// Both, fused.
    Hybrid,
}

/// Weighted reciprocal-rank fusion of the full-text and vector lists (see [`crate::rank::fuse`]).
pub fn fuse(fulltext: &[(i64, f64)], vector: &[(i64, f64)], weights: [f64; 2], k: f64) -> Vec<(i64, Scores)> {
    crate::rank::fuse(Lists { fulltext, vector, recency: &[] }, [weights[0], weights[1], 0.0], k)
}

/// Escapes a `ts_headline` excerpt for HTML, turning its \u{2}/\u{3} markers into `<mark>`.
fn snippet_html(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 16);
    for c in raw.chars() {
        match c {
            '\u{2}' => out.push_str("<mark>"),
            '\u{3}' => out.push_str("</mark>"),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Ranks the space's current chunks for `query`: BM25 and/or vector lists of
/// `depth` candidates each, fused.
pub async fn rank(
    k: &Knowledge,
    space: Uuid,
    query: &str,
    mode: Mode,
    weights: [f64; 2],
    filters: &db::Filters,
    depth: i64,
) -> Result<Vec<(i64, Scores)>, ApiError> {
    let filtered = filters.path.is_some()
        || !filters.tags.is_empty()
        || filters.source.is_some()
        || filters.after.is_some()
        || filters.before.is_some();
    let fulltext =
        if mode == Mode::Vector { Vec::new() } else { db::bm25(&k.pool, space, query, filters, depth).await? };
    let vector = if mode == Mode::Fulltext {
        Vec::new()
    } else {
        let v = k.embedder.embed(vec![query.to_string()]).await.map_err(|e| {
            tracing::warn!(error = %e, "embedding a search query");
            ApiError::unavailable("the embedding model is unavailable; try mode=fulltext")
                .with_code("embedder_unavailable")
        })?;
        let v = v.into_iter().next().unwrap_or_default();
        let exact = filtered || db::chunk_count(&k.pool, space).await? <= EXACT_SCAN_LIMIT;
        let query =
            db::VectorQuery { model: k.embedder.model(), dim: k.embedder.dim(), vector: pgvector::Vector::from(v) };
        db::nearest(&k.pool, space, query, filters, depth, exact).await?
    };
    Ok(match mode {
        Mode::Hybrid => fuse(&fulltext, &vector, weights, RRF_K),
        Mode::Fulltext => fuse(&fulltext, &[], [1.0, 0.0], RRF_K),
        Mode::Vector => fuse(&[], &vector, [0.0, 1.0], RRF_K),
    })
}

/// A retrieved chunk with its whole text (for a model's context).
#[derive(Debug)]
pub struct Retrieved {
    /// Where it is.
    pub citation: Citation,
    /// Its text.
    pub text: String,
    /// How it scored.
    pub scores: Scores,
}

/// The best `limit` chunks for `query` (hybrid; full text alone when the embedder
/// fails, reported by the flag), optionally within a folder's subtree.
pub async fn retrieve(
    k: &Knowledge,
    space: Uuid,
    query: &str,
    folder: Option<Uuid>,
    limit: i64,
) -> Result<(Vec<Retrieved>, bool), ApiError> {
    let mut filters = db::Filters::default();
    if let Some(f) = folder {
        filters.path = Some(own_folder(k, space, f).await?.path);
    }
    // Four candidates per result from each signal are plenty for the fusion of a short list.
    let depth = (limit * 4).clamp(40, CANDIDATES);
    let (ranked, degraded) = match rank(k, space, query, Mode::Hybrid, DEFAULT_WEIGHTS, &filters, depth).await {
        Ok(r) => (r, false),
        Err(e) if e.code == "embedder_unavailable" => {
            (rank(k, space, query, Mode::Fulltext, DEFAULT_WEIGHTS, &filters, depth).await?, true)
        }
        Err(e) => return Err(e),
    };
    let page: Vec<(i64, Scores)> = ranked.into_iter().take(limit as usize).collect();
    let ids: Vec<i64> = page.iter().map(|p| p.0).collect();
    let mut texts: HashMap<i64, (Citation, String)> =
        db::chunk_texts(&k.pool, space, &ids).await?.into_iter().map(|(c, t)| (c.chunk_id, (c, t))).collect();
    let out = page
        .into_iter()
        .filter_map(|(id, scores)| texts.remove(&id).map(|(citation, text)| Retrieved { citation, text, scores }))
        .collect();
    Ok((out, degraded))
}

/// Lists ranked each on its own, as one list, best fused score first: weighted
/// reciprocal ranks compare across lists, and the stable sort keeps a single
/// list's own order.
fn merge_ranked<T>(lists: Vec<Vec<T>>, fused: impl Fn(&T) -> f64) -> Vec<T> {
    let mut all: Vec<T> = lists.into_iter().flatten().collect();
    all.sort_by(|a, b| fused(b).total_cmp(&fused(a)));
    all
}

/// The best `limit` chunks for `query` across several spaces (each ranked on its
/// own statistics, then merged by fused score).
pub async fn retrieve_across(
    k: &Knowledge,
    spaces: &[Space],
    query: &str,
    limit: i64,
) -> Result<(Vec<Retrieved>, bool), ApiError> {
    let each = futures::future::try_join_all(spaces.iter().map(|s| retrieve(k, s.id, query, None, limit))).await?;
    let degraded = each.iter().any(|(_, d)| *d);
    let mut all = merge_ranked(each.into_iter().map(|(r, _)| r).collect(), |r| r.scores.fused);
    all.truncate(limit.max(0) as usize);
    Ok((all, degraded))
}

/// Which knowledge spaces a request covers, as it names them: a folder's, an
/// organization's, or the caller's own, plus more organizations' (`orgs`).
pub struct Scope<'a> {
    /// Within this folder (in its space).
    pub folder: Option<Uuid>,
    /// This organization's space instead of the caller's own.
    pub org: Option<Uuid>,
    /// These organizations' spaces beside the caller's own.
    pub orgs: &'a [Uuid],
    /// The request's names of `orgs`, `org` and `folder`, for errors.
    pub names: [&'static str; 3],
    /// The error code of a scope that does not hold together.
    pub code: &'static str,
}

impl Scope<'_> {
    /// Refuses `orgs` beside `org` or `folder`, or more than 10 of them (422 `code`).
    pub fn check(&self) -> Result<(), ApiError> {
        let [orgs, org, folder] = self.names;
        if !self.orgs.is_empty() && (self.org.is_some() || self.folder.is_some()) {
            return Err(ApiError::unprocessable(
                self.code,
                format!("{orgs} adds organizations to my own knowledge; it does not combine with {org} or {folder}"),
            ));
        }
        if self.orgs.len() > 10 {
            return Err(ApiError::unprocessable(self.code, format!("{orgs} holds at most 10 organizations")));
        }
        Ok(())
    }

    /// The spaces, each checked like any knowledge route (404 or 403), without repeats.
    pub async fn spaces(&self, k: &Knowledge, user: Uuid) -> Result<Vec<Space>, ApiError> {
        self.check()?;
        let mut spaces = vec![match self.folder {
            Some(f) => space_of(k, user, Held::Folder, f, Need::Read).await?,
            None => space_for(k, user, self.org, Need::Read).await?,
        }];
        for org in self.orgs {
            let space = space_for(k, user, Some(*org), Need::Read).await?;
            if !spaces.contains(&space) {
                spaces.push(space);
            }
        }
        Ok(spaces)
    }
}

/// The spaces a search covers (see [`Scope`]).
pub async fn search_spaces(k: &Knowledge, user: Uuid, req: &SearchRequest) -> Result<Vec<Space>, ApiError> {
    let scope = Scope {
        folder: req.folder_id,
        org: req.org_id,
        orgs: req.org_ids.as_deref().unwrap_or_default(),
        names: ["org_ids", "org_id", "folder_id"],
        code: "invalid_scope",
    };
    scope.spaces(k, user).await
}

/// Runs a search over one space, or over several ranked as one list (each space
/// ranked on its own with its own statistics, merged by fused score).
pub async fn search(k: &Knowledge, spaces: &[Space], req: SearchRequest) -> Result<SearchPage, ApiError> {
    let query = req.query.trim().to_string();
    if query.is_empty() || query.chars().count() > 2000 {
        return Err(ApiError::unprocessable("invalid_query", "query must be 1 to 2000 characters"));
    }
    let mode = match req.mode.as_deref() {
        None | Some("hybrid") => Mode::Hybrid,
        Some("fulltext") => Mode::Fulltext,
        Some("vector") => Mode::Vector,
        Some(_) => return Err(ApiError::unprocessable("invalid_mode", "mode must be hybrid, fulltext or vector")),
    };
    let limit = match req.limit {
        None => 10,
        Some(n) if (1..=50).contains(&n) => n,
        Some(_) => return Err(ApiError::bad_request("invalid_limit", "limit must be between 1 and 50")),
    };
    let offset = match req.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => pagination::decode(c)?
            .strip_prefix("o:")
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| (0..MAX_DEPTH).contains(n))
            .ok_or_else(|| ApiError::bad_request("invalid_cursor", "cursor is malformed"))?,
    };
    let weights = [req.fulltext_weight.unwrap_or(DEFAULT_WEIGHTS[0]), req.vector_weight.unwrap_or(DEFAULT_WEIGHTS[1])];
    if weights.iter().any(|w| !w.is_finite() || !(0.0..=100.0).contains(w)) {
        return Err(ApiError::unprocessable("invalid_weights", "weights must be between 0 and 100"));
    }
    if let Some(s) = &req.source
        && !matches!(s.as_str(), "manual" | "url" | "upload")
    {
        return Err(ApiError::unprocessable("invalid_source", "source must be manual, url or upload"));
    }
    let mut filters = db::Filters {
        path: None,
        tags: check_tags(&req.tags)?,
        source: req.source.clone(),
        after: req.updated_after,
        before: req.updated_before,
    };
    if let (Some(f), [space]) = (req.folder_id, spaces) {
        filters.path = Some(own_folder(k, space.id, f).await?.path);
    }
    let depth = (offset + limit + 1).clamp(CANDIDATES, MAX_DEPTH + 1);
    let each = futures::future::try_join_all(
        spaces.iter().map(|space| rank(k, space.id, &query, mode, weights, &filters, depth)),
    )
    .await?;
    // One list of (space, chunk, scores).
    let ranked = merge_ranked(
        each.into_iter().enumerate().map(|(i, r)| r.into_iter().map(|(id, sc)| (i, id, sc)).collect()).collect(),
        |h: &(usize, i64, Scores)| h.2.fused,
    );
    let more = ranked.len() as i64 > offset + limit && offset + limit < MAX_DEPTH;
    let page: Vec<(usize, i64, Scores)> = ranked.into_iter().skip(offset as usize).take(limit as usize).collect();
    let mut details: HashMap<(usize, i64), db::HitRow> = HashMap::new();
    for (i, space) in spaces.iter().enumerate() {
        let ids: Vec<i64> = page.iter().filter(|p| p.0 == i).map(|p| p.1).collect();
        if !ids.is_empty() {
            for h in db::hits(&k.pool, space.id, &ids, &query).await? {
                details.insert((i, h.citation.chunk_id), h);
            }
        }
    }
    let data = page
        .into_iter()
        .filter_map(|(i, id, scores)| {
            let h = details.remove(&(i, id))?;
            let snippet = match h.snippet.as_deref() {
                Some(s) if s.contains('\u{2}') => snippet_html(s),
                _ => snippet_html(&h.text.chars().take(300).collect::<String>()),
            };
            Some(SearchHit { chunk: h.citation, org_id: spaces[i].org, snippet, scores })
        })
        .collect();
    Ok(SearchPage {
        data,
        mode: match mode {
            Mode::Hybrid => "hybrid",
            Mode::Fulltext => "fulltext",
            Mode::Vector => "vector",
        }
        .to_string(),
        weights: (mode == Mode::Hybrid).then_some(weights),
        next_cursor: more.then(|| pagination::encode(&format!("o:{}", offset + limit))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiki_links_are_parsed() {
        let l = wiki_links("See [[Alpha]] and [[beta|the beta]], again [[alpha]]; broken [[x");
        assert_eq!(l, vec!["Alpha".to_string(), "beta".to_string()]);
    }

    #[test]
    fn snippets_are_escaped() {
        assert_eq!(snippet_html("<b>\u{2}x\u{3}</b>"), "&lt;b&gt;<mark>x</mark>&lt;/b&gt;");
    }
}
