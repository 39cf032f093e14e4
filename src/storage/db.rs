//! Every SQL statement on the storage tables: buckets, object rows, listings, and
//! resumable uploads. Queries on objects take an `owner` filter: `None` means the
//! caller is a service key (every object), `Some(user)` restricts to that user's.

use sqlx::{FromRow, PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

/// A bucket row.
#[derive(Debug, Clone, FromRow)]
pub struct BucketRow {
    /// Id (also its name).
    pub id: String,
    /// Name.
    pub name: String,
    /// Readable by anyone.
    pub public: bool,
    /// Largest object accepted, bytes.
    pub file_size_limit: Option<i64>,
    /// Accepted content types (`image/*` wildcards).
    pub allowed_mime_types: Option<Vec<String>>,
    /// Users write only under `<their id>/`.
    pub owner_folders: bool,
    /// The organization that holds it: its members with `org:storage:read` read
    /// every object in it, those with `org:storage:write` write and manage it.
    pub org_id: Option<Uuid>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Updated.
    pub updated_at: OffsetDateTime,
}

const BUCKET_COLS: &str =
    "id, name, public, file_size_limit, allowed_mime_types, owner_folders, org_id, created_at, updated_at";

/// An object row.
#[derive(Debug, Clone, FromRow)]
pub struct ObjectRow {
    /// Id.
    pub id: Uuid,
    /// Bucket.
    pub bucket_id: String,
    /// Key.
    pub name: String,
    /// Owner (a user), if any.
    pub owner_id: Option<Uuid>,
    /// The blob holding the bytes.
    pub version: Uuid,
    /// Bytes.
    pub size: i64,
    /// Content type.
    pub content_type: String,
    /// Cache-Control sent on download.
    pub cache_control: String,
    /// ETag (quoted).
    pub etag: String,
    /// User metadata (`x-metadata`).
    pub user_metadata: Option<serde_json::Value>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last written.
    pub updated_at: OffsetDateTime,
    /// Last accessed.
    pub last_accessed_at: OffsetDateTime,
}

const OBJECT_COLS: &str = "id, bucket_id, name, owner_id, version, size, content_type, cache_control, etag, \
                           user_metadata, created_at, updated_at, last_accessed_at";

/// One bucket.
pub async fn bucket(pool: &PgPool, id: &str) -> Result<Option<BucketRow>, sqlx::Error> {
    let sql = format!("SELECT {BUCKET_COLS} FROM storage_buckets WHERE id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await
}

/// Buckets, sorted by a whitelisted column; with `orgs`, only those outside
/// organizations and those of the organizations listed.
pub async fn list_buckets(
    pool: &PgPool,
    orgs: Option<&[Uuid]>,
    sort: &str,
    desc: bool,
    search: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<Vec<BucketRow>, sqlx::Error> {
    let col = match sort {
        "name" | "created_at" | "updated_at" => sort,
        _ => "id",
    };
    let dir = if desc { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT {BUCKET_COLS} FROM storage_buckets WHERE ($1::text IS NULL OR name ILIKE '%' || $1 || '%') \
         AND ($4::uuid[] IS NULL OR org_id IS NULL OR org_id = ANY($4)) \
         ORDER BY {col} {dir}, id {dir} LIMIT $2 OFFSET $3"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(search.map(like_escape))
        .bind(limit)
        .bind(offset)
        .bind(orgs)
        .fetch_all(pool)
        .await
}

/// A bucket to create.
#[derive(Debug)]
pub struct NewBucket<'a> {
    /// Id and name.
    pub name: &'a str,
    /// Readable by anyone.
    pub public: bool,
    /// Largest object accepted, bytes.
    pub file_size_limit: Option<i64>,
    /// Accepted content types.
    pub allowed_mime_types: Option<&'a [String]>,
    /// Users write only under `<their id>/`.
    pub owner_folders: bool,
    /// The organization that holds it.
    pub org_id: Option<Uuid>,
}

/// Creates a bucket; `false` if the id is taken.
pub async fn insert_bucket(pool: &PgPool, b: &NewBucket<'_>) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO storage_buckets (id, name, public, file_size_limit, allowed_mime_types, owner_folders, org_id) \
         VALUES ($1, $1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(b.name)
    .bind(b.public)
    .bind(b.file_size_limit)
    .bind(b.allowed_mime_types)
    .bind(b.owner_folders)
    .bind(b.org_id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Whether organization `id` exists (a service key naming one for a bucket).
pub async fn org_exists(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM organizations WHERE id = $1)").bind(id).fetch_one(pool).await
}

/// Changes the given settings of a bucket (`Some(None)` clears a limit); `false` if missing.
pub async fn update_bucket(
    pool: &PgPool,
    id: &str,
    public: Option<bool>,
    limit: Option<Option<i64>>,
    mimes: Option<Option<Vec<String>>>,
    owner_folders: Option<bool>,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE storage_buckets SET public = coalesce($2, public), \
         file_size_limit = CASE WHEN $3 THEN $4 ELSE file_size_limit END, \
         allowed_mime_types = CASE WHEN $5 THEN $6 ELSE allowed_mime_types END, \
         owner_folders = coalesce($7, owner_folders), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(public)
    .bind(limit.is_some())
    .bind(limit.flatten())
    .bind(mimes.is_some())
    .bind(mimes.flatten())
    .bind(owner_folders)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Outcome of deleting a bucket.
pub enum BucketDelete {
    /// Deleted.
    Deleted,
    /// It holds objects.
    NotEmpty,
    /// No such bucket.
    Missing,
}

/// Deletes an empty bucket.
pub async fn delete_bucket(pool: &PgPool, id: &str) -> Result<BucketDelete, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found: Option<String> = sqlx::query_scalar("SELECT id FROM storage_buckets WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    if found.is_none() {
        return Ok(BucketDelete::Missing);
    }
    let used: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM storage_objects WHERE bucket_id = $1) \
         OR EXISTS (SELECT 1 FROM storage_uploads WHERE bucket_id = $1 AND expires_at > now())",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if used {
        return Ok(BucketDelete::NotEmpty);
    }
    sqlx::query("DELETE FROM storage_uploads WHERE bucket_id = $1").bind(id).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM storage_buckets WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(BucketDelete::Deleted)
}

/// Removes up to `batch` object rows of a bucket; returns their blob versions.
pub async fn empty_bucket_batch(pool: &PgPool, id: &str, batch: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "DELETE FROM storage_objects WHERE id IN (SELECT id FROM storage_objects WHERE bucket_id = $1 LIMIT $2) \
         RETURNING version",
    )
    .bind(id)
    .bind(batch)
    .fetch_all(pool)
    .await
}

/// One object, if `owner` may see it (`None`: anyone may).
pub async fn object(
    pool: &PgPool,
    bucket: &str,
    name: &str,
    owner: Option<Uuid>,
) -> Result<Option<ObjectRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {OBJECT_COLS} FROM storage_objects WHERE bucket_id = $1 AND name = $2 \
         AND ($3::uuid IS NULL OR owner_id = $3)"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(bucket).bind(name).bind(owner).fetch_optional(pool).await
}

/// A new object version to record.
#[derive(Debug, Clone)]
pub struct NewObject<'a> {
    /// Bucket.
    pub bucket: &'a str,
    /// Key.
    pub name: &'a str,
    /// Owner recorded on a new object.
    pub owner: Option<Uuid>,
    /// The blob already written.
    pub version: Uuid,
    /// Bytes.
    pub size: i64,
    /// Content type.
    pub content_type: &'a str,
    /// Cache-Control.
    pub cache_control: &'a str,
    /// User metadata.
    pub user_metadata: Option<&'a serde_json::Value>,
}

/// What recording an object did.
pub enum PutOutcome {
    /// Recorded; `replaced` is the blob of the version it overwrote.
    Stored {
        /// The row now current.
        row: Box<ObjectRow>,
        /// The overwritten version's blob, to delete.
        replaced: Option<Uuid>,
    },
    /// The key exists and `upsert` was not asked.
    Exists,
    /// The key exists and belongs to someone else.
    Denied,
}

/// Records `new` as the current version of its key, in one transaction: a new row,
/// or (with `upsert`, for the owner or a service key) the existing row updated.
/// `writer` is `None` for a service key. The blob must already be written.
pub async fn put_object(
    pool: &PgPool,
    new: &NewObject<'_>,
    upsert: bool,
    writer: Option<Uuid>,
) -> Result<PutOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let out = put_object_tx(&mut tx, new, upsert, writer).await?;
    if matches!(out, PutOutcome::Stored { .. }) {
        tx.commit().await?;
    }
    Ok(out)
}

async fn put_object_tx(
    tx: &mut Transaction<'_, Postgres>,
    new: &NewObject<'_>,
    upsert: bool,
    writer: Option<Uuid>,
) -> Result<PutOutcome, sqlx::Error> {
    let existing: Option<(Uuid, Option<Uuid>, Uuid)> = sqlx::query_as(
        "SELECT id, owner_id, version FROM storage_objects WHERE bucket_id = $1 AND name = $2 FOR UPDATE",
    )
    .bind(new.bucket)
    .bind(new.name)
    .fetch_optional(&mut **tx)
    .await?;
    let etag = format!("\"{}\"", new.version.simple());
    match existing {
        Some((_, owner, _)) if writer.is_some() && owner != writer => Ok(PutOutcome::Denied),
        Some(_) if !upsert => Ok(PutOutcome::Exists),
        Some((id, _, old)) => {
            let sql = format!(
                "UPDATE storage_objects SET version = $2, size = $3, content_type = $4, cache_control = $5, \
                 etag = $6, user_metadata = $7, updated_at = now(), last_accessed_at = now() \
                 WHERE id = $1 RETURNING {OBJECT_COLS}"
            );
            let row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(new.version)
                .bind(new.size)
                .bind(new.content_type)
                .bind(new.cache_control)
                .bind(&etag)
                .bind(new.user_metadata)
                .fetch_one(&mut **tx)
                .await?;
            Ok(PutOutcome::Stored { row: Box::new(row), replaced: Some(old) })
        }
        None => {
            let sql = format!(
                "INSERT INTO storage_objects (id, bucket_id, name, owner_id, version, size, content_type, \
                 cache_control, etag, user_metadata) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (bucket_id, name) DO NOTHING RETURNING {OBJECT_COLS}"
            );
            let row: Option<ObjectRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(Uuid::now_v7())
                .bind(new.bucket)
                .bind(new.name)
                .bind(new.owner)
                .bind(new.version)
                .bind(new.size)
                .bind(new.content_type)
                .bind(new.cache_control)
                .bind(&etag)
                .bind(new.user_metadata)
                .fetch_optional(&mut **tx)
                .await?;
            // A concurrent first writer won the key.
            Ok(row.map_or(PutOutcome::Exists, |row| PutOutcome::Stored { row: Box::new(row), replaced: None }))
        }
    }
}

/// Deletes the named objects `owner` may delete; returns the deleted rows.
pub async fn delete_objects(
    pool: &PgPool,
    bucket: &str,
    names: &[String],
    owner: Option<Uuid>,
) -> Result<Vec<ObjectRow>, sqlx::Error> {
    let sql = format!(
        "DELETE FROM storage_objects WHERE bucket_id = $1 AND name = ANY($2) \
         AND ($3::uuid IS NULL OR owner_id = $3) RETURNING {OBJECT_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(bucket).bind(names).bind(owner).fetch_all(pool).await
}

/// Outcome of a move.
pub enum MoveOutcome {
    /// Moved.
    Moved,
    /// The source is missing or not the caller's.
    NoSource,
    /// The destination exists.
    Exists,
}

/// Renames an object (metadata only: the blob stays).
pub async fn move_object(
    pool: &PgPool,
    from: (&str, &str),
    to: (&str, &str),
    owner: Option<Uuid>,
) -> Result<MoveOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let src: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM storage_objects WHERE bucket_id = $1 AND name = $2 AND ($3::uuid IS NULL OR owner_id = $3) \
         FOR UPDATE",
    )
    .bind(from.0)
    .bind(from.1)
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = src else { return Ok(MoveOutcome::NoSource) };
    if from == to {
        return Ok(MoveOutcome::Moved);
    }
    let r = sqlx::query(
        "UPDATE storage_objects SET bucket_id = $2, name = $3, updated_at = now() WHERE id = $1 \
         AND NOT EXISTS (SELECT 1 FROM storage_objects WHERE bucket_id = $2 AND name = $3)",
    )
    .bind(id)
    .bind(to.0)
    .bind(to.1)
    .execute(&mut *tx)
    .await;
    match r {
        Ok(r) if r.rows_affected() == 1 => {
            tx.commit().await?;
            Ok(MoveOutcome::Moved)
        }
        Ok(_) => Ok(MoveOutcome::Exists),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(MoveOutcome::Exists),
        Err(e) => Err(e),
    }
}

/// Marks objects as accessed (best effort, at most once a minute per object).
pub async fn touch(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE storage_objects SET last_accessed_at = now() WHERE id = $1 \
         AND last_accessed_at < now() - interval '1 minute'",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Escapes `%`, `_` and `\` for LIKE.
pub fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One entry of a folder listing: a folder (no id) or an object.
#[derive(Debug, Clone, FromRow)]
pub struct ListEntry {
    /// The name inside the folder (one path segment).
    pub name: String,
    /// The full key (objects) or folder path (folders, ending in `/`).
    pub key: String,
    /// Whether it is a folder.
    pub folder: bool,
    /// Object id (objects only).
    pub id: Option<Uuid>,
    /// Bytes.
    pub size: Option<i64>,
    /// Content type.
    pub content_type: Option<String>,
    /// Cache-Control.
    pub cache_control: Option<String>,
    /// ETag.
    pub etag: Option<String>,
    /// Created.
    pub created_at: Option<OffsetDateTime>,
    /// Updated.
    pub updated_at: Option<OffsetDateTime>,
    /// Last accessed.
    pub last_accessed_at: Option<OffsetDateTime>,
}

/// A listing request, already validated.
pub struct ListQuery<'a> {
    /// Bucket.
    pub bucket: &'a str,
    /// The folder (`""` or ending in `/`) whose entries are listed.
    pub folder: &'a str,
    /// Entries must start with this (inside the folder).
    pub starts_with: &'a str,
    /// Group deeper keys into folders.
    pub delimiter: bool,
    /// Sort column: name, created_at, updated_at, last_accessed_at.
    pub sort: &'a str,
    /// Descending.
    pub desc: bool,
    /// Only entries after this key (cursor), in sort order by key.
    pub after: Option<&'a str>,
    /// Page size.
    pub limit: i64,
    /// Rows skipped.
    pub offset: i64,
    /// Only this owner's objects (`None`: all).
    pub owner: Option<Uuid>,
}

/// Lists a folder: with `delimiter`, one level (deeper keys collapse into folder
/// entries with no id), else every key under the prefix.
pub async fn list(pool: &PgPool, q: &ListQuery<'_>) -> Result<Vec<ListEntry>, sqlx::Error> {
    let col = match q.sort {
        "created_at" | "updated_at" | "last_accessed_at" => q.sort,
        _ => "name",
    };
    let dir = if q.desc { "DESC" } else { "ASC" };
    let nulls = if q.desc { "NULLS LAST" } else { "NULLS FIRST" };
    let cursor_op = if q.desc { "<" } else { ">" };
    let order = if col == "name" {
        format!("entry COLLATE \"C\" {dir}, folder")
    } else {
        format!("{col} {dir} {nulls}, entry COLLATE \"C\" {dir}, folder")
    };
    // rest = the key after the folder; entry = its first segment (delimiter mode).
    let sql = format!(
        "WITH o AS ( \
            SELECT *, substr(name, char_length($2) + 1) AS rest FROM storage_objects \
            WHERE bucket_id = $1 AND name LIKE $3 || '%' AND ($6::uuid IS NULL OR owner_id = $6) \
         ), e AS ( \
            SELECT DISTINCT ON (entry, folder) entry, folder, \
              CASE WHEN folder THEN NULL ELSE id END AS id, \
              CASE WHEN folder THEN NULL ELSE size END AS size, \
              CASE WHEN folder THEN NULL ELSE content_type END AS content_type, \
              CASE WHEN folder THEN NULL ELSE cache_control END AS cache_control, \
              CASE WHEN folder THEN NULL ELSE etag END AS etag, \
              CASE WHEN folder THEN NULL ELSE created_at END AS created_at, \
              CASE WHEN folder THEN NULL ELSE updated_at END AS updated_at, \
              CASE WHEN folder THEN NULL ELSE last_accessed_at END AS last_accessed_at \
            FROM (SELECT o.*, \
                    CASE WHEN $4 AND strpos(rest, '/') > 0 THEN split_part(rest, '/', 1) ELSE rest END AS entry, \
                    ($4 AND strpos(rest, '/') > 0) AS folder FROM o) s \
            ORDER BY entry, folder \
         ) \
         SELECT entry COLLATE \"C\" AS name, \
                $2 || entry || CASE WHEN folder THEN '/' ELSE '' END AS key, folder, id, size, content_type, \
                cache_control, etag, created_at, updated_at, last_accessed_at FROM e \
         WHERE ($5::text IS NULL OR ($2 || entry) COLLATE \"C\" {cursor_op} $5) \
         ORDER BY {order} LIMIT $7 OFFSET $8"
    );
    let prefix = format!("{}{}", like_escape(q.folder), like_escape(q.starts_with));
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(q.bucket)
        .bind(q.folder)
        .bind(prefix)
        .bind(q.delimiter)
        .bind(q.after)
        .bind(q.owner)
        .bind(q.limit)
        .bind(q.offset)
        .fetch_all(pool)
        .await
}

/// Versions among `versions` that some object row points at.
pub async fn live_versions(pool: &PgPool, versions: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM storage_objects WHERE version = ANY($1)")
        .bind(versions)
        .fetch_all(pool)
        .await
}

/// A resumable upload.
#[derive(Debug, Clone, FromRow)]
pub struct UploadRow {
    /// Id.
    pub id: Uuid,
    /// Bucket.
    pub bucket_id: String,
    /// Key.
    pub name: String,
    /// Owner recorded on the object.
    pub owner_id: Option<Uuid>,
    /// The user id that created it, or `service`.
    pub creator: String,
    /// Total length.
    pub upload_length: i64,
    /// Bytes received.
    pub upload_offset: i64,
    /// Content type.
    pub content_type: String,
    /// Cache-Control.
    pub cache_control: String,
    /// User metadata.
    pub user_metadata: Option<serde_json::Value>,
    /// Overwrite an existing object.
    pub upsert: bool,
    /// Expiry.
    pub expires_at: OffsetDateTime,
}

const UPLOAD_COLS: &str = "id, bucket_id, name, owner_id, creator, upload_length, upload_offset, content_type, \
                           cache_control, user_metadata, upsert, expires_at";

/// Records a new resumable upload.
pub async fn insert_upload(pool: &PgPool, u: &UploadRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO storage_uploads (id, bucket_id, name, owner_id, creator, upload_length, content_type, \
         cache_control, user_metadata, upsert, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(u.id)
    .bind(&u.bucket_id)
    .bind(&u.name)
    .bind(u.owner_id)
    .bind(&u.creator)
    .bind(u.upload_length)
    .bind(&u.content_type)
    .bind(&u.cache_control)
    .bind(&u.user_metadata)
    .bind(u.upsert)
    .bind(u.expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// A live upload created by `creator`.
pub async fn upload(pool: &PgPool, id: Uuid, creator: &str) -> Result<Option<UploadRow>, sqlx::Error> {
    let sql =
        format!("SELECT {UPLOAD_COLS} FROM storage_uploads WHERE id = $1 AND creator = $2 AND expires_at > now()");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(creator).fetch_optional(pool).await
}

/// Takes the upload for a PATCH at `offset`: `None` when another PATCH holds it or
/// the offset moved.
pub async fn lease_upload(
    pool: &PgPool,
    id: Uuid,
    offset: i64,
    lease: std::time::Duration,
) -> Result<Option<UploadRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE storage_uploads SET lease_until = now() + make_interval(secs => $3) WHERE id = $1 AND upload_offset = $2 \
         AND (lease_until IS NULL OR lease_until < now()) AND expires_at > now() RETURNING {UPLOAD_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(offset).bind(lease.as_secs_f64()).fetch_optional(pool).await
}

/// Extends a held lease (the PATCH holding it is still receiving).
pub async fn renew_upload_lease(pool: &PgPool, id: Uuid, lease: std::time::Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE storage_uploads SET lease_until = now() + make_interval(secs => $2) WHERE id = $1 AND lease_until IS NOT NULL",
    )
    .bind(id)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Records bytes received and releases the lease.
pub async fn release_upload(pool: &PgPool, id: Uuid, offset: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE storage_uploads SET upload_offset = $2, lease_until = NULL WHERE id = $1")
        .bind(id)
        .bind(offset)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes an upload row.
pub async fn delete_upload(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM storage_uploads WHERE id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// Deletes expired uploads; returns their ids (their pieces are to be removed).
pub async fn expired_uploads(pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("DELETE FROM storage_uploads WHERE expires_at < now() RETURNING id").fetch_all(pool).await
}

/// Ids among `ids` that are uploads in progress.
pub async fn live_uploads(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM storage_uploads WHERE id = ANY($1)").bind(ids).fetch_all(pool).await
}

/// The bucket and key a resumable upload writes to.
pub async fn upload_target(pool: &PgPool, id: Uuid) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT bucket_id, name FROM storage_uploads WHERE id = $1").bind(id).fetch_optional(pool).await
}
