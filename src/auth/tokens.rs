//! Tokens: opaque random secrets (sessions, service keys) and their hashes, and
//! access tokens — EdDSA JWTs signed with keys kept encrypted in PostgreSQL and
//! cached in memory, so verifying a JWT makes no database query.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::crypto::Keyring;

/// Prefix of session tokens.
pub const SESSION_PREFIX: &str = "cs_";
/// Prefix of service keys.
pub const SERVICE_KEY_PREFIX: &str = "ck_";

/// A new opaque token: `prefix` + 43 base64url characters (256 random bits).
pub fn random_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", B64URL.encode(bytes))
}

/// The stored form of an opaque token (SHA-256; the token carries 256 bits).
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Claims of a Carmenta access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The session id.
    pub sid: String,
    /// Issuer: the public URL.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Unique token id.
    pub jti: String,
    /// The actor behind an impersonated session: `{"sub": <admin user id>}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<ActClaim>,
    /// RFC 8176 authentication method references of the session's sign-in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// Authenticator assurance level of the session: `aal1` or `aal2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aal: Option<String>,
    /// The session's active organization (Clerk's v1 claim names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// Its slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_slug: Option<String>,
    /// The user's role in it (`org:admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_role: Option<String>,
    /// The role's permissions, system ones (`org:sys_*`) left out as Clerk does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_permissions: Option<Vec<String>>,
}

/// How a session was authenticated: RFC 8176 method references and the
/// assurance level (1: one factor, 2: two factors or a passkey).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionAuth {
    /// `pwd`, `email`, `social`, `otp`, `backup_code`, `passkey`, `mfa`, `impersonation`.
    pub amr: Vec<String>,
    /// 1 or 2.
    pub aal: i16,
}

impl SessionAuth {
    /// One factor, by `method`.
    pub fn single(method: &str) -> SessionAuth {
        SessionAuth { amr: vec![method.to_string()], aal: 1 }
    }
}

/// The active organization an access token names.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrgClaims {
    /// Organization id.
    pub id: uuid::Uuid,
    /// Slug.
    pub slug: String,
    /// Role key.
    pub role: String,
    /// Every permission of the role.
    pub permissions: Vec<String>,
}

/// RFC 8693's `act` claim: who is really acting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActClaim {
    /// The acting party's id (an admin's user id).
    pub sub: String,
}

/// Why an access token was refused; each maps to a stable error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, bad encoding, or a wrong/absent algorithm.
    #[error("malformed token")]
    Malformed,
    /// `kid` not among the published keys.
    #[error("unknown signing key")]
    UnknownKey,
    /// Signature does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// Before `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
    /// Wrong issuer or audience, or a missing claim.
    #[error("invalid claims: {0}")]
    Claims(String),
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::NotYetValid,
            K::InvalidSignature => TokenError::BadSignature,
            K::InvalidIssuer => TokenError::Claims("iss".into()),
            K::InvalidAudience => TokenError::Claims("aud".into()),
            K::MissingRequiredClaim(c) => TokenError::Claims(format!("missing {c}")),
            _ => TokenError::Malformed,
        }
    }
}

impl TokenError {
    /// The stable API error code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Expired => "token_expired",
            _ => "invalid_token",
        }
    }
}

struct Signer {
    kid: String,
    key: EncodingKey,
}

#[derive(Default)]
struct Keys {
    signer: Option<Signer>,
    verifiers: HashMap<String, DecodingKey>,
    jwks: Vec<serde_json::Value>,
}

/// The signing keys in memory, refreshed from PostgreSQL periodically and when a
/// token names an unknown `kid` (another replica rotated).
pub struct KeyStore {
    keys: RwLock<Keys>,
    /// Tokens that passed full verification, with their claims: a client reuses
    /// one access token for its whole life, and an Ed25519 check costs far more than
    /// a map lookup. A hit requires the identical token string; expiry is rechecked.
    verified: RwLock<HashMap<String, Claims>>,
    last_refresh: std::sync::Mutex<Instant>,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

/// PKCS#8 v1 DER of an Ed25519 private key from its 32-byte seed.
fn ed25519_pkcs8(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(seed);
    der
}

/// A row of `auth_signing_keys` as the key store needs it.
#[derive(Debug, Clone)]
pub struct SigningKeyRow {
    /// Key id.
    pub kid: String,
    /// Encrypted seed.
    pub private_key: Vec<u8>,
    /// Public JWK.
    pub public_jwk: serde_json::Value,
    /// Whether it still signs.
    pub active: bool,
}

/// Generates a new Ed25519 key, stores it encrypted, and retires the others
/// (they stay published until their last token expires).
pub async fn rotate(pool: &PgPool, keyring: &Keyring) -> Result<String, sqlx::Error> {
    let (kid, sealed, jwk) = generate_signing_key(keyring);
    let mut tx = super::db::lock_signing_keys(pool).await?;
    super::db::insert_signing_key(&mut tx, &kid, &sealed, &jwk).await?;
    tx.commit().await?;
    Ok(kid)
}

/// A new Ed25519 signing key: its id, its seed encrypted with the keyring (the
/// key id as associated data), and its public JWK.
pub fn generate_signing_key(keyring: &Keyring) -> (String, Vec<u8>, serde_json::Value) {
    let seed: [u8; 32] = rand::random();
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let kid = Uuid::now_v7().simple().to_string();
    let jwk = serde_json::json!({
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": kid, "x": B64URL.encode(public),
    });
    let sealed = keyring.seal_signing_seed(&kid, &seed);
    (kid, sealed, jwk)
}

/// Why the signing keys could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// Reading or writing the keys failed.
    #[error("signing keys: {0}")]
    Db(#[from] sqlx::Error),
    /// An active key's seed could not be opened (another encryption key?).
    #[error("signing key {kid}: {source}")]
    Seed {
        /// The key id.
        kid: String,
        /// Why.
        source: crate::crypto::CryptoError,
    },
    /// No key is active.
    #[error("no active signing key")]
    NoSigner,
    /// A thread panicked while holding the keys.
    #[error("key store poisoned")]
    Poisoned,
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

impl KeyStore {
    /// Loads the keys, creating the first one if there is none.
    pub async fn load(
        pool: &PgPool,
        keyring: &Keyring,
        issuer: String,
        audience: String,
        ttl: Duration,
    ) -> Result<KeyStore, KeyStoreError> {
        let store = KeyStore {
            keys: RwLock::new(Keys::default()),
            verified: RwLock::new(HashMap::new()),
            last_refresh: std::sync::Mutex::new(Instant::now()),
            issuer,
            audience,
            ttl,
        };
        super::db::ensure_signing_key(pool, keyring).await?;
        store.refresh(pool, keyring).await?;
        Ok(store)
    }

    /// Reloads the published keys from the database.
    pub async fn refresh(&self, pool: &PgPool, keyring: &Keyring) -> Result<(), KeyStoreError> {
        let grace = self.ttl + Duration::from_secs(60);
        let rows = super::db::published_signing_keys(pool, grace).await?;
        let mut keys = Keys::default();
        for row in rows {
            let Some(x) = row.public_jwk.get("x").and_then(|v| v.as_str()) else {
                continue;
            };
            let Ok(dk) = DecodingKey::from_ed_components(x) else {
                continue;
            };
            keys.verifiers.insert(row.kid.clone(), dk);
            keys.jwks.push(row.public_jwk.clone());
            if row.active && keys.signer.is_none() {
                let seed = keyring
                    .open_signing_seed(&row.kid, &row.private_key)
                    .map_err(|source| KeyStoreError::Seed { kid: row.kid.clone(), source })?;
                let key = EncodingKey::from_ed_der(&ed25519_pkcs8(&seed));
                keys.signer = Some(Signer { kid: row.kid.clone(), key });
            }
        }
        if let Ok(mut g) = self.keys.write() {
            *g = keys;
        }
        // A key may have left the published set: verify everything afresh.
        if let Ok(mut v) = self.verified.write() {
            v.clear();
        }
        if let Ok(mut t) = self.last_refresh.lock() {
            *t = Instant::now();
        }
        Ok(())
    }

    /// Whether a refresh on an unknown `kid` is allowed now (at most every 5 s).
    pub fn may_refresh(&self) -> bool {
        self.last_refresh.lock().map(|t| t.elapsed() > Duration::from_secs(5)).unwrap_or(false)
    }

    /// The issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Access token lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        let keys = self.keys.read().map(|k| k.jwks.clone()).unwrap_or_default();
        serde_json::json!({ "keys": keys })
    }

    /// Signs an access token for `user` and `session` (with `act` naming the admin
    /// when the session is an impersonation, and the active organization's claims);
    /// returns it and its expiry.
    pub fn issue(
        &self,
        user: Uuid,
        session: Uuid,
        act: Option<Uuid>,
        auth: &SessionAuth,
        org: Option<&OrgClaims>,
    ) -> Result<(String, time::OffsetDateTime), KeyStoreError> {
        let now = time::OffsetDateTime::now_utc();
        let exp = now + self.ttl;
        let claims = Claims {
            sub: user.to_string(),
            sid: session.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: exp.unix_timestamp(),
            iat: now.unix_timestamp(),
            nbf: now.unix_timestamp(),
            jti: Uuid::new_v4().simple().to_string(),
            act: act.map(|a| ActClaim { sub: a.to_string() }),
            amr: auth.amr.clone(),
            aal: (auth.aal > 0).then(|| format!("aal{}", auth.aal)),
            org_id: org.map(|o| o.id.to_string()),
            org_slug: org.map(|o| o.slug.clone()),
            org_role: org.map(|o| o.role.clone()),
            org_permissions: org
                .map(|o| o.permissions.iter().filter(|p| !p.starts_with("org:sys_")).cloned().collect()),
        };
        let keys = self.keys.read().map_err(|_| KeyStoreError::Poisoned)?;
        let signer = keys.signer.as_ref().ok_or(KeyStoreError::NoSigner)?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(signer.kid.clone());
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims, &signer.key)?;
        Ok((token, exp))
    }

    /// Verifies an access token: EdDSA only, a published `kid`, signature, `iss`,
    /// `aud`, `exp`/`nbf` with 5 s leeway, required claims. No database access.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Ok(v) = self.verified.read()
            && let Some(c) = v.get(token)
        {
            if c.exp + 5 >= now {
                return Ok(c.clone());
            }
            return Err(TokenError::Expired);
        }
        let claims = self.verify_uncached(token)?;
        if let Ok(mut v) = self.verified.write() {
            if v.len() >= 50_000 {
                v.retain(|_, c| c.exp + 5 >= now);
                if v.len() >= 50_000 {
                    v.clear();
                }
            }
            v.insert(token.to_string(), claims.clone());
        }
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Malformed);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let keys = self.keys.read().map_err(|_| TokenError::Malformed)?;
        let key = keys.verifiers.get(&kid).ok_or(TokenError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.leeway = 5;
        v.validate_nbf = true;
        v.set_audience(&[&self.audience]);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "nbf", "iat", "sub", "iss", "aud"]);
        jsonwebtoken::decode::<Claims>(token, key, &v).map(|d| d.claims).map_err(TokenError::from)
    }
}
