//! Every route in one place: the OpenAPI-described API, the hosted pages, the
//! connect flow, storage under `/storage/v1` and the API proxy (both streaming,
//! outside the body limit and compression), with the middleware stack around them;
//! and `serve` with bounded graceful shutdown.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::{ApiError, SMALL_JSON_LIMIT};
use crate::middleware::{ObserveLayer, panic_response};
use crate::state::AppState;

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
        .merge(crate::auth::routes().layer(DefaultBodyLimit::max(SMALL_JSON_LIMIT)))
        .merge(crate::chat::routes())
        .merge(crate::connections::routes().layer(DefaultBodyLimit::max(SMALL_JSON_LIMIT)))
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
        .merge(crate::hosted::routes().layer(DefaultBodyLimit::max(SMALL_JSON_LIMIT)))
        .merge(crate::connections::routes::browser_routes())
        .merge(
            Router::from(SwaggerUi::new("/docs").url("/openapi.json", openapi))
                .layer(axum::middleware::map_response(crate::middleware::no_framing)),
        )
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

// Handlers take their area's state; these give it to them from the app state.

impl axum::extract::FromRef<AppState> for std::sync::Arc<crate::storage::Storage> {
    fn from_ref(state: &AppState) -> Self {
        state.storage.clone()
    }
}

impl axum::extract::FromRef<AppState> for std::sync::Arc<crate::auth::AuthState> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

impl axum::extract::FromRef<AppState> for std::sync::Arc<crate::chat::Chat> {
    fn from_ref(state: &AppState) -> Self {
        state.chat.clone()
    }
}

impl axum::extract::FromRef<AppState> for std::sync::Arc<crate::connections::Connections> {
    fn from_ref(state: &AppState) -> Self {
        state.connections.clone()
    }
}
