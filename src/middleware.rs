//! The request stack's own layer: request ids, one log line per request, metrics,
//! the error envelope for framework rejections, and the answer to a panic.

use std::future::Future;
use std::time::{Duration, Instant};

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
///
/// It also wraps every request body in [`MinRate`] (unless `min_body_rate` is 0), so
/// a client that trickles a body cannot hold a connection and a handler forever.
#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer {
    /// Slowest body accepted, bytes per second (0: no check).
    pub min_body_rate: u64,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, min_body_rate: self.min_body_rate }
    }
}

/// The service made by [`ObserveLayer`].
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    min_body_rate: u64,
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
        let rate = self.min_body_rate;
        // (A request without a body, most of them, is not wrapped.)
        let has_body = http_body::Body::size_hint(req.body()).exact() != Some(0);
        let req = if rate > 0 && has_body { req.map(|b| Body::new(MinRate::new(b, rate))) } else { req };
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

/// The window over which a body's rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A request body that fails when its client sends it slower than `rate` bytes
/// per second over a 10 s window. Only time spent waiting for the client counts
/// (a handler that reads slowly, or waits on an upstream, is not the client's
/// fault).
pub struct MinRate {
    inner: Body,
    /// Bytes needed per window.
    need: u64,
    /// Bytes and waiting time in the current window.
    bytes: u64,
    waited: Duration,
    /// Since when the body has been waiting for the client, if it is.
    pending_since: Option<Instant>,
    /// Made the first time the body has to wait.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

/// The error of a body sent too slowly.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {0} bytes per second")]
pub struct TooSlow(u64);

impl MinRate {
    /// Wraps `inner`, requiring `rate` bytes per second.
    pub fn new(inner: Body, rate: u64) -> MinRate {
        MinRate {
            inner,
            need: rate.saturating_mul(RATE_WINDOW.as_secs()),
            bytes: 0,
            waited: Duration::ZERO,
            pending_since: None,
            timer: None,
        }
    }

    /// Ends the window when a whole one has been waited: an error if too few bytes came.
    fn roll(&mut self) -> Result<(), TooSlow> {
        if self.waited >= RATE_WINDOW {
            if self.bytes < self.need {
                return Err(TooSlow(self.need / RATE_WINDOW.as_secs()));
            }
            self.bytes = 0;
            self.waited = Duration::ZERO;
        }
        Ok(())
    }
}

impl http_body::Body for MinRate {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(since) = this.pending_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                // A frame that completes the window's bytes never fails it.
                if this.bytes < this.need
                    && let Err(e) = this.roll()
                {
                    return Poll::Ready(Some(Err(e.into())));
                }
                if this.bytes >= this.need && this.waited >= RATE_WINDOW {
                    this.bytes = 0;
                    this.waited = Duration::ZERO;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let now = Instant::now();
                let since = *this.pending_since.get_or_insert(now);
                if this.waited + (now - since) >= RATE_WINDOW {
                    this.waited += now - since;
                    this.pending_since = Some(now);
                    if let Err(e) = this.roll() {
                        return Poll::Ready(Some(Err(e.into())));
                    }
                }
                let left = RATE_WINDOW.saturating_sub(this.waited + (now - this.pending_since.unwrap_or(now)));
                let deadline = tokio::time::Instant::from_std(now + left);
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                timer.as_mut().reset(deadline);
                if timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
