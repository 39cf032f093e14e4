//! The request stack's own layer: request ids, one log line per request, metrics,
//! the error envelope for framework rejections, and the answer to a panic.

use std::future::Future;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{self, REQUEST_ID};

/// The answer to a handler that panicked: a 500 envelope, logged.
pub fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    error::envelope_response(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal server error")
}

/// Takes a client's `x-request-id` if it is sane, else makes one (128 random
/// bits from the thread-local generator, as 32 hex characters).
fn request_id_of(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

/// The outermost middleware: request id (task-local and response header), one log
/// line per request (method, route, path without query, status, latency; never
/// headers or bodies), Prometheus metrics, and the error envelope for responses that
/// left the stack without one (404/405/408/413/415 from the framework).
///
/// A hand-written tower service rather than `middleware::from_fn`: it is on every
/// request, and this avoids boxing and cloning the inner stack per call.
#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// The service made by [`ObserveLayer`].
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B> tower::Service<Request> for Observe<S>
where
    S: tower::Service<Request, Response = axum::http::Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let id = request_id_of(&req);
        // NUL in the path or query reaches PostgreSQL as text it refuses: refused
        // here for every route at once.
        if has_nul(req.uri()) {
            let mut res = error::envelope_response(
                StatusCode::BAD_REQUEST,
                "invalid_text",
                "the URL must not contain NUL (%00) characters",
            );
            if let Ok(v) = HeaderValue::from_str(&id) {
                res.headers_mut().insert("x-request-id", v);
            }
            return Box::pin(async move { Ok(res) });
        }
        let started = Instant::now();
        let method = req.method().clone();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let uri = req.uri().clone();
        // The clone that was driven to readiness handles this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        Box::pin(async move {
            let res = match REQUEST_ID.scope(id.clone(), fut).await {
                Ok(r) => r.map(Body::new),
                Err(never) => match never {},
            };
            let mut res = REQUEST_ID.sync_scope(id.clone(), || normalise_error(res));
            let status = res.status().as_u16();
            let elapsed = started.elapsed();
            if let Ok(v) = HeaderValue::from_str(&id) {
                res.headers_mut().insert("x-request-id", v);
            }
            let route = route.as_ref().map_or("unmatched", |m| m.as_str());
            crate::telemetry::record_http(&method, route, status, elapsed.as_secs_f64());
            let latency_ms = elapsed.as_secs_f64() * 1000.0;
            let path = uri.path();
            if status >= 500 {
                tracing::error!(request_id = %id, %method, route, path, status, latency_ms, "request");
            } else if matches!(route, "/healthz" | "/readyz" | "/metrics") {
                tracing::debug!(request_id = %id, %method, route, path, status, latency_ms, "request");
            } else {
                tracing::info!(request_id = %id, %method, route, path, status, latency_ms, "request");
            }
            Ok(res)
        })
    }
}

/// Forbids framing (clickjacking) and type sniffing: for pages served without a
/// policy of their own (the API explorer under `/docs`).
pub async fn no_framing(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static("frame-ancestors 'none'"));
    res
}

/// Whether a URI holds an encoded NUL (`%00`). Storage is left to check its own
/// keys, so that its clients get Supabase's `InvalidKey`.
fn has_nul(uri: &axum::http::Uri) -> bool {
    let nul = |s: &str| s.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0');
    !uri.path().starts_with("/storage/v1/") && (nul(uri.path()) || uri.query().is_some_and(nul))
}

/// Gives error responses without a JSON body the standard envelope.
fn normalise_error(res: Response) -> Response {
    let status = res.status();
    if status.as_u16() < 400 {
        return res;
    }
    // Framework rejections and tower layers answer with an empty or text/plain
    // body; anything else (our JSON envelopes, HTML pages) is already shaped.
    let framework_body = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("text/plain"));
    if !framework_body {
        return res;
    }
    let code = error::code_for_status(status);
    let message = match status.as_u16() {
        404 => "no route for this path".to_string(),
        405 => "method not allowed for this path".to_string(),
        408 => "request took too long".to_string(),
        413 => "request body is too large".to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let (mut parts, _) = res.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    // The body is replaced after the compression layer: it is not encoded.
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(error::envelope_json(code, &message))).into_response()
}
