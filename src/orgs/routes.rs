//! Organization handlers under `/v1/orgs`, `/v1/invitations` and `/v1/me/active-org`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::service;
use super::types::*;
use crate::auth::types::TokenResponse;
use crate::auth::{AuthState, Caller, CurrentUser};
use crate::error::{ApiError, ApiJson};

/// The organization routes.
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<AuthState>: axum::extract::FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(create_org, list_orgs))
        .routes(routes!(get_org, patch_org, delete_org))
        .routes(routes!(list_members, add_member))
        .routes(routes!(patch_member, remove_member))
        .routes(routes!(list_roles, create_role))
        .routes(routes!(delete_role))
        .routes(routes!(list_invitations, create_invitation))
        .routes(routes!(revoke_invitation))
        .routes(routes!(resend_invitation))
        .routes(routes!(accept_invitation))
        .routes(routes!(preview_invitation))
        .routes(routes!(sign_up_invited))
        .routes(routes!(decline_invitation))
        .routes(routes!(set_active_org))
        .routes(routes!(list_domains, add_domain))
        .routes(routes!(remove_domain))
        .routes(routes!(join_org))
        .routes(routes!(org_suggestions))
}

fn org_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("organization not found"))
}

fn id_of(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(format!("{what} not found")))
}

/// Create an organization; the caller becomes its owner.
#[utoipa::path(post, path = "/v1/orgs", tag = "organizations", request_body = CreateOrg,
    responses((status = 201, body = Org), (status = 409, description = "slug_taken"), (status = 422)))]
async fn create_org(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    ApiJson(req): ApiJson<CreateOrg>,
) -> Result<Response, ApiError> {
    let org = service::create(&state, &u.principal, u.user_id, req).await?;
    Ok((StatusCode::CREATED, ApiJson(org)).into_response())
}

/// The caller's organizations.
#[utoipa::path(get, path = "/v1/orgs", tag = "organizations", responses((status = 200, body = Vec<Org>)))]
async fn list_orgs(State(state): State<Arc<AuthState>>, u: CurrentUser) -> Result<ApiJson<Vec<Org>>, ApiError> {
    service::list(&state, u.user_id).await.map(ApiJson)
}

/// One organization (members only).
#[utoipa::path(get, path = "/v1/orgs/{id}", tag = "organizations", params(("id" = String, Path)),
    responses((status = 200, body = Org), (status = 404)))]
async fn get_org(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path(id): Path<String>,
) -> Result<ApiJson<Org>, ApiError> {
    service::get(&state, u.user_id, org_id(&id)?).await.map(ApiJson)
}

/// Rename, re-slug or change the image (`org:sys_profile:manage`).
#[utoipa::path(patch, path = "/v1/orgs/{id}", tag = "organizations", params(("id" = String, Path)), request_body = PatchOrg,
    responses((status = 200, body = Org), (status = 403), (status = 404), (status = 409), (status = 422)))]
async fn patch_org(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PatchOrg>,
) -> Result<ApiJson<Org>, ApiError> {
    service::patch(&state, &u.principal, u.user_id, org_id(&id)?, req).await.map(ApiJson)
}

/// Delete an organization with what it shares (`org:sys_profile:delete`, `?confirm=true`).
#[utoipa::path(delete, path = "/v1/orgs/{id}", tag = "organizations", params(("id" = String, Path), ConfirmQuery),
    responses((status = 204), (status = 400, description = "confirmation_required"), (status = 403), (status = 404)))]
async fn delete_org(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path(id): Path<String>,
    Query(q): Query<ConfirmQuery>,
) -> Result<StatusCode, ApiError> {
    service::delete(&state, &u.principal, u.user_id, org_id(&id)?, q.confirm == Some(true)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Members (`org:sys_memberships:read`).
#[utoipa::path(get, path = "/v1/orgs/{id}/members", tag = "organizations", params(("id" = String, Path)),
    responses((status = 200, body = Vec<Member>), (status = 403), (status = 404)))]
async fn list_members(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path(id): Path<String>,
) -> Result<ApiJson<Vec<Member>>, ApiError> {
    service::members(&state, u.user_id, org_id(&id)?).await.map(ApiJson)
}

/// Change a member's role (`org:sys_memberships:manage`; owners alone touch owners).
#[utoipa::path(patch, path = "/v1/orgs/{id}/members/{user_id}", tag = "organizations",
    params(("id" = String, Path), ("user_id" = String, Path)), request_body = PatchMember,
    responses((status = 200, body = Member), (status = 403), (status = 404), (status = 409, description = "last_owner"), (status = 422)))]
async fn patch_member(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Path((id, user_id)): Path<(String, String)>,
    ApiJson(req): ApiJson<PatchMember>,
) -> Result<ApiJson<Member>, ApiError> {
    let (id, target) = (org_id(&id)?, id_of(&user_id, "member")?);
    match p.user_id() {
        Some(user) => service::set_member_role(&state, &p, user, id, target, &req.role).await,
        None => service::set_member_role_as_backend(&state, &p, id, target, &req.role).await,
    }
    .map(ApiJson)
}

/// Remove a member, or leave (your own id).
#[utoipa::path(delete, path = "/v1/orgs/{id}/members/{user_id}", tag = "organizations",
    params(("id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204), (status = 403), (status = 404), (status = 409, description = "last_owner")))]
async fn remove_member(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (id, target) = (org_id(&id)?, id_of(&user_id, "member")?);
    match p.user_id() {
        Some(user) => service::remove_member(&state, &p, user, id, target).await?,
        None => service::remove_member_as_backend(&state, &p, id, target).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Add a user straight to the organization, without an invitation (service keys
/// only, as Clerk's Backend API does; members invite instead).
#[utoipa::path(post, path = "/v1/orgs/{id}/members", tag = "organizations", params(("id" = String, Path)),
    request_body = AddMember,
    responses((status = 201, body = Member), (status = 403, description = "service_key_required"), (status = 404),
        (status = 409, description = "already_member"), (status = 422, description = "unknown_role")))]
async fn add_member(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AddMember>,
) -> Result<Response, ApiError> {
    let member = service::add_member(&state, &p, org_id(&id)?, req).await?;
    Ok((StatusCode::CREATED, ApiJson(member)).into_response())
}

/// The organization's roles and their permissions.
#[utoipa::path(get, path = "/v1/orgs/{id}/roles", tag = "organizations", params(("id" = String, Path)),
    responses((status = 200, body = Vec<Role>), (status = 404)))]
async fn list_roles(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path(id): Path<String>,
) -> Result<ApiJson<Vec<Role>>, ApiError> {
    service::roles(&state, u.user_id, org_id(&id)?).await.map(ApiJson)
}

/// Add a custom role (`org:sys_roles:manage`).
#[utoipa::path(post, path = "/v1/orgs/{id}/roles", tag = "organizations", params(("id" = String, Path)), request_body = CreateRole,
    responses((status = 201, body = Role), (status = 403), (status = 404), (status = 409), (status = 422)))]
async fn create_role(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CreateRole>,
) -> Result<Response, ApiError> {
    let role = service::create_role(&state, &u.principal, u.user_id, org_id(&id)?, req).await?;
    Ok((StatusCode::CREATED, ApiJson(role)).into_response())
}

/// Remove a custom role nobody holds (`org:sys_roles:manage`).
#[utoipa::path(delete, path = "/v1/orgs/{id}/roles/{key}", tag = "organizations", params(("id" = String, Path), ("key" = String, Path)),
    responses((status = 204), (status = 403), (status = 404), (status = 409, description = "role_in_use")))]
async fn delete_role(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    service::delete_role(&state, &u.principal, u.user_id, org_id(&id)?, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invitations (`org:sys_invitations:manage`).
#[utoipa::path(get, path = "/v1/orgs/{id}/invitations", tag = "organizations", params(("id" = String, Path)),
    responses((status = 200, body = Vec<Invitation>), (status = 403), (status = 404)))]
async fn list_invitations(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path(id): Path<String>,
) -> Result<ApiJson<Vec<Invitation>>, ApiError> {
    service::invitations(&state, u.user_id, org_id(&id)?).await.map(ApiJson)
}

/// Invite an email; the token is mailed, never returned (`org:sys_invitations:manage`).
#[utoipa::path(post, path = "/v1/orgs/{id}/invitations", tag = "organizations", params(("id" = String, Path)),
    request_body = CreateInvitation,
    responses((status = 201, body = Invitation), (status = 403), (status = 404), (status = 409, description = "invitation_pending"), (status = 422),
        (status = 429, description = "rate_limited: too many invitation mails from the caller or to the address")))]
async fn create_invitation(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CreateInvitation>,
) -> Result<Response, ApiError> {
    let inv = service::invite(&state, &u.principal, u.user_id, org_id(&id)?, req).await?;
    Ok((StatusCode::CREATED, ApiJson(inv)).into_response())
}

/// Revoke a pending invitation.
#[utoipa::path(post, path = "/v1/orgs/{id}/invitations/{invitation_id}/revoke", tag = "organizations",
    params(("id" = String, Path), ("invitation_id" = String, Path)), responses((status = 204), (status = 403), (status = 404)))]
async fn revoke_invitation(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path((id, inv)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    service::revoke_invitation(&state, &u.principal, u.user_id, org_id(&id)?, id_of(&inv, "invitation")?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a pending invitation again with a new token and expiry.
#[utoipa::path(post, path = "/v1/orgs/{id}/invitations/{invitation_id}/resend", tag = "organizations",
    params(("id" = String, Path), ("invitation_id" = String, Path)),
    responses((status = 200, body = Invitation), (status = 403), (status = 404),
        (status = 429, description = "rate_limited: too many invitation mails from the caller or to the address")))]
async fn resend_invitation(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path((id, inv)): Path<(String, String)>,
) -> Result<ApiJson<Invitation>, ApiError> {
    service::resend_invitation(&state, &u.principal, u.user_id, org_id(&id)?, id_of(&inv, "invitation")?)
        .await
        .map(ApiJson)
}

/// Accept an invitation (the signed-in user's verified email must be the invited one).
#[utoipa::path(post, path = "/v1/invitations/accept", tag = "organizations", request_body = InvitationToken,
    responses((status = 200, body = Org), (status = 403, description = "email_mismatch or email_not_verified"), (status = 404)))]
async fn accept_invitation(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    ApiJson(req): ApiJson<InvitationToken>,
) -> Result<ApiJson<Org>, ApiError> {
    let org = service::answer_invitation(&state, &u.principal, u.user_id, &req.token, true).await?;
    org.map(ApiJson).ok_or_else(|| ApiError::internal("accepted invitation without organization"))
}

/// What an invitation's token is for: the organization, the email, the role, and
/// whether that email has an account (sign in and accept) or not (sign up).
#[utoipa::path(post, path = "/v1/invitations/preview", tag = "organizations", request_body = InvitationToken,
    responses((status = 200, body = InvitationPreview), (status = 404)))]
async fn preview_invitation(
    State(state): State<Arc<AuthState>>,
    ApiJson(req): ApiJson<InvitationToken>,
) -> Result<ApiJson<InvitationPreview>, ApiError> {
    service::preview_invitation(&state, &req.token).await.map(ApiJson)
}

/// Create the invited account and join at once: the email is the invited one,
/// verified by the token; answers with the session (and its cookie).
#[utoipa::path(post, path = "/v1/invitations/sign-up", tag = "organizations", request_body = InvitationSignUp,
    responses((status = 201, body = crate::auth::types::AuthResponse), (status = 404), (status = 409, description = "email_taken"),
        (status = 422, description = "weak_password"), (status = 429, description = "rate_limited")))]
async fn sign_up_invited(
    State(state): State<Arc<AuthState>>,
    crate::auth::Peer(peer): crate::auth::Peer,
    headers: axum::http::HeaderMap,
    ApiJson(req): ApiJson<InvitationSignUp>,
) -> Result<Response, ApiError> {
    crate::auth::check_login_origin(&state, &headers)?;
    let (body, _) = service::sign_up_invited(&state, req, &crate::auth::client_info(&headers, peer)).await?;
    Ok(crate::auth::with_session(&state, StatusCode::CREATED, body))
}

/// Decline an invitation.
#[utoipa::path(post, path = "/v1/invitations/decline", tag = "organizations", request_body = InvitationToken,
    responses((status = 204), (status = 403), (status = 404)))]
async fn decline_invitation(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    ApiJson(req): ApiJson<InvitationToken>,
) -> Result<StatusCode, ApiError> {
    service::answer_invitation(&state, &u.principal, u.user_id, &req.token, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set the session's active organization (or none); returns an access token with
/// its claims (`org_id`, `org_slug`, `org_role`, `org_permissions`).
#[utoipa::path(put, path = "/v1/me/active-org", tag = "organizations", request_body = SetActiveOrg,
    responses((status = 200, body = TokenResponse), (status = 400, description = "session_required"), (status = 404)))]
async fn set_active_org(
    State(state): State<Arc<AuthState>>,
    Caller(p): Caller,
    ApiJson(req): ApiJson<SetActiveOrg>,
) -> Result<ApiJson<TokenResponse>, ApiError> {
    service::set_active(&state, &p, req.org_id).await.map(ApiJson)
}

/// The organization's verified domains.
#[utoipa::path(get, path = "/v1/orgs/{id}/domains", tag = "organizations", params(("id" = String, Path)),
    responses((status = 200, body = Vec<Domain>), (status = 404)))]
async fn list_domains(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path(id): Path<String>,
) -> Result<ApiJson<Vec<Domain>>, ApiError> {
    service::domains(&state, u.user_id, org_id(&id)?).await.map(ApiJson)
}

/// Add a verified domain: the caller's own verified email must be at it (`org:sys_memberships:manage`).
#[utoipa::path(post, path = "/v1/orgs/{id}/domains", tag = "organizations", params(("id" = String, Path)), request_body = CreateDomain,
    responses((status = 201, body = Domain), (status = 403, description = "domain_not_verified"), (status = 404), (status = 409, description = "domain_taken"), (status = 422)))]
async fn add_domain(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CreateDomain>,
) -> Result<Response, ApiError> {
    let d = service::add_domain(&state, &u.principal, u.user_id, org_id(&id)?, req).await?;
    Ok((StatusCode::CREATED, ApiJson(d)).into_response())
}

/// Remove a verified domain.
#[utoipa::path(delete, path = "/v1/orgs/{id}/domains/{domain}", tag = "organizations",
    params(("id" = String, Path), ("domain" = String, Path)), responses((status = 204), (status = 403), (status = 404)))]
async fn remove_domain(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path((id, domain)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    service::remove_domain(&state, &u.principal, u.user_id, org_id(&id)?, &domain).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Join through your verified email's domain, with the role the organization set.
#[utoipa::path(post, path = "/v1/orgs/{id}/join", tag = "organizations", params(("id" = String, Path)),
    responses((status = 200, body = Org), (status = 404)))]
async fn join_org(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
    Path(id): Path<String>,
) -> Result<ApiJson<Org>, ApiError> {
    service::join(&state, &u.principal, u.user_id, org_id(&id)?).await.map(ApiJson)
}

/// Organizations your verified email's domain lets you join.
#[utoipa::path(get, path = "/v1/me/org-suggestions", tag = "organizations", responses((status = 200, body = Vec<OrgSuggestion>)))]
async fn org_suggestions(
    State(state): State<Arc<AuthState>>,
    u: CurrentUser,
) -> Result<ApiJson<Vec<OrgSuggestion>>, ApiError> {
    service::suggestions(&state, u.user_id).await.map(ApiJson)
}
