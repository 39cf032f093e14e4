//! Memory's rules: adding (no model), correcting (a new memory supersedes the old),
//! invalidating, deleting (gone from every index), listing, export, settings, and
//! hybrid search (BM25 + vector + recency, every signal's score on each hit).
//! Every function works on the caller's own rows only.

use std::collections::HashMap;

use time::OffsetDateTime;
use uuid::Uuid;

use super::Memory as State;
use super::db::{self, MemoryRow, NewMemory, SearchFilter};
use super::types::*;
use crate::error::{ApiError, check_metadata};
use crate::pagination::{self, Page, PageQuery};
use crate::rank::{Lists, RRF_K, fuse};

/// Default fusion weights: full text, vector, recency (measured in `benches/memory`).
pub const DEFAULT_WEIGHTS: [f64; 3] = [1.0, 0.25, 0.05];

/// Memories a user may have with vectors before search uses the HNSW index.
pub const EXACT_SCAN_LIMIT: i64 = 20_000;

/// Candidates each signal contributes before fusion.
const CANDIDATES: i64 = 50;

/// The kinds of memory.
pub const KINDS: [&str; 4] = ["profile", "fact", "preference", "instruction"];

/// Who changes a memory: the user themself, or the app with a service key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The user (a session).
    User,
    /// The app (a service key acting for the user).
    App,
    /// The extraction job.
    Extractor,
    /// An operator in the admin console (audited there too).
    Admin,
}

impl Actor {
    /// The history's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::User => "user",
            Actor::App => "app",
            Actor::Extractor => "extractor",
            Actor::Admin => "admin",
        }
    }

    /// The provenance source of a memory it writes.
    pub fn source(self) -> &'static str {
        match self {
            Actor::User => "user",
            Actor::App => "api",
            Actor::Extractor => "conversation",
            Actor::Admin => "admin",
        }
    }
}

/// Lower-cased words of `text` joined by single spaces (punctuation dropped):
/// two memories with the same form say the same thing.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// The row as the API shows it.
pub fn view(r: MemoryRow) -> Memory {
    Memory {
        id: r.id,
        kind: r.kind,
        slot: r.slot,
        text: r.text,
        confidence: r.confidence,
        pinned: r.pinned,
        status: r.status,
        valid_from: r.valid_from,
        valid_to: r.valid_to,
        superseded_by: r.superseded_by,
        provenance: Provenance {
            source: r.source,
            conversation_id: r.conversation_id,
            message_ids: r.message_ids,
            quote: r.quote,
        },
        metadata: r.metadata,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

fn not_found() -> ApiError {
    ApiError::not_found("memory not found")
}

/// Checks a memory's text: 1 to 2000 characters, and no secret in it.
pub fn check_text(text: &str) -> Result<&str, ApiError> {
    let t = text.trim();
    if t.is_empty() || t.chars().count() > 2000 {
        return Err(ApiError::unprocessable("invalid_text", "text must be 1 to 2000 characters"));
    }
    if let Some(kind) = super::secrets::find(t) {
        return Err(ApiError::unprocessable(
            "contains_secret",
            format!("text looks like it holds a secret ({kind}); secrets are never stored as memories"),
        ));
    }
    Ok(t)
}

fn check_kind(kind: Option<&str>) -> Result<&'static str, ApiError> {
    match kind {
        None => Ok("fact"),
        Some(k) => KINDS.iter().find(|x| **x == k).copied().ok_or_else(|| {
            ApiError::unprocessable("invalid_kind", "kind must be profile, fact, preference or instruction")
        }),
    }
}

fn check_slot(slot: Option<&str>) -> Result<Option<String>, ApiError> {
    match slot {
        None => Ok(None),
        Some(s) => {
            let ok = !s.is_empty()
                && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if ok {
                Ok(Some(s.to_ascii_lowercase()))
            } else {
                Err(ApiError::unprocessable("invalid_slot", "slot must be 1 to 64 letters, digits, '_', '.' or '-'"))
            }
        }
    }
}

fn check_confidence(c: Option<f32>) -> Result<Option<f32>, ApiError> {
    match c {
        Some(x) if !(0.0..=1.0).contains(&x) => {
            Err(ApiError::unprocessable("invalid_confidence", "confidence must be between 0 and 1"))
        }
        c => Ok(c),
    }
}

/// The vector of a text when the embedder runs in-process (a remote one is left
/// to the `memory.embed` job, so a slow endpoint never holds a request).
pub fn local_vector(m: &State, text: &str) -> Option<pgvector::Vector> {
    if !m.embedder.is_local() {
        return None;
    }
    match m.embedder.embed_blocking(&[text.to_string()]) {
        Ok(mut v) => v.pop().map(pgvector::Vector::from),
        Err(e) => {
            tracing::warn!(error = %e, "embedding a memory");
            None
        }
    }
}

/// A memory to write, from any path (API, correction, extraction).
#[derive(Debug)]
pub struct Draft<'a> {
    /// Kind.
    pub kind: &'a str,
    /// Slot.
    pub slot: Option<&'a str>,
    /// Text (checked).
    pub text: &'a str,
    /// Confidence.
    pub confidence: f32,
    /// Pinned.
    pub pinned: bool,
    /// Conversation, messages and quote (extraction).
    pub conversation: Option<(Uuid, &'a [String], Option<&'a str>)>,
    /// Metadata.
    pub metadata: &'a serde_json::Value,
    /// Since when it holds.
    pub valid_from: Option<OffsetDateTime>,
    /// Its vector, if already computed.
    pub vector: Option<pgvector::Vector>,
}

/// Inserts a memory with its `added` history row; when `replaces` is given (or the
/// draft's slot holds an active memory), that memory is superseded by the new one.
pub async fn write(
    m: &State,
    conn: &mut sqlx::PgConnection,
    user: Uuid,
    actor: Actor,
    draft: Draft<'_>,
    replaces: Option<Uuid>,
    extraction: Option<Uuid>,
) -> Result<MemoryRow, ApiError> {
    let id = Uuid::now_v7();
    let norm = normalize(draft.text);
    let (conversation_id, message_ids, quote) = match draft.conversation {
        Some((c, ids, q)) => (Some(c), ids, q),
        None => (None, &[][..], None),
    };
    let mut replaces = replaces;
    if replaces.is_none()
        && let Some(slot) = draft.slot
    {
        replaces = db::in_slot(conn, user, slot).await?.map(|r| r.id);
    }
    // The slot index allows one active memory per slot: end the old one first.
    if let Some(old) = replaces {
        db::end(conn, user, old, None, draft.valid_from).await?;
    }
    let row = db::insert(
        conn,
        &NewMemory {
            id,
            user,
            kind: draft.kind,
            slot: draft.slot,
            text: draft.text,
            norm: &norm,
            confidence: draft.confidence,
            pinned: draft.pinned,
            source: actor.source(),
            conversation_id,
            message_ids,
            quote,
            metadata: draft.metadata,
            valid_from: draft.valid_from,
            embedding: draft.vector.map(|v| (v, m.embedder.model())),
        },
    )
    .await?;
    db::record(
        conn,
        &db::Event {
            memory: id,
            user,
            event: "added",
            actor: actor.as_str(),
            text: Some(draft.text),
            related: replaces,
            extraction,
        },
    )
    .await?;
    if let Some(old) = replaces {
        supersede_ended(conn, user, old, id, actor, extraction).await?;
    }
    Ok(row)
}

/// Marks an ended memory as superseded by `new` and records it.
async fn supersede_ended(
    conn: &mut sqlx::PgConnection,
    user: Uuid,
    old: Uuid,
    new: Uuid,
    actor: Actor,
    extraction: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    db::mark_superseded(conn, user, old, new).await?;
    db::record(
        conn,
        &db::Event {
            memory: old,
            user,
            event: "superseded",
            actor: actor.as_str(),
            text: None,
            related: Some(new),
            extraction,
        },
    )
    .await
}

/// Adds a memory (no model involved).
pub async fn add(m: &State, user: Uuid, actor: Actor, req: CreateMemory) -> Result<Memory, ApiError> {
    let text = check_text(&req.text)?;
    let kind = check_kind(req.kind.as_deref())?;
    let slot = check_slot(req.slot.as_deref())?;
    let confidence = check_confidence(req.confidence)?.unwrap_or(1.0);
    let metadata = req.metadata.unwrap_or_else(|| serde_json::json!({}));
    check_metadata(&metadata)?;
    let vector = local_vector(m, text);
    let mut tx = m.pool.begin().await?;
    db::lock_user(&mut tx, user).await?;
    if let Some(existing) = db::same_norm(&mut tx, user, &normalize(text)).await? {
        return Err(ApiError::conflict("duplicate_memory", format!("an active memory says the same: {existing}")));
    }
    let draft = Draft {
        kind,
        slot: slot.as_deref(),
        text,
        confidence,
        pinned: req.pinned.unwrap_or(false),
        conversation: None,
        metadata: &metadata,
        valid_from: req.valid_from,
        vector,
    };
    let row = write(m, &mut tx, user, actor, draft, None, None).await?;
    queue_embed_if_remote(m, &mut tx, user).await?;
    tx.commit().await?;
    Ok(view(row))
}

/// Queues vectors for the user's new memories when the embedder is remote.
async fn queue_embed_if_remote(m: &State, conn: &mut sqlx::PgConnection, user: Uuid) -> Result<(), sqlx::Error> {
    if m.embedder.is_local() {
        return Ok(());
    }
    super::jobs::queue_embed(conn, user).await
}

/// A memory with its history and the chain it superseded.
pub async fn get(m: &State, user: Uuid, id: Uuid) -> Result<MemoryDetail, ApiError> {
    let mut conn = m.pool.acquire().await?;
    let row = db::memory(&mut conn, user, id, false).await?.ok_or_else(not_found)?;
    drop(conn);
    detail(m, user, row).await
}

async fn detail(m: &State, user: Uuid, row: MemoryRow) -> Result<MemoryDetail, ApiError> {
    let history = db::history(&m.pool, user, Some(&[row.id])).await?.into_iter().map(history_entry).collect();
    let supersedes = db::predecessors(&m.pool, user, row.id).await?.into_iter().map(view).collect();
    Ok(MemoryDetail { memory: view(row), history, supersedes })
}

fn history_entry(h: db::HistoryRow) -> HistoryEntry {
    HistoryEntry {
        event: h.event,
        actor: h.actor,
        text: h.text,
        related_id: h.related_id,
        extraction_id: h.extraction_id,
        at: h.at,
    }
}

/// Changes a memory: a new text is a correction (a new memory supersedes it);
/// pinned, confidence and metadata change in place.
pub async fn patch(m: &State, user: Uuid, actor: Actor, id: Uuid, req: PatchMemory) -> Result<MemoryDetail, ApiError> {
    let confidence = check_confidence(req.confidence)?;
    if let Some(md) = &req.metadata {
        check_metadata(md)?;
    }
    let text = req.text.as_deref().map(check_text).transpose()?;
    let vector = text.and_then(|t| local_vector(m, t));
    let mut tx = m.pool.begin().await?;
    db::lock_user(&mut tx, user).await?;
    let old = db::memory(&mut tx, user, id, true).await?.ok_or_else(not_found)?;
    let mut current = old.clone();
    if req.pinned.is_some() || confidence.is_some() || req.metadata.is_some() {
        db::patch(&mut tx, user, id, req.pinned, confidence, req.metadata.as_ref()).await?;
        db::record(
            &mut tx,
            &db::Event {
                memory: id,
                user,
                event: "updated",
                actor: actor.as_str(),
                text: Some(&old.text),
                related: None,
                extraction: None,
            },
        )
        .await?;
        current = db::memory(&mut tx, user, id, false).await?.ok_or_else(not_found)?;
    }
    if let Some(t) = text
        && t != old.text
    {
        if old.status != "active" {
            return Err(ApiError::conflict(
                "memory_ended",
                "this memory was superseded or invalidated; correct the current one",
            ));
        }
        let draft = Draft {
            kind: &current.kind,
            slot: current.slot.as_deref(),
            text: t,
            confidence: current.confidence,
            pinned: current.pinned,
            conversation: None,
            metadata: &current.metadata,
            valid_from: None,
            vector,
        };
        current = write(m, &mut tx, user, actor, draft, Some(id), None).await?;
        queue_embed_if_remote(m, &mut tx, user).await?;
    }
    tx.commit().await?;
    detail(m, user, current).await
}

/// Ends a memory's validity (it stays, as history).
pub async fn invalidate(
    m: &State,
    user: Uuid,
    actor: Actor,
    id: Uuid,
    req: InvalidateMemory,
) -> Result<MemoryDetail, ApiError> {
    let mut tx = m.pool.begin().await?;
    let row = db::memory(&mut tx, user, id, true).await?.ok_or_else(not_found)?;
    if !db::end(&mut tx, user, id, None, req.valid_to).await? {
        return Err(ApiError::conflict("memory_ended", format!("this memory is already {}", row.status)));
    }
    db::record(
        &mut tx,
        &db::Event {
            memory: id,
            user,
            event: "invalidated",
            actor: actor.as_str(),
            text: Some(&row.text),
            related: None,
            extraction: None,
        },
    )
    .await?;
    let row = db::memory(&mut tx, user, id, false).await?.ok_or_else(not_found)?;
    tx.commit().await?;
    detail(m, user, row).await
}

/// Deletes a memory: its row, text, vector and index entries go at once.
pub async fn delete(m: &State, user: Uuid, actor: Actor, id: Uuid) -> Result<(), ApiError> {
    let mut tx = m.pool.begin().await?;
    if db::delete(&mut tx, user, Some(&[id]), actor.as_str()).await? == 0 {
        return Err(not_found());
    }
    tx.commit().await?;
    Ok(())
}

/// Deletes every memory of the user; returns how many.
pub async fn delete_all(m: &State, user: Uuid, actor: Actor) -> Result<u64, ApiError> {
    let mut tx = m.pool.begin().await?;
    let n = db::delete(&mut tx, user, None, actor.as_str()).await?;
    tx.commit().await?;
    Ok(n)
}

/// A page of the user's memories, newest first.
pub async fn list(m: &State, user: Uuid, q: ListMemories, page: &PageQuery) -> Result<Page<Memory>, ApiError> {
    let limit = page.limit()?;
    let cursor = page.cursor_text()?.map(|c| pagination::parse_time_id(&c)).transpose()?;
    let kinds = q.kind.as_deref().map(|k| check_kind(Some(k)).map(|k| vec![k.to_string()])).transpose()?;
    if let Some(s) = &q.source
        && !matches!(s.as_str(), "conversation" | "api" | "user" | "admin")
    {
        return Err(ApiError::unprocessable("invalid_source", "source must be conversation, api, user or admin"));
    }
    let text = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if text.is_some_and(|t| t.chars().count() > 500) {
        return Err(ApiError::bad_request("invalid_query", "q must be at most 500 characters"));
    }
    let filter = db::ListFilter {
        kinds: kinds.as_deref(),
        q: text,
        source: q.source.as_deref(),
        conversation: q.conversation_id,
        after: q.after,
        before: q.before,
        all_statuses: q.include_superseded.unwrap_or(false),
    };
    let rows = db::list(&m.pool, user, &filter, cursor, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |r| pagination::time_id_cursor(r.created_at, r.id)).map(view))
}

/// Everything memory holds about the user.
pub async fn export(m: &State, user: Uuid) -> Result<MemoryExport, ApiError> {
    let rows = db::all(&m.pool, user).await?;
    let mut history: HashMap<Uuid, Vec<HistoryEntry>> = HashMap::new();
    for h in db::history(&m.pool, user, None).await? {
        history.entry(h.memory_id).or_default().push(history_entry(h));
    }
    let by_successor: HashMap<Uuid, Vec<Memory>> =
        rows.iter().filter(|r| r.superseded_by.is_some()).fold(HashMap::new(), |mut acc, r| {
            if let Some(s) = r.superseded_by {
                acc.entry(s).or_default().push(view(r.clone()));
            }
            acc
        });
    let memories = rows
        .into_iter()
        .map(|r| {
            let id = r.id;
            MemoryDetail {
                memory: view(r),
                history: history.remove(&id).unwrap_or_default(),
                supersedes: by_successor.get(&id).cloned().unwrap_or_default(),
            }
        })
        .collect();
    Ok(MemoryExport {
        exported_at: OffsetDateTime::now_utc(),
        user_id: user,
        memories,
        settings: MemorySettings { extraction: db::extraction_enabled(&m.pool, user).await? },
    })
}

/// The search mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BM25 only.
    Fulltext,
    /// Vectors only.
    Vector,
    /// Both, fused (with recency).
    Hybrid,
}

/// BM25 over the user's memories, the exact top `limit` (see [`crate::rank::bm25_top`]).
pub async fn bm25(
    m: &State,
    user: Uuid,
    query: &str,
    filter: &SearchFilter,
    limit: i64,
) -> Result<Vec<(Uuid, f64)>, sqlx::Error> {
    let stats = db::term_stats(&m.pool, user, query).await?;
    crate::rank::bm25_top(stats, limit, |r| async move {
        db::bm25_over(&m.pool, user, &r.weighted, &r.matching, r.avg_len, filter, limit).await
    })
    .await
}

/// A ranked search: memories with their scores, best first, and whether the vector
/// signal was missing because the embedder failed.
#[derive(Debug)]
pub struct Ranked {
    /// The hits.
    pub hits: Vec<(MemoryRow, Scores)>,
    /// The embedder failed (hybrid fell back to full text).
    pub vector_failed: bool,
}

/// Ranks the user's memories for `query`. A failing embedder leaves the vector
/// signal out (reported), unless the mode is `vector`.
pub async fn rank(
    m: &State,
    user: Uuid,
    query: &str,
    filter: &SearchFilter,
    mode: Mode,
    weights: [f64; 3],
    limit: i64,
) -> Result<Ranked, ApiError> {
    let depth = limit.max(CANDIDATES);
    let fulltext = if mode == Mode::Vector { Vec::new() } else { bm25(m, user, query, filter, depth).await? };
    let mut vector_failed = false;
    let vector = if mode == Mode::Fulltext {
        Vec::new()
    } else {
        match m.embedder.embed(vec![query.to_string()]).await {
            Ok(v) => {
                let v = v.into_iter().next().unwrap_or_default();
                let exact = db::vector_count(&m.pool, user, m.embedder.model(), EXACT_SCAN_LIMIT + 1).await?
                    <= EXACT_SCAN_LIMIT;
                let q = crate::db::shared::VectorQuery {
                    model: m.embedder.model(),
                    dim: m.embedder.dim(),
                    vector: pgvector::Vector::from(v),
                };
                db::nearest(&m.pool, user, q, filter, depth, exact).await?
            }
            Err(e) if mode == Mode::Hybrid => {
                tracing::warn!(error = %e, "embedding a memory query; full text only");
                vector_failed = true;
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %e, "embedding a memory query");
                return Err(ApiError::unavailable("the embedding model is unavailable; try mode=fulltext")
                    .with_code("embedder_unavailable"));
            }
        }
    };
    let mut ids: Vec<Uuid> = fulltext.iter().chain(vector.iter()).map(|x| x.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut rows: HashMap<Uuid, MemoryRow> =
        db::memories(&m.pool, user, &ids).await?.into_iter().map(|r| (r.id, r)).collect();
    let recency: Vec<Uuid> = if mode == Mode::Hybrid && weights[2] > 0.0 {
        let mut by_time: Vec<(&Uuid, OffsetDateTime)> = rows.iter().map(|(id, r)| (id, r.valid_from)).collect();
        by_time.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        by_time.into_iter().map(|x| *x.0).collect()
    } else {
        Vec::new()
    };
    let w = match mode {
        Mode::Hybrid => weights,
        Mode::Fulltext => [1.0, 0.0, 0.0],
        Mode::Vector => [0.0, 1.0, 0.0],
    };
    let ranked = fuse(Lists { fulltext: &fulltext, vector: &vector, recency: &recency }, w, RRF_K);
    let hits = ranked.into_iter().filter_map(|(id, s)| rows.remove(&id).map(|r| (r, s))).take(limit as usize).collect();
    Ok(Ranked { hits, vector_failed })
}

/// Checks a search query: 1 to 2000 characters.
pub fn check_query(q: &str) -> Result<&str, ApiError> {
    let q = q.trim();
    if q.is_empty() || q.chars().count() > 2000 {
        return Err(ApiError::unprocessable("invalid_query", "query must be 1 to 2000 characters"));
    }
    Ok(q)
}

/// Searches the user's memories.
pub async fn search(m: &State, user: Uuid, req: SearchMemories) -> Result<MemoryHits, ApiError> {
    let query = check_query(&req.query)?;
    let limit = match req.limit {
        None => 10,
        Some(n) if (1..=100).contains(&n) => n,
        Some(_) => return Err(ApiError::bad_request("invalid_limit", "limit must be between 1 and 100")),
    };
    let mode = match req.mode.as_deref() {
        None | Some("hybrid") => Mode::Hybrid,
        Some("fulltext") => Mode::Fulltext,
        Some("vector") => Mode::Vector,
        Some(_) => return Err(ApiError::unprocessable("invalid_mode", "mode must be hybrid, fulltext or vector")),
    };
    let weights = req.weights.unwrap_or(DEFAULT_WEIGHTS);
    if weights.iter().any(|w| !w.is_finite() || !(0.0..=100.0).contains(w)) {
        return Err(ApiError::unprocessable("invalid_weights", "weights must be between 0 and 100"));
    }
    let kinds = match req.kinds {
        None => None,
        Some(ks) => {
            for k in &ks {
                check_kind(Some(k))?;
            }
            Some(ks)
        }
    };
    let filter = SearchFilter { kinds, all_statuses: req.include_superseded.unwrap_or(false) };
    let ranked = rank(m, user, query, &filter, mode, weights, limit).await?;
    Ok(MemoryHits {
        data: ranked.hits.into_iter().map(|(r, scores)| MemoryHit { memory: view(r), scores }).collect(),
        weights,
    })
}

/// The user's settings.
pub async fn settings(m: &State, user: Uuid) -> Result<MemorySettings, ApiError> {
    Ok(MemorySettings { extraction: db::extraction_enabled(&m.pool, user).await? })
}

/// Sets the user's settings.
pub async fn set_settings(m: &State, user: Uuid, s: MemorySettings) -> Result<MemorySettings, ApiError> {
    db::set_extraction(&m.pool, user, s.extraction).await?;
    Ok(s)
}

/// Whether a conversation of the user's is remembered.
pub async fn conversation(m: &State, user: Uuid, id: Uuid) -> Result<ConversationMemory, ApiError> {
    let remember =
        db::remembered(&m.pool, user, id).await?.ok_or_else(|| ApiError::not_found("conversation not found"))?;
    Ok(ConversationMemory { remember })
}

/// Marks a conversation of the user's remembered or not.
pub async fn set_conversation(
    m: &State,
    user: Uuid,
    id: Uuid,
    c: ConversationMemory,
) -> Result<ConversationMemory, ApiError> {
    if !db::set_remembered(&m.pool, user, id, c.remember).await? {
        return Err(ApiError::not_found("conversation not found"));
    }
    Ok(c)
}

/// A page of the user's extraction runs.
pub async fn extractions(
    m: &State,
    user: Uuid,
    q: ListExtractions,
    page: &PageQuery,
) -> Result<Page<Extraction>, ApiError> {
    let limit = page.limit()?;
    let cursor = page.cursor_text()?.map(|c| pagination::parse_time_id(&c)).transpose()?;
    let rows = db::extractions(&m.pool, user, q.conversation_id, cursor, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |r| pagination::time_id_cursor(r.created_at, r.id)))
}

/// Queues an extraction of the user's conversation now.
pub async fn extract_now(m: &State, user: Uuid, req: ExtractRequest) -> Result<ExtractQueued, ApiError> {
    if m.llm.is_none() {
        return Err(ApiError::conflict(
            "extraction_not_configured",
            "no extraction model is configured (CARMENTA_LLM_URL and CARMENTA_LLM_MODEL)",
        ));
    }
    match db::remembered(&m.pool, user, req.conversation_id).await? {
        None => return Err(ApiError::not_found("conversation not found")),
        Some(false) => {
            return Err(ApiError::conflict("not_remembered", "this conversation is marked not to be remembered"));
        }
        Some(true) => {}
    }
    if !db::extraction_enabled(&m.pool, user).await? {
        return Err(ApiError::conflict("extraction_disabled", "memory extraction is turned off in your settings"));
    }
    let mut conn = m.pool.acquire().await?;
    let job_id = super::jobs::queue_extract(&mut conn, req.conversation_id).await?;
    Ok(ExtractQueued { job_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_form_ignores_case_and_punctuation() {
        assert_eq!(normalize("  Ana lives in LISBON, Portugal. "), "ana lives in lisbon portugal");
        assert_eq!(normalize("Ana lives in Lisbon Portugal"), normalize("ana  lives in lisbon; portugal!"));
    }
}
