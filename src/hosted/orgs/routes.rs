//! Handlers of the hosted organization pages under `/auth/orgs` and
//! `/auth/invitation`. Every page needs the session cookie (the invitation page
//! also works without one, for signing up); every post passes the same-origin
//! check and acts through the organizations service, whose membership and
//! permission checks answer 404 to strangers and 403 to members without the right.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use uuid::Uuid;

use super::super::account::{act_to, failure, session_or_sign_in};
use super::super::routes::{Page, PageForm, field, see_other, signed_in};
use crate::auth::service::Principal;
use crate::auth::{AuthState, Peer};
use crate::error::ApiError;
use crate::orgs::service as orgs;
use crate::orgs::types::{CreateInvitation, CreateOrg, InvitationSignUp, PatchOrg};

/// The organization pages.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<AuthState>: axum::extract::FromRef<S>,
{
    Router::new()
        .route("/auth/orgs", get(list_page).post(create))
        .route("/auth/orgs/{id}", get(org_page))
        .route("/auth/orgs/{id}/switch", post(switch))
        .route("/auth/orgs/{id}/invite", post(invite))
        .route("/auth/orgs/{id}/invitations/{inv}/revoke", post(revoke))
        .route("/auth/orgs/{id}/leave", post(leave))
        .route("/auth/orgs/{id}/members/{user}/{action}", post(member_action))
        .route("/auth/orgs/{id}/profile", post(profile))
        .route("/auth/orgs/{id}/delete", post(delete))
        .route("/auth/invitation", get(invitation_page))
        .route("/auth/invitation/accept", post(accept))
        .route("/auth/invitation/decline", post(decline))
        .route("/auth/invitation/sign-up", post(sign_up))
}

const SIGN_IN: &str = "/auth/sign-in?redirect_url=%2Fauth%2Forgs";

use crate::auth::service::require_user as user_of;

/// A posted form's action as the signed-in user (the same-origin check and the
/// session first): a 303 to the page `action` names, or the failure page.
async fn act(
    state: &AuthState,
    headers: &HeaderMap,
    action: impl AsyncFnOnce(&AuthState, &Principal, Uuid) -> Result<String, ApiError>,
) -> Response {
    act_to(state, headers, SIGN_IN, async move |p| Ok(see_other(&action(state, p, user_of(p)?).await?))).await
}

fn org_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("organization not found"))
}

async fn list(state: &AuthState, p: &Principal) -> Result<Page, ApiError> {
    let user = user_of(p)?;
    let mut page = Page::new("Organizations");
    let active = match p {
        Principal::User { session_id, .. } => crate::auth::db::active_org_claims(&state.pool, *session_id).await?,
        _ => None,
    };
    let mine = orgs::list(state, user).await?;
    page.message = Some(if mine.is_empty() {
        "You are not in an organization yet.".into()
    } else {
        format!("You are in {} organization(s).", mine.len())
    });
    for o in &mine {
        let is_active = active.as_ref().is_some_and(|a| a.id == o.id);
        page.items.get_or_insert(("organizations", Vec::new())).1.push(format!(
            "{} ({}){}",
            o.name,
            o.role,
            if is_active { " · active" } else { "" }
        ));
        if !is_active {
            page.more.push(PageForm::button(
                &format!("/auth/orgs/{}/switch", o.id),
                Vec::new(),
                format!("Switch to {}", o.name),
            ));
        }
        page.links.push((format!("/auth/orgs/{}", o.id), format!("Manage {}", o.name)));
    }
    page.form = Some(PageForm {
        action: "/auth/orgs".into(),
        hidden: Vec::new(),
        fields: vec![field("name", "New organization's name", "text", "organization", "")],
        submit: "Create organization".into(),
    });
    Ok(page)
}

async fn list_page(State(state): State<Arc<AuthState>>, headers: HeaderMap) -> Response {
    let p = match session_or_sign_in(&state, &headers, SIGN_IN).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match list(&state, &p).await {
        Ok(page) => page.respond(StatusCode::OK),
        Err(e) => failure(e),
    }
}

#[derive(Debug, Deserialize)]
struct NameForm {
    name: String,
}

async fn create(State(state): State<Arc<AuthState>>, headers: HeaderMap, Form(f): Form<NameForm>) -> Response {
    act(&state, &headers, async |s, p, user| {
        let o = orgs::create(s, p, user, CreateOrg { name: f.name, slug: None, image_url: None }).await?;
        Ok(format!("/auth/orgs/{}", o.id))
    })
    .await
}

async fn switch(State(state): State<Arc<AuthState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    act(&state, &headers, async |s, p, _| {
        orgs::set_active(s, p, Some(org_id(&id)?)).await?;
        Ok("/auth/orgs".into())
    })
    .await
}

async fn org_view(state: &AuthState, p: &Principal, id: Uuid) -> Result<Page, ApiError> {
    let user = user_of(p)?;
    let org = orgs::get(state, user, id).await?;
    let mut page = Page::new("Organization");
    page.message = Some(format!("{} ({}), you are {}.", org.name, org.slug, org.role));
    let can = |perm: &str| org.permissions.iter().any(|x| x == perm);
    // Only owners make owners (the service refuses it to others), so only they are offered it.
    let owner = org.role == "org:owner";
    let roles: Vec<(String, String)> = orgs::roles(state, user, id)
        .await?
        .into_iter()
        .filter(|r| owner || r.key != "org:owner")
        .map(|r| (r.key.clone(), r.key))
        .collect();
    if can("org:sys_memberships:read") {
        let members = orgs::members(state, user, id).await?;
        for m in &members {
            let who = m.email.clone().unwrap_or_else(|| m.user_id.to_string());
            page.items.get_or_insert(("members", Vec::new())).1.push(format!("{who} · {}", m.role));
            // Managers change roles and remove members; the service keeps the owner rule.
            if can("org:sys_memberships:manage") && m.user_id != user && (owner || m.role != "org:owner") {
                page.more.push(PageForm {
                    action: format!("/auth/orgs/{id}/members/{}/role", m.user_id),
                    hidden: Vec::new(),
                    fields: vec![field("role", "Role", "text", "off", &m.role).choose(roles.clone())],
                    submit: format!("Change the role of {who}"),
                });
                page.more.push(PageForm::button(
                    &format!("/auth/orgs/{id}/members/{}/remove", m.user_id),
                    Vec::new(),
                    format!("Remove {who}"),
                ));
            }
        }
    }
    if can("org:sys_invitations:manage") {
        page.form = Some(PageForm {
            action: format!("/auth/orgs/{id}/invite"),
            hidden: Vec::new(),
            fields: vec![
                field("email", "Invite by email", "email", "off", ""),
                field("role", "Role", "text", "off", "org:member").choose(roles.clone()),
            ],
            submit: "Send invitation".into(),
        });
        for inv in orgs::invitations(state, user, id).await?.into_iter().filter(|i| i.status == "pending") {
            page.more.push(PageForm::button(
                &format!("/auth/orgs/{id}/invitations/{}/revoke", inv.id),
                Vec::new(),
                format!("Revoke the invitation of {} ({})", inv.email, inv.role),
            ));
        }
    }
    if can("org:sys_profile:manage") {
        page.more.push(PageForm {
            action: format!("/auth/orgs/{id}/profile"),
            hidden: Vec::new(),
            fields: vec![
                field("name", "Name", "text", "organization", &org.name),
                field("slug", "Slug", "text", "off", &org.slug),
            ],
            submit: "Save name and slug".into(),
        });
    }
    if can("org:sys_profile:delete") {
        page.more.push(PageForm {
            action: format!("/auth/orgs/{id}/delete"),
            hidden: Vec::new(),
            fields: vec![field(
                "confirm",
                "Type the slug to delete the organization and what it shares",
                "text",
                "off",
                "",
            )],
            submit: "Delete this organization".into(),
        });
    }
    page.more.push(PageForm::button(&format!("/auth/orgs/{id}/leave"), Vec::new(), "Leave this organization"));
    page.links = vec![("/auth/orgs".into(), "All organizations".into())];
    Ok(page)
}

async fn org_page(State(state): State<Arc<AuthState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let p = match session_or_sign_in(&state, &headers, SIGN_IN).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let done = async { org_view(&state, &p, org_id(&id)?).await };
    match done.await {
        Ok(page) => page.respond(StatusCode::OK),
        Err(e) => failure(e),
    }
}

#[derive(Debug, Deserialize)]
struct InviteForm {
    email: String,
    #[serde(default)]
    role: Option<String>,
}

async fn invite(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<InviteForm>,
) -> Response {
    act(&state, &headers, async |s, p, user| {
        let org = org_id(&id)?;
        let req =
            CreateInvitation { email: f.email, role: f.role.filter(|r| !r.trim().is_empty()), redirect_url: None };
        orgs::invite(s, p, user, org, req).await?;
        Ok(format!("/auth/orgs/{org}"))
    })
    .await
}

async fn revoke(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    Path((id, inv)): Path<(String, String)>,
) -> Response {
    act(&state, &headers, async |s, p, user| {
        let org = org_id(&id)?;
        let inv = Uuid::parse_str(&inv).map_err(|_| ApiError::not_found("no such invitation"))?;
        orgs::revoke_invitation(s, p, user, org, inv).await?;
        Ok(format!("/auth/orgs/{org}"))
    })
    .await
}

async fn leave(State(state): State<Arc<AuthState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    act(&state, &headers, async |s, p, user| {
        orgs::remove_member(s, p, user, org_id(&id)?, user).await?;
        Ok("/auth/orgs".into())
    })
    .await
}

#[derive(Debug, Deserialize)]
struct RoleForm {
    #[serde(default)]
    role: Option<String>,
}

/// Changes a member's role or removes them (the service checks the permission and the owner rule).
async fn member_action(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    Path((id, target, action)): Path<(String, String, String)>,
    Form(f): Form<RoleForm>,
) -> Response {
    act(&state, &headers, async |s, p, user| {
        let org = org_id(&id)?;
        let target = Uuid::parse_str(&target).map_err(|_| ApiError::not_found("member not found"))?;
        match (action.as_str(), f.role.as_deref().map(str::trim)) {
            ("role", Some(role)) if !role.is_empty() => {
                orgs::set_member_role(s, p, user, org, target, role).await?;
            }
            ("role", _) => return Err(ApiError::unprocessable("invalid_role", "choose a role")),
            ("remove", _) => orgs::remove_member(s, p, user, org, target).await?,
            _ => return Err(ApiError::not_found("no route for this path")),
        }
        Ok(format!("/auth/orgs/{org}"))
    })
    .await
}

#[derive(Debug, Deserialize)]
struct ProfileForm {
    name: String,
    slug: String,
}

async fn profile(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ProfileForm>,
) -> Response {
    act(&state, &headers, async |s, p, user| {
        let req = PatchOrg { name: Some(f.name), slug: Some(f.slug.trim().to_string()), image_url: None };
        let o = orgs::patch(s, p, user, org_id(&id)?, req).await?;
        Ok(format!("/auth/orgs/{}", o.id))
    })
    .await
}

#[derive(Debug, Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    confirm: String,
}

/// Deletes the organization once its slug is typed.
async fn delete(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ConfirmForm>,
) -> Response {
    act(&state, &headers, async |s, p, user| {
        let org = org_id(&id)?;
        let slug = orgs::get(s, user, org).await?.slug;
        orgs::delete(s, p, user, org, f.confirm.trim() == slug).await.map_err(|e| {
            if e.code == "confirmation_required" {
                ApiError::bad_request("confirmation_required", format!("type the slug ({slug}) to delete it"))
            } else {
                e
            }
        })?;
        Ok("/auth/orgs".into())
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn token_hidden(token: &str) -> Vec<(String, String)> {
    vec![("token".to_string(), token.to_string())]
}

/// The page behind an invitation's link: accept or decline when signed in as the
/// invited email; else sign up with it (joining at once), or sign in first.
async fn invitation_view(state: &AuthState, headers: &HeaderMap, token: &str) -> Result<Page, ApiError> {
    let inv = orgs::preview_invitation(state, token).await?;
    let mut page = Page::new("Invitation");
    page.message = Some(format!("{} is invited to join {} as {}.", inv.email, inv.organization, inv.role));
    let me = match crate::auth::cookie_value(headers, crate::auth::SESSION_COOKIE) {
        Some(t) => crate::auth::service::resolve_session(state, t, crate::auth::Via::Cookie).await.ok(),
        None => None,
    };
    let here: String =
        url::form_urlencoded::byte_serialize(format!("/auth/invitation?token={token}").as_bytes()).collect();
    match me {
        Some(_) => {
            page.form = Some(PageForm::button("/auth/invitation/accept", token_hidden(token), "Accept"));
            page.more.push(PageForm::button("/auth/invitation/decline", token_hidden(token), "Decline"));
        }
        None if !inv.account_exists => {
            page.form = Some(PageForm {
                action: "/auth/invitation/sign-up".into(),
                hidden: token_hidden(token),
                fields: vec![
                    field("name", "Your name (optional)", "text", "name", "").optional(),
                    field("password", "Choose a password", "password", "new-password", ""),
                ],
                submit: "Create account and join".into(),
            });
        }
        None => {
            page.links.push((format!("/auth/sign-in?redirect_url={here}"), "Sign in to accept".into()));
        }
    }
    Ok(page)
}

async fn invitation_page(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    let Some(token) = q.token.filter(|t| !t.is_empty()) else {
        return failure(ApiError::not_found("this link has no invitation token"));
    };
    match invitation_view(&state, &headers, &token).await {
        Ok(page) => page.respond(StatusCode::OK),
        Err(e) => failure(e),
    }
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    token: String,
}

async fn answer(state: &AuthState, headers: &HeaderMap, token: &str, accept: bool) -> Response {
    act(state, headers, async |s, p, user| {
        Ok(match orgs::answer_invitation(s, p, user, token, accept).await? {
            Some(org) => format!("/auth/orgs/{}", org.id),
            None => "/auth/orgs".into(),
        })
    })
    .await
}

async fn accept(State(state): State<Arc<AuthState>>, headers: HeaderMap, Form(f): Form<TokenForm>) -> Response {
    answer(&state, &headers, &f.token, true).await
}

async fn decline(State(state): State<Arc<AuthState>>, headers: HeaderMap, Form(f): Form<TokenForm>) -> Response {
    answer(&state, &headers, &f.token, false).await
}

#[derive(Debug, Deserialize)]
struct SignUpForm {
    token: String,
    password: String,
    #[serde(default)]
    name: Option<String>,
}

async fn sign_up(
    State(state): State<Arc<AuthState>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(f): Form<SignUpForm>,
) -> Response {
    if let Err(e) = crate::auth::check_login_origin(&state, &headers) {
        return failure(e);
    }
    let req = InvitationSignUp { token: f.token, password: f.password, name: f.name.filter(|n| !n.trim().is_empty()) };
    match orgs::sign_up_invited(&state, req, &crate::auth::client_info(&headers, peer)).await {
        Ok((body, org)) => signed_in(&state, &body.session_token, Some(&format!("/auth/orgs/{org}"))),
        Err(e) => failure(e),
    }
}
