//! Background upkeep of connections: refreshing tokens of idle connections before
//! they expire (so a connection nobody used for a week still works, and rotating
//! refresh tokens do not lapse), and re-encrypting sealed secrets under the primary
//! key after a key rotation.

use std::time::Duration;

use uuid::Uuid;

use crate::app::AppState;

/// Refreshes connections whose access token expires within the refresh margin plus
/// `ahead`, that are not cooling down after a failure; returns how many were tried.
pub async fn refresh_idle(state: &AppState, ahead: Duration) -> Result<usize, sqlx::Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM connections WHERE status = 'connected' AND expires_at IS NOT NULL \
         AND expires_at < now() + make_interval(secs => $1) \
         AND (next_refresh_at IS NULL OR next_refresh_at < now()) ORDER BY expires_at LIMIT 200",
    )
    .bind((super::refresh::MARGIN + ahead).as_secs_f64())
    .fetch_all(&state.pool)
    .await?;
    for id in &ids {
        if let Err(e) = super::refresh::fresh_token(state, *id, false).await {
            tracing::info!(connection = %id, code = e.code, "idle refresh did not succeed");
        }
    }
    Ok(ids.len())
}

/// Re-seals integration secrets, connection credentials and auth signing keys that
/// are not sealed with the primary key (after `CARMENTA_ENCRYPTION_KEY` gained a new first key);
/// returns how many rows were rewritten.
pub async fn reencrypt(state: &AppState) -> Result<usize, sqlx::Error> {
    let mut done = 0;
    let secrets: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT id, client_secret FROM integrations WHERE client_secret IS NOT NULL")
            .fetch_all(&state.pool)
            .await?;
    for (id, sealed) in secrets {
        if !state.keyring.needs_reencrypt(&sealed) {
            continue;
        }
        let Ok(plain) = state.keyring.decrypt(&sealed, id.as_bytes()) else { continue };
        let resealed = state.keyring.encrypt(&plain, id.as_bytes());
        sqlx::query("UPDATE integrations SET client_secret = $2 WHERE id = $1 AND client_secret = $3")
            .bind(id)
            .bind(resealed)
            .bind(&sealed)
            .execute(&state.pool)
            .await?;
        done += 1;
    }
    // The auth signing keys are sealed with the same keyring (their kid as associated data).
    let keys: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT kid, private_key FROM auth_signing_keys").fetch_all(&state.pool).await?;
    for (kid, sealed) in keys {
        if !state.keyring.needs_reencrypt(&sealed) {
            continue;
        }
        let Ok(plain) = state.keyring.decrypt(&sealed, kid.as_bytes()) else { continue };
        let resealed = state.keyring.encrypt(&plain, kid.as_bytes());
        sqlx::query("UPDATE auth_signing_keys SET private_key = $2 WHERE kid = $1 AND private_key = $3")
            .bind(&kid)
            .bind(resealed)
            .bind(&sealed)
            .execute(&state.pool)
            .await?;
        done += 1;
    }
    let creds: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT id, credentials FROM connections").fetch_all(&state.pool).await?;
    for (id, sealed) in creds {
        if !state.keyring.needs_reencrypt(&sealed) {
            continue;
        }
        let Ok(plain) = state.keyring.decrypt(&sealed, id.as_bytes()) else { continue };
        let resealed = state.keyring.encrypt(&plain, id.as_bytes());
        // Only if unchanged meanwhile (a refresh may have re-sealed it already).
        sqlx::query("UPDATE connections SET credentials = $2 WHERE id = $1 AND credentials = $3")
            .bind(id)
            .bind(resealed)
            .bind(&sealed)
            .execute(&state.pool)
            .await?;
        done += 1;
    }
    Ok(done)
}

/// Runs both every five minutes (re-encryption once at start too). Ends when the pool closes.
pub fn spawn(state: &AppState) -> tokio::task::JoinHandle<()> {
    let state = state.clone();
    tokio::spawn(async move {
        match reencrypt(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "re-encrypted connection secrets under the primary key"),
            Err(e) => tracing::warn!(error = %e, "re-encrypting connection secrets"),
        }
        let mut tick = tokio::time::interval(Duration::from_secs(300));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if state.pool.is_closed() {
                return;
            }
            if let Err(e) = refresh_idle(&state, Duration::from_secs(600)).await {
                tracing::warn!(error = %e, "refreshing idle connections");
            }
            if let Err(e) = reencrypt(&state).await {
                tracing::warn!(error = %e, "re-encrypting connection secrets");
            }
        }
    })
}
