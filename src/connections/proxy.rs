//! The API proxy: `ANY /v1/proxy/{path}` with Nango's `Connection-Id` and
//! `Provider-Config-Key` headers. The caller's connection is checked against its
//! owner, its access token refreshed if due and injected, the provider's template
//! headers applied, hop-by-hop and caller credentials dropped, and only URLs under
//! the provider's `proxy.base_url` are reachable (redirects are handed back, never
//! followed). Bodies stream both ways. 429 and 5xx are retried honouring
//! `Retry-After` for idempotent methods (or when the `Retries` header asks), and a
//! 401 triggers one forced refresh and one retry, when the request body is small
//! enough to replay.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use uuid::Uuid;

use crate::auth::CurrentUser;
use crate::error::ApiError;
use std::sync::Arc;

use axum::extract::FromRef;

use super::Connections;
use crate::auth::AuthState;

/// Request bodies up to this size are buffered so a retry can replay them.
const REPLAYABLE: usize = 1024 * 1024;
/// Longest `Retry-After` honoured.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// The upstream client: hyper's pooled HTTP/1 client over rustls (the platform's
/// roots), redirects never followed.
type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector<crate::http_client::GuardedDns>>, Body>;

/// The process's one upstream client (keep-alive connections pooled per host).
fn upstream() -> &'static Upstream {
    static CLIENT: OnceLock<Upstream> = OnceLock::new();
    CLIENT.get_or_init(|| {
        crate::install_tls_provider();
        // Names resolving only to link-local or metadata addresses are refused.
        let mut http = HttpConnector::new_with_resolver(crate::http_client::GuardedDns);
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let tls = hyper_rustls::HttpsConnectorBuilder::new().try_with_platform_verifier().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no platform certificate verifier: the proxy reaches no HTTPS API");
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        });
        let https = tls.https_or_http().enable_http1().wrap_connector(http);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(https)
    })
}

/// The proxy route (mounted outside the body-limit layer: bodies stream).
pub fn router<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Connections>: FromRef<S>,
    Arc<AuthState>: FromRef<S>,
{
    // The methods an API call uses (HEAD comes with GET); others are 405.
    let route = axum::routing::get(proxy).post(proxy).put(proxy).patch(proxy).delete(proxy);
    axum::Router::new().route("/v1/proxy/{*path}", route)
}

/// Headers never forwarded upstream: hop-by-hop ones, and the caller's own
/// credentials and proxy controls.
const DROP_UP: [&str; 16] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "cookie",
    "connection-id",
    "provider-config-key",
    "retries",
    "x-carmenta-user-id",
];
const DROP_DOWN: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
];

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// The upstream URL for `path` under `base`, or an error if it would leave it.
pub fn target_url(base: &url::Url, path: &str, query: Option<&str>) -> Result<url::Url, ApiError> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let refuse = || bad("invalid_proxy_path", "the path must stay under the provider's API base URL");
    if decoded.contains("..")
        || decoded.contains('@')
        || decoded.contains('\\')
        || decoded.contains("://")
        || decoded.starts_with('/')
        || path.to_ascii_lowercase().contains("%2f")
        || path.to_ascii_lowercase().contains("%5c")
        || decoded.chars().any(char::is_control)
    {
        return Err(refuse());
    }
    // Only the path and query of the base are replaced: the origin cannot change.
    let mut url = base.clone();
    url.set_path(&format!("{}/{}", base.path().trim_end_matches('/'), path));
    url.set_query(query.filter(|q| !q.is_empty()));
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    if !same_origin || !url.path().starts_with(base.path().trim_end_matches('/')) || !url.username().is_empty() {
        return Err(refuse());
    }
    Ok(url)
}

/// Fills `${accessToken}` and `${connectionConfig.x}` in a template header value.
fn fill(template: &str, token: &str, config: &serde_json::Value) -> String {
    let mut out = template.replace("${accessToken}", token).replace("${apiKey}", token);
    while let Some(start) = out.find("${connectionConfig.") {
        let Some(end) = out[start..].find('}') else { break };
        let key = &out[start + "${connectionConfig.".len()..start + end];
        let value = config.get(key).and_then(|v| v.as_str()).unwrap_or("").to_string();
        out.replace_range(start..start + end + 1, &value);
    }
    out
}

fn retry_after(headers: &HeaderMap) -> Duration {
    let secs = headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.trim().parse::<u64>().ok().or_else(|| {
                httpdate::parse_http_date(v)
                    .ok()
                    .map(|t| t.duration_since(std::time::SystemTime::now()).map_or(0, |d| d.as_secs()))
            })
        })
        .unwrap_or(1);
    Duration::from_secs(secs).min(MAX_WAIT)
}

async fn proxy(
    State(c): State<Arc<Connections>>,
    user: CurrentUser,
    Path(path): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty());
    let conn_id = text("connection-id").ok_or_else(|| bad("missing_connection_id", "send the Connection-Id header"))?;
    let key = text("provider-config-key")
        .ok_or_else(|| bad("missing_provider_config_key", "send the Provider-Config-Key header"))?;
    let conn_id = Uuid::parse_str(conn_id).map_err(|_| ApiError::not_found("connection not found"))?;
    let row = super::cache::lookup(&c, conn_id, user.user_id, key).await?;
    let (provider_name, config) = (&row.provider, &row.connection_config);
    let catalogued = c.catalog.get(provider_name).ok_or_else(|| ApiError::internal("provider left the catalog"))?;
    // Templated API bases (`https://${connectionConfig.subdomain}.zendesk.com`) are
    // filled from the connection; others are used as they are (no copy).
    let filled;
    let provider = if catalogued.proxy_base.is_none() {
        filled = catalogued.with_config(config).map_err(|e| {
            ApiError::unprocessable(e.code(), "the connection's configuration does not fit its provider")
        })?;
        &filled
    } else {
        catalogued
    };
    let base = provider.proxy_base.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "proxy_unavailable",
            "this provider's API URL needs connection configuration",
        )
    })?;
    // A literal link-local or metadata address in the catalog's base URL is refused
    // here (names are refused by the connector's resolver).
    crate::http_client::check_url(base)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "provider_url_refused", e.to_string()))?;
    let url = target_url(base, &path, parts.uri.query())?;
    let idempotent =
        matches!(parts.method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS);
    let max_retries: u32 = match text("retries") {
        Some(v) => v.parse::<u32>().map_err(|_| bad("invalid_retries", "Retries must be a number"))?.min(5),
        None if idempotent => 2,
        None => 0,
    };
    // Small bodies are buffered (replayable for retries); large ones stream once.
    let declared = h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let chunked = h.contains_key(header::TRANSFER_ENCODING);
    let mut streaming: Option<Body> = None;
    let buffered: Option<Bytes> = if chunked || declared.is_some_and(|n| n > REPLAYABLE) {
        streaming = Some(body);
        None
    } else {
        Some(
            axum::body::to_bytes(body, REPLAYABLE)
                .await
                .map_err(|_| bad("invalid_body", "reading the request body failed"))?,
        )
    };
    let template: Vec<(&str, &str)> = provider
        .raw
        .get("proxy")
        .and_then(|p| p.get("headers"))
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))).collect())
        .unwrap_or_default();
    // OAuth and API keys as a bearer, basic credentials as Basic, unless the
    // provider's template headers carry the credential themselves.
    let scheme = if provider.auth_mode == "BASIC" { "Basic" } else { "Bearer" };
    let templated = template.iter().any(|(_, v)| v.contains("${accessToken}") || v.contains("${apiKey}"));
    let mut token =
        super::refresh::access_token_from(&c, conn_id, &row.status, &row.credentials, provider.expiration_buffer())
            .await?;
    let mut refreshed = false;
    let mut attempt = 0u32;
    let uri = Uri::try_from(url.as_str()).map_err(|_| bad("invalid_proxy_path", "the upstream URL is not valid"))?;
    let mut forwarded = HeaderMap::with_capacity(h.len() + 1 + template.len());
    for (k, v) in h {
        if !DROP_UP.contains(&k.as_str()) {
            forwarded.append(k.clone(), v.clone());
        }
    }
    loop {
        let mut headers = forwarded.clone();
        if !templated {
            headers.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("{scheme} {token}")).map_err(ApiError::internal)?,
            );
        }
        for (k, v) in &template {
            if let (Ok(name), Ok(value)) = (HeaderName::try_from(*k), HeaderValue::from_str(&fill(v, &token, config))) {
                headers.insert(name, value);
            }
        }
        let body = match (&buffered, streaming.take()) {
            (Some(b), _) => Body::from(b.clone()),
            (None, Some(s)) => s,
            (None, None) => return Err(ApiError::internal("request body already sent")),
        };
        let mut up = axum::http::Request::new(body);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri.clone();
        *up.headers_mut() = headers;
        let res = upstream().request(up).await;
        let replayable = buffered.is_some();
        let res = match res {
            Ok(r) => r,
            Err(e) if replayable && attempt < max_retries && e.is_connect() => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "proxy upstream failed");
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    "the provider's API did not answer",
                ));
            }
        };
        let status = res.status();
        if status == StatusCode::UNAUTHORIZED && !refreshed && replayable {
            // The token may have been revoked or rotated elsewhere: one forced refresh, one retry.
            refreshed = true;
            if let Ok(fresh) = super::refresh::replace_rejected(&c, conn_id, token.clone()).await {
                token = fresh.access_token;
                continue;
            }
        }
        if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()) && replayable && attempt < max_retries
        {
            attempt += 1;
            tokio::time::sleep(retry_after(res.headers())).await;
            continue;
        }
        // The upstream's response as it is, less hop-by-hop headers and cookies;
        // its body streams through (its length, when known, is kept).
        let (mut head, incoming) = res.into_parts();
        for name in DROP_DOWN {
            head.headers.remove(name);
        }
        return Ok(Response::from_parts(head, Body::new(incoming)));
    }
}

#[cfg(test)]
mod tests {
    use super::target_url;

    #[test]
    fn paths_stay_under_the_base() {
        let base = &url::Url::parse("https://api.example.com/v2").unwrap();
        assert_eq!(
            target_url(base, "users/me", Some("a=1")).unwrap().as_str(),
            "https://api.example.com/v2/users/me?a=1"
        );
        for bad in [
            "../admin",
            "a/../../x",
            "%2e%2e/x",
            "a%2Fb",
            "@evil.com/x",
            "http://evil.com/x",
            "/x",
            "a\\b",
            "x%5c..%5cy",
        ] {
            assert!(target_url(base, bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_are_filled() {
        let cfg = serde_json::json!({"tenant": "t1"});
        assert_eq!(super::fill("Bearer ${accessToken} ${connectionConfig.tenant}", "tok", &cfg), "Bearer tok t1");
    }
}
