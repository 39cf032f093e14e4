//! The connect flow and the connections API. The app creates a connect session for
//! its user; the user's browser goes to `/oauth/connect/{integration}?session=…`,
//! which stores a single-use `state` (bound to the owner and integration, 15
//! minutes, with the PKCE verifier sealed) and redirects to the provider. The
//! callback consumes the state, exchanges the code (each provider's client-auth,
//! body-format and response quirks), finds the external account id, seals the
//! credentials with the connection id as associated data, upserts the connection on
//! (owner, integration, account) and redirects to the session's return URL.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::FromRow;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::catalog::Provider;
use super::integrations::{self, Row as IntegrationRow};
use crate::app::AppState;
use crate::auth::CurrentUser;
use crate::auth::tokens::{hash_token, random_token};
use crate::error::{ApiError, ApiJson};
use crate::http_client::{PROVIDER_TIMEOUT, request};

const SESSION_TTL_SECS: i64 = 30 * 60;
const STATE_TTL_SECS: i64 = 15 * 60;

/// The JSON API routes.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_session))
        .routes(routes!(list_connections, create_key_connection))
        .routes(routes!(get_connection, patch_connection, delete_connection))
        .routes(routes!(connection_token))
}

/// The browser routes (redirects, not JSON).
pub fn browser_routes() -> Router<AppState> {
    Router::new()
        .route("/oauth/connect", get(connect_page))
        .route("/oauth/connect/{integration}", get(connect))
        .route("/oauth/callback", get(callback))
}

pub(super) fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

// ---------------------------------------------------------------------------
// Connect sessions

/// `POST /v1/connect/sessions`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Integration keys the user may connect (all when absent).
    pub allowed_integrations: Option<Vec<String>>,
    /// Where the browser goes after the flow (a path here or an allowed origin).
    pub return_url: Option<String>,
}

/// A connect session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// The token to put in connect links (shown once).
    pub token: String,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// A link per allowed integration.
    pub links: std::collections::BTreeMap<String, String>,
}

/// Create a connect session for the signed-in user (or the user a service key acts for).
#[utoipa::path(post, path = "/v1/connect/sessions", tag = "connections", request_body = CreateSession,
    responses((status = 201, body = SessionView), (status = 422)))]
async fn create_session(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(req): ApiJson<CreateSession>,
) -> Result<Response, ApiError> {
    let keys: Vec<String> = match &req.allowed_integrations {
        Some(k) if k.is_empty() || k.len() > 100 => {
            return Err(unprocessable("invalid_integrations", "allowed_integrations must name 1 to 100 integrations"));
        }
        Some(k) => {
            for key in k {
                integrations::fetch(&state, key)
                    .await
                    .map_err(|_| unprocessable("unknown_integration", format!("no integration {key:?}")))?;
            }
            k.clone()
        }
        None => {
            sqlx::query_scalar("SELECT unique_key FROM integrations ORDER BY unique_key").fetch_all(&state.pool).await?
        }
    };
    let return_url = match &req.return_url {
        Some(u) => Some(crate::auth::service::safe_redirect(&state.config, u)?),
        None => None,
    };
    let token = random_token("cs_connect_");
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(SESSION_TTL_SECS);
    sqlx::query(
        "INSERT INTO connect_sessions (id, token_hash, owner_id, allowed_integrations, return_url, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(Uuid::now_v7())
    .bind(hash_token(&token))
    .bind(user.user_id)
    .bind(req.allowed_integrations.as_ref())
    .bind(&return_url)
    .bind(expires_at)
    .execute(&state.pool)
    .await?;
    let base = state.config.public_url.as_str().trim_end_matches('/').to_string();
    let links = keys.iter().map(|k| (k.clone(), format!("{base}/oauth/connect/{k}?session={token}"))).collect();
    Ok((StatusCode::CREATED, ApiJson(SessionView { token, expires_at, links })).into_response())
}

// ---------------------------------------------------------------------------
// Browser flow

#[derive(Debug, Deserialize)]
struct ConnectQuery {
    session: Option<String>,
}

/// A page answering the browser when there is nowhere to send it back to.
fn result_page(status: StatusCode, title: &str, detail: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body><h1>{t}</h1><p>{d}</p></body></html>",
        t = esc(title),
        d = esc(detail)
    );
    (status, Html(body)).into_response()
}

fn redirect(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(v) => (StatusCode::FOUND, [(header::LOCATION, v)]).into_response(),
        Err(_) => result_page(StatusCode::BAD_REQUEST, "Connection failed", "invalid return URL"),
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
        (None, Err(code)) => result_page(StatusCode::BAD_REQUEST, "Connection failed", code),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// The live connect session named by `?session=`, or the page saying why not.
async fn live_session(state: &AppState, token: Option<String>) -> Result<(String, SessionRow), Response> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(result_page(StatusCode::BAD_REQUEST, "Connection failed", "missing connect session"));
    };
    let session: Option<SessionRow> = sqlx::query_as(
        "SELECT owner_id, allowed_integrations, return_url FROM connect_sessions WHERE token_hash = $1 AND expires_at > now()",
    )
    .bind(hash_token(&token))
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| ApiError::from(e).into_response())?;
    match session {
        Some(s) => Ok((token, s)),
        None => Err(result_page(StatusCode::BAD_REQUEST, "Connection failed", "unknown or expired connect session")),
    }
}

/// The hosted connect page: the integrations the session allows, each with the
/// user's existing connections and a link to connect (another) account.
async fn connect_page(State(state): State<AppState>, Query(q): Query<ConnectQuery>) -> Response {
    let (token, session) = match live_session(&state, q.session).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let rows: Vec<(String, String, Option<String>, Option<String>)> = match sqlx::query_as(
        "SELECT i.unique_key, i.provider, c.external_account_id, c.status FROM integrations i \
         LEFT JOIN connections c ON c.integration_id = i.id AND c.owner_id = $1 \
         WHERE $2::text[] IS NULL OR i.unique_key = ANY($2) ORDER BY i.unique_key, c.created_at",
    )
    .bind(session.owner_id)
    .bind(&session.allowed_integrations)
    .fetch_all(&state.pool)
    .await
    {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut items = String::new();
    let mut last: Option<String> = None;
    for (key, provider, account, status) in &rows {
        if last.as_deref() != Some(key) {
            if last.is_some() {
                items.push_str("</ul></li>");
            }
            items.push_str(&format!(
                "<li><strong>{k}</strong> <small>({p})</small> <a href=\"/oauth/connect/{k}?session={t}\">Connect an account</a><ul>",
                k = esc(key),
                p = esc(provider),
                t = esc(&token)
            ));
            last = Some(key.clone());
        }
        if let (Some(a), Some(st)) = (account, status) {
            items.push_str(&format!("<li>{} — {}</li>", esc(a), esc(st)));
        }
    }
    if last.is_some() {
        items.push_str("</ul></li>");
    }
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Connect your accounts</title></head>\
         <body><h1>Connect your accounts</h1><ul>{items}</ul></body></html>"
    );
    let mut res = (StatusCode::OK, Html(body)).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[derive(Debug, FromRow)]
struct SessionRow {
    owner_id: Uuid,
    allowed_integrations: Option<Vec<String>>,
    return_url: Option<String>,
}

/// Picks the usable alternative of a templated URL (`A || B`): the first without
/// a `${…}` placeholder.
fn concrete_url(raw: &str) -> Option<String> {
    raw.split("||").map(str::trim).find(|u| !u.contains("${")).map(str::to_string)
}

async fn connect(State(state): State<AppState>, Path(key): Path<String>, Query(q): Query<ConnectQuery>) -> Response {
    let (_, session) = match live_session(&state, q.session).await {
        Ok(t) => t,
        Err(page) => return page,
    };
    let ret = session.return_url.as_deref();
    if session.allowed_integrations.as_ref().is_some_and(|a| !a.contains(&key)) {
        return finish(ret, Err("integration_not_allowed"));
    }
    let Ok(integ) = integrations::fetch(&state, &key).await else { return finish(ret, Err("unknown_integration")) };
    let Some(provider) = state.catalog.get(&integ.provider) else { return finish(ret, Err("unknown_provider")) };
    let Some(auth_url) = provider.str("authorization_url").and_then(concrete_url) else {
        return finish(ret, Err("provider_needs_connection_config"));
    };
    let state_token = random_token("");
    let state_hash = hash_token(&state_token);
    let pkce = provider.raw.get("disable_pkce").and_then(Value::as_bool) != Some(true);
    let verifier = pkce.then(|| B64URL.encode(rand::random::<[u8; 32]>()));
    let sealed = verifier.as_ref().map(|v| state.keyring.encrypt(v.as_bytes(), &state_hash));
    let stored = sqlx::query(
        "INSERT INTO oauth_states (state_hash, owner_id, integration_id, code_verifier, return_url, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
    )
    .bind(&state_hash)
    .bind(session.owner_id)
    .bind(integ.id)
    .bind(sealed)
    .bind(&session.return_url)
    .bind(STATE_TTL_SECS as f64)
    .execute(&state.pool)
    .await;
    if let Err(e) = stored {
        return ApiError::from(e).into_response();
    }
    let Ok(mut url) = url::Url::parse(&auth_url) else { return finish(ret, Err("invalid_authorization_url")) };
    {
        let sep = provider.str("scope_separator").unwrap_or(" ");
        let mut qp = url.query_pairs_mut();
        let mut params: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        params.insert("response_type".into(), "code".into());
        for source in
            [provider.raw.get("authorization_params"), Some(&integ.authorization_params)].into_iter().flatten()
        {
            if let Some(m) = source.as_object() {
                for (k, v) in m {
                    if let Some(v) = v.as_str() {
                        params.insert(k.clone(), v.to_string());
                    }
                }
            }
        }
        params.insert("client_id".into(), integ.client_id.clone().unwrap_or_default());
        params.insert("redirect_uri".into(), callback_url(&state));
        params.insert("state".into(), state_token);
        if !integ.scopes.is_empty() {
            params.insert("scope".into(), integ.scopes.join(sep));
        }
        if let Some(v) = &verifier {
            params.insert("code_challenge".into(), B64URL.encode(Sha256::digest(v.as_bytes())));
            params.insert("code_challenge_method".into(), "S256".into());
        }
        for (k, v) in &params {
            qp.append_pair(k, v);
        }
    }
    redirect(url.as_str())
}

fn callback_url(state: &AppState) -> String {
    format!("{}/oauth/callback", state.config.public_url.as_str().trim_end_matches('/'))
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

#[derive(Debug, FromRow)]
struct StateRow {
    owner_id: Uuid,
    integration_id: Uuid,
    code_verifier: Option<Vec<u8>>,
    return_url: Option<String>,
}

async fn callback(State(state): State<AppState>, Query(q): Query<CallbackQuery>) -> Response {
    let Some(raw_state) = q.state.filter(|s| !s.is_empty()) else {
        return finish(None, Err("invalid_state"));
    };
    let state_hash = hash_token(&raw_state);
    // Single use: the first callback with this state consumes it.
    let row: Option<StateRow> = match sqlx::query_as(
        "UPDATE oauth_states SET used_at = now() WHERE state_hash = $1 AND used_at IS NULL AND expires_at > now() \
         RETURNING owner_id, integration_id, code_verifier, return_url",
    )
    .bind(&state_hash)
    .fetch_optional(&state.pool)
    .await
    {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(st) = row else { return finish(None, Err("invalid_state")) };
    let ret = st.return_url.as_deref();
    if let Some(err) = q.error {
        let code = if err == "access_denied" { "access_denied" } else { "provider_error" };
        return finish(ret, Err(code));
    }
    let Some(code) = q.code.filter(|c| !c.is_empty()) else { return finish(ret, Err("missing_code")) };
    let Ok(integ) = integrations::fetch_id(&state, st.integration_id).await else {
        return finish(ret, Err("unknown_integration"));
    };
    let Some(provider) = state.catalog.get(&integ.provider).cloned() else {
        return finish(ret, Err("unknown_provider"));
    };
    let verifier = match &st.code_verifier {
        Some(sealed) => match state.keyring.decrypt(sealed, &state_hash).ok().and_then(|v| String::from_utf8(v).ok()) {
            Some(v) => Some(v),
            None => return finish(ret, Err("invalid_state")),
        },
        None => None,
    };
    let mut params = vec![
        ("grant_type".to_string(), "authorization_code".to_string()),
        ("code".to_string(), code),
        ("redirect_uri".to_string(), callback_url(&state)),
    ];
    if let Some(v) = verifier {
        params.push(("code_verifier".into(), v));
    }
    let tokens = match exchange(&state, &provider, &integ, params, false).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(integration = %integ.unique_key, error = %e.detail, "token exchange failed");
            return finish(ret, Err(e.code));
        }
    };
    let account = match account_id(&provider, &tokens).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(integration = %integ.unique_key, error = %e, "identity lookup failed");
            return finish(ret, Err("identity_failed"));
        }
    };
    match upsert_connection(&state, st.owner_id, &integ, &account, &tokens).await {
        Ok(id) => finish(ret, Ok((&integ.unique_key, id))),
        Err(e) => {
            tracing::error!(error = %e, "storing a connection");
            finish(ret, Err("internal"))
        }
    }
}

// ---------------------------------------------------------------------------
// Token exchange

/// Tokens from a provider.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Access token.
    pub access_token: String,
    /// Refresh token, when the provider gave one.
    pub refresh_token: Option<String>,
    /// Expiry, when the provider said.
    pub expires_at: Option<OffsetDateTime>,
    /// The access token's lifetime in seconds (`expires_in`), when the provider said.
    pub lifetime_secs: Option<i64>,
    /// Granted scopes, when the provider said.
    pub scope: Option<String>,
    /// The whole token response.
    pub raw: Value,
}

/// Why an exchange failed: a stable code for the app, detail for the log.
#[derive(Debug)]
pub struct ExchangeError {
    /// `token_exchange_failed`, `invalid_grant`, …
    pub code: &'static str,
    /// What the provider said (never a token).
    pub detail: String,
}

/// A dotted path into JSON (`authed_user.id`).
pub fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, seg| cur.get(seg))
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Calls the provider's token endpoint with `params`, honouring its quirks: client
/// credentials in the body or as HTTP Basic (`authorization_method: header`, or
/// `token_request_auth_method: basic` for both), JSON or form bodies, `Accept:
/// application/json` (GitHub answers form-encoded otherwise, which is parsed too),
/// HTTP 200 with `ok: false` (Slack), tokens nested under
/// `alternate_access_token_response_path`, `expires_in` as a number or a string.
pub async fn exchange(
    state: &AppState,
    provider: &Provider,
    integ: &IntegrationRow,
    mut params: Vec<(String, String)>,
    refresh: bool,
) -> Result<Tokens, ExchangeError> {
    let fail = |code: &'static str, detail: String| ExchangeError { code, detail };
    let url_field = if refresh && provider.raw.get("refresh_url").is_some() { "refresh_url" } else { "token_url" };
    let token_url = match provider.raw.get(url_field) {
        Some(Value::String(u)) => concrete_url(u),
        Some(Value::Object(m)) => m.get("OAUTH2").and_then(Value::as_str).and_then(concrete_url),
        _ => None,
    }
    .ok_or_else(|| fail("provider_needs_connection_config", "no usable token_url".into()))?;
    // Refreshes send `refresh_params`, falling back to `token_params` (as Nango does).
    let extra_field =
        if refresh && provider.raw.get("refresh_params").is_some() { "refresh_params" } else { "token_params" };
    if let Some(extra) = provider.raw.get(extra_field).and_then(Value::as_object) {
        for (k, v) in extra {
            if let Some(v) = v.as_str()
                && !params.iter().any(|(pk, _)| pk == k)
            {
                params.push((k.clone(), v.to_string()));
            }
        }
    }
    let client_id = integ.client_id.clone().unwrap_or_default();
    let secret = match &integ.client_secret {
        Some(sealed) => {
            integrations::client_secret(state, integ.id, sealed).map_err(|e| fail("internal", e.message))?
        }
        None => String::new(),
    };
    let header_auth = provider.str("authorization_method") == Some("header");
    let basic_too = provider.str("token_request_auth_method") == Some("basic");
    if !header_auth {
        params.push(("client_id".into(), client_id.clone()));
        params.push(("client_secret".into(), secret.clone()));
    }
    let mut req = request(reqwest::Method::POST, &token_url)
        .map_err(|e| fail("provider_url_refused", e.to_string()))?
        .timeout(PROVIDER_TIMEOUT)
        .header(header::ACCEPT, "application/json");
    if header_auth || basic_too {
        req = req.header(header::AUTHORIZATION, format!("Basic {}", B64.encode(format!("{client_id}:{secret}"))));
    }
    req = if provider.str("body_format") == Some("json") {
        let body: serde_json::Map<String, Value> = params.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        req.json(&body)
    } else {
        req.form(&params)
    };
    let res = req.send().await.map_err(|e| fail("provider_unreachable", e.without_url().to_string()))?;
    let status = res.status();
    let text = res.text().await.map_err(|e| fail("provider_unreachable", e.without_url().to_string()))?;
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
        // Form-encoded answers (GitHub without Accept).
        Value::Object(
            url::form_urlencoded::parse(text.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )
    });
    let provider_error =
        body.get("error").and_then(as_text).or_else(|| body.get("error_description").and_then(as_text));
    if !status.is_success()
        || body.get("ok") == Some(&Value::Bool(false))
        || (provider_error.is_some() && body.get("access_token").is_none())
    {
        let err = provider_error.unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        // Permanent: the grant or the client is no good; retrying cannot help.
        let permanent =
            matches!(err.as_str(), "invalid_grant" | "invalid_client" | "unauthorized_client" | "invalid_request")
                || (status.is_client_error()
                    && status != StatusCode::TOO_MANY_REQUESTS
                    && status != StatusCode::REQUEST_TIMEOUT);
        let code = if permanent && !status.is_server_error() { "invalid_grant" } else { "token_exchange_failed" };
        return Err(fail(code, format!("HTTP {}: {err}", status.as_u16())));
    }
    // Tokens may sit in a nested object (Slack's `authed_user` for user tokens).
    let holder = match (body.get("access_token"), provider.str("alternate_access_token_response_path")) {
        (None, Some(path)) | (Some(Value::Null), Some(path)) => get_path(&body, path).unwrap_or(&body),
        _ => &body,
    };
    let access_token = holder
        .get("access_token")
        .and_then(as_text)
        .ok_or_else(|| fail("token_exchange_failed", "no access_token in the response".into()))?;
    let expires_in = holder
        .get("expires_in")
        .and_then(|v| v.as_i64().or_else(|| v.as_str()?.trim().parse().ok()))
        .filter(|s| *s > 0);
    Ok(Tokens {
        access_token,
        refresh_token: holder.get("refresh_token").and_then(as_text),
        expires_at: expires_in.map(|s| OffsetDateTime::now_utc() + time::Duration::seconds(s)),
        lifetime_secs: expires_in,
        scope: holder.get("scope").and_then(as_text),
        raw: body,
    })
}

/// The external account id: from the token response (`account_id_path`), or from
/// the provider's identity endpoint (`identity.url`, `identity.id_path`), else
/// `default` (one account per user for that integration).
async fn account_id(provider: &Provider, tokens: &Tokens) -> Result<String, String> {
    if let Some(path) = provider.str("account_id_path") {
        return get_path(&tokens.raw, path).and_then(as_text).ok_or_else(|| format!("no {path} in the token response"));
    }
    let Some(identity) = provider.raw.get("identity") else { return Ok("default".into()) };
    let url = identity.get("url").and_then(Value::as_str).ok_or("identity.url missing")?;
    let path = identity.get("id_path").and_then(Value::as_str).unwrap_or("id");
    let res = request(reqwest::Method::GET, url)
        .map_err(|e| e.to_string())?
        .timeout(PROVIDER_TIMEOUT)
        .bearer_auth(&tokens.access_token)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "carmenta")
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !res.status().is_success() {
        return Err(format!("identity endpoint answered {}", res.status()));
    }
    let v: Value = res.json().await.map_err(|e| e.without_url().to_string())?;
    get_path(&v, path).and_then(as_text).ok_or_else(|| format!("no {path} in the identity response"))
}

/// Sealed credentials: what the vault stores for a connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// Access token.
    pub access_token: String,
    /// Refresh token.
    pub refresh_token: Option<String>,
    /// Access token expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// The access token's lifetime when it was issued, in seconds (remembered so
    /// the refresh margin fits the token; absent in credentials stored before it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_secs: Option<i64>,
    /// The provider's last token response.
    pub raw: Value,
}

/// Seals credentials with the connection id as associated data.
pub fn seal(state: &AppState, id: Uuid, c: &Credentials) -> Vec<u8> {
    state.keyring.encrypt(&serde_json::to_vec(c).unwrap_or_default(), id.as_bytes())
}

/// Opens sealed credentials.
pub fn unseal(state: &AppState, id: Uuid, sealed: &[u8]) -> Result<Credentials, ApiError> {
    let plain = state.keyring.decrypt(sealed, id.as_bytes()).map_err(ApiError::internal)?;
    serde_json::from_slice(&plain).map_err(ApiError::internal)
}

async fn upsert_connection(
    state: &AppState,
    owner: Uuid,
    integ: &IntegrationRow,
    account: &str,
    t: &Tokens,
) -> Result<Uuid, sqlx::Error> {
    let scopes: Vec<String> = match &t.scope {
        Some(s) => s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_string).collect(),
        None => integ.scopes.clone(),
    };
    let creds = Credentials {
        access_token: t.access_token.clone(),
        refresh_token: t.refresh_token.clone(),
        expires_at: t.expires_at,
        lifetime_secs: t.lifetime_secs,
        raw: t.raw.clone(),
    };
    // The id is the associated data of the sealed credentials, so it must be the
    // row's: reuse the existing connection's id, or make one; a racing insert of
    // the same account is retried with its id.
    for _ in 0..3 {
        let existing: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM connections WHERE owner_id = $1 AND integration_id = $2 AND external_account_id = $3",
        )
        .bind(owner)
        .bind(integ.id)
        .bind(account)
        .fetch_optional(&state.pool)
        .await?;
        let id = existing.unwrap_or_else(Uuid::now_v7);
        let done: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO connections (id, owner_id, integration_id, external_account_id, credentials, scopes, expires_at, last_refresh_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, now()) \
             ON CONFLICT (owner_id, integration_id, external_account_id) DO UPDATE SET credentials = excluded.credentials, \
             scopes = excluded.scopes, expires_at = excluded.expires_at, status = 'connected', last_error = NULL, \
             last_refresh_at = now(), updated_at = now() WHERE connections.id = excluded.id RETURNING id",
        )
        .bind(id)
        .bind(owner)
        .bind(integ.id)
        .bind(account)
        .bind(seal(state, id, &creds))
        .bind(&scopes)
        .bind(t.expires_at)
        .fetch_optional(&state.pool)
        .await?;
        if let Some(id) = done {
            let mut conn = state.pool.acquire().await?;
            super::webhooks::emit(
                &mut conn,
                "connection.created",
                serde_json::json!({"connection_id": id, "owner_id": owner, "integration": integ.unique_key,
                                   "provider": integ.provider, "external_account_id": account, "reconnected": existing.is_some()}),
            )
            .await?;
            return Ok(id);
        }
    }
    Err(sqlx::Error::RowNotFound)
}

// ---------------------------------------------------------------------------
// Connections API

#[derive(Debug, FromRow)]
struct ConnRow {
    id: Uuid,
    integration: String,
    provider: String,
    external_account_id: String,
    status: String,
    scopes: Vec<String>,
    expires_at: Option<OffsetDateTime>,
    last_refresh_at: Option<OffsetDateTime>,
    last_error: Option<String>,
    metadata: Value,
    created_at: OffsetDateTime,
}

const CONN_SQL: &str = "SELECT c.id, i.unique_key AS integration, i.provider, c.external_account_id, c.status, \
    c.scopes, c.expires_at, c.last_refresh_at, c.last_error, c.metadata, c.created_at \
    FROM connections c JOIN integrations i ON i.id = c.integration_id";

/// A connection as returned (never a token).
#[derive(Debug, Serialize, ToSchema)]
pub struct Connection {
    /// Id (send as `Connection-Id`).
    pub id: Uuid,
    /// Integration key.
    pub integration: String,
    /// Provider.
    pub provider: String,
    /// The external account.
    pub external_account_id: String,
    /// `connected` or `needs_reauth`.
    pub status: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Access token expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Last token exchange or refresh.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_refresh_at: Option<OffsetDateTime>,
    /// Last refresh error.
    pub last_error: Option<String>,
    /// App metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<ConnRow> for Connection {
    fn from(r: ConnRow) -> Self {
        Connection {
            id: r.id,
            integration: r.integration,
            provider: r.provider,
            external_account_id: r.external_account_id,
            status: r.status,
            scopes: r.scopes,
            expires_at: r.expires_at,
            last_refresh_at: r.last_refresh_at,
            last_error: r.last_error,
            metadata: r.metadata,
            created_at: r.created_at,
        }
    }
}

/// Filter of the connection list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ConnQuery {
    /// Only this integration.
    integration: Option<String>,
}

/// My connections.
#[utoipa::path(get, path = "/v1/connections", tag = "connections", params(ConnQuery), responses((status = 200, body = Vec<Connection>)))]
async fn list_connections(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<ConnQuery>,
) -> Result<ApiJson<Vec<Connection>>, ApiError> {
    let sql =
        format!("{CONN_SQL} WHERE c.owner_id = $1 AND ($2::text IS NULL OR i.unique_key = $2) ORDER BY c.created_at");
    let rows: Vec<ConnRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(user.user_id).bind(&q.integration).fetch_all(&state.pool).await?;
    Ok(ApiJson(rows.into_iter().map(Connection::from).collect()))
}

async fn mine(state: &AppState, owner: Uuid, id: &str) -> Result<ConnRow, ApiError> {
    let not_found = || ApiError::not_found("connection not found");
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    let sql = format!("{CONN_SQL} WHERE c.id = $1 AND c.owner_id = $2");
    let row: Option<ConnRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(owner).fetch_optional(&state.pool).await?;
    row.ok_or_else(not_found)
}

/// One of my connections.
#[utoipa::path(get, path = "/v1/connections/{id}", tag = "connections", params(("id" = Uuid, Path)),
    responses((status = 200, body = Connection), (status = 404)))]
async fn get_connection(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<ApiJson<Connection>, ApiError> {
    mine(&state, user.user_id, &id).await.map(|r| ApiJson(r.into()))
}

/// `PATCH /v1/connections/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchConnection {
    /// Replace the app metadata (a JSON object, ≤ 8 KB).
    #[schema(value_type = Object)]
    pub metadata: Value,
}

/// Set a connection's metadata.
#[utoipa::path(patch, path = "/v1/connections/{id}", tag = "connections", params(("id" = Uuid, Path)),
    request_body = PatchConnection, responses((status = 200, body = Connection), (status = 404)))]
async fn patch_connection(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PatchConnection>,
) -> Result<ApiJson<Connection>, ApiError> {
    if !req.metadata.is_object() || serde_json::to_vec(&req.metadata).map_or(true, |b| b.len() > 8192) {
        return Err(unprocessable("invalid_metadata", "metadata must be a JSON object of at most 8 KB"));
    }
    let row = mine(&state, user.user_id, &id).await?;
    sqlx::query("UPDATE connections SET metadata = $2, updated_at = now() WHERE id = $1 AND owner_id = $3")
        .bind(row.id)
        .bind(&req.metadata)
        .bind(user.user_id)
        .execute(&state.pool)
        .await?;
    mine(&state, user.user_id, &id).await.map(|r| ApiJson(r.into()))
}

/// Revokes the connection's token at the provider when it offers an endpoint for
/// it (`revoke_url`, RFC 7009: `token=…` with the client's credentials). Best
/// effort: a failure is logged and the connection is deleted anyway.
async fn revoke(state: &AppState, row: &ConnRow) {
    let Some(provider) = state.catalog.get(&row.provider) else { return };
    let Some(url) = provider.str("revoke_url").and_then(concrete_url) else { return };
    let result = async {
        let sealed: Vec<u8> = sqlx::query_scalar("SELECT credentials FROM connections WHERE id = $1")
            .bind(row.id)
            .fetch_one(&state.pool)
            .await
            .map_err(|e| e.to_string())?;
        let creds = unseal(state, row.id, &sealed).map_err(|e| e.message)?;
        let integ = integrations::fetch(state, &row.integration).await.map_err(|e| e.message)?;
        let secret = match &integ.client_secret {
            Some(s) => integrations::client_secret(state, integ.id, s).map_err(|e| e.message)?,
            None => String::new(),
        };
        let token = creds.refresh_token.unwrap_or(creds.access_token);
        let form = [
            ("token", token.as_str()),
            ("client_id", integ.client_id.as_deref().unwrap_or("")),
            ("client_secret", &secret),
        ];
        let res = request(reqwest::Method::POST, &url)
            .map_err(|e| e.to_string())?
            .timeout(PROVIDER_TIMEOUT)
            .form(&form)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if res.status().is_success() { Ok(()) } else { Err(format!("HTTP {}", res.status().as_u16())) }
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(connection = %row.id, error = %e, "revoking at the provider failed; deleting anyway");
    }
}

/// `POST /v1/connections`: credentials for an API-key or basic-auth provider.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyConnection {
    /// Integration key.
    pub integration: String,
    /// The API key (API_KEY providers).
    pub api_key: Option<String>,
    /// Username (BASIC providers).
    pub username: Option<String>,
    /// Password (BASIC providers).
    pub password: Option<String>,
    /// Which external account this is (default `default`).
    pub external_account_id: Option<String>,
}

/// Store API-key or basic credentials for a provider that uses them.
#[utoipa::path(post, path = "/v1/connections", tag = "connections", request_body = CreateKeyConnection,
    responses((status = 201, body = Connection), (status = 422)))]
async fn create_key_connection(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(req): ApiJson<CreateKeyConnection>,
) -> Result<Response, ApiError> {
    let integ = integrations::fetch(&state, &req.integration)
        .await
        .map_err(|_| unprocessable("unknown_integration", format!("no integration {:?}", req.integration)))?;
    let provider = state.catalog.get(&integ.provider).ok_or_else(|| ApiError::internal("provider left the catalog"))?;
    let text_ok = |v: &str| !v.is_empty() && v.len() <= 4096 && !v.chars().any(char::is_control);
    let secret = match (provider.auth_mode.as_str(), &req.api_key, &req.username, &req.password) {
        ("API_KEY", Some(k), None, None) if text_ok(k) => k.clone(),
        ("BASIC", None, Some(u), Some(p)) if text_ok(u) && !u.contains(':') && p.len() <= 4096 => {
            B64.encode(format!("{u}:{p}"))
        }
        ("API_KEY", ..) => return Err(unprocessable("invalid_credentials", "this provider takes `api_key` alone")),
        ("BASIC", ..) => {
            return Err(unprocessable("invalid_credentials", "this provider takes `username` and `password`"));
        }
        (mode, ..) => {
            return Err(unprocessable(
                "wrong_auth_mode",
                format!("{} uses {mode}: connect it through /oauth/connect", provider.name),
            ));
        }
    };
    let account = req.external_account_id.unwrap_or_else(|| "default".into());
    if !text_ok(&account) || account.len() > 255 {
        return Err(unprocessable("invalid_account", "external_account_id must be 1 to 255 characters"));
    }
    let tokens = Tokens {
        access_token: secret,
        refresh_token: None,
        expires_at: None,
        lifetime_secs: None,
        scope: None,
        raw: serde_json::json!({"type": provider.auth_mode}),
    };
    let id = upsert_connection(&state, user.user_id, &integ, &account, &tokens).await?;
    let conn = mine(&state, user.user_id, &id.to_string()).await?;
    Ok((StatusCode::CREATED, ApiJson(Connection::from(conn))).into_response())
}

/// Delete one of my connections.
#[utoipa::path(delete, path = "/v1/connections/{id}", tag = "connections", params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404)))]
async fn delete_connection(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = mine(&state, user.user_id, &id).await?;
    revoke(&state, &row).await;
    let mut tx = state.pool.begin().await?;
    sqlx::query("DELETE FROM connections WHERE id = $1 AND owner_id = $2")
        .bind(row.id)
        .bind(user.user_id)
        .execute(&mut *tx)
        .await?;
    super::webhooks::emit(
        &mut tx,
        "connection.deleted",
        serde_json::json!({"connection_id": row.id, "owner_id": user.user_id, "integration": row.integration,
                           "provider": row.provider, "external_account_id": row.external_account_id}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A connection's access token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// The access token.
    pub access_token: String,
    /// Its expiry, when known.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// Query of the token route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TokenQuery {
    /// Refresh now even if the token is still fresh.
    #[serde(default)]
    force: bool,
}

/// The access token of one of my connections, for apps that call the API
/// themselves: refreshed first when it expires within its margin (or on `force`).
#[utoipa::path(get, path = "/v1/connections/{id}/token", tag = "connections", params(("id" = Uuid, Path), TokenQuery),
    responses((status = 200, body = TokenView), (status = 404), (status = 409, description = "needs_reauth"),
    (status = 503, description = "refresh_failed (retry after the cooldown)")))]
async fn connection_token(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, ApiError> {
    let row = mine(&state, user.user_id, &id).await?;
    let creds = super::refresh::fresh_token(&state, row.id, q.force).await?;
    let mut res = ApiJson(TokenView { access_token: creds.access_token, expires_at: creds.expires_at }).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
