//! Connections, first part: the provider catalog (built-in, overridable, validated)
//! and integrations (service-key CRUD, client secrets encrypted and never returned).

use serde_json::{Value, json};

use crate::harness::{TestApp, envelope, sign_up};
use reqwest::Method;

#[tokio::test]
async fn providers_are_listed() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "p@example.com").await;
    let (status, list) = app.get_as("/v1/providers", &u.jwt).await;
    assert_eq!(status, 200, "{list}");
    let all = list.as_array().unwrap();
    assert!(all.len() >= 20, "{}", all.len());
    let mail = all.iter().find(|p| p["name"] == "google-mail").unwrap();
    assert_eq!(mail["proxy_base_url"], "https://gmail.googleapis.com");
    assert_eq!(mail["auth_mode"], "OAUTH2");
    let ms = all.iter().find(|p| p["name"] == "microsoft").unwrap();
    assert_eq!(ms["default_scopes"], json!(["offline_access", ".default"]));
    let r = app.call(Method::GET, "/v1/providers").send().await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn integrations_crud_with_an_encrypted_secret() {
    let app = TestApp::spawn().await;
    let (key, _) = carmenta::auth::service::create_service_key(&app.pool, "backend", true).await.unwrap();
    let user = sign_up(&app, "i@example.com").await;
    let secret = "super-secret-client-secret-value";
    let body = json!({"unique_key": "gmail-prod", "provider": "google-mail", "client_id": "cid.apps.googleusercontent.com",
                      "client_secret": secret, "scopes": ["https://www.googleapis.com/auth/gmail.readonly"],
                      "authorization_params": {"prompt": "select_account"}});
    let r = app.call(Method::POST, "/v1/integrations").by(&key).json(&body).send().await;
    assert_eq!(r.status(), 201);
    let text = r.text().await.unwrap();
    assert!(!text.contains(secret), "the secret is never returned: {text}");
    let created: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(created["has_client_secret"], true);
    assert_eq!(created["authorization_params"]["prompt"], "select_account");
    // At rest: an envelope, not the secret; it decrypts with the id as associated data.
    let (id, sealed): (uuid::Uuid, Vec<u8>) =
        sqlx::query_as("SELECT id, client_secret FROM integrations").fetch_one(&app.pool).await.unwrap();
    assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_bytes()));
    assert_eq!(app.state.connections.vault.open_client_secret(id, &sealed).unwrap(), secret);
    assert!(app.state.keyring.decrypt(&sealed, uuid::Uuid::nil().as_bytes()).is_err(), "bound to the id");
    // Default scopes when none are given; refusals.
    let r = app
        .call(Method::POST, "/v1/integrations")
        .by(&key)
        .json(&json!({"unique_key": "ms", "provider": "microsoft", "client_id": "a", "client_secret": "b"}))
        .send()
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["scopes"], json!(["offline_access", ".default"]));
    let cases = [
        (
            json!({"unique_key": "gmail-prod", "provider": "google-mail", "client_id": "a", "client_secret": "b"}),
            409,
            "integration_exists",
        ),
        (
            json!({"unique_key": "x", "provider": "myspace", "client_id": "a", "client_secret": "b"}),
            422,
            "unknown_provider",
        ),
        (json!({"unique_key": "x", "provider": "notion"}), 422, "missing_credentials"),
        (
            json!({"unique_key": "Bad Key", "provider": "notion", "client_id": "a", "client_secret": "b"}),
            422,
            "invalid_unique_key",
        ),
        (
            json!({"unique_key": "x", "provider": "notion", "client_id": "a", "client_secret": "b", "scopes": ["a b"]}),
            422,
            "invalid_scopes",
        ),
        (json!({"unique_key": "x", "provider": "notion", "colour": "red"}), 422, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let r = app.call(Method::POST, "/v1/integrations").by(&key).json(&body).send().await;
        let (s, c, m, _) = envelope(r).await;
        assert_eq!((s, c.as_str()), (status, code), "{body}: {m}");
        if code == "unknown_provider" {
            assert!(m.contains("myspace"), "{m}");
        }
    }
    // Users cannot manage integrations.
    let r = app.call(Method::GET, "/v1/integrations").by(&user.jwt).send().await;
    assert_eq!(envelope(r).await.0, 403);
    let r = app.call(Method::POST, "/v1/integrations").by(&user.jwt).json(&body).send().await;
    assert_eq!(envelope(r).await.0, 403);
    // Read, update (a new secret), list, delete.
    let (status, one) = app.get_as("/v1/integrations/gmail-prod", &key).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["client_id"], "cid.apps.googleusercontent.com");
    let r = app
        .call(Method::PATCH, "/v1/integrations/gmail-prod")
        .by(&key)
        .json(&json!({"client_secret": "rotated-secret", "scopes": ["openid"]}))
        .send()
        .await;
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["scopes"], json!(["openid"]));
    assert_eq!(patched["client_id"], "cid.apps.googleusercontent.com");
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT client_secret FROM integrations WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.state.connections.vault.open_client_secret(id, &sealed).unwrap(), "rotated-secret");
    let (status, list) = app.get_as("/v1/integrations", &key).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert!(list["next_cursor"].is_null());
    assert_eq!(app.delete_as("/v1/integrations/gmail-prod", &key).await.0, 204);
    let r = app.call(Method::GET, "/v1/integrations/gmail-prod").by(&key).send().await;
    assert_eq!(envelope(r).await.0, 404);
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action LIKE 'integration.%'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audit, 4);
}

#[tokio::test]
async fn a_providers_file_overrides_and_is_validated() {
    let dir = crate::harness::temp_dir("carmenta-providers-");
    let good = dir.join("good.json");
    std::fs::write(&good, r#"{"acme": {"auth_mode": "API_KEY", "proxy": {"base_url": "https://api.acme.test", "headers": {"x-api-key": "${apiKey}"}},
                                        "docs": "https://docs.acme.test/api", "categories": ["crm"]},
                             "notion": {"proxy": {"headers": {"notion-version": "2025-09-03"}}}}"#).unwrap();
    let app = TestApp::builder().config(|c| c.providers_file = Some(good.clone())).spawn().await;
    let u = sign_up(&app, "o@example.com").await;
    let (status, list) = app.get_as("/v1/providers", &u.jwt).await;
    assert_eq!(status, 200, "{list}");
    let acme = list.as_array().unwrap().iter().find(|p| p["name"] == "acme").unwrap();
    assert_eq!(acme["proxy_base_url"], "https://api.acme.test");
    assert!(list.as_array().unwrap().len() >= 200, "the catalog lists every provider");
    // Filters: category, auth mode, name.
    let names =
        |v: &Value| v.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let (_, crm) = app.get_as("/v1/providers?category=crm", &u.jwt).await;
    let crm = names(&crm);
    assert!(
        crm.contains(&"acme".to_string())
            && crm.contains(&"salesforce".to_string())
            && crm.contains(&"pipedrive".to_string())
    );
    assert!(!crm.contains(&"slack".to_string()));
    let (_, cc) = app.get_as("/v1/providers?auth_mode=OAUTH2_CC", &u.jwt).await;
    assert!(
        cc.as_array().unwrap().len() >= 5 && cc.as_array().unwrap().iter().all(|p| p["auth_mode"] == "OAUTH2_CC"),
        "{cc}"
    );
    let (_, zoho) = app.get_as("/v1/providers?q=ZOHO&category=support", &u.jwt).await;
    assert_eq!(names(&zoho), vec!["zoho-desk"]);
    let desk = &zoho[0];
    assert_eq!((desk["alias"].as_str(), desk["connection_config"][0].as_str()), (Some("zoho"), Some("extension")));
    assert!(desk["docs"].as_str().unwrap().starts_with("https://"));
    let (_, none) = app.get_as("/v1/providers?category=toys", &u.jwt).await;
    assert_eq!(none, json!([]));
    let notion = app.state.connections.catalog.get("notion").unwrap();
    assert_eq!(notion.raw["proxy"]["headers"]["notion-version"], "2025-09-03");
    assert_eq!(notion.proxy_base_url(), Some("https://api.notion.com"));
    // A bad file stops start-up with the entry and field named.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"slack": {"token_url": 42}}"#).unwrap();
    let mut config = carmenta::config::Config::for_data_dir(&dir);
    config.providers_file = Some(bad);
    let e = carmenta::connections::catalog::load_configured(&config).unwrap_err();
    let e = e.to_string();
    assert!(e.contains("\"slack\"") && e.contains("token_url"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Makes connection `id`'s access token expire `secs` from now (its remembered
/// lifetime unchanged), as if time had passed.
async fn expire_connection(app: &TestApp, id: &str, secs: i64) {
    let id: uuid::Uuid = id.parse().unwrap();
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT credentials FROM connections WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let mut c = app.state.connections.vault.open_credentials(id, &sealed).unwrap();
    c.expires_at = Some(time::OffsetDateTime::now_utc() + time::Duration::seconds(secs));
    let sealed = app.state.connections.vault.seal_credentials(id, &c);
    sqlx::query("UPDATE connections SET credentials = $2, expires_at = $3 WHERE id = $1")
        .bind(id)
        .bind(sealed)
        .bind(c.expires_at)
        .execute(&app.pool)
        .await
        .unwrap();
}

/// Completes test provider entries with what every catalog entry must state: a
/// documentation URL, categories, and (for OAuth) a scope separator.
pub fn documented(mut providers: Value) -> Value {
    for entry in providers.as_object_mut().unwrap().values_mut() {
        let e = entry.as_object_mut().unwrap();
        e.entry("docs").or_insert_with(|| json!("https://docs.example.test/oauth"));
        e.entry("categories").or_insert_with(|| json!(["dev-tools"]));
        if e.get("auth_mode") == Some(&json!("OAUTH2")) {
            e.entry("scope_separator").or_insert_with(|| json!(" "));
        }
    }
    providers
}

/// A local OAuth provider: `/basic/token` wants HTTP Basic client auth and a JSON
/// body (as Notion), `/slack/token` answers HTTP 200 with `ok:false` or nests the
/// user token under `authed_user` (as Slack), `/userinfo` names the account. Both
/// check PKCE against the challenge the browser was sent with.
mod fake {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Form, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use base64::Engine;
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};

    #[derive(Clone, Default)]
    pub struct Fake {
        /// code → PKCE challenge.
        pub challenges: Arc<Mutex<HashMap<String, String>>>,
        pub token_calls: Arc<Mutex<u32>>,
        /// Refresh behaviour: "" or "rotate" (new refresh token each time, a reused
        /// one refused), "down" (503), "revoked" (invalid_grant).
        pub refresh_mode: Arc<Mutex<String>>,
        pub refresh_calls: Arc<Mutex<u32>>,
        /// Refresh tokens still valid → the account code.
        pub valid_refresh: Arc<Mutex<HashMap<String, String>>>,
        /// Refresh tokens presented after they were used.
        pub reused: Arc<Mutex<u32>>,
        pub used: Arc<Mutex<Vec<String>>>,
        pub flaky_calls: Arc<Mutex<u32>>,
        /// Tokens revoked through `/revoke`.
        pub revoked: Arc<Mutex<Vec<String>>>,
        /// `expires_in` of the access tokens it issues, in seconds (0: an hour).
        pub lifetime: Arc<Mutex<i64>>,
    }

    fn lifetime(f: &Fake) -> i64 {
        match *f.lifetime.lock().unwrap() {
            0 => 3600,
            n => n,
        }
    }

    fn pkce_ok(f: &Fake, code: &str, verifier: Option<&str>) -> bool {
        let want = f.challenges.lock().unwrap().get(code).cloned();
        match (want, verifier) {
            (Some(c), Some(v)) => {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())) == c
            }
            (None, None) => true,
            _ => false,
        }
    }

    async fn basic_token(State(f): State<Fake>, headers: HeaderMap, Json(b): Json<Value>) -> (StatusCode, Json<Value>) {
        *f.token_calls.lock().unwrap() += 1;
        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("basic-client:basic-secret"));
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str())
            || b.get("client_secret").is_some()
        {
            return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"})));
        }
        if b["grant_type"] == "refresh_token" {
            return refresh(&f, b["refresh_token"].as_str().unwrap_or_default()).await;
        }
        let code = b["code"].as_str().unwrap_or_default();
        if b["grant_type"] != "authorization_code" || !pkce_ok(&f, code, b["code_verifier"].as_str()) {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"})));
        }
        f.valid_refresh.lock().unwrap().insert(format!("rt-{code}"), code.to_string());
        let body = json!({"access_token": format!("tok-{code}"), "refresh_token": format!("rt-{code}"),
                          "expires_in": lifetime(&f).to_string(), "token_type": "bearer"});
        (StatusCode::OK, Json(body))
    }

    /// Refresh: each use of a refresh token retires it and issues a new one; a
    /// retired one presented again is counted and refused.
    async fn refresh(f: &Fake, rt: &str) -> (StatusCode, Json<Value>) {
        let n = {
            let mut c = f.refresh_calls.lock().unwrap();
            *c += 1;
            *c
        };
        let mode = f.refresh_mode.lock().unwrap().clone();
        match mode.as_str() {
            "down" => return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "temporarily_unavailable"}))),
            "revoked" => return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"}))),
            _ => {}
        }
        // A slow provider, so concurrent callers pile up behind the first.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let code = f.valid_refresh.lock().unwrap().remove(rt);
        let Some(code) = code else {
            if f.used.lock().unwrap().iter().any(|u| u == rt) {
                *f.reused.lock().unwrap() += 1;
            }
            return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"})));
        };
        f.used.lock().unwrap().push(rt.to_string());
        let new_rt = format!("rt-{code}-r{n}");
        f.valid_refresh.lock().unwrap().insert(new_rt.clone(), code.clone());
        (
            StatusCode::OK,
            Json(
                json!({"access_token": format!("tok-{code}-r{n}"), "refresh_token": new_rt, "expires_in": lifetime(f)}),
            ),
        )
    }

    /// A tenant's token endpoint (`/t/{tenant}/token`, as Zendesk's per-subdomain
    /// one): form body with the client in it, PKCE, rotating refresh tokens.
    async fn tenant_token(
        State(f): State<Fake>,
        axum::extract::Path(tenant): axum::extract::Path<String>,
        Form(b): Form<HashMap<String, String>>,
    ) -> (StatusCode, Json<Value>) {
        *f.token_calls.lock().unwrap() += 1;
        if tenant != "acme" || b.get("client_secret").map(String::as_str) != Some("tenant-secret") {
            return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"})));
        }
        if b.get("grant_type").map(String::as_str) == Some("refresh_token") {
            return refresh(&f, b.get("refresh_token").map(String::as_str).unwrap_or_default()).await;
        }
        let code = b.get("code").cloned().unwrap_or_default();
        if !pkce_ok(&f, &code, b.get("code_verifier").map(String::as_str)) {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"})));
        }
        f.valid_refresh.lock().unwrap().insert(format!("rt-{code}"), code.clone());
        let body =
            json!({"access_token": format!("tok-{code}"), "refresh_token": format!("rt-{code}"), "expires_in": 3600});
        (StatusCode::OK, Json(body))
    }

    /// A client-credentials token endpoint: HTTP Basic client auth, a new token
    /// per grant, no refresh token.
    async fn cc_token(
        State(f): State<Fake>,
        headers: HeaderMap,
        Form(b): Form<HashMap<String, String>>,
    ) -> (StatusCode, Json<Value>) {
        let n = {
            let mut c = f.token_calls.lock().unwrap();
            *c += 1;
            *c
        };
        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("user-client:user-secret"));
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str())
            || b.get("grant_type").map(String::as_str) != Some("client_credentials")
        {
            return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"})));
        }
        (StatusCode::OK, Json(json!({"access_token": format!("cc-{n}"), "expires_in": 3600, "token_type": "bearer"})))
    }

    async fn slack_token(State(f): State<Fake>, Form(b): Form<HashMap<String, String>>) -> Json<Value> {
        *f.token_calls.lock().unwrap() += 1;
        let code = b.get("code").cloned().unwrap_or_default();
        if b.get("client_secret").map(String::as_str) != Some("slack-secret") || code == "bad" {
            return Json(json!({"ok": false, "error": "invalid_code"}));
        }
        Json(
            json!({"ok": true, "team": {"id": "T1"}, "authed_user": {"id": format!("U-{code}"), "access_token": format!("xoxp-{code}")}}),
        )
    }

    async fn userinfo(headers: HeaderMap) -> (StatusCode, Json<Value>) {
        match headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer tok-")) {
            Some(code) => (StatusCode::OK, Json(json!({"sub": format!("acct-{code}")}))),
            None => (StatusCode::UNAUTHORIZED, Json(json!({}))),
        }
    }

    /// The provider's API, behind `proxy.base_url` = `{base}/api`.
    async fn echo(
        method: axum::http::Method,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> Json<Value> {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        Json(json!({
            "method": method.as_str(), "path": uri.path(), "query": uri.query(), "authorization": h("authorization"),
            "cookie": h("cookie"), "connection_id": h("connection-id"), "x_custom": h("x-custom"), "notion_version": h("notion-version"),
            "x_api_key": h("x-api-key"),
            "body": String::from_utf8_lossy(&body),
        }))
    }

    async fn flaky(State(f): State<Fake>) -> (StatusCode, HeaderMap, &'static str) {
        let n = {
            let mut c = f.flaky_calls.lock().unwrap();
            *c += 1;
            *c
        };
        let mut h = HeaderMap::new();
        if n == 1 {
            h.insert("retry-after", "0".parse().unwrap());
            return (StatusCode::TOO_MANY_REQUESTS, h, "slow down");
        }
        (StatusCode::OK, h, "finally")
    }

    /// Refuses the first access token it sees (as if revoked), accepts refreshed ones.
    async fn picky(headers: HeaderMap) -> (StatusCode, &'static str) {
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        if auth.contains("-r") {
            (StatusCode::OK, "fresh token accepted")
        } else {
            (StatusCode::UNAUTHORIZED, "token revoked")
        }
    }

    async fn big_up(body: axum::body::Body) -> Json<Value> {
        use futures::StreamExt;
        let mut s = body.into_data_stream();
        let mut n = 0usize;
        let mut h = Sha256::new();
        while let Some(c) = s.next().await {
            let c = c.unwrap();
            n += c.len();
            h.update(&c);
        }
        Json(json!({"bytes": n, "sha256": format!("{:x}", h.finalize())}))
    }

    async fn big_down() -> axum::body::Body {
        let chunk = axum::body::Bytes::from(vec![7u8; 1 << 20]);
        axum::body::Body::from_stream(futures::stream::iter(
            (0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
        ))
    }

    async fn revoke(State(f): State<Fake>, Form(b): Form<HashMap<String, String>>) -> StatusCode {
        if b.get("client_secret").map(String::as_str) != Some("basic-secret") {
            return StatusCode::UNAUTHORIZED;
        }
        f.revoked.lock().unwrap().push(b.get("token").cloned().unwrap_or_default());
        StatusCode::OK
    }

    async fn elsewhere() -> (StatusCode, [(&'static str, &'static str); 1]) {
        (StatusCode::FOUND, [("location", "http://evil.example/steal")])
    }

    pub async fn start() -> (String, Fake) {
        let f = Fake::default();
        let router = Router::new()
            .route("/basic/token", post(basic_token))
            .route("/t/{tenant}/token", post(tenant_token))
            .route("/t/{tenant}/api/echo/{*rest}", axum::routing::any(echo))
            .route("/cc/token", post(cc_token))
            .route("/slack/token", post(slack_token))
            .route("/userinfo", get(userinfo))
            .route("/api/echo/{*rest}", axum::routing::any(echo))
            .route("/api/flaky", get(flaky).post(flaky))
            .route("/api/picky", get(picky))
            .route("/api/big", post(big_up).get(big_down))
            .route("/api/elsewhere", get(elsewhere))
            .route("/revoke", post(revoke))
            .with_state(f.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, router).await });
        (base, f)
    }
}

struct Flow {
    app: TestApp,
    key: String,
    fake: fake::Fake,
    providers: std::path::PathBuf,
}

impl Flow {
    async fn new() -> Flow {
        Self::new_with(|_| {}).await
    }

    async fn new_with(extra: impl FnOnce(&mut carmenta::config::Config)) -> Flow {
        let (base, fake) = fake::start().await;
        let dir = crate::harness::temp_dir("carmenta-fake-providers-");
        let file = dir.join("providers.json");
        let providers = json!({
            "fake-basic": {"auth_mode": "OAUTH2", "authorization_url": format!("{base}/authorize"), "token_url": format!("{base}/basic/token"),
                           "authorization_method": "header", "body_format": "json", "authorization_params": {"owner": "user"},
                           "identity": {"url": format!("{base}/userinfo"), "id_path": "sub"},
                           "revoke_url": format!("{base}/revoke"),
                           "proxy": {"base_url": format!("{base}/api"), "headers": {"notion-version": "2022-06-28"}}},
            "fake-buffered": {"auth_mode": "OAUTH2", "authorization_url": format!("{base}/authorize"), "token_url": format!("{base}/basic/token"),
                           "authorization_method": "header", "body_format": "json", "token_expiration_buffer": 30,
                           "identity": {"url": format!("{base}/userinfo"), "id_path": "sub"},
                           "proxy": {"base_url": format!("{base}/api")}},
            "fake-metadata": {"auth_mode": "OAUTH2", "authorization_url": format!("{base}/authorize"),
                           "token_url": "https://169.254.169.254/latest/meta-data/iam/token",
                           "proxy": {"base_url": format!("{base}/api")}},
            "fake-key-metadata": {"auth_mode": "API_KEY", "proxy": {"base_url": "https://169.254.169.254/latest"}},
            "fake-key": {"auth_mode": "API_KEY", "proxy": {"base_url": format!("{base}/api"), "headers": {"x-api-key": "${apiKey}"}}},
            "fake-basicauth": {"auth_mode": "BASIC", "proxy": {"base_url": format!("{base}/api")}},
            "fake-tenant": {"auth_mode": "OAUTH2", "authorization_url": format!("{base}/t/${{connectionConfig.tenant}}/authorize"),
                           "token_url": format!("{base}/t/${{connectionConfig.tenant}}/token"), "refresh": "rotating",
                           "connection_config": {"tenant": {"type": "string"}},
                           "proxy": {"base_url": format!("{base}/t/${{connectionConfig.tenant}}/api")}},
            "fake-cc": {"auth_mode": "OAUTH2_CC", "token_url": format!("{base}/cc/token"), "token_request_auth_method": "basic",
                        "authorization_method": "header", "proxy": {"base_url": format!("{base}/api")}},
            "fake-slack": {"auth_mode": "OAUTH2", "authorization_url": format!("{base}/authorize"), "token_url": format!("{base}/slack/token"),
                           "disable_pkce": true, "scope_separator": ",", "alternate_access_token_response_path": "authed_user",
                           "account_id_path": "authed_user.id", "proxy": {"base_url": format!("{base}/api")}}
        });
        std::fs::write(&file, documented(providers).to_string()).unwrap();
        let app = TestApp::builder()
            .config(|c| {
                c.providers_file = Some(file.clone());
                extra(c);
            })
            .spawn()
            .await;
        let (key, _) = carmenta::auth::service::create_service_key(&app.pool, "backend", true).await.unwrap();
        let f = Flow { app, key, fake, providers: file };
        f.integration("basic", "fake-basic", "basic-client", "basic-secret").await;
        f.integration("slack", "fake-slack", "slack-client", "slack-secret").await;
        f.integration("tenant", "fake-tenant", "tenant-client", "tenant-secret").await;
        f.integration("cc", "fake-cc", "app-client", "app-secret").await;
        f
    }

    /// `GET /v1/connections/{id}` as `user`, which must answer 200.
    async fn connection(&self, user: &crate::harness::User, id: &str) -> Value {
        let r = self.app.call(Method::GET, &format!("/v1/connections/{id}")).by(&user.jwt).send().await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Creates integration `key` of `provider` with a client id and secret.
    async fn integration(&self, key: &str, provider: &str, id: &str, secret: &str) {
        let r = self.app.call(Method::POST, "/v1/integrations").by(&self.key).json(&json!({"unique_key": key, "provider": provider, "client_id": id, "client_secret": secret, "scopes": ["read", "write"]})).send().await;
        assert_eq!(r.status(), 201);
    }

    /// A second replica on the same database, keys and catalog.
    async fn replica(&self) -> TestApp {
        let keys = self.app.state.config.encryption_keys.clone();
        let file = self.providers.clone();
        TestApp::builder()
            .config(|c| {
                c.encryption_keys = keys;
                c.providers_file = Some(file);
            })
            .same_database_as(&self.app)
            .spawn()
            .await
    }

    /// Makes a connection's access token expire (as if an hour had passed).
    async fn expire(&self, id: &str) {
        self.expire_in(id, -60).await
    }

    /// Makes a connection's access token expire `secs` from now (its remembered
    /// lifetime unchanged).
    async fn expire_in(&self, id: &str, secs: i64) {
        expire_connection(&self.app, id, secs).await
    }

    async fn token(&self, app: &TestApp, user: &crate::harness::User, id: &str, force: bool) -> (u16, Value) {
        let r = app
            .client
            .get(app.url(&format!("/v1/connections/{id}/token?force={force}")))
            // The session token: valid on every replica (access tokens name one issuer URL).
            .bearer_auth(&user.session)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Starts a flow for `user` on `integration`; returns (the provider URL the
    /// browser is sent to, its query).
    async fn start(
        &self,
        user: &crate::harness::User,
        integration: &str,
    ) -> (url::Url, std::collections::HashMap<String, String>) {
        let r = self
            .app
            .call(Method::POST, "/v1/connect/sessions")
            .by(&user.jwt)
            .json(&json!({"allowed_integrations": [integration], "return_url": "/done"}))
            .send()
            .await;
        assert_eq!(r.status(), 201);
        let s: Value = r.json().await.unwrap();
        let link = s["links"][integration].as_str().unwrap().to_string();
        let r = self.app.client.get(&link).send().await.unwrap();
        assert_eq!(r.status(), 302, "{:?}", r.text().await);
        let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
        let q = to.query_pairs().into_owned().collect();
        (to, q)
    }

    /// The provider sends the browser back with `query`; returns the final Location.
    async fn callback(&self, query: &str) -> (u16, String) {
        let r = self.app.call(Method::GET, &format!("/oauth/callback?{query}")).send().await;
        let status = r.status().as_u16();
        let loc = r.headers().get("location").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (status, loc)
    }

    /// A whole successful flow; returns the connection id.
    async fn connect(&self, user: &crate::harness::User, integration: &str, code: &str) -> String {
        let (_, q) = self.start(user, integration).await;
        if let Some(ch) = q.get("code_challenge") {
            self.fake.challenges.lock().unwrap().insert(code.to_string(), ch.clone());
        }
        let (status, loc) = self.callback(&format!("code={code}&state={}", q["state"])).await;
        assert_eq!(status, 302);
        assert!(loc.starts_with(&format!("/done?result=success&integration={integration}&connection_id=")), "{loc}");
        loc.rsplit('=').next().unwrap().to_string()
    }
}

#[tokio::test]
async fn connect_flow_with_provider_quirks() {
    let f = Flow::new().await;
    let a = sign_up(&f.app, "ca@example.com").await;
    let b = sign_up(&f.app, "cb@example.com").await;
    // The authorization redirect: client id, callback, state, PKCE S256, scopes, provider params.
    let (to, q) = f.start(&a, "basic").await;
    assert_eq!(to.path(), "/authorize");
    assert_eq!(q["client_id"], "basic-client");
    assert_eq!(q["redirect_uri"], f.app.url("/oauth/callback"));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "read write");
    assert_eq!(q["owner"], "user");
    assert_eq!(q["response_type"], "code");
    // Basic auth + JSON body + PKCE + identity endpoint; two accounts for one user.
    let c1 = f.connect(&a, "basic", "one").await;
    let c2 = f.connect(&a, "basic", "two").await;
    assert_ne!(c1, c2);
    let again = f.connect(&a, "basic", "one").await;
    assert_eq!(again, c1, "the same account updates its connection");
    let (status, list) = f.app.get_as("/v1/connections?integration=basic", &a.jwt).await;
    assert_eq!(status, 200, "{list}");
    let accounts: Vec<&str> =
        list["data"].as_array().unwrap().iter().map(|c| c["external_account_id"].as_str().unwrap()).collect();
    assert_eq!(accounts, ["acct-one", "acct-two"]);
    assert!(list["data"][0]["expires_at"].is_string());
    let (status, tok) = f.app.get_as(&format!("/v1/connections/{c1}/token"), &a.jwt).await;
    assert_eq!(status, 200, "{tok}");
    assert_eq!(tok["access_token"], "tok-one");
    // Slack's shape: 200 with ok:false is a failure; the user token is nested.
    let s1 = f.connect(&a, "slack", "good").await;
    let (status, one) = f.app.get_as(&format!("/v1/connections/{s1}"), &a.jwt).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["external_account_id"], "U-good");
    let (status, tok) = f.app.get_as(&format!("/v1/connections/{s1}/token"), &a.jwt).await;
    assert_eq!(status, 200, "{tok}");
    assert_eq!(tok["access_token"], "xoxp-good");
    let (_, q) = f.start(&a, "slack").await;
    assert!(!q.contains_key("code_challenge"), "PKCE off where the provider cannot");
    let (status, loc) = f.callback(&format!("code=bad&state={}", q["state"])).await;
    assert_eq!((status, loc.as_str()), (302, "/done?result=error&error=token_exchange_failed"));
    // Denied consent; replayed, unknown and expired states: a clear result, no connection.
    let (_, q) = f.start(&a, "basic").await;
    let (_, loc) = f.callback(&format!("error=access_denied&state={}", q["state"])).await;
    assert_eq!(loc, "/done?result=error&error=access_denied");
    let (status, _) = f.callback(&format!("code=one&state={}", q["state"])).await;
    assert_eq!(status, 400, "a state is single-use");
    let (status, _) = f.callback("code=one&state=made-up").await;
    assert_eq!(status, 400);
    let (_, q) = f.start(&a, "basic").await;
    sqlx::query("UPDATE oauth_states SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
        .execute(&f.app.pool)
        .await
        .unwrap();
    let (status, _) = f.callback(&format!("code=one&state={}", q["state"])).await;
    assert_eq!(status, 400, "an expired state is refused");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM connections").fetch_one(&f.app.pool).await.unwrap();
    assert_eq!(count, 3);
    // A session only opens the integrations it allows.
    let r = f
        .app
        .call(Method::POST, "/v1/connect/sessions")
        .by(&a.jwt)
        .json(&json!({"allowed_integrations": ["basic"]}))
        .send()
        .await;
    let s: Value = r.json().await.unwrap();
    let r =
        f.app.call(Method::GET, &format!("/oauth/connect/slack?session={}", s["token"].as_str().unwrap())).send().await;
    assert_eq!(r.status(), 400);
    let r = f
        .app
        .call(Method::POST, "/v1/connect/sessions")
        .by(&a.jwt)
        .json(&json!({"return_url": "https://evil.example/steal"}))
        .send()
        .await;
    assert_eq!(r.status(), 422, "return URLs are allow-listed");
    // The vault: no token in plaintext.
    let sealed: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT credentials FROM connections").fetch_all(&f.app.pool).await.unwrap();
    for s in &sealed {
        for needle in ["tok-one", "tok-two", "rt-one", "xoxp-good"] {
            assert!(!s.windows(needle.len()).any(|w| w == needle.as_bytes()), "plaintext {needle} at rest");
        }
    }
    // User B: not found, everywhere.
    for path in [format!("/v1/connections/{c1}"), format!("/v1/connections/{c1}/token")] {
        let r = f.app.call(Method::GET, &path).by(&b.jwt).send().await;
        assert_eq!(envelope(r).await.0, 404, "{path}");
    }
    let r = f
        .app
        .call(Method::PATCH, &format!("/v1/connections/{c1}"))
        .by(&b.jwt)
        .json(&json!({"metadata": {}}))
        .send()
        .await;
    assert_eq!(envelope(r).await.0, 404);
    let r = f.app.call(Method::DELETE, &format!("/v1/connections/{c1}")).by(&b.jwt).send().await;
    assert_eq!(envelope(r).await.0, 404);
    let (status, list) = f.app.get_as("/v1/connections", &b.jwt).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list, json!({"data": [], "next_cursor": null}));
    // A service key acting for A sees A's.
    let list: Value = f
        .app
        .call(Method::GET, "/v1/connections")
        .by(&f.key)
        .header("x-carmenta-user-id", a.id.to_string())
        .value()
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    // Metadata, delete.
    let r = f
        .app
        .call(Method::PATCH, &format!("/v1/connections/{c1}"))
        .by(&a.jwt)
        .json(&json!({"metadata": {"label": "work"}}))
        .send()
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["metadata"]["label"], "work");
    assert_eq!(f.app.delete_as(&format!("/v1/connections/{c1}"), &a.jwt).await.0, 204);
    let r = f.app.call(Method::GET, &format!("/v1/connections/{c1}")).by(&a.jwt).send().await;
    assert_eq!(envelope(r).await.0, 404);
}

#[tokio::test]
async fn refresh_is_single_flight_across_replicas_and_never_reuses_a_refresh_token() {
    let f = Flow::new().await;
    let other = f.replica().await;
    let a = sign_up(&f.app, "r@example.com").await;
    let c = f.connect(&a, "basic", "acc").await;
    f.expire(&c).await;
    // 100 concurrent proxy calls on an expired token, over two server processes
    // sharing one database: one token request, and every call carries the new token.
    let tokens = proxy_burst(&[&f.app, &other], &a, &c, 100).await;
    assert_eq!(*f.fake.refresh_calls.lock().unwrap(), 1, "exactly one refresh request");
    assert_eq!(tokens.len(), 1, "every call carried the refreshed token: {tokens:?}");
    assert_eq!(tokens.iter().next().unwrap(), "Bearer tok-acc-r1");
    let (status, tok) = f.token(&other, &a, &c, false).await;
    assert_eq!((status, tok["access_token"].as_str()), (200, Some("tok-acc-r1")));

    // A provider that rotates refresh tokens and refuses a reused one: forced
    // refreshes in a row and at once never present a used token.
    for _ in 0..3 {
        assert_eq!(f.token(&other, &a, &c, true).await.0, 200);
    }
    let burst =
        futures::future::join_all((0..10).map(|i| f.token(if i % 2 == 0 { &f.app } else { &other }, &a, &c, true)))
            .await;
    assert!(burst.iter().all(|(s, _)| *s == 200), "{burst:?}");
    assert_eq!(*f.fake.reused.lock().unwrap(), 0, "a used refresh token was presented again");
    let conn = f.connection(&a, &c).await;
    assert_eq!(conn["status"], "connected");
    assert_eq!(conn["last_error"], Value::Null);
}

/// `n` concurrent proxy calls on connection `c`, alternating between `apps`; every
/// one must succeed; returns the distinct tokens they carried.
async fn proxy_burst(
    apps: &[&TestApp],
    user: &crate::harness::User,
    c: &str,
    n: usize,
) -> std::collections::BTreeSet<String> {
    let calls = (0..n).map(|i| {
        let app = apps[i % apps.len()];
        let req = app
            .client
            .get(app.url("/v1/proxy/echo/x"))
            // The session token: valid on every replica (access tokens name one issuer URL).
            .bearer_auth(&user.session)
            .header("connection-id", c)
            .header("provider-config-key", "basic");
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|(s, v)| {
            assert_eq!(s, 200, "{v}");
            v["authorization"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn tokens_of_a_few_seconds_are_refreshed_once_per_expiry() {
    let f = Flow::new().await;
    // A provider whose access tokens live 2 s (margin 1 s) and whose refresh
    // tokens rotate, a reused one refused.
    *f.fake.lifetime.lock().unwrap() = 2;
    let other = f.replica().await;
    let a = sign_up(&f.app, "short@example.com").await;
    let c = f.connect(&a, "basic", "short").await;
    let grants = || *f.fake.refresh_calls.lock().unwrap();
    // Expired: 100 concurrent proxy calls over two replicas make exactly one grant.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let tokens = proxy_burst(&[&f.app, &other], &a, &c, 100).await;
    assert_eq!(grants(), 1, "one grant for 100 callers on an expired token");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    // Nine more expiries, each met by 20 concurrent calls: one grant each.
    for round in 2..=10 {
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let tokens = proxy_burst(&[&f.app, &other], &a, &c, 20).await;
        assert_eq!(grants(), round, "round {round}");
        assert_eq!(tokens.len(), 1, "round {round}: {tokens:?}");
    }
    assert_eq!(*f.fake.reused.lock().unwrap(), 0, "a used refresh token was presented again");
    let conn = f.connection(&a, &c).await;
    assert_eq!((conn["status"].as_str(), &conn["last_error"]), (Some("connected"), &Value::Null));
}

#[tokio::test]
async fn five_minute_tokens_are_not_refreshed_on_every_call() {
    let f = Flow::new().await;
    *f.fake.lifetime.lock().unwrap() = 300;
    let other = f.replica().await;
    let a = sign_up(&f.app, "five@example.com").await;
    let c = f.connect(&a, "basic", "five").await;
    let grants = || *f.fake.refresh_calls.lock().unwrap();
    // Early in the token's life: sequential calls and token reads make no grant.
    for i in 0..20 {
        assert_eq!(proxy_burst(&[if i % 2 == 0 { &f.app } else { &other }], &a, &c, 1).await.len(), 1);
    }
    let (status, tok) = f.token(&other, &a, &c, false).await;
    assert_eq!((status, tok["access_token"].as_str()), (200, Some("tok-five")));
    assert_eq!(grants(), 0, "a 5-minute token is not refreshed early in its life");
    // 100 s left: inside the margin (half of 300 s), not expired. 100 concurrent
    // calls over two replicas: at most one grant, and the later callers use it.
    f.expire_in(&c, 100).await;
    let tokens = proxy_burst(&[&f.app, &other], &a, &c, 100).await;
    assert!(grants() <= 1, "{} grants inside the margin", grants());
    assert!(tokens.len() <= 2, "{tokens:?}");
    let after = grants();
    for _ in 0..10 {
        proxy_burst(&[&f.app, &other], &a, &c, 1).await;
    }
    assert_eq!(grants(), after, "the refreshed token is used, not refreshed again");
    // force=true still forces exactly one refresh.
    let (status, forced) = f.token(&f.app, &a, &c, true).await;
    assert_eq!(status, 200);
    assert_eq!(grants(), after + 1);
    assert_ne!(forced["access_token"], tok["access_token"]);
    assert_eq!(*f.fake.reused.lock().unwrap(), 0);
}

#[tokio::test]
async fn a_providers_token_expiration_buffer_sets_the_margin() {
    let f = Flow::new().await;
    *f.fake.lifetime.lock().unwrap() = 300;
    f.integration("buffered", "fake-buffered", "basic-client", "basic-secret").await;
    let a = sign_up(&f.app, "buffer@example.com").await;
    let c = f.connect(&a, "buffered", "buf").await;
    let grants = || *f.fake.refresh_calls.lock().unwrap();
    // 100 s left: inside the default margin (150 s) but outside the entry's 30 s.
    f.expire_in(&c, 100).await;
    let (status, tok) = f.token(&f.app, &a, &c, false).await;
    assert_eq!((status, tok["access_token"].as_str(), grants()), (200, Some("tok-buf"), 0));
    assert_eq!(
        carmenta::connections::upkeep::refresh_idle(&f.app.state.connections, std::time::Duration::ZERO).await.unwrap(),
        0
    );
    assert_eq!(grants(), 0, "the sweeper follows the same margin");
    // 20 s left: inside it.
    f.expire_in(&c, 20).await;
    let (status, tok) = f.token(&f.app, &a, &c, false).await;
    assert_eq!((status, tok["access_token"].as_str(), grants()), (200, Some("tok-buf-r1"), 1));
}

#[tokio::test]
async fn provider_urls_on_cloud_metadata_addresses_are_refused() {
    let f = Flow::new().await;
    f.integration("meta", "fake-metadata", "c", "s").await;
    let a = sign_up(&f.app, "ssrf@example.com").await;
    let (_, q) = f.start(&a, "meta").await;
    let started = std::time::Instant::now();
    let (status, loc) = f.callback(&format!("code=x&state={}", q["state"])).await;
    assert_eq!((status, loc.as_str()), (302, "/done?result=error&error=provider_url_refused"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "refused before any connection attempt");
    // The API proxy refuses a catalog base URL on the metadata address too.
    let r = f
        .app
        .call(Method::POST, "/v1/integrations")
        .by(&f.key)
        .json(&json!({"unique_key": "meta-key", "provider": "fake-key-metadata"}))
        .send()
        .await;
    assert_eq!(r.status(), 201);
    let r = f
        .app
        .call(Method::POST, "/v1/connections")
        .by(&a.jwt)
        .json(&json!({"integration": "meta-key", "api_key": "k"}))
        .send()
        .await;
    assert_eq!(r.status(), 201);
    let conn: Value = r.json().await.unwrap();
    let r = f
        .app
        .call(Method::GET, "/v1/proxy/meta-data/iam/security-credentials/")
        .by(&a.jwt)
        .header("connection-id", conn["id"].as_str().unwrap())
        .header("provider-config-key", "meta-key")
        .send()
        .await;
    let (status, code, _, _) = envelope(r).await;
    assert_eq!((status, code.as_str()), (422, "provider_url_refused"));
}

#[tokio::test]
async fn refresh_failures_back_off_or_ask_for_reauth() {
    let f = Flow::new().await;
    let a = sign_up(&f.app, "rf@example.com").await;
    let c = f.connect(&a, "basic", "acc").await;
    // The token endpoint is down: the connection stays connected, the error and a
    // cooldown are stored, and nobody hammers the endpoint during the cooldown.
    *f.fake.refresh_mode.lock().unwrap() = "down".into();
    f.expire(&c).await;
    let (status, body) = f.token(&f.app, &a, &c, false).await;
    let row: (String, Option<String>, i32) =
        sqlx::query_as("SELECT status, last_error, refresh_failures FROM connections")
            .fetch_one(&f.app.pool)
            .await
            .unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("refresh_failed")), "{body} {row:?}");
    let (status, _) = f.token(&f.app, &a, &c, false).await;
    assert_eq!(status, 503);
    assert_eq!(*f.fake.refresh_calls.lock().unwrap(), 1, "no retry inside the cooldown");
    let conn = f.connection(&a, &c).await;
    assert_eq!(conn["status"], "connected");
    assert!(conn["last_error"].as_str().unwrap().contains("503"), "{conn}");
    // After the cooldown, it is retried and recovers.
    *f.fake.refresh_mode.lock().unwrap() = "rotate".into();
    sqlx::query("UPDATE connections SET next_refresh_at = now() - interval '1 second'")
        .execute(&f.app.pool)
        .await
        .unwrap();
    let (status, body) = f.token(&f.app, &a, &c, false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(*f.fake.refresh_calls.lock().unwrap(), 2);
    // A revoked grant: needs_reauth, with an event; no further token requests.
    *f.fake.refresh_mode.lock().unwrap() = "revoked".into();
    let (status, body) = f.token(&f.app, &a, &c, true).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("needs_reauth")), "{body}");
    let (status, _) = f.token(&f.app, &a, &c, true).await;
    assert_eq!(status, 409);
    assert_eq!(*f.fake.refresh_calls.lock().unwrap(), 3);
    let conn = f.connection(&a, &c).await;
    assert_eq!(conn["status"], "needs_reauth");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM connection_events WHERE kind = 'refresh_failed'")
        .fetch_one(&f.app.pool)
        .await
        .unwrap();
    assert_eq!(events, 1);
    // Reconnecting the same account makes it connected again.
    assert_eq!(f.connect(&a, "basic", "acc").await, c);
    let conn = f.connection(&a, &c).await;
    assert_eq!(conn["status"], "connected");
}

#[tokio::test]
async fn proxy_injects_credentials_stays_on_the_base_url_and_streams() {
    let f = Flow::new().await;
    let a = sign_up(&f.app, "px@example.com").await;
    let b = sign_up(&f.app, "pxb@example.com").await;
    let c = f.connect(&a, "basic", "acc").await;
    let call = |method: reqwest::Method, path: &str, user: &crate::harness::User| {
        f.app
            .client
            .request(method, f.app.url(&format!("/v1/proxy/{path}")))
            .bearer_auth(&user.jwt)
            .header("connection-id", c.as_str())
            .header("provider-config-key", "basic")
    };
    // The credential and template headers go up; the caller's own do not.
    let r = call(reqwest::Method::POST, "echo/users/me?page=2", &a)
        .header("cookie", "carmenta_session=secret")
        .header("x-custom", "kept")
        .body("hello upstream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/api/echo/users/me");
    assert_eq!(v["query"], "page=2");
    assert_eq!(v["authorization"], "Bearer tok-acc");
    assert_eq!(v["notion_version"], "2022-06-28");
    assert_eq!(v["x_custom"], "kept");
    assert_eq!(v["cookie"], Value::Null);
    assert_eq!(v["connection_id"], Value::Null);
    assert_eq!(v["body"], "hello upstream");
    // Nothing but the base URL is reachable. (The HTTP client itself resolves a
    // literal or %2e-encoded `..` before sending, which then matches no route here:
    // our own 404, never the provider.)
    let calls_before = *f.fake.token_calls.lock().unwrap();
    for path in [
        "../basic/token",
        "echo/..%2F..%2Fuserinfo",
        "%2e%2e/userinfo",
        "@evil.example/x",
        "http:%2F%2Fevil.example/x",
        "echo%2F..%2F..%2Fuserinfo",
        "echo/%5C..%5Cuserinfo",
    ] {
        let r = call(reqwest::Method::GET, path, &a).send().await.unwrap();
        let (status, code, _, _) = envelope(r).await;
        assert!(
            matches!((status, code.as_str()), (400, "invalid_proxy_path") | (404, "not_found")),
            "{path}: {status} {code}"
        );
    }
    assert_eq!(*f.fake.token_calls.lock().unwrap(), calls_before);
    let r = call(reqwest::Method::GET, "elsewhere", &a).send().await.unwrap();
    assert_eq!(r.status(), 302, "a redirect is handed back, not followed");
    // 429 with Retry-After: retried for GET; not for POST unless `Retries` asks.
    let r = call(reqwest::Method::GET, "flaky", &a).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "finally".to_string()));
    *f.fake.flaky_calls.lock().unwrap() = 0;
    let r = call(reqwest::Method::POST, "flaky", &a).send().await.unwrap();
    assert_eq!(r.status(), 429);
    *f.fake.flaky_calls.lock().unwrap() = 0;
    let r = call(reqwest::Method::POST, "flaky", &a).header("retries", "2").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A 401 forces one refresh and one retry.
    let r = call(reqwest::Method::GET, "picky", &a).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "fresh token accepted".to_string()));
    assert_eq!(*f.fake.refresh_calls.lock().unwrap(), 1);
    // 100 MB each way, streamed.
    let chunk = vec![9u8; 1 << 20];
    let want = {
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        for _ in 0..100 {
            sha2::Digest::update(&mut h, &chunk);
        }
        format!("{:x}", sha2::Digest::finalize(h))
    };
    let up = futures::stream::iter((0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = call(reqwest::Method::POST, "big", &a).body(reqwest::Body::wrap_stream(up)).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["bytes"].as_u64(), v["sha256"].as_str()), (Some(100 << 20), Some(want.as_str())));
    let r = call(reqwest::Method::GET, "big", &a).send().await.unwrap();
    let mut n = 0usize;
    let mut s = r.bytes_stream();
    while let Some(c) = futures::StreamExt::next(&mut s).await {
        n += c.unwrap().len();
    }
    assert_eq!(n, 100 << 20);
    // Someone else's connection, a wrong key, missing headers.
    let r = call(reqwest::Method::GET, "echo/x", &b).send().await.unwrap();
    assert_eq!(envelope(r).await.0, 404);
    let r = f
        .app
        .call(Method::GET, "/v1/proxy/echo/x")
        .by(&a.jwt)
        .header("connection-id", c.as_str())
        .header("provider-config-key", "slack")
        .send()
        .await;
    assert_eq!(envelope(r).await.0, 404);
    let r = f.app.call(Method::GET, "/v1/proxy/echo/x").by(&a.jwt).send().await;
    let (status, code, _, _) = envelope(r).await;
    assert_eq!((status, code.as_str()), (400, "missing_connection_id"));
}

#[tokio::test]
async fn idle_connections_are_refreshed_and_secrets_follow_key_rotation() {
    let f = Flow::new().await;
    let a = sign_up(&f.app, "idle@example.com").await;
    let c = f.connect(&a, "basic", "idle").await;
    // Nobody uses it; its token nears expiry; the sweeper refreshes it.
    assert_eq!(
        carmenta::connections::upkeep::refresh_idle(&f.app.state.connections, std::time::Duration::ZERO).await.unwrap(),
        0
    );
    f.expire(&c).await;
    assert_eq!(
        carmenta::connections::upkeep::refresh_idle(&f.app.state.connections, std::time::Duration::ZERO).await.unwrap(),
        1
    );
    assert_eq!(*f.fake.refresh_calls.lock().unwrap(), 1);
    let (status, tok) = f.token(&f.app, &a, &c, false).await;
    assert_eq!((status, tok["access_token"].as_str()), (200, Some("tok-idle-r1")));
    // A new primary key (the old one kept for reading): rows are re-sealed under it,
    // after which the old key can go.
    let old = f.app.state.config.encryption_keys[0].clone();
    let new = carmenta::config::Secret::new(carmenta::crypto::generate_key());
    let file = f.providers.clone();
    let (n1, o1, file1) = (new.clone(), old.clone(), file.clone());
    let rotated = TestApp::builder()
        .config(move |cfg| {
            cfg.encryption_keys = vec![n1, o1];
            cfg.providers_file = Some(file1);
        })
        .same_database_as(&f.app)
        .spawn()
        .await;
    let n = carmenta::db::shared::reencrypt_all(&rotated.state.pool, &rotated.state.keyring).await.unwrap();
    assert!(n >= 4, "two integration secrets, one connection, the signing key(s): {n}");
    assert_eq!(carmenta::db::shared::reencrypt_all(&rotated.state.pool, &rotated.state.keyring).await.unwrap(), 0);
    let only_new = TestApp::builder()
        .config(move |cfg| {
            cfg.encryption_keys = vec![new];
            cfg.providers_file = Some(file);
        })
        .same_database_as(&f.app)
        .spawn()
        .await;
    let (status, tok) = f.token(&only_new, &a, &c, false).await;
    assert_eq!((status, tok["access_token"].as_str()), (200, Some("tok-idle-r1")), "{tok}");
    let (id, sealed): (uuid::Uuid, Vec<u8>) =
        sqlx::query_as("SELECT id, client_secret FROM integrations WHERE unique_key = 'basic'")
            .fetch_one(&f.app.pool)
            .await
            .unwrap();
    assert_eq!(only_new.state.connections.vault.open_client_secret(id, &sealed).unwrap(), "basic-secret");
}

/// A webhook receiver that checks Standard Webhooks signatures itself and fails
/// its first delivery.
pub(crate) mod receiver {
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use base64::Engine;
    use hmac::Mac;

    #[derive(Clone)]
    pub struct Receiver {
        pub secret: Vec<u8>,
        pub got: Arc<Mutex<Vec<serde_json::Value>>>,
        pub attempts: Arc<Mutex<u32>>,
        pub bad_signatures: Arc<Mutex<u32>>,
    }

    async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
        let n = {
            let mut a = r.attempts.lock().unwrap();
            *a += 1;
            *a
        };
        let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let (id, ts, sig) = (h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&r.secret).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(&body);
        let want = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
        let fresh = ts.parse::<i64>().is_ok_and(|t| (time::OffsetDateTime::now_utc().unix_timestamp() - t).abs() < 300);
        if !sig.split(' ').any(|s| s == want) || !fresh || id.is_empty() {
            *r.bad_signatures.lock().unwrap() += 1;
            return StatusCode::UNAUTHORIZED;
        }
        if n == 1 {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        r.got.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
        StatusCode::NO_CONTENT
    }

    pub async fn start(secret: Vec<u8>) -> (String, Receiver) {
        let r = Receiver {
            secret,
            got: Default::default(),
            attempts: Default::default(),
            bad_signatures: Default::default(),
        };
        let router = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(r.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, router).await });
        (url, r)
    }
}

#[tokio::test]
async fn connection_events_reach_the_app_as_signed_webhooks() {
    let key: [u8; 24] = rand::random();
    let (url, recv) = receiver::start(key.to_vec()).await;
    let secret = format!("whsec_{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key));
    let f = Flow::new_with(|c| {
        c.webhook_url = Some(url.parse().unwrap());
        c.webhook_secret = Some(carmenta::config::Secret::new(secret));
    })
    .await;
    let a = sign_up(&f.app, "wh@example.com").await;
    let c = f.connect(&a, "basic", "wh").await;
    *f.fake.refresh_mode.lock().unwrap() = "revoked".into();
    assert_eq!(f.token(&f.app, &a, &c, true).await.0, 409);
    assert_eq!(f.app.delete_as(&format!("/v1/connections/{c}"), &a.jwt).await.0, 204);
    // The first delivery fails (HTTP 500) and is retried after its backoff.
    // Delivery is a job, queued with each event; the server's job runner runs it.
    let worker = carmenta::background::start(&f.app.state).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while recv.got.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    worker.shutdown().await;
    // A failed delivery is retried later, so arrival order is not event order.
    let mut got = recv.got.lock().unwrap().clone();
    got.sort_by_key(|e| e["timestamp"].as_str().unwrap().to_string());
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["connection.created", "connection.refresh_failed", "connection.deleted"], "{got:?}");
    assert_eq!(got[0]["data"]["connection_id"], c.as_str());
    assert_eq!(got[0]["data"]["external_account_id"], "acct-wh");
    assert_eq!(got[1]["data"]["status"], "needs_reauth");
    assert_eq!(*recv.bad_signatures.lock().unwrap(), 0);
    assert!(*recv.attempts.lock().unwrap() >= 4, "one failed attempt, then three deliveries");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL")
        .fetch_one(&f.app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn hosted_connect_page_lists_allowed_integrations_and_my_accounts() {
    let f = Flow::new().await;
    let a = sign_up(&f.app, "page@example.com").await;
    let b = sign_up(&f.app, "page-b@example.com").await;
    f.connect(&a, "basic", "mine").await;
    f.connect(&b, "basic", "theirs").await;
    let r = f
        .app
        .call(Method::POST, "/v1/connect/sessions")
        .by(&a.jwt)
        .json(&json!({"allowed_integrations": ["basic"]}))
        .send()
        .await;
    let token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let r = f.app.call(Method::GET, &format!("/oauth/connect?session={token}")).send().await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("basic") && html.contains("acct-mine") && html.contains("connected"), "{html}");
    assert!(!html.contains("acct-theirs"), "another user's account is not shown");
    assert!(!html.contains("slack"), "integrations outside the session are not shown");
    assert!(html.contains(&format!("/oauth/connect/basic?session={token}")));
    // A badge with the provider's initials stands in for a logo, and its categories show.
    assert!(html.contains(r#"aria-hidden="true">FB</span>"#) && html.contains("fake-basic · dev-tools"), "{html}");
    let r = f.app.call(Method::GET, "/oauth/connect?session=nope").send().await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn api_key_and_basic_credentials_and_revocation_on_delete() {
    let f = Flow::new().await;
    let a = sign_up(&f.app, "keys@example.com").await;
    for (k, p) in [("keyed", "fake-key"), ("pw", "fake-basicauth")] {
        let r = f
            .app
            .call(Method::POST, "/v1/integrations")
            .by(&f.key)
            .json(&json!({"unique_key": k, "provider": p}))
            .send()
            .await;
        assert_eq!(r.status(), 201);
    }
    let create = |body: Value| f.app.client.post(f.app.url("/v1/connections")).bearer_auth(&a.jwt).json(&body).send();
    let r = create(json!({"integration": "keyed", "api_key": "k-123"})).await.unwrap();
    assert_eq!(r.status(), 201);
    let keyed: Value = r.json().await.unwrap();
    let r =
        create(json!({"integration": "pw", "username": "ann", "password": "hunter2", "external_account_id": "ann"}))
            .await
            .unwrap();
    assert_eq!(r.status(), 201);
    let pw: Value = r.json().await.unwrap();
    assert_eq!(pw["external_account_id"], "ann");
    for (body, code) in [
        (json!({"integration": "keyed", "username": "x", "password": "y"}), "invalid_credentials"),
        (json!({"integration": "pw", "api_key": "x"}), "invalid_credentials"),
        (json!({"integration": "basic", "api_key": "x"}), "wrong_auth_mode"),
        (json!({"integration": "nope", "api_key": "x"}), "unknown_integration"),
    ] {
        let (status, c, _, _) = envelope(create(body.clone()).await.unwrap()).await;
        assert_eq!((status, c.as_str()), (422, code), "{body}");
    }
    let proxied = |conn: &Value, key: &str| {
        f.app
            .client
            .get(f.app.url("/v1/proxy/echo/x"))
            .bearer_auth(&a.jwt)
            .header("connection-id", conn["id"].as_str().unwrap())
            .header("provider-config-key", key)
            .send()
    };
    let v: Value = proxied(&keyed, "keyed").await.unwrap().json().await.unwrap();
    assert_eq!(
        (v["x_api_key"].as_str(), v["authorization"].as_str()),
        (Some("k-123"), None),
        "the template carries the key"
    );
    let v: Value = proxied(&pw, "pw").await.unwrap().json().await.unwrap();
    let want = format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ann:hunter2"));
    assert_eq!(v["authorization"].as_str(), Some(want.as_str()));
    // Deleting an OAuth connection revokes its token at the provider first.
    let c = f.connect(&a, "basic", "gone").await;
    assert_eq!(f.app.delete_as(&format!("/v1/connections/{c}"), &a.jwt).await.0, 204);
    assert_eq!(*f.fake.revoked.lock().unwrap(), ["rt-gone"]);
}

/// Every item of the list at `path` walked `limit` at a time through `next_cursor`.
async fn walk(app: &TestApp, path: &str, token: &str, limit: usize) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let (status, page) = app.get_as(&url, token).await;
        assert_eq!(status, 200, "{url}: {page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit, "{url}: {} items", data.len());
        items.extend(data.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return items,
        }
    }
    panic!("{path}: more than 100 pages");
}

#[tokio::test]
async fn sessions_integrations_and_connections_are_paged() {
    let f = Flow::new().await;
    let a = sign_up(&f.app, "pages@example.com").await;
    let b = sign_up(&f.app, "other-pages@example.com").await;
    for k in ["page-a", "page-b", "page-c"] {
        let (status, body) =
            f.app.post_as("/v1/integrations", &f.key, &json!({"unique_key": k, "provider": "fake-key"})).await;
        assert_eq!(status, 201, "{body}");
    }
    for n in 0..5 {
        let body =
            json!({"integration": "page-a", "api_key": format!("k{n}"), "external_account_id": format!("acct-{n}")});
        let (status, body) = f.app.post_as("/v1/connections", &a.jwt, &body).await;
        assert_eq!(status, 201, "{body}");
    }
    // Connections: every one exactly once, oldest first, in pages of 2 (and of 1).
    let (status, all) = f.app.get_as("/v1/connections", &a.jwt).await;
    assert_eq!(status, 200);
    assert_eq!(all["next_cursor"], Value::Null);
    let accounts = |items: &[Value]| -> Vec<String> {
        items.iter().map(|c| c["external_account_id"].as_str().unwrap().to_string()).collect()
    };
    let expected: Vec<String> = (0..5).map(|n| format!("acct-{n}")).collect();
    assert_eq!(accounts(all["data"].as_array().unwrap()), expected);
    assert_eq!(accounts(&walk(&f.app, "/v1/connections", &a.jwt, 2).await), expected);
    assert_eq!(accounts(&walk(&f.app, "/v1/connections?integration=page-a", &a.jwt, 1).await), expected);
    // Another user's pages are theirs: empty.
    assert!(walk(&f.app, "/v1/connections", &b.jwt, 2).await.is_empty());
    // Integrations: key order, each once.
    let keys: Vec<String> = walk(&f.app, "/v1/integrations", &f.key, 2)
        .await
        .iter()
        .map(|i| i["unique_key"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(keys, sorted);
    assert!(["page-a", "page-b", "page-c"].iter().all(|k| keys.iter().any(|x| x == k)), "{keys:?}");
    // Sessions: three more sign-ins, newest first, each once.
    for _ in 0..3 {
        let (status, body) = f
            .app
            .call(Method::POST, "/v1/auth/sign-in")
            .json(&json!({"email": "pages@example.com", "password": crate::harness::PASSWORD}))
            .reply()
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let sessions = walk(&f.app, "/v1/me/sessions", &a.jwt, 2).await;
    assert_eq!(sessions.len(), 4, "sign-up's session and three sign-ins");
    let created: Vec<&str> = sessions.iter().map(|s| s["created_at"].as_str().unwrap()).collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first: {created:?}");
    // Bad paging input: a 400 with a stable code.
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=101", "invalid_limit"),
        ("cursor=%21%21", "invalid_cursor"),
        ("cursor=bm9wZQ", "invalid_cursor"),
    ] {
        for path in ["/v1/connections", "/v1/me/sessions"] {
            let r = f.app.call(Method::GET, &format!("{path}?{query}")).by(&a.jwt).send().await;
            let (status, got, ..) = envelope(r).await;
            assert_eq!((status, got.as_str()), (400, code), "{path}?{query}");
        }
        // (An integration cursor is a key: any text decodes to a position.)
        if query != "cursor=bm9wZQ" {
            let r = f.app.call(Method::GET, &format!("/v1/integrations?{query}")).by(&f.key).send().await;
            let (status, got, ..) = envelope(r).await;
            assert_eq!((status, got.as_str()), (400, code), "/v1/integrations?{query}");
        }
    }
}

#[tokio::test]
async fn a_proxied_body_trickled_slower_than_the_minimum_rate_is_cut_off() {
    let f = Flow::new_with(|c| c.min_body_rate = 100).await;
    let a = sign_up(&f.app, "slowpx@example.com").await;
    let c = f.connect(&a, "basic", "slow").await;
    // A body larger than the replay buffer streams upstream as it comes; one byte
    // every 2 s (the minimum: 1,000 bytes per 10 s of waiting) is cut off, and the
    // trickle (30 bytes, 60 s) never finishes.
    // (1.5 MB: over the proxy's 1 MB replay buffer, under the test upstream's 2 MB limit.)
    let body = crate::harness::trickled(vec![b'x'; 1536 * 1024], 30, std::time::Duration::from_secs(2));
    let started = std::time::Instant::now();
    let r = f
        .app
        .call(Method::POST, "/v1/proxy/echo/upload")
        .by(&a.jwt)
        .header("connection-id", c.as_str())
        .header("provider-config-key", "basic")
        .header("content-length", (1536 * 1024 + 30).to_string())
        .body(body)
        .send()
        .await;
    let (status, waited) = (r.status(), started.elapsed());
    let text = r.text().await.unwrap_or_default();
    assert!(status.as_u16() >= 400, "{status}: {text}");
    assert!(
        // The head fills the first 10 s window; the second, of single bytes, fails.
        waited > std::time::Duration::from_secs(8) && waited < std::time::Duration::from_secs(40),
        "cut off after one or two windows of waiting, not {waited:?}: {status} {text}"
    );
}

#[tokio::test]
async fn a_templated_provider_asks_for_its_configuration_and_keeps_it_for_refresh_and_proxy() {
    let f = Flow::new().await;
    let a = sign_up(&f.app, "tenant@example.com").await;
    let r = f
        .app
        .call(Method::POST, "/v1/connect/sessions")
        .by(&a.jwt)
        .json(&json!({"allowed_integrations": ["tenant"], "return_url": "/done"}))
        .send()
        .await;
    let s: Value = r.json().await.unwrap();
    let link = s["links"]["tenant"].as_str().unwrap().to_string();
    // Without the tenant, the hosted page asks for it.
    let r = f.app.client.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let form = r.text().await.unwrap();
    assert!(form.contains(r#"name="tenant""#) && form.contains("/oauth/connect/tenant"), "{form}");
    // A value that is not a plain label is refused; a good one goes to the tenant's URL.
    let r = f.app.client.get(format!("{link}&tenant=acme%2F..%2Fx")).send().await.unwrap();
    assert!(r.headers()["location"].to_str().unwrap().contains("error=connection_config_invalid"));
    let r = f.app.client.get(format!("{link}&tenant=acme")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(to.path(), "/t/acme/authorize");
    let q: std::collections::HashMap<String, String> = to.query_pairs().into_owned().collect();
    f.fake.challenges.lock().unwrap().insert("tc".into(), q["code_challenge"].clone());
    let (status, loc) = f.callback(&format!("code=tc&state={}", q["state"])).await;
    assert_eq!(status, 302);
    assert!(loc.contains("result=success"), "{loc}");
    let id = loc.rsplit('=').next().unwrap().to_string();
    let config: Value = sqlx::query_scalar("SELECT connection_config FROM connections WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&f.app.pool)
        .await
        .unwrap();
    assert_eq!(config, json!({"tenant": "acme"}));
    // The proxy reaches the tenant's API; an expired token is refreshed at the
    // tenant's token URL, and the rotated refresh token replaces the old one.
    let proxy = |path: &str| {
        f.app
            .client
            .get(f.app.url(&format!("/v1/proxy/{path}")))
            .bearer_auth(&a.session)
            .header("connection-id", &id)
            .header("provider-config-key", "tenant")
    };
    let echo: Value = proxy("echo/x").send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (echo["path"].as_str(), echo["authorization"].as_str()),
        (Some("/t/acme/api/echo/x"), Some("Bearer tok-tc"))
    );
    f.expire(&id).await;
    // This replica's proxy cache hears the trigger's NOTIFY a moment later: evict now.
    f.app.state.connections.cache.apply(&id);
    let echo: Value = proxy("echo/y").send().await.unwrap().json().await.unwrap();
    assert_eq!(echo["authorization"], "Bearer tok-tc-r1");
    assert_eq!(f.fake.used.lock().unwrap().clone(), vec!["rt-tc".to_string()]);
    f.expire(&id).await;
    // This replica's proxy cache hears the trigger's NOTIFY a moment later: evict now.
    f.app.state.connections.cache.apply(&id);
    let echo: Value = proxy("echo/z").send().await.unwrap().json().await.unwrap();
    assert_eq!(echo["authorization"], "Bearer tok-tc-r2", "the rotated refresh token was used");
    assert_eq!(*f.fake.reused.lock().unwrap(), 0);
}

#[tokio::test]
async fn client_credentials_connect_proxy_and_grant_again_on_expiry() {
    let f = Flow::new().await;
    let a = sign_up(&f.app, "cc@example.com").await;
    let create = |body: Value| f.app.call(Method::POST, "/v1/connections").by(&a.jwt).json(&body).reply();
    // The connection's own client; a wrong one is refused by the provider.
    let (s, e) = create(json!({"integration": "cc", "client_id": "user-client", "client_secret": "wrong"})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("invalid_grant")), "{e}");
    let (s, e) = create(json!({"integration": "cc", "client_id": "user-client"})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("invalid_credentials")));
    let (s, conn) =
        create(json!({"integration": "cc", "client_id": "user-client", "client_secret": "user-secret"})).await;
    assert_eq!(s, 201, "{conn}");
    let id = conn["id"].as_str().unwrap().to_string();
    // The client secret is sealed with the tokens, never shown.
    assert!(!conn.to_string().contains("user-secret"));
    let proxy = || {
        f.app
            .client
            .get(f.app.url("/v1/proxy/echo/cc"))
            .bearer_auth(&a.session)
            .header("connection-id", &id)
            .header("provider-config-key", "cc")
    };
    let echo: Value = proxy().send().await.unwrap().json().await.unwrap();
    assert_eq!(echo["authorization"], "Bearer cc-2");
    // Expired: a new grant with the same client (there is no refresh token).
    f.expire(&id).await;
    // This replica's proxy cache hears the trigger's NOTIFY a moment later: evict now.
    f.app.state.connections.cache.apply(&id);
    let echo: Value = proxy().send().await.unwrap().json().await.unwrap();
    assert_eq!(echo["authorization"], "Bearer cc-3");
    assert_eq!(*f.fake.token_calls.lock().unwrap(), 3);
}

/// A provider that adapts to any catalog entry's quirks and records what it saw:
/// `/g/{entry}/token` takes a form or JSON body, the client in the body or as
/// HTTP Basic, checks PKCE when a challenge was registered, and answers with
/// tokens shaped by the entry's refresh behaviour; `/g/{entry}/api/…` echoes.
mod generic {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{any, get, post};
    use axum::{Json, Router};
    use base64::Engine;
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};

    /// What one token request looked like.
    #[derive(Debug, Clone)]
    pub struct Seen {
        pub entry: String,
        pub json: bool,
        pub basic: bool,
        pub grant: String,
        pub verifier: bool,
    }

    #[derive(Clone, Default)]
    pub struct Generic {
        pub seen: Arc<Mutex<Vec<Seen>>>,
        /// code → PKCE challenge.
        pub challenges: Arc<Mutex<HashMap<String, String>>>,
        /// entry → refresh behaviour.
        pub refresh: Arc<Mutex<HashMap<String, String>>>,
        /// entry → the refresh token that works now.
        pub live_rt: Arc<Mutex<HashMap<String, String>>>,
        pub n: Arc<Mutex<u32>>,
    }

    async fn token(
        State(g): State<Generic>,
        Path(entry): Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (StatusCode, Json<Value>) {
        let json = headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|c| c.contains("json"));
        let fields: HashMap<String, String> = if json {
            serde_json::from_slice::<HashMap<String, Value>>(&body)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect()
        } else {
            url::form_urlencoded::parse(&body).into_owned().collect()
        };
        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("gen-client:gen-secret"));
        let basic = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str());
        let body_client = fields.get("client_id").map(String::as_str) == Some("gen-client")
            && fields.get("client_secret").map(String::as_str) == Some("gen-secret");
        if !basic && !body_client {
            return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"})));
        }
        let grant = fields.get("grant_type").cloned().unwrap_or_default();
        let verifier = fields.get("code_verifier").cloned();
        g.seen.lock().unwrap().push(Seen {
            entry: entry.clone(),
            json,
            basic,
            grant: grant.clone(),
            verifier: verifier.is_some(),
        });
        let n = {
            let mut n = g.n.lock().unwrap();
            *n += 1;
            *n
        };
        match grant.as_str() {
            "authorization_code" => {
                let code = fields.get("code").cloned().unwrap_or_default();
                let want = g.challenges.lock().unwrap().get(&code).cloned();
                let ok = match (want, verifier) {
                    (Some(c), Some(v)) => {
                        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())) == c
                    }
                    (None, None) => true,
                    _ => false,
                };
                if !ok {
                    return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"})));
                }
            }
            "refresh_token" => {
                let live = g.live_rt.lock().unwrap().get(&entry).cloned();
                if live.as_deref() != fields.get("refresh_token").map(String::as_str) {
                    return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"})));
                }
            }
            "client_credentials" => {
                return (StatusCode::OK, Json(json!({"access_token": format!("at-{n}"), "expires_in": 3600})));
            }
            _ => return (StatusCode::BAD_REQUEST, Json(json!({"error": "unsupported_grant_type"}))),
        }
        let mode = g.refresh.lock().unwrap().get(&entry).cloned().unwrap_or_default();
        let body = match mode.as_str() {
            // Long-lived tokens: no expiry, no refresh token.
            "none" => json!({"access_token": format!("at-{n}"), "owner": {"user": {"id": "acct"}}}),
            "rotating" => {
                let rt = format!("rt-{n}");
                g.live_rt.lock().unwrap().insert(entry, rt.clone());
                json!({"access_token": format!("at-{n}"), "refresh_token": rt, "expires_in": 3600, "owner": {"user": {"id": "acct"}}})
            }
            _ => {
                g.live_rt.lock().unwrap().insert(entry, "rt-fixed".into());
                json!({"access_token": format!("at-{n}"), "refresh_token": "rt-fixed", "expires_in": "3600", "owner": {"user": {"id": "acct"}}})
            }
        };
        (StatusCode::OK, Json(body))
    }

    async fn userinfo() -> Json<Value> {
        Json(
            json!({"sub": "acct", "id": "acct", "uuid": "acct", "user_id": "acct", "data": {"id": "acct"}, "resource": {"uuid": "acct"}}),
        )
    }

    async fn api(headers: HeaderMap) -> Json<Value> {
        Json(json!({"authorization": headers.get("authorization").and_then(|v| v.to_str().ok())}))
    }

    pub async fn start() -> (String, Generic) {
        let g = Generic::default();
        let router = Router::new()
            .route("/g/{entry}/token", post(token))
            .route("/g/{entry}/userinfo", get(userinfo))
            .route("/g/{entry}/revoke", post(|| async { "ok" }))
            .route("/g/{entry}/api/{*rest}", any(api))
            .with_state(g.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, router).await });
        (base, g)
    }
}

/// One catalog entry for each distinct combination of OAuth quirks the catalog
/// holds (auth mode, PKCE, client authentication, body format, refresh
/// behaviour) connects, proxies and refreshes against the adaptive local
/// provider: the entry as it is, with only its URLs pointed at the local server.
#[tokio::test]
async fn every_quirk_combination_in_the_catalog_connects_proxies_and_refreshes() {
    let (base, g) = generic::start().await;
    let catalog = carmenta::connections::catalog::Catalog::load(None).unwrap();
    // Group the catalog by combination; pick the first entry of each whose
    // account id needs no provider-specific response and no extra token params.
    let mut picks: std::collections::BTreeMap<(String, bool, String, String, String), String> = Default::default();
    for p in catalog.all() {
        if !matches!(p.auth_mode.as_str(), "OAUTH2" | "OAUTH2_CC") {
            continue;
        }
        let e = &p.raw;
        let pkce = p.auth_mode == "OAUTH2" && e.get("disable_pkce") != Some(&json!(true));
        let auth = if p.str("token_request_auth_method") == Some("basic") {
            "basic"
        } else if p.str("authorization_method") == Some("header") {
            "header"
        } else {
            "body"
        };
        let key = (
            p.auth_mode.clone(),
            pkce,
            auth.to_string(),
            p.str("body_format").unwrap_or("form").to_string(),
            p.str("refresh").unwrap_or("reusable").to_string(),
        );
        let simple = ["alternate_access_token_response_path", "token_params", "refresh_params"]
            .iter()
            .all(|f| e.get(*f).is_none())
            && p.str("account_id_path").is_none_or(|a| a == "owner.user.id");
        if simple {
            picks.entry(key).or_insert_with(|| p.name.clone());
        }
    }
    assert!(picks.len() >= 15, "{picks:?}");
    // The override file: each pick's URLs on the local provider, nothing else changed.
    let mut over = serde_json::Map::new();
    for name in picks.values() {
        let p = catalog.get(name).unwrap();
        let mut o = json!({"authorization_url": format!("{base}/g/{name}/authorize"), "token_url": format!("{base}/g/{name}/token"),
                           "proxy": {"base_url": format!("{base}/g/{name}/api")}});
        if p.raw.get("refresh_url").is_some() {
            o["refresh_url"] = json!(format!("{base}/g/{name}/token"));
        }
        if p.raw.get("identity").is_some() {
            o["identity"] = json!({"url": format!("{base}/g/{name}/userinfo")});
        }
        if p.raw.get("revoke_url").is_some() {
            o["revoke_url"] = json!(format!("{base}/g/{name}/revoke"));
        }
        over.insert(name.clone(), o);
        g.refresh.lock().unwrap().insert(name.clone(), p.str("refresh").unwrap_or("reusable").to_string());
    }
    let dir = crate::harness::temp_dir("carmenta-combinations-");
    let file = dir.join("providers.json");
    std::fs::write(&file, Value::Object(over).to_string()).unwrap();
    let app = TestApp::builder().config(|c| c.providers_file = Some(file.clone())).spawn().await;
    let (key, _) = carmenta::auth::service::create_service_key(&app.pool, "backend", true).await.unwrap();
    let u = sign_up(&app, "combos@example.com").await;
    for ((mode, pkce, auth, format, refresh), name) in &picks {
        let what = format!("{name} ({mode}, pkce {pkce}, client {auth}, {format}, refresh {refresh})");
        let (s, b) = app
            .call(Method::POST, "/v1/integrations")
            .by(&key)
            .json(&json!({"unique_key": name, "provider": name, "client_id": "gen-client", "client_secret": "gen-secret", "scopes": ["read"]}))
            .reply()
            .await;
        assert_eq!(s, 201, "{what}: {b}");
        let before = g.seen.lock().unwrap().len();
        let id = if mode == "OAUTH2_CC" {
            let (s, c) =
                app.call(Method::POST, "/v1/connections").by(&u.jwt).json(&json!({"integration": name})).reply().await;
            assert_eq!(s, 201, "{what}: {c}");
            c["id"].as_str().unwrap().to_string()
        } else {
            let r = app
                .call(Method::POST, "/v1/connect/sessions")
                .by(&u.jwt)
                .json(&json!({"allowed_integrations": [name], "return_url": "/done"}))
                .send()
                .await;
            let sess: Value = r.json().await.unwrap();
            let link = sess["links"][name].as_str().unwrap().to_string();
            let r = app.client.get(&link).send().await.unwrap();
            assert_eq!(r.status(), 302, "{what}");
            let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
            let q: std::collections::HashMap<String, String> = to.query_pairs().into_owned().collect();
            assert_eq!(q.contains_key("code_challenge"), *pkce, "{what}: PKCE in the authorization URL");
            let code = format!("code-{name}");
            if let Some(ch) = q.get("code_challenge") {
                g.challenges.lock().unwrap().insert(code.clone(), ch.clone());
            }
            let r = app
                .client
                .get(app.url(&format!("/oauth/callback?code={code}&state={}", q["state"])))
                .send()
                .await
                .unwrap();
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            assert!(loc.contains("result=success"), "{what}: {loc}");
            loc.rsplit('=').next().unwrap().to_string()
        };
        // The provider saw the entry's quirks.
        let seen = g.seen.lock().unwrap()[before].clone();
        assert_eq!(seen.entry, *name);
        assert_eq!(seen.json, format == "json", "{what}: body format");
        assert_eq!(seen.basic, auth != "body", "{what}: client authentication");
        assert_eq!(seen.verifier, *pkce, "{what}: code_verifier");
        let proxy = || {
            app.client
                .get(app.url("/v1/proxy/x"))
                .bearer_auth(&u.session)
                .header("connection-id", &id)
                .header("provider-config-key", name)
        };
        let first: Value = proxy().send().await.unwrap().json().await.unwrap();
        let first = first["authorization"].as_str().unwrap().to_string();
        assert!(first.starts_with("Bearer at-"), "{what}: {first}");
        // Expired: refreshed (or granted again), except long-lived tokens.
        expire_connection(&app, &id, -60).await;
        app.state.connections.cache.apply(&id);
        let second: Value = proxy().send().await.unwrap().json().await.unwrap();
        let second = second["authorization"].as_str().unwrap().to_string();
        if refresh == "none" && mode == "OAUTH2" {
            assert_eq!(second, first, "{what}: a long-lived token is kept, nothing to refresh with");
        } else {
            assert_ne!(second, first, "{what}: refreshed");
            let last = g.seen.lock().unwrap().last().cloned().unwrap();
            let grant = if mode == "OAUTH2_CC" { "client_credentials" } else { "refresh_token" };
            assert_eq!(
                (last.grant.as_str(), last.json, last.basic),
                (grant, format == "json", auth != "body"),
                "{what}"
            );
        }
        if refresh == "rotating" {
            // The rotated refresh token is the one that works next.
            expire_connection(&app, &id, -60).await;
            app.state.connections.cache.apply(&id);
            let third: Value = proxy().send().await.unwrap().json().await.unwrap();
            assert_ne!(third["authorization"].as_str().unwrap(), second, "{what}: refreshed with the rotated token");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn organizations_share_connections_and_every_route_checks_the_member() {
    let f = Flow::new().await;
    let app = &f.app;
    let r = app
        .call(Method::POST, "/v1/integrations")
        .by(&f.key)
        .json(&json!({"unique_key": "keyed", "provider": "fake-key"}))
        .send()
        .await;
    assert_eq!(r.status(), 201);
    let crate::harness::Team { org_id, owner, admin, member, guest: none, stranger } =
        crate::harness::team(app, "org").await;
    let status = |r: reqwest::Response| r.status().as_u16();

    // Making a shared connection needs org:connections:write; a stranger is told nothing.
    let key_body = json!({"integration": "keyed", "api_key": "team-key", "org_id": org_id});
    for (u, want) in [(&member, 403), (&stranger, 404)] {
        assert_eq!(status(app.call(Method::POST, "/v1/connections").by(&u.jwt).json(&key_body).send().await), want);
        let sess = json!({"org_id": org_id, "allowed_integrations": ["basic"]});
        assert_eq!(status(app.call(Method::POST, "/v1/connect/sessions").by(&u.jwt).json(&sess).send().await), want);
    }
    let (s, keyed) = app.post_as("/v1/connections", &owner.jwt, &key_body).await;
    assert_eq!(s, 201, "{keyed}");
    assert_eq!(keyed["org_id"], org_id.as_str());
    let keyed_id = keyed["id"].as_str().unwrap().to_string();
    // The OAuth flow for the organization, through a connect session.
    let (s, sess) = app
        .post_as(
            "/v1/connect/sessions",
            &admin.jwt,
            &json!({"org_id": org_id, "allowed_integrations": ["basic"], "return_url": "/done"}),
        )
        .await;
    assert_eq!(s, 201, "{sess}");
    let r = app.client.get(sess["links"]["basic"].as_str().unwrap()).send().await.unwrap();
    let to = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<String, String> = to.query_pairs().into_owned().collect();
    if let Some(ch) = q.get("code_challenge") {
        f.fake.challenges.lock().unwrap().insert("team".to_string(), ch.clone());
    }
    let r = app.call(Method::GET, &format!("/oauth/callback?code=team&state={}", q["state"])).send().await;
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.contains("result=success"), "{loc}");
    let oauth_id = loc.rsplit('=').next().unwrap().to_string();

    // Shared connections are the organization's, not the maker's own.
    let (_, mine) = app.get_as("/v1/connections", &owner.jwt).await;
    assert_eq!(mine["data"], json!([]));
    let listed =
        |u: &crate::harness::User| app.call(Method::GET, &format!("/v1/connections?org_id={org_id}")).by(&u.jwt).send();
    let (s, list) = app.get_as(&format!("/v1/connections?org_id={org_id}"), &member.jwt).await;
    assert_eq!(s, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(status(listed(&none).await), 403);
    assert_eq!(status(listed(&stranger).await), 404);

    // Reading routes: members with org:connections:read; a role without it 403; strangers 404.
    for id in [&keyed_id, &oauth_id] {
        for path in [format!("/v1/connections/{id}"), format!("/v1/connections/{id}/token")] {
            for (u, want) in [(&member, 200), (&none, 403), (&stranger, 404)] {
                assert_eq!(status(app.call(Method::GET, &path).by(&u.jwt).send().await), want, "{path} as {}", u.id);
            }
        }
    }
    let proxied = |u: &crate::harness::User| {
        app.client
            .get(app.url("/v1/proxy/echo/x"))
            .bearer_auth(&u.jwt)
            .header("connection-id", keyed_id.as_str())
            .header("provider-config-key", "keyed")
            .send()
    };
    let r = proxied(&member).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["x_api_key"], "team-key");
    assert_eq!(proxied(&none).await.unwrap().status(), 403);
    assert_eq!(proxied(&stranger).await.unwrap().status(), 404);

    // Writing routes: org:connections:write.
    let patch = json!({"metadata": {"team": true}});
    for (u, want) in [(&member, 403), (&none, 403), (&stranger, 404)] {
        assert_eq!(
            status(
                app.call(Method::PATCH, &format!("/v1/connections/{keyed_id}")).by(&u.jwt).json(&patch).send().await
            ),
            want
        );
        assert_eq!(
            status(app.call(Method::DELETE, &format!("/v1/connections/{oauth_id}")).by(&u.jwt).send().await),
            want
        );
    }
    let (s, patched) = app.patch_as(&format!("/v1/connections/{keyed_id}"), &admin.jwt, &patch).await;
    assert_eq!((s, patched["metadata"]["team"].as_bool()), (200, Some(true)));
    // A role that may write may read what it writes.
    let (s, _) = app
        .post_as(
            &format!("/v1/orgs/{org_id}/roles"),
            &admin.jwt,
            &json!({"key": "org:writer", "name": "Writer", "permissions": ["org:connections:write"]}),
        )
        .await;
    assert_eq!(s, 201);
    crate::harness::set_org_role(&app.pool, &org_id, none.id, "org:writer").await;
    assert_eq!(status(app.call(Method::GET, &format!("/v1/connections/{keyed_id}")).by(&none.jwt).send().await), 200);

    // Removal from the organization ends access at once (the proxy's cache included).
    let (s, _) = app.delete_as(&format!("/v1/orgs/{org_id}/members/{}", member.id), &owner.jwt).await;
    assert_eq!(s, 204);
    assert_eq!(proxied(&member).await.unwrap().status(), 404);
    assert_eq!(status(app.call(Method::GET, &format!("/v1/connections/{keyed_id}")).by(&member.jwt).send().await), 404);

    // The maker's account goes; the organization keeps its connection (another member holds it).
    sqlx::query("DELETE FROM users WHERE id = $1").bind(owner.id).execute(&app.pool).await.unwrap();
    let (s, c) = app.get_as(&format!("/v1/connections/{keyed_id}"), &admin.jwt).await;
    assert_eq!((s, c["org_id"].as_str()), (200, Some(org_id.as_str())));
    let (s, _) = app.delete_as(&format!("/v1/connections/{oauth_id}"), &admin.jwt).await;
    assert_eq!(s, 204);
    let events: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM webhook_outbox WHERE event_type IN ('connection.created', 'connection.deleted') ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(events.iter().all(|e| e["data"]["org_id"] == org_id.as_str()), "{events:?}");
    // Deleting the organization deletes what it shares.
    let (s, _) = app.delete_as(&format!("/v1/orgs/{org_id}?confirm=true"), &admin.jwt).await;
    assert_eq!(s, 204);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM connections").fetch_one(&app.pool).await.unwrap();
    assert_eq!(left, 0);
}
