//! Every SQL statement on the auth tables: users, sessions, signing keys, service
//! keys, sign-in rate windows and lockouts.

use std::time::Duration;

use sqlx::{FromRow, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::tokens::SigningKeyRow;
use crate::crypto::Keyring;

/// A user as stored.
#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    /// Id.
    pub id: Uuid,
    /// Email as given at sign-up (absent for users provisioned from an external
    /// token before a webhook told us their address).
    pub email: Option<String>,
    /// When the email was verified.
    pub email_verified_at: Option<OffsetDateTime>,
    /// argon2id PHC string.
    pub password_hash: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Avatar URL.
    pub image_url: Option<String>,
    /// Readable by the user, writable by the backend.
    pub public_metadata: serde_json::Value,
    /// Backend only.
    pub private_metadata: serde_json::Value,
    /// Readable and writable by the user.
    pub unsafe_metadata: serde_json::Value,
    /// External issuer subject.
    pub external_id: Option<String>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Updated.
    pub updated_at: OffsetDateTime,
    /// When an admin banned the user (sign-in is refused while set).
    pub banned_at: Option<OffsetDateTime>,
}

const USER_COLS: &str = "id, email, email_verified_at, password_hash, name, image_url, public_metadata, \
                         private_metadata, unsafe_metadata, external_id, created_at, updated_at, banned_at";

/// Whether an error is a unique violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505")
}

/// Inserts a user. A taken email (case-insensitively) is a unique violation.
pub async fn insert_user(
    pool: &PgPool,
    email: &str,
    password_hash: Option<&str>,
    name: Option<&str>,
    unsafe_metadata: &serde_json::Value,
) -> Result<UserRow, sqlx::Error> {
    let sql = format!(
        "INSERT INTO users (id, email, password_hash, name, unsafe_metadata) VALUES ($1, $2, $3, $4, $5) RETURNING {USER_COLS}"
    );
    sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::now_v7())
        .bind(email)
        .bind(password_hash)
        .bind(name)
        .bind(unsafe_metadata)
        .fetch_one(pool)
        .await
}

/// Finds a user by email, case-insensitively.
pub async fn user_by_email(pool: &PgPool, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
    let sql = format!("SELECT {USER_COLS} FROM users WHERE lower(email) = lower($1)");
    sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql)).bind(email).fetch_optional(pool).await
}

/// Finds a user by id.
pub async fn user_by_id(pool: &PgPool, id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
    sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await
}

/// Profile fields to change; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ProfilePatch {
    /// Display name (`Some(None)` clears it).
    pub name: Option<Option<String>>,
    /// Image URL (`Some(None)` clears it).
    pub image_url: Option<Option<String>>,
    /// Replaces public metadata.
    pub public_metadata: Option<serde_json::Value>,
    /// Replaces private metadata.
    pub private_metadata: Option<serde_json::Value>,
    /// Replaces unsafe metadata.
    pub unsafe_metadata: Option<serde_json::Value>,
}

/// Applies a profile patch to the user `id`.
pub async fn update_profile(pool: &PgPool, id: Uuid, p: &ProfilePatch) -> Result<Option<UserRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE users SET
            name = CASE WHEN $2 THEN $3 ELSE name END,
            image_url = CASE WHEN $4 THEN $5 ELSE image_url END,
            public_metadata = COALESCE($6, public_metadata),
            private_metadata = COALESCE($7, private_metadata),
            unsafe_metadata = COALESCE($8, unsafe_metadata),
            updated_at = now()
         WHERE id = $1 RETURNING {USER_COLS}"
    );
    sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(p.name.is_some())
        .bind(p.name.clone().flatten())
        .bind(p.image_url.is_some())
        .bind(p.image_url.clone().flatten())
        .bind(&p.public_metadata)
        .bind(&p.private_metadata)
        .bind(&p.unsafe_metadata)
        .fetch_optional(pool)
        .await
}

/// Sets a user's password hash.
pub async fn set_password(pool: &PgPool, id: Uuid, hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(hash)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes a user; every owned row goes with it (foreign keys cascade).
pub async fn delete_user(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(pool).await?.rows_affected() == 1)
}

/// A session as listed to its owner.
#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last seen.
    pub last_active_at: OffsetDateTime,
    /// Absolute expiry.
    pub expires_at: OffsetDateTime,
    /// Client IP at creation.
    pub ip: Option<String>,
    /// Client user agent at creation.
    pub user_agent: Option<String>,
    /// The admin who opened this session as the user (impersonation).
    pub impersonator_id: Option<Uuid>,
    /// RFC 8176 method references of its sign-in (`pwd`, `otp`, `mfa`, …).
    pub amr: Vec<String>,
    /// Authenticator assurance level: 1 (one factor) or 2.
    pub aal: i16,
    /// When the user last proved who they are in it (sign-in or re-authentication).
    pub authenticated_at: OffsetDateTime,
}

/// A session row's columns.
const SESSION_COLS: &str =
    "id, user_id, created_at, last_active_at, expires_at, ip, user_agent, impersonator_id, amr, aal, authenticated_at";
/// A session row's columns.
const LIVE_SESSION: &str = "SELECT id, user_id, created_at, last_active_at, expires_at, ip, user_agent, \
    impersonator_id, amr, aal, authenticated_at FROM sessions";

/// A live session: not revoked, not expired, not idle longer than `$2` seconds (when set).
const LIVE: &str = "revoked_at IS NULL AND expires_at > now() \
    AND ($2::float8 IS NULL OR last_active_at > now() - make_interval(secs => $2))";

/// Session `id` when it is live (not revoked, not expired, not idle past `idle`).
pub async fn live_session_by_id(
    pool: &PgPool,
    id: Uuid,
    idle: Option<Duration>,
) -> Result<Option<SessionRow>, sqlx::Error> {
    let sql = format!("{LIVE_SESSION} WHERE id = $1 AND {LIVE}");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(idle.map(|d| d.as_secs_f64())).fetch_optional(pool).await
}

/// Uses up every outstanding password-reset and magic-link token of `user`
/// (after a reset: an older link must not work); returns how many.
pub async fn void_sign_in_links(pool: &PgPool, user: Uuid) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE auth_email_tokens SET used_at = now() WHERE user_id = $1 AND used_at IS NULL \
         AND kind IN ('password_reset', 'magic_link')",
    )
    .bind(user)
    .execute(pool)
    .await?
    .rows_affected())
}

/// `user`'s permissions in organization `org`; `None` when not a member. Areas
/// that share data with organizations (connections) check these in their handlers.
pub async fn org_permissions(pool: &PgPool, org: Uuid, user: Uuid) -> Result<Option<Vec<String>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(p.permissions, '{}') FROM org_members m
         LEFT JOIN org_role_permissions p ON p.org_id = m.org_id AND p.key = m.role
         WHERE m.org_id = $1 AND m.user_id = $2",
    )
    .bind(org)
    .bind(user)
    .fetch_optional(pool)
    .await
}

/// The organizations in which `user` holds at least one of `permissions`.
pub async fn orgs_with_any_permission(
    pool: &PgPool,
    user: Uuid,
    permissions: &[String],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT m.org_id FROM org_members m
         JOIN org_role_permissions p ON p.org_id = m.org_id AND p.key = m.role
         WHERE m.user_id = $1 AND p.permissions && $2::text[]",
    )
    .bind(user)
    .bind(permissions)
    .fetch_all(pool)
    .await
}

/// The active organization of session `id` with the user's role and its
/// permissions, when the user is still a member (leaving takes it away at once).
pub async fn active_org_claims(pool: &PgPool, id: Uuid) -> Result<Option<super::tokens::OrgClaims>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.id, o.slug, m.role, COALESCE(p.permissions, '{}') AS permissions
         FROM sessions s JOIN organizations o ON o.id = s.active_org_id
         JOIN org_members m ON m.org_id = o.id AND m.user_id = s.user_id
         LEFT JOIN org_role_permissions p ON p.org_id = o.id AND p.key = m.role
         WHERE s.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Sets (or clears) session `id`'s active organization; false unless the
/// session is `user`'s and, when setting, the user is a member.
pub async fn set_active_org(pool: &PgPool, id: Uuid, user: Uuid, org: Option<Uuid>) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE sessions SET active_org_id = $3 WHERE id = $1 AND user_id = $2
         AND ($3::uuid IS NULL OR EXISTS (SELECT 1 FROM org_members WHERE org_id = $3 AND user_id = $2))",
    )
    .bind(id)
    .bind(user)
    .bind(org)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Creates a session.
pub async fn insert_session(
    pool: &PgPool,
    user_id: Uuid,
    token_hash: &[u8],
    lifetime: Duration,
    client: (Option<&str>, Option<&str>),
    impersonator: Option<Uuid>,
    auth: &super::tokens::SessionAuth,
) -> Result<SessionRow, sqlx::Error> {
    let sql = format!(
        "INSERT INTO sessions (id, user_id, token_hash, expires_at, ip, user_agent, impersonator_id, amr, aal)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6, $7, $8, $9) RETURNING {SESSION_COLS}"
    );
    sqlx::query_as::<_, SessionRow>(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::now_v7())
        .bind(user_id)
        .bind(token_hash)
        .bind(lifetime.as_secs_f64())
        .bind(client.0)
        .bind(client.1)
        .bind(impersonator)
        .bind(&auth.amr)
        .bind(auth.aal)
        .fetch_one(pool)
        .await
}

/// What an access token of session `id` says about its sign-in and its active
/// organization.
pub async fn token_facts(
    pool: &PgPool,
    id: Uuid,
) -> Result<(super::tokens::SessionAuth, Option<super::tokens::OrgClaims>), sqlx::Error> {
    let auth: Option<(Vec<String>, i16)> =
        sqlx::query_as("SELECT amr, aal FROM sessions WHERE id = $1").bind(id).fetch_optional(pool).await?;
    let (amr, aal) = auth.unwrap_or_default();
    Ok((super::tokens::SessionAuth { amr, aal }, active_org_claims(pool, id).await?))
}

/// Adds `methods` to session `id`'s sign-in record (a second factor proved in
/// it), raises it to `aal`, and marks the user authenticated now.
pub async fn step_up_session(pool: &PgPool, id: Uuid, methods: &[&str], aal: i16) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sessions SET amr = ARRAY(SELECT DISTINCT unnest(amr || $2::text[]) ORDER BY 1),
           aal = greatest(aal, $3), authenticated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(methods)
    .bind(aal)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks the user authenticated now in session `id` (re-authentication).
pub async fn touch_authenticated(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET authenticated_at = now() WHERE id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// Whether session `id` proved its user within `window`.
pub async fn recently_authenticated(pool: &PgPool, id: Uuid, window: Duration) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce((SELECT authenticated_at > now() - make_interval(secs => $2) FROM sessions WHERE id = $1), false)",
    )
    .bind(id)
    .bind(window.as_secs_f64())
    .fetch_one(pool)
    .await
}

/// Finds a live session by token hash (not revoked, not expired, not idle longer
/// than `idle`), and records activity at most once a minute.
pub async fn live_session(
    pool: &PgPool,
    token_hash: &[u8],
    idle: Option<Duration>,
) -> Result<Option<SessionRow>, sqlx::Error> {
    let sql = format!("{LIVE_SESSION} WHERE token_hash = $1 AND {LIVE}");
    let row: Option<SessionRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(token_hash)
        .bind(idle.map(|d| d.as_secs_f64()))
        .fetch_optional(pool)
        .await?;
    if let Some(r) = &row
        && OffsetDateTime::now_utc() - r.last_active_at > time::Duration::minutes(1)
    {
        sqlx::query("UPDATE sessions SET last_active_at = now() WHERE id = $1").bind(r.id).execute(pool).await?;
    }
    Ok(row)
}

/// The owner's live sessions, newest first.
pub async fn list_sessions(
    pool: &PgPool,
    user_id: Uuid,
    before: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<SessionRow>, sqlx::Error> {
    let sql = format!(
        "{LIVE_SESSION} WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
         AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4"
    );
    sqlx::query_as::<_, SessionRow>(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .bind(before.map(|b| b.0))
        .bind(before.map(|b| b.1))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Revokes one of the owner's sessions; false if it is not theirs or not live.
pub async fn revoke_session(pool: &PgPool, user_id: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("UPDATE sessions SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL")
        .bind(id)
        .bind(user_id)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// Revokes all of the owner's sessions except `keep`; returns how many.
pub async fn revoke_all_sessions(pool: &PgPool, user_id: Uuid, keep: Option<Uuid>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2",
    )
    .bind(user_id)
    .bind(keep)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Retires the active signing keys and stores a new one, on `conn` (the caller's
/// transaction, which holds the signing-key lock).
pub async fn insert_signing_key(
    conn: &mut sqlx::PgConnection,
    kid: &str,
    sealed: &[u8],
    jwk: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_signing_keys SET retired_at = now() WHERE retired_at IS NULL").execute(&mut *conn).await?;
    sqlx::query("INSERT INTO auth_signing_keys (kid, alg, private_key, public_jwk) VALUES ($1, 'EdDSA', $2, $3)")
        .bind(kid)
        .bind(sealed)
        .bind(jwk)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Begins a transaction holding the lock that serialises signing-key changes
/// across replicas (first key at start-up, `carmenta key rotate`).
pub async fn lock_signing_keys(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7262011)").execute(&mut *tx).await?;
    Ok(tx)
}

/// Creates the first signing key if there is no active one.
pub async fn ensure_signing_key(pool: &PgPool, keyring: &Keyring) -> Result<(), sqlx::Error> {
    let mut tx = lock_signing_keys(pool).await?;
    let active: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM auth_signing_keys WHERE retired_at IS NULL)")
        .fetch_one(&mut *tx)
        .await?;
    if !active {
        let (kid, sealed, jwk) = super::tokens::generate_signing_key(keyring);
        insert_signing_key(&mut tx, &kid, &sealed, &jwk).await?;
    }
    tx.commit().await
}

/// Keys to publish: active ones and those retired less than `grace` ago; active first.
pub async fn published_signing_keys(pool: &PgPool, grace: Duration) -> Result<Vec<SigningKeyRow>, sqlx::Error> {
    let rows: Vec<(String, Vec<u8>, serde_json::Value, bool)> = sqlx::query_as(
        "SELECT kid, private_key, public_jwk, retired_at IS NULL FROM auth_signing_keys
         WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1)
         ORDER BY (retired_at IS NULL) DESC, created_at DESC",
    )
    .bind(grace.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kid, private_key, public_jwk, active)| SigningKeyRow { kid, private_key, public_jwk, active })
        .collect())
}

/// A service key as stored (without its hash).
#[derive(Debug, Clone, FromRow)]
pub struct ServiceKeyRow {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// First characters, to recognise it.
    pub prefix: String,
    /// `read` or `full`.
    pub scope: String,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last used.
    pub last_used_at: Option<OffsetDateTime>,
}

/// Stores a service key's hash.
pub async fn insert_service_key(
    pool: &PgPool,
    name: &str,
    hash: &[u8],
    prefix: &str,
    scope: &str,
) -> Result<ServiceKeyRow, sqlx::Error> {
    sqlx::query_as::<_, ServiceKeyRow>(
        "INSERT INTO service_keys (id, name, key_hash, prefix, scope) VALUES ($1, $2, $3, $4, $5)
         RETURNING id, name, prefix, scope, created_at, last_used_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(hash)
    .bind(prefix)
    .bind(scope)
    .fetch_one(pool)
    .await
}

/// Finds a live service key by hash and records its use (at most once a minute).
pub async fn service_key_by_hash(pool: &PgPool, hash: &[u8]) -> Result<Option<ServiceKeyRow>, sqlx::Error> {
    let row = sqlx::query_as::<_, ServiceKeyRow>(
        "SELECT id, name, prefix, scope, created_at, last_used_at FROM service_keys WHERE key_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await?;
    if let Some(r) = &row
        && r.last_used_at.is_none_or(|t| OffsetDateTime::now_utc() - t > time::Duration::minutes(1))
    {
        sqlx::query("UPDATE service_keys SET last_used_at = now() WHERE id = $1").bind(r.id).execute(pool).await?;
    }
    Ok(row)
}

/// All service keys (without secrets).
pub async fn list_service_keys(pool: &PgPool) -> Result<Vec<ServiceKeyRow>, sqlx::Error> {
    sqlx::query_as::<_, ServiceKeyRow>(
        "SELECT id, name, prefix, scope, created_at, last_used_at FROM service_keys WHERE revoked_at IS NULL ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
}

/// Revokes a service key by id or by name.
pub async fn revoke_service_key(pool: &PgPool, id_or_name: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE service_keys SET revoked_at = now() WHERE revoked_at IS NULL AND (id::text = $1 OR name = $1)",
    )
    .bind(id_or_name)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Counts a hit in the fixed window of `window` length for `bucket`; returns the
/// count including this hit.
pub async fn hit_window(pool: &PgPool, bucket: &str, window: Duration) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO auth_rate_windows (bucket, window_start, count)
         VALUES ($1, to_timestamp(floor(extract(epoch FROM now()) / $2) * $2), 1)
         ON CONFLICT (bucket, window_start) DO UPDATE SET count = auth_rate_windows.count + 1
         RETURNING count",
    )
    .bind(bucket)
    .bind(window.as_secs_f64().max(1.0))
    .fetch_one(pool)
    .await
}

/// The current count of `bucket`'s window, without counting a hit.
pub async fn window_count(pool: &PgPool, bucket: &str, window: Duration) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce((SELECT count FROM auth_rate_windows WHERE bucket = $1
           AND window_start = to_timestamp(floor(extract(epoch FROM now()) / $2) * $2)), 0)",
    )
    .bind(bucket)
    .bind(window.as_secs_f64().max(1.0))
    .fetch_one(pool)
    .await
}

/// Deletes rate windows older than a day (housekeeping).
pub async fn prune_windows(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM auth_rate_windows WHERE window_start < now() - interval '1 day'")
        .execute(pool)
        .await?
        .rows_affected())
}

/// When the account key is locked until, if it is locked now.
pub async fn locked_until(pool: &PgPool, account_key: &[u8]) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    sqlx::query_scalar("SELECT locked_until FROM auth_lockouts WHERE account_key = $1 AND locked_until > now()")
        .bind(account_key)
        .fetch_optional(pool)
        .await
        .map(Option::flatten)
}

/// Whether `user` signed up or in from `ip` in the last 90 days (the audit log).
pub async fn signed_in_from(pool: &PgPool, user: Uuid, ip: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM audit_log WHERE on_behalf_of = $1 AND action IN ('auth.sign_in', 'auth.sign_up') \
         AND detail->>'ip' = $2 AND at > now() - interval '90 days')",
    )
    .bind(user)
    .bind(ip)
    .fetch_one(pool)
    .await
}

/// Records a failed sign-in; locks the account key for `lockout` after `threshold`
/// consecutive failures. Returns whether it is now locked.
pub async fn record_failure(
    pool: &PgPool,
    account_key: &[u8],
    threshold: u32,
    lockout: Duration,
) -> Result<bool, sqlx::Error> {
    let locked: Option<OffsetDateTime> = sqlx::query_scalar(
        "INSERT INTO auth_lockouts (account_key, failures, updated_at) VALUES ($1, 1, now())
         ON CONFLICT (account_key) DO UPDATE SET
            failures = CASE WHEN auth_lockouts.locked_until IS NOT NULL AND auth_lockouts.locked_until <= now()
                            THEN 1 ELSE auth_lockouts.failures + 1 END,
            locked_until = CASE WHEN auth_lockouts.locked_until IS NOT NULL AND auth_lockouts.locked_until <= now()
                            THEN NULL ELSE auth_lockouts.locked_until END,
            updated_at = now()
         RETURNING CASE WHEN failures >= $2 THEN now() + make_interval(secs => $3) ELSE NULL END",
    )
    .bind(account_key)
    .bind(i32::try_from(threshold).unwrap_or(i32::MAX))
    .bind(lockout.as_secs_f64())
    .fetch_one(pool)
    .await?;
    if let Some(until) = locked {
        sqlx::query("UPDATE auth_lockouts SET locked_until = $2, failures = 0 WHERE account_key = $1")
            .bind(account_key)
            .bind(until)
            .execute(pool)
            .await?;
        return Ok(true);
    }
    Ok(false)
}

/// Clears failures after a successful sign-in.
pub async fn clear_failures(pool: &PgPool, account_key: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM auth_lockouts WHERE account_key = $1").bind(account_key).execute(pool).await?;
    Ok(())
}

/// Kinds of emailed tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailTokenKind {
    /// Confirms an email address.
    VerifyEmail,
    /// Signs in without a password.
    MagicLink,
    /// Sets a new password.
    PasswordReset,
}

impl EmailTokenKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailTokenKind::VerifyEmail => "verify_email",
            EmailTokenKind::MagicLink => "magic_link",
            EmailTokenKind::PasswordReset => "password_reset",
        }
    }
}

/// Stores an emailed token's hash.
pub async fn insert_email_token(
    pool: &PgPool,
    user_id: Uuid,
    kind: EmailTokenKind,
    token_hash: &[u8],
    email: &str,
    ttl: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_email_tokens (id, user_id, kind, token_hash, email, expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
    )
    .bind(Uuid::now_v7())
    .bind(user_id)
    .bind(kind.as_str())
    .bind(token_hash)
    .bind(email)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Uses up an emailed token: (user id, email) if it was live, unused and of `kind`.
pub async fn consume_email_token(
    pool: &PgPool,
    kind: EmailTokenKind,
    token_hash: &[u8],
) -> Result<Option<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE auth_email_tokens SET used_at = now()
         WHERE token_hash = $1 AND kind = $2 AND used_at IS NULL AND expires_at > now()
         RETURNING user_id, email",
    )
    .bind(token_hash)
    .bind(kind.as_str())
    .fetch_optional(pool)
    .await
}

/// Marks the user's email verified if it is still `email`.
pub async fn mark_email_verified(pool: &PgPool, user_id: Uuid, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE users SET email_verified_at = COALESCE(email_verified_at, now()), updated_at = now()
         WHERE id = $1 AND lower(email) = lower($2) RETURNING {USER_COLS}"
    );
    sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(email).fetch_optional(pool).await
}

/// The current email of the user a live, unused token of `kind` belongs to
/// (without using the token up).
pub async fn live_email_token_email(
    pool: &PgPool,
    kind: EmailTokenKind,
    token_hash: &[u8],
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT u.email FROM auth_email_tokens t JOIN users u ON u.id = t.user_id
         WHERE t.token_hash = $1 AND t.kind = $2 AND t.used_at IS NULL AND t.expires_at > now()",
    )
    .bind(token_hash)
    .bind(kind.as_str())
    .fetch_optional(pool)
    .await
}

/// Creates the row for an externally authenticated user if it does not exist.
pub async fn ensure_external_user(pool: &PgPool, id: Uuid, external_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO users (id, external_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(id)
        .bind(external_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// An external user's profile as a webhook describes it.
#[derive(Debug, Clone, Default)]
pub struct ExternalProfile {
    /// Primary email.
    pub email: Option<String>,
    /// Whether the issuer verified it.
    pub email_verified: bool,
    /// Display name.
    pub name: Option<String>,
    /// Avatar.
    pub image_url: Option<String>,
    /// Public metadata.
    pub public_metadata: serde_json::Value,
    /// Private metadata.
    pub private_metadata: serde_json::Value,
    /// Unsafe metadata.
    pub unsafe_metadata: serde_json::Value,
}

/// Creates or updates an external user from a webhook. An email already used by
/// another account is not copied (the row keeps its previous email).
pub async fn upsert_external_user(
    pool: &PgPool,
    id: Uuid,
    external_id: &str,
    p: &ExternalProfile,
) -> Result<(), sqlx::Error> {
    let run = |email: Option<String>| {
        sqlx::query(
            "INSERT INTO users (id, external_id, email, email_verified_at, name, image_url, public_metadata, private_metadata, unsafe_metadata)
             VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET
                email = COALESCE(EXCLUDED.email, users.email),
                email_verified_at = CASE WHEN $4 THEN COALESCE(users.email_verified_at, now()) ELSE NULL END,
                name = EXCLUDED.name, image_url = EXCLUDED.image_url,
                public_metadata = EXCLUDED.public_metadata, private_metadata = EXCLUDED.private_metadata,
                unsafe_metadata = EXCLUDED.unsafe_metadata, updated_at = now()",
        )
        .bind(id)
        .bind(external_id)
        .bind(email)
        .bind(p.email_verified)
        .bind(&p.name)
        .bind(&p.image_url)
        .bind(&p.public_metadata)
        .bind(&p.private_metadata)
        .bind(&p.unsafe_metadata)
        .execute(pool)
    };
    match run(p.email.clone()).await {
        Err(e) if is_unique_violation(&e) => {
            tracing::warn!(user_id = %id, "external user's email belongs to another account; not copied");
            run(None).await.map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

/// Records a webhook delivery; false if it was already recorded (a duplicate).
pub async fn record_webhook(pool: &PgPool, id: &str, source: &str, event_type: &str) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO webhook_deliveries (id, source, event_type) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(source)
    .bind(event_type)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Forgets a delivery whose processing failed, so the sender's retry is processed.
pub async fn forget_webhook(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM webhook_deliveries WHERE id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// Tells every replica's auth cache that something changed (see `auth::cache`).
pub async fn notify_auth(pool: &PgPool, payload: &str) -> Result<(), sqlx::Error> {
    crate::db::notify(pool, super::cache::CHANNEL, payload).await
}
