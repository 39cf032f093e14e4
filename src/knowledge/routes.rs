//! Knowledge HTTP handlers under `/v1/knowledge`: folders, documents, versions,
//! chunks, links, files being ingested, and search. Every handler first settles
//! the space it works in ([`service::space_of`], [`service::space_for`]): the
//! caller's own (another user's id is a 404) or an organization's shared one, where
//! the caller's role must hold `org:knowledge:read` (reads) or `org:knowledge:write`
//! (changes), else 403; a non-member gets the same 404 as for a missing id.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Knowledge;
use super::service::{self, Held, Need};
use super::types::*;
use crate::auth::CurrentUser;
use crate::error::{ApiError, ApiJson};
use crate::pagination::{Page, PageQuery};

/// The knowledge routes.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Knowledge>: axum::extract::FromRef<S>,
    Arc<crate::auth::AuthState>: axum::extract::FromRef<S>,
{
    let small = OpenApiRouter::new()
        .routes(routes!(list_folders, create_folder))
        .routes(routes!(get_folder, patch_folder, delete_folder))
        .routes(routes!(list_documents))
        .routes(routes!(get_document, patch_document, delete_document))
        .routes(routes!(list_versions))
        .routes(routes!(get_version))
        .routes(routes!(list_chunks))
        .routes(routes!(get_links, add_link))
        .routes(routes!(delete_link))
        .routes(routes!(list_files, add_file))
        .routes(routes!(get_file, delete_file))
        .routes(routes!(reingest_file))
        .routes(routes!(search))
        .layer(axum::extract::DefaultBodyLimit::max(crate::error::SMALL_JSON_LIMIT));
    // Document bodies: up to CARMENTA_BODY_LIMIT (5 MB of text is checked inside).
    small.merge(OpenApiRouter::new().routes(routes!(create_document)).routes(routes!(replace_document)))
}

fn id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("{what} not found")))
}

/// Which space a list works in.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SpaceQuery {
    /// An organization's shared knowledge (`org:knowledge:read`) instead of my own.
    org_id: Option<Uuid>,
}

/// My top-level folders (or an organization's), by name.
#[utoipa::path(get, path = "/v1/knowledge/folders", tag = "knowledge", params(SpaceQuery),
    responses((status = 200, body = Vec<Folder>), (status = 403, description = "insufficient_permission"),
        (status = 404, description = "organization not found")))]
async fn list_folders(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Query(q): Query<SpaceQuery>,
) -> Result<ApiJson<Vec<Folder>>, ApiError> {
    let space = service::space_for(&k, user.user_id, q.org_id, Need::Read).await?;
    service::top_folders(&k, space.id).await.map(ApiJson)
}

/// Create a folder (at the top level or under `parent_id`; with `org_id`, in the
/// organization's shared knowledge).
#[utoipa::path(post, path = "/v1/knowledge/folders", tag = "knowledge", request_body = CreateFolder,
    responses((status = 201, body = Folder), (status = 403, description = "insufficient_permission"),
        (status = 404, description = "parent or organization not found"),
        (status = 409, description = "folder_exists"), (status = 422)))]
async fn create_folder(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<CreateFolder>,
) -> Result<Response, ApiError> {
    let space = service::space_for_new(&k, user.user_id, req.org_id, req.parent_id).await?;
    let f = service::create_folder(&k, space.id, req).await?;
    Ok((StatusCode::CREATED, ApiJson(f)).into_response())
}

/// A folder with breadcrumbs, child folders and documents.
#[utoipa::path(get, path = "/v1/knowledge/folders/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 403, description = "insufficient_permission"), (status = 200, body = FolderView), (status = 404)))]
async fn get_folder(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(fid): Path<String>,
) -> Result<ApiJson<FolderView>, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Folder, id(&fid, "folder")?, Need::Read).await?;
    service::folder(&k, space.id, id(&fid, "folder")?).await.map(ApiJson)
}

/// Rename a folder, or move it (with its subtree) under another parent.
#[utoipa::path(patch, path = "/v1/knowledge/folders/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    request_body = PatchFolder, responses((status = 403, description = "insufficient_permission"), (status = 200, body = Folder), (status = 404),
        (status = 409, description = "folder_exists"), (status = 422, description = "folder_cycle")))]
async fn patch_folder(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(fid): Path<String>,
    ApiJson(req): ApiJson<PatchFolder>,
) -> Result<ApiJson<Folder>, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Folder, id(&fid, "folder")?, Need::Write).await?;
    service::patch_folder(&k, space.id, id(&fid, "folder")?, req).await.map(ApiJson)
}

/// Delete a folder with its subfolders and their documents.
#[utoipa::path(delete, path = "/v1/knowledge/folders/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 403, description = "insufficient_permission"), (status = 204), (status = 404)))]
async fn delete_folder(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(fid): Path<String>,
) -> Result<StatusCode, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Folder, id(&fid, "folder")?, Need::Write).await?;
    service::delete_folder(&k, space.id, id(&fid, "folder")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Filter of the document list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DocumentsQuery {
    /// Only documents directly in this folder.
    folder_id: Option<Uuid>,
    /// `true`: only top-level documents.
    top: Option<bool>,
    /// An organization's shared knowledge (`org:knowledge:read`) instead of my own
    /// (without `folder_id`; a folder names its space).
    org_id: Option<Uuid>,
}

/// My documents, most recently changed first.
#[utoipa::path(get, path = "/v1/knowledge/documents", tag = "knowledge", params(DocumentsQuery, PageQuery),
    responses((status = 403, description = "insufficient_permission"), (status = 200, body = Page<DocumentSummary>), (status = 404)))]
async fn list_documents(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Query(q): Query<DocumentsQuery>,
    Query(page): Query<PageQuery>,
) -> Result<ApiJson<Page<DocumentSummary>>, ApiError> {
    let space = match q.folder_id {
        Some(f) => service::space_of(&k, user.user_id, Held::Folder, f, Need::Read).await?,
        None => service::space_for(&k, user.user_id, q.org_id, Need::Read).await?,
    };
    service::list_documents(&k, space.id, q.folder_id, q.top.unwrap_or(false), &page).await.map(ApiJson)
}

/// Create a document (version 1); `[[Title]]` references become links.
#[utoipa::path(post, path = "/v1/knowledge/documents", tag = "knowledge", request_body = CreateDocument,
    responses((status = 403, description = "insufficient_permission"), (status = 201, body = Document), (status = 404, description = "folder not found"), (status = 422)))]
async fn create_document(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<CreateDocument>,
) -> Result<Response, ApiError> {
    let space = service::space_for_new(&k, user.user_id, req.org_id, req.folder_id).await?;
    let d = service::create_document(&k, space.id, req).await?;
    Ok((StatusCode::CREATED, ApiJson(d)).into_response())
}

/// A document with its current body.
#[utoipa::path(get, path = "/v1/knowledge/documents/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 403, description = "insufficient_permission"), (status = 200, body = Document), (status = 404)))]
async fn get_document(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(did): Path<String>,
) -> Result<ApiJson<Document>, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Document, id(&did, "document")?, Need::Read).await?;
    service::get_document(&k, space.id, id(&did, "document")?).await.map(ApiJson)
}

/// Replace a document's body (and title): a new version, atomically.
#[utoipa::path(put, path = "/v1/knowledge/documents/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    request_body = ReplaceDocument, responses((status = 403, description = "insufficient_permission"), (status = 200, body = Document), (status = 404),
        (status = 409, description = "version_conflict"), (status = 422)))]
async fn replace_document(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(did): Path<String>,
    ApiJson(req): ApiJson<ReplaceDocument>,
) -> Result<ApiJson<Document>, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Document, id(&did, "document")?, Need::Write).await?;
    service::replace_document(&k, space.id, id(&did, "document")?, req.title, Some(req.body), req.if_version)
        .await
        .map(ApiJson)
}

/// Move a document, change its tags or metadata, or retitle it (a new version).
#[utoipa::path(patch, path = "/v1/knowledge/documents/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    request_body = PatchDocument, responses((status = 403, description = "insufficient_permission"), (status = 200, body = Document), (status = 404), (status = 422)))]
async fn patch_document(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(did): Path<String>,
    ApiJson(req): ApiJson<PatchDocument>,
) -> Result<ApiJson<Document>, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Document, id(&did, "document")?, Need::Write).await?;
    service::patch_document(&k, space.id, id(&did, "document")?, req).await.map(ApiJson)
}

/// Delete a document with every version, chunk and vector.
#[utoipa::path(delete, path = "/v1/knowledge/documents/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 403, description = "insufficient_permission"), (status = 204), (status = 404)))]
async fn delete_document(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(did): Path<String>,
) -> Result<StatusCode, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Document, id(&did, "document")?, Need::Write).await?;
    service::delete_document(&k, space.id, id(&did, "document")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A document's versions, newest first.
#[utoipa::path(get, path = "/v1/knowledge/documents/{id}/versions", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 403, description = "insufficient_permission"), (status = 200, body = Vec<Version>), (status = 404)))]
async fn list_versions(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(did): Path<String>,
) -> Result<ApiJson<Vec<Version>>, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Document, id(&did, "document")?, Need::Read).await?;
    service::versions(&k, space.id, id(&did, "document")?).await.map(ApiJson)
}

/// One version of a document, with its body.
#[utoipa::path(get, path = "/v1/knowledge/documents/{id}/versions/{version}", tag = "knowledge",
    params(("id" = Uuid, Path), ("version" = i32, Path)), responses((status = 403, description = "insufficient_permission"), (status = 200, body = Version), (status = 404)))]
async fn get_version(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path((did, n)): Path<(String, String)>,
) -> Result<ApiJson<Version>, ApiError> {
    let n = n.parse::<i32>().map_err(|_| ApiError::not_found("version not found"))?;
    let space = service::space_of(&k, user.user_id, Held::Document, id(&did, "document")?, Need::Read).await?;
    service::version(&k, space.id, id(&did, "document")?, n).await.map(ApiJson)
}

/// Which version's chunks.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChunksQuery {
    /// A version number (default: the current one).
    version: Option<i32>,
}

/// The chunks of a document version: spans, pages, heading trails.
#[utoipa::path(get, path = "/v1/knowledge/documents/{id}/chunks", tag = "knowledge", params(("id" = Uuid, Path), ChunksQuery),
    responses((status = 403, description = "insufficient_permission"), (status = 200, body = Vec<ChunkView>), (status = 404)))]
async fn list_chunks(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(did): Path<String>,
    Query(q): Query<ChunksQuery>,
) -> Result<ApiJson<Vec<ChunkView>>, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Document, id(&did, "document")?, Need::Read).await?;
    service::chunks(&k, space.id, id(&did, "document")?, q.version).await.map(ApiJson)
}

/// A document's outgoing links and backlinks.
#[utoipa::path(get, path = "/v1/knowledge/documents/{id}/links", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 403, description = "insufficient_permission"), (status = 200, body = Links), (status = 404)))]
async fn get_links(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(did): Path<String>,
) -> Result<ApiJson<Links>, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Document, id(&did, "document")?, Need::Read).await?;
    service::links(&k, space.id, id(&did, "document")?).await.map(ApiJson)
}

/// Link this document to another of mine.
#[utoipa::path(post, path = "/v1/knowledge/documents/{id}/links", tag = "knowledge", params(("id" = Uuid, Path)),
    request_body = CreateLink, responses((status = 403, description = "insufficient_permission"), (status = 200, body = Links), (status = 404)))]
async fn add_link(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(did): Path<String>,
    ApiJson(req): ApiJson<CreateLink>,
) -> Result<ApiJson<Links>, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Document, id(&did, "document")?, Need::Write).await?;
    service::add_link(&k, space.id, id(&did, "document")?, req.target_id).await.map(ApiJson)
}

/// Remove a manual link.
#[utoipa::path(delete, path = "/v1/knowledge/documents/{id}/links/{target_id}", tag = "knowledge",
    params(("id" = Uuid, Path), ("target_id" = Uuid, Path)), responses((status = 403, description = "insufficient_permission"), (status = 204), (status = 404)))]
async fn delete_link(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path((did, tid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::Document, id(&did, "document")?, Need::Write).await?;
    service::delete_link(&k, space.id, id(&did, "document")?, id(&tid, "link")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// My files and where their ingestion stands, newest first.
#[utoipa::path(get, path = "/v1/knowledge/files", tag = "knowledge", params(PageQuery),
    responses((status = 404, description = "organization not found"), (status = 403, description = "insufficient_permission"), (status = 200, body = Page<FileStatus>)))]
async fn list_files(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Query(q): Query<SpaceQuery>,
    Query(page): Query<PageQuery>,
) -> Result<ApiJson<Page<FileStatus>>, ApiError> {
    let space = service::space_for(&k, user.user_id, q.org_id, Need::Read).await?;
    service::files(&k, space.id, &page).await.map(ApiJson)
}

/// Ingest a storage object I own; it is re-ingested whenever it changes.
#[utoipa::path(post, path = "/v1/knowledge/files", tag = "knowledge", request_body = CreateFile,
    responses((status = 403, description = "insufficient_permission"), (status = 202, body = FileStatus), (status = 404, description = "object or folder not found")))]
async fn add_file(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<CreateFile>,
) -> Result<Response, ApiError> {
    let space = service::space_for_new(&k, user.user_id, req.org_id, req.folder_id).await?;
    let f = service::add_file(&k, user.user_id, space, req).await?;
    Ok((StatusCode::ACCEPTED, ApiJson(f)).into_response())
}

/// A file's ingestion status.
#[utoipa::path(get, path = "/v1/knowledge/files/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 403, description = "insufficient_permission"), (status = 200, body = FileStatus), (status = 404)))]
async fn get_file(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(fid): Path<String>,
) -> Result<ApiJson<FileStatus>, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::File, id(&fid, "file")?, Need::Read).await?;
    service::file(&k, space.id, id(&fid, "file")?).await.map(ApiJson)
}

/// Stop watching a file (its document stays).
#[utoipa::path(delete, path = "/v1/knowledge/files/{id}", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 403, description = "insufficient_permission"), (status = 204), (status = 404)))]
async fn delete_file(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(fid): Path<String>,
) -> Result<StatusCode, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::File, id(&fid, "file")?, Need::Write).await?;
    service::delete_file(&k, space.id, id(&fid, "file")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ingest a file again even if its object has not changed.
#[utoipa::path(post, path = "/v1/knowledge/files/{id}/reingest", tag = "knowledge", params(("id" = Uuid, Path)),
    responses((status = 403, description = "insufficient_permission"), (status = 202, body = FileStatus), (status = 404)))]
async fn reingest_file(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    Path(fid): Path<String>,
) -> Result<Response, ApiError> {
    let space = service::space_of(&k, user.user_id, Held::File, id(&fid, "file")?, Need::Write).await?;
    let f = service::reingest(&k, space.id, id(&fid, "file")?).await?;
    Ok((StatusCode::ACCEPTED, ApiJson(f)).into_response())
}

/// Search my knowledge base: BM25 full-text, vector, or hybrid (weighted
/// reciprocal-rank fusion), each result with its citation and per-signal scores.
#[utoipa::path(post, path = "/v1/knowledge/search", tag = "knowledge", request_body = SearchRequest,
    responses((status = 403, description = "insufficient_permission"), (status = 200, body = SearchPage), (status = 404, description = "folder not found"), (status = 422),
        (status = 503, description = "embedder_unavailable")))]
async fn search(
    State(k): State<Arc<Knowledge>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<SearchRequest>,
) -> Result<ApiJson<SearchPage>, ApiError> {
    let spaces = service::search_spaces(&k, user.user_id, &req).await?;
    service::search(&k, &spaces, req).await.map(ApiJson)
}
