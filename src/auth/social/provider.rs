//! One social provider: where its settings come from (configuration, then the
//! API's table, over the built-in defaults), its authorization URL, the code
//! exchange, and who the user is (a verified ID token and UserInfo for OpenID
//! providers; the user APIs of GitHub and Discord).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::db::ProviderRow;
use crate::auth::jwks::{ALLOWED_ALGS, RemoteJwks};
use crate::auth::service::AuthState;
use crate::auth::types::{PutSocialProvider, SocialProviderAdminView};
use crate::config::SocialProviderConfig;
use crate::error::ApiError;
use crate::http_client::PROVIDER_TIMEOUT;

/// Who the provider says the user is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// The provider's stable user id.
    pub subject: String,
    /// Email address, if shared.
    pub email: Option<String>,
    /// True only when the provider sent a JSON `true` for it.
    pub email_verified: bool,
    /// Display name.
    pub name: Option<String>,
}

/// How a provider is spoken to.
#[derive(Debug, Clone)]
enum Kind {
    /// OpenID Connect by discovery; `form_post` asks for the callback as a POST
    /// (Apple, when it shares name and email).
    Oidc { discovery: String, form_post: bool },
    /// GitHub's OAuth apps and REST API.
    GitHub { authorize: String, token: String, api: String },
    /// Discord's OAuth 2 and API.
    Discord { authorize: &'static str, token: &'static str, api: &'static str },
}

/// GitHub's endpoints on a server (`web`) and its REST API (`api`).
fn github(web: &str, api: &str) -> Kind {
    Kind::GitHub {
        authorize: format!("{web}/login/oauth/authorize"),
        token: format!("{web}/login/oauth/access_token"),
        api: api.to_string(),
    }
}

/// The built-in providers: name, how, default scopes.
fn builtin(id: &str) -> Option<(&'static str, Kind, &'static [&'static str])> {
    let oidc = |d: &str, form_post| Kind::Oidc { discovery: d.to_string(), form_post };
    Some(match id {
        "google" => (
            "Google",
            oidc("https://accounts.google.com/.well-known/openid-configuration", false),
            &["openid", "email", "profile"],
        ),
        "microsoft" => (
            "Microsoft",
            oidc("https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration", false),
            &["openid", "email", "profile"],
        ),
        "apple" => (
            "Apple",
            oidc("https://appleid.apple.com/.well-known/openid-configuration", true),
            &["openid", "email", "name"],
        ),
        "gitlab" => (
            "GitLab",
            oidc("https://gitlab.com/.well-known/openid-configuration", false),
            &["openid", "email", "profile"],
        ),
        "github" => ("GitHub", github("https://github.com", "https://api.github.com"), &["read:user", "user:email"]),
        "discord" => (
            "Discord",
            Kind::Discord {
                authorize: "https://discord.com/oauth2/authorize",
                token: "https://discord.com/api/oauth2/token",
                api: "https://discord.com/api",
            },
            &["identify", "email"],
        ),
        _ => return None,
    })
}

/// The name on a provider's button.
pub fn display_name(id: &str, name: Option<&str>) -> String {
    name.map(str::to_string).or_else(|| builtin(id).map(|b| b.0.to_string())).unwrap_or_else(|| id.to_string())
}

/// A provider ready to use.
#[derive(Clone)]
pub struct Provider {
    id: String,
    kind: Kind,
    client_id: String,
    client_secret: String,
    scopes: Vec<String>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").field("id", &self.id).field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

fn unknown() -> ApiError {
    ApiError::not_found("no such sign-in provider").with_code("unknown_provider")
}

fn provider_error(what: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "provider_error", format!("the sign-in provider: {what}"))
}

/// The kind of provider `id` with an optional discovery URL: a built-in one
/// (its discovery replaced when given), else OpenID by discovery.
fn kind_of(id: &str, discovery: Option<&str>, base: Option<&str>) -> Option<(Kind, Vec<String>)> {
    if let (Some((_, Kind::GitHub { .. }, scopes)), Some(base)) = (builtin(id), base) {
        // GitHub Enterprise Server: the web flow on the server, the API under /api/v3.
        let base = base.trim_end_matches('/');
        return Some((github(base, &format!("{base}/api/v3")), scopes.iter().map(|s| s.to_string()).collect()));
    }
    match (builtin(id), discovery) {
        (Some((_, Kind::Oidc { form_post, .. }, scopes)), Some(d)) => {
            Some((Kind::Oidc { discovery: d.to_string(), form_post }, scopes.iter().map(|s| s.to_string()).collect()))
        }
        (Some((_, k, scopes)), _) => Some((k, scopes.iter().map(|s| s.to_string()).collect())),
        (None, Some(d)) => Some((
            Kind::Oidc { discovery: d.to_string(), form_post: false },
            ["openid", "email", "profile"].iter().map(|s| s.to_string()).collect(),
        )),
        (None, None) => None,
    }
}

impl Provider {
    /// Provider `id` from the configuration, else from the API's table.
    pub async fn load(state: &AuthState, id: &str) -> Result<Provider, ApiError> {
        if let Some(c) = state.config.social.iter().find(|c| c.id == id) {
            let (kind, scopes) =
                kind_of(id, c.discovery_url.as_ref().map(|u| u.as_str()), c.base_url.as_ref().map(|u| u.as_str()))
                    .ok_or_else(unknown)?;
            return Ok(Provider {
                id: id.to_string(),
                kind,
                client_id: c.client_id.clone(),
                client_secret: c.client_secret.expose().to_string(),
                scopes: c.scopes.clone().unwrap_or(scopes),
            });
        }
        if id.len() > 40 {
            return Err(unknown());
        }
        let row = super::db::provider(&state.pool, id).await?.ok_or_else(unknown)?;
        let (kind, scopes) = kind_of(id, row.discovery_url.as_deref(), row.base_url.as_deref()).ok_or_else(unknown)?;
        let secret = match &row.client_secret {
            Some(sealed) => {
                let plain = state.keyring.open_secret("social", id, sealed).map_err(ApiError::internal)?;
                String::from_utf8(plain).map_err(ApiError::internal)?
            }
            None => String::new(),
        };
        Ok(Provider {
            id: id.to_string(),
            kind,
            client_id: row.client_id,
            client_secret: secret,
            scopes: row.scopes.unwrap_or(scopes),
        })
    }

    fn redirect_uri(&self, state: &AuthState) -> String {
        format!("{}/auth/social/{}/callback", state.config.public_url.as_str().trim_end_matches('/'), self.id)
    }

    /// The authorization URL for a flow with this `state`, `nonce` and PKCE verifier.
    pub async fn authorization_url(
        &self,
        state: &AuthState,
        state_value: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<String, ApiError> {
        let (endpoint, oidc, form_post) = match &self.kind {
            Kind::Oidc { discovery, form_post } => {
                (discover(discovery).await?.authorization_endpoint.clone(), true, *form_post)
            }
            Kind::GitHub { authorize, .. } => (authorize.clone(), false, false),
            Kind::Discord { authorize, .. } => (authorize.to_string(), false, false),
        };
        let mut url = url::Url::parse(&endpoint).map_err(provider_error)?;
        let challenge = B64URL.encode(Sha256::digest(verifier.as_bytes()));
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", &self.redirect_uri(state))
                .append_pair("scope", &self.scopes.join(" "))
                .append_pair("state", state_value)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            if oidc {
                q.append_pair("nonce", nonce);
            }
            if form_post {
                q.append_pair("response_mode", "form_post");
            }
        }
        Ok(url.into())
    }

    /// Refuses an authorization response naming an issuer other than this provider's.
    pub async fn check_issuer(&self, iss: &str) -> Result<(), ApiError> {
        if let Kind::Oidc { discovery, .. } = &self.kind {
            let d = discover(discovery).await?;
            if !d.issuer.contains("{tenantid}") && d.issuer != iss {
                return Err(ApiError::bad_request("issuer_mismatch", "the answer came from another issuer"));
            }
        }
        Ok(())
    }

    /// Exchanges the code and finds out who the user is.
    pub async fn finish(
        &self,
        state: &AuthState,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Profile, ApiError> {
        let redirect_uri = self.redirect_uri(state);
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri.as_str()),
            ("code_verifier", verifier),
        ];
        match &self.kind {
            Kind::Oidc { discovery, .. } => {
                let d = discover(discovery).await?;
                // Basic is the default every OpenID provider supports; the body only
                // when the provider does not list Basic.
                let basic = d
                    .token_endpoint_auth_methods_supported
                    .as_ref()
                    .is_none_or(|m| m.iter().any(|x| x == "client_secret_basic"));
                let tokens = self.token_request(&d.token_endpoint, &form, basic).await?;
                let id_token = tokens.id_token.ok_or_else(|| provider_error("no id_token in the token response"))?;
                let claims = verify_id_token(&d, &id_token, &self.client_id, nonce).await?;
                let mut profile = Profile {
                    subject: claims.sub.clone(),
                    email: claims.email.clone(),
                    email_verified: claims.email_verified == Some(serde_json::Value::Bool(true)),
                    name: claims.name.clone(),
                };
                // Claims not in the ID token come from UserInfo, for the same subject.
                if profile.email.is_none()
                    && let Some(endpoint) = &d.userinfo_endpoint
                {
                    let info: IdClaims = self.get_json(endpoint, &tokens.access_token).await?;
                    if info.sub != claims.sub {
                        return Err(provider_error("UserInfo names another subject"));
                    }
                    profile.email = info.email;
                    profile.email_verified = info.email_verified == Some(serde_json::Value::Bool(true));
                    profile.name = profile.name.or(info.name);
                }
                Ok(profile)
            }
            Kind::GitHub { token, api, .. } => {
                let tokens = self.token_request(token, &form, false).await?;
                let user: serde_json::Value = self.get_json(&format!("{api}/user"), &tokens.access_token).await?;
                let emails: Vec<serde_json::Value> =
                    self.get_json(&format!("{api}/user/emails"), &tokens.access_token).await?;
                // The primary address, verified only if GitHub says so (it can be unverified).
                let primary = emails.iter().find(|e| e["primary"] == serde_json::Value::Bool(true));
                Ok(Profile {
                    subject: json_id(&user["id"]).ok_or_else(|| provider_error("no user id"))?,
                    email: primary.and_then(|e| e["email"].as_str()).map(str::to_string),
                    email_verified: primary.is_some_and(|e| e["verified"] == serde_json::Value::Bool(true)),
                    name: user["name"].as_str().or(user["login"].as_str()).map(str::to_string),
                })
            }
            Kind::Discord { token, api, .. } => {
                let tokens = self.token_request(token, &form, false).await?;
                let user: serde_json::Value = self.get_json(&format!("{api}/users/@me"), &tokens.access_token).await?;
                Ok(Profile {
                    subject: json_id(&user["id"]).ok_or_else(|| provider_error("no user id"))?,
                    email: user["email"].as_str().map(str::to_string),
                    email_verified: user["verified"] == serde_json::Value::Bool(true),
                    name: user["global_name"].as_str().or(user["username"].as_str()).map(str::to_string),
                })
            }
        }
    }

    async fn token_request(&self, endpoint: &str, form: &[(&str, &str)], basic: bool) -> Result<TokenSet, ApiError> {
        let mut body: Vec<(&str, &str)> = form.to_vec();
        let mut req = crate::http_client::request(reqwest::Method::POST, endpoint)
            .map_err(provider_error)?
            .timeout(PROVIDER_TIMEOUT)
            .header(http::header::ACCEPT, "application/json");
        if basic {
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(&self.client_id), Some(enc(&self.client_secret)));
        } else {
            body.push(("client_id", &self.client_id));
            body.push(("client_secret", &self.client_secret));
        }
        let res = req.form(&body).send().await.map_err(|e| provider_error(crate::http_client::without_url(&e)))?;
        let status = res.status();
        let v: serde_json::Value =
            res.json().await.map_err(|_| provider_error(format!("token endpoint answered {status}")))?;
        if !status.is_success() || v.get("error").is_some() {
            let code = v["error"].as_str().unwrap_or("unknown").chars().take(64).collect::<String>();
            return Err(provider_error(format!("token endpoint refused the code ({code})")));
        }
        serde_json::from_value(v).map_err(|_| provider_error("no access_token in the token response"))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str, access_token: &str) -> Result<T, ApiError> {
        let res = crate::http_client::request(reqwest::Method::GET, url)
            .map_err(provider_error)?
            .timeout(PROVIDER_TIMEOUT)
            .bearer_auth(access_token)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "Carmenta")
            .send()
            .await
            .map_err(|e| provider_error(crate::http_client::without_url(&e)))?;
        if !res.status().is_success() {
            return Err(provider_error(format!("user lookup answered {}", res.status())));
        }
        res.json().await.map_err(|_| provider_error("user lookup answered something else than JSON"))
    }
}

/// A number or string id as text.
fn json_id(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
struct TokenSet {
    access_token: String,
    #[serde(default)]
    id_token: Option<String>,
}

/// An OpenID provider's metadata (the fields used here).
#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(skip)]
    jwks: Option<Arc<RemoteJwks>>,
}

/// How long discovery metadata is kept.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

type DiscoveryCache = Mutex<HashMap<String, (Instant, Arc<Discovery>)>>;

/// The metadata at `url` (cached an hour per process).
async fn discover(url: &str) -> Result<Arc<Discovery>, ApiError> {
    static CACHE: OnceLock<DiscoveryCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Ok(c) = cache.lock()
        && let Some((at, d)) = c.get(url)
        && at.elapsed() < DISCOVERY_TTL
    {
        return Ok(d.clone());
    }
    let res = crate::http_client::request(reqwest::Method::GET, url)
        .map_err(provider_error)?
        .timeout(PROVIDER_TIMEOUT)
        .send()
        .await
        .map_err(|e| provider_error(crate::http_client::without_url(&e)))?;
    if !res.status().is_success() {
        return Err(provider_error(format!("discovery answered {}", res.status())));
    }
    let mut d: Discovery = res.json().await.map_err(|_| provider_error("discovery document is not valid"))?;
    let jwks_url = url::Url::parse(&d.jwks_uri).map_err(|_| provider_error("jwks_uri is not a URL"))?;
    d.jwks = Some(Arc::new(RemoteJwks::new(jwks_url)));
    let d = Arc::new(d);
    if let Ok(mut c) = cache.lock() {
        c.insert(url.to_string(), (Instant::now(), d.clone()));
    }
    Ok(d)
}

/// ID-token and UserInfo claims used here.
#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    email: Option<String>,
    /// Kept raw: only a JSON `true` counts (some providers have sent strings).
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    name: Option<String>,
    /// Microsoft's tenant id (its issuer names the tenant).
    #[serde(default)]
    tid: Option<String>,
}

/// Verifies an ID token: an asymmetric algorithm matching the provider's key,
/// the signature, `iss` (Microsoft's `{tenantid}` filled from `tid`), `aud` = our
/// client id, `exp`/`iat`, and our `nonce`.
async fn verify_id_token(d: &Discovery, token: &str, client_id: &str, nonce: &str) -> Result<IdClaims, ApiError> {
    let bad = |why: &str| provider_error(format!("ID token refused: {why}"));
    let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed"))?;
    if !ALLOWED_ALGS.contains(&header.alg) {
        return Err(bad("algorithm not allowed"));
    }
    let jwks = d.jwks.as_ref().ok_or_else(|| bad("no keys"))?;
    let (key, alg) = jwks.key(header.kid.as_deref()).await.ok_or_else(|| bad("unknown signing key"))?;
    if alg != header.alg {
        return Err(bad("algorithm does not match the key"));
    }
    let issuer = if d.issuer.contains("{tenantid}") {
        let unverified: IdClaims = token
            .split('.')
            .nth(1)
            .and_then(|p| B64URL.decode(p.trim_end_matches('=')).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| bad("malformed"))?;
        let tid = unverified.tid.filter(|t| t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        d.issuer.replace("{tenantid}", &tid.ok_or_else(|| bad("no tenant"))?)
    } else {
        d.issuer.clone()
    };
    let mut v = jsonwebtoken::Validation::new(alg);
    v.leeway = 30;
    v.set_issuer(&[issuer]);
    v.set_audience(&[client_id]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &v).map_err(|e| bad(&format!("{:?}", e.kind())))?.claims;
    if claims.nonce.as_deref() != Some(nonce) {
        return Err(bad("nonce does not match"));
    }
    if claims.sub.is_empty() || claims.sub.len() > 255 {
        return Err(bad("sub"));
    }
    Ok(claims)
}

/// The service-key view of a configured provider.
pub fn config_view(c: &SocialProviderConfig) -> SocialProviderAdminView {
    let (kind, scopes) =
        kind_of(&c.id, c.discovery_url.as_ref().map(|u| u.as_str()), c.base_url.as_ref().map(|u| u.as_str()))
            .unwrap_or((Kind::Oidc { discovery: String::new(), form_post: false }, Vec::new()));
    SocialProviderAdminView {
        id: c.id.clone(),
        kind: kind_name(&c.id, &kind),
        name: display_name(&c.id, c.name.as_deref()),
        client_id: c.client_id.clone(),
        has_client_secret: true,
        discovery_url: discovery_of(&kind),
        base_url: c.base_url.as_ref().map(|u| u.to_string()),
        scopes: c.scopes.clone().unwrap_or(scopes),
        source: "config",
    }
}

/// The service-key view of a provider added through the API.
pub fn row_view(r: &ProviderRow) -> SocialProviderAdminView {
    let (kind, scopes) = kind_of(&r.id, r.discovery_url.as_deref(), r.base_url.as_deref())
        .unwrap_or((Kind::Oidc { discovery: String::new(), form_post: false }, Vec::new()));
    SocialProviderAdminView {
        id: r.id.clone(),
        kind: r.kind.clone(),
        name: display_name(&r.id, r.name.as_deref()),
        client_id: r.client_id.clone(),
        has_client_secret: r.client_secret.is_some(),
        discovery_url: discovery_of(&kind),
        base_url: r.base_url.clone(),
        scopes: r.scopes.clone().unwrap_or(scopes),
        source: "api",
    }
}

fn kind_name(id: &str, k: &Kind) -> String {
    match (builtin(id), k) {
        (Some(_), _) => id.to_string(),
        (None, _) => "oidc".into(),
    }
}

fn discovery_of(k: &Kind) -> Option<String> {
    match k {
        Kind::Oidc { discovery, .. } if !discovery.is_empty() => Some(discovery.clone()),
        _ => None,
    }
}

/// Checks a provider the API is adding and seals its secret.
pub async fn validated_row(state: &AuthState, id: &str, req: PutSocialProvider) -> Result<ProviderRow, ApiError> {
    if state.config.social.iter().any(|c| c.id == id) {
        return Err(ApiError::conflict("configured_provider", "this provider is set in the configuration"));
    }
    if id.is_empty() || id.len() > 40 || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(ApiError::unprocessable(
            "invalid_provider_id",
            "provider ids are 1-40 lowercase letters, digits and dashes",
        ));
    }
    let client_id = req.client_id.trim().to_string();
    if client_id.is_empty() || client_id.len() > 512 {
        return Err(ApiError::unprocessable("invalid_client_id", "client_id is required (at most 512 characters)"));
    }
    let discovery = match req.discovery_url.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => {
            let u = url::Url::parse(d)
                .map_err(|_| ApiError::unprocessable("invalid_discovery_url", "discovery_url is not a URL"))?;
            crate::http_client::check_url(&u)
                .map_err(|e| ApiError::unprocessable("invalid_discovery_url", e.to_string()))?;
            if builtin(id).is_some_and(|(_, k, _)| !matches!(k, Kind::Oidc { .. })) {
                return Err(ApiError::unprocessable(
                    "invalid_discovery_url",
                    "this provider is not an OpenID provider",
                ));
            }
            Some(u.to_string())
        }
        None if builtin(id).is_none() => {
            return Err(ApiError::unprocessable(
                "invalid_discovery_url",
                "discovery_url is required for an OpenID provider",
            ));
        }
        None => None,
    };
    let base_url = match req.base_url.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        Some(_) if id != "github" => {
            return Err(ApiError::unprocessable(
                "invalid_base_url",
                "base_url is for the github provider (GitHub Enterprise Server)",
            ));
        }
        Some(b) => {
            let u =
                url::Url::parse(b).map_err(|_| ApiError::unprocessable("invalid_base_url", "base_url is not a URL"))?;
            crate::http_client::check_url(&u)
                .map_err(|e| ApiError::unprocessable("invalid_base_url", e.to_string()))?;
            Some(u.as_str().trim_end_matches('/').to_string())
        }
        None => None,
    };
    if let Some(scopes) = &req.scopes
        && (scopes.len() > 30 || scopes.iter().any(|s| s.is_empty() || s.len() > 200 || s.contains(' ')))
    {
        return Err(ApiError::unprocessable("invalid_scopes", "scopes are up to 30 words without spaces"));
    }
    if req.name.as_ref().is_some_and(|n| n.is_empty() || n.chars().count() > 80) {
        return Err(ApiError::unprocessable("invalid_name", "name is 1-80 characters"));
    }
    let client_secret = match req.client_secret.as_deref() {
        Some(s) if s.is_empty() || s.len() > 4096 => {
            return Err(ApiError::unprocessable("invalid_client_secret", "client_secret is 1-4096 characters"));
        }
        Some(s) => Some(state.keyring.seal_secret("social", id, s.as_bytes())),
        None => None,
    };
    let (kind, _) = kind_of(id, discovery.as_deref(), base_url.as_deref()).ok_or_else(unknown)?;
    Ok(ProviderRow {
        id: id.to_string(),
        kind: kind_name(id, &kind),
        client_id,
        client_secret,
        discovery_url: discovery,
        base_url,
        scopes: req.scopes,
        name: req.name,
        updated_at: time::OffsetDateTime::now_utc(),
    })
}
