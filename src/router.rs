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

/// The OpenAPI document's static part; routes add themselves, and [`Contract`]
/// completes it once they have.
#[derive(OpenApi)]
#[openapi(
    info(title = "Carmenta API", description = "Self-hosted backend for AI-assistant products.\n\n\
        External (not described here): Supabase Storage's HTTP API under `/storage/v1` (buckets, objects, \
        signed URLs, TUS uploads, image rendering), answered in Supabase's own error shape; see \
        https://supabase.com/docs/reference/javascript/storage-createbucket and README.md."),
    tags((name = "ops", description = "Health, readiness, metrics"), (name = "auth", description = "Accounts, sessions, tokens"), (name = "chat", description = "Conversations and messages"), (name = "knowledge", description = "Documents in folders, versions, links, ingestion of files, hybrid search"), (name = "memory", description = "Memories with provenance and history, extraction from conversations, context assembly"), (name = "organizations", description = "Organizations, members, roles, invitations, the active organization"), (name = "connections", description = "Provider catalog, integrations, the connect flow and the API proxy"), (name = "storage", description = "External: Supabase Storage's API under /storage/v1 (see the description above)"))
)]
pub struct ApiDoc;

/// Operations of the JSON API anyone may call (no credentials). The browser
/// routes (`/auth/…` hosted pages, `/oauth/…` connect flow) are all public too.
const PUBLIC: [&str; 22] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/auth/sign-up",
    "/v1/auth/sign-in",
    "/v1/auth/magic-link",
    "/v1/auth/magic-link/verify",
    "/v1/auth/password/forgot",
    "/v1/auth/password/reset",
    "/v1/auth/verify-email",
    "/v1/auth/mfa/verify",
    "/v1/auth/mfa/passkey",
    "/v1/auth/passkey",
    "/v1/auth/passkey/finish",
    "/v1/auth/social/providers",
    "/v1/auth/social/{provider}/start",
    "/v1/auth/social/exchange",
    "/v1/invitations/preview",
    "/v1/invitations/sign-up",
    "/.well-known/jwks.json",
    "/.well-known/openid-configuration",
    "/v1/webhooks/clerk",
];

/// Whether the operations of `path` need no credentials.
fn public(path: &str) -> bool {
    PUBLIC.contains(&path) || path.starts_with("/auth/") || path.starts_with("/oauth/")
}

/// Operations open to anyone that answer more to a signed-in caller (a public
/// conversation is readable by anyone with its id).
const OPTIONAL_AUTH: [&str; 2] = ["/v1/conversations/{id}", "/v1/conversations/{id}/messages"];

/// Completes the document as a contract: the security schemes (access token or
/// session token as a bearer, service key, session cookie), the error envelope, and
/// on every operation the error statuses it can answer that its own annotation
/// leaves out (bad input 400, credentials 401/403, a missing resource 404, body
/// errors 413/415/422, the database busy 503).
pub struct Contract;

/// The routes outside the JSON API, described by hand: the API proxy (its answers
/// are the provider's), the connect flow's browser routes and the hosted auth pages
/// (HTML, redirects, forms).
fn browser_and_proxy_paths() -> serde_json::Value {
    // Pages answer HTML; a refusal before the page is built is the JSON envelope.
    let html = |what: &str| {
        serde_json::json!({"description": what, "content": {
            "text/html": {"schema": {"type": "string"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}})
    };
    let redirect =
        |what: &str| serde_json::json!({"description": what, "headers": {"Location": {"schema": {"type": "string"}}}});
    let page = |summary: &str, tag: &str| {
        serde_json::json!({"get": {"tags": [tag], "summary": summary, "parameters": [
            {"name": "redirect_url", "in": "query", "required": false, "schema": {"type": "string"}},
            {"name": "token", "in": "query", "required": false, "schema": {"type": "string"}}],
            "responses": {"200": html("the page"), "400": html("a page saying what is wrong"),
                          "422": html("redirect_url is not on this site or an allowed origin")}}})
    };
    let form = |summary: &str, fields: &[&str]| {
        let props: serde_json::Map<String, serde_json::Value> =
            fields.iter().map(|f| (f.to_string(), serde_json::json!({"type": "string"}))).collect();
        serde_json::json!({"tags": ["auth"], "summary": summary,
            "requestBody": {"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": props}}}},
            "responses": {"303": redirect("done: on to redirect_url"), "200": html("the page again, with a message"),
                          "401": html("the page, with the credentials refused"),
                          "400": html("the page, with what is wrong"), "403": html("cross-site form refused"),
                          "413": html("form too large"), "422": html("the page, with what is wrong"),
                          "429": html("too many attempts")}})
    };
    let mut paths = serde_json::json!({
        "/v1/proxy/{path}": {},
        "/oauth/connect": {"get": {"tags": ["connections"], "summary": "The hosted connect page of a connect session",
            "parameters": [{"name": "session", "in": "query", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": html("the integrations the session allows, with the user's accounts"),
                          "400": html("unknown or expired session")}}},
        "/oauth/connect/{integration}": {"get": {"tags": ["connections"], "summary": "Start connecting an account",
            "parameters": [{"name": "integration", "in": "path", "required": true, "schema": {"type": "string"}},
                           {"name": "session", "in": "query", "required": true, "schema": {"type": "string"}}],
            "responses": {"302": redirect("to the provider's authorization page, or back to the return URL with an error"),
                          "400": html("unknown or expired session, or the flow cannot start")}}},
        "/oauth/callback": {"get": {"tags": ["connections"], "summary": "The provider's redirect back",
            "parameters": [{"name": "code", "in": "query", "required": false, "schema": {"type": "string"}},
                           {"name": "state", "in": "query", "required": false, "schema": {"type": "string"}},
                           {"name": "error", "in": "query", "required": false, "schema": {"type": "string"}}],
            "responses": {"302": redirect("to the session's return URL with result=success or result=error"),
                          "200": html("connected"), "400": html("the flow failed (invalid_state, …)")}}},
    });
    let proxy_op = |method: &str| {
        serde_json::json!({"tags": ["connections"], "summary": format!("{method} through the API proxy"),
            "description": "Calls the provider's API under its base URL with the connection's credentials; the answer is the provider's, passed through.",
            "parameters": [{"name": "path", "in": "path", "required": true, "schema": {"type": "string"}},
                           {"name": "Connection-Id", "in": "header", "required": true, "schema": {"type": "string", "format": "uuid"}},
                           {"name": "Provider-Config-Key", "in": "header", "required": true, "schema": {"type": "string"}},
                           {"name": "Retries", "in": "header", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": 5}}],
            "responses": {"default": {"description": "the provider's answer, or an error envelope from the proxy"}}})
    };
    for m in ["get", "post", "put", "patch", "delete"] {
        paths["/v1/proxy/{path}"][m] = proxy_op(&m.to_uppercase());
    }
    for (path, summary) in [
        ("/auth/sign-in", "Sign-in page"),
        ("/auth/sign-up", "Sign-up page"),
        ("/auth/magic-link", "Magic-link request page"),
        ("/auth/forgot-password", "Forgotten-password page"),
        ("/auth/reset-password", "Password-reset page"),
        ("/auth/verify-email", "Email verification page"),
        ("/auth/magic-link/sent", "Magic link sent"),
        ("/auth/signed-in", "Signed in"),
    ] {
        paths[path] = page(summary, "auth");
    }
    for (path, summary, fields) in [
        ("/auth/sign-in", "Sign in", &["email", "password", "redirect_url"][..]),
        ("/auth/sign-up", "Sign up", &["email", "password", "redirect_url"][..]),
        ("/auth/magic-link", "Mail a magic link", &["email", "redirect_url"][..]),
        ("/auth/magic-link/confirm", "Sign in with a magic link", &["token", "redirect_url"][..]),
        ("/auth/forgot-password", "Mail a reset link", &["email", "redirect_url"][..]),
        ("/auth/reset-password", "Set a new password", &["token", "new_password", "redirect_url"][..]),
    ] {
        paths[path]["post"] = form(summary, fields);
    }
    paths
}

impl utoipa::Modify for Contract {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        // The routes outside the JSON API.
        if let serde_json::Value::Object(extra) = browser_and_proxy_paths() {
            for (path, item) in extra {
                match serde_json::from_value::<utoipa::openapi::PathItem>(item) {
                    Ok(item) => {
                        doc.paths.paths.insert(path, item);
                    }
                    Err(e) => tracing::error!(%path, error = %e, "describing a route"),
                }
            }
        }
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        use utoipa::openapi::{ContentBuilder, ObjectBuilder, RefOr, ResponseBuilder, Type};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token (EdDSA JWT) or a session token (`cs_…`)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "serviceKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A service key (`ck_…`); `X-Carmenta-User-Id` makes it act for a user"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "sessionCookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("carmenta_session"))),
        );
        let text = || ObjectBuilder::new().schema_type(Type::String);
        let error = ObjectBuilder::new()
            .property(
                "error",
                ObjectBuilder::new()
                    .property("code", text().description(Some("stable, machine-readable")))
                    .property("message", text())
                    .property("request_id", text())
                    .required("code")
                    .required("message"),
            )
            .required("error")
            .build();
        components.schemas.insert("ErrorEnvelope".into(), RefOr::T(error.into()));
        let answer = |what: &str| -> RefOr<utoipa::openapi::Response> {
            RefOr::T(
                ResponseBuilder::new()
                    .description(what)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorEnvelope")))
                            .build(),
                    )
                    .build(),
            )
        };
        let signed_in = vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("serviceKey", Vec::<String>::new()),
            SecurityRequirement::new("sessionCookie", Vec::<String>::new()),
        ];
        for (path, item) in doc.paths.paths.iter_mut() {
            let open = public(path);
            let has_path_params = path.contains('{');
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut op.responses.responses;
                let mut add = |code: &str, what: &str| {
                    responses.entry(code.to_string()).or_insert_with(|| answer(what));
                };
                add("400", "bad input (invalid_json, invalid_text, invalid_limit, invalid_cursor, …)");
                add("503", "the database is busy or unreachable; retry");
                if !open {
                    add("401", "no credentials, or they are invalid or expired");
                    add("403", "not allowed (read-only service key, CSRF, insufficient scope)");
                }
                if has_path_params {
                    add("404", "no such resource, or not yours");
                }
                if op.request_body.is_some() {
                    add("413", "request body is too large");
                    add("415", "expected `Content-Type: application/json`");
                    add("422", "the body's shape or values are refused (invalid_body and others)");
                }
                if path.starts_with("/v1/auth/") {
                    add("429", "too many attempts");
                }
                if !open && op.security.is_none() {
                    let mut security = signed_in.clone();
                    if OPTIONAL_AUTH.contains(&path.as_str()) && op.request_body.is_none() {
                        security.insert(0, SecurityRequirement::default());
                    }
                    op.security = Some(security);
                }
            }
        }
    }
}

/// Most bytes of one admin console request (an upload or a CSV import).
const ADMIN_BODY_LIMIT: usize = 65 * 1024 * 1024;

/// All API routes with their OpenAPI descriptions.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::ops::routes())
        .merge(crate::auth::routes().layer(DefaultBodyLimit::max(SMALL_JSON_LIMIT)))
        .merge(crate::chat::routes())
        .merge(crate::knowledge::routes())
        .merge(crate::memory::routes())
        .merge(crate::orgs::routes().layer(DefaultBodyLimit::max(SMALL_JSON_LIMIT)))
        .merge(crate::connections::routes().layer(DefaultBodyLimit::max(SMALL_JSON_LIMIT)))
}

/// Builds the complete router for `state`.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// Builds the router with `extra` routes behind the same middleware stack (the
/// test harness adds diagnostic routes this way).
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let (api, mut openapi) = api_routes().split_for_parts();
    // After the routes: the contract completes every operation they added.
    utoipa::Modify::modify(&Contract, &mut openapi);
    let body_limit = usize::try_from(state.config.body_limit).unwrap_or(usize::MAX);
    let timeout = state.config.request_timeout;
    let state_rate = state.config.min_body_rate;
    // Storage streams bodies of any size for as long as they take: it enforces its
    // own size limits and is kept out of compression (ranges, Content-Length).
    let storage = crate::storage::router().layer(DefaultBodyLimit::disable());
    let rest = Router::new()
        .merge(api)
        .merge(extra)
        .merge(crate::hosted::routes().layer(DefaultBodyLimit::max(SMALL_JSON_LIMIT)))
        // The console's uploads and imports carry their own limits.
        .merge(crate::admin::routes().layer(DefaultBodyLimit::max(ADMIN_BODY_LIMIT)))
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
    Router::new().nest("/storage/v1", storage).merge(proxy).merge(rest).with_state(state).layer(
        ServiceBuilder::new()
            .layer(ObserveLayer { min_body_rate: state_rate })
            .layer(CatchPanicLayer::custom(panic_response)),
    )
}

async fn fallback() -> ApiError {
    ApiError::not_found("no route for this path")
}

/// How connections are served: the limits that keep slow or idle clients from
/// holding the server, and the drain time at shutdown.
#[derive(Debug, Clone)]
pub struct Serving {
    /// Connections open at once; at the cap the server stops accepting (new ones
    /// wait in the kernel's backlog) until one closes.
    pub max_connections: usize,
    /// A request's head must arrive within this, and an idle keep-alive connection
    /// is closed after it.
    pub header_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain: Duration,
    /// Peers whose `X-Forwarded-For` names the client (`CARMENTA_TRUSTED_PROXIES`).
    pub trusted_proxies: std::sync::Arc<[crate::config::IpNet]>,
}

impl Serving {
    /// The limits `config` asks for.
    pub fn from_config(config: &crate::config::Config) -> Serving {
        Serving {
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
            drain: config.shutdown_timeout,
            trusted_proxies: config.trusted_proxies.clone().into(),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting,
/// lets in-flight requests finish for at most `serving.drain`, and returns.
///
/// Our own accept loop over hyper (not `axum::serve`): it caps open connections,
/// times out slow and idle request heads, and drains connections gracefully.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    serving: Serving,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;

    let max = serving.max_connections.clamp(1, u32::MAX as usize);
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(max));
    // 0 serving, 1 finish in-flight requests and close, 2 close now.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(0u8);
    tokio::pin!(shutdown);
    loop {
        // `biased`: the shutdown future is polled first, every time (a busy accept
        // must not starve it).
        let permit = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // No Nagle: a streamed body goes out in several writes, and waiting for the
        // ACK of the headers (delayed by the peer) costs ~40 ms per response.
        let _ = tcp.set_nodelay(true);
        let app = router.clone();
        let trusted = serving.trusted_proxies.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // The client's address: the peer, or the address a trusted proxy names.
            let client = crate::config::client_addr(peer, req.headers(), &trusted);
            req.extensions_mut().insert(axum::extract::ConnectInfo(client));
            tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
        });
        let mut stop = stop_rx.clone();
        let header_timeout = serving.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s >= 1) => conn.as_mut().graceful_shutdown(),
            }
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.wait_for(|s| *s >= 2) => {}
            }
        });
    }
    tracing::info!(drain_secs = serving.drain.as_secs_f64(), "shutting down: draining in-flight requests");
    let _ = stop_tx.send(1);
    // Every connection holds a permit until it closes.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(serving.drain, permits.acquire_many(all)).await.is_err() {
        tracing::warn!("drain timeout reached; closing remaining connections");
        let _ = stop_tx.send(2);
    }
    Ok(())
}

/// Resolves when the process receives SIGINT or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first
/// polled: a signal that comes before the server's first poll is not lost (it would
/// otherwise kill the process the default way).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (mut term, mut int) = match (term, int) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT");
                std::future::pending::<()>().await;
                return;
            }
        };
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
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

impl axum::extract::FromRef<AppState> for std::sync::Arc<crate::admin::Admin> {
    fn from_ref(s: &AppState) -> Self {
        s.admin.clone()
    }
}

impl axum::extract::FromRef<AppState> for std::sync::Arc<crate::memory::Memory> {
    fn from_ref(state: &AppState) -> Self {
        state.memory.clone()
    }
}

impl axum::extract::FromRef<AppState> for std::sync::Arc<crate::knowledge::Knowledge> {
    fn from_ref(state: &AppState) -> Self {
        state.knowledge.clone()
    }
}

impl axum::extract::FromRef<AppState> for std::sync::Arc<crate::connections::Connections> {
    fn from_ref(state: &AppState) -> Self {
        state.connections.clone()
    }
}
