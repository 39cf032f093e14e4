//! Handlers of second factors: the sign-in's second step, enrolment and removal
//! of the authenticator app, backup codes, re-authentication.

use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::routes::{AddressBudget, client_info, with_session};
use crate::auth::types::*;
use crate::auth::{AuthState, Caller, Peer};
use crate::error::{ApiError, ApiJson};

/// The second-factor routes.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<AuthState>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(verify))
        .routes(routes!(status))
        .routes(routes!(start_totp, remove_totp))
        .routes(routes!(confirm_totp))
        .routes(routes!(backup_codes))
        .routes(routes!(reauthenticate))
}

/// The second step of a sign-in: an authenticator code or a backup code for the
/// `mfa_token` the first step answered with (202); answers with the session.
#[utoipa::path(post, path = "/v1/auth/mfa/verify", tag = "auth", request_body = MfaVerifyRequest,
    responses((status = 200, body = AuthResponse), (status = 400, description = "invalid_request"),
        (status = 401, description = "invalid_mfa_token, invalid_code"), (status = 429, description = "rate_limited")))]
async fn verify(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    _budget: AddressBudget,
    headers: HeaderMap,
    ApiJson(req): ApiJson<MfaVerifyRequest>,
) -> Result<Response, ApiError> {
    crate::auth::check_login_origin(&state, &headers)?;
    let body = super::verify(&state, req, &client_info(&headers, peer)).await?;
    Ok(with_session(&state, StatusCode::OK, body))
}

/// The caller's second factors.
#[utoipa::path(get, path = "/v1/me/mfa", tag = "auth", responses((status = 200, body = MfaStatus), (status = 401)))]
async fn status(State(state): State<Arc<AuthState>>, Caller(p): Caller) -> Result<ApiJson<MfaStatus>, ApiError> {
    super::status(&state, &p).await.map(ApiJson)
}

/// Start enrolling an authenticator app: its secret and QR code; confirm with a code.
#[utoipa::path(post, path = "/v1/me/mfa/totp", tag = "auth",
    responses((status = 201, body = TotpEnrollment), (status = 401), (status = 409, description = "totp_exists")))]
async fn start_totp(State(state): State<Arc<AuthState>>, Caller(p): Caller) -> Result<Response, ApiError> {
    let body = super::start_totp(&state, &p).await?;
    let mut res = (StatusCode::CREATED, ApiJson(body)).into_response();
    res.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Confirm the authenticator app with a code; the first time, answers with ten
/// backup codes (shown once).
#[utoipa::path(post, path = "/v1/me/mfa/totp/confirm", tag = "auth", request_body = CodeRequest,
    responses((status = 200, body = BackupCodes), (status = 401, description = "invalid_code"), (status = 429, description = "rate_limited")))]
async fn confirm_totp(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<CodeRequest>,
) -> Result<ApiJson<BackupCodes>, ApiError> {
    super::confirm_totp(&state, &p, &req.code).await.map(ApiJson)
}

/// Remove the authenticator app (needs a sign-in or re-authentication in the
/// last 10 minutes).
#[utoipa::path(delete, path = "/v1/me/mfa/totp", tag = "auth",
    responses((status = 204), (status = 401), (status = 403, description = "reauthentication_required"), (status = 404)))]
async fn remove_totp(State(state): State<Arc<AuthState>>, Caller(p): Caller) -> Result<StatusCode, ApiError> {
    super::remove_totp(&state, &p).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the backup codes with ten new ones (needs a recent re-authentication).
#[utoipa::path(post, path = "/v1/me/mfa/backup-codes", tag = "auth",
    responses((status = 200, body = BackupCodes), (status = 403, description = "reauthentication_required"), (status = 409, description = "no_second_factor")))]
async fn backup_codes(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
) -> Result<ApiJson<BackupCodes>, ApiError> {
    super::regenerate_backup_codes(&state, &p).await.map(ApiJson)
}

/// Prove who you are again in this session (password, authenticator code or
/// backup code) before a sensitive change.
#[utoipa::path(post, path = "/v1/auth/reauthenticate", tag = "auth", request_body = ReauthRequest,
    responses((status = 204), (status = 401, description = "invalid_credentials"), (status = 429, description = "rate_limited")))]
async fn reauthenticate(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Peer(peer): Peer,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ReauthRequest>,
) -> Result<StatusCode, ApiError> {
    super::reauthenticate(&state, &p, req, &client_info(&headers, peer)).await?;
    Ok(StatusCode::NO_CONTENT)
}
