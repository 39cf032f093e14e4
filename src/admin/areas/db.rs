//! Cross-user listings for the console's area pages: conversations and their
//! messages, knowledge folders, documents and files, memories, buckets with
//! their usage, and the owners of rows the console acts on.

use sqlx::{FromRow, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

/// A conversation in the console's list.
#[derive(Debug, FromRow)]
pub struct ConversationRow {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub owner_id: Uuid,
    /// Owner's email.
    pub email: Option<String>,
    /// Title.
    pub title: String,
    /// Messages.
    pub messages: i64,
    /// Last activity.
    pub last_activity_at: OffsetDateTime,
}

/// Conversations, latest activity first (one user's when `user` is set).
pub async fn conversations(pool: &PgPool, user: Option<Uuid>, limit: i64) -> Result<Vec<ConversationRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.owner_id, u.email, c.title,
                (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS messages, c.last_activity_at
         FROM conversations c JOIN users u ON u.id = c.owner_id
         WHERE ($1::uuid IS NULL OR c.owner_id = $1) ORDER BY c.last_activity_at DESC, c.id DESC LIMIT $2",
    )
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One conversation.
pub async fn conversation(pool: &PgPool, id: Uuid) -> Result<Option<ConversationRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.owner_id, u.email, c.title,
                (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) AS messages, c.last_activity_at
         FROM conversations c JOIN users u ON u.id = c.owner_id WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// A message as the console shows it.
#[derive(Debug, FromRow)]
pub struct MessageRow {
    /// Client id.
    pub id: String,
    /// Role.
    pub role: String,
    /// Parts (AI SDK UI message parts).
    pub parts: serde_json::Value,
    /// Created.
    pub created_at: OffsetDateTime,
}

/// A conversation's first `limit` messages in order.
pub async fn messages(pool: &PgPool, conversation: Uuid, limit: i64) -> Result<Vec<MessageRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, role, parts, created_at FROM messages WHERE conversation_id = $1 ORDER BY seq LIMIT $2")
        .bind(conversation)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// A knowledge folder with its depth and documents.
#[derive(Debug, FromRow)]
pub struct FolderRow {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Depth (1 = top level).
    pub depth: i32,
    /// Documents directly in it.
    pub documents: i64,
}

/// A user's folder tree, depth first.
pub async fn folders(pool: &PgPool, user: Uuid) -> Result<Vec<FolderRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT f.id, f.name, nlevel(f.path) AS depth,
                (SELECT count(*) FROM kb_documents d WHERE d.folder_id = f.id) AS documents
         FROM kb_folders f WHERE f.space_id = $1 ORDER BY f.path LIMIT 2000",
    )
    .bind(user)
    .fetch_all(pool)
    .await
}

/// A knowledge document in the console's list.
#[derive(Debug, FromRow)]
pub struct DocumentRow {
    /// Id.
    pub id: Uuid,
    /// Its space: the owner's user id, or the organization's id.
    pub user_id: Uuid,
    /// Owner's email, or the organization's name.
    pub email: Option<String>,
    /// Title.
    pub title: String,
    /// Folder name.
    pub folder: Option<String>,
    /// manual, url or upload.
    pub source_kind: String,
    /// Current version.
    pub current_version: i32,
    /// Chunks of the current version.
    pub chunks: i64,
    /// Chunks still without a vector.
    pub unembedded: i64,
    /// Updated.
    pub updated_at: OffsetDateTime,
}

/// Documents, newest first.
pub async fn documents(pool: &PgPool, user: Option<Uuid>, limit: i64) -> Result<Vec<DocumentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.id, d.space_id AS user_id, coalesce(u.email, 'organization ' || o.name) AS email, d.title, f.name AS folder, d.source_kind, d.current_version,
                (SELECT count(*) FROM kb_chunks c WHERE c.document_id = d.id AND c.version = d.current_version) AS chunks,
                (SELECT count(*) FROM kb_chunks c WHERE c.document_id = d.id AND c.version = d.current_version
                   AND c.embedding IS NULL) AS unembedded,
                d.updated_at
         FROM kb_documents d LEFT JOIN users u ON u.id = d.space_id LEFT JOIN organizations o ON o.id = d.space_id
         LEFT JOIN kb_folders f ON f.id = d.folder_id
         WHERE ($1::uuid IS NULL OR d.space_id = $1) ORDER BY d.updated_at DESC, d.id DESC LIMIT $2",
    )
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A knowledge file (a storage object being ingested) with its status.
#[derive(Debug, FromRow)]
pub struct FileRow {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Bucket.
    pub bucket_id: String,
    /// Object name.
    pub object_name: String,
    /// Ingestion status.
    pub status: String,
    /// Progress 0–1.
    pub progress: f32,
    /// Error, when failed.
    pub error: Option<String>,
    /// Updated.
    pub updated_at: OffsetDateTime,
}

/// Knowledge files, newest first.
pub async fn files(pool: &PgPool, user: Option<Uuid>, limit: i64) -> Result<Vec<FileRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, space_id AS user_id, bucket_id, object_name, status, progress, error, updated_at FROM kb_files
         WHERE ($1::uuid IS NULL OR space_id = $1) ORDER BY updated_at DESC, id DESC LIMIT $2",
    )
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The space (user or organization) of a knowledge file.
pub async fn file_owner(pool: &PgPool, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT space_id FROM kb_files WHERE id = $1").bind(id).fetch_optional(pool).await
}

/// A memory in the console's list.
#[derive(Debug, FromRow)]
pub struct MemoryRow {
    /// Id.
    pub id: Uuid,
    /// Its space: the owner's user id, or the organization's id.
    pub user_id: Uuid,
    /// Owner's email, or the organization's name.
    pub email: Option<String>,
    /// Kind.
    pub kind: String,
    /// Text.
    pub text: String,
    /// Status.
    pub status: String,
    /// Source.
    pub source: String,
    /// Updated.
    pub updated_at: OffsetDateTime,
}

/// Memories, newest first (one user's when set; active ones unless `all`).
pub async fn memories(pool: &PgPool, user: Option<Uuid>, all: bool, limit: i64) -> Result<Vec<MemoryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.id, m.user_id, u.email, m.kind, m.text, m.status, m.source, m.updated_at
         FROM memories m JOIN users u ON u.id = m.user_id
         WHERE ($1::uuid IS NULL OR m.user_id = $1) AND ($2 OR m.status = 'active')
         ORDER BY m.updated_at DESC, m.id DESC LIMIT $3",
    )
    .bind(user)
    .bind(all)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The owner of a memory.
pub async fn memory_owner(pool: &PgPool, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT user_id FROM memories WHERE id = $1").bind(id).fetch_optional(pool).await
}

/// The owner of a connection.
pub async fn connection_owner(pool: &PgPool, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT owner_id FROM connections WHERE id = $1").bind(id).fetch_optional(pool).await
}

/// A bucket with its usage.
#[derive(Debug, FromRow)]
pub struct BucketRow {
    /// Id (= name).
    pub id: String,
    /// Public.
    pub public: bool,
    /// Size limit in bytes.
    pub file_size_limit: Option<i64>,
    /// Allowed MIME types.
    pub allowed_mime_types: Option<Vec<String>>,
    /// Users write only under their own id.
    pub owner_folders: bool,
    /// The name of the organization that holds it.
    pub organization: Option<String>,
    /// Objects.
    pub objects: i64,
    /// Bytes.
    pub bytes: i64,
}

/// Buckets with their object counts and bytes.
pub async fn buckets(pool: &PgPool) -> Result<Vec<BucketRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT b.id, b.public, b.file_size_limit, b.allowed_mime_types, b.owner_folders, g.name AS organization,
                count(o.id) AS objects, COALESCE(sum(o.size), 0)::int8 AS bytes
         FROM storage_buckets b LEFT JOIN storage_objects o ON o.bucket_id = b.id
         LEFT JOIN organizations g ON g.id = b.org_id
         GROUP BY b.id, g.name ORDER BY b.id",
    )
    .fetch_all(pool)
    .await
}
