//! The admin console's rules: making admins and their one-time sign-in links,
//! admin sessions and CSRF tokens, the audit row every admin action writes, and
//! the user actions (ban, unban, revoke sessions, reset link, delete, impersonate).

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{Admin, db};
use crate::auth::db as auth_db;
use crate::auth::service::{self as auth_service, ClientInfo};
use crate::auth::tokens;
use crate::auth::types::AuthResponse;
use crate::error::ApiError;

/// How long a sign-in link printed by the CLI stays valid.
pub const LINK_TTL: Duration = Duration::from_secs(30 * 60);
/// How long an impersonation session lasts.
pub const IMPERSONATION_TTL: Duration = Duration::from_secs(60 * 60);
/// Prefix of admin session tokens.
const TOKEN_PREFIX: &str = "cas_";

/// What `carmenta admin create` did.
#[derive(Debug)]
pub struct Created {
    /// The admin's user id.
    pub user_id: Uuid,
    /// Whether a new account was created (else an existing one was promoted).
    pub new_account: bool,
    /// Whether the user was already an admin.
    pub already_admin: bool,
    /// The one-time sign-in link.
    pub link: String,
}

/// Makes the account with `email` an admin (creating it, without a password, if
/// there is none) and issues a one-time sign-in link.
pub async fn create_admin(pool: &PgPool, public_url: &str, email: &str) -> Result<Created, ApiError> {
    let email = auth_service::validate_email(email)?;
    let (user, new_account) = match auth_db::user_by_email(pool, &email).await? {
        Some(u) => (u, false),
        None => (auth_db::insert_user(pool, &email, None, None, &serde_json::json!({})).await?, true),
    };
    let promoted = db::promote(pool, user.id, "cli").await?;
    if promoted {
        crate::audit::record(
            pool,
            "cli",
            Some(user.id),
            "admin.create",
            Some(&user.id.to_string()),
            serde_json::json!({"email": email, "new_account": new_account}),
        )
        .await?;
    }
    let token = tokens::random_token("cal_");
    db::insert_sign_in_token(pool, &tokens::hash_token(&token), user.id, LINK_TTL).await?;
    let link = format!("{}/admin/sign-in?token={token}", public_url.trim_end_matches('/'));
    Ok(Created { user_id: user.id, new_account, already_admin: !promoted, link })
}

/// A new admin session: (cookie value, CSRF token).
async fn open(admin: &Admin, user: Uuid, client: &ClientInfo, method: &str) -> Result<String, ApiError> {
    let token = tokens::random_token(TOKEN_PREFIX);
    let csrf = tokens::random_token("");
    let id = db::insert_session(
        &admin.pool,
        user,
        &tokens::hash_token(&token),
        &csrf,
        admin.config.admin.session_ttl,
        client.ip.as_deref(),
    )
    .await?;
    crate::audit::record(
        &admin.pool,
        &format!("admin:{user}"),
        None,
        "admin.sign_in",
        Some(&id.to_string()),
        serde_json::json!({"method": method, "ip": client.ip}),
    )
    .await?;
    Ok(token)
}

fn refused() -> ApiError {
    ApiError::unauthorized("email or password is incorrect, or the account is not an admin")
        .with_code("invalid_credentials")
}

/// Signs an admin in with email and password (the account's own, under the same
/// lockout rules as any sign-in); a non-admin gets the same answer as a wrong
/// password.
pub async fn sign_in_password(
    admin: &Admin,
    email: String,
    password: String,
    client: &ClientInfo,
) -> Result<String, ApiError> {
    let req = crate::auth::types::SignInRequest { email, password };
    let user = auth_service::check_password(&admin.auth, req, client, "admin.sign_in_password")
        .await
        .map_err(|e| if e.code == "invalid_credentials" { refused() } else { e })?;
    if user.banned_at.is_some() || !db::is_admin(&admin.pool, user.id).await? {
        return Err(refused());
    }
    open(admin, user.id, client, "password").await
}

/// Signs an admin in with a one-time link.
pub async fn sign_in_link(admin: &Admin, token: &str, client: &ClientInfo) -> Result<String, ApiError> {
    let user = db::consume_sign_in_token(&admin.pool, &tokens::hash_token(token))
        .await?
        .ok_or_else(|| ApiError::bad_request("invalid_link", "this sign-in link is invalid, used or expired"))?;
    open(admin, user, client, "link").await
}

/// The live admin session for a cookie value.
pub async fn session(admin: &Admin, token: &str) -> Result<Option<db::SessionRow>, ApiError> {
    if !token.starts_with(TOKEN_PREFIX) || token.len() > 100 {
        return Ok(None);
    }
    Ok(db::live_session(&admin.pool, &tokens::hash_token(token), admin.config.admin.idle_timeout).await?)
}

/// Ends an admin session.
pub async fn sign_out(admin: &Admin, s: &db::SessionRow) -> Result<(), ApiError> {
    db::revoke_session(&admin.pool, s.id).await?;
    record(admin, s, "admin.sign_out", None, None, serde_json::json!({})).await
}

/// Whether `given` is the session's CSRF token (compared in constant time).
pub fn csrf_ok(s: &db::SessionRow, given: Option<&str>) -> bool {
    let Some(given) = given else { return false };
    let (a, b) = (s.csrf_token.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes the audit row of an admin action: actor `admin:<id>`, the action, its
/// target, the user it concerns, and `detail` (before and after for writes).
pub async fn record(
    admin: &Admin,
    s: &db::SessionRow,
    action: &str,
    target: Option<&str>,
    user: Option<Uuid>,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    let mut detail = detail;
    if let Some(m) = detail.as_object_mut() {
        m.insert("admin_session".into(), serde_json::Value::String(s.id.to_string()));
    }
    crate::audit::record(&admin.pool, &format!("admin:{}", s.user_id), user, action, target, detail).await?;
    Ok(())
}

/// The user `id`, or 404.
async fn user_row(admin: &Admin, id: Uuid) -> Result<auth_db::UserRow, ApiError> {
    auth_db::user_by_id(&admin.pool, id).await?.ok_or_else(|| ApiError::not_found("user not found"))
}

/// Bans or unbans a user; a ban also ends every session (access tokens stop at once).
pub async fn set_banned(admin: &Admin, s: &db::SessionRow, user: Uuid, banned: bool) -> Result<(), ApiError> {
    if banned && user == s.user_id {
        return Err(ApiError::bad_request("cannot_ban_self", "an admin cannot ban their own account"));
    }
    let (before, after) =
        db::set_banned(&admin.pool, user, banned).await?.ok_or_else(|| ApiError::not_found("user not found"))?;
    let mut revoked = 0;
    if banned {
        revoked = auth_service::end_all_sessions(&admin.auth, user).await?;
    }
    let action = if banned { "admin.user.ban" } else { "admin.user.unban" };
    let at = |t: Option<time::OffsetDateTime>| t.map(super::view::when);
    record(
        admin,
        s,
        action,
        Some(&user.to_string()),
        Some(user),
        serde_json::json!({"before": {"banned_at": at(before)}, "after": {"banned_at": at(after)}, "sessions_revoked": revoked}),
    )
    .await
}

/// Ends every session of a user.
pub async fn revoke_sessions(admin: &Admin, s: &db::SessionRow, user: Uuid) -> Result<u64, ApiError> {
    user_row(admin, user).await?;
    let n = auth_service::end_all_sessions(&admin.auth, user).await?;
    record(
        admin,
        s,
        "admin.user.revoke_sessions",
        Some(&user.to_string()),
        Some(user),
        serde_json::json!({"revoked": n}),
    )
    .await?;
    Ok(n)
}

/// Removes every second factor of a user (authenticator app, backup codes), for
/// a user who lost them; audited with what was removed.
pub async fn reset_factors(admin: &Admin, s: &db::SessionRow, user: Uuid) -> Result<(), ApiError> {
    user_row(admin, user).await?;
    let before = crate::auth::mfa::factors(&admin.auth, user).await?;
    crate::auth::mfa::reset(&admin.auth, user).await?;
    record(
        admin,
        s,
        "admin.user.reset_factors",
        Some(&user.to_string()),
        Some(user),
        serde_json::json!({"before": {"factors": before}, "after": {"factors": []}}),
    )
    .await?;
    Ok(())
}

/// Mails the user a password-reset link.
pub async fn send_reset(
    admin: &Admin,
    s: &db::SessionRow,
    user: Uuid,
    client: &ClientInfo,
) -> Result<String, ApiError> {
    let u = user_row(admin, user).await?;
    let email = u.email.ok_or_else(|| ApiError::bad_request("no_email", "this user has no email address"))?;
    crate::auth::email::forgot_password(&admin.auth, &email, None, client).await?;
    record(admin, s, "admin.user.reset_link", Some(&user.to_string()), Some(user), serde_json::json!({"email": email}))
        .await?;
    Ok(email)
}

/// Deletes a user and everything they own, when `confirm` repeats their email (or id).
pub async fn delete_user(admin: &Admin, s: &db::SessionRow, user: Uuid, confirm: &str) -> Result<(), ApiError> {
    let u = user_row(admin, user).await?;
    let expected = u.email.clone().unwrap_or_else(|| u.id.to_string());
    if !confirm.trim().eq_ignore_ascii_case(&expected) {
        return Err(ApiError::bad_request("confirmation_mismatch", "type the user's email to confirm the deletion"));
    }
    if user == s.user_id {
        return Err(ApiError::bad_request("cannot_delete_self", "an admin cannot delete their own account here"));
    }
    record(
        admin,
        s,
        "admin.user.delete",
        Some(&user.to_string()),
        Some(user),
        serde_json::json!({"before": {"email": u.email, "name": u.name, "created_at": super::view::when(u.created_at)}, "after": null}),
    )
    .await?;
    auth_service::remove_user(&admin.auth, user).await?;
    Ok(())
}

/// Opens a time-limited session as the user; its access tokens carry
/// `act: {sub: <admin>}`, it shows in the user's own session list, and the audit
/// row names both identities.
pub async fn impersonate(
    admin: &Admin,
    s: &db::SessionRow,
    user: Uuid,
    client: &ClientInfo,
) -> Result<AuthResponse, ApiError> {
    let u = user_row(admin, user).await?;
    let auth = crate::auth::tokens::SessionAuth::single("impersonation");
    let res = auth_service::open_session(&admin.auth, u, client, Some(s.user_id), IMPERSONATION_TTL, &auth).await?;
    record(
        admin,
        s,
        "admin.user.impersonate",
        Some(&user.to_string()),
        Some(user),
        serde_json::json!({"admin": s.user_id, "user": user, "expires_at": super::view::when(res.session_expires_at)}),
    )
    .await?;
    Ok(res)
}
