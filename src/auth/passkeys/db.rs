//! Statements of passkeys and WebAuthn ceremonies.

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// A stored passkey.
#[derive(Debug, sqlx::FromRow)]
pub struct PasskeyRow {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// webauthn-rs's serialised `Passkey` (public key, counter, flags).
    pub passkey: serde_json::Value,
    /// The user's name for it.
    pub name: String,
    /// Added.
    pub created_at: OffsetDateTime,
    /// Last used to sign in.
    pub last_used_at: Option<OffsetDateTime>,
}

const COLS: &str = "id, user_id, passkey, name, created_at, last_used_at";

/// The user's passkeys, oldest first.
pub async fn passkeys(pool: &PgPool, user: Uuid) -> Result<Vec<PasskeyRow>, sqlx::Error> {
    let sql = format!("SELECT {COLS} FROM auth_passkeys WHERE user_id = $1 ORDER BY created_at, id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(user).fetch_all(pool).await
}

/// The passkey with `credential_id`.
pub async fn by_credential(pool: &PgPool, credential_id: &[u8]) -> Result<Option<PasskeyRow>, sqlx::Error> {
    let sql = format!("SELECT {COLS} FROM auth_passkeys WHERE credential_id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(credential_id).fetch_optional(pool).await
}

/// Stores a new passkey; `None` when the credential is registered already.
pub async fn insert(
    pool: &PgPool,
    user: Uuid,
    credential_id: &[u8],
    passkey: &serde_json::Value,
    name: &str,
) -> Result<Option<PasskeyRow>, sqlx::Error> {
    let sql = format!(
        "INSERT INTO auth_passkeys (id, user_id, credential_id, passkey, name) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (credential_id) DO NOTHING RETURNING {COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(credential_id)
        .bind(passkey)
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// Records a use (and the credential's new counter and flags, when they changed).
pub async fn used(pool: &PgPool, id: Uuid, passkey: Option<&serde_json::Value>) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_passkeys SET last_used_at = now(), passkey = coalesce($2, passkey) WHERE id = $1")
        .bind(id)
        .bind(passkey)
        .execute(pool)
        .await?;
    Ok(())
}

/// Renames the user's passkey `id`; whether it is theirs.
pub async fn rename(pool: &PgPool, user: Uuid, id: Uuid, name: &str) -> Result<Option<PasskeyRow>, sqlx::Error> {
    let sql = format!("UPDATE auth_passkeys SET name = $3 WHERE id = $2 AND user_id = $1 RETURNING {COLS}");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(user).bind(id).bind(name).fetch_optional(pool).await
}

/// Deletes the user's passkey `id` unless it is their last way to sign in (no
/// password, no identity, no other passkey): `Some(true)` removed, `Some(false)`
/// refused, `None` not theirs.
pub async fn delete(pool: &PgPool, user: Uuid, id: Uuid) -> Result<Option<bool>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let others: Option<i64> = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM auth_passkeys WHERE user_id = $1 AND id <> $2)
              + (SELECT count(*) FROM auth_identities WHERE user_id = $1)
              + (SELECT count(*) FROM users WHERE id = $1 AND password_hash IS NOT NULL)
         FROM auth_passkeys WHERE id = $2 AND user_id = $1 FOR UPDATE",
    )
    .bind(user)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(others) = others else { return Ok(None) };
    if others == 0 {
        return Ok(Some(false));
    }
    sqlx::query("DELETE FROM auth_passkeys WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Some(true))
}

/// Removes every passkey of the user (an admin's reset).
pub async fn delete_all(pool: &PgPool, user: Uuid) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM auth_passkeys WHERE user_id = $1").bind(user).execute(pool).await?.rows_affected())
}

/// A ceremony in progress.
#[derive(Debug, sqlx::FromRow)]
pub struct CeremonyRow {
    /// `register`, `sign_in`, `discoverable`, `second_factor`.
    pub kind: String,
    /// The user (absent for a discoverable sign-in).
    pub user_id: Option<Uuid>,
    /// The second-factor step it belongs to.
    pub mfa_challenge_id: Option<Uuid>,
    /// webauthn-rs's state.
    pub state: serde_json::Value,
}

/// Stores a ceremony lasting `ttl`; its id.
pub async fn insert_ceremony(
    pool: &PgPool,
    kind: &str,
    user: Option<Uuid>,
    mfa_challenge: Option<Uuid>,
    state: &serde_json::Value,
    ttl: Duration,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO auth_webauthn_ceremonies (id, kind, user_id, mfa_challenge_id, state, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
    )
    .bind(id)
    .bind(kind)
    .bind(user)
    .bind(mfa_challenge)
    .bind(state)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(id)
}

/// Takes a live ceremony (once).
pub async fn take_ceremony(pool: &PgPool, id: Uuid) -> Result<Option<CeremonyRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE auth_webauthn_ceremonies SET used_at = now() WHERE id = $1 AND used_at IS NULL AND expires_at > now()
         RETURNING kind, user_id, mfa_challenge_id, state",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Deletes ceremonies expired for a day (housekeeping).
pub async fn prune_ceremonies(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM auth_webauthn_ceremonies WHERE expires_at < now() - interval '1 day'")
        .execute(pool)
        .await?
        .rows_affected())
}
