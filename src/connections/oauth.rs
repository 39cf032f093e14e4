//! The OAuth client side of connections: the token endpoint exchange (each
//! provider's client-auth, body-format and response quirks), the external account
//! id lookup, and token revocation (RFC 7009). Plaintext secrets pass through here
//! only on their way into the outgoing request.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::{StatusCode, header};
use serde_json::Value;
use time::OffsetDateTime;

use super::catalog::Provider;
use crate::http_client::{PROVIDER_TIMEOUT, request};

/// Tokens from a provider.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// Access token.
    pub access_token: String,
    /// Refresh token, when the provider gave one.
    pub refresh_token: Option<String>,
    /// Expiry, when the provider said.
    pub expires_at: Option<OffsetDateTime>,
    /// The access token's lifetime in seconds (`expires_in`), when the provider said.
    pub lifetime_secs: Option<i64>,
    /// Granted scopes, when the provider said.
    pub scope: Option<String>,
    /// The whole token response.
    pub raw: Value,
}

/// Why a call to a provider failed: a stable code for the app, detail for the log.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ProviderError {
    /// `token_exchange_failed`, `invalid_grant`, `identity_failed`, …
    pub code: &'static str,
    /// What the provider said (never a token).
    pub detail: String,
}

impl ProviderError {
    /// An error with its code and detail.
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        ProviderError { code, detail: detail.into() }
    }
}

/// The client credentials of an integration, opened for one request.
#[derive(Debug)]
pub struct Client<'a> {
    /// Client id.
    pub id: &'a str,
    /// Client secret (plaintext; empty when the integration has none).
    pub secret: String,
}

/// A dotted path into JSON (`authed_user.id`).
pub fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, seg| cur.get(seg))
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Picks the usable alternative of a templated URL (`A || B`): the first without
/// a `${…}` placeholder.
pub fn concrete_url(raw: &str) -> Option<String> {
    raw.split("||").map(str::trim).find(|u| !u.contains("${")).map(str::to_string)
}

/// Calls the provider's token endpoint with `params`, honouring its quirks: client
/// credentials in the body or as HTTP Basic (`authorization_method: header`, or
/// `token_request_auth_method: basic` for both), JSON or form bodies, `Accept:
/// application/json` (GitHub answers form-encoded otherwise, which is parsed too),
/// HTTP 200 with `ok: false` (Slack), tokens nested under
/// `alternate_access_token_response_path`, `expires_in` as a number or a string.
pub async fn exchange(
    provider: &Provider,
    client: &Client<'_>,
    mut params: Vec<(String, String)>,
    refresh: bool,
) -> Result<Tokens, ProviderError> {
    let fail = |code: &'static str, detail: String| ProviderError::new(code, detail);
    let url_field = if refresh && provider.raw.get("refresh_url").is_some() { "refresh_url" } else { "token_url" };
    let token_url = match provider.raw.get(url_field) {
        Some(Value::String(u)) => concrete_url(u),
        Some(Value::Object(m)) => m.get("OAUTH2").and_then(Value::as_str).and_then(concrete_url),
        _ => None,
    }
    .ok_or_else(|| fail("provider_needs_connection_config", "no usable token_url".into()))?;
    // Refreshes send `refresh_params`, falling back to `token_params` (as Nango does).
    let extra_field =
        if refresh && provider.raw.get("refresh_params").is_some() { "refresh_params" } else { "token_params" };
    if let Some(extra) = provider.raw.get(extra_field).and_then(Value::as_object) {
        for (k, v) in extra {
            if let Some(v) = v.as_str()
                && !params.iter().any(|(pk, _)| pk == k)
            {
                params.push((k.clone(), v.to_string()));
            }
        }
    }
    let header_auth = provider.str("authorization_method") == Some("header");
    let basic_too = provider.str("token_request_auth_method") == Some("basic");
    if !header_auth {
        params.push(("client_id".into(), client.id.to_string()));
        params.push(("client_secret".into(), client.secret.clone()));
    }
    let mut req = request(reqwest::Method::POST, &token_url)
        .map_err(|e| fail("provider_url_refused", e.to_string()))?
        .timeout(PROVIDER_TIMEOUT)
        .header(header::ACCEPT, "application/json");
    if header_auth || basic_too {
        let basic = B64.encode(format!("{}:{}", client.id, client.secret));
        req = req.header(header::AUTHORIZATION, format!("Basic {basic}"));
    }
    req = if provider.str("body_format") == Some("json") {
        let body: serde_json::Map<String, Value> = params.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        req.json(&body)
    } else {
        req.form(&params)
    };
    let res = req.send().await.map_err(|e| fail("provider_unreachable", e.without_url().to_string()))?;
    let status = res.status();
    let text = res.text().await.map_err(|e| fail("provider_unreachable", e.without_url().to_string()))?;
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| {
        // Form-encoded answers (GitHub without Accept).
        Value::Object(
            url::form_urlencoded::parse(text.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )
    });
    let provider_error =
        body.get("error").and_then(as_text).or_else(|| body.get("error_description").and_then(as_text));
    if !status.is_success()
        || body.get("ok") == Some(&Value::Bool(false))
        || (provider_error.is_some() && body.get("access_token").is_none())
    {
        let err = provider_error.unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
        // Permanent: the grant or the client is no good; retrying cannot help.
        let permanent =
            matches!(err.as_str(), "invalid_grant" | "invalid_client" | "unauthorized_client" | "invalid_request")
                || (status.is_client_error()
                    && status != StatusCode::TOO_MANY_REQUESTS
                    && status != StatusCode::REQUEST_TIMEOUT);
        let code = if permanent && !status.is_server_error() { "invalid_grant" } else { "token_exchange_failed" };
        return Err(fail(code, format!("HTTP {}: {err}", status.as_u16())));
    }
    // Tokens may sit in a nested object (Slack's `authed_user` for user tokens).
    let holder = match (body.get("access_token"), provider.str("alternate_access_token_response_path")) {
        (None, Some(path)) | (Some(Value::Null), Some(path)) => get_path(&body, path).unwrap_or(&body),
        _ => &body,
    };
    let access_token = holder
        .get("access_token")
        .and_then(as_text)
        .ok_or_else(|| fail("token_exchange_failed", "no access_token in the response".into()))?;
    let expires_in = holder
        .get("expires_in")
        .and_then(|v| v.as_i64().or_else(|| v.as_str()?.trim().parse().ok()))
        .filter(|s| *s > 0);
    Ok(Tokens {
        access_token,
        refresh_token: holder.get("refresh_token").and_then(as_text),
        expires_at: expires_in.map(|s| OffsetDateTime::now_utc() + time::Duration::seconds(s)),
        lifetime_secs: expires_in,
        scope: holder.get("scope").and_then(as_text),
        raw: body,
    })
}

/// The external account id: from the token response (`account_id_path`), or from
/// the provider's identity endpoint (`identity.url`, `identity.id_path`), else
/// `default` (one account per user for that integration).
pub async fn account_id(provider: &Provider, tokens: &Tokens) -> Result<String, ProviderError> {
    let fail = |detail: String| ProviderError::new("identity_failed", detail);
    if let Some(path) = provider.str("account_id_path") {
        return get_path(&tokens.raw, path)
            .and_then(as_text)
            .ok_or_else(|| fail(format!("no {path} in the token response")));
    }
    let Some(identity) = provider.raw.get("identity") else { return Ok("default".into()) };
    let url = identity.get("url").and_then(Value::as_str).ok_or_else(|| fail("identity.url missing".into()))?;
    let path = identity.get("id_path").and_then(Value::as_str).unwrap_or("id");
    let res = request(reqwest::Method::GET, url)
        .map_err(|e| fail(e.to_string()))?
        .timeout(PROVIDER_TIMEOUT)
        .bearer_auth(&tokens.access_token)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "carmenta")
        .send()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?;
    if !res.status().is_success() {
        return Err(fail(format!("identity endpoint answered {}", res.status())));
    }
    let v: Value = res.json().await.map_err(|e| fail(e.without_url().to_string()))?;
    get_path(&v, path).and_then(as_text).ok_or_else(|| fail(format!("no {path} in the identity response")))
}

/// Revokes `token` at the provider's `revoke_url` (RFC 7009: `token=…` with the
/// client's credentials); `Ok(false)` when the provider has no such endpoint.
pub async fn revoke(provider: &Provider, client: &Client<'_>, token: &str) -> Result<bool, ProviderError> {
    let Some(url) = provider.str("revoke_url").and_then(concrete_url) else { return Ok(false) };
    let fail = |detail: String| ProviderError::new("revoke_failed", detail);
    let form = [("token", token), ("client_id", client.id), ("client_secret", &client.secret)];
    let res = request(reqwest::Method::POST, &url)
        .map_err(|e| fail(e.to_string()))?
        .timeout(PROVIDER_TIMEOUT)
        .form(&form)
        .send()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?;
    if res.status().is_success() { Ok(true) } else { Err(fail(format!("HTTP {}", res.status().as_u16()))) }
}
