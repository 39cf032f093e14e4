//! Webhooks to the app, per Standard Webhooks: each event is written to an outbox
//! (in the same transaction as what it reports, where there is one) and POSTed to
//! `CARMENTA_WEBHOOK_URL` with `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the
//! `whsec_` secret. Delivery is a job ([`Deliver`], queued with each event, once
//! per pending batch): failed deliveries are retried with exponential backoff (2ⁿ
//! s, up to an hour, 12 attempts), the job queueing itself again for the earliest
//! retry; whichever replica claims an outbox row delivers it (`SKIP LOCKED`).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

use crate::app::AppState;

const MAX_ATTEMPTS: i32 = 12;

/// The job that delivers the outbox's due events.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Deliver {}

impl crate::jobs::Job for Deliver {
    const KIND: &'static str = "webhooks.deliver";
    const MAX_ATTEMPTS: i32 = 5;
}

/// The unique key of the delivery job queued with events.
const DELIVER_KEY: &str = "outbox";

/// Queues the delivery job at `run_at` (now when `None`), unless one is queued for
/// earlier already.
async fn queue_delivery(
    conn: &mut sqlx::PgConnection,
    run_at: Option<time::OffsetDateTime>,
) -> Result<(), sqlx::Error> {
    let options = crate::jobs::Options { run_at, unique_key: Some(DELIVER_KEY.into()) };
    crate::jobs::enqueue(conn, &Deliver {}, options).await.map(|_| ())
}

/// Records an event for delivery (within `conn`, e.g. a transaction, so the event
/// and its delivery job exist exactly when the change they report commits).
pub async fn emit(conn: &mut sqlx::PgConnection, event_type: &str, data: Value) -> Result<(), sqlx::Error> {
    let id = Uuid::now_v7();
    let payload = serde_json::json!({
        "type": event_type,
        "timestamp": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "data": data,
    });
    sqlx::query("INSERT INTO webhook_outbox (id, event_type, payload) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(event_type)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    queue_delivery(conn, None).await
}

/// The Standard Webhooks signature of `body` for message `id` at `timestamp`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = B64.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

#[derive(Debug, sqlx::FromRow)]
struct Due {
    id: Uuid,
    payload: Value,
    attempts: i32,
}

/// Delivers what is due; returns how many were delivered.
pub async fn deliver_due(state: &AppState) -> Result<usize, sqlx::Error> {
    let (Some(url), Some(secret)) = (&state.config.webhook_url, &state.config.webhook_secret) else { return Ok(0) };
    let mut tx = state.pool.begin().await?;
    let due: Vec<Due> = sqlx::query_as(
        "SELECT id, payload, attempts FROM webhook_outbox WHERE delivered_at IS NULL AND failed_at IS NULL \
         AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT 20 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut delivered = 0;
    for d in due {
        let body = serde_json::to_vec(&d.payload).unwrap_or_default();
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let msg_id = format!("msg_{}", d.id.simple());
        let Some(signature) = sign(secret.expose(), &msg_id, ts, &body) else { break };
        let req = match crate::http_client::request(reqwest::Method::POST, url.as_str()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "webhook URL refused; nothing delivered");
                break;
            }
        };
        let res = req
            .timeout(Duration::from_secs(10))
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let error = match res {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Some(e.without_url().to_string()),
        };
        match error {
            None => {
                sqlx::query("UPDATE webhook_outbox SET delivered_at = now(), attempts = attempts + 1 WHERE id = $1")
                    .bind(d.id)
                    .execute(&mut *tx)
                    .await?;
                delivered += 1;
            }
            Some(e) => {
                let attempts = d.attempts + 1;
                let backoff = (1i64 << attempts.clamp(0, 12)).min(3600);
                sqlx::query(
                    "UPDATE webhook_outbox SET attempts = $2, last_error = $3, \
                     next_attempt_at = now() + make_interval(secs => $4), \
                     failed_at = CASE WHEN $2 >= $5 THEN now() END WHERE id = $1",
                )
                .bind(d.id)
                .bind(attempts)
                .bind(&e)
                .bind(backoff as f64)
                .bind(MAX_ATTEMPTS)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(delivered)
}

/// The delivery job: delivers what is due until nothing is, then queues itself for
/// the earliest pending retry.
pub async fn deliver_all_due(state: &AppState) -> Result<(), crate::jobs::JobError> {
    if state.config.webhook_url.is_none() || state.config.webhook_secret.is_none() {
        return Ok(());
    }
    // Bounded: a receiver that accepts slowly must not hold the job forever.
    for _ in 0..50 {
        if deliver_due(state).await? == 0 {
            break;
        }
    }
    let next: Option<time::OffsetDateTime> = sqlx::query_scalar(
        "SELECT min(next_attempt_at) FROM webhook_outbox WHERE delivered_at IS NULL AND failed_at IS NULL",
    )
    .fetch_one(&state.pool)
    .await?;
    if let Some(at) = next {
        let mut conn = state.pool.acquire().await?;
        queue_delivery(&mut conn, Some(at)).await?;
    }
    Ok(())
}
