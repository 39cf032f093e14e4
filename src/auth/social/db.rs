//! Statements of social sign-in: providers added through the API, sign-in and
//! link flows, and the identities linked to users.

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// A provider stored through the API.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProviderRow {
    /// Id.
    pub id: String,
    /// `oidc`, or a built-in provider's id.
    pub kind: String,
    /// OAuth client id.
    pub client_id: String,
    /// Sealed client secret.
    pub client_secret: Option<Vec<u8>>,
    /// OpenID Connect discovery URL.
    pub discovery_url: Option<String>,
    /// The provider's own server (GitHub Enterprise Server).
    pub base_url: Option<String>,
    /// Scopes in place of the defaults.
    pub scopes: Option<Vec<String>>,
    /// Name on buttons.
    pub name: Option<String>,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

const PROVIDER_COLS: &str = "id, kind, client_id, client_secret, discovery_url, base_url, scopes, name, updated_at";

/// Every stored provider, by id.
pub async fn providers(pool: &PgPool) -> Result<Vec<ProviderRow>, sqlx::Error> {
    let sql = format!("SELECT {PROVIDER_COLS} FROM auth_social_providers ORDER BY id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await
}

/// The stored provider `id`.
pub async fn provider(pool: &PgPool, id: &str) -> Result<Option<ProviderRow>, sqlx::Error> {
    let sql = format!("SELECT {PROVIDER_COLS} FROM auth_social_providers WHERE id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await
}

/// Creates or replaces provider `row.id` (a `None` secret keeps the stored one).
pub async fn put_provider(pool: &PgPool, row: &ProviderRow) -> Result<ProviderRow, sqlx::Error> {
    let sql = format!(
        "INSERT INTO auth_social_providers (id, kind, client_id, client_secret, discovery_url, scopes, name, base_url)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, client_id = EXCLUDED.client_id,
           client_secret = coalesce(EXCLUDED.client_secret, auth_social_providers.client_secret),
           discovery_url = EXCLUDED.discovery_url, scopes = EXCLUDED.scopes, name = EXCLUDED.name,
           base_url = EXCLUDED.base_url, updated_at = now()
         RETURNING {PROVIDER_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&row.id)
        .bind(&row.kind)
        .bind(&row.client_id)
        .bind(&row.client_secret)
        .bind(&row.discovery_url)
        .bind(&row.scopes)
        .bind(&row.name)
        .bind(&row.base_url)
        .fetch_one(pool)
        .await
}

/// Deletes stored provider `id`; whether it existed.
pub async fn delete_provider(pool: &PgPool, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM auth_social_providers WHERE id = $1").bind(id).execute(pool).await?.rows_affected() > 0)
}

/// A new flow's fields.
#[derive(Debug)]
pub struct NewFlow<'a> {
    /// SHA-256 of `state`.
    pub state_hash: &'a [u8],
    /// Provider id.
    pub provider: &'a str,
    /// SHA-256 of the browser cookie's value (hosted flows).
    pub browser_hash: Option<&'a [u8]>,
    /// The app's S256 challenge (app flows).
    pub app_challenge: Option<&'a str>,
    /// PKCE verifier sent to the provider's token endpoint.
    pub code_verifier: &'a str,
    /// OpenID nonce.
    pub nonce: &'a str,
    /// Where the browser goes afterwards.
    pub redirect_url: Option<&'a str>,
    /// The user linking (link flows).
    pub link_user_id: Option<Uuid>,
}

/// A flow as the callback and the exchange see it.
#[derive(Debug, sqlx::FromRow)]
pub struct FlowRow {
    /// Id.
    pub id: Uuid,
    /// Provider id.
    pub provider: String,
    /// SHA-256 of the browser cookie's value.
    pub browser_hash: Option<Vec<u8>>,
    /// The app's S256 challenge.
    pub app_challenge: Option<String>,
    /// PKCE verifier for the provider.
    pub code_verifier: String,
    /// OpenID nonce.
    pub nonce: String,
    /// Where the browser goes afterwards.
    pub redirect_url: Option<String>,
    /// The user linking.
    pub link_user_id: Option<Uuid>,
    /// The provider's answer (app flows, after the callback).
    pub result: Option<serde_json::Value>,
}

const FLOW_COLS: &str =
    "id, provider, browser_hash, app_challenge, code_verifier, nonce, redirect_url, link_user_id, result";

/// Stores a flow lasting `ttl`.
pub async fn insert_flow(pool: &PgPool, f: &NewFlow<'_>, ttl: Duration) -> Result<OffsetDateTime, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO auth_social_flows (id, state_hash, provider, browser_hash, app_challenge, code_verifier,
           nonce, redirect_url, link_user_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10)) RETURNING expires_at",
    )
    .bind(Uuid::now_v7())
    .bind(f.state_hash)
    .bind(f.provider)
    .bind(f.browser_hash)
    .bind(f.app_challenge)
    .bind(f.code_verifier)
    .bind(f.nonce)
    .bind(f.redirect_url)
    .bind(f.link_user_id)
    .bind(ttl.as_secs_f64())
    .fetch_one(pool)
    .await
}

/// Takes the live flow with `state_hash` (once: a replayed callback finds nothing).
pub async fn take_flow(pool: &PgPool, state_hash: &[u8]) -> Result<Option<FlowRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE auth_social_flows SET used_at = now()
         WHERE state_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING {FLOW_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(state_hash).fetch_optional(pool).await
}

/// Keeps the provider's answer of an app flow for its exchange code.
pub async fn park_result(
    pool: &PgPool,
    id: Uuid,
    exchange_hash: &[u8],
    result: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_social_flows SET exchange_hash = $2, result = $3 WHERE id = $1")
        .bind(id)
        .bind(exchange_hash)
        .bind(result)
        .execute(pool)
        .await?;
    Ok(())
}

/// Takes an app flow by its exchange code (once).
pub async fn take_exchange(pool: &PgPool, exchange_hash: &[u8]) -> Result<Option<FlowRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE auth_social_flows SET exchange_hash = NULL
         WHERE exchange_hash = $1 AND result IS NOT NULL AND expires_at > now() RETURNING {FLOW_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(exchange_hash).fetch_optional(pool).await
}

/// Deletes flows expired for a day (housekeeping).
pub async fn prune_flows(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM auth_social_flows WHERE expires_at < now() - interval '1 day'")
        .execute(pool)
        .await?
        .rows_affected())
}

/// A linked identity.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdentityRow {
    /// Id.
    pub id: Uuid,
    /// The user.
    pub user_id: Uuid,
    /// Provider id.
    pub provider: String,
    /// The provider's user id.
    pub subject: String,
    /// The email the provider gave.
    pub email: Option<String>,
    /// Whether the provider said it was verified.
    pub email_verified: bool,
    /// Linked.
    pub created_at: OffsetDateTime,
    /// Last sign-in with it.
    pub last_sign_in_at: Option<OffsetDateTime>,
}

const IDENTITY_COLS: &str = "id, user_id, provider, subject, email, email_verified, created_at, last_sign_in_at";

/// The identity `subject` at `provider`, if linked.
pub async fn identity(pool: &PgPool, provider: &str, subject: &str) -> Result<Option<IdentityRow>, sqlx::Error> {
    let sql = format!("SELECT {IDENTITY_COLS} FROM auth_identities WHERE provider = $1 AND subject = $2");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(provider).bind(subject).fetch_optional(pool).await
}

/// Links an identity to `user`; `None` when (provider, subject) is linked already.
pub async fn insert_identity(
    pool: &PgPool,
    user: Uuid,
    provider: &str,
    subject: &str,
    email: Option<&str>,
    email_verified: bool,
) -> Result<Option<IdentityRow>, sqlx::Error> {
    let sql = format!(
        "INSERT INTO auth_identities (id, user_id, provider, subject, email, email_verified, last_sign_in_at)
         VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT (provider, subject) DO NOTHING RETURNING {IDENTITY_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(provider)
        .bind(subject)
        .bind(email)
        .bind(email_verified)
        .fetch_optional(pool)
        .await
}

/// Records a sign-in with identity `id` and what the provider says now.
pub async fn touch_identity(pool: &PgPool, id: Uuid, email: Option<&str>, verified: bool) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_identities SET last_sign_in_at = now(), email = $2, email_verified = $3 WHERE id = $1")
        .bind(id)
        .bind(email)
        .bind(verified)
        .execute(pool)
        .await?;
    Ok(())
}

/// The user's identities, oldest first.
pub async fn identities(pool: &PgPool, user: Uuid) -> Result<Vec<IdentityRow>, sqlx::Error> {
    let sql = format!("SELECT {IDENTITY_COLS} FROM auth_identities WHERE user_id = $1 ORDER BY created_at, id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(user).fetch_all(pool).await
}

/// Unlinks identity `id` of `user` unless it is the user's last way to sign in
/// (no password and no other identity): `Some(true)` removed, `Some(false)` refused
/// as the last, `None` not the user's.
pub async fn unlink_identity(pool: &PgPool, user: Uuid, id: Uuid) -> Result<Option<bool>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Lock the user so two unlinks cannot each leave the other as the last.
    let has_password: Option<bool> =
        sqlx::query_scalar("SELECT password_hash IS NOT NULL FROM users WHERE id = $1 FOR UPDATE")
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(has_password) = has_password else { return Ok(None) };
    let mine: Option<i64> = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM auth_identities WHERE user_id = $1) FROM auth_identities WHERE id = $2 AND user_id = $1",
    )
    .bind(user)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(count) = mine else { return Ok(None) };
    if !has_password && count <= 1 {
        return Ok(Some(false));
    }
    sqlx::query("DELETE FROM auth_identities WHERE id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Some(true))
}
