//! Auth service functions: sign-up, sign-in (rate limits, lockout, equal time),
//! sessions, access tokens, resolving credentials to a principal, profile updates.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::db::{self, ProfilePatch, UserRow};
use super::password;
use super::tokens::{self, KeyStore, SERVICE_KEY_PREFIX, SESSION_PREFIX, TokenError};
use super::types::*;
use crate::audit;
use crate::error::ApiError;
use crate::pagination::{Page, PageQuery};
use http::StatusCode;

/// Largest serialised size of one metadata object.
pub const METADATA_LIMIT: usize = 8 * 1024;
/// Window for per-IP sign-in limits.
pub const IP_WINDOW: Duration = Duration::from_secs(600);

/// The state of auth: what its services need, and nothing of other areas.
#[derive(Debug)]
pub struct AuthState {
    /// The database pool.
    pub pool: PgPool,
    /// The resolved configuration (auth reads its session, lockout and URL settings).
    pub config: Arc<crate::config::Config>,
    /// Keys for secrets at rest (the signing keys' seeds).
    pub keyring: Arc<crate::crypto::Keyring>,
    /// Outgoing mail (verification, magic links, password resets).
    pub mailer: crate::mail::Mailer,
    /// Signing keys.
    pub keys: KeyStore,
    /// The external issuer (Clerk or another OIDC provider), when configured.
    pub external: Option<super::external::ExternalIssuer>,
    /// Cached profiles and sessions, invalidated across replicas by NOTIFY.
    pub cache: std::sync::Arc<super::cache::AuthCache>,
    /// The WebAuthn relying party (absent when the public URL's host is an IP address).
    pub webauthn: Option<Arc<webauthn_rs::Webauthn>>,
}

/// Why auth could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The signing keys could not be loaded or created.
    #[error(transparent)]
    Keys(#[from] super::tokens::KeyStoreError),
    /// The external issuer's configuration is refused.
    #[error(transparent)]
    External(#[from] super::external::ExternalConfigError),
}

impl AuthState {
    /// The state, loading (or creating) the signing keys.
    pub async fn load(
        pool: PgPool,
        keyring: Arc<crate::crypto::Keyring>,
        config: Arc<crate::config::Config>,
        mailer: crate::mail::Mailer,
    ) -> Result<Arc<AuthState>, AuthSetupError> {
        let keys =
            KeyStore::load(&pool, &keyring, config.issuer(), config.jwt_audience.clone(), config.access_token_ttl)
                .await?;
        crate::install_tls_provider();
        let external = super::external::ExternalIssuer::from_config(&config)?;
        let webauthn = super::passkeys::relying_party(&config).map(Arc::new);
        Ok(Arc::new(AuthState { pool, config, keyring, mailer, keys, external, cache: Default::default(), webauthn }))
    }
}

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The session cookie (subject to CSRF checks).
    Cookie,
    /// A session token as a bearer.
    SessionBearer,
    /// A JWT access token.
    Jwt,
    /// A token from the external issuer (no Carmenta session).
    External,
}

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An end user.
    User {
        /// The user.
        user_id: Uuid,
        /// Their session.
        session_id: Uuid,
        /// How they authenticated.
        via: Via,
        /// The admin acting as this user (an impersonation session).
        act: Option<Uuid>,
    },
    /// The app's server, with a service key.
    Service {
        /// The key.
        key_id: Uuid,
        /// Whether it may write.
        full: bool,
        /// The user it acts for, if it named one.
        acting_for: Option<Uuid>,
    },
}

impl Principal {
    /// The user the request acts as, if any.
    pub fn user_id(&self) -> Option<Uuid> {
        match self {
            Principal::User { user_id, .. } => Some(*user_id),
            Principal::Service { acting_for, .. } => *acting_for,
        }
    }
    /// Whether this is a service key.
    pub fn is_service(&self) -> bool {
        matches!(self, Principal::Service { .. })
    }
    /// The audit actor string.
    pub fn actor(&self) -> String {
        match self {
            Principal::User { user_id, act: Some(admin), .. } => format!("admin:{admin} as user:{user_id}"),
            Principal::User { user_id, .. } => format!("user:{user_id}"),
            Principal::Service { key_id, .. } => format!("service_key:{key_id}"),
        }
    }
}

fn token_error(e: TokenError) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, e.code(), format!("access token rejected: {e}"))
}

/// Resolves a bearer credential (JWT, session token or service key).
pub async fn resolve_bearer(state: &AuthState, token: &str) -> Result<Principal, ApiError> {
    if token.starts_with(SERVICE_KEY_PREFIX) {
        let key = db::service_key_by_hash(&state.pool, &tokens::hash_token(token)).await?.ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "unknown or revoked service key")
        })?;
        return Ok(Principal::Service { key_id: key.id, full: key.scope == "full", acting_for: None });
    }
    if token.starts_with(SESSION_PREFIX) {
        return resolve_session(state, token, Via::SessionBearer).await;
    }
    if let Some(ext) = &state.external
        && super::external::unverified_issuer(token).as_deref() == Some(ext.issuer())
    {
        let claims = ext.verify(token).await.map_err(token_error)?;
        let user_id = ext.user_id(&claims.sub);
        if !ext.is_provisioned(user_id) {
            db::ensure_external_user(&state.pool, user_id, &claims.sub).await?;
            ext.mark_provisioned(user_id);
        }
        return Ok(Principal::User { user_id, session_id: Uuid::nil(), via: Via::External, act: None });
    }
    let keys = &state.keys;
    let claims = match keys.verify(token) {
        Err(TokenError::UnknownKey) if keys.may_refresh() => {
            // Another replica may have rotated: reload once, then retry.
            keys.refresh(&state.pool, &state.keyring).await.map_err(ApiError::internal)?;
            keys.verify(token).map_err(token_error)?
        }
        other => other.map_err(token_error)?,
    };
    let user_id = Uuid::parse_str(&claims.sub).map_err(|_| token_error(TokenError::Claims("sub".into())))?;
    let session_id = Uuid::parse_str(&claims.sid).map_err(|_| token_error(TokenError::Claims("sid".into())))?;
    // The token's session must still be live: sign-out, "sign out everywhere", a
    // password change or reset and user deletion end its access tokens at once, on
    // every replica (the cache entry is evicted by NOTIFY).
    let cache = &state.cache;
    let idle = state.config.session_idle_ttl;
    let owner = match cache.live_session_owner(session_id, idle) {
        Some(owner) => Some(owner),
        None => {
            let generation = cache.generation();
            // Fails closed: a session that cannot be checked is not accepted.
            let row = db::live_session_by_id(&state.pool, session_id, idle).await.map_err(|e| {
                tracing::warn!(error = %e, "checking an access token's session");
                ApiError::unavailable("cannot check the session now; retry shortly")
            })?;
            row.map(|s| {
                let owner = s.user_id;
                cache.put_session_by_id(generation, s);
                owner
            })
        }
    };
    if owner != Some(user_id) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "the access token's session has ended"));
    }
    let act = claims.act.as_ref().and_then(|a| Uuid::parse_str(&a.sub).ok());
    Ok(Principal::User { user_id, session_id, via: Via::Jwt, act })
}

/// Resolves a session token (from the cache when it can).
pub async fn resolve_session(state: &AuthState, token: &str, via: Via) -> Result<Principal, ApiError> {
    let hash = tokens::hash_token(token);
    let cache = &state.cache;
    let row = match cache.session(&hash, state.config.session_idle_ttl) {
        Some(row) => row,
        None => {
            let generation = cache.generation();
            let row = db::live_session(&state.pool, &hash, state.config.session_idle_ttl).await?.ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_session", "session is unknown, expired or revoked")
            })?;
            cache.put_session(generation, hash, row.clone());
            row
        }
    };
    Ok(Principal::User { user_id: row.user_id, session_id: row.id, via, act: row.impersonator_id })
}

/// Records that a user (`u:<id>`) or a session (`s:<id>`) changed: evicts it from
/// this replica's cache at once and notifies the others.
pub async fn changed(state: &AuthState, payload: String) -> Result<(), ApiError> {
    state.cache.apply(&payload);
    db::notify_auth(&state.pool, &payload).await?;
    Ok(())
}

/// A user row, from the cache when it can.
async fn cached_user(state: &AuthState, id: Uuid) -> Result<Option<UserRow>, ApiError> {
    let cache = &state.cache;
    if let Some(u) = cache.user(id) {
        return Ok(Some(u));
    }
    let generation = cache.generation();
    let row = db::user_by_id(&state.pool, id).await?;
    if let Some(u) = &row {
        cache.put_user(generation, u.clone());
    }
    Ok(row)
}

/// Makes a service principal act for `user` (who must exist); records it.
pub async fn act_for(
    state: &AuthState,
    principal: Principal,
    user: Uuid,
    method: &str,
    path: &str,
) -> Result<Principal, ApiError> {
    let Principal::Service { key_id, full, .. } = principal else {
        return Err(ApiError::forbidden("only service keys may act for another user"));
    };
    if db::user_by_id(&state.pool, user).await?.is_none() {
        return Err(ApiError::not_found("user not found"));
    }
    audit::record(
        &state.pool,
        &format!("service_key:{key_id}"),
        Some(user),
        "service_key.act_as",
        Some(&format!("{method} {path}")),
        serde_json::json!({}),
    )
    .await?;
    Ok(Principal::Service { key_id, full, acting_for: Some(user) })
}

/// Validates an email address: one `@`, a non-empty local part ≤ 64, a dotted
/// domain, no whitespace or control characters, ≤ 254 bytes.
pub fn validate_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim();
    let bad = || ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_email", "not a valid email address");
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = email.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty() || local.len() > 64 || local.contains('@') || domain.len() < 3 {
        return Err(bad());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 || labels.iter().any(|l| l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-'))
    {
        return Err(bad());
    }
    if !domain.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '.') {
        return Err(bad());
    }
    Ok(email.to_string())
}

fn account_key(email: &str) -> Vec<u8> {
    Sha256::digest(format!("account:{}", email.trim().to_lowercase()).as_bytes()).to_vec()
}

/// The lockout key of an account tried from one address.
fn pair_key(account: &[u8], ip: Option<&str>) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"pair:");
    h.update(account);
    h.update(ip.unwrap_or("").as_bytes());
    h.finalize().to_vec()
}

/// How many more failures, across all addresses, lock an account for addresses
/// it never signed in from.
const ACCOUNT_LOCK_FACTOR: u32 = 5;

fn too_many_attempts() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        "too many failed attempts for this account; try again later",
    )
}

fn check_metadata(field: &str, v: &serde_json::Value) -> Result<(), ApiError> {
    if !v.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_metadata",
            format!("{field} must be a JSON object"),
        ));
    }
    let size = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if size > METADATA_LIMIT {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "metadata_too_large",
            format!("{field} is {size} bytes; the limit is {METADATA_LIMIT}"),
        ));
    }
    Ok(())
}

fn check_name(name: Option<&str>) -> Result<(), ApiError> {
    match name {
        Some(n) if n.chars().count() > 256 => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_name", "name is longer than 256 characters"))
        }
        _ => Ok(()),
    }
}

fn policy_error(e: password::PolicyError) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "weak_password", e.to_string())
}

/// Client facts recorded with a new session.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// IP address.
    pub ip: Option<String>,
    /// User agent (truncated).
    pub user_agent: Option<String>,
}

/// Counts an attempt against the caller's IP; 429 past the configured limit.
/// Refuses an address already over its sign-in budget, without counting: called
/// before a request's body is read, so a limited address costs no parsing.
pub async fn ip_over_budget(state: &AuthState, ip: &str) -> Result<(), ApiError> {
    let n = db::window_count(&state.pool, &format!("signin-ip:{ip}"), IP_WINDOW).await?;
    if n >= i32::try_from(state.config.signin_ip_limit).unwrap_or(i32::MAX) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many attempts from this address; try again later",
        ));
    }
    Ok(())
}

/// Counts a sign-in attempt of the client's address; refuses one over the budget.
pub async fn ip_limit(state: &AuthState, client: &ClientInfo) -> Result<(), ApiError> {
    let Some(ip) = &client.ip else { return Ok(()) };
    let n = db::hit_window(&state.pool, &format!("signin-ip:{ip}"), IP_WINDOW).await?;
    if n > i32::try_from(state.config.signin_ip_limit).unwrap_or(i32::MAX) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many attempts from this address; try again later",
        ));
    }
    Ok(())
}

/// A banned user gets 403 `user_banned` on every sign-in path.
fn refuse_banned(user: &UserRow) -> Result<(), ApiError> {
    if user.banned_at.is_some() {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "user_banned", "this account is banned"));
    }
    Ok(())
}

/// A new session and access token for `user`, authenticated as `auth` says.
pub async fn start_session(
    state: &AuthState,
    user: UserRow,
    client: &ClientInfo,
    auth: &tokens::SessionAuth,
) -> Result<AuthResponse, ApiError> {
    refuse_banned(&user)?;
    open_session(state, user, client, None, state.config.session_ttl, auth).await
}

/// What a passed first factor leads to: a session, or (for a user with a second
/// factor) the second-factor step, with no session yet.
#[derive(Debug)]
pub enum SignIn {
    /// Signed in.
    Session(Box<AuthResponse>),
    /// A second factor is required first.
    SecondFactor(MfaChallenge),
}

/// Ends a first factor (`method`: `pwd`, `email`, `social`): a session when the
/// user has no second factor, else a challenge that only a second factor turns
/// into one. Every sign-in path goes through here, so none skips the second factor.
pub async fn after_first_factor(
    state: &AuthState,
    user: UserRow,
    client: &ClientInfo,
    method: &str,
) -> Result<SignIn, ApiError> {
    refuse_banned(&user)?;
    let factors = super::mfa::factors(state, user.id).await?;
    if factors.is_empty() {
        let session = start_session(state, user, client, &tokens::SessionAuth::single(method)).await?;
        return Ok(SignIn::Session(Box::new(session)));
    }
    Ok(SignIn::SecondFactor(super::mfa::challenge(state, &user, method, factors, client).await?))
}

/// A new session for `user` (as `impersonator` when an admin opens it) lasting
/// `lifetime`, with its first access token.
pub async fn open_session(
    state: &AuthState,
    user: UserRow,
    client: &ClientInfo,
    impersonator: Option<Uuid>,
    lifetime: std::time::Duration,
    auth: &tokens::SessionAuth,
) -> Result<AuthResponse, ApiError> {
    let token = tokens::random_token(SESSION_PREFIX);
    let session = db::insert_session(
        &state.pool,
        user.id,
        &tokens::hash_token(&token),
        lifetime,
        (client.ip.as_deref(), client.user_agent.as_deref()),
        impersonator,
        auth,
    )
    .await?;
    let (access_token, expires_at) =
        state.keys.issue(user.id, session.id, impersonator, auth, None).map_err(ApiError::internal)?;
    Ok(AuthResponse {
        user: UserView::of(user, false),
        session_token: token,
        access_token,
        expires_at,
        session_expires_at: session.expires_at,
    })
}

/// Creates an account with email and password and signs it in.
pub async fn sign_up(state: &AuthState, req: SignUpRequest, client: &ClientInfo) -> Result<AuthResponse, ApiError> {
    create_account(state, req, client, false).await
}

/// Creates an account and signs it in. With `email_proven` (the caller holds a
/// token that was mailed to the address, such as an invitation) the email counts
/// as verified and no verification mail is sent.
pub async fn create_account(
    state: &AuthState,
    req: SignUpRequest,
    client: &ClientInfo,
    email_proven: bool,
) -> Result<AuthResponse, ApiError> {
    let email = validate_email(&req.email)?;
    password::check_policy(&req.password, &email, state.config.password_min_length).map_err(policy_error)?;
    check_name(req.name.as_deref())?;
    let meta = req.unsafe_metadata.unwrap_or_else(|| serde_json::json!({}));
    check_metadata("unsafe_metadata", &meta)?;
    ip_limit(state, client).await?;
    let hash = password::hash(req.password).await.map_err(ApiError::internal)?;
    let user = match db::insert_user(&state.pool, &email, Some(&hash), req.name.as_deref(), &meta).await {
        Ok(u) => u,
        Err(e) if db::is_unique_violation(&e) => {
            return Err(ApiError::conflict("email_taken", "an account with this email already exists"));
        }
        Err(e) => return Err(e.into()),
    };
    audit::record(
        &state.pool,
        &format!("user:{}", user.id),
        Some(user.id),
        "auth.sign_up",
        None,
        serde_json::json!({"ip": client.ip, "email_proven": email_proven}),
    )
    .await?;
    let user = if email_proven {
        db::mark_email_verified(&state.pool, user.id, &email).await?.unwrap_or(user)
    } else {
        super::email::send_verification(state, &user).await?;
        user
    };
    start_session(state, user, client, &tokens::SessionAuth::single("pwd")).await
}

/// Signs in with email and password (then the second factor, if the user has one).
pub async fn sign_in(state: &AuthState, req: SignInRequest, client: &ClientInfo) -> Result<SignIn, ApiError> {
    let user = check_password(state, req, client, "auth.sign_in").await?;
    after_first_factor(state, user, client, "pwd").await
}

/// Checks email and password under the sign-in rules (address budget, lockouts,
/// failures counted and audited); the user on success, audited as `action`.
pub async fn check_password(
    state: &AuthState,
    req: SignInRequest,
    client: &ClientInfo,
    action: &str,
) -> Result<UserRow, ApiError> {
    let invalid = || ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "email or password is incorrect");
    if req.email.len() > 254 || req.password.chars().count() > password::MAX_PASSWORD_LEN {
        return Err(invalid());
    }
    ip_limit(state, client).await?;
    // The lockout rule: `lockout_threshold` failures for one account from one
    // address lock that pair; five times as many across all addresses lock the
    // account for every address except those it signed in (or up) from before, so
    // a stranger can slow an attacker but cannot lock the owner out of their
    // usual device (a guessing botnet is held back by the per-address limit too).
    let key = account_key(&req.email);
    let pair = pair_key(&key, client.ip.as_deref());
    if db::locked_until(&state.pool, &pair).await?.is_some() {
        return Err(too_many_attempts());
    }
    let user = db::user_by_email(&state.pool, req.email.trim()).await?;
    let account_locked = db::locked_until(&state.pool, &key).await?.is_some();
    if account_locked {
        let known = match (&user, &client.ip) {
            (Some(u), Some(ip)) => db::signed_in_from(&state.pool, u.id, ip).await?,
            _ => false,
        };
        if !known {
            return Err(too_many_attempts());
        }
    }
    let ok = password::verify(req.password, user.as_ref().and_then(|u| u.password_hash.clone())).await;
    match (ok, user) {
        (true, Some(user)) => {
            db::clear_failures(&state.pool, &pair).await?;
            // The owner's own typos are forgotten; a lock from many addresses stays.
            if !account_locked {
                db::clear_failures(&state.pool, &key).await?;
            }
            audit::record(
                &state.pool,
                &format!("user:{}", user.id),
                Some(user.id),
                action,
                None,
                serde_json::json!({"ip": client.ip}),
            )
            .await?;
            Ok(user)
        }
        (_, user) => {
            let (threshold, duration) = (state.config.lockout_threshold, state.config.lockout_duration);
            let locked = db::record_failure(&state.pool, &pair, threshold, duration).await?;
            let account_locked =
                db::record_failure(&state.pool, &key, threshold.saturating_mul(ACCOUNT_LOCK_FACTOR), duration).await?;
            let locked = locked || account_locked;
            audit::record(
                &state.pool,
                "anonymous",
                user.map(|u| u.id),
                "auth.sign_in_failed",
                None,
                serde_json::json!({"ip": client.ip, "locked": locked}),
            )
            .await?;
            Err(invalid())
        }
    }
}

/// Issues a fresh access token for a session principal, with the session's
/// active organization's claims.
pub async fn access_token(state: &AuthState, principal: &Principal) -> Result<TokenResponse, ApiError> {
    match principal {
        Principal::User { user_id, session_id, via: Via::Cookie | Via::SessionBearer, act } => {
            session_token(state, *user_id, *session_id, *act).await
        }
        _ => Err(ApiError::bad_request(
            "session_required",
            "exchange a session token (cookie or bearer), not an access token",
        )),
    }
}

/// An access token for `user`'s session `session` as it stands: the impersonating
/// admin in `act`, the session's active organization's claims.
pub async fn session_token(
    state: &AuthState,
    user: Uuid,
    session: Uuid,
    act: Option<Uuid>,
) -> Result<TokenResponse, ApiError> {
    let (auth, org) = db::token_facts(&state.pool, session).await?;
    let (access_token, expires_at) =
        state.keys.issue(user, session, act, &auth, org.as_ref()).map_err(ApiError::internal)?;
    Ok(TokenResponse { access_token, token_type: "Bearer", expires_at })
}

/// Ends every session of `user` on every replica; how many were live.
pub async fn end_all_sessions(state: &AuthState, user: Uuid) -> Result<u64, ApiError> {
    let n = db::revoke_all_sessions(&state.pool, user, None).await?;
    changed(state, format!("u:{user}")).await?;
    Ok(n)
}

/// Deletes a user and everything they own, on every replica; false if none.
pub async fn remove_user(state: &AuthState, user: Uuid) -> Result<bool, ApiError> {
    let gone = db::delete_user(&state.pool, user).await?;
    changed(state, format!("u:{user}")).await?;
    Ok(gone)
}

/// Signs out of the current session, or of all sessions.
pub async fn sign_out(state: &AuthState, principal: &Principal, all: bool) -> Result<u64, ApiError> {
    let Principal::User { user_id, session_id, .. } = principal else {
        return Err(ApiError::bad_request("session_required", "sign-out needs a user session"));
    };
    let n = if all {
        db::revoke_all_sessions(&state.pool, *user_id, None).await?
    } else {
        u64::from(db::revoke_session(&state.pool, *user_id, *session_id).await?)
    };
    let payload = if all { format!("u:{user_id}") } else { format!("s:{session_id}") };
    changed(state, payload).await?;
    audit::record(
        &state.pool,
        &principal.actor(),
        Some(*user_id),
        "auth.sign_out",
        None,
        serde_json::json!({"all": all, "revoked": n}),
    )
    .await?;
    Ok(n)
}

/// The user a principal acts as, or 401/400 when it has none.
pub fn require_user(principal: &Principal) -> Result<Uuid, ApiError> {
    principal.user_id().ok_or_else(|| {
        ApiError::bad_request(
            "user_required",
            "this endpoint acts on a user: a service key must name one in X-Carmenta-User-Id",
        )
    })
}

/// The caller's own user record.
pub async fn me(state: &AuthState, principal: &Principal) -> Result<UserView, ApiError> {
    let id = require_user(principal)?;
    let row = cached_user(state, id).await?.ok_or_else(|| ApiError::not_found("user not found"))?;
    Ok(UserView::of(row, principal.is_service()))
}

/// Updates the caller's profile.
pub async fn patch_me(state: &AuthState, principal: &Principal, req: PatchMeRequest) -> Result<UserView, ApiError> {
    let id = require_user(principal)?;
    if !principal.is_service() && (req.public_metadata.is_some() || req.private_metadata.is_some()) {
        return Err(ApiError::forbidden("public_metadata and private_metadata can only be set with a service key"));
    }
    check_name(req.name.as_ref().and_then(|n| n.as_deref()))?;
    if let Some(Some(u)) = &req.image_url {
        let ok = u.len() <= 2048 && url::Url::parse(u).map(|p| matches!(p.scheme(), "http" | "https")).unwrap_or(false);
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_image_url",
                "image_url must be an http(s) URL",
            ));
        }
    }
    for (f, v) in [
        ("unsafe_metadata", &req.unsafe_metadata),
        ("public_metadata", &req.public_metadata),
        ("private_metadata", &req.private_metadata),
    ] {
        if let Some(v) = v {
            check_metadata(f, v)?;
        }
    }
    let patch = ProfilePatch {
        name: req.name,
        image_url: req.image_url,
        public_metadata: req.public_metadata,
        private_metadata: req.private_metadata,
        unsafe_metadata: req.unsafe_metadata,
    };
    let row =
        db::update_profile(&state.pool, id, &patch).await?.ok_or_else(|| ApiError::not_found("user not found"))?;
    changed(state, format!("u:{id}")).await?;
    Ok(UserView::of(row, principal.is_service()))
}

/// Changes the password after checking the current one; other sessions are revoked.
pub async fn change_password(
    state: &AuthState,
    principal: &Principal,
    req: ChangePasswordRequest,
) -> Result<(), ApiError> {
    let Principal::User { user_id, session_id, .. } = principal else {
        return Err(ApiError::bad_request("session_required", "changing a password needs the user's own session"));
    };
    let user = db::user_by_id(&state.pool, *user_id).await?.ok_or_else(|| ApiError::not_found("user not found"))?;
    if req.current_password.chars().count() > password::MAX_PASSWORD_LEN
        || !password::verify(req.current_password, user.password_hash.clone()).await
    {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "current password is incorrect"));
    }
    password::check_policy(&req.new_password, user.email.as_deref().unwrap_or(""), state.config.password_min_length)
        .map_err(policy_error)?;
    let hash = password::hash(req.new_password).await.map_err(ApiError::internal)?;
    db::set_password(&state.pool, *user_id, &hash).await?;
    let revoked = db::revoke_all_sessions(&state.pool, *user_id, Some(*session_id)).await?;
    changed(state, format!("u:{user_id}")).await?;
    audit::record(
        &state.pool,
        &principal.actor(),
        Some(*user_id),
        "auth.password_change",
        None,
        serde_json::json!({"revoked_sessions": revoked}),
    )
    .await?;
    Ok(())
}

/// Lists the caller's sessions.
pub async fn sessions(state: &AuthState, principal: &Principal, page: &PageQuery) -> Result<SessionList, ApiError> {
    let id = require_user(principal)?;
    let current = match principal {
        Principal::User { session_id, .. } => Some(*session_id),
        _ => None,
    };
    let limit = page.limit()?;
    let before = page.cursor_text()?.map(|t| crate::pagination::parse_time_id(&t)).transpose()?;
    let rows = db::list_sessions(&state.pool, id, before, limit + 1).await?;
    let page = Page::from_rows(rows, limit, |r| crate::pagination::time_id_cursor(r.created_at, r.id));
    Ok(page.map(|r| SessionView::of(r, current)))
}

/// Revokes one of the caller's sessions; someone else's is "not found".
pub async fn revoke_session(state: &AuthState, principal: &Principal, session: Uuid) -> Result<(), ApiError> {
    let id = require_user(principal)?;
    if !db::revoke_session(&state.pool, id, session).await? {
        return Err(ApiError::not_found("session not found"));
    }
    changed(state, format!("s:{session}")).await?;
    audit::record(
        &state.pool,
        &principal.actor(),
        Some(id),
        "auth.session_revoke",
        Some(&session.to_string()),
        serde_json::json!({}),
    )
    .await?;
    Ok(())
}

/// Deletes the caller's account and everything it owns.
pub async fn delete_me(state: &AuthState, principal: &Principal) -> Result<(), ApiError> {
    let id = require_user(principal)?;
    audit::record(
        &state.pool,
        &principal.actor(),
        Some(id),
        "user.delete",
        Some(&id.to_string()),
        serde_json::json!({}),
    )
    .await?;
    if !remove_user(state, id).await? {
        return Err(ApiError::not_found("user not found"));
    }
    Ok(())
}

/// Creates a service key; returns (the key, its row). The key is shown once.
pub async fn create_service_key(
    pool: &PgPool,
    name: &str,
    full: bool,
) -> Result<(String, db::ServiceKeyRow), sqlx::Error> {
    let key = tokens::random_token(SERVICE_KEY_PREFIX);
    let prefix: String = key.chars().take(10).collect();
    let row =
        db::insert_service_key(pool, name, &tokens::hash_token(&key), &prefix, if full { "full" } else { "read" })
            .await?;
    audit::record(
        pool,
        "cli",
        None,
        "service_key.create",
        Some(&row.id.to_string()),
        serde_json::json!({"name": name, "scope": row.scope}),
    )
    .await?;
    Ok((key, row))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = ((b[i + 1] as char).to_digit(16), (b[i + 2] as char).to_digit(16))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks a post-auth redirect target: a same-site path (`/app`, never `//host`
/// or a backslash form), or an absolute http(s) URL on the public URL's origin or
/// an allowed origin, without credentials. Anything else (other hosts,
/// `javascript:`, control characters, encoded tricks) is refused.
pub fn safe_redirect(config: &crate::config::Config, raw: &str) -> Result<String, ApiError> {
    let refuse = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_redirect_url",
            "redirect_url must be a path on this site or a URL on an allowed origin",
        )
    };
    if raw.is_empty() || raw.len() > 2048 {
        return Err(refuse());
    }
    // Decode repeatedly so double-encoded tricks are seen too.
    let mut forms = vec![raw.to_string()];
    for _ in 0..3 {
        let next = percent_decode(forms.last().map(String::as_str).unwrap_or(""));
        if forms.last() == Some(&next) {
            break;
        }
        forms.push(next);
    }
    if forms.iter().any(|f| f.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\')) {
        return Err(refuse());
    }
    if raw.starts_with('/') {
        if forms.iter().any(|f| f.starts_with("//")) {
            return Err(refuse());
        }
        return Ok(raw.to_string());
    }
    let url = url::Url::parse(raw).map_err(|_| refuse())?;
    if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
        return Err(refuse());
    }
    if !config.origin_allowed(&url.origin().ascii_serialization()) {
        return Err(refuse());
    }
    Ok(url.to_string())
}
