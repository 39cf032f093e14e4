//! Statements of the crate-wide pieces too small for a `db.rs` of their own: the
//! audit log, the mail outbox, readiness and migration checks, and the
//! re-encryption of sealed columns after a key rotation, and the HNSW indexes of
//! the embedding columns (knowledge chunks, memories).

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::crypto::Keyring;

/// Writes one audit row.
pub async fn insert_audit(
    db: impl sqlx::PgExecutor<'_>,
    actor: &str,
    on_behalf_of: Option<Uuid>,
    action: &str,
    target: Option<&str>,
    request_id: &str,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (actor, on_behalf_of, action, target, request_id, detail)
         VALUES ($1, (SELECT id FROM users WHERE id = $2), $3, $4, NULLIF($5, ''), $6)",
    )
    .bind(actor)
    .bind(on_behalf_of)
    .bind(action)
    .bind(target)
    .bind(request_id)
    .bind(detail)
    .execute(db)
    .await?;
    Ok(())
}

/// Writes a mail to the outbox.
pub async fn insert_outbox_mail(
    pool: &PgPool,
    user_id: Option<Uuid>,
    to: &str,
    subject: &str,
    body: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO mail_outbox (user_id, to_addr, subject, body) VALUES ($1, $2, $3, $4)")
        .bind(user_id)
        .bind(to)
        .bind(subject)
        .bind(body)
        .execute(pool)
        .await?;
    Ok(())
}

/// The newest outbox messages, optionally for one recipient.
pub async fn outbox_mail(
    pool: &PgPool,
    to: Option<&str>,
    limit: i64,
) -> Result<Vec<crate::mail::OutboxMail>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, to_addr, subject, body, created_at FROM mail_outbox
         WHERE $1::text IS NULL OR lower(to_addr) = lower($1) ORDER BY id DESC LIMIT $2",
    )
    .bind(to)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One round trip (the readiness check).
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool).await.map(|_| ())
}

/// The applied migrations' versions.
pub async fn migration_versions(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version").fetch_all(pool).await
}

/// The version of extension `name` the server offers, if any.
pub async fn available_extension(conn: &mut PgConnection, name: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT default_version FROM pg_available_extensions WHERE name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await
}

/// Re-seals integration secrets, connection credentials, auth signing keys, TOTP
/// secrets and social sign-in client secrets
/// that are not sealed with the primary key (after `CARMENTA_ENCRYPTION_KEY`
/// gained a new first key); returns how many rows were rewritten.
pub async fn reencrypt_all(pool: &PgPool, keyring: &Keyring) -> Result<usize, sqlx::Error> {
    let by_id = |k: &str| Uuid::parse_str(k).ok().map(|u| u.as_bytes().to_vec());
    let by_text = |k: &str| Some(k.as_bytes().to_vec());
    Ok(reseal(pool, keyring, "integrations", "id", "uuid", "client_secret", by_id).await?
        // The signing keys are sealed with the same keyring (their kid as associated data).
        + reseal(pool, keyring, "auth_signing_keys", "kid", "text", "private_key", by_text).await?
        + reseal(pool, keyring, "connections", "id", "uuid", "credentials", by_id).await?
        + reseal(pool, keyring, "auth_totp", "user_id", "uuid", "secret", |k| {
            Some(crate::crypto::secret_aad("totp", k).into_bytes())
        })
        .await?
        + reseal(pool, keyring, "auth_social_providers", "id", "text", "client_secret", |k| {
            Some(crate::crypto::secret_aad("social", k).into_bytes())
        })
        .await?)
}

/// Re-seals `table.column` (associated data from the row's `key`) where it is not
/// sealed with the primary key; only rows unchanged meanwhile are rewritten (a
/// refresh may have re-sealed a credential already).
async fn reseal(
    pool: &PgPool,
    keyring: &Keyring,
    table: &str,
    key: &str,
    key_type: &str,
    column: &str,
    aad: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<usize, sqlx::Error> {
    let select = format!("SELECT {key}::text, {column} FROM {table} WHERE {column} IS NOT NULL");
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(select)).fetch_all(pool).await?;
    let update = format!("UPDATE {table} SET {column} = $2 WHERE {key} = $1::{key_type} AND {column} = $3");
    let mut done = 0;
    for (k, sealed) in rows {
        let Some(resealed) = aad(&k).and_then(|ad| keyring.reseal(&sealed, &ad)) else { continue };
        sqlx::query(sqlx::AssertSqlSafe(update.clone())).bind(&k).bind(resealed).bind(&sealed).execute(pool).await?;
        done += 1;
    }
    Ok(done)
}

/// A query vector and the model (name and dimension) it belongs to.
#[derive(Debug)]
pub struct VectorQuery<'a> {
    /// The model's name.
    pub model: &'a str,
    /// Its dimension.
    pub dim: usize,
    /// The query's vector.
    pub vector: pgvector::Vector,
}

/// Builds, if missing, the HNSW index (cosine) over `table`'s `embedding` column
/// for the vectors of one model: a partial index on `embedding_model`, with the
/// dimension cast that an untyped `vector` column needs. `table` is one of ours
/// (`kb_chunks`, `memories`), never user input.
pub async fn ensure_hnsw(pool: &PgPool, table: &'static str, model: &str, dim: usize) -> Result<(), sqlx::Error> {
    use sha2::Digest;
    let h = sha2::Sha256::digest(model.as_bytes());
    let name = format!("{table}_hnsw_{:x}", u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]));
    let literal = model.replace('\'', "''");
    let sql = format!(
        "CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw ((embedding::vector({dim})) vector_cosine_ops) \
         WHERE embedding_model = '{literal}'"
    );
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('vector-index:' || $1, 0))")
        .bind(table)
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
    tx.commit().await
}

/// Whether any row of `table` (one of ours: `kb_chunks`, `memories`) lacks a vector
/// of `model` (a model change to catch up on): three probes of the table's index on
/// `embedding_model`, run at every start (an OR would be a filter over the index; a
/// vector is always stored with its model, so a NULL model is a missing vector).
pub async fn any_stale(pool: &PgPool, table: &'static str, model: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE embedding_model IS NULL) \
             OR EXISTS (SELECT 1 FROM {table} WHERE embedding_model < $1) \
             OR EXISTS (SELECT 1 FROM {table} WHERE embedding_model > $1)"
    )))
    .bind(model)
    .fetch_one(pool)
    .await
}

/// Where a BM25 corpus keeps its statistics.
#[derive(Debug, Clone, Copy)]
pub enum Corpus {
    /// Knowledge chunks (`kb_terms`, `kb_stats`).
    Knowledge,
    /// Memories (`memory_terms`, `memory_stats`).
    Memory,
}

/// The query's distinct lexemes with their document frequencies among the user's
/// documents of `corpus`, and the user's document count and total length.
pub async fn term_stats(
    pool: &PgPool,
    corpus: Corpus,
    user: Uuid,
    query: &str,
) -> Result<crate::rank::TermStats, sqlx::Error> {
    let (terms, stats, count, holder) = match corpus {
        Corpus::Knowledge => ("kb_terms", "kb_stats", "chunks", "space_id"),
        Corpus::Memory => ("memory_terms", "memory_stats", "memories", "user_id"),
    };
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT u.lexeme, coalesce(t.df, 0)::int8, coalesce(s.{count}, 0)::int8, coalesce(s.total_len, 0)::int8 \
         FROM (SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', $2))) u \
         LEFT JOIN {terms} t ON t.{holder} = $1 AND t.lexeme = u.lexeme \
         LEFT JOIN {stats} s ON s.{holder} = $1 ORDER BY u.lexeme"
    )))
    .bind(user)
    .bind(query)
    .fetch_all(pool)
    .await?;
    let (docs, total_len) = rows.first().map(|r| (r.2, r.3)).unwrap_or((0, 0));
    Ok(crate::rank::TermStats { terms: rows.into_iter().map(|r| (r.0, r.1)).collect(), docs, total_len })
}
