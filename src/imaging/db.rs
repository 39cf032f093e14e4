//! SQL for `storage_variants`: finding a variant, recording one (only while its
//! source version is still an object's), and the sweeper's clean-up.

use sqlx::PgPool;
use uuid::Uuid;

/// A stored variant.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VariantRow {
    /// Id; the bytes live at `variants/<id>`.
    pub id: Uuid,
    /// MIME type.
    pub content_type: String,
    /// Bytes.
    pub size: i64,
}

/// The variant of `version` for the normalised `params`.
pub async fn find(pool: &PgPool, version: Uuid, params: &str) -> Result<Option<VariantRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, content_type, size FROM storage_variants WHERE source_version = $1 AND params = $2")
        .bind(version)
        .bind(params)
        .fetch_optional(pool)
        .await
}

/// A new variant to record.
#[derive(Debug)]
pub struct NewVariant<'a> {
    /// Its id (the blob is already written).
    pub id: Uuid,
    /// The object version it was made from.
    pub source_version: Uuid,
    /// Normalised parameters.
    pub params: &'a str,
    /// MIME type.
    pub content_type: &'a str,
    /// Bytes.
    pub size: i64,
    /// Output width.
    pub width: i32,
    /// Output height.
    pub height: i32,
}

/// Records a variant if its source version is still an object's and no other
/// replica recorded the same one first. Returns whether the row was inserted.
/// The commit does not wait for the WAL flush (`synchronous_commit` off for this
/// one transaction): a variant row lost to a crash only costs a transform.
pub async fn insert(pool: &PgPool, v: &NewVariant<'_>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)) \
         INSERT INTO storage_variants (id, source_version, params, content_type, size, width, height) \
         SELECT $1, $2, $3, $4, $5, $6, $7 FROM relaxed \
         WHERE EXISTS (SELECT 1 FROM storage_objects WHERE version = $2) \
         ON CONFLICT (source_version, params) DO NOTHING",
    )
    .bind(v.id)
    .bind(v.source_version)
    .bind(v.params)
    .bind(v.content_type)
    .bind(v.size)
    .bind(v.width)
    .bind(v.height)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Forgets a variant whose bytes are missing.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM storage_variants WHERE id = $1").bind(id).execute(pool).await.map(|_| ())
}

/// Deletes variant rows whose source version no object has any more (a backstop
/// for a variant recorded while its object was being overwritten).
pub async fn delete_stale(pool: &PgPool) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "DELETE FROM storage_variants v WHERE NOT EXISTS \
         (SELECT 1 FROM storage_objects o WHERE o.version = v.source_version)",
    )
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
}

/// The ids among `ids` that have a row.
pub async fn live(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM storage_variants WHERE id = ANY($1)").bind(ids).fetch_all(pool).await
}
