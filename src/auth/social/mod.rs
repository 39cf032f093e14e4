//! Social sign-in: Carmenta as an OAuth 2 / OpenID Connect client of Google,
//! Microsoft, Apple, GitLab (OpenID), GitHub and Discord (OAuth 2 with their user
//! APIs) and any OpenID provider by its discovery URL.
//!
//! A flow is bound to whoever started it: the browser, by a cookie whose hash the
//! flow keeps (hosted pages), or an app, by its own S256 challenge (apps with their
//! own UI exchange a one-time code with the verifier). Toward the provider every
//! flow uses PKCE S256, a `state` used once, and for OpenID a `nonce` checked in
//! the ID token, whose signature, issuer, audience and expiry are verified.
//!
//! Linking never takes over an account: an identity joins an existing account by
//! email only when the provider says the email is verified (a JSON `true`, not
//! `"true"`) and the account's own email is verified; otherwise the user signs in
//! to the account first and links from there. Every sign-in goes through
//! [`service::after_first_factor`], so a second factor is asked for here too.

pub mod db;
mod provider;
mod routes;

pub use provider::{Profile, Provider, display_name as provider_display_name};

/// The name on provider `id`'s buttons (configured or built-in).
pub fn display_name(id: &str) -> String {
    provider::display_name(id, None)
}
pub use routes::routes;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use http::StatusCode;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::service::{self, AuthState, ClientInfo, SignIn};
use super::tokens;
use super::types::{IdentityView, PutSocialProvider, SocialProviderAdminView, SocialProviderView, SocialStart};
use crate::audit;
use crate::error::ApiError;

/// How long a flow may take, from start to callback and exchange.
pub const FLOW_TTL: Duration = Duration::from_secs(600);

/// Who a flow is bound to.
#[derive(Debug)]
pub enum Binding<'a> {
    /// The browser holding the cookie with this value (hosted pages).
    Browser(&'a str),
    /// The app holding the verifier of this S256 challenge.
    App(&'a str),
}

/// What a finished flow leads to.
#[derive(Debug)]
pub enum Completed {
    /// A sign-in (session or second-factor step), and where to go after.
    SignIn(SignIn, Option<String>),
    /// An identity linked to the signed-in user, and where to go after.
    Linked(IdentityView, Option<String>),
    /// An app flow: send the browser to the app with a one-time code.
    AppCode(String),
}

fn sha256(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

/// A random URL-safe value of 256 bits.
pub fn random_value() -> String {
    tokens::random_token("")
}

fn invalid_flow() -> ApiError {
    ApiError::bad_request("invalid_state", "this sign-in attempt is unknown, used or expired; start again")
}

/// Checks an app's PKCE challenge: S256 only, the 43-character form.
fn check_challenge(challenge: &str, method: &str) -> Result<(), ApiError> {
    if method != "S256" {
        return Err(ApiError::bad_request("pkce_s256_required", "code_challenge_method must be S256"));
    }
    if challenge.len() != 43 || !challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(ApiError::bad_request(
            "invalid_code_challenge",
            "code_challenge must be BASE64URL(SHA-256(verifier))",
        ));
    }
    Ok(())
}

/// The providers users can sign in with (for buttons).
pub async fn enabled(state: &AuthState) -> Result<Vec<SocialProviderView>, ApiError> {
    let mut out: Vec<SocialProviderView> = state
        .config
        .social
        .iter()
        .map(|c| SocialProviderView { id: c.id.clone(), name: provider::display_name(&c.id, c.name.as_deref()) })
        .collect();
    for row in db::providers(&state.pool).await? {
        if !out.iter().any(|p| p.id == row.id) {
            out.push(SocialProviderView { name: provider::display_name(&row.id, row.name.as_deref()), id: row.id });
        }
    }
    Ok(out)
}

/// Starts a sign-in (or, with `link_user`, a link) at provider `id`: the URL to
/// send the browser to.
pub async fn start(
    state: &AuthState,
    id: &str,
    binding: Binding<'_>,
    redirect: Option<&str>,
    link_user: Option<Uuid>,
) -> Result<SocialStart, ApiError> {
    let p = Provider::load(state, id).await?;
    let (state_value, nonce, verifier) = (random_value(), random_value(), random_value());
    let (browser_hash, app_challenge) = match binding {
        Binding::Browser(secret) => (Some(sha256(secret)), None),
        Binding::App(challenge) => {
            if redirect.is_none() {
                return Err(ApiError::bad_request("invalid_redirect_url", "an app flow needs redirect_url"));
            }
            (None, Some(challenge))
        }
    };
    let url = p.authorization_url(state, &state_value, &nonce, &verifier).await?;
    let flow = db::NewFlow {
        state_hash: &sha256(&state_value),
        provider: id,
        browser_hash: browser_hash.as_deref(),
        app_challenge,
        code_verifier: &verifier,
        nonce: &nonce,
        redirect_url: redirect,
        link_user_id: link_user,
    };
    let expires_at = db::insert_flow(&state.pool, &flow, FLOW_TTL).await?;
    Ok(SocialStart { authorization_url: url, expires_at })
}

/// Starts an app's flow after checking its challenge.
pub async fn start_for_app(
    state: &AuthState,
    id: &str,
    req: &super::types::SocialStartRequest,
    link_user: Option<Uuid>,
) -> Result<SocialStart, ApiError> {
    check_challenge(&req.code_challenge, &req.code_challenge_method)?;
    let redirect = service::safe_redirect(&state.config, &req.redirect_url)?;
    start(state, id, Binding::App(&req.code_challenge), Some(&redirect), link_user).await
}

/// What the provider sent back to the callback.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CallbackParams {
    /// Authorization code.
    pub code: Option<String>,
    /// Our `state`.
    pub state: Option<String>,
    /// The provider's error code.
    pub error: Option<String>,
    /// Its description.
    pub error_description: Option<String>,
    /// The issuer that answered (RFC 9207), when the provider sends it.
    pub iss: Option<String>,
}

/// Handles the provider's redirect back for provider `id`. `browser` is the
/// flow cookie's value, if the browser sent one.
pub async fn callback(
    state: &AuthState,
    id: &str,
    params: CallbackParams,
    browser: Option<&str>,
    client: &ClientInfo,
) -> Result<Completed, ApiError> {
    let state_value = params.state.filter(|s| !s.is_empty() && s.len() <= 128).ok_or_else(invalid_flow)?;
    let flow = db::take_flow(&state.pool, &sha256(&state_value)).await?.ok_or_else(invalid_flow)?;
    if flow.provider != id {
        return Err(invalid_flow());
    }
    if let Some(expected) = &flow.browser_hash {
        // Bound to a browser: only the one holding the cookie may finish it.
        let same = browser.is_some_and(|b| constant_eq(&sha256(b), expected));
        if !same {
            return Err(ApiError::forbidden("this sign-in was started in another browser").with_code("state_mismatch"));
        }
    }
    if let Some(err) = params.error {
        let detail: String = params.error_description.unwrap_or_default().chars().take(200).collect();
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "provider_denied",
            format!(
                "the provider refused: {}{}",
                err.chars().take(64).collect::<String>(),
                if detail.is_empty() { String::new() } else { format!(" ({detail})") }
            ),
        ));
    }
    let code = params
        .code
        .filter(|c| !c.is_empty() && c.len() <= 2048)
        .ok_or_else(|| ApiError::bad_request("invalid_request", "the provider sent no authorization code"))?;
    let p = Provider::load(state, id).await?;
    if let Some(iss) = params.iss.as_deref() {
        // RFC 9207: an answer from another issuer (a mix-up attack) is refused.
        p.check_issuer(iss).await?;
    }
    let profile = p.finish(state, &code, &flow.code_verifier, &flow.nonce).await?;
    if flow.app_challenge.is_some() {
        let exchange = random_value();
        let result = serde_json::to_value(&profile).map_err(ApiError::internal)?;
        db::park_result(&state.pool, flow.id, &sha256(&exchange), &result).await?;
        let base = flow.redirect_url.clone().unwrap_or_else(|| "/".into());
        let sep = if base.contains('?') { '&' } else { '?' };
        return Ok(Completed::AppCode(format!("{base}{sep}code={exchange}")));
    }
    complete(state, &flow, profile, client).await
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Ends an app's flow with its one-time code and verifier. `linking` is the
/// signed-in user for link flows (who must be the one who started it).
pub async fn exchange(
    state: &AuthState,
    code: &str,
    verifier: &str,
    linking: Option<Uuid>,
    client: &ClientInfo,
) -> Result<Completed, ApiError> {
    let bad = || ApiError::bad_request("invalid_grant", "the code is unknown, used, expired or the verifier is wrong");
    if code.len() > 128 || !(43..=128).contains(&verifier.len()) {
        return Err(bad());
    }
    let flow = db::take_exchange(&state.pool, &sha256(code)).await?.ok_or_else(bad)?;
    let challenge = flow.app_challenge.as_deref().ok_or_else(bad)?;
    let computed = B64URL.encode(Sha256::digest(verifier.as_bytes()));
    if !constant_eq(computed.as_bytes(), challenge.as_bytes()) {
        return Err(bad());
    }
    if flow.link_user_id != linking {
        // A link flow is finished by its user; a sign-in flow by no one signed in as another.
        return Err(bad());
    }
    let profile: Profile = flow.result.clone().and_then(|r| serde_json::from_value(r).ok()).ok_or_else(bad)?;
    complete(state, &flow, profile, client).await
}

/// Turns the provider's answer into a sign-in or a link.
async fn complete(
    state: &AuthState,
    flow: &db::FlowRow,
    p: Profile,
    client: &ClientInfo,
) -> Result<Completed, ApiError> {
    let provider = flow.provider.as_str();
    let existing = db::identity(&state.pool, provider, &p.subject).await?;
    if let Some(user) = flow.link_user_id {
        let identity = match existing {
            Some(i) if i.user_id == user => i,
            Some(_) => {
                return Err(ApiError::conflict(
                    "identity_taken",
                    "this account at the provider is already linked to another user",
                ));
            }
            None => db::insert_identity(&state.pool, user, provider, &p.subject, p.email.as_deref(), p.email_verified)
                .await?
                .ok_or_else(|| ApiError::conflict("identity_taken", "this identity was linked meanwhile"))?,
        };
        audit::record(
            &state.pool,
            &format!("user:{user}"),
            Some(user),
            "auth.identity_linked",
            Some(&identity.id.to_string()),
            serde_json::json!({"provider": provider, "ip": client.ip}),
        )
        .await?;
        return Ok(Completed::Linked(identity_view(identity), flow.redirect_url.clone()));
    }
    let user = match existing {
        Some(i) => {
            db::touch_identity(&state.pool, i.id, p.email.as_deref(), p.email_verified).await?;
            super::db::user_by_id(&state.pool, i.user_id).await?.ok_or_else(invalid_flow)?
        }
        None => link_or_create(state, provider, &p, client).await?,
    };
    audit::record(
        &state.pool,
        &format!("user:{}", user.id),
        Some(user.id),
        "auth.sign_in",
        None,
        serde_json::json!({"method": "social", "provider": provider, "ip": client.ip}),
    )
    .await?;
    let outcome = service::after_first_factor(state, user, client, "social").await?;
    Ok(Completed::SignIn(outcome, flow.redirect_url.clone()))
}

/// A first sign-in with an identity: joins the account with the same email only
/// when both sides verified it, refuses when only one did, else makes an account.
async fn link_or_create(
    state: &AuthState,
    provider: &str,
    p: &Profile,
    client: &ClientInfo,
) -> Result<super::db::UserRow, ApiError> {
    let email = p.email.as_deref().ok_or_else(|| {
        ApiError::unprocessable("email_required", "the provider did not share an email address; allow it and try again")
    })?;
    let email = service::validate_email(email)?;
    if let Some(user) = super::db::user_by_email(&state.pool, &email).await? {
        if !(p.email_verified && user.email_verified_at.is_some()) {
            return Err(ApiError::conflict(
                "identity_link_required",
                "an account with this email exists; sign in to it first, then link this provider from account settings",
            ));
        }
        let identity = db::insert_identity(&state.pool, user.id, provider, &p.subject, Some(&email), true)
            .await?
            .ok_or_else(|| ApiError::conflict("identity_taken", "this identity was linked meanwhile"))?;
        audit::record(
            &state.pool,
            "system",
            Some(user.id),
            "auth.identity_linked",
            Some(&identity.id.to_string()),
            serde_json::json!({"provider": provider, "by": "verified_email", "ip": client.ip}),
        )
        .await?;
        return Ok(user);
    }
    // The provider's display name, kept to the profile's limits (256 characters, no controls).
    let name: Option<String> = p
        .name
        .as_deref()
        .map(|n| n.chars().filter(|c| !c.is_control()).take(256).collect::<String>())
        .filter(|n| !n.trim().is_empty());
    let user = match super::db::insert_user(&state.pool, &email, None, name.as_deref(), &serde_json::json!({})).await {
        Ok(u) => u,
        Err(e) if super::db::is_unique_violation(&e) => {
            return Err(ApiError::conflict("identity_link_required", "an account with this email was just created"));
        }
        Err(e) => return Err(e.into()),
    };
    let user = if p.email_verified {
        super::db::mark_email_verified(&state.pool, user.id, &email).await?.unwrap_or(user)
    } else {
        user
    };
    db::insert_identity(&state.pool, user.id, provider, &p.subject, Some(&email), p.email_verified).await?;
    audit::record(
        &state.pool,
        &format!("user:{}", user.id),
        Some(user.id),
        "auth.sign_up",
        None,
        serde_json::json!({"method": "social", "provider": provider, "ip": client.ip}),
    )
    .await?;
    Ok(user)
}

/// The public view of an identity.
pub fn identity_view(i: db::IdentityRow) -> IdentityView {
    IdentityView {
        id: i.id,
        provider: i.provider,
        subject: i.subject,
        email: i.email,
        email_verified: i.email_verified,
        created_at: i.created_at,
        last_sign_in_at: i.last_sign_in_at,
    }
}

/// The user's linked identities.
pub async fn identities(state: &AuthState, user: Uuid) -> Result<Vec<IdentityView>, ApiError> {
    Ok(db::identities(&state.pool, user).await?.into_iter().map(identity_view).collect())
}

/// Unlinks one of the user's identities; never the last way to sign in (409).
pub async fn unlink(state: &AuthState, user: Uuid, id: Uuid, actor: &str) -> Result<(), ApiError> {
    match db::unlink_identity(&state.pool, user, id).await? {
        None => Err(ApiError::not_found("no such identity")),
        Some(false) => Err(ApiError::conflict(
            "last_sign_in_method",
            "this is the account's only way to sign in; set a password or link another provider first",
        )),
        Some(true) => {
            audit::record(
                &state.pool,
                actor,
                Some(user),
                "auth.identity_unlinked",
                Some(&id.to_string()),
                serde_json::json!({}),
            )
            .await?;
            Ok(())
        }
    }
}

/// The configured providers as the service-key API shows them.
pub async fn admin_list(state: &AuthState) -> Result<Vec<SocialProviderAdminView>, ApiError> {
    let mut out: Vec<SocialProviderAdminView> = state.config.social.iter().map(provider::config_view).collect();
    for row in db::providers(&state.pool).await? {
        if !out.iter().any(|p| p.id == row.id) {
            out.push(provider::row_view(&row));
        }
    }
    Ok(out)
}

/// Adds or replaces a provider through the API (refused for one in the configuration).
pub async fn admin_put(
    state: &AuthState,
    id: &str,
    req: PutSocialProvider,
    actor: &str,
) -> Result<SocialProviderAdminView, ApiError> {
    let row = provider::validated_row(state, id, req).await?;
    let row = db::put_provider(&state.pool, &row).await?;
    audit::record(
        &state.pool,
        actor,
        None,
        "auth.social_provider_put",
        Some(id),
        serde_json::json!({"kind": row.kind}),
    )
    .await?;
    Ok(provider::row_view(&row))
}

/// Removes a provider added through the API (identities stay, unusable until it returns).
pub async fn admin_delete(state: &AuthState, id: &str, actor: &str) -> Result<(), ApiError> {
    if state.config.social.iter().any(|c| c.id == id) {
        return Err(ApiError::conflict("configured_provider", "this provider is set in the configuration"));
    }
    if !db::delete_provider(&state.pool, id).await? {
        return Err(ApiError::not_found("no such provider"));
    }
    audit::record(&state.pool, actor, None, "auth.social_provider_deleted", Some(id), serde_json::json!({})).await?;
    Ok(())
}
