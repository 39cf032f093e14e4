//! Second factors: TOTP authenticators (RFC 6238, secret sealed, each time step
//! accepted once), ten single-use backup codes, the second-factor step every
//! sign-in path ends in when the user has a factor, re-authentication for
//! sensitive changes, and the admin's reset.

pub mod db;
mod routes;

pub use routes::routes;

use std::time::Duration;

use http::StatusCode;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::db::UserRow;
use super::service::{AuthState, ClientInfo, Principal};
use super::tokens::{self, SessionAuth};
use super::types::{
    AuthResponse, BackupCodes, MfaChallenge, MfaStatus, MfaVerifyRequest, ReauthRequest, TotpEnrollment,
};
use crate::audit;
use crate::error::ApiError;

/// How long the second-factor step of a sign-in stays open.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// Codes tried per second-factor step before it is void.
pub const CHALLENGE_ATTEMPTS: i32 = 5;
/// Second-factor codes tried per user per window (across steps and re-authentication).
pub const USER_ATTEMPTS: i32 = 10;
/// The window of [`USER_ATTEMPTS`].
pub const USER_WINDOW: Duration = Duration::from_secs(600);
/// How recent a sign-in or re-authentication must be to remove a factor.
pub const REAUTH_WINDOW: Duration = Duration::from_secs(600);
/// Backup codes made at a time.
pub const BACKUP_CODES: usize = 10;
/// Prefix of second-factor step tokens.
const CHALLENGE_PREFIX: &str = "cm_";
/// The issuer shown in authenticator apps.
const ISSUER: &str = "Carmenta";

fn invalid_code() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_code", "the code is wrong, expired or already used")
}

/// The second factors a sign-in of `user` would ask for.
pub async fn factors(state: &AuthState, user: Uuid) -> Result<Vec<String>, ApiError> {
    Ok(factor_names(&db::factor_state(&state.pool, user).await?))
}

/// The factor names of a [`db::FactorState`] (backup codes only beside another factor).
fn factor_names(f: &db::FactorState) -> Vec<String> {
    let mut out = Vec::new();
    if f.totp {
        out.push("totp".to_string());
    }
    if f.passkey {
        out.push("passkey".to_string());
    }
    if !out.is_empty() && f.backup_codes > 0 {
        out.push("backup_code".to_string());
    }
    out
}

/// Opens the second-factor step after first factor `method`.
pub async fn challenge(
    state: &AuthState,
    user: &UserRow,
    method: &str,
    factors: Vec<String>,
    client: &ClientInfo,
) -> Result<MfaChallenge, ApiError> {
    let token = tokens::random_token(CHALLENGE_PREFIX);
    let client_pair = (client.ip.as_deref(), client.user_agent.as_deref());
    let amr = vec![method.to_string()];
    let expires_at =
        db::insert_challenge(&state.pool, user.id, &tokens::hash_token(&token), &amr, client_pair, CHALLENGE_TTL)
            .await?;
    audit::record(
        &state.pool,
        &format!("user:{}", user.id),
        Some(user.id),
        "auth.mfa_required",
        None,
        serde_json::json!({"method": method, "ip": client.ip}),
    )
    .await?;
    Ok(MfaChallenge { status: "needs_second_factor", mfa_token: token, factors, expires_at })
}

/// 401 `invalid_mfa_token`: the sign-in step is unknown, used up or expired.
pub(crate) fn invalid_step() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_mfa_token", "this sign-in step is unknown, used up or expired")
}

/// The live step `token` names, without counting an attempt.
pub(crate) async fn live_step(state: &AuthState, token: &str) -> Result<Option<db::ChallengeRow>, ApiError> {
    if token.len() > 128 {
        return Ok(None);
    }
    Ok(db::live_challenge(&state.pool, &tokens::hash_token(token), CHALLENGE_ATTEMPTS).await?)
}

/// The second factors of the live step `token` names (none when it is not live).
pub async fn step_factors(state: &AuthState, token: &str) -> Result<Vec<String>, ApiError> {
    match live_step(state, token).await? {
        Some(step) => factors(state, step.user_id).await,
        None => Ok(Vec::new()),
    }
}

/// Counts a second-factor attempt for `user`; 429 past the budget.
async fn user_budget(state: &AuthState, user: Uuid) -> Result<(), ApiError> {
    let n = super::db::hit_window(&state.pool, &format!("mfa-user:{user}"), USER_WINDOW).await?;
    if n > USER_ATTEMPTS {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many second-factor attempts; try again later",
        ));
    }
    Ok(())
}

/// The TOTP of `secret` for `email`, as authenticator apps compute it (SHA-1,
/// six digits, 30 s steps, one step of clock skew either way).
fn totp_of(secret: Vec<u8>, email: &str) -> Result<totp_rs::Totp, ApiError> {
    totp_rs::Builder::new()
        .with_secret(secret)
        .with_account_name(email.replace(':', ""))
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(ApiError::internal)
}

fn unix_now() -> u64 {
    time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64
}

/// The matching time step of `code` for the user's authenticator, if it matches.
async fn totp_step(
    state: &AuthState,
    user: Uuid,
    email: &str,
    code: &str,
    pending: bool,
) -> Result<Option<i64>, ApiError> {
    let Some(row) = db::totp(&state.pool, user).await? else { return Ok(None) };
    if row.confirmed_at.is_none() != pending {
        return Ok(None);
    }
    let secret = state.keyring.open_secret("totp", &user.to_string(), &row.secret).map_err(ApiError::internal)?;
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    Ok(totp_of(secret, email)?.check(&code, unix_now()).and_then(|s| i64::try_from(s).ok()))
}

/// Checks an authenticator code and uses its time step up.
async fn use_code(state: &AuthState, user: &UserRow, code: &str) -> Result<bool, ApiError> {
    let email = user.email.as_deref().unwrap_or_default();
    match totp_step(state, user.id, email, code, false).await? {
        Some(step) => Ok(db::use_totp_step(&state.pool, user.id, step, false).await?),
        None => Ok(false),
    }
}

/// The stored form of a backup code: SHA-256 of the user id and the code as typed
/// without separators, lowercased (codes carry 60 random bits).
fn backup_hash(user: Uuid, code: &str) -> Vec<u8> {
    let norm: String = code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect();
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update(norm.as_bytes());
    h.finalize().to_vec()
}

/// Checks and uses up a backup code.
async fn use_backup(state: &AuthState, user: Uuid, code: &str) -> Result<bool, ApiError> {
    if code.len() > 64 {
        return Ok(false);
    }
    Ok(db::use_backup_code(&state.pool, user, &backup_hash(user, code)).await?)
}

/// Ten new backup codes (`xxxx-xxxx-xxxx`, lowercase letters and digits without
/// look-alikes), replacing the user's old ones.
async fn new_backup_codes(state: &AuthState, user: Uuid) -> Result<Vec<String>, ApiError> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let codes: Vec<String> = (0..BACKUP_CODES)
        .map(|_| {
            let chars: String = (0..12).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect();
            format!("{}-{}-{}", &chars[0..4], &chars[4..8], &chars[8..12])
        })
        .collect();
    let hashes: Vec<Vec<u8>> = codes.iter().map(|c| backup_hash(user, c)).collect();
    db::replace_backup_codes(&state.pool, user, &hashes).await?;
    Ok(codes)
}

/// Which second factor a request names: exactly one of a code and a backup code
/// (a passkey is checked on its own, against its ceremony).
enum Proof<'a> {
    Code(&'a str),
    Backup(&'a str),
}

fn one_proof<'a>(code: Option<&'a str>, backup: Option<&'a str>) -> Result<Proof<'a>, ApiError> {
    match (code, backup) {
        (Some(c), None) => Ok(Proof::Code(c)),
        (None, Some(b)) => Ok(Proof::Backup(b)),
        _ => Err(ApiError::bad_request("invalid_request", "send exactly one of `code`, `backup_code` and `passkey`")),
    }
}

/// Checks one second factor of `user`; the method it proves (`otp`, `backup_code`).
async fn check_proof(state: &AuthState, user: &UserRow, proof: Proof<'_>) -> Result<Option<&'static str>, ApiError> {
    Ok(match proof {
        Proof::Code(c) => use_code(state, user, c).await?.then_some("otp"),
        Proof::Backup(b) => use_backup(state, user.id, b).await?.then_some("backup_code"),
    })
}

/// Ends the second-factor step: a session whose sign-in records both factors (aal2).
pub async fn verify(state: &AuthState, req: MfaVerifyRequest, client: &ClientInfo) -> Result<AuthResponse, ApiError> {
    let proof = match &req.passkey {
        Some(_) if req.code.is_some() || req.backup_code.is_some() => {
            return Err(ApiError::bad_request(
                "invalid_request",
                "send exactly one of `code`, `backup_code` and `passkey`",
            ));
        }
        Some(_) => None,
        None => Some(one_proof(req.code.as_deref(), req.backup_code.as_deref())?),
    };
    let invalid_token = invalid_step;
    if req.mfa_token.len() > 128 {
        return Err(invalid_token());
    }
    let step = db::attempt_challenge(&state.pool, &tokens::hash_token(&req.mfa_token), CHALLENGE_ATTEMPTS)
        .await?
        .ok_or_else(invalid_token)?;
    user_budget(state, step.user_id).await?;
    let user = super::db::user_by_id(&state.pool, step.user_id).await?.ok_or_else(invalid_token)?;
    let method = match (proof, req.passkey) {
        (Some(proof), _) => check_proof(state, &user, proof).await?,
        (None, Some(a)) => super::passkeys::check_second_factor(state, user.id, step.id, a).await?.then_some("passkey"),
        (None, None) => None,
    };
    let Some(method) = method else {
        audit::record(
            &state.pool,
            "anonymous",
            Some(user.id),
            "auth.mfa_failed",
            None,
            serde_json::json!({"ip": client.ip}),
        )
        .await?;
        return Err(invalid_code());
    };
    if !db::finish_challenge(&state.pool, step.id).await? {
        return Err(invalid_token());
    }
    let mut amr = step.amr.clone();
    amr.extend([method.to_string(), "mfa".to_string()]);
    audit::record(
        &state.pool,
        &format!("user:{}", user.id),
        Some(user.id),
        "auth.mfa_verified",
        None,
        serde_json::json!({"method": method, "ip": client.ip}),
    )
    .await?;
    super::service::start_session(state, user, client, &SessionAuth { amr, aal: 2 }).await
}

/// The session behind a principal (sessions, and access tokens of one): second
/// factors are managed from a signed-in session, not with a service key.
pub(crate) fn session_of(p: &Principal) -> Result<(Uuid, Uuid), ApiError> {
    match p {
        Principal::User { user_id, session_id, act: None, .. } => Ok((*user_id, *session_id)),
        Principal::User { .. } => Err(ApiError::forbidden("an impersonated session cannot change second factors")),
        _ => Err(ApiError::bad_request("session_required", "second factors are managed from a signed-in session")),
    }
}

async fn user_of(state: &AuthState, id: Uuid) -> Result<UserRow, ApiError> {
    super::db::user_by_id(&state.pool, id).await?.ok_or_else(|| ApiError::unauthorized("authentication required"))
}

/// The caller's second factors.
pub async fn status(state: &AuthState, p: &Principal) -> Result<MfaStatus, ApiError> {
    let user = super::service::require_user(p)?;
    let f = db::factor_state(&state.pool, user).await?;
    Ok(MfaStatus {
        totp: f.totp,
        totp_pending: f.totp_pending,
        backup_codes_remaining: f.backup_codes,
        factors: factor_names(&f),
    })
}

/// Starts a TOTP enrolment (a new secret, replacing an unconfirmed one); 409
/// `totp_exists` when one is confirmed.
pub async fn start_totp(state: &AuthState, p: &Principal) -> Result<TotpEnrollment, ApiError> {
    let (user_id, _) = session_of(p)?;
    let user = user_of(state, user_id).await?;
    let secret: [u8; 20] = rand::random();
    let sealed = state.keyring.seal_secret("totp", &user_id.to_string(), &secret);
    if !db::put_pending_totp(&state.pool, user_id, &sealed).await? {
        return Err(ApiError::conflict("totp_exists", "an authenticator app is already enrolled; remove it first"));
    }
    let totp = totp_of(secret.to_vec(), user.email.as_deref().unwrap_or_default())?;
    let otpauth_url = totp.to_url().map_err(ApiError::internal)?;
    let qr_svg = qrcode::QrCode::new(otpauth_url.as_bytes())
        .map_err(ApiError::internal)?
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .build();
    use base64::Engine as _;
    let qr_data_url =
        format!("data:image/svg+xml;base64,{}", base64::engine::general_purpose::STANDARD.encode(qr_svg.as_bytes()));
    Ok(TotpEnrollment { secret: totp.secret().to_base32(), otpauth_url, qr_svg, qr_data_url })
}

/// Confirms a TOTP enrolment with a code from the app: the factor is on, the
/// current session counts as two-factor, and (the first time) ten backup codes
/// are made and returned once.
pub async fn confirm_totp(state: &AuthState, p: &Principal, code: &str) -> Result<BackupCodes, ApiError> {
    let (user_id, session) = session_of(p)?;
    let user = user_of(state, user_id).await?;
    user_budget(state, user_id).await?;
    let email = user.email.as_deref().unwrap_or_default();
    let step = totp_step(state, user_id, email, code, true).await?.ok_or_else(invalid_code)?;
    if !db::use_totp_step(&state.pool, user_id, step, true).await? {
        return Err(invalid_code());
    }
    let codes = if db::backup_codes_left(&state.pool, user_id).await? == 0 {
        new_backup_codes(state, user_id).await?
    } else {
        Vec::new()
    };
    super::db::step_up_session(&state.pool, session, &["otp", "mfa"], 2).await?;
    audit::record(
        &state.pool,
        &p.actor(),
        Some(user_id),
        "auth.mfa_enrolled",
        None,
        serde_json::json!({"factor": "totp"}),
    )
    .await?;
    Ok(BackupCodes { codes })
}

/// 403 `reauthentication_required` unless the session proved its user recently.
pub(crate) async fn require_recent(state: &AuthState, session: Uuid) -> Result<(), ApiError> {
    if super::db::recently_authenticated(&state.pool, session, REAUTH_WINDOW).await? {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "reauthentication_required",
        "sign in again or re-authenticate (POST /v1/auth/reauthenticate) first",
    ))
}

/// Removes the authenticator app (needs a recent sign-in or re-authentication);
/// with no second factor left, the backup codes go too.
pub async fn remove_totp(state: &AuthState, p: &Principal) -> Result<(), ApiError> {
    let (user_id, session) = session_of(p)?;
    require_recent(state, session).await?;
    if !db::delete_totp(&state.pool, user_id).await? {
        return Err(ApiError::not_found("no authenticator app is enrolled"));
    }
    if factors(state, user_id).await?.is_empty() {
        db::delete_backup_codes(&state.pool, user_id).await?;
    }
    audit::record(
        &state.pool,
        &p.actor(),
        Some(user_id),
        "auth.mfa_removed",
        None,
        serde_json::json!({"factor": "totp"}),
    )
    .await?;
    Ok(())
}

/// New backup codes in place of the old (needs a recent sign-in or
/// re-authentication and a second factor to back up).
pub async fn regenerate_backup_codes(state: &AuthState, p: &Principal) -> Result<BackupCodes, ApiError> {
    let (user_id, session) = session_of(p)?;
    require_recent(state, session).await?;
    if factors(state, user_id).await?.is_empty() {
        return Err(ApiError::conflict("no_second_factor", "enrol a second factor before making backup codes"));
    }
    let codes = new_backup_codes(state, user_id).await?;
    audit::record(&state.pool, &p.actor(), Some(user_id), "auth.backup_codes_regenerated", None, serde_json::json!({}))
        .await?;
    Ok(BackupCodes { codes })
}

/// Proves the user again in this session (password, authenticator code or backup
/// code), opening the window for sensitive changes.
pub async fn reauthenticate(
    state: &AuthState,
    p: &Principal,
    req: ReauthRequest,
    client: &ClientInfo,
) -> Result<(), ApiError> {
    let (user_id, session) = session_of(p)?;
    let user = user_of(state, user_id).await?;
    let ok = match (req.password, req.code.as_deref(), req.backup_code.as_deref()) {
        (Some(password), None, None) => {
            let email = user.email.clone().unwrap_or_default();
            let req = super::types::SignInRequest { email, password };
            match super::service::check_password(state, req, client, "auth.reauthenticated").await {
                Ok(_) => true,
                Err(e) if e.code == "invalid_credentials" => false,
                Err(e) => return Err(e),
            }
        }
        (None, code, backup) => {
            user_budget(state, user_id).await?;
            check_proof(state, &user, one_proof(code, backup)?).await?.is_some()
        }
        _ => return Err(ApiError::bad_request("invalid_request", "send one of `password`, `code`, `backup_code`")),
    };
    if !ok {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "that did not prove who you are"));
    }
    super::db::touch_authenticated(&state.pool, session).await?;
    Ok(())
}

/// Removes every second factor of `user`: the authenticator app, backup codes and
/// passkeys (an admin's reset for a user who lost them; the caller audits).
pub async fn reset(state: &AuthState, user: Uuid) -> Result<bool, ApiError> {
    let had = db::delete_totp(&state.pool, user).await?;
    let codes = db::delete_backup_codes(&state.pool, user).await?;
    let keys = super::passkeys::db::delete_all(&state.pool, user).await?;
    Ok(had || codes > 0 || keys > 0)
}
