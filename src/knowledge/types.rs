//! Request and response bodies of the knowledge API.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// `POST /v1/knowledge/folders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFolder {
    /// Display name (1–200 characters, unique among its siblings).
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// The parent folder; absent for a top-level folder.
    #[serde(default)]
    pub parent_id: Option<Uuid>,
    /// Make it in this organization's shared knowledge (`org:knowledge:write`);
    /// absent: in the parent's space, or the caller's own.
    #[serde(default)]
    pub org_id: Option<Uuid>,
}

/// `PATCH /v1/knowledge/folders/{id}`: rename, move (with its whole subtree), or both.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchFolder {
    /// New display name.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// New parent: a folder id, or `null` for the top level; absent to stay.
    #[serde(default, deserialize_with = "crate::error::double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub parent_id: Option<Option<Uuid>>,
}

/// A folder.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Folder {
    /// Id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// The parent folder, absent at the top level.
    pub parent_id: Option<Uuid>,
    /// Depth (1 at the top level).
    pub depth: i32,
    /// The organization that shares it; absent in the caller's own knowledge base.
    pub org_id: Option<Uuid>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last renamed or moved.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A folder with its breadcrumbs, its child folders and its documents.
#[derive(Debug, Serialize, ToSchema)]
pub struct FolderView {
    /// The folder.
    #[serde(flatten)]
    pub folder: Folder,
    /// The folders from the top level down to this one (inclusive).
    pub breadcrumbs: Vec<Crumb>,
    /// Child folders, by name.
    pub children: Vec<Folder>,
    /// Documents directly in this folder, most recently updated first (up to 100).
    pub documents: Vec<DocumentSummary>,
}

/// One step of a breadcrumb trail.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Crumb {
    /// Folder id.
    pub id: Uuid,
    /// Folder name.
    pub name: String,
}

/// Where a document came from.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Source {
    /// `manual`, `url` or `upload`.
    pub kind: String,
    /// The page it was taken from (`url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The storage bucket (`upload`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// The storage object's name (`upload`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// The object version this document version was read from (`upload`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_version: Option<Uuid>,
}

/// `POST /v1/knowledge/documents`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDocument {
    /// Title (1–500 characters).
    #[schema(min_length = 1, max_length = 500)]
    pub title: String,
    /// Text or Markdown; `[[Title]]` links to another of my documents.
    pub body: String,
    /// Folder; absent for the top level.
    #[serde(default)]
    pub folder_id: Option<Uuid>,
    /// Tags (each 1–100 characters, at most 50).
    #[serde(default)]
    #[schema(max_items = 50)]
    pub tags: Vec<String>,
    /// App metadata (JSON object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// The page the text was taken from (source `url`); absent for `manual`.
    #[serde(default)]
    pub source_url: Option<String>,
    /// Make it in this organization's shared knowledge (`org:knowledge:write`);
    /// absent: in the folder's space, or the caller's own.
    #[serde(default)]
    pub org_id: Option<Uuid>,
}

/// `PUT /v1/knowledge/documents/{id}`: a new version (atomic; older versions stay readable).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceDocument {
    /// The new body.
    pub body: String,
    /// A new title (kept when absent).
    #[schema(min_length = 1, max_length = 500)]
    pub title: Option<String>,
    /// Only if the current version is this one (else 409 `version_conflict`).
    #[serde(default, deserialize_with = "crate::error::whole_number")]
    #[schema(value_type = Option<i64>)]
    pub if_version: Option<i64>,
}

/// `PATCH /v1/knowledge/documents/{id}`: move, tags, metadata (no new version;
/// a new title makes one, as the title is searched with the body).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchDocument {
    /// New title (makes a new version).
    #[schema(min_length = 1, max_length = 500)]
    pub title: Option<String>,
    /// New folder, or `null` for the top level.
    #[serde(default, deserialize_with = "crate::error::double_option")]
    #[schema(value_type = Option<Uuid>)]
    pub folder_id: Option<Option<Uuid>>,
    /// Replace tags.
    pub tags: Option<Vec<String>>,
    /// Replace metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// A document without its body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DocumentSummary {
    /// Id.
    pub id: Uuid,
    /// Title.
    pub title: String,
    /// Folder, absent at the top level.
    pub folder_id: Option<Uuid>,
    /// Tags.
    pub tags: Vec<String>,
    /// Where it came from.
    pub source: Source,
    /// The current version's number.
    pub version: i32,
    /// sha256 of the current version's body.
    pub content_hash: String,
    /// The organization that shares it; absent in the caller's own knowledge base.
    pub org_id: Option<Uuid>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A document with its current body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Document {
    /// Everything but the body.
    #[serde(flatten)]
    pub summary: DocumentSummary,
    /// App metadata.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// The current version's body.
    pub body: String,
    /// Breadcrumbs of its folder.
    pub breadcrumbs: Vec<Crumb>,
    /// Chunks of the current version.
    pub chunks: i64,
}

/// One version of a document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    /// Number, from 1.
    pub version: i32,
    /// Title at that version.
    pub title: String,
    /// sha256 of the body.
    pub content_hash: String,
    /// Whether it is the current one.
    pub current: bool,
    /// The object version it was read from (uploads).
    pub source_version: Option<Uuid>,
    /// Character offsets where pages start (paged sources).
    pub page_starts: Option<Vec<i32>>,
    /// The body (on `GET …/versions/{n}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Written.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A chunk of a document version: what a citation points at (also its row).
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct ChunkView {
    /// Id.
    pub id: i64,
    /// Version.
    pub version: i32,
    /// Position in the version.
    pub ordinal: i32,
    /// Heading trail.
    pub headings: Vec<String>,
    /// Page (paged sources).
    pub page: Option<i32>,
    /// First character in the version's body.
    pub char_start: i32,
    /// End character (exclusive).
    pub char_end: i32,
    /// cl100k tokens.
    pub tokens: i32,
    /// The text (`body[char_start..char_end]`).
    pub text: String,
    /// Whether it has a vector of the active model.
    pub embedded: bool,
}

/// `POST /v1/knowledge/documents/{id}/links`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLink {
    /// The document linked to.
    pub target_id: Uuid,
}

/// A link from or to a document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Link {
    /// The document at the other end; absent while a `[[Title]]` names none yet.
    pub document_id: Option<Uuid>,
    /// Its current title, or the title written in the link.
    pub title: String,
    /// `wiki` (a `[[Title]]` in the body) or `manual`.
    pub kind: String,
}

/// A document's links both ways.
#[derive(Debug, Serialize, ToSchema)]
pub struct Links {
    /// Links from this document.
    pub outgoing: Vec<Link>,
    /// Links to this document.
    pub backlinks: Vec<Link>,
}

/// `POST /v1/knowledge/files`: ingest a storage object I own.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFile {
    /// Bucket id.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// Folder for the document; absent for the top level.
    #[serde(default)]
    pub folder_id: Option<Uuid>,
    /// Feed this organization's shared knowledge (`org:knowledge:write`); the
    /// object must then be in a bucket of the same organization
    /// (`org:storage:read`). Absent: the folder's space, or the caller's own.
    #[serde(default)]
    pub org_id: Option<Uuid>,
}

/// A file being (or having been) ingested (also its row).
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct FileStatus {
    /// Id.
    pub id: Uuid,
    /// The space (user or organization) it feeds.
    #[serde(skip)]
    pub space_id: Uuid,
    /// The organization whose knowledge it feeds; absent for the caller's own.
    pub org_id: Option<Uuid>,
    /// Bucket.
    #[serde(rename = "bucket")]
    pub bucket_id: String,
    /// Object name.
    #[serde(rename = "name")]
    pub object_name: String,
    /// Folder the document goes in.
    pub folder_id: Option<Uuid>,
    /// The document made from it.
    pub document_id: Option<Uuid>,
    /// The object version last ingested.
    pub ingested_version: Option<Uuid>,
    /// `queued`, `extracting`, `chunking`, `embedding`, `ready`, `failed`, `removed`
    /// (the object was deleted; so was its document).
    pub status: String,
    /// 0 to 1.
    pub progress: f32,
    /// When failed: a stable code (`encrypted_pdf`, `zip_bomb`, `binary_content`, …).
    pub error_code: Option<String>,
    /// When failed: what happened.
    pub error: Option<String>,
    /// The detected format.
    pub format: Option<String>,
    /// Pages (PDF).
    pub pages: Option<i32>,
    /// Chunks of the current version.
    pub chunks: Option<i32>,
    /// Chunks whose vectors had to be computed in the last ingestion (the rest
    /// were unchanged and kept theirs).
    pub chunks_embedded: Option<i32>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last status change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// `POST /v1/knowledge/search`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The question or keywords (1–2000 characters).
    #[schema(min_length = 1, max_length = 2000)]
    pub query: String,
    /// `hybrid` (default), `fulltext` or `vector`.
    #[schema(pattern = "^(hybrid|fulltext|vector)$")]
    pub mode: Option<String>,
    /// Only documents in this folder and its subfolders (in the folder's space).
    pub folder_id: Option<Uuid>,
    /// Search this organization's shared knowledge (`org:knowledge:read`)
    /// instead of the caller's own.
    #[serde(default)]
    pub org_id: Option<Uuid>,
    /// Search my own knowledge and these organizations' shared knowledge together
    /// (each needs `org:knowledge:read`; at most 10), ranked as one list. Not with
    /// `org_id` or `folder_id`.
    #[serde(default)]
    pub org_ids: Option<Vec<Uuid>>,
    /// Only documents carrying all these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only this source kind (`manual`, `url`, `upload`).
    #[schema(pattern = "^(manual|url|upload)$")]
    pub source: Option<String>,
    /// Only documents updated at or after this time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub updated_after: Option<OffsetDateTime>,
    /// Only documents updated before this time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub updated_before: Option<OffsetDateTime>,
    /// Results per page, 1–50 (default 10).
    #[serde(default, deserialize_with = "crate::error::whole_number")]
    #[schema(minimum = 1, maximum = 50, value_type = Option<i64>)]
    pub limit: Option<i64>,
    /// From a previous page's `next_cursor` (same query and filters).
    pub cursor: Option<String>,
    /// Fusion weight of the full-text ranking (default from measurement).
    #[schema(minimum = 0, maximum = 100)]
    pub fulltext_weight: Option<f64>,
    /// Fusion weight of the vector ranking.
    #[schema(minimum = 0, maximum = 100)]
    pub vector_weight: Option<f64>,
}

pub use crate::rank::Scores;

/// One search result: a chunk with enough to cite it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchHit {
    /// Where the chunk is.
    #[serde(flatten)]
    pub chunk: Citation,
    /// The organization whose shared knowledge holds it (absent: the caller's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<Uuid>,
    /// A highlighted excerpt (`<mark>` around matched words; everything else escaped).
    pub snippet: String,
    /// Per-signal scores.
    pub scores: Scores,
}

/// What a citation points at: document, version, chunk, headings, page, span.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Citation {
    /// The document.
    pub document_id: Uuid,
    /// Its title.
    pub title: String,
    /// The version the chunk belongs to (the current one).
    pub version: i32,
    /// The chunk's id.
    pub chunk_id: i64,
    /// The chunk's position.
    pub ordinal: i32,
    /// Heading trail.
    pub headings: Vec<String>,
    /// Page (paged sources).
    pub page: Option<i32>,
    /// First character in the version's body.
    pub char_start: i32,
    /// End character (exclusive).
    pub char_end: i32,
}

/// A page of search results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchPage {
    /// The results.
    pub data: Vec<SearchHit>,
    /// The mode used.
    pub mode: String,
    /// The fusion weights used (hybrid).
    pub weights: Option<[f64; 2]>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}
