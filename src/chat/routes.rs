//! Chat HTTP handlers: conversations, messages, feedback, search.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::service;
use super::types::*;
use std::sync::Arc;

use super::Chat;
use crate::auth::{Caller, CurrentUser};
use crate::error::{ApiError, ApiJson};
use crate::pagination::{Page, PageQuery};

/// The chat routes.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Chat>: axum::extract::FromRef<S>,
    Arc<crate::auth::AuthState>: axum::extract::FromRef<S>,
{
    let small = OpenApiRouter::new()
        .routes(routes!(create_conversation, list_conversations))
        .routes(routes!(get_conversation, patch_conversation, delete_conversation))
        .routes(routes!(delete_message))
        .routes(routes!(put_feedback))
        .routes(routes!(search_messages))
        .layer(axum::extract::DefaultBodyLimit::max(crate::error::SMALL_JSON_LIMIT));
    // Appends carry whole messages: up to CARMENTA_BODY_LIMIT.
    small.merge(OpenApiRouter::new().routes(routes!(append_messages, list_messages, truncate_messages)))
}

fn conversation_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("conversation not found"))
}

/// Create a conversation.
#[utoipa::path(post, path = "/v1/conversations", tag = "chat", request_body = CreateConversation,
    responses((status = 201, body = Conversation), (status = 409, description = "conversation_exists")))]
async fn create_conversation(
    State(state): State<Arc<Chat>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<CreateConversation>,
) -> Result<Response, ApiError> {
    let c = service::create(&state, user.user_id, req).await?;
    Ok((StatusCode::CREATED, ApiJson(c)).into_response())
}

/// Filter of the conversation list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `false` (default), `true` or `all`.
    archived: Option<String>,
}

/// List my conversations, newest activity first.
#[utoipa::path(get, path = "/v1/conversations", tag = "chat", params(ListQuery, PageQuery), responses((status = 200, body = Page<Conversation>)))]
async fn list_conversations(
    State(state): State<Arc<Chat>>,
    user: CurrentUser,
    Query(q): Query<ListQuery>,
    Query(page): Query<PageQuery>,
) -> Result<ApiJson<ConversationList>, ApiError> {
    service::list(&state, user.user_id, q.archived.as_deref(), &page).await.map(ApiJson)
}

/// A conversation: mine, or a public one (read-only).
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "chat", params(("id" = Uuid, Path)),
    responses((status = 200, body = Conversation), (status = 404)))]
async fn get_conversation(
    State(state): State<Arc<Chat>>,
    caller: Option<Caller>,
    Path(id): Path<String>,
) -> Result<ApiJson<Conversation>, ApiError> {
    let id = conversation_id(&id)?;
    service::get(&state, caller.and_then(|c| c.0.user_id()), id).await.map(ApiJson)
}

/// Rename, archive, or change visibility or metadata.
#[utoipa::path(patch, path = "/v1/conversations/{id}", tag = "chat", params(("id" = Uuid, Path)), request_body = PatchConversation,
    responses((status = 200, body = Conversation), (status = 404)))]
async fn patch_conversation(
    State(state): State<Arc<Chat>>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PatchConversation>,
) -> Result<ApiJson<Conversation>, ApiError> {
    service::update(&state, user.user_id, conversation_id(&id)?, req).await.map(ApiJson)
}

/// Delete a conversation and its messages.
#[utoipa::path(delete, path = "/v1/conversations/{id}", tag = "chat", params(("id" = Uuid, Path)), responses((status = 204), (status = 404)))]
async fn delete_conversation(
    State(state): State<Arc<Chat>>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    service::delete(&state, user.user_id, conversation_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Append AI SDK `UIMessage`s (one, or `{"messages": [...]}`); idempotent by message id.
#[utoipa::path(post, path = "/v1/conversations/{id}/messages", tag = "chat", params(("id" = Uuid, Path)), request_body = AppendMessages,
    responses((status = 201, body = AppendResult), (status = 200, body = AppendResult, description = "nothing new"),
        (status = 409, description = "message_id_conflict"), (status = 413, description = "message_too_large"), (status = 422)))]
async fn append_messages(
    State(state): State<Arc<Chat>>,
    user: CurrentUser,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    ApiJson(req): ApiJson<AppendMessages>,
) -> Result<Response, ApiError> {
    // The body was read whole by the extractor; its length bounds every message.
    let body_len = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let result = service::append(&state, user.user_id, conversation_id(&id)?, req, body_len).await?;
    let status = if result.created > 0 { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, ApiJson(result)).into_response())
}

/// Query of the message list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// 1–100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Older than this cursor.
    before: Option<String>,
    /// Newer than this cursor.
    after: Option<String>,
}

/// Messages of a conversation, oldest first within the page (the latest page by default).
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "chat", params(("id" = Uuid, Path), MessagesQuery),
    responses((status = 200, body = MessageList), (status = 404)))]
async fn list_messages(
    State(state): State<Arc<Chat>>,
    caller: Option<Caller>,
    Path(id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Result<ApiJson<MessageList>, ApiError> {
    let caller = caller.and_then(|c| c.0.user_id());
    service::messages(&state, caller, conversation_id(&id)?, q.before.as_deref(), q.after.as_deref(), q.limit)
        .await
        .map(ApiJson)
}

/// Which messages to truncate.
#[derive(Debug, Deserialize, IntoParams)]
pub struct TruncateQuery {
    /// Delete every message after this one (regenerate).
    after: Option<String>,
    /// Delete this message and every one after it (edit).
    from: Option<String>,
}

/// Delete every message after (or from) a message, for edits and regenerations.
#[utoipa::path(delete, path = "/v1/conversations/{id}/messages", tag = "chat", params(("id" = Uuid, Path), TruncateQuery),
    responses((status = 200, description = "{\"deleted\": n}"), (status = 404)))]
async fn truncate_messages(
    State(state): State<Arc<Chat>>,
    user: CurrentUser,
    Path(id): Path<String>,
    Query(q): Query<TruncateQuery>,
) -> Result<ApiJson<serde_json::Value>, ApiError> {
    let conv = conversation_id(&id)?;
    let (mid, inclusive) = match (q.after, q.from) {
        (Some(a), None) => (a, false),
        (None, Some(f)) => (f, true),
        _ => return Err(ApiError::bad_request("invalid_query", "pass exactly one of `after` or `from`")),
    };
    let n = service::truncate(&state, user.user_id, conv, &mid, inclusive).await?;
    Ok(ApiJson(serde_json::json!({ "deleted": n })))
}

/// Delete one message.
#[utoipa::path(delete, path = "/v1/conversations/{id}/messages/{message_id}", tag = "chat",
    params(("id" = Uuid, Path), ("message_id" = String, Path)), responses((status = 204), (status = 404)))]
async fn delete_message(
    State(state): State<Arc<Chat>>,
    user: CurrentUser,
    Path((id, mid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    service::delete_message(&state, user.user_id, conversation_id(&id)?, &mid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Thumbs up or down on a message (null clears it).
#[utoipa::path(put, path = "/v1/conversations/{id}/messages/{message_id}/feedback", tag = "chat",
    params(("id" = Uuid, Path), ("message_id" = String, Path)), request_body = FeedbackRequest,
    responses((status = 200, body = FeedbackResponse), (status = 404)))]
async fn put_feedback(
    State(state): State<Arc<Chat>>,
    user: CurrentUser,
    Path((id, mid)): Path<(String, String)>,
    ApiJson(req): ApiJson<FeedbackRequest>,
) -> Result<ApiJson<FeedbackResponse>, ApiError> {
    service::feedback(&state, user.user_id, conversation_id(&id)?, &mid, req).await.map(ApiJson)
}

/// Search my messages (an agent's `conversation_search`): full text and vectors
/// fused, with time, conversation and role filters; highlighted, paginated.
#[utoipa::path(get, path = "/v1/search/messages", tag = "chat", params(MessageSearch, PageQuery),
    responses((status = 200, body = Page<SearchHitView>), (status = 400), (status = 503, description = "embedder_unavailable")))]
async fn search_messages(
    State(state): State<Arc<Chat>>,
    user: CurrentUser,
    Query(q): Query<MessageSearch>,
    Query(page): Query<PageQuery>,
) -> Result<ApiJson<SearchResults>, ApiError> {
    service::search(&state, user.user_id, q, &page).await.map(ApiJson)
}
