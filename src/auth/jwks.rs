//! Another issuer's signing keys: a JWKS fetched over HTTP, cached for
//! [`JWKS_TTL`], fetched again (single-flight, at most once a second) when a
//! token names a `kid` the cache lacks. Used by the external issuer (Clerk mode)
//! and by social sign-in's ID-token checks.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

/// How long a fetched JWKS is trusted before it is fetched again.
pub const JWKS_TTL: Duration = Duration::from_secs(300);
/// The least time between two fetches (an unknown `kid` must not hammer the issuer).
const REFETCH_GAP: Duration = Duration::from_secs(1);

/// The asymmetric algorithms accepted from other issuers (never `none` or HMAC).
pub const ALLOWED_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The algorithm a JWK is for: its `alg`, else the usual one for its key type.
pub fn jwk_alg(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters as P, EllipticCurve as C};
    if let Some(a) = jwk.common.key_algorithm {
        return format!("{a:?}").parse::<Algorithm>().ok().filter(|a| ALLOWED_ALGS.contains(a));
    }
    match &jwk.algorithm {
        P::RSA(_) => Some(Algorithm::RS256),
        P::EllipticCurve(ec) if ec.curve == C::P256 => Some(Algorithm::ES256),
        P::EllipticCurve(ec) if ec.curve == C::P384 => Some(Algorithm::ES384),
        P::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

type KeyMap = HashMap<String, (DecodingKey, Algorithm)>;

/// A remote JWKS and its cached keys.
pub struct RemoteJwks {
    url: url::Url,
    keys: RwLock<KeyMap>,
    fetched_at: Mutex<Option<Instant>>,
    fetch_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks").field("url", &self.url.as_str()).finish_non_exhaustive()
    }
}

impl RemoteJwks {
    /// Keys to be fetched from `url`.
    pub fn new(url: url::Url) -> RemoteJwks {
        RemoteJwks {
            url,
            keys: RwLock::new(HashMap::new()),
            fetched_at: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn stale(&self) -> bool {
        self.fetched_at.lock().map(|t| t.is_none_or(|t| t.elapsed() > JWKS_TTL)).unwrap_or(true)
    }

    /// Fetches the set (single-flight; not again within a second; with
    /// `only_if_stale`, only past [`JWKS_TTL`]). A failed fetch keeps the old keys.
    async fn refresh(&self, only_if_stale: bool) {
        let _guard = self.fetch_lock.lock().await;
        let recent = self.fetched_at.lock().map(|t| t.is_some_and(|t| t.elapsed() < REFETCH_GAP)).unwrap_or(false);
        if recent || (only_if_stale && !self.stale()) {
            return;
        }
        let result = async {
            let res = crate::http_client::request(reqwest::Method::GET, self.url.as_str())
                .map_err(|e| e.to_string())?
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| crate::http_client::without_url(&e))?;
            if !res.status().is_success() {
                return Err(format!("HTTP {}", res.status()));
            }
            res.json::<JwkSet>().await.map_err(|e| crate::http_client::without_url(&e))
        }
        .await;
        if let Ok(mut t) = self.fetched_at.lock() {
            *t = Some(Instant::now());
        }
        match result {
            Ok(set) => {
                let mut map = KeyMap::new();
                for jwk in &set.keys {
                    let Some(alg) = jwk_alg(jwk) else { continue };
                    if let Ok(k) = DecodingKey::from_jwk(jwk) {
                        map.insert(jwk.common.key_id.clone().unwrap_or_default(), (k, alg));
                    }
                }
                tracing::debug!(keys = map.len(), url = %self.url, "fetched a JWKS");
                if let Ok(mut g) = self.keys.write() {
                    *g = map;
                }
            }
            Err(e) => tracing::warn!(error = %e, url = %self.url, "fetching a JWKS failed; keeping cached keys"),
        }
    }

    fn cached(&self, kid: Option<&str>) -> Option<(DecodingKey, Algorithm)> {
        let keys = self.keys.read().ok()?;
        match kid {
            Some(k) => keys.get(k).cloned(),
            // No `kid`: only a set of one key says which key it is.
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    /// The key a token's `kid` names (fetching the set when stale, and again when
    /// the `kid` is unknown: the issuer may have rotated).
    pub async fn key(&self, kid: Option<&str>) -> Option<(DecodingKey, Algorithm)> {
        if self.stale() {
            self.refresh(true).await;
        }
        if let Some(k) = self.cached(kid) {
            return Some(k);
        }
        self.refresh(false).await;
        self.cached(kid)
    }
}
