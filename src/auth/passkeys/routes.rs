//! Handlers of passkeys: registration and management for the signed-in user,
//! passwordless sign-in, and the passkey second factor of a sign-in step.

use std::sync::Arc;

use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::routes::{AddressBudget, client_info, with_session};
use crate::auth::types::*;
use crate::auth::{AuthState, Caller, Peer};
use crate::error::{ApiError, ApiJson};

/// The passkey routes.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<AuthState>: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(register_start))
        .routes(routes!(register_finish))
        .routes(routes!(rename, remove))
        .routes(routes!(sign_in_start))
        .routes(routes!(sign_in_finish))
        .routes(routes!(second_factor_start))
}

/// The caller's passkeys.
#[utoipa::path(get, path = "/v1/me/passkeys", tag = "auth", responses((status = 200, body = Vec<PasskeyView>), (status = 401)))]
async fn list(State(state): State<Arc<AuthState>>, Caller(p): Caller) -> Result<ApiJson<Vec<PasskeyView>>, ApiError> {
    let user = crate::auth::service::require_user(&p)?;
    super::list(&state, user).await.map(ApiJson)
}

/// Start registering a passkey: options for `navigator.credentials.create()`.
#[utoipa::path(post, path = "/v1/me/passkeys/register", tag = "auth",
    responses((status = 200, body = PasskeyOptions), (status = 401), (status = 409, description = "passkeys_unavailable")))]
async fn register_start(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
) -> Result<ApiJson<PasskeyOptions>, ApiError> {
    super::start_registration(&state, &p).await.map(ApiJson)
}

/// Finish registering a passkey with the browser's new credential.
#[utoipa::path(post, path = "/v1/me/passkeys/register/finish", tag = "auth", request_body = PasskeyRegistration,
    responses((status = 201, body = PasskeyView), (status = 400, description = "invalid_ceremony, invalid_credential"),
        (status = 401, description = "passkey_rejected"), (status = 409, description = "passkey_exists"),
        (status = 409, description = "passkeys_unavailable")))]
async fn register_finish(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<PasskeyRegistration>,
) -> Result<Response, ApiError> {
    let view = super::finish_registration(&state, &p, req).await?;
    Ok((StatusCode::CREATED, ApiJson(view)).into_response())
}

/// Rename a passkey.
#[utoipa::path(patch, path = "/v1/me/passkeys/{id}", tag = "auth", request_body = RenamePasskey,
    params(("id" = Uuid, Path, description = "Passkey id")),
    responses((status = 200, body = PasskeyView), (status = 404), (status = 422, description = "invalid_name")))]
async fn rename(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Path(id): Path<Uuid>,
    ApiJson(req): ApiJson<RenamePasskey>,
) -> Result<ApiJson<PasskeyView>, ApiError> {
    super::rename(&state, &p, id, &req.name).await.map(ApiJson)
}

/// Delete a passkey (needs a sign-in or re-authentication in the last 10
/// minutes; never the account's last way to sign in).
#[utoipa::path(delete, path = "/v1/me/passkeys/{id}", tag = "auth", params(("id" = Uuid, Path, description = "Passkey id")),
    responses((status = 204), (status = 403, description = "reauthentication_required"), (status = 404), (status = 409, description = "last_sign_in_method")))]
async fn remove(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    super::delete(&state, &p, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start a passkey sign-in (with an email, or discoverable without one).
#[utoipa::path(post, path = "/v1/auth/passkey", tag = "auth", request_body = PasskeySignInStart,
    responses((status = 200, body = PasskeyOptions), (status = 422, description = "invalid_email"), (status = 429, description = "rate_limited"),
        (status = 409, description = "passkeys_unavailable")))]
async fn sign_in_start(
    State(state): State<Arc<AuthState>>,
    _budget: AddressBudget,
    ApiJson(req): ApiJson<PasskeySignInStart>,
) -> Result<ApiJson<PasskeyOptions>, ApiError> {
    super::start_sign_in(&state, req.email.as_deref()).await.map(ApiJson)
}

/// Finish a passkey sign-in; answers with a session (two factors: `aal2`).
#[utoipa::path(post, path = "/v1/auth/passkey/finish", tag = "auth", request_body = PasskeyAssertion,
    responses((status = 200, body = AuthResponse), (status = 400, description = "invalid_ceremony, invalid_credential"),
        (status = 401, description = "passkey_rejected"), (status = 429, description = "rate_limited"),
        (status = 409, description = "passkeys_unavailable")))]
async fn sign_in_finish(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    _budget: AddressBudget,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PasskeyAssertion>,
) -> Result<Response, ApiError> {
    crate::auth::check_login_origin(&state, &headers)?;
    let client = client_info(&headers, peer);
    crate::auth::service::ip_limit(&state, &client).await?;
    let body = super::finish_sign_in(&state, req, &client).await?;
    Ok(with_session(&state, StatusCode::OK, body))
}

/// Start a passkey as the second factor of a sign-in step; send its answer as
/// `passkey` to `POST /v1/auth/mfa/verify`.
#[utoipa::path(post, path = "/v1/auth/mfa/passkey", tag = "auth", request_body = MfaPasskeyStart,
    responses((status = 200, body = PasskeyOptions), (status = 400, description = "no_passkey"), (status = 401, description = "invalid_mfa_token"),
        (status = 409, description = "passkeys_unavailable")))]
async fn second_factor_start(
    State(state): State<Arc<AuthState>>,
    ApiJson(req): ApiJson<MfaPasskeyStart>,
) -> Result<ApiJson<PasskeyOptions>, ApiError> {
    super::start_second_factor(&state, &req.mfa_token).await.map(ApiJson)
}
