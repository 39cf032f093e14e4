//! Memory HTTP handlers: `/v1/memories` (add, list, get with provenance and
//! history, correct, invalidate, delete, delete all, export, search),
//! `/v1/memory/…` (settings, per-conversation switch, extraction runs, extract
//! now) and `POST /v1/context`. Every handler works on the caller's own rows only
//! (another user's id is a 404).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Memory as Area;
use super::service::{self, Actor};
use super::types::*;
use crate::auth::{CurrentUser, Principal};
use crate::error::{ApiError, ApiJson};
use crate::pagination::{Page, PageQuery};

/// The memory routes.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Area>: axum::extract::FromRef<S>,
    Arc<crate::auth::AuthState>: axum::extract::FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_memories, add_memory, delete_all))
        .routes(routes!(export))
        .routes(routes!(search))
        .routes(routes!(get_memory, patch_memory, delete_memory))
        .routes(routes!(invalidate))
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(get_conversation, put_conversation))
        .routes(routes!(list_extractions))
        .routes(routes!(extract_now))
        .routes(routes!(context))
        .layer(axum::extract::DefaultBodyLimit::max(crate::error::SMALL_JSON_LIMIT))
}

fn actor(user: &CurrentUser) -> Actor {
    match user.principal {
        Principal::User { .. } => Actor::User,
        Principal::Service { .. } => Actor::App,
    }
}

fn id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("{what} not found")))
}

/// My memories, newest first (active ones unless `include_superseded`).
#[utoipa::path(get, path = "/v1/memories", tag = "memory", params(ListMemories, PageQuery),
    responses((status = 200, body = Page<Memory>), (status = 422)))]
async fn list_memories(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    Query(q): Query<ListMemories>,
    Query(page): Query<PageQuery>,
) -> Result<ApiJson<Page<Memory>>, ApiError> {
    service::list(&m, user.user_id, q, &page).await.map(ApiJson)
}

/// Add a memory (no model involved). A memory in a `slot` supersedes the slot's
/// active one. Secrets are refused.
#[utoipa::path(post, path = "/v1/memories", tag = "memory", request_body = CreateMemory,
    responses((status = 201, body = Memory), (status = 409, description = "duplicate_memory"),
        (status = 422, description = "invalid_text, contains_secret, invalid_kind, invalid_slot")))]
async fn add_memory(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<CreateMemory>,
) -> Result<Response, ApiError> {
    let created = service::add(&m, user.user_id, actor(&user), req).await?;
    Ok((StatusCode::CREATED, ApiJson(created)).into_response())
}

/// Confirmation of deleting every memory.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteAll {
    /// Must be `true`.
    confirm: Option<bool>,
}

/// How many memories were deleted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// The count.
    pub deleted: u64,
}

/// Delete every memory of mine (`confirm=true`): rows, vectors and index entries.
#[utoipa::path(delete, path = "/v1/memories", tag = "memory", params(DeleteAll),
    responses((status = 200, body = Deleted), (status = 400, description = "confirmation_required")))]
async fn delete_all(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    Query(q): Query<DeleteAll>,
) -> Result<ApiJson<Deleted>, ApiError> {
    if q.confirm != Some(true) {
        return Err(ApiError::bad_request("confirmation_required", "add confirm=true to delete every memory"));
    }
    let deleted = service::delete_all(&m, user.user_id, actor(&user)).await?;
    Ok(ApiJson(Deleted { deleted }))
}

/// Everything memory holds about me, as JSON.
#[utoipa::path(get, path = "/v1/memories/export", tag = "memory", responses((status = 200, body = MemoryExport)))]
async fn export(State(m): State<Arc<Area>>, user: CurrentUser) -> Result<Response, ApiError> {
    let e = service::export(&m, user.user_id).await?;
    Ok(([(axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"memories.json\"")], ApiJson(e))
        .into_response())
}

/// Search my memories: BM25, vector and recency fused, each signal's score shown.
#[utoipa::path(post, path = "/v1/memories/search", tag = "memory", request_body = SearchMemories,
    responses((status = 200, body = MemoryHits), (status = 422), (status = 503, description = "embedder_unavailable")))]
async fn search(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<SearchMemories>,
) -> Result<ApiJson<MemoryHits>, ApiError> {
    service::search(&m, user.user_id, req).await.map(ApiJson)
}

/// A memory with its provenance, history and the memories it superseded.
#[utoipa::path(get, path = "/v1/memories/{id}", tag = "memory", params(("id" = Uuid, Path)),
    responses((status = 200, body = MemoryDetail), (status = 404)))]
async fn get_memory(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    Path(raw): Path<String>,
) -> Result<ApiJson<MemoryDetail>, ApiError> {
    service::get(&m, user.user_id, id(&raw, "memory")?).await.map(ApiJson)
}

/// Correct a memory (a new `text` supersedes it with a new memory) or change its
/// pin, confidence or metadata.
#[utoipa::path(patch, path = "/v1/memories/{id}", tag = "memory", params(("id" = Uuid, Path)),
    request_body = PatchMemory, responses((status = 200, body = MemoryDetail), (status = 404),
        (status = 409, description = "memory_ended"), (status = 422)))]
async fn patch_memory(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<PatchMemory>,
) -> Result<ApiJson<MemoryDetail>, ApiError> {
    service::patch(&m, user.user_id, actor(&user), id(&raw, "memory")?, req).await.map(ApiJson)
}

/// Delete a memory: gone from the list, search, context and every index at once.
#[utoipa::path(delete, path = "/v1/memories/{id}", tag = "memory", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404)))]
async fn delete_memory(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    service::delete(&m, user.user_id, actor(&user), id(&raw, "memory")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// End a memory's validity (it stays as history); the body may be `{}`.
#[utoipa::path(post, path = "/v1/memories/{id}/invalidate", tag = "memory", params(("id" = Uuid, Path)),
    request_body = InvalidateMemory, responses((status = 200, body = MemoryDetail), (status = 404),
        (status = 409, description = "memory_ended")))]
async fn invalidate(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<InvalidateMemory>,
) -> Result<ApiJson<MemoryDetail>, ApiError> {
    service::invalidate(&m, user.user_id, actor(&user), id(&raw, "memory")?, req).await.map(ApiJson)
}

/// My memory settings.
#[utoipa::path(get, path = "/v1/memory/settings", tag = "memory", responses((status = 200, body = MemorySettings)))]
async fn get_settings(State(m): State<Arc<Area>>, user: CurrentUser) -> Result<ApiJson<MemorySettings>, ApiError> {
    service::settings(&m, user.user_id).await.map(ApiJson)
}

/// Turn extraction from my conversations on or off.
#[utoipa::path(put, path = "/v1/memory/settings", tag = "memory", request_body = MemorySettings,
    responses((status = 200, body = MemorySettings)))]
async fn put_settings(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<MemorySettings>,
) -> Result<ApiJson<MemorySettings>, ApiError> {
    service::set_settings(&m, user.user_id, req).await.map(ApiJson)
}

/// Whether a conversation of mine is remembered.
#[utoipa::path(get, path = "/v1/memory/conversations/{id}", tag = "memory", params(("id" = Uuid, Path)),
    responses((status = 200, body = ConversationMemory), (status = 404)))]
async fn get_conversation(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    Path(raw): Path<String>,
) -> Result<ApiJson<ConversationMemory>, ApiError> {
    service::conversation(&m, user.user_id, id(&raw, "conversation")?).await.map(ApiJson)
}

/// Mark a conversation of mine remembered or not (nothing is extracted from it).
#[utoipa::path(put, path = "/v1/memory/conversations/{id}", tag = "memory", params(("id" = Uuid, Path)),
    request_body = ConversationMemory, responses((status = 200, body = ConversationMemory), (status = 404)))]
async fn put_conversation(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<ConversationMemory>,
) -> Result<ApiJson<ConversationMemory>, ApiError> {
    service::set_conversation(&m, user.user_id, id(&raw, "conversation")?, req).await.map(ApiJson)
}

/// My extraction runs, newest first (failed ones with their reason).
#[utoipa::path(get, path = "/v1/memory/extractions", tag = "memory", params(ListExtractions, PageQuery),
    responses((status = 200, body = Page<Extraction>)))]
async fn list_extractions(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    Query(q): Query<ListExtractions>,
    Query(page): Query<PageQuery>,
) -> Result<ApiJson<Page<Extraction>>, ApiError> {
    service::extractions(&m, user.user_id, q, &page).await.map(ApiJson)
}

/// Extract memories from a conversation's unread messages now.
#[utoipa::path(post, path = "/v1/memory/extract", tag = "memory", request_body = ExtractRequest,
    responses((status = 202, body = ExtractQueued), (status = 404),
        (status = 409, description = "extraction_not_configured, not_remembered, extraction_disabled")))]
async fn extract_now(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<ExtractRequest>,
) -> Result<Response, ApiError> {
    let q = service::extract_now(&m, user.user_id, req).await?;
    Ok((StatusCode::ACCEPTED, ApiJson(q)).into_response())
}

/// Assemble the context for a model call: profile, relevant memories, knowledge and
/// recent messages within a token budget, each section with its items and tokens,
/// what was left out and why, and the whole as one text block.
#[utoipa::path(post, path = "/v1/context", tag = "memory", request_body = ContextRequest,
    responses((status = 200, body = Context), (status = 403, description = "insufficient_permission"),
        (status = 404), (status = 422)))]
async fn context(
    State(m): State<Arc<Area>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<ContextRequest>,
) -> Result<ApiJson<Context>, ApiError> {
    super::context::assemble(&m, user.user_id, req).await.map(ApiJson)
}
