//! Passkeys (WebAuthn through webauthn-rs): register several, name and delete
//! them, sign in without a password (with an email, or discoverable), and use
//! one as the second factor of a sign-in step. The relying party is the public
//! URL's host (a domain name; an IP address cannot be one), its origin and the
//! allowed origins. Ceremony state lives in the database, so any replica can
//! finish what another started; each ceremony is used once. User verification
//! is required, so a passkey sign-in counts as two factors (`amr: ["passkey"]`,
//! `aal2`).

pub mod db;
mod routes;

pub use routes::routes;

use std::time::Duration;

use http::StatusCode;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Webauthn, WebauthnBuilder,
};

use super::service::{self, AuthState, ClientInfo, Principal};
use super::tokens::SessionAuth;
use super::types::{AuthResponse, PasskeyAssertion, PasskeyOptions, PasskeyView};
use crate::audit;
use crate::config::Config;
use crate::error::ApiError;

/// How long a ceremony may take.
pub const CEREMONY_TTL: Duration = Duration::from_secs(300);

/// The relying party for `config`: `None` when the public URL's host is not a
/// domain name (passkeys are then unavailable).
pub fn relying_party(config: &Config) -> Option<Webauthn> {
    let origin = url::Url::parse(&config.public_url.origin().ascii_serialization()).ok()?;
    let rp_id = origin.domain()?.to_string();
    let mut b = WebauthnBuilder::new(&rp_id, &origin).ok()?.rp_name("Carmenta");
    for o in &config.allowed_origins {
        if let Ok(u) = url::Url::parse(o) {
            b = b.append_allowed_origin(&u);
        }
    }
    b.build().ok()
}

fn rp(state: &AuthState) -> Result<&Webauthn, ApiError> {
    state.webauthn.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "passkeys_unavailable",
            "passkeys need a public URL with a domain name (CARMENTA_PUBLIC_URL), not an IP address",
        )
    })
}

fn rejected(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "passkey_rejected", format!("the passkey's answer was refused: {e}"))
}

fn invalid_ceremony() -> ApiError {
    ApiError::bad_request("invalid_ceremony", "this passkey ceremony is unknown, used or expired; start again")
}

fn json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(ApiError::internal)
}

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::bad_request("invalid_credential", format!("not a WebAuthn credential: {e}")))
}

fn view(r: db::PasskeyRow) -> PasskeyView {
    PasskeyView { id: r.id, name: r.name, created_at: r.created_at, last_used_at: r.last_used_at }
}

fn stored(r: &db::PasskeyRow) -> Result<Passkey, ApiError> {
    serde_json::from_value(r.passkey.clone()).map_err(ApiError::internal)
}

/// The caller's passkeys.
pub async fn list(state: &AuthState, user: Uuid) -> Result<Vec<PasskeyView>, ApiError> {
    Ok(db::passkeys(&state.pool, user).await?.into_iter().map(view).collect())
}

/// Starts registering a passkey for the signed-in user.
pub async fn start_registration(state: &AuthState, p: &Principal) -> Result<PasskeyOptions, ApiError> {
    let (user_id, _) = super::mfa::session_of(p)?;
    let user = super::db::user_by_id(&state.pool, user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("authentication required"))?;
    let existing = db::passkeys(&state.pool, user_id).await?;
    let exclude = existing.iter().map(stored).map(|p| p.map(|k| k.cred_id().clone())).collect::<Result<Vec<_>, _>>()?;
    let email = user.email.clone().unwrap_or_else(|| user_id.to_string());
    let display = user.name.clone().unwrap_or_else(|| email.clone());
    let (ccr, reg) =
        rp(state)?.start_passkey_registration(user_id, &email, &display, Some(exclude)).map_err(ApiError::internal)?;
    let mut options = json(&ccr)?;
    // Ask for a discoverable credential where the device can make one, so it can
    // sign in without an email too (the server's checks do not depend on it).
    if let Some(sel) = options.pointer_mut("/publicKey/authenticatorSelection").and_then(|v| v.as_object_mut()) {
        sel.insert("residentKey".into(), serde_json::json!("preferred"));
    }
    let id = db::insert_ceremony(&state.pool, "register", Some(user_id), None, &json(&reg)?, CEREMONY_TTL).await?;
    Ok(PasskeyOptions { ceremony_id: id, options })
}

/// Checks a passkey name.
fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable("invalid_name", "a passkey's name is 1-64 characters"));
    }
    Ok(name.to_string())
}

/// Finishes a registration with the browser's new credential.
pub async fn finish_registration(
    state: &AuthState,
    p: &Principal,
    req: super::types::PasskeyRegistration,
) -> Result<PasskeyView, ApiError> {
    let (user_id, _) = super::mfa::session_of(p)?;
    let name = check_name(req.name.as_deref().unwrap_or("Passkey"))?;
    let cred: RegisterPublicKeyCredential = parse(req.credential)?;
    let c = db::take_ceremony(&state.pool, req.ceremony_id).await?.ok_or_else(invalid_ceremony)?;
    if c.kind != "register" || c.user_id != Some(user_id) {
        return Err(invalid_ceremony());
    }
    let reg: PasskeyRegistration = serde_json::from_value(c.state).map_err(ApiError::internal)?;
    let passkey = rp(state)?.finish_passkey_registration(&cred, &reg).map_err(rejected)?;
    let row = db::insert(&state.pool, user_id, passkey.cred_id().as_ref(), &json(&passkey)?, &name)
        .await?
        .ok_or_else(|| ApiError::conflict("passkey_exists", "this passkey is registered already"))?;
    audit::record(
        &state.pool,
        &p.actor(),
        Some(user_id),
        "auth.passkey_added",
        Some(&row.id.to_string()),
        serde_json::json!({"name": row.name}),
    )
    .await?;
    Ok(view(row))
}

/// Renames one of the caller's passkeys.
pub async fn rename(state: &AuthState, p: &Principal, id: Uuid, name: &str) -> Result<PasskeyView, ApiError> {
    let (user_id, _) = super::mfa::session_of(p)?;
    let name = check_name(name)?;
    let row =
        db::rename(&state.pool, user_id, id, &name).await?.ok_or_else(|| ApiError::not_found("no such passkey"))?;
    Ok(view(row))
}

/// Deletes one of the caller's passkeys (a recent sign-in or re-authentication
/// needed; never the last way to sign in).
pub async fn delete(state: &AuthState, p: &Principal, id: Uuid) -> Result<(), ApiError> {
    let (user_id, session) = super::mfa::session_of(p)?;
    // Unknown ids answer 404 before the recency check, as for any other user's.
    if !db::passkeys(&state.pool, user_id).await?.iter().any(|k| k.id == id) {
        return Err(ApiError::not_found("no such passkey"));
    }
    super::mfa::require_recent(state, session).await?;
    match db::delete(&state.pool, user_id, id).await? {
        None => Err(ApiError::not_found("no such passkey")),
        Some(false) => Err(ApiError::conflict(
            "last_sign_in_method",
            "this is the account's only way to sign in; set a password or add another passkey first",
        )),
        Some(true) => {
            if super::mfa::factors(state, user_id).await?.is_empty() {
                super::mfa::db::delete_backup_codes(&state.pool, user_id).await?;
            }
            audit::record(
                &state.pool,
                &p.actor(),
                Some(user_id),
                "auth.passkey_removed",
                Some(&id.to_string()),
                serde_json::json!({}),
            )
            .await?;
            Ok(())
        }
    }
}

/// Starts a passkey sign-in: the account's passkeys when `email` names one with
/// passkeys, else a discoverable ceremony (so the answer does not tell whether
/// the email has an account).
pub async fn start_sign_in(state: &AuthState, email: Option<&str>) -> Result<PasskeyOptions, ApiError> {
    let rp = rp(state)?;
    if let Some(email) = email.filter(|e| !e.trim().is_empty()) {
        let email = service::validate_email(email)?;
        if let Some(user) = super::db::user_by_email(&state.pool, &email).await? {
            let keys = db::passkeys(&state.pool, user.id).await?.iter().map(stored).collect::<Result<Vec<_>, _>>()?;
            if !keys.is_empty() {
                let (rcr, auth) = rp.start_passkey_authentication(&keys).map_err(ApiError::internal)?;
                let id = db::insert_ceremony(&state.pool, "sign_in", Some(user.id), None, &json(&auth)?, CEREMONY_TTL)
                    .await?;
                return Ok(PasskeyOptions { ceremony_id: id, options: json(&rcr)? });
            }
        }
    }
    let (rcr, auth) = rp.start_discoverable_authentication().map_err(ApiError::internal)?;
    let id = db::insert_ceremony(&state.pool, "discoverable", None, None, &json(&auth)?, CEREMONY_TTL).await?;
    Ok(PasskeyOptions { ceremony_id: id, options: json(&rcr)? })
}

/// Checks a ceremony's answer: the passkey row and user it proved. `kinds` are
/// the ceremony kinds accepted here; `step` the second-factor step it must belong to.
async fn check_assertion(
    state: &AuthState,
    a: PasskeyAssertion,
    kinds: &[&str],
    step: Option<Uuid>,
) -> Result<(db::PasskeyRow, Uuid), ApiError> {
    let rp = rp(state)?;
    let cred: PublicKeyCredential = parse(a.credential)?;
    let c = db::take_ceremony(&state.pool, a.ceremony_id).await?.ok_or_else(invalid_ceremony)?;
    if !kinds.contains(&c.kind.as_str()) || c.mfa_challenge_id != step {
        return Err(invalid_ceremony());
    }
    let row =
        db::by_credential(&state.pool, cred.get_credential_id()).await?.ok_or_else(|| rejected("unknown passkey"))?;
    let mut key = stored(&row)?;
    let result = if c.kind == "discoverable" {
        let (user, _) = rp.identify_discoverable_authentication(&cred).map_err(rejected)?;
        if user != row.user_id {
            return Err(rejected("the passkey belongs to another account"));
        }
        let auth: DiscoverableAuthentication = serde_json::from_value(c.state).map_err(ApiError::internal)?;
        rp.finish_discoverable_authentication_v2(&cred, auth, &key).map_err(rejected)?
    } else {
        if c.user_id != Some(row.user_id) {
            return Err(rejected("the passkey belongs to another account"));
        }
        let auth: PasskeyAuthentication = serde_json::from_value(c.state).map_err(ApiError::internal)?;
        rp.finish_passkey_authentication(&cred, &auth).map_err(rejected)?
    };
    if !result.user_verified() {
        return Err(rejected("the device did not verify the user"));
    }
    let changed = key.update_credential(&result).unwrap_or(false);
    db::used(&state.pool, row.id, if changed { Some(json(&key)?) } else { None }.as_ref()).await?;
    let user = row.user_id;
    Ok((row, user))
}

/// Finishes a passkey sign-in: a session counting two factors.
pub async fn finish_sign_in(
    state: &AuthState,
    a: PasskeyAssertion,
    client: &ClientInfo,
) -> Result<AuthResponse, ApiError> {
    let (row, user_id) = check_assertion(state, a, &["sign_in", "discoverable"], None).await?;
    let user = super::db::user_by_id(&state.pool, user_id).await?.ok_or_else(invalid_ceremony)?;
    audit::record(
        &state.pool,
        &format!("user:{user_id}"),
        Some(user_id),
        "auth.sign_in",
        None,
        serde_json::json!({"method": "passkey", "passkey": row.id, "ip": client.ip}),
    )
    .await?;
    service::start_session(state, user, client, &SessionAuth { amr: vec!["passkey".into()], aal: 2 }).await
}

/// Starts a passkey ceremony as the second factor of the step `mfa_token` names.
pub async fn start_second_factor(state: &AuthState, mfa_token: &str) -> Result<PasskeyOptions, ApiError> {
    let rp = rp(state)?;
    let step = super::mfa::live_step(state, mfa_token).await?.ok_or_else(super::mfa::invalid_step)?;
    let keys = db::passkeys(&state.pool, step.user_id).await?.iter().map(stored).collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(ApiError::bad_request("no_passkey", "this account has no passkey"));
    }
    let (rcr, auth) = rp.start_passkey_authentication(&keys).map_err(ApiError::internal)?;
    let id = db::insert_ceremony(
        &state.pool,
        "second_factor",
        Some(step.user_id),
        Some(step.id),
        &json(&auth)?,
        CEREMONY_TTL,
    )
    .await?;
    Ok(PasskeyOptions { ceremony_id: id, options: json(&rcr)? })
}

/// Checks a passkey answer as the second factor of step `step` for `user`.
pub async fn check_second_factor(
    state: &AuthState,
    user: Uuid,
    step: Uuid,
    a: PasskeyAssertion,
) -> Result<bool, ApiError> {
    match check_assertion(state, a, &["second_factor"], Some(step)).await {
        Ok((_, owner)) => Ok(owner == user),
        Err(e) if e.status == StatusCode::UNAUTHORIZED || e.status == StatusCode::BAD_REQUEST => Ok(false),
        Err(e) => Err(e),
    }
}
