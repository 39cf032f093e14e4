//! The one outgoing HTTP client of the crate (token endpoints, identity lookups,
//! revocation, webhooks, an external issuer's JWKS, and the embedding and LLM
//! providers to come): redirects never followed, a connect timeout, pooled
//! connections; callers set a per-call timeout ([`PROVIDER_TIMEOUT`] and kin).
//!
//! URLs a user, an app or an operator's data file supplies (webhook targets,
//! provider URLs, model endpoints) must not reach the machine's own cloud
//! metadata service or other link-local addresses (the classic SSRF to steal
//! instance credentials). The guard works at both ends: [`request`] (through
//! [`check_url`]) refuses a literal address before a request is built, and the client's resolver drops such
//! addresses from every name it resolves (so a DNS name pointing at
//! 169.254.169.254 is refused too, with no window between check and connect).
//! `CARMENTA_ALLOW_LINK_LOCAL_URLS=true` lifts it (a lab on link-local addresses).
//! Loopback and private ranges stay allowed: a local Ollama or a provider on the
//! LAN is a normal self-hosted setup.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Timeout of calls to providers' token, identity and revocation endpoints.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(20);

static ALLOW_LINK_LOCAL: AtomicBool = AtomicBool::new(false);

/// Sets whether link-local and metadata addresses may be reached (from
/// configuration, at start).
pub fn allow_link_local(allow: bool) {
    ALLOW_LINK_LOCAL.store(allow, Ordering::Release);
}

/// Whether `ip` is refused: link-local (IPv4 169.254/16, which holds the AWS, GCP,
/// Azure and OpenStack metadata address 169.254.169.254 and ECS's 169.254.170.2;
/// IPv6 fe80::/10), Alibaba's metadata address 100.100.100.200, AWS's IPv6 one
/// fd00:ec2::254, and those written as IPv4-mapped IPv6; unless allowed.
pub fn refused(ip: IpAddr) -> bool {
    if ALLOW_LINK_LOCAL.load(Ordering::Acquire) {
        return false;
    }
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refused_v4(v4),
            None => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        },
    }
}

fn refused_v4(ip: Ipv4Addr) -> bool {
    ip.is_link_local() || ip == Ipv4Addr::new(100, 100, 100, 200)
}

/// A URL the guard refuses, or one that is not http(s).
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not an http or https URL.
    #[error("only http and https URLs can be called")]
    Scheme,
    /// A link-local or cloud-metadata address.
    #[error("{0} is a link-local or cloud-metadata address, which outgoing requests may not reach")]
    Refused(IpAddr),
}

/// Checks a URL before a request to it is built: http(s), and not a refused
/// literal address (names are checked when they resolve).
pub fn check_url(url: &url::Url) -> Result<(), UrlError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme);
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if refused(ip) { Err(UrlError::Refused(ip)) } else { Ok(()) }
}

/// A request on the [`client`] to `url`, once the guard has checked it (a URL
/// that does not parse is left to the request, which reports it when sent).
pub fn request(method: reqwest::Method, url: &str) -> Result<reqwest::RequestBuilder, UrlError> {
    if let Ok(parsed) = url::Url::parse(url) {
        check_url(&parsed)?;
    }
    Ok(client().request(method, url))
}

/// Resolves `host` with the system resolver, dropping refused addresses; an error
/// when every address it has is refused.
async fn resolve_guarded(host: &str) -> std::io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let allowed: Vec<SocketAddr> = all.iter().copied().filter(|a| !refused(a.ip())).collect();
    match all.first() {
        Some(first) if allowed.is_empty() => {
            Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, UrlError::Refused(first.ip())))
        }
        _ => Ok(allowed),
    }
}

/// The guard as reqwest's resolver.
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve_guarded(&host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The guard as hyper's resolver (the API proxy's upstream connector; its pooled
/// connections resolve once each, so the guard costs nothing per call).
#[derive(Debug, Clone, Copy, Default)]
pub struct GuardedDns;

impl tower::Service<hyper_util::client::legacy::connect::dns::Name> for GuardedDns {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let host = name.as_str().to_string();
        Box::pin(async move { resolve_guarded(&host).await.map(Vec::into_iter) })
    }
}

/// Why a model endpoint's call failed after [`post_json_retrying`]'s attempts.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Connection failure or timeout on the last attempt (no URL in the text).
    #[error("request failed: {0}")]
    Transport(String),
    /// A non-success status (the first 300 characters of the body).
    #[error("HTTP {status}: {detail}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the body.
        detail: String,
    },
}

impl RemoteError {
    /// A short stable code: `timeout`, `unreachable`, `rate_limited`, `server_error`, `refused`.
    pub fn code(&self) -> &'static str {
        match self {
            RemoteError::Transport(m) if m.contains("timed out") => "timeout",
            RemoteError::Transport(_) => "unreachable",
            RemoteError::Status { status: 429, .. } => "rate_limited",
            RemoteError::Status { status, .. } if *status >= 500 => "server_error",
            RemoteError::Status { .. } => "refused",
        }
    }
}

/// POSTs `body` as JSON to a model endpoint (embeddings, chat completions) with a
/// bearer `key`, trying up to `attempts` times on 429, 5xx, connection failures
/// and timeouts, waiting `Retry-After` (at most 30 s) or 0.5 s, 1 s, 2 s, …;
/// returns the successful response's body.
pub async fn post_json_retrying(
    url: &str,
    key: Option<&str>,
    timeout: Duration,
    body: &serde_json::Value,
    attempts: u32,
) -> Result<bytes::Bytes, RemoteError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut req = request(reqwest::Method::POST, url)
            .map_err(|e| RemoteError::Transport(e.to_string()))?
            .timeout(timeout)
            .json(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let (wait, err) = match req.send().await {
            Err(e) => (None, RemoteError::Transport(without_url(&e))),
            Ok(resp) => {
                let status = resp.status();
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(30)));
                if status.is_success() {
                    match resp.bytes().await {
                        Ok(b) => return Ok(b),
                        Err(e) => (None, RemoteError::Transport(without_url(&e))),
                    }
                } else {
                    let text = resp.text().await.unwrap_or_default();
                    let detail: String = text.chars().take(300).collect();
                    let err = RemoteError::Status { status: status.as_u16(), detail };
                    if !(status.as_u16() == 429 || status.is_server_error()) {
                        return Err(err);
                    }
                    (retry_after, err)
                }
            }
        };
        if attempt >= attempts {
            return Err(err);
        }
        let backoff = wait.unwrap_or_else(|| Duration::from_millis(250 << attempt.min(8)));
        tracing::warn!(attempt, wait_ms = backoff.as_millis() as u64, error = %err, "model endpoint, retrying");
        tokio::time::sleep(backoff).await;
    }
}

/// A reqwest error's text without the URL (which may carry credentials).
pub fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<endpoint>");
    }
    s
}

/// The client.
pub fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        crate::install_tls_provider();
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(64)
            .dns_resolver(std::sync::Arc::new(GuardedResolver))
            .build()
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_addresses_are_refused_others_are_not() {
        for bad in [
            "169.254.169.254",
            "169.254.170.2",
            "100.100.100.200",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(refused(bad.parse().unwrap()), "{bad}");
        }
        for ok in ["127.0.0.1", "10.0.0.5", "192.168.1.10", "8.8.8.8", "::1", "2001:db8::1"] {
            assert!(!refused(ok.parse().unwrap()), "{ok}");
        }
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert!(matches!(check_url(&u("http://169.254.169.254/latest/meta-data/")), Err(UrlError::Refused(_))));
        assert!(matches!(check_url(&u("http://[fe80::1]/")), Err(UrlError::Refused(_))));
        assert!(matches!(check_url(&u("file:///etc/passwd")), Err(UrlError::Scheme)));
        assert!(check_url(&u("http://127.0.0.1:11434/v1/embeddings")).is_ok());
        assert!(check_url(&u("https://oauth2.googleapis.com/token")).is_ok());
    }

    #[tokio::test]
    async fn a_name_that_resolves_only_to_refused_addresses_is_not_reached() {
        // `localhost` resolves to loopback: reachable. A name resolving to the
        // metadata address is simulated by resolving it through the guard directly.
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let addrs: Vec<_> = GuardedResolver.resolve(name).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
        let name: reqwest::dns::Name = "169.254.169.254".parse().unwrap();
        assert!(GuardedResolver.resolve(name).await.is_err());
    }
}
