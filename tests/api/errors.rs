//! The error envelope for every kind of bad request, and request ids.

use std::time::Duration;

use crate::harness::{TestApp, envelope, test_routes};
use reqwest::Method;

async fn app() -> TestApp {
    TestApp::builder()
        .routes(test_routes())
        .config(|c| {
            c.body_limit = 1024;
            c.request_timeout = Duration::from_millis(500);
        })
        .spawn()
        .await
}

#[tokio::test]
async fn not_found_and_method_not_allowed() {
    let app = app().await;
    let (status, code, _, rid) = envelope(app.get("/v1/nothing-here").await).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    assert!(!rid.is_empty());
    let r = app.call(Method::DELETE, "/healthz").send().await;
    assert_eq!(r.headers()["content-type"], "application/json");
    let (status, code, _, _) = envelope(r).await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));
}

#[tokio::test]
async fn json_body_errors() {
    let app = app().await;
    let echo = app.url("/test/echo");
    // Valid.
    let r = app.client.post(&echo).json(&serde_json::json!({"name": "a", "count": 1})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Malformed JSON.
    let r = app.client.post(&echo).header("content-type", "application/json").body("{\"name\": ").send().await.unwrap();
    let (s, code, msg, _) = envelope(r).await;
    assert_eq!((s, code.as_str()), (400, "invalid_json"), "{msg}");
    // Wrong shape.
    let r = app.client.post(&echo).json(&serde_json::json!({"name": "a", "count": -1})).send().await.unwrap();
    let (s, code, _, _) = envelope(r).await;
    assert_eq!((s, code.as_str()), (422, "invalid_body"));
    // Missing content type.
    let r = app.client.post(&echo).body("{\"name\":\"a\",\"count\":1}").send().await.unwrap();
    let (s, code, _, _) = envelope(r).await;
    assert_eq!((s, code.as_str()), (415, "unsupported_media_type"));
    // Too large (limit set to 1 KiB for this app).
    let big = format!("{{\"name\":\"{}\",\"count\":1}}", "x".repeat(4096));
    let r = app.client.post(&echo).header("content-type", "application/json").body(big).send().await.unwrap();
    let (s, code, _, _) = envelope(r).await;
    assert_eq!((s, code.as_str()), (413, "payload_too_large"));
}

#[tokio::test]
async fn panics_are_caught_and_answered_500() {
    let app = app().await;
    let r = app.call(Method::GET, "/test/panic").header("x-request-id", "panic-req-1").send().await;
    assert_eq!(r.headers()["x-request-id"], "panic-req-1");
    let (s, code, msg, rid) = envelope(r).await;
    assert_eq!((s, code.as_str()), (500, "internal"));
    assert!(!msg.contains("deliberate"), "panic message must not leak: {msg}");
    assert_eq!(rid, "panic-req-1");
    // The server is still serving.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn slow_requests_time_out() {
    let app = app().await;
    let (s, code, _, _) = envelope(app.get("/test/slow?ms=3000").await).await;
    assert_eq!((s, code.as_str()), (408, "request_timeout"));
    // Bad query parameters are a 4xx with the envelope too.
    let (s, code, _, _) = envelope(app.get("/test/slow?ms=abc").await).await;
    assert_eq!((s, code.as_str()), (400, "bad_request"));
}

#[tokio::test]
async fn request_ids_are_taken_or_generated() {
    let app = app().await;
    let r = app.call(Method::GET, "/healthz").header("x-request-id", "abc-123").send().await;
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = app.get("/healthz").await;
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 32);
    // An unreasonable id is replaced.
    let r = app.call(Method::GET, "/healthz").header("x-request-id", "x".repeat(500)).send().await;
    assert_eq!(r.headers()["x-request-id"].len(), 32);
    // The id in the envelope is the one in the header.
    let r = app.get("/missing").await;
    let hdr = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let (_, _, _, rid) = envelope(r).await;
    assert_eq!(hdr, rid);
}

#[tokio::test]
async fn responses_are_compressed_when_asked() {
    let app = TestApp::spawn().await;
    let r = app.call(Method::GET, "/openapi.json").header("accept-encoding", "gzip").send().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
}
