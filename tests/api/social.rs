//! Social sign-in against a real OpenID Provider process (panva's oidc-provider,
//! started by the test from `tests/node/oidc-provider.mjs`): the hosted flow, the
//! app flow with its own PKCE, `state` bound to the browser and used once, the
//! linking rules (no pre-hijack through an unverified account or a string
//! `"true"`), linking from a signed-in account, unlinking never the last way in,
//! the second factor after a social sign-in, and the service-key provider API.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Digest;

use crate::harness::{PASSWORD as PW, TestApp, envelope, sign_up};

const SECRET: &str = "test-client-secret-of-the-local-provider";

/// The OpenID Provider process, killed when dropped.
pub struct Op {
    pub base: String,
    _child: tokio::process::Child,
}

impl Op {
    /// Starts the provider on a free port, its client redirecting to `redirects`.
    pub async fn start(port: u16, redirects: &[String]) -> Op {
        use tokio::io::AsyncBufReadExt;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");
        let mut child = tokio::process::Command::new("node")
            .arg("oidc-provider.mjs")
            .current_dir(dir)
            .env("PORT", port.to_string())
            .env("CLIENT_SECRET", SECRET)
            .env("REDIRECT_URIS", redirects.join(","))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node (scripts/bootstrap installs it and tests/node)");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        assert!(matches!(ready, Ok(Ok(Some(ref l))) if l == "listening"), "provider did not start: {ready:?}");
        // Keep reading what it prints, so its writes never meet a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Op { base: format!("http://127.0.0.1:{port}"), _child: child }
    }

    /// The account the next sign-in at the provider will be.
    pub async fn next_login(&self, sub: &str, claims: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/test/login", self.base))
            .json(&json!({"sub": sub, "claims": claims}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A browser: its own cookies, redirects followed by hand.
pub struct Browser {
    pub client: reqwest::Client,
}

/// Where a walk through redirects ended.
pub struct Landed {
    pub status: u16,
    pub url: url::Url,
    pub body: String,
    pub cookies: Vec<String>,
}

impl Browser {
    pub fn new() -> Browser {
        carmenta::install_tls_provider();
        let client =
            reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { client }
    }

    /// GETs `url` and follows redirects until a page, or until the next URL
    /// satisfies `stop` (returned unvisited, status 0).
    pub async fn walk(&self, url: &str, stop: impl Fn(&url::Url) -> bool) -> Landed {
        let mut url = url::Url::parse(url).unwrap();
        let mut cookies = Vec::new();
        for _ in 0..20 {
            let res = self.client.get(url.clone()).send().await.unwrap();
            cookies.extend(res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()));
            let status = res.status().as_u16();
            if (300..400).contains(&status) {
                let loc = res.headers()["location"].to_str().unwrap().to_string();
                let next = url.join(&loc).unwrap();
                if stop(&next) {
                    return Landed { status: 0, url: next, body: String::new(), cookies };
                }
                url = next;
                continue;
            }
            return Landed { status, url, body: res.text().await.unwrap(), cookies };
        }
        panic!("too many redirects");
    }
}

/// An app with the local provider `local` added through the service-key API.
async fn setup() -> (TestApp, Op, String) {
    let port = free_port();
    let app = TestApp::spawn().await;
    let op = Op::start(port, &[format!("{}/auth/social/local/callback", app.base)]).await;
    let (key, _) = carmenta::auth::service::create_service_key(&app.pool, "backend", true).await.unwrap();
    let (s, b) = app
        .call(Method::PUT, "/v1/auth/social-providers/local")
        .by(&key)
        .json(&json!({"client_id": "carmenta", "client_secret": SECRET, "name": "Local ID",
            "discovery_url": format!("{}/.well-known/openid-configuration", op.base)}))
        .reply()
        .await;
    assert_eq!(s, 200, "{b}");
    (app, op, key)
}

fn pkce() -> (String, String) {
    let verifier = carmenta::auth::social::random_value();
    let challenge = B64URL.encode(sha2::Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// Starts linking `local` to the account of `session` (app flow) and walks the
/// browser through the provider: the code the app receives and its verifier.
async fn link_code(app: &TestApp, b: &Browser, session: &str) -> (String, String) {
    let (verifier, challenge) = pkce();
    let (s, started) = app
        .post_as(
            "/v1/me/identities/local/start",
            session,
            &json!({"redirect_url": "/auth/signed-in", "code_challenge": challenge, "code_challenge_method": "S256"}),
        )
        .await;
    assert_eq!(s, 200, "{started}");
    let auth_url = started["authorization_url"].as_str().unwrap();
    assert!(
        auth_url.contains("code_challenge_method=S256")
            && auth_url.contains("nonce=")
            && !auth_url.contains(&challenge)
    );
    let back = b.walk(auth_url, |u| u.path() == "/auth/signed-in").await;
    let code = back.url.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.to_string()).expect("code");
    (code, verifier)
}

async fn exchange_link(app: &TestApp, session: &str, code: &str, verifier: &str) -> reqwest::Response {
    app.call(Method::POST, "/v1/me/identities/exchange")
        .by(session)
        .json(&json!({"code": code, "code_verifier": verifier}))
        .send()
        .await
}

fn claims(jwt: &str) -> Value {
    serde_json::from_slice(&B64URL.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// A hosted social sign-in in a fresh browser as `sub`: where it landed.
async fn hosted_sign_in(app: &TestApp, op: &Op, sub: &str, claims: Value) -> (Browser, Landed) {
    op.next_login(sub, claims).await;
    let b = Browser::new();
    let landed = b.walk(&app.url("/auth/social/local?redirect_url=%2Fauth%2Fsigned-in"), |_| false).await;
    (b, landed)
}

fn session_of(landed: &Landed) -> Option<String> {
    landed
        .cookies
        .iter()
        .find_map(|c| c.strip_prefix("carmenta_session=").map(|v| v.split(';').next().unwrap().to_string()))
}

#[tokio::test]
async fn hosted_social_sign_in_creates_then_finds_the_account_with_state_bound_to_the_browser() {
    let (app, op, key) = setup().await;
    // Providers are listed to apps and as buttons; the secret is never shown.
    let (_, list) = app.get_as("/v1/auth/social-providers", &key).await;
    assert_eq!(list[0]["id"], "local");
    assert_eq!(list[0]["has_client_secret"], true);
    assert!(!list.to_string().contains(SECRET));
    let stored: Vec<u8> = sqlx::query_scalar("SELECT client_secret FROM auth_social_providers WHERE id = 'local'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains(SECRET), "sealed at rest");
    let (_, public) = app.call(Method::GET, "/v1/auth/social/providers").reply().await;
    assert_eq!(public, json!([{"id": "local", "name": "Local ID"}]));
    let page = app.get("/auth/sign-in").await.text().await.unwrap();
    assert!(page.contains("href=\"/auth/social/local\"") && page.contains("Continue with Local ID"), "{page}");
    // A user's bearer cannot configure providers.
    let u = sign_up(&app, "someone@example.com").await;
    let r = app
        .call(Method::PUT, "/v1/auth/social-providers/evil")
        .by(&u.session)
        .json(&json!({"client_id": "x"}))
        .send()
        .await;
    assert_eq!(envelope(r).await.0, 403);

    // First sign-in: a new account, email verified because the provider said `true`.
    let (_, landed) = hosted_sign_in(
        &app,
        &op,
        "sub-ada",
        json!({"email": "ada@example.com", "email_verified": true, "name": "Ada"}),
    )
    .await;
    assert_eq!((landed.status, landed.url.path()), (200, "/auth/signed-in"), "{}", landed.body);
    let session = session_of(&landed).expect("session cookie");
    let (s, me) = app.get_as("/v1/me", &session).await;
    assert_eq!(s, 200);
    assert_eq!(
        (me["email"].as_str(), me["email_verified"].as_bool(), me["name"].as_str()),
        (Some("ada@example.com"), Some(true), Some("Ada"))
    );
    let (_, tok) = app.post_as("/v1/auth/token", &session, &json!({})).await;
    assert_eq!(claims(tok["access_token"].as_str().unwrap())["amr"], json!(["social"]));
    let (_, ids) = app.get_as("/v1/me/identities", &session).await;
    assert_eq!((ids[0]["provider"].as_str(), ids[0]["subject"].as_str()), (Some("local"), Some("sub-ada")));
    let user_id = me["id"].as_str().unwrap().to_string();
    let pw: Option<String> = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1::uuid")
        .bind(&user_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(pw.is_none());

    // Again, in another browser: the same account.
    let (_, landed) =
        hosted_sign_in(&app, &op, "sub-ada", json!({"email": "ada@example.com", "email_verified": true})).await;
    let (_, me2) = app.get_as("/v1/me", &session_of(&landed).unwrap()).await;
    assert_eq!(me2["id"], me["id"]);

    // The callback finishes only in the browser that started, and only once.
    op.next_login("sub-ada", json!({"email": "ada@example.com", "email_verified": true})).await;
    let starter = Browser::new();
    let stopped = starter.walk(&app.url("/auth/social/local"), |u| u.path() == "/auth/social/local/callback").await;
    assert_eq!(stopped.status, 0);
    let callback = stopped.url.to_string();
    assert!(callback.contains("state=") && callback.contains("code="));
    let stranger = Browser::new();
    let r = stranger.client.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 403, "another browser (no flow cookie)");
    assert!(r.text().await.unwrap().contains("another browser"));
    let r = starter.client.get(&callback).send().await.unwrap();
    assert_eq!(r.status(), 400, "the state is used up");
    // A made-up state is refused the same way.
    let r = starter.client.get(app.url("/auth/social/local/callback?code=x&state=forged")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // An answer naming another issuer (RFC 9207 mix-up) is refused.
    op.next_login("sub-ada", json!({"email": "ada@example.com", "email_verified": true})).await;
    let starter = Browser::new();
    let stopped = starter.walk(&app.url("/auth/social/local"), |u| u.path() == "/auth/social/local/callback").await;
    let mut mixed = stopped.url.clone();
    let pairs: Vec<(String, String)> = stopped
        .url
        .query_pairs()
        .map(|(k, v)| (k.to_string(), if k == "iss" { "https://evil.example".to_string() } else { v.to_string() }))
        .collect();
    assert!(pairs.iter().any(|(k, _)| k == "iss"), "the provider sends iss");
    mixed.query_pairs_mut().clear().extend_pairs(pairs);
    let r = starter.client.get(mixed).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("another issuer"));
    // An unknown provider is a 404 page.
    assert_eq!(Browser::new().client.get(app.url("/auth/social/nope")).send().await.unwrap().status(), 404);

    // A second factor enrolled on the social account: the social sign-in stops at it.
    let (secret, _) = crate::mfa::enrol(&app, &session).await;
    let (b, landed) =
        hosted_sign_in(&app, &op, "sub-ada", json!({"email": "ada@example.com", "email_verified": true})).await;
    assert_eq!(landed.url.path(), "/auth/mfa", "{}", landed.body);
    assert!(session_of(&landed).is_none(), "no session before the second factor");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let r = b
        .client
        .post(app.url("/auth/mfa"))
        .header("origin", &app.base)
        .form(&[("code", crate::mfa::totp(&secret, now + 30))])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("carmenta_session="));
    let s = cookie.unwrap().trim_start_matches("carmenta_session=").split(';').next().unwrap().to_string();
    let (_, tok) = app.post_as("/v1/auth/token", &s, &json!({})).await;
    let c = claims(tok["access_token"].as_str().unwrap());
    assert_eq!((c["amr"].clone(), c["aal"].as_str()), (json!(["social", "otp", "mfa"]), Some("aal2")));
}

#[tokio::test]
async fn linking_never_takes_over_an_account() {
    let (app, op, _) = setup().await;
    // Pre-hijack: an attacker signs up (unverified) with the victim's email first.
    let attacker = sign_up(&app, "victim@example.com").await;
    let (_, landed) =
        hosted_sign_in(&app, &op, "sub-victim", json!({"email": "victim@example.com", "email_verified": true})).await;
    assert_eq!(landed.status, 409, "{}", landed.body);
    assert!(landed.body.contains("sign in to it first"));
    assert!(session_of(&landed).is_none());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_identities").fetch_one(&app.pool).await.unwrap();
    assert_eq!(n, 0, "nothing linked to the attacker's account");
    let (_, ids) = app.get_as("/v1/me/identities", &attacker.session).await;
    assert_eq!(ids, json!([]));

    // A verified local account and a provider that verified the email: joined.
    let bob = sign_up(&app, "bob@example.com").await;
    sqlx::query("UPDATE users SET email_verified_at = now() WHERE id = $1")
        .bind(bob.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let (_, landed) =
        hosted_sign_in(&app, &op, "sub-bob", json!({"email": "BOB@example.com", "email_verified": true})).await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    let (_, me) = app.get_as("/v1/me", &session_of(&landed).unwrap()).await;
    assert_eq!(me["id"], bob.id.to_string());
    let how: Value =
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'auth.identity_linked' AND on_behalf_of = $1")
            .bind(bob.id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(how["by"], "verified_email");

    // `"true"` as a string is not a verified email; nor is `false` or its absence.
    let carol = sign_up(&app, "carol@example.com").await;
    sqlx::query("UPDATE users SET email_verified_at = now() WHERE id = $1")
        .bind(carol.id)
        .execute(&app.pool)
        .await
        .unwrap();
    for verified in [json!("true"), json!(false), Value::Null] {
        let mut c = json!({"email": "carol@example.com"});
        if !verified.is_null() {
            c["email_verified"] = verified.clone();
        }
        let (_, landed) = hosted_sign_in(&app, &op, "sub-carol", c).await;
        assert_eq!(landed.status, 409, "email_verified = {verified}");
    }

    // Unverified at the provider and no account: a new, unverified account.
    let (_, landed) =
        hosted_sign_in(&app, &op, "sub-dan", json!({"email": "dan@example.com", "email_verified": "true"})).await;
    let (_, me) = app.get_as("/v1/me", &session_of(&landed).unwrap()).await;
    assert_eq!((me["email"].as_str(), me["email_verified"].as_bool()), (Some("dan@example.com"), Some(false)));
    // No email shared: refused with a clear code.
    let (_, landed) = hosted_sign_in(&app, &op, "sub-noemail", json!({"name": "Nobody"})).await;
    assert_eq!(landed.status, 422);

    // The owner of the attacked address signs in to their account and links from there
    // (the app flow: our own PKCE between the app and Carmenta).
    let (_, challenge) = pkce();
    let r = app
        .call(Method::POST, "/v1/me/identities/local/start")
        .by(&attacker.session)
        .json(
            &json!({"redirect_url": "/auth/signed-in", "code_challenge": challenge, "code_challenge_method": "plain"}),
        )
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "pkce_s256_required");
    op.next_login("sub-victim", json!({"email": "victim@example.com", "email_verified": true})).await;
    let b = Browser::new();
    let (code, verifier) = link_code(&app, &b, &attacker.session).await;
    // Someone else's session cannot finish it, even with the right verifier (and the
    // code is single-use: that attempt spent it).
    assert_eq!(envelope(exchange_link(&app, &bob.session, &code, &verifier).await).await.1, "invalid_grant");
    assert_eq!(envelope(exchange_link(&app, &attacker.session, &code, &verifier).await).await.1, "invalid_grant");
    // Nor does a wrong verifier.
    let (code, _) = link_code(&app, &b, &attacker.session).await;
    let (wrong, _) = pkce();
    assert_eq!(envelope(exchange_link(&app, &attacker.session, &code, &wrong).await).await.1, "invalid_grant");
    let (code, verifier) = link_code(&app, &b, &attacker.session).await;
    let r = exchange_link(&app, &attacker.session, &code, &verifier).await;
    assert_eq!(r.status(), 201);
    let linked: Value = r.json().await.unwrap();
    // The identity now signs in to that account; it cannot be linked to another.
    let (_, landed) =
        hosted_sign_in(&app, &op, "sub-victim", json!({"email": "victim@example.com", "email_verified": true})).await;
    let (_, me) = app.get_as("/v1/me", &session_of(&landed).unwrap()).await;
    assert_eq!(me["id"], attacker.id.to_string());
    op.next_login("sub-victim", json!({"email": "victim@example.com", "email_verified": true})).await;
    let (code, verifier) = link_code(&app, &Browser::new(), &bob.session).await;
    assert_eq!(envelope(exchange_link(&app, &bob.session, &code, &verifier).await).await.1, "identity_taken");

    // Unlinking: another user's identity is a 404; a social-only account keeps its last way in.
    let ident = linked["id"].as_str().unwrap();
    let r = app.call(Method::DELETE, &format!("/v1/me/identities/{ident}")).by(&bob.session).send().await;
    assert_eq!(envelope(r).await.0, 404);
    let dan_session = {
        let (_, landed) = hosted_sign_in(&app, &op, "sub-dan", json!({"email": "dan@example.com"})).await;
        session_of(&landed).unwrap()
    };
    let (_, dan_ids) = app.get_as("/v1/me/identities", &dan_session).await;
    let r = app
        .call(Method::DELETE, &format!("/v1/me/identities/{}", dan_ids[0]["id"].as_str().unwrap()))
        .by(&dan_session)
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "last_sign_in_method");
    // With a password, the identity can go.
    let r = app.call(Method::DELETE, &format!("/v1/me/identities/{ident}")).by(&attacker.session).send().await;
    assert_eq!(r.status(), 204);
    let r = app
        .call(Method::POST, "/v1/auth/sign-in")
        .json(&json!({"email": "victim@example.com", "password": PW}))
        .send()
        .await;
    assert_eq!(r.status(), 200, "the account owner's password still signs in");
}

#[tokio::test]
async fn an_app_signs_in_with_its_own_pkce() {
    let (app, op, _) = setup().await;
    let (verifier, challenge) = pkce();
    // A bad redirect or challenge is refused before anything is stored.
    let r = app
        .call(Method::POST, "/v1/auth/social/local/start")
        .json(&json!({"redirect_url": "https://evil.example/cb", "code_challenge": challenge, "code_challenge_method": "S256"}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "invalid_redirect_url");
    let r = app
        .call(Method::POST, "/v1/auth/social/local/start")
        .json(&json!({"redirect_url": "/done", "code_challenge": "short", "code_challenge_method": "S256"}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "invalid_code_challenge");
    let r = app
        .call(Method::POST, "/v1/auth/social/nope/start")
        .json(&json!({"redirect_url": "/done", "code_challenge": challenge, "code_challenge_method": "S256"}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "unknown_provider");
    let (s, started) = app
        .call(Method::POST, "/v1/auth/social/local/start")
        .json(&json!({"redirect_url": "/done?x=1", "code_challenge": challenge, "code_challenge_method": "S256"}))
        .reply()
        .await;
    assert_eq!(s, 200, "{started}");
    op.next_login("sub-app", json!({"email": "app@example.com", "email_verified": true})).await;
    let back = Browser::new().walk(started["authorization_url"].as_str().unwrap(), |u| u.path() == "/done").await;
    assert_eq!(back.url.query_pairs().find(|(k, _)| k == "x").map(|(_, v)| v.to_string()).as_deref(), Some("1"));
    let code = back.url.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.to_string()).unwrap();
    let r = app
        .call(Method::POST, "/v1/auth/social/exchange")
        .json(&json!({"code": code, "code_verifier": verifier}))
        .send()
        .await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["user"]["email"], "app@example.com");
    // The code works once.
    let r = app
        .call(Method::POST, "/v1/auth/social/exchange")
        .json(&json!({"code": code, "code_verifier": verifier}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "invalid_grant");
    // A sign-in code cannot finish a link.
    let (verifier, challenge) = pkce();
    let (_, started) = app
        .call(Method::POST, "/v1/auth/social/local/start")
        .json(&json!({"redirect_url": "/done", "code_challenge": challenge, "code_challenge_method": "S256"}))
        .reply()
        .await;
    let back = Browser::new().walk(started["authorization_url"].as_str().unwrap(), |u| u.path() == "/done").await;
    let code = back.url.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.to_string()).unwrap();
    let r = app
        .call(Method::POST, "/v1/me/identities/exchange")
        .by(b["session_token"].as_str().unwrap())
        .json(&json!({"code": code, "code_verifier": verifier}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "invalid_grant");
}

/// A local server speaking GitHub's OAuth web flow and REST API as GitHub
/// Enterprise Server lays them out (`/login/oauth/*`, `/api/v3/*`): codes bound
/// to the PKCE challenge and redirect URI, errors as `200 {"error": …}` the way
/// GitHub answers, the primary email's `verified` flag set by the test.
mod github {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Redirect, Response};
    use axum::routing::{get, post};
    use axum::{Form, Json, Router};
    use base64::Engine;
    use serde_json::json;
    use sha2::Digest;

    #[derive(Default)]
    pub struct Gh {
        codes: HashMap<String, (String, String)>,
        pub primary_verified: bool,
        pub token_requests: Vec<HashMap<String, String>>,
    }

    pub type Shared = Arc<Mutex<Gh>>;

    async fn authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
        if q.get("client_id").map(String::as_str) != Some("gh-client")
            || q.get("code_challenge_method").map(String::as_str) != Some("S256")
        {
            return (StatusCode::BAD_REQUEST, "bad request").into_response();
        }
        let code = format!("ghc_{}", uuid::Uuid::new_v4().simple());
        let redirect = q["redirect_uri"].clone();
        s.lock().unwrap().codes.insert(code.clone(), (q["code_challenge"].clone(), redirect.clone()));
        Redirect::to(&format!("{redirect}?code={code}&state={}", q["state"])).into_response()
    }

    async fn token(State(s): State<Shared>, Form(f): Form<HashMap<String, String>>) -> Json<serde_json::Value> {
        let mut g = s.lock().unwrap();
        g.token_requests.push(f.clone());
        let Some((challenge, redirect)) = g.codes.remove(f.get("code").map(String::as_str).unwrap_or("")) else {
            return Json(json!({"error": "bad_verification_code"}));
        };
        let verifier = f.get("code_verifier").cloned().unwrap_or_default();
        let computed =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let ok = f.get("client_secret").map(String::as_str) == Some("gh-secret")
            && f.get("redirect_uri") == Some(&redirect)
            && computed == challenge;
        if !ok {
            return Json(json!({"error": "incorrect_client_credentials"}));
        }
        Json(json!({"access_token": "gho_test", "token_type": "bearer", "scope": "read:user,user:email"}))
    }

    fn authorized(h: &HeaderMap) -> bool {
        h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer gho_test") && h.contains_key("user-agent")
    }

    async fn user(h: HeaderMap) -> Response {
        if !authorized(&h) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        Json(json!({"id": 4242, "login": "octo", "name": null})).into_response()
    }

    async fn emails(State(s): State<Shared>, h: HeaderMap) -> Response {
        if !authorized(&h) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let verified = s.lock().unwrap().primary_verified;
        Json(json!([
            {"email": "elsewhere@example.com", "primary": false, "verified": true},
            {"email": "octo@example.com", "primary": true, "verified": verified},
        ]))
        .into_response()
    }

    pub async fn start() -> (String, Shared) {
        let shared: Shared = Default::default();
        let router = Router::new()
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(token))
            .route("/api/v3/user", get(user))
            .route("/api/v3/user/emails", get(emails))
            .with_state(shared.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, router).await });
        (base, shared)
    }
}

#[tokio::test]
async fn github_enterprise_sign_in_uses_the_primary_email_and_its_verified_flag() {
    let (gh, shared) = github::start().await;
    let app = TestApp::builder()
        .config(|c| {
            c.social.push(carmenta::config::SocialProviderConfig {
                id: "github".into(),
                client_id: "gh-client".into(),
                client_secret: carmenta::config::Secret::new("gh-secret".to_string()),
                discovery_url: None,
                base_url: Some(gh.parse().unwrap()),
                scopes: None,
                name: None,
            })
        })
        .spawn()
        .await;
    // A verified local account with the address GitHub lists as primary but unverified.
    let local = sign_up(&app, "octo@example.com").await;
    sqlx::query("UPDATE users SET email_verified_at = now() WHERE id = $1")
        .bind(local.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let walk = || async { Browser::new().walk(&app.url("/auth/social/github"), |_| false).await };
    let landed = walk().await;
    assert_eq!(landed.status, 409, "GitHub's primary email can be unverified: no link ({})", landed.body);
    // The provider saw Carmenta's client secret in the body and a PKCE verifier.
    {
        let g = shared.lock().unwrap();
        let req = g.token_requests.last().unwrap();
        assert!(
            req.contains_key("code_verifier")
                && req["client_id"] == "gh-client"
                && req["grant_type"] == "authorization_code"
        );
    }
    shared.lock().unwrap().primary_verified = true;
    let landed = walk().await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    let (_, me) = app.get_as("/v1/me", &session_of(&landed).unwrap()).await;
    assert_eq!(me["id"], local.id.to_string());
    let (_, ids) = app.get_as("/v1/me/identities", &local.session).await;
    assert_eq!((ids[0]["provider"].as_str(), ids[0]["subject"].as_str()), (Some("github"), Some("4242")));
    // The configured provider is listed (read-only through the API).
    let (key, _) = carmenta::auth::service::create_service_key(&app.pool, "backend", true).await.unwrap();
    let (_, list) = app.get_as("/v1/auth/social-providers", &key).await;
    assert_eq!(
        (list[0]["source"].as_str(), list[0]["base_url"].as_str()),
        (Some("config"), Some(format!("{gh}/").as_str()))
    );
    let r = app
        .call(Method::PUT, "/v1/auth/social-providers/github")
        .by(&key)
        .json(&json!({"client_id": "x"}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "configured_provider");
}
