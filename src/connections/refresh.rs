//! Token refresh, safe across replicas and concurrent callers (where Nango's users
//! get hurt): a token is refreshed when it expires within its margin (the provider
//! entry's `token_expiration_buffer`, else the smaller of 10 minutes and half the
//! token's lifetime), under a lock on the connection's row (`SELECT … FOR UPDATE`),
//! re-reading inside the lock: a token other than the one the caller found due is
//! someone else's fresh refresh and is used while it has not expired, so one
//! expiry costs one refresh however many callers and replicas queue. A rotated refresh token
//! is stored in the same transaction before the new access token is handed out; an
//! absent one keeps the old. Permanent errors (`invalid_grant` and kin) mark the
//! connection `needs_reauth` and record an event; transient ones (network, 5xx,
//! 429) record the error and a cooldown (exponential, up to 10 minutes) before the
//! next attempt, and the connection stays connected.

use std::time::Duration;

use http::StatusCode;
use time::OffsetDateTime;
use uuid::Uuid;

use super::db;
use super::vault::Credentials;
use super::{Connections, integrations, oauth};
use crate::error::ApiError;

/// Per-connection locks inside one process: callers of one replica queue here, so
/// at most one of its pool connections waits on the row lock per connection.
#[derive(Debug, Default)]
pub struct Locks(std::sync::Mutex<std::collections::HashMap<Uuid, std::sync::Arc<tokio::sync::Mutex<()>>>>);

impl Locks {
    fn get(&self, id: Uuid) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, l| std::sync::Arc::strong_count(l) > 1);
        }
        m.entry(id).or_default().clone()
    }
}

/// The widest refresh margin: no token is refreshed earlier than this before it
/// expires unless its provider entry's `token_expiration_buffer` says so.
pub const MAX_MARGIN: Duration = Duration::from_secs(600);
const MAX_COOLDOWN_SECS: i64 = 600;

/// How long before its expiry a token is refreshed: the provider entry's
/// `token_expiration_buffer` when it has one; otherwise the smaller of 10 minutes
/// and half the token's lifetime (so a 5-minute token is refreshed in its last
/// 150 s, an 8-second one in its last 4 s); 10 minutes when the lifetime is unknown.
pub fn margin(buffer_secs: Option<u64>, lifetime_secs: Option<i64>) -> time::Duration {
    let max = MAX_MARGIN.as_secs() as i64;
    let secs = match (buffer_secs, lifetime_secs) {
        (Some(b), _) => b.min(86_400) as i64,
        (None, Some(l)) if l > 0 => (l / 2).min(max),
        _ => max,
    };
    time::Duration::seconds(secs)
}

/// Whether a token expiring at `expires_at` is within its margin (see [`margin`]).
fn due(expires_at: Option<OffsetDateTime>, buffer_secs: Option<u64>, lifetime_secs: Option<i64>) -> bool {
    expires_at.is_some_and(|e| e - OffsetDateTime::now_utc() < margin(buffer_secs, lifetime_secs))
}

/// Whether a token expiring at `expires_at` may still be used (it has not expired).
fn unexpired(expires_at: Option<OffsetDateTime>) -> bool {
    expires_at.is_none_or(|e| e > OffsetDateTime::now_utc())
}

fn needs_reauth() -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "needs_reauth", "the user must reconnect this account")
}

/// A usable access token of a connection from its status and sealed credentials
/// (the proxy's cached row): opened and returned when fresh enough, else
/// refreshed first (`buffer_secs`: the provider entry's `token_expiration_buffer`).
/// No query unless a refresh is due.
pub async fn access_token_from(
    c: &Connections,
    id: Uuid,
    status: &str,
    sealed: &[u8],
    buffer_secs: Option<u64>,
) -> Result<String, ApiError> {
    if status == "needs_reauth" {
        return Err(needs_reauth());
    }
    let access = c.vault.open_access(id, sealed)?;
    if !due(access.expires_at, buffer_secs, access.lifetime_secs) {
        return Ok(access.access_token);
    }
    refresh(c, id, access.access_token).await.map(|c| c.access_token)
}

/// A connection's status, credentials and its provider's `token_expiration_buffer`.
async fn load(c: &Connections, id: Uuid) -> Result<(String, Credentials, Option<u64>), ApiError> {
    let row = db::sealed_credentials(&c.pool, id).await?;
    let (status, sealed, provider) = row.ok_or_else(|| ApiError::not_found("connection not found"))?;
    let creds = c.vault.open_credentials(id, &sealed)?;
    let buffer = c.catalog.get(&provider).and_then(|p| p.expiration_buffer());
    Ok((status, creds, buffer))
}

/// Loads connection `id` and refreshes it first when it is due (or when `force`);
/// returns its usable credentials and whether a refresh was due.
async fn ensure(c: &Connections, id: Uuid, force: bool) -> Result<(Credentials, bool), ApiError> {
    let (status, current, buffer) = load(c, id).await?;
    if status == "needs_reauth" {
        return Err(needs_reauth());
    }
    // Fast path, no lock: fresh enough.
    if !force && !due(current.expires_at, buffer, current.lifetime_secs) {
        return Ok((current, false));
    }
    refresh(c, id, current.access_token).await.map(|c| (c, true))
}

/// The connection's credentials with a usable access token, refreshing first when
/// it is due (or when `force`).
pub async fn fresh_token(c: &Connections, id: Uuid, force: bool) -> Result<Credentials, ApiError> {
    ensure(c, id, force).await.map(|(c, _)| c)
}

/// After the provider refused `rejected` (revoked or rotated elsewhere): a
/// replacement, refreshing only if nobody has replaced that token yet (so a burst
/// of refused calls costs one refresh, not one each).
pub async fn replace_rejected(c: &Connections, id: Uuid, rejected: String) -> Result<Credentials, ApiError> {
    refresh(c, id, rejected).await
}

/// For the sweeper: refreshes connection `id` when its token is due by the same
/// rule as a caller's (its own margin), through the same lock; returns whether a
/// refresh was due (a connection that needs reauthorisation is not).
pub async fn refresh_if_due(c: &Connections, id: Uuid) -> Result<bool, ApiError> {
    match ensure(c, id, false).await {
        Err(e) if e.code == "needs_reauth" => Ok(false),
        r => r.map(|(_, was_due)| was_due),
    }
}

/// Refreshes connection `id` under its locks, unless someone else replaced
/// `seen_token` (the access token the caller found due) meanwhile.
async fn refresh(c: &Connections, id: Uuid, seen_token: String) -> Result<Credentials, ApiError> {
    let local = c.locks.get(id);
    let _queued = local.lock().await;

    let mut tx = c.pool.begin().await?;
    let row = db::lock_connection(&mut tx, id).await?.ok_or_else(|| ApiError::not_found("connection not found"))?;
    if row.status == "needs_reauth" {
        return Err(needs_reauth());
    }
    let creds = c.vault.open_credentials(id, &row.credentials)?;
    // Someone (a caller here, another replica, the sweeper) refreshed while we
    // waited for the lock: use theirs while it has not expired, whatever the
    // margin says, so one expiry costs one refresh.
    if creds.access_token != seen_token && unexpired(creds.expires_at) {
        return Ok(creds);
    }
    // In a cooldown after a transient failure: the old token while it lasts.
    if let Some(next) = row.next_refresh_at
        && next > OffsetDateTime::now_utc()
    {
        if unexpired(creds.expires_at) {
            return Ok(creds);
        }
        let wait = (next - OffsetDateTime::now_utc()).whole_seconds().max(1);
        return Err(
            ApiError::unavailable(format!("refreshing failed; retrying after {wait} s")).with_code("refresh_failed")
        );
    }
    let integ = integrations::by_id(c, row.integration_id).await?;
    let provider = c
        .catalog
        .get(&integ.provider)
        .ok_or_else(|| ApiError::internal(format!("provider {} left the catalog", integ.provider)))?
        .with_config(&row.connection_config)
        .map_err(|e| ApiError::unprocessable(e.code(), "the connection's configuration does not fit its provider"))?;
    let outcome = if provider.auth_mode == "OAUTH2_CC" {
        // Client credentials: a new grant with the same client, nothing to rotate.
        let own =
            creds.raw.get("carmenta_client").and_then(|v| Some((v.get("id")?.as_str()?, v.get("secret")?.as_str()?)));
        super::service::client_credentials(c, &provider, &integ, own).await
    } else {
        let Some(refresh_token) = creds.refresh_token.clone() else {
            // Nothing to refresh with: the token is what it is (providers without expiry).
            return Ok(creds);
        };
        let params = vec![
            ("grant_type".to_string(), "refresh_token".to_string()),
            ("refresh_token".to_string(), refresh_token.clone()),
        ];
        let client = super::service::client_of(c, &integ)?;
        oauth::exchange(&provider, &client, params, true).await.map(|mut t| {
            // A rotated refresh token replaces the old; none keeps the old.
            t.refresh_token = t.refresh_token.or(Some(refresh_token));
            t
        })
    };
    match outcome {
        Ok(t) => {
            let new = Credentials {
                access_token: t.access_token,
                refresh_token: t.refresh_token,
                expires_at: t.expires_at,
                lifetime_secs: t.lifetime_secs,
                raw: t.raw,
            };
            db::store_refreshed(&mut tx, id, c.vault.seal_credentials(id, &new), new.expires_at).await?;
            tx.commit().await?;
            // Other replicas hear the trigger's NOTIFY; this one need not wait for it.
            c.cache.apply(&id.to_string());
            Ok(new)
        }
        Err(e) if e.code == "invalid_grant" => {
            db::mark_needs_reauth(&mut tx, id, row.owner_id, &e.detail).await?;
            super::webhooks::emit(
                &mut tx,
                "connection.refresh_failed",
                serde_json::json!({"connection_id": id, "owner_id": row.owner_id, "integration": integ.unique_key,
                                   "provider": integ.provider, "error": e.detail, "status": "needs_reauth"}),
            )
            .await?;
            tx.commit().await?;
            // Other replicas hear the trigger's NOTIFY; this one need not wait for it.
            c.cache.apply(&id.to_string());
            Err(needs_reauth())
        }
        Err(e) => {
            let failures = row.refresh_failures.saturating_add(1);
            let cooldown = (1i64 << failures.clamp(0, 10)).min(MAX_COOLDOWN_SECS);
            db::record_refresh_failure(&mut tx, id, &e.detail, failures, cooldown).await?;
            tx.commit().await?;
            // Other replicas hear the trigger's NOTIFY; this one need not wait for it.
            c.cache.apply(&id.to_string());
            tracing::warn!(connection = %id, error = %e.detail, cooldown_secs = cooldown, "token refresh failed; will retry");
            if unexpired(creds.expires_at) {
                Ok(creds)
            } else {
                Err(ApiError::unavailable(format!("refreshing failed; retrying after {cooldown} s"))
                    .with_code("refresh_failed"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::margin;

    #[test]
    fn the_margin_fits_the_token() {
        let s = time::Duration::seconds;
        // An hour-long token: 10 minutes; a 5-minute one: half its life; 8 s: 4 s.
        assert_eq!(margin(None, Some(3600)), s(600));
        assert_eq!(margin(None, Some(300)), s(150));
        assert_eq!(margin(None, Some(8)), s(4));
        // Unknown lifetime (credentials stored before it was remembered): 10 minutes.
        assert_eq!(margin(None, None), s(600));
        assert_eq!(margin(None, Some(0)), s(600));
        // The provider entry's token_expiration_buffer wins either way.
        assert_eq!(margin(Some(30), Some(300)), s(30));
        assert_eq!(margin(Some(900), Some(3600)), s(900));
        assert_eq!(margin(Some(0), None), s(0));
    }
}
