//! Handlers of social sign-in for apps with their own UI (start, exchange),
//! the user's linked identities, and the providers (listed to everyone,
//! configured with a service key). The browser side — the hosted start and the
//! provider's callback — is in the hosted pages.

use std::sync::Arc;

use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Completed;
use crate::auth::routes::{client_info, sign_in_answer};
use crate::auth::service::Principal;
use crate::auth::types::*;
use crate::auth::{AuthState, Caller, CurrentUser, Peer};
use crate::error::{ApiError, ApiJson};

/// The social sign-in routes.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<AuthState>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list_providers))
        .routes(routes!(start))
        .routes(routes!(exchange))
        .routes(routes!(list_identities))
        .routes(routes!(start_link))
        .routes(routes!(finish_link))
        .routes(routes!(unlink))
        .routes(routes!(admin_list))
        .routes(routes!(admin_put, admin_delete))
}

/// The social providers users can sign in with.
#[utoipa::path(get, path = "/v1/auth/social/providers", tag = "auth", responses((status = 200, body = Vec<SocialProviderView>)))]
async fn list_providers(State(state): State<Arc<AuthState>>) -> Result<ApiJson<Vec<SocialProviderView>>, ApiError> {
    super::enabled(&state).await.map(ApiJson)
}

/// Start a social sign-in from an app's own UI: send the browser to
/// `authorization_url`; it comes back to `redirect_url?code=…`.
#[utoipa::path(post, path = "/v1/auth/social/{provider}/start", tag = "auth", request_body = SocialStartRequest,
    params(("provider" = String, Path, description = "Provider id")),
    responses((status = 200, body = SocialStart), (status = 400, description = "pkce_s256_required, invalid_code_challenge"),
        (status = 404, description = "unknown_provider"), (status = 422, description = "invalid_redirect_url"), (status = 502, description = "provider_error")))]
async fn start(
    State(state): State<Arc<AuthState>>,
    Path(provider): Path<String>,
    ApiJson(req): ApiJson<SocialStartRequest>,
) -> Result<ApiJson<SocialStart>, ApiError> {
    super::start_for_app(&state, &provider, &req, None).await.map(ApiJson)
}

/// End an app's social sign-in with the code and the PKCE verifier: the session,
/// or (202) the second-factor step.
#[utoipa::path(post, path = "/v1/auth/social/exchange", tag = "auth", request_body = SocialExchangeRequest,
    responses((status = 200, body = AuthResponse), (status = 202, body = MfaChallenge), (status = 400, description = "invalid_grant"),
        (status = 409, description = "identity_link_required"), (status = 422, description = "email_required")))]
async fn exchange(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SocialExchangeRequest>,
) -> Result<Response, ApiError> {
    crate::auth::check_login_origin(&state, &headers)?;
    match super::exchange(&state, &req.code, &req.code_verifier, None, &client_info(&headers, peer)).await? {
        Completed::SignIn(outcome, _) => Ok(sign_in_answer(&state, outcome)),
        _ => Err(ApiError::bad_request("invalid_grant", "not a sign-in")),
    }
}

/// The caller's linked sign-in identities.
#[utoipa::path(get, path = "/v1/me/identities", tag = "auth", responses((status = 200, body = Vec<IdentityView>), (status = 401)))]
async fn list_identities(
    State(state): State<Arc<AuthState>>,
    user: CurrentUser,
) -> Result<ApiJson<Vec<IdentityView>>, ApiError> {
    super::identities(&state, user.user_id).await.map(ApiJson)
}

/// The signed-in user, from a session (not a service key acting for them).
fn session_user(p: &Principal) -> Result<Uuid, ApiError> {
    match p {
        Principal::User { user_id, act: None, .. } => Ok(*user_id),
        Principal::User { .. } => Err(ApiError::forbidden("an impersonated session cannot link identities")),
        _ => Err(ApiError::bad_request("session_required", "identities are linked from a signed-in session")),
    }
}

/// Start linking a provider to the signed-in user (app flow, as for sign-in).
#[utoipa::path(post, path = "/v1/me/identities/{provider}/start", tag = "auth", request_body = SocialStartRequest,
    params(("provider" = String, Path, description = "Provider id")),
    responses((status = 200, body = SocialStart), (status = 401), (status = 404, description = "unknown_provider")))]
async fn start_link(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Path(provider): Path<String>,
    ApiJson(req): ApiJson<SocialStartRequest>,
) -> Result<ApiJson<SocialStart>, ApiError> {
    let user = session_user(&p)?;
    super::start_for_app(&state, &provider, &req, Some(user)).await.map(ApiJson)
}

/// Finish linking with the code and the verifier; only the user who started it can.
#[utoipa::path(post, path = "/v1/me/identities/exchange", tag = "auth", request_body = SocialExchangeRequest,
    responses((status = 201, body = IdentityView), (status = 400, description = "invalid_grant"), (status = 409, description = "identity_taken")))]
async fn finish_link(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Peer(peer): Peer,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SocialExchangeRequest>,
) -> Result<Response, ApiError> {
    let user = session_user(&p)?;
    match super::exchange(&state, &req.code, &req.code_verifier, Some(user), &client_info(&headers, peer)).await? {
        Completed::Linked(identity, _) => Ok((StatusCode::CREATED, ApiJson(identity)).into_response()),
        _ => Err(ApiError::bad_request("invalid_grant", "not a link")),
    }
}

/// Unlink an identity (never the account's last way to sign in).
#[utoipa::path(delete, path = "/v1/me/identities/{id}", tag = "auth", params(("id" = Uuid, Path, description = "Identity id")),
    responses((status = 204), (status = 401), (status = 404), (status = 409, description = "last_sign_in_method")))]
async fn unlink(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    let user = session_user(&p)?;
    super::unlink(&state, user, id, &p.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A full-scope service key, or 403.
fn require_service(p: &Principal) -> Result<(), ApiError> {
    match p {
        Principal::Service { full: true, .. } => Ok(()),
        _ => Err(ApiError::forbidden("a full-scope service key is required").with_code("insufficient_scope")),
    }
}

/// The configured social providers (service key; secrets never shown).
#[utoipa::path(get, path = "/v1/auth/social-providers", tag = "auth",
    responses((status = 200, body = Vec<SocialProviderAdminView>), (status = 403, description = "insufficient_scope")))]
async fn admin_list(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
) -> Result<ApiJson<Vec<SocialProviderAdminView>>, ApiError> {
    match &p {
        Principal::Service { .. } => super::admin_list(&state).await.map(ApiJson),
        _ => Err(ApiError::forbidden("a service key is required").with_code("insufficient_scope")),
    }
}

/// Add or replace a social provider (full-scope service key): a built-in id
/// (`google`, `github`, …) or any id with an OpenID discovery URL.
#[utoipa::path(put, path = "/v1/auth/social-providers/{id}", tag = "auth", request_body = PutSocialProvider,
    params(("id" = String, Path, description = "Provider id")),
    responses((status = 200, body = SocialProviderAdminView), (status = 403, description = "insufficient_scope"),
        (status = 409, description = "configured_provider"), (status = 422, description = "invalid_discovery_url and kin")))]
async fn admin_put(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PutSocialProvider>,
) -> Result<ApiJson<SocialProviderAdminView>, ApiError> {
    require_service(&p)?;
    super::admin_put(&state, &id, req, &p.actor()).await.map(ApiJson)
}

/// Remove a social provider added through the API (full-scope service key).
#[utoipa::path(delete, path = "/v1/auth/social-providers/{id}", tag = "auth", params(("id" = String, Path, description = "Provider id")),
    responses((status = 204), (status = 403, description = "insufficient_scope"), (status = 404), (status = 409, description = "configured_provider")))]
async fn admin_delete(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_service(&p)?;
    super::admin_delete(&state, &id, &p.actor()).await?;
    Ok(StatusCode::NO_CONTENT)
}
