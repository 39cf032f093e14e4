//! Every SQL statement of connections: integrations, connect sessions and OAuth
//! states, connections with their sealed credentials, refresh bookkeeping,
//! connection events and the webhook outbox. Queries on a user's connections take
//! the owner as a parameter.

use serde_json::Value;
use sqlx::{FromRow, PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::types::Connection;

// ---------------------------------------------------------------------------
// Integrations

/// An integration row (the client secret still sealed).
#[derive(Debug, Clone, FromRow)]
pub struct IntegrationRow {
    /// Id.
    pub id: Uuid,
    /// The app's key.
    pub unique_key: String,
    /// Catalog provider.
    pub provider: String,
    /// Client id.
    pub client_id: Option<String>,
    /// Sealed client secret.
    pub client_secret: Option<Vec<u8>>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Authorization parameter overrides.
    pub authorization_params: Value,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Updated.
    pub updated_at: OffsetDateTime,
}

const INTEGRATION_COLS: &str =
    "id, unique_key, provider, client_id, client_secret, scopes, authorization_params, created_at, updated_at";

/// A new integration's values.
#[derive(Debug)]
pub struct NewIntegration<'a> {
    /// Id (the sealed secret's associated data).
    pub id: Uuid,
    /// The app's key.
    pub unique_key: &'a str,
    /// Provider.
    pub provider: &'a str,
    /// Client id.
    pub client_id: Option<&'a str>,
    /// Sealed client secret.
    pub client_secret: Option<Vec<u8>>,
    /// Scopes.
    pub scopes: &'a [String],
    /// Authorization parameter overrides.
    pub authorization_params: Value,
}

/// Inserts an integration; `None` when its key is taken.
pub async fn insert_integration(pool: &PgPool, n: NewIntegration<'_>) -> Result<Option<IntegrationRow>, sqlx::Error> {
    let sql = format!(
        "INSERT INTO integrations (id, unique_key, provider, client_id, client_secret, scopes, authorization_params) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (unique_key) DO NOTHING RETURNING {INTEGRATION_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(n.id)
        .bind(n.unique_key)
        .bind(n.provider)
        .bind(n.client_id)
        .bind(n.client_secret)
        .bind(n.scopes)
        .bind(n.authorization_params)
        .fetch_optional(pool)
        .await
}

/// An integration by id.
pub async fn integration_by_id(pool: &PgPool, id: Uuid) -> Result<Option<IntegrationRow>, sqlx::Error> {
    let sql = format!("SELECT {INTEGRATION_COLS} FROM integrations WHERE id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await
}

/// An integration by its key.
pub async fn integration_by_key(pool: &PgPool, key: &str) -> Result<Option<IntegrationRow>, sqlx::Error> {
    let sql = format!("SELECT {INTEGRATION_COLS} FROM integrations WHERE unique_key = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(key).fetch_optional(pool).await
}

/// A page of integrations in key order, after the key `after`.
pub async fn list_integrations(
    pool: &PgPool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<IntegrationRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {INTEGRATION_COLS} FROM integrations WHERE $1::text IS NULL OR unique_key > $1 \
         ORDER BY unique_key LIMIT $2"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(after).bind(limit).fetch_all(pool).await
}

/// Every integration's key, in order.
pub async fn integration_keys(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT unique_key FROM integrations ORDER BY unique_key").fetch_all(pool).await
}

/// Changes of an integration (`None` keeps the value).
#[derive(Debug)]
pub struct IntegrationChanges<'a> {
    /// Client id.
    pub client_id: Option<&'a str>,
    /// Sealed client secret.
    pub client_secret: Option<Vec<u8>>,
    /// Scopes.
    pub scopes: Option<&'a [String]>,
    /// Authorization parameter overrides.
    pub authorization_params: Option<Value>,
}

/// Updates integration `id`.
pub async fn update_integration(
    pool: &PgPool,
    id: Uuid,
    c: IntegrationChanges<'_>,
) -> Result<IntegrationRow, sqlx::Error> {
    let sql = format!(
        "UPDATE integrations SET client_id = coalesce($2, client_id), client_secret = coalesce($3, client_secret), \
         scopes = coalesce($4, scopes), authorization_params = coalesce($5, authorization_params), updated_at = now() \
         WHERE id = $1 RETURNING {INTEGRATION_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(c.client_id)
        .bind(c.client_secret)
        .bind(c.scopes)
        .bind(c.authorization_params)
        .fetch_one(pool)
        .await
}

/// Deletes an integration (its connections cascade); whether it existed.
pub async fn delete_integration(pool: &PgPool, key: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM integrations WHERE unique_key = $1").bind(key).execute(pool).await?;
    Ok(r.rows_affected() > 0)
}

// ---------------------------------------------------------------------------
// Connect sessions and OAuth states

/// A live connect session.
#[derive(Debug, FromRow)]
pub struct SessionRow {
    /// The user connecting.
    pub owner_id: Uuid,
    /// The organization the connection is for (shared), if any.
    pub org_id: Option<Uuid>,
    /// Integration keys allowed (all when `None`).
    pub allowed_integrations: Option<Vec<String>>,
    /// Where the browser returns.
    pub return_url: Option<String>,
}

/// Stores a connect session.
pub async fn insert_connect_session(
    pool: &PgPool,
    token_hash: &[u8],
    owner: (Uuid, Option<Uuid>),
    allowed: Option<&Vec<String>>,
    return_url: Option<&str>,
    expires_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO connect_sessions (id, token_hash, owner_id, allowed_integrations, return_url, expires_at, org_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(Uuid::now_v7())
    .bind(token_hash)
    .bind(owner.0)
    .bind(allowed)
    .bind(return_url)
    .bind(expires_at)
    .bind(owner.1)
    .execute(pool)
    .await?;
    Ok(())
}

/// The unexpired connect session with this token hash.
pub async fn live_connect_session(pool: &PgPool, token_hash: &[u8]) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT owner_id, org_id, allowed_integrations, return_url FROM connect_sessions \
         WHERE token_hash = $1 AND expires_at > now()",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .await
}

/// One line of the hosted connect page: an integration, and one of the owner's
/// connections to it when there is one.
#[derive(Debug, FromRow)]
pub struct PageLine {
    /// Integration key.
    pub unique_key: String,
    /// Provider.
    pub provider: String,
    /// A connected account.
    pub external_account_id: Option<String>,
    /// Its status.
    pub status: Option<String>,
}

/// The integrations `allowed` (all when `None`) with `owner`'s connections to each.
pub async fn connect_page_lines(
    pool: &PgPool,
    owner: (Uuid, Option<Uuid>),
    allowed: Option<&Vec<String>>,
) -> Result<Vec<PageLine>, sqlx::Error> {
    sqlx::query_as(
        "SELECT i.unique_key, i.provider, c.external_account_id, c.status FROM integrations i \
         LEFT JOIN connections c ON c.integration_id = i.id \
           AND CASE WHEN $3::uuid IS NULL THEN c.owner_id = $1 AND c.org_id IS NULL ELSE c.org_id = $3 END \
         WHERE $2::text[] IS NULL OR i.unique_key = ANY($2) ORDER BY i.unique_key, c.created_at",
    )
    .bind(owner.0)
    .bind(allowed)
    .bind(owner.1)
    .fetch_all(pool)
    .await
}

/// Stores a single-use OAuth `state` (its hash) for `ttl_secs`.
pub async fn insert_oauth_state(pool: &PgPool, st: NewState<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO oauth_states (state_hash, owner_id, integration_id, code_verifier, return_url, expires_at, \
         connection_config, org_id) VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7, $8)",
    )
    .bind(st.state_hash)
    .bind(st.owner)
    .bind(st.integration)
    .bind(st.sealed_verifier)
    .bind(st.return_url)
    .bind(st.ttl_secs as f64)
    .bind(st.connection_config)
    .bind(st.org)
    .execute(pool)
    .await?;
    Ok(())
}

/// An OAuth state to store at the start of a flow.
pub struct NewState<'a> {
    /// The state's hash.
    pub state_hash: &'a [u8],
    /// The user connecting.
    pub owner: Uuid,
    /// The organization it is for, if shared.
    pub org: Option<Uuid>,
    /// The integration.
    pub integration: Uuid,
    /// The sealed PKCE verifier.
    pub sealed_verifier: Option<Vec<u8>>,
    /// Where the browser returns.
    pub return_url: Option<&'a str>,
    /// How long the state lives.
    pub ttl_secs: i64,
    /// The connection configuration given.
    pub connection_config: &'a Value,
}

/// A consumed OAuth state.
#[derive(Debug, FromRow)]
pub struct StateRow {
    /// The user connecting.
    pub owner_id: Uuid,
    /// The organization it is for, if shared.
    pub org_id: Option<Uuid>,
    /// The integration.
    pub integration_id: Uuid,
    /// The sealed PKCE verifier.
    pub code_verifier: Option<Vec<u8>>,
    /// Where the browser returns.
    pub return_url: Option<String>,
    /// The connection configuration given at the start.
    pub connection_config: Value,
}

/// Consumes an unexpired, unused state (the first callback with it wins).
pub async fn consume_oauth_state(pool: &PgPool, state_hash: &[u8]) -> Result<Option<StateRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE oauth_states SET used_at = now() WHERE state_hash = $1 AND used_at IS NULL AND expires_at > now() \
         RETURNING owner_id, org_id, integration_id, code_verifier, return_url, connection_config",
    )
    .bind(state_hash)
    .fetch_optional(pool)
    .await
}

// ---------------------------------------------------------------------------
// Connections

const CONN_SQL: &str = "SELECT c.id, i.unique_key AS integration, i.provider, c.external_account_id, c.status, \
    c.scopes, c.expires_at, c.last_refresh_at, c.last_error, c.metadata, c.created_at, c.org_id \
    FROM connections c JOIN integrations i ON i.id = c.integration_id";

/// A page of `owner`'s connections (optionally of one integration) in creation
/// order, after the position `after`.
pub async fn list_connections(
    pool: &PgPool,
    owner: (Uuid, Option<Uuid>),
    integration: Option<&str>,
    after: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<Connection>, sqlx::Error> {
    let sql = format!(
        "{CONN_SQL} WHERE CASE WHEN $6::uuid IS NULL THEN c.owner_id = $1 AND c.org_id IS NULL ELSE c.org_id = $6 END \
         AND ($2::text IS NULL OR i.unique_key = $2) \
         AND ($3::timestamptz IS NULL OR (c.created_at, c.id) > ($3, $4)) ORDER BY c.created_at, c.id LIMIT $5"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(owner.0)
        .bind(integration)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .bind(owner.1)
        .fetch_all(pool)
        .await
}

/// Connection `id` and who holds it: (the user who made it, the organization it
/// is shared with). The caller decides who may see it.
pub async fn connection_by_id(pool: &PgPool, id: Uuid) -> Result<Option<(Connection, Uuid)>, sqlx::Error> {
    let sql =
        format!("SELECT q.*, c2.owner_id FROM ({CONN_SQL} WHERE c.id = $1) q JOIN connections c2 ON c2.id = q.id");
    let row: Option<ConnectionWithOwner> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?;
    Ok(row.map(|r| (r.connection, r.owner_id)))
}

#[derive(FromRow)]
struct ConnectionWithOwner {
    #[sqlx(flatten)]
    connection: Connection,
    owner_id: Uuid,
}

/// The id of the holder's connection to `integration` for `account`, if any:
/// the user's own (`org` none), or the organization's.
pub async fn connection_id_of(
    pool: &PgPool,
    owner: (Uuid, Option<Uuid>),
    integration: Uuid,
    account: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM connections WHERE integration_id = $2 AND external_account_id = $3 \
         AND CASE WHEN $4::uuid IS NULL THEN owner_id = $1 AND org_id IS NULL ELSE org_id = $4 END",
    )
    .bind(owner.0)
    .bind(integration)
    .bind(account)
    .bind(owner.1)
    .fetch_optional(pool)
    .await
}

/// A connection's values as the exchange left them.
#[derive(Debug)]
pub struct Upsert<'a> {
    /// The id (the sealed credentials' associated data).
    pub id: Uuid,
    /// Owner (who made it) and the organization it is shared with, if any.
    pub owner: (Uuid, Option<Uuid>),
    /// Integration.
    pub integration: Uuid,
    /// External account.
    pub account: &'a str,
    /// Sealed credentials.
    pub credentials: Vec<u8>,
    /// Granted scopes.
    pub scopes: &'a [String],
    /// Access token expiry.
    pub expires_at: Option<OffsetDateTime>,
    /// Connection configuration (template values).
    pub connection_config: &'a Value,
}

/// Inserts the connection, or updates the one on (owner, integration, account)
/// when it has the same id; `None` when another id holds that place (a racing insert).
pub async fn upsert_connection(pool: &PgPool, u: Upsert<'_>) -> Result<Option<Uuid>, sqlx::Error> {
    // One account per holder: the user's own connections and an organization's are
    // two unique indexes (see the migration); the conflict target names the one.
    let target = if u.owner.1.is_some() {
        "(org_id, integration_id, external_account_id) WHERE org_id IS NOT NULL"
    } else {
        "(owner_id, integration_id, external_account_id) WHERE org_id IS NULL"
    };
    let sql = format!(
        "INSERT INTO connections (id, owner_id, integration_id, external_account_id, credentials, scopes, expires_at, \
         last_refresh_at, connection_config, org_id) VALUES ($1, $2, $3, $4, $5, $6, $7, now(), $8, $9) \
         ON CONFLICT {target} DO UPDATE SET credentials = excluded.credentials, \
         scopes = excluded.scopes, expires_at = excluded.expires_at, status = 'connected', last_error = NULL, \
         connection_config = excluded.connection_config, \
         last_refresh_at = now(), updated_at = now() WHERE connections.id = excluded.id RETURNING id"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(u.id)
        .bind(u.owner.0)
        .bind(u.integration)
        .bind(u.account)
        .bind(u.credentials)
        .bind(u.scopes)
        .bind(u.expires_at)
        .bind(u.connection_config)
        .bind(u.owner.1)
        .fetch_optional(pool)
        .await
}

/// Sets connection `id`'s metadata (the caller checked who may).
pub async fn set_metadata(pool: &PgPool, id: Uuid, metadata: &Value) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE connections SET metadata = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(metadata)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes connection `id` (within `conn`, with its event; the caller checked who may).
pub async fn delete_connection(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM connections WHERE id = $1").bind(id).execute(conn).await?;
    Ok(())
}

/// A connection's status, sealed credentials and provider.
pub async fn sealed_credentials(pool: &PgPool, id: Uuid) -> Result<Option<(String, Vec<u8>, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.status, c.credentials, i.provider FROM connections c \
         JOIN integrations i ON i.id = c.integration_id WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// One connection as the proxy needs it.
#[derive(Debug, Clone, FromRow)]
pub struct ProxyRow {
    /// The connection id.
    pub id: Uuid,
    /// Its owner (who made it).
    pub owner_id: Uuid,
    /// The organization it is shared with: then members with
    /// `org:connections:read` use it, whoever made it.
    pub org_id: Option<Uuid>,
    /// The integration's unique key (`Provider-Config-Key`).
    pub unique_key: String,
    /// The provider's catalog name.
    pub provider: String,
    /// `connection_config` (template values).
    pub connection_config: Value,
    /// `connected` or `needs_reauth`.
    pub status: String,
    /// The sealed credentials (AES-256-GCM, the id as associated data).
    pub credentials: Vec<u8>,
}

/// Connection `id` under the integration `key`, with sealed credentials (the
/// caller checks that the requester may use it).
pub async fn proxy_row(pool: &PgPool, id: Uuid, key: &str) -> Result<Option<ProxyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.owner_id, c.org_id, i.unique_key, i.provider, c.connection_config, c.status, c.credentials \
         FROM connections c JOIN integrations i ON i.id = c.integration_id \
         WHERE c.id = $1 AND i.unique_key = $2",
    )
    .bind(id)
    .bind(key)
    .fetch_optional(pool)
    .await
}

// ---------------------------------------------------------------------------
// Refresh

/// A connection's row, locked for its refresh.
#[derive(Debug, FromRow)]
pub struct Locked {
    /// Owner.
    pub owner_id: Uuid,
    /// Integration.
    pub integration_id: Uuid,
    /// Status.
    pub status: String,
    /// Sealed credentials.
    pub credentials: Vec<u8>,
    /// Consecutive transient failures.
    pub refresh_failures: i32,
    /// End of the cooldown after a failure.
    pub next_refresh_at: Option<OffsetDateTime>,
    /// Connection configuration (template values).
    pub connection_config: Value,
}

/// Locks connection `id`'s row (`FOR UPDATE`) within `conn`.
pub async fn lock_connection(conn: &mut PgConnection, id: Uuid) -> Result<Option<Locked>, sqlx::Error> {
    sqlx::query_as(
        "SELECT owner_id, integration_id, status, credentials, refresh_failures, next_refresh_at, connection_config \
         FROM connections WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Stores refreshed credentials and clears the failure bookkeeping.
pub async fn store_refreshed(
    conn: &mut PgConnection,
    id: Uuid,
    sealed: Vec<u8>,
    expires_at: Option<OffsetDateTime>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE connections SET credentials = $2, expires_at = $3, last_refresh_at = now(), last_error = NULL, \
         refresh_failures = 0, next_refresh_at = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(sealed)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks the connection `needs_reauth` and records the event.
pub async fn mark_needs_reauth(conn: &mut PgConnection, id: Uuid, owner: Uuid, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE connections SET status = 'needs_reauth', last_error = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(error)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO connection_events (connection_id, owner_id, kind, detail) VALUES ($1, $2, 'refresh_failed', $3)",
    )
    .bind(id)
    .bind(owner)
    .bind(serde_json::json!({"error": error, "permanent": true}))
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a transient refresh failure and its cooldown.
pub async fn record_refresh_failure(
    conn: &mut PgConnection,
    id: Uuid,
    error: &str,
    failures: i32,
    cooldown_secs: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE connections SET last_error = $2, refresh_failures = $3, \
         next_refresh_at = now() + make_interval(secs => $4), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(failures)
    .bind(cooldown_secs as f64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Connected connections expiring within `within_secs` and not cooling down, soonest first.
pub async fn expiring(pool: &PgPool, within_secs: f64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM connections WHERE status = 'connected' AND expires_at IS NOT NULL \
         AND expires_at < now() + make_interval(secs => $1) \
         AND (next_refresh_at IS NULL OR next_refresh_at < now()) ORDER BY expires_at LIMIT 200",
    )
    .bind(within_secs)
    .fetch_all(pool)
    .await
}

// ---------------------------------------------------------------------------
// Webhook outbox

/// An outbox event due for delivery.
#[derive(Debug, FromRow)]
pub struct Due {
    /// Id.
    pub id: Uuid,
    /// The event.
    pub payload: Value,
    /// Deliveries tried.
    pub attempts: i32,
}

/// Writes an event to the outbox.
pub async fn insert_event(
    conn: &mut PgConnection,
    id: Uuid,
    event_type: &str,
    payload: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO webhook_outbox (id, event_type, payload) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(event_type)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// Claims up to 20 due events within `conn` (`SKIP LOCKED`: another replica takes others).
pub async fn claim_due_events(conn: &mut PgConnection) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, payload, attempts FROM webhook_outbox WHERE delivered_at IS NULL AND failed_at IS NULL \
         AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 20 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(conn)
    .await
}

/// Marks an event delivered.
pub async fn mark_delivered(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webhook_outbox SET delivered_at = now(), attempts = attempts + 1 WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a failed delivery: the next attempt after `backoff_secs`, or failed
/// for good at `max_attempts`.
pub async fn mark_attempt_failed(
    conn: &mut PgConnection,
    id: Uuid,
    attempts: i32,
    error: &str,
    backoff_secs: i64,
    max_attempts: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_outbox SET attempts = $2, last_error = $3, \
         next_attempt_at = now() + make_interval(secs => $4), \
         failed_at = CASE WHEN $2 >= $5 THEN now() END WHERE id = $1",
    )
    .bind(id)
    .bind(attempts)
    .bind(error)
    .bind(backoff_secs as f64)
    .bind(max_attempts)
    .execute(conn)
    .await?;
    Ok(())
}

/// When the earliest pending event is due.
pub async fn next_event_due(pool: &PgPool) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(next_attempt_at) FROM webhook_outbox WHERE delivered_at IS NULL AND failed_at IS NULL",
    )
    .fetch_one(pool)
    .await
}
