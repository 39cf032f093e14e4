//! Auth HTTP handlers, the session cookie, CSRF checks, and the extractors every
//! area uses to ask "who is this?": [`Caller`] (any principal) and [`CurrentUser`]
//! (a principal acting as a user).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::email;
use super::service::{self, ClientInfo, Principal, Via};
use super::types::*;
use std::sync::Arc;

use super::AuthState;
use crate::error::{ApiError, ApiJson};
use crate::pagination::{Page, PageQuery};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "carmenta_session";
/// Header a service key uses to act for a user.
pub const ACT_AS_HEADER: &str = "x-carmenta-user-id";

/// The auth routes.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<AuthState>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(sign_up))
        .routes(routes!(sign_in))
        .routes(routes!(sign_out))
        .routes(routes!(token))
        .routes(routes!(get_me, patch_me, delete_me))
        .routes(routes!(change_password))
        .routes(routes!(list_sessions))
        .routes(routes!(revoke_session))
        .routes(routes!(verify_email))
        .routes(routes!(resend_verification))
        .routes(routes!(magic_link))
        .routes(routes!(magic_link_verify))
        .routes(routes!(password_forgot))
        .routes(routes!(password_reset))
        .routes(routes!(clerk_webhook))
        .routes(routes!(jwks))
        .routes(routes!(openid_configuration))
        .merge(super::mfa::routes())
        .merge(super::social::routes())
        .merge(super::passkeys::routes())
}

/// Any authenticated principal.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// A principal acting as a user: the user id, and the principal.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    /// The user acted as.
    pub user_id: Uuid,
    /// Who is acting.
    pub principal: Principal,
}

/// The value of cookie `name` in a request's headers.
pub(crate) fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The origin a browser request came from (Origin, else Referer).
fn request_origin(headers: &HeaderMap) -> Option<String> {
    // An Origin header, even `null` (a sandboxed document, a data: URL), is the
    // answer: the Referer of such a page may still name our own origin.
    if let Some(o) = headers.get(header::ORIGIN) {
        return o.to_str().ok().filter(|o| *o != "null").map(str::to_string).or(Some(String::new()));
    }
    let referer = headers.get(header::REFERER).and_then(|v| v.to_str().ok())?;
    url::Url::parse(referer).ok().map(|u| u.origin().ascii_serialization())
}

/// CSRF protection for cookie-authenticated requests that change state: the
/// request must come from the public URL's origin or an allowed one.
fn check_csrf(state: &AuthState, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let ok = match request_origin(headers) {
        Some(origin) => state.config.origin_allowed(&origin),
        None => headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("same-origin"),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::forbidden("cross-site request refused (CSRF protection)").with_code("csrf_failed"))
    }
}

async fn authenticate(parts: &mut Parts, state: &AuthState) -> Result<Principal, ApiError> {
    if let Some(p) = parts.extensions.get::<Principal>() {
        return Ok(p.clone());
    }
    let auth = parts.headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let principal = match auth {
        Some(v) => {
            let token = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::unauthorized("expected `Authorization: Bearer <token>`").with_code("invalid_token")
                })?;
            service::resolve_bearer(state, token).await?
        }
        None => match cookie_value(&parts.headers, SESSION_COOKIE) {
            Some(token) => {
                let p = service::resolve_session(state, token, Via::Cookie).await?;
                check_csrf(state, &parts.method, &parts.headers)?;
                p
            }
            None => return Err(ApiError::unauthorized("authentication required")),
        },
    };
    let principal = match (&principal, parts.headers.get(ACT_AS_HEADER)) {
        (Principal::Service { full, .. }, act) => {
            if !full && !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
                return Err(ApiError::forbidden("this service key is read-only").with_code("insufficient_scope"));
            }
            match act {
                Some(v) => {
                    let user = v.to_str().ok().and_then(|s| Uuid::parse_str(s.trim()).ok()).ok_or_else(|| {
                        ApiError::bad_request("invalid_user_id", format!("{ACT_AS_HEADER} must be a user id"))
                    })?;
                    service::act_for(state, principal.clone(), user, parts.method.as_str(), parts.uri.path()).await?
                }
                None => principal,
            }
        }
        (_, Some(_)) => {
            return Err(ApiError::forbidden(format!("only service keys may send {ACT_AS_HEADER}")));
        }
        (_, None) => principal,
    };
    parts.extensions.insert(principal.clone());
    Ok(principal)
}

// The extractors work under any router state that holds the auth state.
impl<S: Send + Sync> FromRequestParts<S> for Caller
where
    Arc<AuthState>: FromRef<S>,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        authenticate(parts, &Arc::<AuthState>::from_ref(state)).await.map(Caller)
    }
}

/// `Option<Caller>`: `None` when the request carries no credentials at all; bad
/// credentials are still refused.
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Caller
where
    Arc<AuthState>: FromRef<S>,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let has_credentials =
            parts.headers.contains_key(header::AUTHORIZATION) || cookie_value(&parts.headers, SESSION_COOKIE).is_some();
        if !has_credentials {
            return Ok(None);
        }
        authenticate(parts, &Arc::<AuthState>::from_ref(state)).await.map(|p| Some(Caller(p)))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser
where
    Arc<AuthState>: FromRef<S>,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = authenticate(parts, &Arc::<AuthState>::from_ref(state)).await?;
        let user_id = service::require_user(&principal)?;
        Ok(CurrentUser { user_id, principal })
    }
}

/// Refuses, before the body is read, an address already over its sign-in budget
/// (`CARMENTA_SIGNIN_IP_LIMIT`); the attempt itself is counted by the service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddressBudget;

impl<S: Send + Sync> FromRequestParts<S> for AddressBudget
where
    Arc<AuthState>: FromRef<S>,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            service::ip_over_budget(&Arc::<AuthState>::from_ref(state), &peer.0.ip().to_string()).await?;
        }
        Ok(AddressBudget)
    }
}

/// The client's socket address, when the server was started with connect info.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}

pub(crate) fn client_info(parts_headers: &HeaderMap, peer: Option<SocketAddr>) -> ClientInfo {
    ClientInfo {
        ip: peer.map(|p| p.ip().to_string()),
        user_agent: parts_headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect()),
    }
}

pub(crate) fn session_cookie(state: &AuthState, token: &str, max_age: i64) -> HeaderValue {
    let secure = if state.config.public_url.scheme() == "https" { "; Secure" } else { "" };
    let v = format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("carmenta_session=; Path=/; Max-Age=0"))
}

/// Login CSRF: a browser posting credentials from a foreign origin is refused.
pub(crate) fn check_login_origin(state: &AuthState, headers: &HeaderMap) -> Result<(), ApiError> {
    match request_origin(headers) {
        Some(o) if !state.config.origin_allowed(&o) => {
            Err(ApiError::forbidden("cross-site sign-in refused").with_code("csrf_failed"))
        }
        _ => Ok(()),
    }
}

/// The answer to a passed first factor: the session (200), or the second-factor
/// step (202 with an `mfa_token`, no session).
pub(crate) fn sign_in_answer(state: &AuthState, outcome: service::SignIn) -> Response {
    match outcome {
        service::SignIn::Session(body) => with_session(state, StatusCode::OK, *body),
        service::SignIn::SecondFactor(challenge) => {
            let mut res = (StatusCode::ACCEPTED, ApiJson(challenge)).into_response();
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
    }
}

pub(crate) fn with_session(state: &AuthState, status: StatusCode, body: AuthResponse) -> Response {
    let max_age = state.config.session_ttl.as_secs() as i64;
    let cookie = session_cookie(state, &body.session_token, max_age);
    let mut res = (status, ApiJson(body)).into_response();
    res.headers_mut().insert(header::SET_COOKIE, cookie);
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Create an account with email and password; answers with a session.
#[utoipa::path(post, path = "/v1/auth/sign-up", tag = "auth", request_body = SignUpRequest,
    responses((status = 201, body = AuthResponse), (status = 409, description = "email_taken"), (status = 422, description = "invalid_email, weak_password")))]
async fn sign_up(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    _budget: AddressBudget,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SignUpRequest>,
) -> Result<Response, ApiError> {
    check_login_origin(&state, &headers)?;
    let body = service::sign_up(&state, req, &client_info(&headers, peer)).await?;
    Ok(with_session(&state, StatusCode::CREATED, body))
}

/// Sign in with email and password; answers with a session, or (202) with the
/// second-factor step when the user has a second factor.
#[utoipa::path(post, path = "/v1/auth/sign-in", tag = "auth", request_body = SignInRequest,
    responses((status = 200, body = AuthResponse), (status = 202, body = MfaChallenge), (status = 401, description = "invalid_credentials"), (status = 429, description = "rate_limited, too_many_attempts")))]
async fn sign_in(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    _budget: AddressBudget,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SignInRequest>,
) -> Result<Response, ApiError> {
    check_login_origin(&state, &headers)?;
    let outcome = service::sign_in(&state, req, &client_info(&headers, peer)).await?;
    Ok(sign_in_answer(&state, outcome))
}

/// Sign out of this session (or, with `{"all": true}`, of every session).
#[utoipa::path(post, path = "/v1/auth/sign-out", tag = "auth", request_body(content = SignOutRequest, description = "optional"),
    responses((status = 204), (status = 401)))]
async fn sign_out(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: SignOutRequest = if body.is_empty() {
        SignOutRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
    };
    service::sign_out(&state, &p, req.all).await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(header::SET_COOKIE, session_cookie(&state, "", 0));
    Ok(res)
}

/// Exchange a session (cookie or bearer session token) for a short-lived access token.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth", responses((status = 200, body = TokenResponse), (status = 401)))]
async fn token(State(state): State<Arc<AuthState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    let body = service::access_token(&state, &p).await?;
    let mut res = ApiJson(body).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// The caller's profile.
#[utoipa::path(get, path = "/v1/me", tag = "auth", responses((status = 200, body = UserView), (status = 401)))]
async fn get_me(State(state): State<Arc<AuthState>>, Caller(p): Caller) -> Result<ApiJson<UserView>, ApiError> {
    service::me(&state, &p).await.map(ApiJson)
}

/// Update the caller's profile.
#[utoipa::path(patch, path = "/v1/me", tag = "auth", request_body = PatchMeRequest, responses((status = 200, body = UserView)))]
async fn patch_me(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<PatchMeRequest>,
) -> Result<ApiJson<UserView>, ApiError> {
    service::patch_me(&state, &p, req).await.map(ApiJson)
}

/// Delete the caller's account and everything it owns.
#[utoipa::path(delete, path = "/v1/me", tag = "auth", responses((status = 204)))]
async fn delete_me(State(state): State<Arc<AuthState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    service::delete_me(&state, &p).await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    res.headers_mut().insert(header::SET_COOKIE, session_cookie(&state, "", 0));
    Ok(res)
}

/// Change the caller's password (other sessions are signed out).
#[utoipa::path(post, path = "/v1/me/password", tag = "auth", request_body = ChangePasswordRequest, responses((status = 204), (status = 401)))]
async fn change_password(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<ChangePasswordRequest>,
) -> Result<StatusCode, ApiError> {
    service::change_password(&state, &p, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's live sessions.
#[utoipa::path(get, path = "/v1/me/sessions", tag = "auth", params(PageQuery),
    responses((status = 200, body = Page<SessionView>), (status = 400, description = "invalid_limit, invalid_cursor")))]
async fn list_sessions(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Query(page): Query<PageQuery>,
) -> Result<ApiJson<SessionList>, ApiError> {
    service::sessions(&state, &p, &page).await.map(ApiJson)
}

/// Revoke one of the caller's sessions.
#[utoipa::path(delete, path = "/v1/me/sessions/{id}", tag = "auth", params(("id" = Uuid, Path)), responses((status = 204), (status = 404)))]
async fn revoke_session(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("session not found"))?;
    service::revoke_session(&state, &p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The public keys that verify access tokens.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", responses((status = 200, description = "JWK Set")))]
async fn jwks(State(state): State<Arc<AuthState>>) -> Response {
    let mut res = axum::Json(state.keys.jwks()).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    res
}

/// OpenID Connect discovery document.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "auth", responses((status = 200, description = "discovery document")))]
async fn openid_configuration(State(state): State<Arc<AuthState>>) -> axum::Json<serde_json::Value> {
    let iss = state.config.issuer();
    axum::Json(serde_json::json!({
        "issuer": iss,
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "token_endpoint": format!("{iss}/v1/auth/token"),
        "userinfo_endpoint": format!("{iss}/v1/me"),
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["none"],
        "claims_supported": ["sub", "sid", "iss", "aud", "exp", "iat", "nbf", "jti"],
    }))
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, ApiJson(Accepted { status: "accepted" })).into_response()
}

/// Confirm an email address with the token from the verification mail.
#[utoipa::path(post, path = "/v1/auth/verify-email", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = VerifiedResponse), (status = 400, description = "invalid_link")))]
async fn verify_email(
    State(state): State<Arc<AuthState>>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<ApiJson<VerifiedResponse>, ApiError> {
    let user = email::verify_email(&state, &req.token).await?;
    Ok(ApiJson(VerifiedResponse { user }))
}

/// Send the verification mail again to the signed-in user.
#[utoipa::path(post, path = "/v1/auth/verify-email/resend", tag = "auth", responses((status = 202, body = Accepted)))]
async fn resend_verification(State(state): State<Arc<AuthState>>, user: CurrentUser) -> Result<Response, ApiError> {
    email::resend_verification(&state, user.user_id).await?;
    Ok(accepted())
}

fn checked_redirect(state: &AuthState, raw: Option<&str>) -> Result<Option<String>, ApiError> {
    raw.map(|r| service::safe_redirect(&state.config, r)).transpose()
}

/// Mail a sign-in link (answers 202 whether or not the email has an account).
#[utoipa::path(post, path = "/v1/auth/magic-link", tag = "auth", request_body = EmailLinkRequest,
    responses((status = 202, body = Accepted), (status = 422, description = "invalid_email, invalid_redirect_url")))]
async fn magic_link(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    _budget: AddressBudget,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EmailLinkRequest>,
) -> Result<Response, ApiError> {
    let redirect = checked_redirect(&state, req.redirect_url.as_deref())?;
    email::request_magic_link(&state, &req.email, redirect.as_deref(), &client_info(&headers, peer)).await?;
    Ok(accepted())
}

/// Sign in with the token from a magic-link mail (202 with the second-factor step
/// when the user has a second factor).
#[utoipa::path(post, path = "/v1/auth/magic-link/verify", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = AuthResponse), (status = 202, body = MfaChallenge), (status = 400, description = "invalid_link")))]
async fn magic_link_verify(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Response, ApiError> {
    check_login_origin(&state, &headers)?;
    let outcome = email::consume_magic_link(&state, &req.token, &client_info(&headers, peer)).await?;
    Ok(sign_in_answer(&state, outcome))
}

/// Mail a password-reset link (answers 202 whether or not the email has an account).
#[utoipa::path(post, path = "/v1/auth/password/forgot", tag = "auth", request_body = EmailLinkRequest,
    responses((status = 202, body = Accepted)))]
async fn password_forgot(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EmailLinkRequest>,
) -> Result<Response, ApiError> {
    let redirect = checked_redirect(&state, req.redirect_url.as_deref())?;
    email::forgot_password(&state, &req.email, redirect.as_deref(), &client_info(&headers, peer)).await?;
    Ok(accepted())
}

/// Set a new password with the token from a reset mail; every session is signed out.
#[utoipa::path(post, path = "/v1/auth/password/reset", tag = "auth", request_body = ResetPasswordRequest,
    responses((status = 204), (status = 400, description = "invalid_link"), (status = 422, description = "weak_password")))]
async fn password_reset(
    State(state): State<Arc<AuthState>>,
    ApiJson(req): ApiJson<ResetPasswordRequest>,
) -> Result<StatusCode, ApiError> {
    email::reset_password(&state, &req.token, req.new_password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Clerk's Svix-signed webhooks: `user.created`, `user.updated`, `user.deleted`.
#[utoipa::path(post, path = "/v1/webhooks/clerk", tag = "auth", request_body(content = Object, description = "a Clerk event"),
    responses((status = 200, description = "processed, duplicate or ignored"), (status = 401, description = "invalid_signature"), (status = 404, description = "not configured")))]
async fn clerk_webhook(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<ApiJson<serde_json::Value>, ApiError> {
    super::external::handle_clerk_webhook(&state, &headers, &body).await.map(ApiJson)
}
