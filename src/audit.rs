//! The audit log: one row per privileged or security-relevant action (sign-up,
//! sign-in success and failure, sign-out, password change, session revocation,
//! service key creation and use on behalf of a user).

use uuid::Uuid;

/// Writes one audit row (through the pool, or inside the caller's transaction);
/// the current request id is attached automatically.
pub async fn record(
    db: impl sqlx::PgExecutor<'_>,
    actor: &str,
    on_behalf_of: Option<Uuid>,
    action: &str,
    target: Option<&str>,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    let request_id = crate::error::current_request_id();
    crate::db::shared::insert_audit(db, actor, on_behalf_of, action, target, &request_id, detail).await
}
