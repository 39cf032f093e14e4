//! The HTTP handlers of connections: the provider catalog and integrations (service
//! keys), connect sessions, the connections API, and the browser flow
//! (`/oauth/connect`, `/oauth/connect/{integration}`, `/oauth/callback`) with its
//! hosted page. Handlers parse and authorise, call `service`/`integrations`, and
//! map the result.

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::integrations::{self, CreateIntegration, Integration, PatchIntegration, ProviderView};
use super::service::{self, Callback};
use super::types::{
    ConnQuery, ConnectSessionView, Connection, CreateConnectSession, CreateKeyConnection, PatchConnection, TokenQuery,
    TokenView,
};
use crate::auth::{Caller, CurrentUser};
use crate::error::{ApiError, ApiJson};
use crate::pagination::{Page, PageQuery};
use std::sync::Arc;

use axum::extract::FromRef;

use super::Connections;
use crate::auth::AuthState;

/// The JSON API routes.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Connections>: FromRef<S>,
    Arc<AuthState>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_providers))
        .routes(routes!(create_integration, list_integrations))
        .routes(routes!(get_integration, patch_integration, delete_integration))
        .routes(routes!(create_session))
        .routes(routes!(list_connections, create_key_connection))
        .routes(routes!(get_connection, patch_connection, delete_connection))
        .routes(routes!(connection_token))
}

/// The browser routes (redirects and the hosted page, not JSON).
pub fn browser_routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Connections>: FromRef<S>,
    Arc<AuthState>: FromRef<S>,
{
    Router::new()
        .route("/oauth/connect", get(connect_page))
        .route("/oauth/connect/{integration}", get(connect))
        .route("/oauth/callback", get(callback))
}

fn require_service(caller: &Caller) -> Result<(), ApiError> {
    if caller.0.is_service() {
        Ok(())
    } else {
        Err(ApiError::forbidden("integrations are managed with a service key").with_code("insufficient_scope"))
    }
}

// ---------------------------------------------------------------------------
// Catalog and integrations

/// The provider catalog.
#[utoipa::path(get, path = "/v1/providers", tag = "connections", params(integrations::ProviderQuery),
    responses((status = 200, body = Vec<ProviderView>)))]
async fn list_providers(
    State(c): State<Arc<Connections>>,
    _caller: Caller,
    Query(q): Query<integrations::ProviderQuery>,
) -> ApiJson<Vec<ProviderView>> {
    ApiJson(integrations::providers(&c, &q))
}

/// Create an integration.
#[utoipa::path(post, path = "/v1/integrations", tag = "connections", request_body = CreateIntegration,
    responses((status = 201, body = Integration), (status = 409, description = "integration_exists"), (status = 422)))]
async fn create_integration(
    State(c): State<Arc<Connections>>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateIntegration>,
) -> Result<Response, ApiError> {
    require_service(&caller)?;
    let created = integrations::create(&c, &caller.0.actor(), req).await?;
    Ok((StatusCode::CREATED, ApiJson(created)).into_response())
}

/// List integrations, in key order.
#[utoipa::path(get, path = "/v1/integrations", tag = "connections", params(PageQuery),
    responses((status = 200, body = Page<Integration>), (status = 400, description = "invalid_limit, invalid_cursor")))]
async fn list_integrations(
    State(c): State<Arc<Connections>>,
    caller: Caller,
    Query(page): Query<PageQuery>,
) -> Result<ApiJson<Page<Integration>>, ApiError> {
    require_service(&caller)?;
    integrations::list(&c, &page).await.map(ApiJson)
}

/// One integration.
#[utoipa::path(get, path = "/v1/integrations/{key}", tag = "connections", params(("key" = String, Path)),
    responses((status = 200, body = Integration), (status = 404)))]
async fn get_integration(
    State(c): State<Arc<Connections>>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<ApiJson<Integration>, ApiError> {
    require_service(&caller)?;
    integrations::by_key(&c, &key).await.map(|r| ApiJson(r.into()))
}

/// Change an integration's credentials, scopes or parameters.
#[utoipa::path(patch, path = "/v1/integrations/{key}", tag = "connections", params(("key" = String, Path)),
    request_body = PatchIntegration, responses((status = 200, body = Integration), (status = 404)))]
async fn patch_integration(
    State(c): State<Arc<Connections>>,
    caller: Caller,
    Path(key): Path<String>,
    ApiJson(req): ApiJson<PatchIntegration>,
) -> Result<ApiJson<Integration>, ApiError> {
    require_service(&caller)?;
    integrations::update(&c, &caller.0.actor(), &key, req).await.map(ApiJson)
}

/// Delete an integration.
#[utoipa::path(delete, path = "/v1/integrations/{key}", tag = "connections", params(("key" = String, Path)),
    responses((status = 204), (status = 404)))]
async fn delete_integration(
    State(c): State<Arc<Connections>>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_service(&caller)?;
    integrations::delete(&c, &caller.0.actor(), &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------
// Connect sessions and connections

/// Create a connect session for the signed-in user (or the user a service key acts for).
#[utoipa::path(post, path = "/v1/connect/sessions", tag = "connections", request_body = CreateConnectSession,
    responses((status = 201, body = ConnectSessionView), (status = 403, description = "insufficient_permission (org_id: org:connections:write)"),
        (status = 404, description = "org_id names an organization you are not in"), (status = 422)))]
async fn create_session(
    State(c): State<Arc<Connections>>,
    State(auth): State<Arc<AuthState>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<CreateConnectSession>,
) -> Result<Response, ApiError> {
    let return_url = match &req.return_url {
        Some(u) => Some(crate::auth::service::safe_redirect(&auth.config, u)?),
        None => None,
    };
    let s =
        service::create_session(&c, user.user_id, req.org_id, req.allowed_integrations.as_ref(), return_url).await?;
    let view = ConnectSessionView { token: s.token, expires_at: s.expires_at, links: s.links };
    Ok((StatusCode::CREATED, ApiJson(view)).into_response())
}

/// My connections, oldest first.
#[utoipa::path(get, path = "/v1/connections", tag = "connections", params(ConnQuery, PageQuery),
    responses((status = 200, body = Page<Connection>), (status = 400, description = "invalid_limit, invalid_cursor"),
        (status = 403, description = "insufficient_permission (org_id: org:connections:read)"),
        (status = 404, description = "org_id names an organization you are not in")))]
async fn list_connections(
    State(c): State<Arc<Connections>>,
    user: CurrentUser,
    Query(q): Query<ConnQuery>,
    Query(page): Query<PageQuery>,
) -> Result<ApiJson<Page<Connection>>, ApiError> {
    let integration = q.integration.as_deref().filter(|i| !i.is_empty());
    let rows = service::list(&c, user.user_id, q.org_id, integration, &page).await?;
    Ok(ApiJson(rows))
}

/// One of my connections.
#[utoipa::path(get, path = "/v1/connections/{id}", tag = "connections", params(("id" = Uuid, Path)),
    responses((status = 200, body = Connection), (status = 403, description = "insufficient_permission (shared: org:connections:read)"), (status = 404)))]
async fn get_connection(
    State(c): State<Arc<Connections>>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<ApiJson<Connection>, ApiError> {
    service::owned(&c, user.user_id, &id, service::Need::Read).await.map(ApiJson)
}

/// Set a connection's metadata.
#[utoipa::path(patch, path = "/v1/connections/{id}", tag = "connections", params(("id" = Uuid, Path)),
    request_body = PatchConnection, responses((status = 200, body = Connection),
        (status = 403, description = "insufficient_permission (shared: org:connections:write)"), (status = 404)))]
async fn patch_connection(
    State(c): State<Arc<Connections>>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PatchConnection>,
) -> Result<ApiJson<Connection>, ApiError> {
    service::set_metadata(&c, user.user_id, &id, &req.metadata).await.map(ApiJson)
}

/// Store API-key or basic credentials for a provider that uses them.
#[utoipa::path(post, path = "/v1/connections", tag = "connections", request_body = CreateKeyConnection,
    responses((status = 201, body = Connection), (status = 403, description = "insufficient_permission (org_id: org:connections:write)"),
        (status = 404, description = "org_id names an organization you are not in"), (status = 422)))]
async fn create_key_connection(
    State(c): State<Arc<Connections>>,
    user: CurrentUser,
    ApiJson(req): ApiJson<CreateKeyConnection>,
) -> Result<Response, ApiError> {
    let row = service::create_key_connection(&c, user.user_id, req).await?;
    Ok((StatusCode::CREATED, ApiJson(row)).into_response())
}

/// Delete one of my connections (its token is revoked at the provider when it offers that).
#[utoipa::path(delete, path = "/v1/connections/{id}", tag = "connections", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, description = "insufficient_permission (shared: org:connections:write)"), (status = 404)))]
async fn delete_connection(
    State(c): State<Arc<Connections>>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    service::delete(&c, user.user_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The access token of one of my connections, for apps that call the API
/// themselves: refreshed first when it expires within its margin (or on `force`).
#[utoipa::path(get, path = "/v1/connections/{id}/token", tag = "connections", params(("id" = Uuid, Path), TokenQuery),
    responses((status = 200, body = TokenView), (status = 403, description = "insufficient_permission (shared: org:connections:read)"),
    (status = 404), (status = 409, description = "needs_reauth"),
    (status = 503, description = "refresh_failed (retry after the cooldown)")))]
async fn connection_token(
    State(c): State<Arc<Connections>>,
    user: CurrentUser,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, ApiError> {
    let row = service::owned(&c, user.user_id, &id, service::Need::Read).await?;
    let creds = super::refresh::fresh_token(&c, row.id, q.force).await?;
    let mut res = ApiJson(TokenView { access_token: creds.access_token, expires_at: creds.expires_at }).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

// ---------------------------------------------------------------------------
// Browser flow

#[derive(Debug, Deserialize)]
struct ConnectQuery {
    session: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// One integration on the hosted page, with the user's accounts (account, status).
struct PageIntegration {
    key: String,
    provider: String,
    /// Up to two letters standing in for a logo (no image is fetched from elsewhere).
    initials: String,
    /// A hue for the initials' badge, stable per provider.
    hue: u32,
    categories: String,
    accounts: Vec<(String, String)>,
}

/// The initials of a provider name: the first letters of its first two words.
fn initials(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|w| !w.is_empty())
        .take(2)
        .filter_map(|w| w.chars().next())
        .collect::<String>()
        .to_uppercase()
}

#[derive(Template)]
#[template(path = "connect_page.html")]
struct ConnectPage {
    title: &'static str,
    detail: Option<String>,
    token: String,
    integrations: Vec<PageIntegration>,
}

/// A page answering the browser when there is nowhere to send it back to.
fn result_page(status: StatusCode, title: &'static str, detail: &str) -> Response {
    let page = ConnectPage { title, detail: Some(detail.to_string()), token: String::new(), integrations: Vec::new() };
    crate::hosted::html_page(status, page.render())
}

fn failed(detail: &str) -> Response {
    result_page(StatusCode::BAD_REQUEST, "Connection failed", detail)
}

fn redirect(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(v) => (StatusCode::FOUND, [(header::LOCATION, v)]).into_response(),
        Err(_) => failed("invalid return URL"),
    }
}

/// Ends the flow: back to `return_url` with the result, or a page saying it.
fn finish(return_url: Option<&str>, result: Result<(&str, Uuid), &str>) -> Response {
    match (return_url, result) {
        (Some(url), r) => {
            let mut u = url.to_string();
            u.push(if u.contains('?') { '&' } else { '?' });
            match r {
                Ok((key, id)) => u.push_str(&format!("result=success&integration={key}&connection_id={id}")),
                Err(code) => u.push_str(&format!("result=error&error={code}")),
            }
            redirect(&u)
        }
        (None, Ok((key, _))) => {
            result_page(StatusCode::OK, "Connected", &format!("{key} is connected. You can close this window."))
        }
        (None, Err(code)) => failed(code),
    }
}

/// The hosted connect page: the integrations the session allows, each with the
/// user's existing connections and a link to connect (another) account.
async fn connect_page(State(c): State<Arc<Connections>>, Query(q): Query<ConnectQuery>) -> Response {
    let session = match service::live_session(&c, q.session.as_deref()).await {
        Ok(s) => s,
        Err(why) => return failed(why),
    };
    let lines = match service::page_lines(&c, &session).await {
        Ok(l) => l,
        Err(e) => return e.into_response(),
    };
    let mut integrations: Vec<PageIntegration> = Vec::new();
    for line in lines {
        if integrations.last().is_none_or(|i| i.key != line.unique_key) {
            let categories = c.catalog.get(&line.provider).map(|p| p.categories().join(" · ")).unwrap_or_default();
            let hue = line.provider.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))) % 360;
            integrations.push(PageIntegration {
                key: line.unique_key,
                initials: initials(&line.provider),
                hue,
                categories,
                provider: line.provider,
                accounts: Vec::new(),
            });
        }
        if let (Some(a), Some(st), Some(i)) = (line.external_account_id, line.status, integrations.last_mut()) {
            i.accounts.push((a, st));
        }
    }
    let page = ConnectPage {
        title: "Connect your accounts",
        detail: None,
        token: q.session.unwrap_or_default(),
        integrations,
    };
    crate::hosted::html_page(StatusCode::OK, page.render())
}

/// Starts connecting one integration: to the provider's authorization URL.
async fn connect(
    State(c): State<Arc<Connections>>,
    Path(key): Path<String>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    let token = q.get("session").cloned();
    let session = match service::live_session(&c, token.as_deref()).await {
        Ok(s) => s,
        Err(why) => return failed(why),
    };
    // Every other query parameter is connection configuration (`subdomain=acme`).
    let config: serde_json::Map<String, serde_json::Value> = q
        .iter()
        .filter(|(k, _)| k.as_str() != "session")
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    match service::start(&c, &session, &key, &serde_json::Value::Object(config)).await {
        Ok(url) => redirect(&url),
        Err("connection_config_missing") => config_form(&c, &key, token.as_deref().unwrap_or_default()).await,
        Err(code) => finish(session.return_url.as_deref(), Err(code)),
    }
}

/// The form asking for a provider's connection configuration (its subdomain,
/// region, …) before the flow goes on to the provider.
async fn config_form(c: &Connections, key: &str, token: &str) -> Response {
    let keys = match service::integration_config_keys(c, key).await {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let page = ConfigPage { title: "Connect your account", key: key.to_string(), token: token.to_string(), keys };
    crate::hosted::html_page(StatusCode::OK, page.render())
}

#[derive(Template)]
#[template(path = "connect_config.html")]
struct ConfigPage {
    title: &'static str,
    key: String,
    token: String,
    keys: Vec<String>,
}

/// The provider's redirect back: finish the flow, then to the return URL.
async fn callback(State(c): State<Arc<Connections>>, Query(q): Query<CallbackQuery>) -> Response {
    let cb = Callback { code: q.code, state: q.state, error: q.error };
    let (ret, result) = service::finish(&c, cb).await;
    finish(ret.as_deref(), result.as_ref().map(|(k, id)| (k.as_str(), *id)).map_err(|e| *e))
}
