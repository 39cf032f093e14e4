//! Background upkeep of connections: refreshing tokens of idle connections before
//! they expire (so a connection nobody used for a week still works, and rotating
//! refresh tokens do not lapse), and re-encrypting sealed secrets under the primary
//! key after a key rotation.

use std::time::Duration;

use uuid::Uuid;

use crate::app::AppState;

/// Refreshes connections whose access token is due by the callers' rule (its own
/// margin), among those expiring within the widest margin plus `ahead` that are
/// not cooling down after a failure; returns how many were due and tried.
pub async fn refresh_idle(state: &AppState, ahead: Duration) -> Result<usize, sqlx::Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM connections WHERE status = 'connected' AND expires_at IS NOT NULL \
         AND expires_at < now() + make_interval(secs => $1) \
         AND (next_refresh_at IS NULL OR next_refresh_at < now()) ORDER BY expires_at LIMIT 200",
    )
    .bind((super::refresh::MAX_MARGIN + ahead).as_secs_f64())
    .fetch_all(&state.pool)
    .await?;
    let mut tried = 0;
    for id in &ids {
        match super::refresh::refresh_if_due(state, *id).await {
            Ok(due) => tried += usize::from(due),
            Err(e) => {
                tried += 1;
                tracing::info!(connection = %id, code = e.code, "idle refresh did not succeed");
            }
        }
    }
    Ok(tried)
}

/// Re-seals integration secrets, connection credentials and auth signing keys that
/// are not sealed with the primary key (after `CARMENTA_ENCRYPTION_KEY` gained a new first key);
/// returns how many rows were rewritten.
pub async fn reencrypt(state: &AppState) -> Result<usize, sqlx::Error> {
    let by_id = |k: &str| Uuid::parse_str(k).ok().map(|u| u.as_bytes().to_vec());
    let by_text = |k: &str| Some(k.as_bytes().to_vec());
    Ok(reseal(state, "integrations", "id", "uuid", "client_secret", by_id).await?
        // The auth signing keys are sealed with the same keyring (their kid as associated data).
        + reseal(state, "auth_signing_keys", "kid", "text", "private_key", by_text).await?
        + reseal(state, "connections", "id", "uuid", "credentials", by_id).await?)
}

/// Re-seals `table.column` (associated data from the row's `key`) where it is not
/// sealed with the primary key; only rows unchanged meanwhile are rewritten (a
/// refresh may have re-sealed a credential already).
async fn reseal(
    state: &AppState,
    table: &str,
    key: &str,
    key_type: &str,
    column: &str,
    aad: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<usize, sqlx::Error> {
    let select = format!("SELECT {key}::text, {column} FROM {table} WHERE {column} IS NOT NULL");
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(select)).fetch_all(&state.pool).await?;
    let update = format!("UPDATE {table} SET {column} = $2 WHERE {key} = $1::{key_type} AND {column} = $3");
    let mut done = 0;
    for (k, sealed) in rows {
        if !state.keyring.needs_reencrypt(&sealed) {
            continue;
        }
        let Some(ad) = aad(&k) else { continue };
        let Ok(plain) = state.keyring.decrypt(&sealed, &ad) else { continue };
        sqlx::query(sqlx::AssertSqlSafe(update.clone()))
            .bind(&k)
            .bind(state.keyring.encrypt(&plain, &ad))
            .bind(&sealed)
            .execute(&state.pool)
            .await?;
        done += 1;
    }
    Ok(done)
}
