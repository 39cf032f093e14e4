//! Email flows: verification on sign-up, magic-link sign-in, password reset.
//! Tokens are single-use, stored hashed, and expire (`CARMENTA_EMAIL_TOKEN_TTL`).
//! Requests for unknown emails answer exactly as for known ones.

use http::StatusCode;
use uuid::Uuid;

use super::AuthState;
use super::db::{self, EmailTokenKind, UserRow};
use super::password;
use super::service::{self, ClientInfo};
use super::tokens::{self};
use super::types::UserView;
use crate::audit;
use crate::error::ApiError;
use crate::mail::Mail;

/// Prefix of emailed tokens.
pub const EMAIL_TOKEN_PREFIX: &str = "ce_";

/// Mails requested per account per 10 minutes before further requests are dropped.
const PER_ACCOUNT_MAILS: i32 = 5;

fn invalid_link() -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_link", "this link is invalid, expired or already used")
}

/// Builds an absolute link on the public URL.
fn link(state: &AuthState, path: &str, token: &str, redirect: Option<&str>) -> String {
    let mut u = state.config.public_url.clone();
    u.set_path(path);
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("token", token);
        if let Some(r) = redirect {
            q.append_pair("redirect_url", r);
        }
    }
    u.to_string()
}

/// Issues a token of `kind` for `user` and mails them a link carrying it (users
/// without an email get nothing).
#[allow(clippy::too_many_arguments)]
async fn send_link(
    state: &AuthState,
    user: &UserRow,
    kind: EmailTokenKind,
    path: &str,
    redirect: Option<&str>,
    subject: &str,
    intro: &str,
) -> Result<(), ApiError> {
    let Some(email) = user.email.as_deref() else { return Ok(()) };
    let token = tokens::random_token(EMAIL_TOKEN_PREFIX);
    let ttl = state.config.email_token_ttl;
    db::insert_email_token(&state.pool, user.id, kind, &tokens::hash_token(&token), email, ttl).await?;
    let url = link(state, path, &token, redirect);
    let minutes = ttl.as_secs() / 60;
    let body = format!(
        "{intro}\n\n{url}\n\nThe link works once and expires in {minutes} minutes. If you did not ask for it, ignore this message.\n"
    );
    let mail = Mail { user_id: Some(user.id), to: email.to_string(), subject: subject.into(), body, link: Some(url) };
    if let Err(e) = state.mailer.send(&state.pool, mail).await {
        tracing::error!(error = %e, user_id = %user.id, "sending mail failed");
    }
    Ok(())
}

/// Sends the verification mail to a user.
pub async fn send_verification(state: &AuthState, user: &UserRow) -> Result<(), ApiError> {
    let (subject, intro) = ("Confirm your email address", "Confirm your email address by opening this link:");
    send_link(state, user, EmailTokenKind::VerifyEmail, "/auth/verify-email", None, subject, intro).await
}

/// Resends the verification mail to the caller (no-op if already verified).
pub async fn resend_verification(state: &AuthState, user_id: Uuid) -> Result<(), ApiError> {
    let user = db::user_by_id(&state.pool, user_id).await?.ok_or_else(|| ApiError::not_found("user not found"))?;
    if let Some(email) = &user.email
        && user.email_verified_at.is_none()
        && within_account_budget(state, email).await?
    {
        send_verification(state, &user).await?;
    }
    Ok(())
}

/// Uses up a token of `kind`; following its link proves the address, so the user's
/// email is marked verified (and caches told).
async fn consume_proving_email(state: &AuthState, kind: EmailTokenKind, token: &str) -> Result<UserRow, ApiError> {
    let (user_id, email) =
        db::consume_email_token(&state.pool, kind, &tokens::hash_token(token)).await?.ok_or_else(invalid_link)?;
    let user = db::mark_email_verified(&state.pool, user_id, &email).await?.ok_or_else(invalid_link)?;
    service::changed(state, format!("u:{user_id}")).await?;
    Ok(user)
}

/// Confirms an email address with a token from the verification mail.
pub async fn verify_email(state: &AuthState, token: &str) -> Result<UserView, ApiError> {
    let user = consume_proving_email(state, EmailTokenKind::VerifyEmail, token).await?;
    let user_id = user.id;
    audit::record(
        &state.pool,
        &format!("user:{user_id}"),
        Some(user_id),
        "auth.email_verified",
        None,
        serde_json::json!({}),
    )
    .await?;
    Ok(UserView::of(user, false))
}

/// Counts a mail to `email` against its budget (every mail to one address, of any
/// kind, shares it); false once over.
pub(crate) async fn within_account_budget(state: &AuthState, email: &str) -> Result<bool, ApiError> {
    let n = db::hit_window(&state.pool, &format!("mail:{}", email.trim().to_lowercase()), service::IP_WINDOW).await?;
    Ok(n <= PER_ACCOUNT_MAILS)
}

/// Mails a link of `kind` if the email has an account; answers the same either way.
#[allow(clippy::too_many_arguments)]
async fn mail_link(
    state: &AuthState,
    email: &str,
    redirect: Option<&str>,
    client: &ClientInfo,
    kind: EmailTokenKind,
    path: &str,
    subject: &str,
    intro: &str,
) -> Result<(), ApiError> {
    let email = service::validate_email(email)?;
    service::ip_limit(state, client).await?;
    if let Some(user) = db::user_by_email(&state.pool, &email).await?
        && within_account_budget(state, &email).await?
    {
        send_link(state, &user, kind, path, redirect, subject, intro).await?;
    }
    Ok(())
}

/// Mails a magic sign-in link if the email has an account; answers the same either way.
pub async fn request_magic_link(
    state: &AuthState,
    email: &str,
    redirect: Option<&str>,
    client: &ClientInfo,
) -> Result<(), ApiError> {
    let (path, subject, intro) = ("/auth/magic-link", "Your sign-in link", "Sign in by opening this link:");
    mail_link(state, email, redirect, client, EmailTokenKind::MagicLink, path, subject, intro).await
}

/// Signs in with a magic-link token; the email counts as verified.
pub async fn consume_magic_link(
    state: &AuthState,
    token: &str,
    client: &ClientInfo,
) -> Result<service::SignIn, ApiError> {
    let user = consume_proving_email(state, EmailTokenKind::MagicLink, token).await?;
    let user_id = user.id;
    audit::record(
        &state.pool,
        &format!("user:{user_id}"),
        Some(user_id),
        "auth.sign_in",
        None,
        serde_json::json!({"method": "magic_link", "ip": client.ip}),
    )
    .await?;
    service::after_first_factor(state, user, client, "email").await
}

/// Mails a password-reset link if the email has an account; answers the same either way.
pub async fn forgot_password(
    state: &AuthState,
    email: &str,
    redirect: Option<&str>,
    client: &ClientInfo,
) -> Result<(), ApiError> {
    let (path, subject, intro) =
        ("/auth/reset-password", "Reset your password", "Choose a new password by opening this link:");
    mail_link(state, email, redirect, client, EmailTokenKind::PasswordReset, path, subject, intro).await
}

/// Sets a new password with a reset token; every session is signed out.
pub async fn reset_password(state: &AuthState, token: &str, new_password: String) -> Result<(), ApiError> {
    // Check the policy before using up the token, so a weak choice can be retried.
    let hash_token = tokens::hash_token(token);
    let pending = db::live_email_token_email(&state.pool, EmailTokenKind::PasswordReset, &hash_token).await?;
    let email = pending.ok_or_else(invalid_link)?;
    password::check_policy(&new_password, &email, state.config.password_min_length)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "weak_password", e.to_string()))?;
    let (user_id, token_email) = db::consume_email_token(&state.pool, EmailTokenKind::PasswordReset, &hash_token)
        .await?
        .ok_or_else(invalid_link)?;
    let hash = password::hash(new_password).await.map_err(ApiError::internal)?;
    db::set_password(&state.pool, user_id, &hash).await?;
    db::mark_email_verified(&state.pool, user_id, &token_email).await?;
    let revoked = db::revoke_all_sessions(&state.pool, user_id, None).await?;
    // Any other reset or magic link sent before this one is void.
    db::void_sign_in_links(&state.pool, user_id).await?;
    service::changed(state, format!("u:{user_id}")).await?;
    audit::record(
        &state.pool,
        "anonymous",
        Some(user_id),
        "auth.password_reset",
        None,
        serde_json::json!({"revoked_sessions": revoked}),
    )
    .await?;
    Ok(())
}
