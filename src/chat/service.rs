//! Chat service functions: conversations (create, list, read, update, delete),
//! idempotent message appends, paging in both directions, truncation for edits and
//! regenerations, feedback, and search. Private conversations of others are
//! "not found"; public ones are read-only to anyone with the id.

use http::StatusCode;
use uuid::Uuid;

use super::Chat;
use super::db::{self, ArchivedFilter, ConversationPatch, Page, Upserted};
use super::types::*;
use crate::error::ApiError;
use crate::pagination::{self, PageQuery};

const ROLES: &[&str] = &["system", "user", "assistant"];

fn not_found() -> ApiError {
    ApiError::not_found("conversation not found")
}

fn check_visibility(v: &str) -> Result<(), ApiError> {
    if matches!(v, "private" | "public") {
        Ok(())
    } else {
        Err(ApiError::unprocessable("invalid_visibility", "visibility must be `private` or `public`"))
    }
}

fn check_title(t: &str) -> Result<(), ApiError> {
    if t.chars().count() > 500 {
        Err(ApiError::unprocessable("invalid_title", "title is longer than 500 characters"))
    } else {
        Ok(())
    }
}

/// Creates a conversation for `owner`.
pub async fn create(state: &Chat, owner: Uuid, req: CreateConversation) -> Result<Conversation, ApiError> {
    let title = req.title.unwrap_or_default();
    check_title(&title)?;
    let visibility = req.visibility.unwrap_or_else(|| "private".into());
    check_visibility(&visibility)?;
    let metadata = req.metadata.unwrap_or_else(|| serde_json::json!({}));
    crate::error::check_metadata(&metadata)?;
    let id = req.id.unwrap_or_else(Uuid::now_v7);
    match db::insert_conversation(&state.pool, id, owner, &title, &visibility, &metadata).await {
        Ok(row) => Ok(Conversation::of(row, Some(owner))),
        Err(e) if crate::auth::db::is_unique_violation(&e) => {
            Err(ApiError::conflict("conversation_exists", "a conversation with this id already exists"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Lists the owner's conversations, newest activity first.
pub async fn list(
    state: &Chat,
    owner: Uuid,
    archived: Option<&str>,
    page: &PageQuery,
) -> Result<ConversationList, ApiError> {
    let limit = page.limit()?;
    let filter = match archived {
        None | Some("false") | Some("") => ArchivedFilter::Active,
        Some("true") => ArchivedFilter::Archived,
        Some("all") => ArchivedFilter::All,
        Some(_) => return Err(ApiError::bad_request("invalid_filter", "archived must be `true`, `false` or `all`")),
    };
    let after = page.cursor_text()?.map(|t| pagination::parse_time_id(&t)).transpose()?;
    let rows = db::list_conversations(&state.pool, owner, filter, after, limit + 1).await?;
    let rows: Vec<Conversation> = rows.into_iter().map(|r| Conversation::of(r, Some(owner))).collect();
    Ok(pagination::Page::from_rows(rows, limit, |c| pagination::time_id_cursor(c.last_activity_at, c.id)))
}

/// A conversation the caller may read.
pub async fn get(state: &Chat, caller: Option<Uuid>, id: Uuid) -> Result<Conversation, ApiError> {
    let row = db::readable_conversation(&state.pool, id, caller).await?.ok_or_else(not_found)?;
    Ok(Conversation::of(row, caller))
}

/// Renames, archives, changes visibility or metadata of the owner's conversation.
pub async fn update(state: &Chat, owner: Uuid, id: Uuid, req: PatchConversation) -> Result<Conversation, ApiError> {
    if let Some(t) = &req.title {
        check_title(t)?;
    }
    if let Some(v) = &req.visibility {
        check_visibility(v)?;
    }
    if let Some(m) = &req.metadata {
        crate::error::check_metadata(m)?;
    }
    let patch = ConversationPatch {
        title: req.title,
        visibility: req.visibility,
        archived: req.archived,
        metadata: req.metadata,
    };
    let row = db::update_conversation(&state.pool, id, owner, &patch).await?.ok_or_else(not_found)?;
    Ok(Conversation::of(row, Some(owner)))
}

/// Deletes the owner's conversation with its messages.
pub async fn delete(state: &Chat, owner: Uuid, id: Uuid) -> Result<(), ApiError> {
    if db::delete_conversation(&state.pool, id, owner).await? { Ok(()) } else { Err(not_found()) }
}

/// Checks one message; `max_bytes` of `None` means the whole request body was
/// already within the limit, so no message can exceed it.
fn validate_message(m: &UiMessageIn, max_bytes: Option<usize>) -> Result<(), ApiError> {
    if m.id.is_empty() || m.id.chars().count() > 255 || m.id.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_message_id",
            "message id must be 1 to 255 characters without control characters",
        ));
    }
    if !ROLES.contains(&m.role.as_str()) {
        return Err(ApiError::unprocessable(
            "invalid_role",
            format!("role must be one of {ROLES:?}, not {:?}", m.role),
        ));
    }
    /// What is checked of a part: an object with a string `type` (the rest is
    /// skipped, not built).
    #[derive(serde::Deserialize)]
    struct PartHead {
        #[serde(rename = "type")]
        _kind: String,
    }
    if !m.parts.get().trim_start().starts_with('[') {
        return Err(ApiError::unprocessable("invalid_parts", "parts must be an array"));
    }
    if serde_json::from_str::<Vec<PartHead>>(m.parts.get()).is_err() {
        return Err(ApiError::unprocessable("invalid_parts", "every part must be an object with a string `type`"));
    }
    if let Some(md) = &m.metadata
        && !md.get().trim_start().starts_with('{')
    {
        return Err(ApiError::unprocessable("invalid_metadata", "metadata must be a JSON object"));
    }
    let Some(max_bytes) = max_bytes else { return Ok(()) };
    let size = m.parts.get().len() + m.metadata.as_ref().map_or(0, |v| v.get().len());
    if size > max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!("message {:?} is {size} bytes; the limit is {max_bytes}", m.id),
        ));
    }
    Ok(())
}

/// Appends (or idempotently re-sends) messages to the owner's conversation, in one
/// transaction: the same id with the same content changes nothing, with new
/// content it replaces the message; an id used in another conversation is 409.
pub async fn append(
    state: &Chat,
    owner: Uuid,
    conversation: Uuid,
    req: AppendMessages,
    body_len: usize,
) -> Result<AppendResult, ApiError> {
    let messages = match req {
        AppendMessages::One(m) => vec![m],
        AppendMessages::Many { messages } => messages,
    };
    if messages.is_empty() || messages.len() > 1000 {
        return Err(ApiError::unprocessable("invalid_messages", "send 1 to 1000 messages"));
    }
    let max = state.max_message_bytes;
    // A body within the limit holds no message over it: skip re-measuring each.
    let max = (body_len > max).then_some(max);
    for m in &messages {
        validate_message(m, max)?;
    }
    // Attachments must name objects the caller owns; someone else's look missing.
    let mut links: Vec<Option<Vec<Uuid>>> = Vec::with_capacity(messages.len());
    for m in &messages {
        links.push(match &m.attachments {
            None => None,
            Some(refs) if refs.len() > 100 => {
                return Err(ApiError::unprocessable("invalid_attachments", "at most 100 attachments per message"));
            }
            Some(refs) => Some(db::owned_objects(&state.pool, owner, refs).await?.ok_or_else(|| {
                ApiError::not_found("an attachment names no storage object of yours").with_code("attachment_not_found")
            })?),
        });
    }
    // One new message without attachments (the chat UI's usual call): a single statement.
    if let [m] = messages.as_slice()
        && m.attachments.is_none()
    {
        let metadata = m.metadata.as_deref();
        if let Some(row) =
            db::insert_new_message(&state.pool, owner, conversation, &m.id, &m.role, &m.parts, metadata).await?
        {
            return Ok(AppendResult { data: vec![UiMessage::of(row, None)], created: 1, replaced: 0, unchanged: 0 });
        }
    }
    db::own_conversation(&state.pool, conversation, owner).await?.ok_or_else(not_found)?;
    let mut tx = state.pool.begin().await?;
    let mut out = AppendResult { data: Vec::with_capacity(messages.len()), created: 0, replaced: 0, unchanged: 0 };
    for (m, link) in messages.iter().zip(&links) {
        let metadata = m.metadata.as_deref();
        if let Some(row) =
            db::insert_new_message(&mut *tx, owner, conversation, &m.id, &m.role, &m.parts, metadata).await?
        {
            if let Some(objects) = link {
                db::set_attachments(&mut tx, owner, &m.id, objects).await?;
            }
            out.created += 1;
            out.data.push(UiMessage::of(row, None));
            continue;
        }
        let (what, row) = db::upsert_message(&mut tx, owner, conversation, &m.id, &m.role, &m.parts, metadata).await?;
        match what {
            Upserted::Created => out.created += 1,
            Upserted::Replaced => out.replaced += 1,
            Upserted::Unchanged => out.unchanged += 1,
            Upserted::OtherConversation => {
                return Err(ApiError::conflict(
                    "message_id_conflict",
                    format!("message id {:?} is used in another conversation", m.id),
                ));
            }
        }
        if let Some(objects) = link {
            db::set_attachments(&mut tx, owner, &m.id, objects).await?;
        }
        out.data.push(UiMessage::of(row, None));
    }
    if out.replaced > 0 {
        db::touch_conversation(&mut tx, conversation).await?;
    }
    tx.commit().await?;
    if messages.iter().any(|m| m.attachments.is_some()) {
        let ids: Vec<String> = out.data.iter().map(|m| m.id.clone()).collect();
        let all = db::attachments_for(&state.pool, owner, &ids).await?;
        for m in &mut out.data {
            m.attachments = all.iter().filter(|a| a.message_id == m.id).cloned().collect();
        }
    }
    Ok(out)
}

fn seq_cursor(seq: i64) -> String {
    pagination::encode(&format!("m{seq}"))
}

fn parse_seq_cursor(c: &str) -> Result<i64, ApiError> {
    pagination::decode(c)?
        .strip_prefix('m')
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::bad_request("invalid_cursor", "cursor is malformed"))
}

/// A page of a readable conversation's messages (the newest by default; older
/// with `before`, newer with `after`), oldest first within the page.
pub async fn messages(
    state: &Chat,
    caller: Option<Uuid>,
    conversation: Uuid,
    before: Option<&str>,
    after: Option<&str>,
    limit: Option<i64>,
) -> Result<MessageList, ApiError> {
    let limit = pagination::limit(limit)?;
    let page = match (before, after) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("invalid_cursor", "pass `before` or `after`, not both"));
        }
        (Some(b), None) => Page::Before(Some(parse_seq_cursor(b)?)),
        (None, Some(a)) => Page::After(parse_seq_cursor(a)?),
        (None, None) => Page::Before(None),
    };
    let conv = db::readable_conversation(&state.pool, conversation, caller).await?.ok_or_else(not_found)?;
    let mut rows = db::list_messages(&state.pool, conversation, page, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    if more {
        // The extra row is the oldest (before) or the newest (after).
        match page {
            Page::Before(_) => {
                rows.remove(0);
            }
            Page::After(_) => {
                rows.pop();
            }
        }
    }
    let before_cursor = rows.first().map(|r| seq_cursor(r.seq));
    let after_cursor = rows.last().map(|r| seq_cursor(r.seq));
    let next_cursor = if more {
        match page {
            Page::Before(_) => before_cursor.clone(),
            Page::After(_) => after_cursor.clone(),
        }
    } else {
        None
    };
    let feedback = if Some(conv.owner_id) == caller {
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        db::feedback_for(&state.pool, conv.owner_id, &ids).await?
    } else {
        Vec::new()
    };
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let attachments = db::attachments_for(&state.pool, conv.owner_id, &ids).await?;
    let data = rows
        .into_iter()
        .map(|r| {
            let fb = feedback.iter().find(|(id, _)| *id == r.id).map(|(_, v)| v.clone());
            let mut m = UiMessage::of(r, fb);
            m.attachments = attachments.iter().filter(|a| a.message_id == m.id).cloned().collect();
            m
        })
        .collect();
    Ok(MessageList { data, next_cursor, before_cursor, after_cursor })
}

/// Deletes one message of the owner's conversation.
pub async fn delete_message(state: &Chat, owner: Uuid, conversation: Uuid, id: &str) -> Result<(), ApiError> {
    db::own_conversation(&state.pool, conversation, owner).await?.ok_or_else(not_found)?;
    if db::delete_message(&state.pool, owner, conversation, id).await? {
        Ok(())
    } else {
        Err(ApiError::not_found("message not found"))
    }
}

/// Deletes every message after (`inclusive` = from) the message `id`; returns how many.
pub async fn truncate(
    state: &Chat,
    owner: Uuid,
    conversation: Uuid,
    id: &str,
    inclusive: bool,
) -> Result<u64, ApiError> {
    db::own_conversation(&state.pool, conversation, owner).await?.ok_or_else(not_found)?;
    db::delete_messages_after(&state.pool, owner, conversation, id, inclusive)
        .await?
        .ok_or_else(|| ApiError::not_found("message not found"))
}

/// Sets or clears feedback on a message of the owner's conversation.
pub async fn feedback(
    state: &Chat,
    owner: Uuid,
    conversation: Uuid,
    id: &str,
    req: FeedbackRequest,
) -> Result<FeedbackResponse, ApiError> {
    if let Some(v) = &req.value
        && !matches!(v.as_str(), "up" | "down")
    {
        return Err(ApiError::unprocessable("invalid_feedback", "value must be `up`, `down` or null"));
    }
    if req.comment.as_ref().is_some_and(|c| c.chars().count() > 2000) {
        return Err(ApiError::unprocessable("invalid_feedback", "comment is longer than 2000 characters"));
    }
    db::own_conversation(&state.pool, conversation, owner).await?.ok_or_else(not_found)?;
    if !db::set_feedback(&state.pool, owner, conversation, id, req.value.as_deref(), req.comment.as_deref()).await? {
        return Err(ApiError::not_found("message not found"));
    }
    Ok(FeedbackResponse { message_id: id.to_string(), value: req.value })
}

/// Fusion weights of message search: full text, vector (as measured for
/// knowledge chunks; `benches/memory` measures them on conversation turns).
pub const SEARCH_WEIGHTS: [f64; 2] = crate::knowledge::service::DEFAULT_WEIGHTS;

/// Searches the owner's messages: full text (web-search syntax) and vectors,
/// fused, within the filters; an offset cursor (ranks change as messages come).
pub async fn search(state: &Chat, owner: Uuid, q: MessageSearch, page: &PageQuery) -> Result<SearchResults, ApiError> {
    let too_long = q.q.chars().count() > 500;
    let text = q.q.trim();
    if text.is_empty() || too_long {
        return Err(ApiError::bad_request("invalid_query", "q must be 1 to 500 characters"));
    }
    let mode = match q.mode.as_deref() {
        None | Some("hybrid") => [true, true],
        Some("fulltext") => [true, false],
        Some("vector") => [false, true],
        Some(_) => return Err(ApiError::bad_request("invalid_mode", "mode must be hybrid, fulltext or vector")),
    };
    if let Some(r) = &q.role
        && !matches!(r.as_str(), "system" | "user" | "assistant")
    {
        return Err(ApiError::bad_request("invalid_role", "role must be system, user or assistant"));
    }
    let limit = page.limit()?;
    let offset: i64 = match page.cursor_text()? {
        Some(c) => c
            .strip_prefix('o')
            .and_then(|s| s.parse().ok())
            .filter(|n: &i64| *n >= 0 && *n <= 1_000)
            .ok_or_else(|| ApiError::bad_request("invalid_cursor", "cursor is malformed"))?,
        None => 0,
    };
    let filter = db::MessageFilter { after: q.after, before: q.before, conversation: q.conversation_id, role: q.role };
    let depth = (offset + limit + 1).max(100);
    let fulltext =
        if mode[0] { db::fulltext_messages(&state.pool, owner, text, &filter, depth).await? } else { Vec::new() };
    let vector = if mode[1] {
        let v = state.embedder.embed(vec![text.to_string()]).await.map_err(|e| {
            tracing::warn!(error = %e, "embedding a message search");
            ApiError::unavailable("the embedding model is unavailable; try mode=fulltext")
                .with_code("embedder_unavailable")
        })?;
        let query = crate::db::shared::VectorQuery {
            model: state.embedder.model(),
            dim: state.embedder.dim(),
            vector: pgvector::Vector::from(v.into_iter().next().unwrap_or_default()),
        };
        db::nearest_messages(&state.pool, owner, query, &filter, depth).await?
    } else {
        Vec::new()
    };
    let weights = match mode {
        [true, true] => [SEARCH_WEIGHTS[0], SEARCH_WEIGHTS[1], 0.0],
        [true, false] => [1.0, 0.0, 0.0],
        _ => [0.0, 1.0, 0.0],
    };
    let ranked = crate::rank::fuse(
        crate::rank::Lists { fulltext: &fulltext, vector: &vector, recency: &[] },
        weights,
        crate::rank::RRF_K,
    );
    let more = ranked.len() as i64 > offset + limit;
    let page_rows: Vec<(i64, crate::rank::Scores)> =
        ranked.into_iter().skip(offset as usize).take(limit as usize).collect();
    let seqs: Vec<i64> = page_rows.iter().map(|r| r.0).collect();
    let mut hits: std::collections::HashMap<i64, db::SearchHit> =
        db::message_hits(&state.pool, owner, &seqs, text).await?.into_iter().map(|h| (h.seq, h)).collect();
    let data = page_rows
        .into_iter()
        .filter_map(|(seq, scores)| {
            let h = hits.remove(&seq)?;
            Some(SearchHitView {
                message_id: h.id,
                conversation_id: h.conversation_id,
                role: h.role,
                headline: h.headline,
                rank: scores.fused as f32,
                scores,
                created_at: h.created_at,
            })
        })
        .collect();
    let next_cursor = more.then(|| pagination::encode(&format!("o{}", offset + limit)));
    Ok(pagination::Page { data, next_cursor })
}
