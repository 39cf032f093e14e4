//! External issuer mode: trusting access tokens from Clerk (or any OIDC issuer)
//! beside Carmenta's own, and Clerk's Svix-signed user webhooks.
//!
//! Tokens are verified against the issuer's JWKS (fetched, cached for five minutes,
//! re-fetched on an unknown `kid`) or a pinned PEM key; `iss` must match, `azp` must
//! be in the allow-list when one is configured (a missing `azp` then fails, as in
//! Clerk's SDK), and `exp`/`nbf` get 5 s of leeway. A user's id is derived from
//! (issuer, `sub`) as a UUID v5, so verifying needs no database; the user row is
//! created on first sight of a `sub`.

use std::collections::HashSet;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Sha256;

use crate::auth::AuthState;
use uuid::Uuid;

use super::jwks::{ALLOWED_ALGS, RemoteJwks};
use super::tokens::TokenError;
use crate::config::Config;

/// Webhook timestamps further than this from now are refused (replay window).
pub const WEBHOOK_TOLERANCE_SECS: i64 = 300;

/// Claims read from an external token.
#[derive(Debug, Clone, Deserialize)]
pub struct ExternalClaims {
    /// The external user id (Clerk: `user_…`).
    pub sub: String,
    /// Issuer.
    pub iss: String,
    /// Authorized party (Clerk: the origin of the frontend).
    #[serde(default)]
    pub azp: Option<String>,
    /// External session id.
    #[serde(default)]
    pub sid: Option<String>,
}

/// A configured external issuer and its cached keys.
pub struct ExternalIssuer {
    issuer: String,
    jwks: Option<RemoteJwks>,
    pinned: Option<(DecodingKey, Algorithm)>,
    azp: Vec<String>,
    audience: Option<String>,
    namespace: Uuid,
    provisioned: Mutex<HashSet<Uuid>>,
}

impl std::fmt::Debug for ExternalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalIssuer").field("issuer", &self.issuer).field("azp", &self.azp).finish_non_exhaustive()
    }
}

/// Why the external issuer's configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ExternalConfigError {
    /// `CARMENTA_EXTERNAL_JWT_KEY` is not a public key PEM.
    #[error("CARMENTA_EXTERNAL_JWT_KEY: not an RSA, EC or Ed25519 public key PEM ({0})")]
    Key(jsonwebtoken::errors::Error),
    /// `CARMENTA_EXTERNAL_ISSUER` does not make a JWKS URL.
    #[error("CARMENTA_EXTERNAL_ISSUER: {0}")]
    Issuer(url::ParseError),
}

impl ExternalIssuer {
    /// The external issuer configured in `config`, if any.
    pub fn from_config(config: &Config) -> Result<Option<ExternalIssuer>, ExternalConfigError> {
        let Some(issuer) = config.external_issuer.clone() else { return Ok(None) };
        let pinned = match &config.external_jwt_key {
            Some(pem) => {
                let pem = pem.replace("\\n", "\n");
                let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                    .map(|k| (k, Algorithm::RS256))
                    .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()).map(|k| (k, Algorithm::ES256)))
                    .or_else(|_| DecodingKey::from_ed_pem(pem.as_bytes()).map(|k| (k, Algorithm::EdDSA)))
                    .map_err(ExternalConfigError::Key)?;
                Some(key)
            }
            None => None,
        };
        let jwks_url = match (&config.external_jwks_url, &pinned) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(
                url::Url::parse(&format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/')))
                    .map_err(ExternalConfigError::Issuer)?,
            ),
        };
        Ok(Some(ExternalIssuer {
            namespace: Uuid::new_v5(&Uuid::NAMESPACE_URL, issuer.as_bytes()),
            issuer,
            jwks: jwks_url.map(RemoteJwks::new),
            pinned,
            azp: config.external_azp.clone(),
            audience: config.external_audience.clone(),
            provisioned: Mutex::new(HashSet::new()),
        }))
    }

    /// The configured issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The Carmenta user id for an external `sub`.
    pub fn user_id(&self, sub: &str) -> Uuid {
        Uuid::new_v5(&self.namespace, sub.as_bytes())
    }

    /// Whether the user was already provisioned by this process.
    pub fn is_provisioned(&self, id: Uuid) -> bool {
        self.provisioned.lock().map(|s| s.contains(&id)).unwrap_or(false)
    }

    /// Remembers that the user row exists (bounded; forgotten wholesale when large).
    pub fn mark_provisioned(&self, id: Uuid) {
        if let Ok(mut s) = self.provisioned.lock() {
            if s.len() > 100_000 {
                s.clear();
            }
            s.insert(id);
        }
    }

    /// Forgets a user (after a `user.deleted` webhook).
    pub fn forget(&self, id: Uuid) {
        if let Ok(mut s) = self.provisioned.lock() {
            s.remove(&id);
        }
    }

    async fn key_for(&self, kid: Option<&str>) -> Option<(DecodingKey, Algorithm)> {
        match (&self.pinned, &self.jwks) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(jwks)) => jwks.key(Some(kid?)).await,
            (None, None) => None,
        }
    }

    /// Verifies an external token and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<ExternalClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !ALLOWED_ALGS.contains(&header.alg) {
            return Err(TokenError::Malformed);
        }
        if header.typ.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("JWT")) {
            return Err(TokenError::Malformed);
        }
        let (key, alg) = self.key_for(header.kid.as_deref()).await.ok_or(TokenError::UnknownKey)?;
        if alg != header.alg {
            return Err(TokenError::Malformed);
        }
        let mut v = Validation::new(alg);
        v.leeway = 5;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        match &self.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&["exp", "sub", "iss"]);
        let claims = jsonwebtoken::decode::<ExternalClaims>(token, &key, &v).map(|d| d.claims)?;
        if !self.azp.is_empty() && !claims.azp.as_ref().is_some_and(|a| self.azp.iter().any(|x| x == a)) {
            return Err(TokenError::Claims("azp".into()));
        }
        if claims.sub.is_empty() || claims.sub.len() > 255 {
            return Err(TokenError::Claims("sub".into()));
        }
        Ok(claims)
    }
}

/// The `iss` of a JWT, read without verifying it (to route it to a verifier).
pub fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    serde_json::from_slice::<Iss>(&bytes).ok()?.iss
}

/// Why a webhook delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Required headers are missing.
    #[error("missing svix-id, svix-timestamp or svix-signature header")]
    MissingHeaders,
    /// The timestamp is outside the replay window.
    #[error("timestamp outside the 5-minute window")]
    Stale,
    /// No signature matches any configured secret.
    #[error("no valid signature")]
    BadSignature,
}

/// Verifies a Svix (Standard Webhooks) signature: `v1,<base64 HMAC-SHA256>` over
/// `"{id}.{timestamp}.{body}"`, keyed by the base64 after `whsec_`; any of several
/// space-separated signatures may match any of the configured (rotated) secrets.
pub fn verify_svix(
    secrets: &[crate::config::Secret],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), WebhookError> {
    let (Some(id), Some(ts), Some(sigs)) = (id, timestamp, signatures) else {
        return Err(WebhookError::MissingHeaders);
    };
    let t: i64 = ts.trim().parse().map_err(|_| WebhookError::Stale)?;
    if (now - t).abs() > WEBHOOK_TOLERANCE_SECS {
        return Err(WebhookError::Stale);
    }
    let provided: Vec<Vec<u8>> =
        sigs.split_whitespace().filter_map(|s| s.strip_prefix("v1,")).filter_map(|s| B64.decode(s).ok()).collect();
    for secret in secrets {
        let raw = secret.expose();
        let key = B64.decode(raw.strip_prefix("whsec_").unwrap_or(raw)).unwrap_or_else(|_| raw.as_bytes().to_vec());
        for sig in &provided {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else { continue };
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(ts.trim().as_bytes());
            mac.update(b".");
            mac.update(body);
            // Constant-time comparison.
            if mac.verify_slice(sig).is_ok() {
                return Ok(());
            }
        }
    }
    Err(WebhookError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn sign(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
        let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn svix_signatures() {
        let old = format!("whsec_{}", B64.encode(b"old-secret-old-secret-old-secret"));
        let new = format!("whsec_{}", B64.encode(b"new-secret-new-secret-new-secret"));
        let body = br#"{"type":"user.created"}"#;
        let now = 1_700_000_000;
        let good = sign(&new, "msg_1", now, body);
        let secrets = [Secret::new(old.clone()), Secret::new(new.clone())];
        assert_eq!(verify_svix(&secrets, Some("msg_1"), Some(&now.to_string()), Some(&good), body, now), Ok(()));
        // Several signatures, one valid.
        let several = format!("v1,AAAA {good} v2,zzz");
        assert_eq!(verify_svix(&secrets, Some("msg_1"), Some(&now.to_string()), Some(&several), body, now), Ok(()));
        // Only the old secret configured: the new signature fails.
        assert_eq!(
            verify_svix(&[Secret::new(old)], Some("msg_1"), Some(&now.to_string()), Some(&good), body, now),
            Err(WebhookError::BadSignature)
        );
        // Tampered body, other id, stale or future timestamp, missing headers.
        assert!(verify_svix(&secrets, Some("msg_1"), Some(&now.to_string()), Some(&good), b"{}", now).is_err());
        assert!(verify_svix(&secrets, Some("msg_2"), Some(&now.to_string()), Some(&good), body, now).is_err());
        assert_eq!(
            verify_svix(&secrets, Some("msg_1"), Some(&now.to_string()), Some(&good), body, now + 301),
            Err(WebhookError::Stale)
        );
        assert_eq!(
            verify_svix(&secrets, Some("msg_1"), Some(&now.to_string()), Some(&good), body, now - 301),
            Err(WebhookError::Stale)
        );
        assert_eq!(
            verify_svix(&secrets, None, Some(&now.to_string()), Some(&good), body, now),
            Err(WebhookError::MissingHeaders)
        );
    }
}

/// The user object of a Clerk webhook (the fields we keep).
#[derive(Debug, Deserialize)]
struct ClerkUser {
    id: String,
    #[serde(default)]
    email_addresses: Vec<ClerkEmail>,
    #[serde(default)]
    primary_email_address_id: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    image_url: Option<String>,
    #[serde(default)]
    public_metadata: Option<serde_json::Value>,
    #[serde(default)]
    private_metadata: Option<serde_json::Value>,
    #[serde(default)]
    unsafe_metadata: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct ClerkEmail {
    id: String,
    email_address: String,
    #[serde(default)]
    verification: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct ClerkEvent {
    #[serde(rename = "type")]
    kind: String,
    data: serde_json::Value,
}

fn object_or_empty(v: Option<serde_json::Value>) -> serde_json::Value {
    v.filter(|v| v.is_object()).unwrap_or_else(|| serde_json::json!({}))
}

/// Handles a verified-or-not Clerk webhook delivery: checks the Svix signature,
/// processes each delivery once, and keeps users in sync (`user.created`,
/// `user.updated`, `user.deleted`, which deletes the user's data). Other event
/// types are acknowledged and ignored.
pub async fn handle_clerk_webhook(
    state: &AuthState,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<serde_json::Value, crate::error::ApiError> {
    use crate::error::ApiError;
    use http::StatusCode;
    let (Some(ext), false) = (&state.external, state.config.clerk_webhook_secrets.is_empty()) else {
        return Err(ApiError::not_found(
            "Clerk webhooks are not configured (CARMENTA_EXTERNAL_ISSUER and CARMENTA_CLERK_WEBHOOK_SECRET)",
        ));
    };
    let header = |a: &str, b: &str| headers.get(a).or_else(|| headers.get(b)).and_then(|v| v.to_str().ok());
    let id = header("svix-id", "webhook-id");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    verify_svix(
        &state.config.clerk_webhook_secrets,
        id,
        header("svix-timestamp", "webhook-timestamp"),
        header("svix-signature", "webhook-signature"),
        body,
        now,
    )
    .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", e.to_string()))?;
    let id = id.unwrap_or_default();
    let event: ClerkEvent =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
    if !super::db::record_webhook(&state.pool, id, "clerk", &event.kind).await? {
        return Ok(serde_json::json!({"status": "duplicate"}));
    }
    let outcome = process_clerk_event(state, ext, &event).await;
    if outcome.is_err() {
        // Let the sender's retry be processed.
        super::db::forget_webhook(&state.pool, id).await?;
    }
    outcome
}

async fn process_clerk_event(
    state: &AuthState,
    ext: &ExternalIssuer,
    event: &ClerkEvent,
) -> Result<serde_json::Value, crate::error::ApiError> {
    use crate::error::ApiError;
    let bad =
        |e: serde_json::Error| ApiError::new(http::StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", e.to_string());
    match event.kind.as_str() {
        "user.created" | "user.updated" => {
            let u: ClerkUser = serde_json::from_value(event.data.clone()).map_err(bad)?;
            let primary = u
                .email_addresses
                .iter()
                .find(|e| Some(&e.id) == u.primary_email_address_id.as_ref())
                .or_else(|| u.email_addresses.first());
            let name = [u.first_name.as_deref(), u.last_name.as_deref()]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let profile = super::db::ExternalProfile {
                email: primary.map(|e| e.email_address.clone()),
                email_verified: primary
                    .and_then(|e| e.verification.as_ref())
                    .and_then(|v| v.get("status"))
                    .and_then(|s| s.as_str())
                    == Some("verified"),
                name: (!name.is_empty()).then_some(name),
                image_url: u.image_url.filter(|s| !s.is_empty()),
                public_metadata: object_or_empty(u.public_metadata),
                private_metadata: object_or_empty(u.private_metadata),
                unsafe_metadata: object_or_empty(u.unsafe_metadata),
            };
            let user_id = ext.user_id(&u.id);
            super::db::upsert_external_user(&state.pool, user_id, &u.id, &profile).await?;
            super::service::changed(state, format!("u:{user_id}")).await?;
            ext.mark_provisioned(user_id);
            crate::audit::record(
                &state.pool,
                "webhook:clerk",
                Some(user_id),
                &format!("clerk.{}", event.kind),
                Some(&u.id),
                serde_json::json!({}),
            )
            .await?;
            Ok(serde_json::json!({"status": "processed", "user_id": user_id}))
        }
        "user.deleted" => {
            let sub = event.data.get("id").and_then(|v| v.as_str()).ok_or_else(|| {
                ApiError::new(http::StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", "user.deleted without data.id")
            })?;
            let user_id = ext.user_id(sub);
            crate::audit::record(
                &state.pool,
                "webhook:clerk",
                Some(user_id),
                "clerk.user.deleted",
                Some(sub),
                serde_json::json!({}),
            )
            .await?;
            let deleted = super::db::delete_user(&state.pool, user_id).await?;
            super::service::changed(state, format!("u:{user_id}")).await?;
            ext.forget(user_id);
            Ok(serde_json::json!({"status": "processed", "deleted": deleted}))
        }
        _ => Ok(serde_json::json!({"status": "ignored"})),
    }
}
