//! Background upkeep of connections: refreshing tokens of idle connections before
//! they expire (so a connection nobody used for a week still works, and rotating
//! refresh tokens do not lapse). Run as the `connections.refresh_idle` job.

use std::time::Duration;

use super::Connections;

/// Refreshes connections whose access token is due by the callers' rule (its own
/// margin), among those expiring within the widest margin plus `ahead` that are
/// not cooling down after a failure; returns how many were due and tried.
pub async fn refresh_idle(c: &Connections, ahead: Duration) -> Result<usize, sqlx::Error> {
    let ids = super::db::expiring(&c.pool, (super::refresh::MAX_MARGIN + ahead).as_secs_f64()).await?;
    let mut tried = 0;
    for id in &ids {
        match super::refresh::refresh_if_due(c, *id).await {
            Ok(due) => tried += usize::from(due),
            Err(e) => {
                tried += 1;
                tracing::info!(connection = %id, code = e.code, "idle refresh did not succeed");
            }
        }
    }
    Ok(tried)
}
