//! Statements of second factors: TOTP authenticators, backup codes and the
//! pending second-factor step of a sign-in.

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// A user's TOTP authenticator.
#[derive(Debug, sqlx::FromRow)]
pub struct TotpRow {
    /// Sealed secret.
    pub secret: Vec<u8>,
    /// When the enrolment was confirmed with a code.
    pub confirmed_at: Option<OffsetDateTime>,
}

/// The user's authenticator, confirmed or not.
pub async fn totp(pool: &PgPool, user: Uuid) -> Result<Option<TotpRow>, sqlx::Error> {
    sqlx::query_as("SELECT secret, confirmed_at FROM auth_totp WHERE user_id = $1")
        .bind(user)
        .fetch_optional(pool)
        .await
}

/// Stores a new unconfirmed authenticator, replacing an unconfirmed one; false
/// when a confirmed one exists.
pub async fn put_pending_totp(pool: &PgPool, user: Uuid, sealed: &[u8]) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO auth_totp (user_id, secret) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET secret = EXCLUDED.secret, last_step = 0, created_at = now()
         WHERE auth_totp.confirmed_at IS NULL",
    )
    .bind(user)
    .bind(sealed)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Uses time step `step` of the user's authenticator: true only if no code of
/// this or a later step was accepted before (a code works once). `confirm` also
/// confirms a pending enrolment; otherwise the authenticator must be confirmed.
pub async fn use_totp_step(pool: &PgPool, user: Uuid, step: i64, confirm: bool) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE auth_totp SET last_step = $2,
           confirmed_at = CASE WHEN $3 THEN coalesce(confirmed_at, now()) ELSE confirmed_at END
         WHERE user_id = $1 AND last_step < $2 AND ($3 OR confirmed_at IS NOT NULL)",
    )
    .bind(user)
    .bind(step)
    .bind(confirm)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Removes the user's authenticator; whether there was one.
pub async fn delete_totp(pool: &PgPool, user: Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM auth_totp WHERE user_id = $1").bind(user).execute(pool).await?.rows_affected() > 0)
}

/// What second factors a user has, in one query (every sign-in asks).
#[derive(Debug, Default, sqlx::FromRow)]
pub struct FactorState {
    /// A confirmed authenticator app.
    pub totp: bool,
    /// An authenticator app waiting for its confirming code.
    pub totp_pending: bool,
    /// At least one passkey.
    pub passkey: bool,
    /// Unused backup codes.
    pub backup_codes: i64,
}

/// The user's [`FactorState`].
pub async fn factor_state(pool: &PgPool, user: Uuid) -> Result<FactorState, sqlx::Error> {
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM auth_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL) AS totp,
                EXISTS (SELECT 1 FROM auth_totp WHERE user_id = $1 AND confirmed_at IS NULL) AS totp_pending,
                EXISTS (SELECT 1 FROM auth_passkeys WHERE user_id = $1) AS passkey,
                (SELECT count(*) FROM auth_backup_codes WHERE user_id = $1 AND used_at IS NULL) AS backup_codes",
    )
    .bind(user)
    .fetch_one(pool)
    .await
}

/// Unused backup codes of the user.
pub async fn backup_codes_left(pool: &PgPool, user: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM auth_backup_codes WHERE user_id = $1 AND used_at IS NULL")
        .bind(user)
        .fetch_one(pool)
        .await
}

/// Replaces the user's backup codes with `hashes`.
pub async fn replace_backup_codes(pool: &PgPool, user: Uuid, hashes: &[Vec<u8>]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM auth_backup_codes WHERE user_id = $1").bind(user).execute(&mut *tx).await?;
    sqlx::query("INSERT INTO auth_backup_codes (user_id, code_hash) SELECT $1, unnest($2::bytea[])")
        .bind(user)
        .bind(hashes)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Uses up backup code `hash`: true if it was the user's and unused.
pub async fn use_backup_code(pool: &PgPool, user: Uuid, hash: &[u8]) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE auth_backup_codes SET used_at = now() WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
    )
    .bind(user)
    .bind(hash)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Removes the user's backup codes.
pub async fn delete_backup_codes(pool: &PgPool, user: Uuid) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM auth_backup_codes WHERE user_id = $1").bind(user).execute(pool).await?.rows_affected())
}

/// A pending second-factor step.
#[derive(Debug, sqlx::FromRow)]
pub struct ChallengeRow {
    /// Id.
    pub id: Uuid,
    /// The user.
    pub user_id: Uuid,
    /// Methods of the first factor.
    pub amr: Vec<String>,
}

/// Stores a second-factor step for `user` after first factor `amr`.
pub async fn insert_challenge(
    pool: &PgPool,
    user: Uuid,
    token_hash: &[u8],
    amr: &[String],
    client: (Option<&str>, Option<&str>),
    ttl: Duration,
) -> Result<OffsetDateTime, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO auth_mfa_challenges (id, token_hash, user_id, amr, ip, user_agent, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)) RETURNING expires_at",
    )
    .bind(Uuid::now_v7())
    .bind(token_hash)
    .bind(user)
    .bind(amr)
    .bind(client.0)
    .bind(client.1)
    .bind(ttl.as_secs_f64())
    .fetch_one(pool)
    .await
}

/// Counts an attempt on the live step with `token_hash` (unused, unexpired, under
/// `max` attempts) and returns it; none once it is used up.
pub async fn attempt_challenge(
    pool: &PgPool,
    token_hash: &[u8],
    max: i32,
) -> Result<Option<ChallengeRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE auth_mfa_challenges SET attempts = attempts + 1
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() AND attempts < $2
         RETURNING id, user_id, amr",
    )
    .bind(token_hash)
    .bind(max)
    .fetch_optional(pool)
    .await
}

/// Marks step `id` used; false if it already was (a concurrent success).
pub async fn finish_challenge(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("UPDATE auth_mfa_challenges SET used_at = now() WHERE id = $1 AND used_at IS NULL")
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// Deletes finished or expired steps older than a day (housekeeping).
pub async fn prune_challenges(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM auth_mfa_challenges WHERE expires_at < now() - interval '1 day'")
        .execute(pool)
        .await?
        .rows_affected())
}

/// The live step with `token_hash` without counting an attempt (to start a
/// passkey ceremony for it).
pub async fn live_challenge(pool: &PgPool, token_hash: &[u8], max: i32) -> Result<Option<ChallengeRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, user_id, amr FROM auth_mfa_challenges
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() AND attempts < $2",
    )
    .bind(token_hash)
    .bind(max)
    .fetch_optional(pool)
    .await
}
