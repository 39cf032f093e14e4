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

use super::{Connections, db};

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
    db::insert_event(conn, id, event_type, payload).await?;
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

/// Delivers what is due; returns how many were delivered.
pub async fn deliver_due(c: &Connections) -> Result<usize, sqlx::Error> {
    let Some(target) = &c.webhook else { return Ok(0) };
    let (url, secret) = (&target.url, &target.secret);
    let mut tx = c.pool.begin().await?;
    let due = db::claim_due_events(&mut tx).await?;
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
                db::mark_delivered(&mut tx, d.id).await?;
                delivered += 1;
            }
            Some(e) => {
                let attempts = d.attempts + 1;
                let backoff = (1i64 << attempts.clamp(0, 12)).min(3600);
                db::mark_attempt_failed(&mut tx, d.id, attempts, &e, backoff, MAX_ATTEMPTS).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(delivered)
}

/// The delivery job: delivers what is due until nothing is, then queues itself for
/// the earliest pending retry.
pub async fn deliver_all_due(c: &Connections) -> Result<(), crate::jobs::JobError> {
    if c.webhook.is_none() {
        return Ok(());
    }
    // Bounded: a receiver that accepts slowly must not hold the job forever.
    for _ in 0..50 {
        if deliver_due(c).await? == 0 {
            break;
        }
    }
    if let Some(at) = db::next_event_due(&c.pool).await? {
        let mut conn = c.pool.acquire().await?;
        queue_delivery(&mut conn, Some(at)).await?;
    }
    Ok(())
}
