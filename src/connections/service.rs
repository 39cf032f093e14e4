//! The rules of connections: connect sessions, the browser flow's two steps
//! (start: a single-use `state` bound to the owner and integration, 15 minutes,
//! with the PKCE verifier sealed; finish: consume the state, exchange the code, find
//! the external account, seal the credentials with the connection id as associated
//! data, upsert on (owner, integration, account)), API-key and basic connections,
//! and a user's connections (read, metadata, delete with revocation at the provider).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::db::{self, IntegrationRow, PageLine, SessionRow};
use super::oauth::{self, Tokens, concrete_url};
use super::types::{Connection, CreateKeyConnection};
use super::vault::Credentials;
use super::{Connections, integrations};
use crate::auth::tokens::{hash_token, random_token};
use crate::error::ApiError;
use crate::pagination::{Page, PageQuery};

const SESSION_TTL_SECS: i64 = 30 * 60;
const STATE_TTL_SECS: i64 = 15 * 60;

/// A new connect session: its token (shown once), expiry, and a link per integration.
#[derive(Debug)]
pub struct NewSession {
    /// The token to put in connect links.
    pub token: String,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// A link per allowed integration.
    pub links: BTreeMap<String, String>,
}

/// Creates a connect session for `owner`, allowing `allowed` (all when `None`) and
/// returning to `return_url` (already checked by the caller).
pub async fn create_session(
    c: &Connections,
    owner: Uuid,
    org: Option<Uuid>,
    allowed: Option<&Vec<String>>,
    return_url: Option<String>,
) -> Result<NewSession, ApiError> {
    if let Some(org) = org {
        org_access(c, org, owner, Need::Write).await?;
    }
    let keys: Vec<String> = match allowed {
        Some(k) if k.is_empty() || k.len() > 100 => {
            return Err(ApiError::unprocessable(
                "invalid_integrations",
                "allowed_integrations must name 1 to 100 integrations",
            ));
        }
        Some(k) => {
            for key in k {
                if db::integration_by_key(&c.pool, key).await?.is_none() {
                    return Err(ApiError::unprocessable("unknown_integration", format!("no integration {key:?}")));
                }
            }
            k.clone()
        }
        None => db::integration_keys(&c.pool).await?,
    };
    let token = random_token("cs_connect_");
    let expires_at = OffsetDateTime::now_utc() + time::Duration::seconds(SESSION_TTL_SECS);
    db::insert_connect_session(&c.pool, &hash_token(&token), (owner, org), allowed, return_url.as_deref(), expires_at)
        .await?;
    let links =
        keys.iter().map(|k| (k.clone(), format!("{}/oauth/connect/{k}?session={token}", c.public_base))).collect();
    Ok(NewSession { token, expires_at, links })
}

/// Why the browser flow stopped: a stable code for the return URL or the page.
pub type FlowError = &'static str;

/// The live connect session of `token`.
pub async fn live_session(c: &Connections, token: Option<&str>) -> Result<SessionRow, FlowError> {
    let token = token.filter(|t| !t.is_empty()).ok_or("missing connect session")?;
    match db::live_connect_session(&c.pool, &hash_token(token)).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err("unknown or expired connect session"),
        Err(e) => {
            tracing::error!(error = %e, "reading a connect session");
            Err("internal")
        }
    }
}

/// The hosted page's lines for `session`.
pub async fn page_lines(c: &Connections, session: &SessionRow) -> Result<Vec<PageLine>, ApiError> {
    let holder = (session.owner_id, session.org_id);
    Ok(db::connect_page_lines(&c.pool, holder, session.allowed_integrations.as_ref()).await?)
}

/// Starts connecting `key` for `session`: stores the state and returns the
/// provider's authorization URL.
pub async fn start(c: &Connections, session: &SessionRow, key: &str, config: &Value) -> Result<String, FlowError> {
    if session.allowed_integrations.as_ref().is_some_and(|a| !a.iter().any(|k| k == key)) {
        return Err("integration_not_allowed");
    }
    let integ = match db::integration_by_key(&c.pool, key).await {
        Ok(Some(i)) => i,
        Ok(None) => return Err("unknown_integration"),
        Err(e) => return Err(internal(e)),
    };
    let provider = c.catalog.get(&integ.provider).ok_or("unknown_provider")?;
    // Only the values the entry declares are kept; they fill its URLs here and,
    // stored with the state and then the connection, at the callback and after.
    let config = declared_config(provider, config);
    let provider = provider.with_config(&config).map_err(|e| e.code())?;
    let auth_url = provider.str("authorization_url").and_then(concrete_url).ok_or("connection_config_missing")?;
    let mut url = url::Url::parse(&auth_url).map_err(|_| "invalid_authorization_url")?;
    let state_token = random_token("");
    let state_hash = hash_token(&state_token);
    let pkce = provider.raw.get("disable_pkce").and_then(Value::as_bool) != Some(true);
    let verifier = pkce.then(|| B64URL.encode(rand::random::<[u8; 32]>()));
    let sealed = verifier.as_ref().map(|v| c.vault.seal_verifier(&state_hash, v));
    let state = db::NewState {
        state_hash: &state_hash,
        owner: session.owner_id,
        org: session.org_id,
        integration: integ.id,
        sealed_verifier: sealed,
        return_url: session.return_url.as_deref(),
        ttl_secs: STATE_TTL_SECS,
        connection_config: &config,
    };
    db::insert_oauth_state(&c.pool, state).await.map_err(internal)?;
    let sep = provider.str("scope_separator").unwrap_or(" ");
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    params.insert("response_type".into(), "code".into());
    for source in [provider.raw.get("authorization_params"), Some(&integ.authorization_params)].into_iter().flatten() {
        if let Some(m) = source.as_object() {
            for (k, v) in m {
                if let Some(v) = v.as_str() {
                    params.insert(k.clone(), v.to_string());
                }
            }
        }
    }
    params.insert("client_id".into(), integ.client_id.clone().unwrap_or_default());
    params.insert("redirect_uri".into(), c.callback_url());
    params.insert("state".into(), state_token);
    if !integ.scopes.is_empty() {
        params.insert("scope".into(), integ.scopes.join(sep));
    }
    if let Some(v) = &verifier {
        params.insert("code_challenge".into(), B64URL.encode(Sha256::digest(v.as_bytes())));
        params.insert("code_challenge_method".into(), "S256".into());
    }
    url.query_pairs_mut().extend_pairs(&params);
    Ok(url.into())
}

/// The connection configuration an integration's provider asks for.
pub async fn integration_config_keys(c: &Connections, key: &str) -> Result<Vec<String>, ApiError> {
    let integ =
        db::integration_by_key(&c.pool, key).await?.ok_or_else(|| ApiError::not_found("integration not found"))?;
    Ok(c.catalog.get(&integ.provider).map(|p| p.config_keys()).unwrap_or_default())
}

/// The declared connection configuration keys of `provider` found in `given`,
/// as strings.
pub fn declared_config(provider: &super::catalog::Provider, given: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in provider.config_keys() {
        if let Some(v) = given.get(&key).and_then(Value::as_str).map(str::trim).filter(|v| !v.is_empty()) {
            out.insert(key, Value::String(v.to_string()));
        }
    }
    Value::Object(out)
}

fn internal(e: impl std::fmt::Display) -> FlowError {
    tracing::error!(error = %e, "connect flow");
    "internal"
}

/// What the provider sent back to the callback.
#[derive(Debug, Default)]
pub struct Callback {
    /// The authorization code.
    pub code: Option<String>,
    /// The state issued by [`start`].
    pub state: Option<String>,
    /// The provider's error.
    pub error: Option<String>,
}

/// Where the flow returns (the session's return URL), once the state is known.
pub type ReturnUrl = Option<String>;

/// Finishes the flow: consumes the state, exchanges the code, stores the
/// connection. The return URL is known once the state is; the result is the
/// integration key and the connection id.
pub async fn finish(c: &Connections, cb: Callback) -> (ReturnUrl, Result<(String, Uuid), FlowError>) {
    let Some(raw_state) = cb.state.filter(|s| !s.is_empty()) else { return (None, Err("invalid_state")) };
    let state_hash = hash_token(&raw_state);
    let st = match db::consume_oauth_state(&c.pool, &state_hash).await {
        Ok(Some(st)) => st,
        Ok(None) => return (None, Err("invalid_state")),
        Err(e) => return (None, Err(internal(e))),
    };
    let ret = st.return_url.clone();
    let result = async {
        if let Some(err) = cb.error {
            return Err(if err == "access_denied" { "access_denied" } else { "provider_error" });
        }
        let code = cb.code.filter(|c| !c.is_empty()).ok_or("missing_code")?;
        let integ = match db::integration_by_id(&c.pool, st.integration_id).await {
            Ok(Some(i)) => i,
            Ok(None) => return Err("unknown_integration"),
            Err(e) => return Err(internal(e)),
        };
        let provider = c.catalog.get(&integ.provider).ok_or("unknown_provider")?;
        let provider = provider.with_config(&st.connection_config).map_err(|e| e.code())?;
        let verifier = match &st.code_verifier {
            Some(sealed) => Some(c.vault.open_verifier(&state_hash, sealed).map_err(|_| "invalid_state")?),
            None => None,
        };
        let mut params = vec![
            ("grant_type".to_string(), "authorization_code".to_string()),
            ("code".to_string(), code),
            ("redirect_uri".to_string(), c.callback_url()),
        ];
        if let Some(v) = verifier {
            params.push(("code_verifier".into(), v));
        }
        let client = client_of(c, &integ).map_err(internal)?;
        let tokens = oauth::exchange(&provider, &client, params, false).await.map_err(|e| {
            tracing::warn!(integration = %integ.unique_key, error = %e.detail, "token exchange failed");
            e.code
        })?;
        let account = oauth::account_id(&provider, &tokens).await.map_err(|e| {
            tracing::warn!(integration = %integ.unique_key, error = %e.detail, "identity lookup failed");
            e.code
        })?;
        // Declared values the token response carries (Salesforce's instance_url,
        // Pipedrive's api_domain) join the configuration the user gave.
        let mut config = st.connection_config.clone();
        if let Some(m) = config.as_object_mut() {
            for key in provider.config_keys() {
                if let Some(v) = tokens.raw.get(&key).and_then(Value::as_str) {
                    m.entry(key).or_insert_with(|| Value::String(v.to_string()));
                }
            }
        }
        let id = upsert(c, (st.owner_id, st.org_id), &integ, &account, &tokens, &config).await.map_err(internal)?;
        Ok((integ.unique_key, id))
    }
    .await;
    (ret, result)
}

/// The integration's client credentials, its secret opened for one request.
pub fn client_of<'a>(c: &Connections, integ: &'a IntegrationRow) -> Result<oauth::Client<'a>, ApiError> {
    let secret = match &integ.client_secret {
        Some(sealed) => c.vault.open_client_secret(integ.id, sealed)?,
        None => String::new(),
    };
    Ok(oauth::Client { id: integ.client_id.as_deref().unwrap_or(""), secret })
}

/// Stores `tokens` as the holder's connection to `integ` for `account` (the user's
/// own, or with an organization the organization's; reconnecting the same account
/// keeps its connection id) and emits `connection.created`.
async fn upsert(
    c: &Connections,
    owner: (Uuid, Option<Uuid>),
    integ: &IntegrationRow,
    account: &str,
    t: &Tokens,
    connection_config: &Value,
) -> Result<Uuid, sqlx::Error> {
    let scopes: Vec<String> = match &t.scope {
        Some(s) => s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_string).collect(),
        None => integ.scopes.clone(),
    };
    let creds = Credentials {
        access_token: t.access_token.clone(),
        refresh_token: t.refresh_token.clone(),
        expires_at: t.expires_at,
        lifetime_secs: t.lifetime_secs,
        raw: t.raw.clone(),
    };
    // The id is the associated data of the sealed credentials, so it must be the
    // row's: reuse the existing connection's id, or make one; a racing insert of
    // the same account is retried with its id.
    for _ in 0..3 {
        let existing = db::connection_id_of(&c.pool, owner, integ.id, account).await?;
        let id = existing.unwrap_or_else(Uuid::now_v7);
        let upsert = db::Upsert {
            id,
            owner,
            integration: integ.id,
            account,
            credentials: c.vault.seal_credentials(id, &creds),
            scopes: &scopes,
            expires_at: t.expires_at,
            connection_config,
        };
        if let Some(id) = db::upsert_connection(&c.pool, upsert).await? {
            let mut conn = c.pool.acquire().await?;
            super::webhooks::emit(
                &mut conn,
                "connection.created",
                serde_json::json!({"connection_id": id, "owner_id": owner.0, "org_id": owner.1, "integration": integ.unique_key,
                                   "provider": integ.provider, "external_account_id": account, "reconnected": existing.is_some()}),
            )
            .await?;
            return Ok(id);
        }
    }
    Err(sqlx::Error::RowNotFound)
}

/// Stores API-key or basic credentials as `owner`'s connection.
pub async fn create_key_connection(
    c: &Connections,
    owner: Uuid,
    req: CreateKeyConnection,
) -> Result<Connection, ApiError> {
    if let Some(org) = req.org_id {
        org_access(c, org, owner, Need::Write).await?;
    }
    let holder = (owner, req.org_id);
    let integ = integrations::by_key(c, &req.integration)
        .await
        .map_err(|_| ApiError::unprocessable("unknown_integration", format!("no integration {:?}", req.integration)))?;
    let provider = c.catalog.get(&integ.provider).ok_or_else(|| ApiError::internal("provider left the catalog"))?;
    let text_ok = |v: &str| !v.is_empty() && v.len() <= 4096 && !v.chars().any(char::is_control);
    let config = declared_config(provider, req.connection_config.as_ref().unwrap_or(&Value::Null));
    let provider = provider
        .with_config(&config)
        .map_err(|e| ApiError::unprocessable(e.code(), "connection_config does not fit this provider"))?;
    let account = req.external_account_id.clone().unwrap_or_else(|| "default".into());
    if !text_ok(&account) || account.len() > 255 {
        return Err(ApiError::unprocessable("invalid_account", "external_account_id must be 1 to 255 characters"));
    }
    if provider.auth_mode == "OAUTH2_CC" {
        if req.api_key.is_some() || req.username.is_some() || req.password.is_some() {
            return Err(ApiError::unprocessable(
                "invalid_credentials",
                "this provider takes client_id and client_secret",
            ));
        }
        let own = match (&req.client_id, &req.client_secret) {
            (Some(i), Some(s)) if text_ok(i) && text_ok(s) => Some((i.clone(), s.clone())),
            (None, None) => None,
            _ => {
                return Err(ApiError::unprocessable(
                    "invalid_credentials",
                    "give both client_id and client_secret, or neither (the integration's are used)",
                ));
            }
        };
        let tokens = client_credentials(c, &provider, &integ, own.as_ref().map(|(i, s)| (i.as_str(), s.as_str())))
            .await
            .map_err(|e| {
                ApiError::unprocessable(e.code, format!("the provider refused the client credentials: {}", e.detail))
            })?;
        let id = upsert(c, holder, &integ, &account, &tokens, &config).await?;
        return owned(c, owner, &id.to_string(), Need::Read).await;
    }
    let secret = match (provider.auth_mode.as_str(), &req.api_key, &req.username, &req.password) {
        ("API_KEY", Some(k), None, None) if text_ok(k) => k.clone(),
        ("BASIC", None, Some(u), Some(p)) if text_ok(u) && !u.contains(':') && p.len() <= 4096 => {
            B64.encode(format!("{u}:{p}"))
        }
        ("API_KEY", ..) => {
            return Err(ApiError::unprocessable("invalid_credentials", "this provider takes `api_key` alone"));
        }
        ("BASIC", ..) => {
            return Err(ApiError::unprocessable(
                "invalid_credentials",
                "this provider takes `username` and `password`",
            ));
        }
        (mode, ..) => {
            return Err(ApiError::unprocessable(
                "wrong_auth_mode",
                format!("{} uses {mode}: connect it through /oauth/connect", provider.name),
            ));
        }
    };
    let tokens = Tokens {
        access_token: secret,
        refresh_token: None,
        expires_at: None,
        lifetime_secs: None,
        scope: None,
        raw: serde_json::json!({"type": provider.auth_mode}),
    };
    let id = upsert(c, holder, &integ, &account, &tokens, &config).await?;
    owned(c, owner, &id.to_string(), Need::Read).await
}

/// A token by the client-credentials grant, with the connection's own client
/// (`own`, kept sealed with the tokens for the next grant) or the integration's.
pub async fn client_credentials(
    c: &Connections,
    provider: &super::catalog::Provider,
    integ: &IntegrationRow,
    own: Option<(&str, &str)>,
) -> Result<Tokens, oauth::ProviderError> {
    let integ_client;
    let client = match own {
        Some((id, secret)) => oauth::Client { id, secret: secret.to_string() },
        None => {
            integ_client = client_of(c, integ).map_err(|e| oauth::ProviderError::new("invalid_client", e.message))?;
            integ_client
        }
    };
    let mut params = vec![("grant_type".to_string(), "client_credentials".to_string())];
    if !integ.scopes.is_empty() {
        params.push(("scope".into(), integ.scopes.join(provider.str("scope_separator").unwrap_or(" "))));
    }
    let mut tokens = oauth::exchange(provider, &client, params, false).await?;
    if let (Some((id, secret)), Some(raw)) = (own, tokens.raw.as_object_mut()) {
        raw.insert("carmenta_client".into(), serde_json::json!({"id": id, "secret": secret}));
    }
    Ok(tokens)
}

pub use crate::auth::shared::Need;

fn not_found() -> ApiError {
    ApiError::not_found("connection not found")
}

/// Checks `user` in organization `org` for `need`: a non-member gets the same
/// 404 as for a missing connection, a member without the permission 403
/// `insufficient_permission`. Read on every call, so leaving ends access at once.
pub async fn org_access(c: &Connections, org: Uuid, user: Uuid, need: Need) -> Result<(), ApiError> {
    crate::auth::shared::grant(&c.pool, org, user, "connections", need).await?.answer(not_found)
}

/// Connection `id` if `user` may do `need` with it: their own (another user's and a
/// missing one are the same 404), or one their organization shares.
pub async fn owned(c: &Connections, user: Uuid, id: &str, need: Need) -> Result<Connection, ApiError> {
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    let (row, owner) = db::connection_by_id(&c.pool, id).await?.ok_or_else(not_found)?;
    match row.org_id {
        None if owner == user => Ok(row),
        None => Err(not_found()),
        Some(org) => {
            org_access(c, org, user, need).await?;
            Ok(row)
        }
    }
}

fn connection_cursor(r: &Connection) -> String {
    crate::pagination::time_id_cursor(r.created_at, r.id)
}

/// A page of `owner`'s own connections, or (with `org`) of those the organization
/// shares, optionally of one integration.
pub async fn list(
    c: &Connections,
    owner: Uuid,
    org: Option<Uuid>,
    integration: Option<&str>,
    page: &PageQuery,
) -> Result<Page<Connection>, ApiError> {
    if let Some(org) = org {
        org_access(c, org, owner, Need::Read).await?;
    }
    let limit = page.limit()?;
    let after = page.cursor_text()?.map(|t| crate::pagination::parse_time_id(&t)).transpose()?;
    let rows = db::list_connections(&c.pool, (owner, org), integration, after, limit + 1).await?;
    Ok(Page::from_rows(rows, limit, connection_cursor))
}

/// Replaces the metadata of `owner`'s connection `id`.
pub async fn set_metadata(c: &Connections, owner: Uuid, id: &str, metadata: &Value) -> Result<Connection, ApiError> {
    if !metadata.is_object() || serde_json::to_vec(metadata).map_or(true, |b| b.len() > 8192) {
        return Err(ApiError::unprocessable("invalid_metadata", "metadata must be a JSON object of at most 8 KB"));
    }
    let row = owned(c, owner, id, Need::Write).await?;
    db::set_metadata(&c.pool, row.id, metadata).await?;
    owned(c, owner, id, Need::Read).await
}

/// Deletes `owner`'s connection `id`, revoking its token at the provider first
/// when the provider offers it (best effort: a failure is logged and the
/// connection deleted anyway), and emits `connection.deleted`.
pub async fn delete(c: &Connections, owner: Uuid, id: &str) -> Result<(), ApiError> {
    let row = owned(c, owner, id, Need::Write).await?;
    remove(c, row, owner).await
}

/// Deletes connection `id` whoever holds it (the admin console's action; the
/// console audits it).
pub async fn delete_any(c: &Connections, id: Uuid) -> Result<(), ApiError> {
    let (row, owner) = db::connection_by_id(&c.pool, id).await?.ok_or_else(not_found)?;
    remove(c, row, owner).await
}

/// Revokes (best effort) and deletes `row`, with its `connection.deleted` event.
async fn remove(c: &Connections, row: Connection, owner: Uuid) -> Result<(), ApiError> {
    if let Err(e) = revoke(c, &row).await {
        tracing::warn!(connection = %row.id, error = %e, "revoking at the provider failed; deleting anyway");
    }
    let mut tx = c.pool.begin().await?;
    db::delete_connection(&mut tx, row.id).await?;
    super::webhooks::emit(
        &mut tx,
        "connection.deleted",
        serde_json::json!({"connection_id": row.id, "owner_id": owner, "org_id": row.org_id, "integration": row.integration,
                           "provider": row.provider, "external_account_id": row.external_account_id}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Revokes the connection's token at its provider (RFC 7009), when the provider
/// has a `revoke_url`; nothing is read or opened otherwise.
async fn revoke(c: &Connections, row: &Connection) -> Result<(), ApiError> {
    let Some(provider) = c.catalog.get(&row.provider) else { return Ok(()) };
    if provider.str("revoke_url").is_none() {
        return Ok(());
    }
    let (_, sealed, _) =
        db::sealed_credentials(&c.pool, row.id).await?.ok_or_else(|| ApiError::not_found("connection not found"))?;
    let creds = c.vault.open_credentials(row.id, &sealed)?;
    let integ = integrations::by_key(c, &row.integration).await?;
    let client = client_of(c, &integ)?;
    let token = creds.refresh_token.unwrap_or(creds.access_token);
    oauth::revoke(provider, &client, &token).await.map_err(|e| ApiError::internal(e.detail))?;
    Ok(())
}
