//! The audit log: one row per privileged or security-relevant action (sign-up,
//! sign-in success and failure, sign-out, password change, session revocation,
//! service key creation and use on behalf of a user).

use sqlx::PgPool;
use uuid::Uuid;

/// Writes one audit row; the current request id is attached automatically.
pub async fn record(
    pool: &PgPool,
    actor: &str,
    on_behalf_of: Option<Uuid>,
    action: &str,
    target: Option<&str>,
    detail: serde_json::Value,
) -> Result<(), sqlx::Error> {
    let request_id = crate::error::current_request_id();
    sqlx::query(
        "INSERT INTO audit_log (actor, on_behalf_of, action, target, request_id, detail)
         VALUES ($1, (SELECT id FROM users WHERE id = $2), $3, $4, NULLIF($5, ''), $6)",
    )
    .bind(actor)
    .bind(on_behalf_of)
    .bind(action)
    .bind(target)
    .bind(request_id)
    .bind(detail)
    .execute(pool)
    .await?;
    Ok(())
}
