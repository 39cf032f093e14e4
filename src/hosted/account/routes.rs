//! The hosted account-security pages under `/auth/account`: second factors
//! (authenticator app enrolment with a QR code, removal, backup codes) and
//! linked sign-in identities. Every page needs the session cookie; every form
//! post passes the same-origin check, and removals re-authenticate inline.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::super::routes::{Page, PageForm, PasskeyButton, field, see_other};
use crate::auth::service::{self, Principal, Via};
use crate::auth::types::ReauthRequest;
use crate::auth::{AuthState, SESSION_COOKIE, mfa};
use crate::error::ApiError;

/// The account pages.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<AuthState>: axum::extract::FromRef<S>,
{
    Router::new()
        .route("/auth/account", get(account_page))
        .route("/auth/account/totp", post(totp_start))
        .route("/auth/account/totp/confirm", post(totp_confirm))
        .route("/auth/account/totp/remove", post(totp_remove))
        .route("/auth/account/backup-codes", post(backup_codes))
        .route("/auth/account/link/{provider}", post(link))
        .route("/auth/account/passkeys/{id}/rename", post(passkey_rename))
        .route("/auth/account/passkeys/{id}/delete", post(passkey_delete))
        .route("/auth/account/unlink/{id}", post(unlink))
}

const HERE: &str = "/auth/account";

/// The signed-in principal of the session cookie, or the sign-in page (303) that
/// comes back here.
const SIGN_IN: &str = "/auth/sign-in?redirect_url=%2Fauth%2Faccount";

async fn session(state: &AuthState, headers: &HeaderMap) -> Result<Principal, Response> {
    session_or_sign_in(state, headers, SIGN_IN).await
}

/// The signed-in principal of the session cookie, or a 303 to `sign_in` (the
/// sign-in page with the way back).
pub(crate) async fn session_or_sign_in(
    state: &AuthState,
    headers: &HeaderMap,
    sign_in: &'static str,
) -> Result<Principal, Response> {
    let to_sign_in = || see_other(sign_in);
    let Some(token) = crate::auth::cookie_value(headers, SESSION_COOKIE) else { return Err(to_sign_in()) };
    service::resolve_session(state, token, Via::Cookie).await.map_err(|_| to_sign_in())
}

/// A posted form's principal: the session, after the same-origin check; without
/// one, a 303 to `sign_in`.
async fn posted_to(state: &AuthState, headers: &HeaderMap, sign_in: &'static str) -> Result<Principal, Response> {
    crate::auth::check_login_origin(state, headers).map_err(failure)?;
    session_or_sign_in(state, headers, sign_in).await
}

/// A posted form's action as the session's principal (the same-origin check and
/// the session first, else a 303 to `sign_in`): its response, or the failure page.
pub(crate) async fn act_to(
    state: &AuthState,
    headers: &HeaderMap,
    sign_in: &'static str,
    action: impl AsyncFnOnce(&Principal) -> Result<Response, ApiError>,
) -> Response {
    match posted_to(state, headers, sign_in).await {
        Ok(p) => action(&p).await.unwrap_or_else(failure),
        Err(r) => r,
    }
}

async fn posted(state: &AuthState, headers: &HeaderMap) -> Result<Principal, Response> {
    posted_to(state, headers, SIGN_IN).await
}

/// [`act_to`] for the account pages.
async fn act(
    state: &AuthState,
    headers: &HeaderMap,
    action: impl AsyncFnOnce(&Principal) -> Result<Response, ApiError>,
) -> Response {
    act_to(state, headers, SIGN_IN, action).await
}

pub(crate) fn failure(e: ApiError) -> Response {
    let mut p = Page::new("Something went wrong");
    p.error = Some(e.message);
    p.links = vec![(HERE.into(), "Back to account security".into())];
    p.respond(e.status)
}

/// The fields that re-authenticate inline: the password or a code.
fn proof_fields() -> Vec<super::super::routes::Field> {
    vec![field("proof", "Your password or an authenticator code", "password", "current-password", "")]
}

async fn overview(state: &AuthState, p: &Principal) -> Result<Page, ApiError> {
    let status = mfa::status(state, p).await?;
    let mut page = Page::new("Account security");
    let mut lines = Vec::new();
    lines.push(if status.totp {
        "Authenticator app: on.".to_string()
    } else {
        "Authenticator app: off. Sign-in asks only for your first factor.".to_string()
    });
    if status.totp {
        lines.push(format!("Backup codes left: {}.", status.backup_codes_remaining));
    }
    page.message = Some(lines.join(" "));
    if status.totp {
        page.more.push(PageForm {
            action: "/auth/account/backup-codes".into(),
            hidden: Vec::new(),
            fields: proof_fields(),
            submit: "Make new backup codes".into(),
        });
        page.more.push(PageForm {
            action: "/auth/account/totp/remove".into(),
            hidden: Vec::new(),
            fields: proof_fields(),
            submit: "Remove authenticator app".into(),
        });
    } else {
        page.form = Some(PageForm::button("/auth/account/totp", Vec::new(), "Set up an authenticator app"));
    }
    let user = service::require_user(p)?;
    if state.webauthn.is_some() {
        for k in crate::auth::passkeys::list(state, user).await? {
            page.more.push(PageForm {
                action: format!("/auth/account/passkeys/{}/rename", k.id),
                hidden: Vec::new(),
                fields: vec![field("name", "Passkey name", "text", "off", &k.name)],
                submit: "Rename".into(),
            });
            page.more.push(PageForm {
                action: format!("/auth/account/passkeys/{}/delete", k.id),
                hidden: Vec::new(),
                fields: proof_fields(),
                submit: format!("Delete passkey {}", k.name),
            });
        }
        page.passkeys.push(PasskeyButton { kind: "register", label: "Add a passkey", next: HERE.into(), named: true });
    }
    let linked = crate::auth::social::identities(state, user).await?;
    for i in &linked {
        let who = i.email.clone().unwrap_or_else(|| i.subject.clone());
        let label = format!("Unlink {} ({who})", crate::auth::social::display_name(&i.provider));
        page.more.push(PageForm::button(&format!("/auth/account/unlink/{}", i.id), Vec::new(), label));
    }
    for p in crate::auth::social::enabled(state).await? {
        if !linked.iter().any(|i| i.provider == p.id) {
            let label = format!("Link {}", p.name);
            page.more.push(PageForm::button(&format!("/auth/account/link/{}", p.id), Vec::new(), label));
        }
    }
    page.links = vec![("/auth/signed-in".into(), "Done".into())];
    Ok(page)
}

async fn account_page(State(state): State<Arc<AuthState>>, headers: HeaderMap) -> Response {
    let p = match session(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match overview(&state, &p).await {
        Ok(page) => page.respond(StatusCode::OK),
        Err(e) => failure(e),
    }
}

fn enrol_page(e: crate::auth::types::TotpEnrollment, error: Option<String>) -> Page {
    let mut page = Page::new("Set up an authenticator app");
    page.message = Some(format!(
        "Scan the code with your authenticator app, or type in the key {}, then enter the six-digit code it shows.",
        e.secret
    ));
    page.error = error;
    page.image = Some((e.qr_data_url, "QR code for your authenticator app".into()));
    page.form = Some(PageForm {
        action: "/auth/account/totp/confirm".into(),
        hidden: Vec::new(),
        fields: vec![field("code", "Code from the app", "text", "one-time-code", "")],
        submit: "Turn on".into(),
    });
    page.links = vec![(HERE.into(), "Cancel".into())];
    page
}

async fn totp_start(State(state): State<Arc<AuthState>>, headers: HeaderMap) -> Response {
    act(&state, &headers, async |p| Ok(enrol_page(mfa::start_totp(&state, p).await?, None).respond(StatusCode::OK)))
        .await
}

#[derive(Debug, Deserialize)]
struct CodeForm {
    code: String,
}

fn codes_page(codes: Vec<String>, intro: &str) -> Page {
    let mut page = Page::new("Backup codes");
    page.message = Some(format!(
        "{intro} Keep these codes somewhere safe: each signs you in once if you lose your authenticator app. \
         They are shown only now."
    ));
    page.codes = codes;
    page.links = vec![(HERE.into(), "Done".into())];
    page
}

async fn totp_confirm(State(state): State<Arc<AuthState>>, headers: HeaderMap, Form(f): Form<CodeForm>) -> Response {
    let p = match posted(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match mfa::confirm_totp(&state, &p, &f.code).await {
        Ok(b) if b.codes.is_empty() => back_here(),
        Ok(b) => codes_page(b.codes, "Your authenticator app is on.").respond(StatusCode::OK),
        Err(e) if e.code == "invalid_code" => {
            // A wrong code: enrol again with a fresh secret rather than show the old one.
            match mfa::start_totp(&state, &p).await {
                Ok(en) => enrol_page(en, Some("That code did not match; scan this new code and try again.".into()))
                    .respond(StatusCode::UNPROCESSABLE_ENTITY),
                Err(e) => failure(e),
            }
        }
        Err(e) => failure(e),
    }
}

#[derive(Debug, Deserialize)]
struct ProofForm {
    proof: String,
}

/// Re-authenticates with the password, or with a code when the value is six digits.
async fn reauthenticate(state: &AuthState, p: &Principal, headers: &HeaderMap, proof: String) -> Result<(), ApiError> {
    let is_code = proof.trim().len() == 6 && proof.trim().bytes().all(|b| b.is_ascii_digit());
    let req = if is_code {
        ReauthRequest { code: Some(proof), ..Default::default() }
    } else {
        ReauthRequest { password: Some(proof), ..Default::default() }
    };
    mfa::reauthenticate(state, p, req, &crate::auth::client_info(headers, None)).await
}

async fn totp_remove(State(state): State<Arc<AuthState>>, headers: HeaderMap, Form(f): Form<ProofForm>) -> Response {
    act(&state, &headers, async |p| {
        reauthenticate(&state, p, &headers, f.proof).await?;
        mfa::remove_totp(&state, p).await?;
        Ok(back_here())
    })
    .await
}

async fn backup_codes(State(state): State<Arc<AuthState>>, headers: HeaderMap, Form(f): Form<ProofForm>) -> Response {
    act(&state, &headers, async |p| {
        reauthenticate(&state, p, &headers, f.proof).await?;
        let b = mfa::regenerate_backup_codes(&state, p).await?;
        Ok(codes_page(b.codes, "Your old backup codes no longer work.").respond(StatusCode::OK))
    })
    .await
}

async fn link(State(state): State<Arc<AuthState>>, headers: HeaderMap, Path(provider): Path<String>) -> Response {
    act(&state, &headers, async |p| {
        let user = match p {
            Principal::User { user_id, act: None, .. } => *user_id,
            _ => return Err(ApiError::forbidden("identities are linked from your own session")),
        };
        super::super::routes::to_provider(&state, &provider, Some(HERE), Some(user)).await
    })
    .await
}

async fn unlink(State(state): State<Arc<AuthState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    act(&state, &headers, async |p| {
        let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::not_found("no such identity"))?;
        crate::auth::social::unlink(&state, service::require_user(p)?, id, &p.actor()).await?;
        Ok(back_here())
    })
    .await
}

#[derive(Debug, Deserialize)]
struct NameForm {
    name: String,
}

async fn passkey_rename(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<NameForm>,
) -> Response {
    act(&state, &headers, async |p| {
        let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::not_found("no such passkey"))?;
        crate::auth::passkeys::rename(&state, p, id, &f.name).await?;
        Ok(back_here())
    })
    .await
}

async fn passkey_delete(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ProofForm>,
) -> Response {
    act(&state, &headers, async |p| {
        let id = uuid::Uuid::parse_str(&id).map_err(|_| ApiError::not_found("no such passkey"))?;
        reauthenticate(&state, p, &headers, f.proof).await?;
        crate::auth::passkeys::delete(&state, p, id).await?;
        Ok(back_here())
    })
    .await
}

fn back_here() -> Response {
    see_other(HERE)
}
