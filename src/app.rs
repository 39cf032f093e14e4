//! The application: shared state, the router with its middleware stack (request
//! ids, logging, metrics, error envelope normalisation, panics, limits, timeouts,
//! compression), the OpenAPI document, and `serve` with bounded graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::AuthState;
use crate::config::Config;
use crate::crypto::Keyring;
use crate::error::{self, ApiError, REQUEST_ID};
use crate::mail::Mailer;

/// State shared by every handler: one reference-counted pointer, so the clone
/// every extractor and middleware makes is a single atomic increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points at.
pub struct Shared {
    /// The resolved configuration.
    pub config: Arc<Config>,
    /// The database pool.
    pub pool: PgPool,
    /// Keys for secrets at rest.
    pub keyring: Arc<Keyring>,
    /// The Prometheus handle `/metrics` renders.
    pub metrics: PrometheusHandle,
    /// Auth state (signing keys).
    pub auth: Arc<AuthState>,
    /// Outgoing mail.
    pub mailer: Mailer,
    /// Object storage.
    pub storage: Arc<crate::storage::Storage>,
    /// Connections: catalog, vault, refresh locks, proxy cache, webhooks.
    pub connections: Arc<crate::connections::Connections>,
}

impl AppState {
    /// Builds the state from its parts, loading (or creating) the signing keys.
    pub async fn build(config: Config, pool: PgPool, keyring: Keyring) -> Result<AppState, String> {
        crate::http_client::allow_link_local(config.allow_link_local_urls);
        let auth = AuthState::load(&pool, &keyring, &config).await?;
        let mailer = Mailer::from_config(&config)?;
        let storage = Arc::new(crate::storage::Storage::open(&config, &keyring, pool.clone())?);
        let keyring = Arc::new(keyring);
        let connections = Arc::new(crate::connections::Connections::open(&config, pool.clone(), keyring.clone())?);
        // Off the start-up path: the dummy hash is ready long before the first sign-in.
        tokio::spawn(crate::auth::password::warm_up());
        Ok(AppState(Arc::new(Shared {
            config: Arc::new(config),
            pool,
            keyring,
            metrics: crate::telemetry::metrics_handle(),
            auth,
            mailer,
            storage,
            connections,
        })))
    }

    /// The NOTIFY channels this process listens on, each with its cache.
    pub fn cache_channels(&self) -> crate::cache::Channels {
        crate::cache::Channels::default()
            .register(crate::auth::cache::CHANNEL, self.auth.cache.clone())
            .register(crate::storage::cache::CHANNEL, self.storage.cache.clone())
            .register(crate::connections::cache::CHANNEL, self.connections.cache.clone())
    }

    /// Starts the listener that applies every replica's cache invalidations; each
    /// cache is used only while it is connected. Ends when the pool closes.
    pub fn spawn_cache_listener(&self) -> tokio::task::JoinHandle<()> {
        self.cache_channels().spawn_listener(self.pool.clone())
    }

    /// Starts this process's signing-key refresh (every minute, to pick up another
    /// replica's rotation). Not a job: every replica refreshes its own memory.
    pub fn spawn_upkeep(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick completes at once; the keys were just loaded.
            tick.tick().await;
            loop {
                tick.tick().await;
                if state.pool.is_closed() {
                    return;
                }
                if let Err(e) = state.auth.keys.refresh(&state.pool, &state.keyring).await {
                    tracing::warn!(error = %e, "refreshing signing keys");
                }
            }
        })
    }
}

/// The OpenAPI document's static part; routes add themselves.
#[derive(OpenApi)]
#[openapi(
    info(title = "Carmenta API", description = "Self-hosted backend for AI-assistant products."),
    tags((name = "ops", description = "Health, readiness, metrics"), (name = "auth", description = "Accounts, sessions, tokens"), (name = "chat", description = "Conversations and messages"), (name = "connections", description = "Provider catalog and integrations"))
)]
pub struct ApiDoc;

/// All API routes with their OpenAPI descriptions.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::ops::routes())
        .merge(crate::auth::routes())
        .merge(crate::chat::routes())
        .merge(crate::connections::routes())
}

/// Builds the complete router for `state`.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// Builds the router with `extra` routes behind the same middleware stack (the
/// test harness adds diagnostic routes this way).
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let (api, openapi) = api_routes().split_for_parts();
    let body_limit = usize::try_from(state.config.body_limit).unwrap_or(usize::MAX);
    let timeout = state.config.request_timeout;
    // Storage streams bodies of any size for as long as they take: it enforces its
    // own size limits and is kept out of compression (ranges, Content-Length).
    let storage = crate::storage::router().layer(DefaultBodyLimit::disable());
    let rest = Router::new()
        .merge(api)
        .merge(extra)
        .merge(crate::hosted::routes())
        .merge(crate::connections::routes::browser_routes())
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .fallback(fallback)
        .layer(
            ServiceBuilder::new()
                .layer(CompressionLayer::new())
                .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
                .layer(RequestBodyLimitLayer::new(body_limit))
                .layer(DefaultBodyLimit::max(body_limit)),
        );
    // The API proxy streams both ways too.
    let proxy = crate::connections::proxy::router().layer(DefaultBodyLimit::disable());
    Router::new()
        .nest("/storage/v1", storage)
        .merge(proxy)
        .merge(rest)
        .with_state(state)
        .layer(ServiceBuilder::new().layer(ObserveLayer).layer(CatchPanicLayer::custom(panic_response)))
}

async fn fallback() -> ApiError {
    ApiError::not_found("no route for this path")
}

fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> Response {
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
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(error::envelope_json(code, &message))).into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish for at most `drain`, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signalled = async move {
        shutdown.await;
        let _ = tx.send(());
    };
    // No Nagle: a streamed body goes out in several writes, and waiting for the
    // ACK of the headers (delayed by the peer) costs ~40 ms per response.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    let server = std::future::IntoFuture::into_future(
        axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
            .with_graceful_shutdown(signalled),
    );
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => return res,
        _ = rx => {}
    }
    tracing::info!(drain_secs = drain.as_secs_f64(), "shutting down: draining in-flight requests");
    match tokio::time::timeout(drain, &mut server).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!("drain timeout reached; closing remaining connections");
            Ok(())
        }
    }
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

impl axum::extract::FromRef<AppState> for Arc<crate::storage::Storage> {
    fn from_ref(state: &AppState) -> Self {
        state.storage.clone()
    }
}
