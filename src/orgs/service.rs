//! The organization rules: who may do what (membership else 404, permission else
//! 403), the owner rule (an organization always keeps an owner; only owners make
//! or unmake owners), invitations bound to a verified email, the active
//! organization of a session, and an audit row for every change.

use sqlx::PgPool;
use uuid::Uuid;

use super::db::{self, OrgRow};
use super::types::*;
use crate::auth::service::Principal;
use crate::auth::types::{AuthResponse, TokenResponse};
use crate::auth::{AuthState, tokens};
use crate::error::ApiError;

/// How long an invitation stays valid.
const INVITATION_TTL_SECS: f64 = 7.0 * 86_400.0;

/// Invitation mails one member may send per rate window (`auth::service::IP_WINDOW`).
const INVITATIONS_PER_WINDOW: i32 = 100;

/// Keeps invitation mails within budget: per inviter, and per recipient (the
/// budget every mail of auth to that address shares), so nobody turns
/// invitations into a way to flood a mailbox. 429 `rate_limited` past either.
async fn mail_budget(state: &AuthState, inviter: Uuid, email: &str) -> Result<(), ApiError> {
    let sent =
        crate::auth::db::hit_window(&state.pool, &format!("invite:{inviter}"), crate::auth::service::IP_WINDOW).await?;
    if sent > INVITATIONS_PER_WINDOW || !crate::auth::email::within_account_budget(state, email).await? {
        return Err(ApiError::new(
            http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many invitation mails (from you, or to this address); try again later",
        ));
    }
    Ok(())
}

fn not_found() -> ApiError {
    ApiError::not_found("organization not found")
}

fn forbidden(permission: &str) -> ApiError {
    ApiError::forbidden(format!("your role lacks {permission}")).with_code("insufficient_permission")
}

fn view(r: OrgRow) -> Org {
    Org {
        id: r.id,
        name: r.name,
        slug: r.slug,
        image_url: r.image_url,
        role: r.role,
        permissions: r.permissions,
        created_at: r.created_at,
    }
}

/// `user`'s membership of `org` with `permission` (404 for non-members, 403
/// without the permission).
async fn member_with(pool: &PgPool, user: Uuid, org: Uuid, permission: Option<&str>) -> Result<OrgRow, ApiError> {
    let row = db::org_for(pool, user, org).await?.ok_or_else(not_found)?;
    if let Some(p) = permission
        && !row.permissions.iter().any(|x| x == p)
    {
        return Err(forbidden(p));
    }
    Ok(row)
}

/// A slug from a name: lowercase letters and digits, runs of anything else as one `-`.
pub fn slugify(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let out: String = out.trim_end_matches('-').chars().take(63).collect();
    if out.is_empty() { "org".into() } else { out.trim_end_matches('-').to_string() }
}

fn check_slug(slug: &str) -> Result<(), ApiError> {
    let ok = !slug.is_empty()
        && slug.len() <= 63
        && slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_slug",
            "a slug is 1–63 lowercase letters, digits and '-', not starting with '-'",
        ))
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable("invalid_name", "a name is 1 to 200 characters"));
    }
    Ok(())
}

fn check_image(url: &str) -> Result<(), ApiError> {
    let ok = url.len() <= 2048 && url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if ok { Ok(()) } else { Err(ApiError::unprocessable("invalid_image_url", "image_url must be an http(s) URL")) }
}

fn slug_conflict(e: sqlx::Error) -> ApiError {
    if db::slug_taken(&e) { ApiError::conflict("slug_taken", "another organization has this slug") } else { e.into() }
}

/// Who makes a change, as the audit log and the webhook event name them: a
/// member's principal, or the admin console's operator, who acts on any
/// organization under the same owner rule.
pub struct By {
    actor: String,
    user: Option<Uuid>,
}

impl By {
    /// The admin console's operator `admin` (a user id).
    pub fn operator(admin: Uuid) -> By {
        By { actor: format!("admin:{admin}"), user: None }
    }
}

impl From<&Principal> for By {
    fn from(p: &Principal) -> By {
        By { actor: p.actor(), user: p.user_id() }
    }
}

/// Records a change in the transaction that makes it: the audit row and, for the
/// changes apps hear of, the webhook event in the Standard Webhooks outbox that
/// connections use. A change that rolls back leaves neither; one that commits has both.
async fn audit(
    tx: &mut sqlx::PgConnection,
    p: &Principal,
    action: &str,
    org: Uuid,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    audit_by(tx, &By::from(p), action, org, detail).await
}

async fn audit_by(
    tx: &mut sqlx::PgConnection,
    by: &By,
    action: &str,
    org: Uuid,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    audit_as(tx, &by.actor, by.user, action, org, detail).await
}

/// [`audit`] for an actor named directly (a user who has no session yet).
async fn audit_as(
    tx: &mut sqlx::PgConnection,
    actor: &str,
    user: Option<Uuid>,
    action: &str,
    org: Uuid,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    crate::audit::record(&mut *tx, actor, user, action, Some(&org.to_string()), detail.clone()).await?;
    if let Some(event) = webhook_event(action) {
        let mut data = serde_json::json!({"organization_id": org, "actor": actor});
        if let (Some(d), Some(extra)) = (data.as_object_mut(), detail.as_object()) {
            d.extend(extra.clone());
        }
        crate::connections::webhooks::emit(tx, event, data).await?;
    }
    Ok(())
}

/// The webhook event type of an audited action (Clerk's names).
fn webhook_event(action: &str) -> Option<&'static str> {
    Some(match action {
        "org.create" => "organization.created",
        "org.update" => "organization.updated",
        "org.delete" => "organization.deleted",
        "org.member_role" => "organizationMembership.updated",
        "org.member_remove" | "org.member_leave" => "organizationMembership.deleted",
        "org.invitation_accept" => "organizationMembership.created",
        "org.invitation_create" => "organizationInvitation.created",
        "org.invitation_revoke" => "organizationInvitation.revoked",
        "org.invitation_decline" => "organizationInvitation.declined",
        "org.invitation_resend" => "organizationInvitation.resent",
        "org.role_create" => "role.created",
        "org.role_delete" => "role.deleted",
        "org.domain_join" | "org.member_add" => "organizationMembership.created",
        "org.domain_add" => "organizationDomain.created",
        "org.domain_remove" => "organizationDomain.deleted",
        _ => return None,
    })
}

/// The user `id`, or 404.
async fn user_row(state: &AuthState, id: Uuid) -> Result<crate::auth::db::UserRow, ApiError> {
    crate::auth::db::user_by_id(&state.pool, id).await?.ok_or_else(|| ApiError::not_found("user not found"))
}

/// Creates an organization; the creator is its owner.
pub async fn create(state: &AuthState, p: &Principal, user: Uuid, req: CreateOrg) -> Result<Org, ApiError> {
    check_name(&req.name)?;
    let slug = match req.slug {
        Some(s) => {
            check_slug(&s)?;
            s
        }
        None => slugify(&req.name),
    };
    if let Some(u) = &req.image_url {
        check_image(u)?;
    }
    let mut tx = state.pool.begin().await?;
    let id =
        db::create(&mut tx, user, req.name.trim(), &slug, req.image_url.as_deref()).await.map_err(slug_conflict)?;
    audit(&mut tx, p, "org.create", id, serde_json::json!({"name": req.name.trim(), "slug": slug})).await?;
    tx.commit().await?;
    get(state, user, id).await
}

/// The caller's organizations.
pub async fn list(state: &AuthState, user: Uuid) -> Result<Vec<Org>, ApiError> {
    Ok(db::orgs_of(&state.pool, user).await?.into_iter().map(view).collect())
}

/// One of the caller's organizations.
pub async fn get(state: &AuthState, user: Uuid, id: Uuid) -> Result<Org, ApiError> {
    member_with(&state.pool, user, id, None).await.map(view)
}

/// Renames, re-slugs or re-images an organization (`org:sys_profile:manage`).
pub async fn patch(state: &AuthState, p: &Principal, user: Uuid, id: Uuid, req: PatchOrg) -> Result<Org, ApiError> {
    member_with(&state.pool, user, id, Some("org:sys_profile:manage")).await?;
    if let Some(n) = &req.name {
        check_name(n)?;
    }
    if let Some(s) = &req.slug {
        check_slug(s)?;
    }
    if let Some(Some(u)) = &req.image_url {
        check_image(u)?;
    }
    let mut tx = state.pool.begin().await?;
    db::update(
        &mut *tx,
        id,
        req.name.as_deref().map(str::trim),
        req.slug.as_deref(),
        req.image_url.as_ref().map(|o| o.as_deref()),
    )
    .await
    .map_err(slug_conflict)?;
    audit(&mut tx, p, "org.update", id, serde_json::json!({"name": req.name, "slug": req.slug})).await?;
    tx.commit().await?;
    get(state, user, id).await
}

/// Deletes an organization and what it shares (`org:sys_profile:delete`, `?confirm=true`).
pub async fn delete(state: &AuthState, p: &Principal, user: Uuid, id: Uuid, confirm: bool) -> Result<(), ApiError> {
    member_with(&state.pool, user, id, Some("org:sys_profile:delete")).await?;
    if !confirm {
        return Err(ApiError::bad_request(
            "confirmation_required",
            "deleting an organization deletes its members, roles and invitations: repeat with ?confirm=true",
        ));
    }
    delete_by(state, &By::from(p), id).await
}

/// Deletes an organization and what it shares, for whoever was let do it.
pub async fn delete_by(state: &AuthState, by: &By, id: Uuid) -> Result<(), ApiError> {
    let mut tx = state.pool.begin().await?;
    audit_by(&mut tx, by, "org.delete", id, serde_json::json!({})).await?;
    db::delete(&mut *tx, id).await?;
    tx.commit().await?;
    Ok(())
}

/// Members (`org:sys_memberships:read`).
pub async fn members(state: &AuthState, user: Uuid, id: Uuid) -> Result<Vec<Member>, ApiError> {
    member_with(&state.pool, user, id, Some("org:sys_memberships:read")).await?;
    Ok(db::members(&state.pool, id).await?.into_iter().map(Member::from).collect())
}

/// One member as the API shows it, or 404.
async fn member_view(state: &AuthState, id: Uuid, user: Uuid) -> Result<Member, ApiError> {
    db::member(&state.pool, id, user).await?.map(Member::from).ok_or_else(|| ApiError::not_found("member not found"))
}

/// Changes a member's role (`org:sys_memberships:manage`; owners alone make or
/// unmake owners; the last owner stays one).
pub async fn set_member_role(
    state: &AuthState,
    p: &Principal,
    user: Uuid,
    id: Uuid,
    target: Uuid,
    role: &str,
) -> Result<Member, ApiError> {
    let me = member_with(&state.pool, user, id, Some("org:sys_memberships:manage")).await?;
    set_role_by(state, &By::from(p), me.role == "org:owner", id, target, role).await
}

/// Changes a member's role for whoever was let manage members; `owner_rights`
/// lets them make or unmake owners. The last owner stays one.
pub async fn set_role_by(
    state: &AuthState,
    by: &By,
    owner_rights: bool,
    id: Uuid,
    target: Uuid,
    role: &str,
) -> Result<Member, ApiError> {
    if !db::role_exists(&state.pool, id, role).await? {
        return Err(ApiError::unprocessable("unknown_role", format!("this organization has no role {role:?}")));
    }
    let mut tx = state.pool.begin().await?;
    db::lock_members(&mut tx, id).await?;
    let current = db::role_of(&mut tx, id, target).await?.ok_or_else(|| ApiError::not_found("member not found"))?;
    if (current == "org:owner" || role == "org:owner") && !owner_rights {
        return Err(forbidden("the owner role (only owners make or unmake owners)"));
    }
    if current == "org:owner" && role != "org:owner" && db::owners(&mut tx, id).await? <= 1 {
        return Err(ApiError::conflict("last_owner", "an organization keeps at least one owner"));
    }
    db::set_role(&mut tx, id, target, role).await?;
    audit_by(&mut tx, by, "org.member_role", id, serde_json::json!({"user": target, "before": current, "after": role}))
        .await?;
    tx.commit().await?;
    member_view(state, id, target).await
}

/// Removes a member (`org:sys_memberships:manage`), or the caller leaves; the
/// last owner cannot go. Access ends at once: the organization leaves the
/// member's sessions and their next token has no claims for it.
pub async fn remove_member(
    state: &AuthState,
    p: &Principal,
    user: Uuid,
    id: Uuid,
    target: Uuid,
) -> Result<(), ApiError> {
    let me = member_with(&state.pool, user, id, None).await?;
    if target != user && !me.permissions.iter().any(|x| x == "org:sys_memberships:manage") {
        return Err(forbidden("org:sys_memberships:manage"));
    }
    remove_by(state, &By::from(p), target == user || me.role == "org:owner", id, target).await
}

/// Removes a member for whoever was let do it (a member leaving is one);
/// `owner_rights` lets them remove an owner. The last owner cannot go.
pub async fn remove_by(state: &AuthState, by: &By, owner_rights: bool, id: Uuid, target: Uuid) -> Result<(), ApiError> {
    let mut tx = state.pool.begin().await?;
    db::lock_members(&mut tx, id).await?;
    let current = db::role_of(&mut tx, id, target).await?.ok_or_else(|| ApiError::not_found("member not found"))?;
    if current == "org:owner" {
        if !owner_rights {
            return Err(forbidden("the owner role (only owners remove owners)"));
        }
        if db::owners(&mut tx, id).await? <= 1 {
            return Err(ApiError::conflict("last_owner", "an organization keeps at least one owner"));
        }
    }
    db::remove_member(&mut tx, id, target).await?;
    let action = if by.user == Some(target) { "org.member_leave" } else { "org.member_remove" };
    audit_by(&mut tx, by, action, id, serde_json::json!({"user": target, "role": current})).await?;
    tx.commit().await?;
    crate::auth::service::changed(state, format!("u:{target}")).await
}

/// The organization `id` exists (404 otherwise): what an operator acting on any
/// organization checks first.
async fn exists(state: &AuthState, id: Uuid) -> Result<(), ApiError> {
    db::org_name(&state.pool, id).await?.map(|_| ()).ok_or_else(not_found)
}

/// Adds a user straight to an organization, without an invitation. Only the
/// app's backend does this (a service key, as Clerk's Backend API does); a
/// member is told to invite, a stranger sees nothing.
pub async fn add_member(state: &AuthState, p: &Principal, id: Uuid, req: AddMember) -> Result<Member, ApiError> {
    if !p.is_service() {
        let user = crate::auth::service::require_user(p)?;
        member_with(&state.pool, user, id, None).await?;
        return Err(ApiError::forbidden("members join by invitation; adding one directly needs a service key")
            .with_code("service_key_required"));
    }
    exists(state, id).await?;
    let role = req.role.unwrap_or_else(|| "org:member".into());
    if !db::role_exists(&state.pool, id, &role).await? {
        return Err(ApiError::unprocessable("unknown_role", format!("this organization has no role {role:?}")));
    }
    user_row(state, req.user_id).await?;
    let mut tx = state.pool.begin().await?;
    if !db::add_member(&mut *tx, id, req.user_id, &role).await? {
        return Err(ApiError::conflict("already_member", "the user is already a member; change their role instead"));
    }
    audit(&mut tx, p, "org.member_add", id, serde_json::json!({"user": req.user_id, "role": role})).await?;
    tx.commit().await?;
    member_view(state, id, req.user_id).await
}

/// Changes a member's role as the app's backend (a service key with no user
/// named): any organization, the owner rule kept.
pub async fn set_member_role_as_backend(
    state: &AuthState,
    p: &Principal,
    id: Uuid,
    target: Uuid,
    role: &str,
) -> Result<Member, ApiError> {
    exists(state, id).await?;
    set_role_by(state, &By::from(p), true, id, target, role).await
}

/// Removes a member as the app's backend (a service key with no user named):
/// any organization, the last owner kept.
pub async fn remove_member_as_backend(
    state: &AuthState,
    p: &Principal,
    id: Uuid,
    target: Uuid,
) -> Result<(), ApiError> {
    exists(state, id).await?;
    remove_by(state, &By::from(p), true, id, target).await
}

/// Every role of the organization (any member).
pub async fn roles(state: &AuthState, user: Uuid, id: Uuid) -> Result<Vec<Role>, ApiError> {
    member_with(&state.pool, user, id, None).await?;
    Ok(db::roles(&state.pool, id)
        .await?
        .into_iter()
        .map(|(key, builtin, permissions)| Role { key, builtin, permissions })
        .collect())
}

fn check_permission(p: &str) -> bool {
    let parts: Vec<&str> = p.split(':').collect();
    parts.len() == 3
        && parts[0] == "org"
        && !parts[1].starts_with("sys_")
        && parts[1..].iter().all(|s| {
            !s.is_empty()
                && s.len() <= 40
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Adds a custom role (`org:sys_roles:manage`).
pub async fn create_role(
    state: &AuthState,
    p: &Principal,
    user: Uuid,
    id: Uuid,
    req: CreateRole,
) -> Result<Role, ApiError> {
    member_with(&state.pool, user, id, Some("org:sys_roles:manage")).await?;
    let key_ok = req.key.strip_prefix("org:").is_some_and(|k| {
        !k.is_empty() && k.len() <= 40 && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }) && !["org:owner", "org:admin", "org:member"].contains(&req.key.as_str());
    if !key_ok {
        return Err(ApiError::unprocessable(
            "invalid_role_key",
            "a role key is `org:` and 1–40 of a-z 0-9 _, not a built-in one",
        ));
    }
    if req.name.trim().is_empty() || req.name.chars().count() > 100 {
        return Err(ApiError::unprocessable("invalid_name", "a role name is 1 to 100 characters"));
    }
    if req.permissions.len() > 100 || !req.permissions.iter().all(|x| check_permission(x)) {
        return Err(ApiError::unprocessable(
            "invalid_permissions",
            "permissions look like org:<feature>:<action> (system permissions org:sys_* belong to built-in roles)",
        ));
    }
    let mut tx = state.pool.begin().await?;
    if !db::create_role(&mut *tx, id, &req.key, req.name.trim(), &req.permissions).await? {
        return Err(ApiError::conflict("role_exists", "the organization has a role with this key"));
    }
    audit(&mut tx, p, "org.role_create", id, serde_json::json!({"key": req.key, "permissions": req.permissions}))
        .await?;
    tx.commit().await?;
    Ok(Role { key: req.key, builtin: false, permissions: req.permissions })
}

/// Removes a custom role nobody holds (`org:sys_roles:manage`).
pub async fn delete_role(state: &AuthState, p: &Principal, user: Uuid, id: Uuid, key: &str) -> Result<(), ApiError> {
    member_with(&state.pool, user, id, Some("org:sys_roles:manage")).await?;
    let mut tx = state.pool.begin().await?;
    match db::delete_role(&mut tx, id, key).await? {
        None => Err(ApiError::not_found("role not found")),
        Some(false) => Err(ApiError::conflict("role_in_use", "a member or a pending invitation holds this role")),
        Some(true) => {
            audit(&mut tx, p, "org.role_delete", id, serde_json::json!({"key": key})).await?;
            Ok(tx.commit().await?)
        }
    }
}

fn invitation(r: db::InvitationRow) -> Invitation {
    Invitation {
        id: r.id,
        email: r.email,
        role: r.role,
        status: r.status,
        expires_at: r.expires_at,
        created_at: r.created_at,
    }
}

/// Mails an invitation's token (with a link to `redirect` when given).
async fn mail_invitation(
    state: &AuthState,
    org: &OrgRow,
    email: &str,
    token: &str,
    redirect: Option<&str>,
) -> Result<(), ApiError> {
    // The app's page when it named one, else the hosted invitation page.
    let link = match redirect {
        Some(r) => {
            let sep = if r.contains('?') { '&' } else { '?' };
            format!("{r}{sep}invitation_token={token}")
        }
        None => format!("{}/auth/invitation?token={token}", state.config.public_url.as_str().trim_end_matches('/')),
    };
    let body = format!(
        "You are invited to join {} on {}.\n\nAccept by opening this link:\n{link}\n\n\
         Or give the app this invitation token (valid 7 days):\n{token}\n",
        org.name, state.config.public_url
    );
    let link = Some(link);
    let mail =
        crate::mail::Mail { user_id: None, to: email.to_string(), subject: format!("Join {}", org.name), body, link };
    state.mailer.send(&state.pool, mail).await.map_err(ApiError::internal)
}

/// The organization's invitations (`org:sys_invitations:manage`).
pub async fn invitations(state: &AuthState, user: Uuid, id: Uuid) -> Result<Vec<Invitation>, ApiError> {
    member_with(&state.pool, user, id, Some("org:sys_invitations:manage")).await?;
    Ok(db::invitations(&state.pool, id).await?.into_iter().map(invitation).collect())
}

/// Invites an email (`org:sys_invitations:manage`; only owners invite owners).
pub async fn invite(
    state: &AuthState,
    p: &Principal,
    user: Uuid,
    id: Uuid,
    req: CreateInvitation,
) -> Result<Invitation, ApiError> {
    let me = member_with(&state.pool, user, id, Some("org:sys_invitations:manage")).await?;
    let email = crate::auth::service::validate_email(&req.email)?;
    let role = req.role.unwrap_or_else(|| "org:member".into());
    if !db::role_exists(&state.pool, id, &role).await? {
        return Err(ApiError::unprocessable("unknown_role", format!("this organization has no role {role:?}")));
    }
    if role == "org:owner" && me.role != "org:owner" {
        return Err(forbidden("the owner role (only owners invite owners)"));
    }
    let redirect = req
        .redirect_url
        .filter(|r| !r.is_empty())
        .map(|r| crate::auth::service::safe_redirect(&state.config, &r))
        .transpose()?;
    mail_budget(state, user, &email).await?;
    let token = tokens::random_token("oin_");
    let mut tx = state.pool.begin().await?;
    let row =
        db::create_invitation(&mut *tx, id, &email, &role, &tokens::hash_token(&token), INVITATION_TTL_SECS, user)
            .await?
            .ok_or_else(|| ApiError::conflict("invitation_pending", "this email already has a pending invitation"))?;
    audit(&mut tx, p, "org.invitation_create", id, serde_json::json!({"email": email, "role": role})).await?;
    tx.commit().await?;
    mail_invitation(state, &me, &email, &token, redirect.as_deref()).await?;
    Ok(invitation(row))
}

/// Revokes a pending invitation (`org:sys_invitations:manage`).
pub async fn revoke_invitation(
    state: &AuthState,
    p: &Principal,
    user: Uuid,
    id: Uuid,
    inv: Uuid,
) -> Result<(), ApiError> {
    member_with(&state.pool, user, id, Some("org:sys_invitations:manage")).await?;
    revoke_by(state, &By::from(p), id, inv).await
}

/// Revokes a pending invitation for whoever was let do it.
pub async fn revoke_by(state: &AuthState, by: &By, id: Uuid, inv: Uuid) -> Result<(), ApiError> {
    let mut tx = state.pool.begin().await?;
    if !db::end_invitation(&mut *tx, id, inv, "revoked").await? {
        return Err(ApiError::not_found("no pending invitation with this id"));
    }
    audit_by(&mut tx, by, "org.invitation_revoke", id, serde_json::json!({"invitation": inv})).await?;
    Ok(tx.commit().await?)
}

/// Sends a pending invitation again with a new token and expiry (the old token
/// stops working).
pub async fn resend_invitation(
    state: &AuthState,
    p: &Principal,
    user: Uuid,
    id: Uuid,
    inv: Uuid,
) -> Result<Invitation, ApiError> {
    let me = member_with(&state.pool, user, id, Some("org:sys_invitations:manage")).await?;
    let token = tokens::random_token("oin_");
    let mut tx = state.pool.begin().await?;
    let row = db::renew_invitation(&mut *tx, id, inv, &tokens::hash_token(&token), INVITATION_TTL_SECS)
        .await?
        .ok_or_else(|| ApiError::not_found("no pending invitation with this id"))?;
    // Over budget, the renewal rolls back: the mailed token keeps working.
    mail_budget(state, user, &row.email).await?;
    audit(&mut tx, p, "org.invitation_resend", id, serde_json::json!({"invitation": inv})).await?;
    tx.commit().await?;
    mail_invitation(state, &me, &row.email, &token, None).await?;
    Ok(invitation(row))
}

/// Accepts or declines an invitation as the signed-in user, whose verified email
/// must be the invited one.
pub async fn answer_invitation(
    state: &AuthState,
    p: &Principal,
    user: Uuid,
    token: &str,
    accept: bool,
) -> Result<Option<Org>, ApiError> {
    let me = user_row(state, user).await?;
    let mut tx = state.pool.begin().await?;
    let inv = db::live_invitation(&mut *tx, &tokens::hash_token(token))
        .await?
        .ok_or_else(|| ApiError::not_found("no pending invitation with this token (used, revoked or expired?)"))?;
    let email_matches = me.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(&inv.email));
    if !email_matches {
        return Err(ApiError::forbidden("this invitation is for another email address").with_code("email_mismatch"));
    }
    if me.email_verified_at.is_none() {
        return Err(ApiError::forbidden("verify your email address first").with_code("email_not_verified"));
    }
    if accept {
        db::add_member(&mut *tx, inv.org_id, user, &inv.role).await?;
    }
    db::settle_invitation(&mut tx, inv.id, if accept { "accepted" } else { "declined" }).await?;
    let action = if accept { "org.invitation_accept" } else { "org.invitation_decline" };
    audit(&mut tx, p, action, inv.org_id, serde_json::json!({"invitation": inv.id, "role": inv.role})).await?;
    tx.commit().await?;
    if accept { get(state, user, inv.org_id).await.map(Some) } else { Ok(None) }
}

fn no_invitation() -> ApiError {
    ApiError::not_found("no pending invitation with this token (used, revoked or expired?)")
}

/// What an invitation's token shows: the organization, the invited email and
/// whether it has an account yet (anyone holding the mailed token may see it).
pub async fn preview_invitation(state: &AuthState, token: &str) -> Result<InvitationPreview, ApiError> {
    if token.len() > 128 {
        return Err(no_invitation());
    }
    let inv = db::live_invitation(&state.pool, &tokens::hash_token(token)).await?.ok_or_else(no_invitation)?;
    let org = db::org_name(&state.pool, inv.org_id).await?.ok_or_else(no_invitation)?;
    let account_exists = crate::auth::db::user_by_email(&state.pool, &inv.email).await?.is_some();
    Ok(InvitationPreview { organization: org, email: inv.email, role: inv.role, account_exists })
}

/// Signs up with an invitation: the account gets the invited email, verified
/// (the token came to that mailbox), and joins the organization in the same
/// step. An email that already has an account is 409 `email_taken` (sign in and
/// accept instead).
pub async fn sign_up_invited(
    state: &AuthState,
    req: InvitationSignUp,
    client: &crate::auth::service::ClientInfo,
) -> Result<(AuthResponse, Uuid), ApiError> {
    if req.token.len() > 128 {
        return Err(no_invitation());
    }
    let mut tx = state.pool.begin().await?;
    let inv = db::live_invitation(&mut *tx, &tokens::hash_token(&req.token)).await?.ok_or_else(no_invitation)?;
    let signup = crate::auth::types::SignUpRequest {
        email: inv.email.clone(),
        password: req.password,
        name: req.name,
        unsafe_metadata: None,
    };
    let auth = crate::auth::service::create_account(state, signup, client, true).await?;
    let user = auth.user.id;
    db::add_member(&mut *tx, inv.org_id, user, &inv.role).await?;
    db::settle_invitation(&mut tx, inv.id, "accepted").await?;
    let detail = serde_json::json!({"invitation": inv.id, "role": inv.role, "signed_up": true});
    audit_as(&mut tx, &format!("user:{user}"), Some(user), "org.invitation_accept", inv.org_id, detail).await?;
    tx.commit().await?;
    Ok((auth, inv.org_id))
}

/// Makes `org` (or none) the active organization of the caller's session and
/// returns an access token carrying its claims.
pub async fn set_active(state: &AuthState, p: &Principal, org: Option<Uuid>) -> Result<TokenResponse, ApiError> {
    let Principal::User { user_id, session_id, via, act } = p else {
        return Err(ApiError::bad_request("session_required", "the active organization belongs to a user session"));
    };
    if matches!(via, crate::auth::Via::External) {
        return Err(ApiError::bad_request("session_required", "the active organization belongs to a Carmenta session"));
    }
    if !crate::auth::db::set_active_org(&state.pool, *session_id, *user_id, org).await? {
        return Err(not_found());
    }
    crate::auth::service::changed(state, format!("s:{session_id}")).await?;
    crate::auth::service::session_token(state, *user_id, *session_id, *act).await
}

/// Mail providers whose domains no organization may claim.
const PUBLIC_MAIL_DOMAINS: [&str; 14] = [
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "yahoo.com",
    "icloud.com",
    "me.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "gmx.com",
    "mail.com",
];

/// The domain of a verified email, lowercase.
fn verified_domain(user: &crate::auth::db::UserRow) -> Option<String> {
    user.email_verified_at?;
    user.email.as_deref()?.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

/// Adds a verified domain (`org:sys_memberships:manage`): the caller's own verified
/// email must be at it (proof of control), it may not be a public mail provider's,
/// and one organization holds a domain.
pub async fn add_domain(
    state: &AuthState,
    p: &Principal,
    user: Uuid,
    id: Uuid,
    req: CreateDomain,
) -> Result<Domain, ApiError> {
    member_with(&state.pool, user, id, Some("org:sys_memberships:manage")).await?;
    let domain = req.domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if !valid {
        return Err(ApiError::unprocessable("invalid_domain", "a domain such as example.com"));
    }
    if PUBLIC_MAIL_DOMAINS.contains(&domain.as_str()) {
        return Err(ApiError::unprocessable(
            "public_email_domain",
            "a public mail provider's domain cannot be claimed",
        ));
    }
    let me = user_row(state, user).await?;
    if verified_domain(&me).as_deref() != Some(domain.as_str()) {
        return Err(ApiError::forbidden(
            "verify an email address at this domain first (yours proves the organization controls it)",
        )
        .with_code("domain_not_verified"));
    }
    let role = req.role.unwrap_or_else(|| "org:member".into());
    if role == "org:owner" || !db::role_exists(&state.pool, id, &role).await? {
        return Err(ApiError::unprocessable("unknown_role", format!("{role:?} cannot be given through a domain")));
    }
    let mut tx = state.pool.begin().await?;
    if !db::add_domain(&mut *tx, id, &domain, &role, user).await? {
        return Err(ApiError::conflict("domain_taken", "an organization already has this domain"));
    }
    audit(&mut tx, p, "org.domain_add", id, serde_json::json!({"domain": domain, "role": role})).await?;
    tx.commit().await?;
    db::domains(&state.pool, id)
        .await?
        .into_iter()
        .find(|d| d.domain == domain)
        .map(Domain::from)
        .ok_or_else(|| ApiError::not_found("domain not found"))
}

/// The organization's verified domains (any member).
pub async fn domains(state: &AuthState, user: Uuid, id: Uuid) -> Result<Vec<Domain>, ApiError> {
    member_with(&state.pool, user, id, None).await?;
    Ok(db::domains(&state.pool, id).await?.into_iter().map(Domain::from).collect())
}

/// Removes a verified domain (`org:sys_memberships:manage`).
pub async fn remove_domain(
    state: &AuthState,
    p: &Principal,
    user: Uuid,
    id: Uuid,
    domain: &str,
) -> Result<(), ApiError> {
    member_with(&state.pool, user, id, Some("org:sys_memberships:manage")).await?;
    let mut tx = state.pool.begin().await?;
    if !db::remove_domain(&mut *tx, id, &domain.to_ascii_lowercase()).await? {
        return Err(ApiError::not_found("domain not found"));
    }
    audit(&mut tx, p, "org.domain_remove", id, serde_json::json!({"domain": domain})).await?;
    Ok(tx.commit().await?)
}

/// The organization the caller's verified email's domain lets them join, if any.
pub async fn suggestions(state: &AuthState, user: Uuid) -> Result<Vec<OrgSuggestion>, ApiError> {
    let me = user_row(state, user).await?;
    let Some(domain) = verified_domain(&me) else { return Ok(Vec::new()) };
    Ok(match db::domain_owner(&state.pool, &domain).await? {
        Some((id, name, role)) if db::org_for(&state.pool, user, id).await?.is_none() => {
            vec![OrgSuggestion { id, name, role }]
        }
        _ => Vec::new(),
    })
}

/// Joins an organization through the caller's verified email's domain (404 when
/// the organization does not hold that domain, as for any organization one cannot see).
pub async fn join(state: &AuthState, p: &Principal, user: Uuid, id: Uuid) -> Result<Org, ApiError> {
    let me = user_row(state, user).await?;
    let owner = match verified_domain(&me) {
        Some(d) => db::domain_owner(&state.pool, &d).await?,
        None => None,
    };
    let Some((org, _, role)) = owner.filter(|(org, _, _)| *org == id) else { return Err(not_found()) };
    let mut tx = state.pool.begin().await?;
    if db::add_member(&mut *tx, org, user, &role).await? {
        audit(&mut tx, p, "org.domain_join", org, serde_json::json!({"user": user, "role": role})).await?;
    }
    tx.commit().await?;
    get(state, user, org).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_permissions() {
        assert_eq!(slugify("Acme, Inc."), "acme-inc");
        assert_eq!(slugify("  ✨ "), "org");
        assert!(check_permission("org:knowledge:write"));
        assert!(!check_permission("org:sys_profile:manage"));
        assert!(!check_permission("knowledge:write"));
        assert!(!check_permission("org:Knowledge:write"));
    }
}
