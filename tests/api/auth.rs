//! Auth: sign-up/in, sessions, access tokens and JWKS, rejections of forged tokens,
//! lockout and rate limits, CSRF, profile, service keys, account deletion, audit.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{PASSWORD as PW, TestApp, envelope, eventually, sign_up, test_routes};
use reqwest::Method;

/// A signed-up user.
async fn sign_in(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.call(Method::POST, "/v1/auth/sign-in").json(&json!({"email": email, "password": password})).send().await
}

async fn me(app: &TestApp, bearer: &str) -> reqwest::Response {
    app.call(Method::GET, "/v1/me").by(bearer).send().await
}

#[tokio::test]
async fn sign_up_sign_in_and_every_credential_kind() {
    let app = TestApp::spawn().await;
    let r = app.call(Method::POST, "/v1/auth/sign-up").json(&json!({"email": "Alice@Example.com", "password": PW, "name": "Alice", "unsafe_metadata": {"theme": "dark"}})).send().await;
    assert_eq!(r.status(), 201);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("carmenta_session=cs_") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain-http public URL: no Secure flag");
    let b: Value = r.json().await.unwrap();
    for k in ["session_token", "access_token", "expires_at", "session_expires_at"] {
        assert!(b[k].is_string(), "{k} in {b}");
    }
    assert_eq!(b["user"]["email"], "Alice@Example.com");
    assert_eq!(b["user"]["unsafe_metadata"]["theme"], "dark");
    assert!(b["user"].get("private_metadata").is_none());
    let session = b["session_token"].as_str().unwrap();
    let jwt = b["access_token"].as_str().unwrap();

    // JWT, session bearer and cookie all identify the user.
    for bearer in [jwt, session] {
        let r = me(&app, bearer).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["name"], "Alice");
    }
    let cookie_pair = cookie.split(';').next().unwrap();
    let r = app.call(Method::GET, "/v1/me").header("cookie", cookie_pair).send().await;
    assert_eq!(r.status(), 200);

    // Emails are unique case-insensitively; sign-in is case-insensitive.
    let r = app
        .call(Method::POST, "/v1/auth/sign-up")
        .json(&json!({"email": "alice@EXAMPLE.com", "password": PW}))
        .send()
        .await;
    let (s, code, _, _) = envelope(r).await;
    assert_eq!((s, code.as_str()), (409, "email_taken"));
    let r = sign_in(&app, "ALICE@example.com", PW).await;
    assert_eq!(r.status(), 200);

    // No credentials.
    let (s, code, _, _) = envelope(app.get("/v1/me").await).await;
    assert_eq!((s, code.as_str()), (401, "unauthorized"));
    let r = app.call(Method::GET, "/v1/me").header("authorization", "Basic Zm9vOmJhcg==").send().await;
    assert_eq!(r.status(), 401);
    // Hashes, not tokens, are stored.
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT token_hash FROM sessions").fetch_all(&app.pool).await.unwrap();
    assert!(stored.iter().all(|h| h.len() == 32 && !String::from_utf8_lossy(h).contains("cs_")));
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users").fetch_one(&app.pool).await.unwrap();
    assert!(hash.starts_with("$argon2id$"));
}

#[tokio::test]
async fn bad_input_is_refused_with_stable_codes() {
    let app = TestApp::builder().config(|c| c.body_limit = 64 * 1024).spawn().await;
    for email in [
        "",
        "plainaddress",
        "@example.com",
        "a@",
        "a@b",
        "a b@example.com",
        "a@exa mple.com",
        "a@-x.com",
        "a\u{0}@x.com",
    ] {
        let r = app.call(Method::POST, "/v1/auth/sign-up").json(&json!({"email": email, "password": PW})).send().await;
        let (s, code, _, _) = envelope(r).await;
        // NUL is refused before the body is read as a request (any field, any route).
        let want = if email.contains('\0') { (400, "invalid_text") } else { (422, "invalid_email") };
        assert_eq!((s, code.as_str()), want, "{email:?}");
    }
    for pw in ["short", "password123", "qwertyuiop", "bob@example.com"] {
        let r = app
            .call(Method::POST, "/v1/auth/sign-up")
            .json(&json!({"email": "bob@example.com", "password": pw}))
            .send()
            .await;
        let (s, code, _, _) = envelope(r).await;
        assert_eq!((s, code.as_str()), (422, "weak_password"), "{pw:?}");
    }
    let r = app
        .call(Method::POST, "/v1/auth/sign-up")
        .json(&json!({"email": "bob@example.com", "password": PW, "role": "admin"}))
        .send()
        .await;
    let (s, code, _, _) = envelope(r).await;
    assert_eq!((s, code.as_str()), (422, "invalid_body"), "unknown fields are refused");
    let huge = json!({"email": "bob@example.com", "password": "x".repeat(100_000)});
    let r = app.call(Method::POST, "/v1/auth/sign-up").json(&huge).send().await;
    let (s, code, _, _) = envelope(r).await;
    assert_eq!((s, code.as_str()), (413, "payload_too_large"));
    let r = app
        .call(Method::POST, "/v1/auth/sign-in")
        .body("not json")
        .header("content-type", "application/json")
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "invalid_json");
    // A long password at sign-in is refused before hashing, like a wrong one.
    let r = sign_in(&app, "bob@example.com", &"y".repeat(5000)).await;
    assert_eq!(envelope(r).await.1, "invalid_credentials");
}

#[tokio::test]
async fn wrong_password_and_unknown_email_look_the_same() {
    let app = TestApp::spawn().await;
    sign_up(&app, "carol@example.com").await;
    let a = envelope(sign_in(&app, "carol@example.com", "wrong password here").await).await;
    let b = envelope(sign_in(&app, "nobody@example.com", "wrong password here").await).await;
    assert_eq!((a.0, &a.1, &a.2), (b.0, &b.1, &b.2));
    assert_eq!((a.0, a.1.as_str()), (401, "invalid_credentials"));
}

#[tokio::test]
async fn lockout_after_repeated_failures_even_for_unknown_emails() {
    let app = TestApp::builder()
        .config(|c| {
            c.lockout_threshold = 3;
            c.lockout_duration = Duration::from_secs(2);
        })
        .spawn()
        .await;
    sign_up(&app, "dave@example.com").await;
    for email in ["dave@example.com", "ghost@example.com"] {
        for _ in 0..3 {
            assert_eq!(sign_in(&app, email, "not the password").await.status(), 401);
        }
        let (s, code, msg, _) = envelope(sign_in(&app, email, PW).await).await;
        assert_eq!((s, code.as_str()), (429, "too_many_attempts"), "{email}");
        assert!(!msg.contains(email));
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(sign_in(&app, "dave@example.com", PW).await.status(), 200, "lock expires");
    // Failures are counted in PostgreSQL, shared by replicas.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_lockouts").fetch_one(&app.pool).await.unwrap();
    assert_eq!(rows, 2, "ghost's rows (the account, and the account from this address) remain; dave's were cleared");
}

#[tokio::test]
async fn per_ip_limit() {
    let app = TestApp::builder().config(|c| c.signin_ip_limit = 4).spawn().await;
    for _ in 0..4 {
        assert_eq!(sign_in(&app, "x@example.com", "whatever-pass").await.status(), 401);
    }
    let (s, code, _, _) = envelope(sign_in(&app, "y@example.com", "whatever-pass").await).await;
    assert_eq!((s, code.as_str()), (429, "rate_limited"));
}

#[tokio::test]
async fn sessions_list_revoke_and_sign_out() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "erin@example.com").await;
    let r = app
        .call(Method::POST, "/v1/auth/sign-in")
        .header("user-agent", "second-device/1.0")
        .json(&json!({"email": "erin@example.com", "password": PW}))
        .send()
        .await;
    let second: Value = r.json().await.unwrap();
    let second_token = second["session_token"].as_str().unwrap().to_string();

    let (status, list) = app.get_as("/v1/me/sessions", &a.session).await;
    assert_eq!(status, 200, "{list}");
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data.iter().filter(|s| s["current"] == true).count(), 1);
    let other = data.iter().find(|s| s["current"] == false).unwrap();
    assert_eq!(other["user_agent"], "second-device/1.0");
    assert_eq!(other["ip"], "127.0.0.1");
    let other_id = other["id"].as_str().unwrap().to_string();

    // Another user cannot see or revoke it.
    let b = sign_up(&app, "frank@example.com").await;
    let (status, list_b) = app.get_as("/v1/me/sessions", &b.jwt).await;
    assert_eq!(status, 200, "{list_b}");
    assert_eq!(list_b["data"].as_array().unwrap().len(), 1);
    let r = app.call(Method::DELETE, &format!("/v1/me/sessions/{other_id}")).by(&b.jwt).send().await;
    let (s, code, _, _) = envelope(r).await;
    assert_eq!((s, code.as_str()), (404, "not_found"));
    assert_eq!(me(&app, &second_token).await.status(), 200);
    assert_eq!(app.delete_as("/v1/me/sessions/not-a-uuid", &a.jwt).await.0, 404);

    // The owner revokes it; its token stops working.
    assert_eq!(app.delete_as(&format!("/v1/me/sessions/{other_id}"), &a.jwt).await.0, 204);
    let (s, code, _, _) = envelope(me(&app, &second_token).await).await;
    assert_eq!((s, code.as_str()), (401, "invalid_session"));

    // Sign out of this session.
    let r = app.call(Method::POST, "/v1/auth/sign-out").by(&a.session).send().await;
    assert_eq!(r.status(), 204);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(me(&app, &a.session).await.status(), 401);

    // Sign out everywhere.
    let s1: Value = sign_in(&app, "frank@example.com", PW).await.json().await.unwrap();
    assert_eq!(app.post_as("/v1/auth/sign-out", &b.session, &json!({"all": true})).await.0, 204);
    assert_eq!(me(&app, &b.session).await.status(), 401);
    assert_eq!(me(&app, s1["session_token"].as_str().unwrap()).await.status(), 401);
}

#[tokio::test]
async fn token_exchange_and_jwt_without_database() {
    let app = TestApp::builder().routes(test_routes()).spawn().await;
    let u = sign_up(&app, "gina@example.com").await;
    let r = app.call(Method::POST, "/v1/auth/token").by(&u.session).send().await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    let jwt = t["access_token"].as_str().unwrap().to_string();
    // An access token cannot mint another.
    let r = app.call(Method::POST, "/v1/auth/token").by(&jwt).send().await;
    assert_eq!(envelope(r).await.1, "session_required");

    // A JWT's session is checked (revocation is immediate); while it is cached,
    // with no query. With the database gone (and the cache, which lives only while
    // its invalidation listener is connected) a session cannot be checked: refused.
    let r = app.call(Method::GET, "/test/whoami").by(&jwt).send().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["user_id"], u.id.to_string());
    app.pool.close().await;
    let r = app.call(Method::GET, "/test/whoami").by(&jwt).send().await;
    assert_eq!(r.status(), 503, "fails closed");
    let r = app.call(Method::GET, "/test/whoami").by(&u.session).send().await;
    assert!(r.status().is_server_error());
}

fn forge(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64URL.encode(serde_json::to_vec(header).unwrap()),
        B64URL.encode(serde_json::to_vec(claims).unwrap()),
        B64URL.encode(sig)
    )
}

/// Reloads the app's signing keys and returns the published JWKS.
async fn refreshed_jwks(app: &TestApp) -> Value {
    app.state.auth.keys.refresh(&app.pool, &app.state.keyring).await.unwrap();
    app.get("/.well-known/jwks.json").await.json().await.unwrap()
}

/// Signs `claims` with the app's active signing key (read from the database).
async fn sign_with_app_key(app: &TestApp, claims: &Value, kid: Option<&str>) -> String {
    let (real_kid, sealed): (String, Vec<u8>) =
        sqlx::query_as("SELECT kid, private_key FROM auth_signing_keys WHERE retired_at IS NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let seed = app.state.keyring.decrypt(&sealed, real_kid.as_bytes()).unwrap();
    let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(&seed);
    let key = jsonwebtoken::EncodingKey::from_ed_der(&der);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.unwrap_or(&real_kid).to_string());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[tokio::test]
async fn forged_and_invalid_tokens_are_rejected() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "hank@example.com").await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let iss = app.state.config.issuer();
    let sid: Uuid =
        sqlx::query_scalar("SELECT id FROM sessions WHERE user_id = $1").bind(u.id).fetch_one(&app.pool).await.unwrap();
    let good = json!({"sub": u.id.to_string(), "sid": sid.to_string(), "iss": iss, "aud": "carmenta",
                      "exp": now + 300, "iat": now, "nbf": now, "jti": "x"});
    // Sanity: a correctly signed token with these claims is accepted.
    let ok = sign_with_app_key(&app, &good, None).await;
    assert_eq!(me(&app, &ok).await.status(), 200);

    let kid = jsonwebtoken::decode_header(&u.jwt).unwrap().kid.unwrap();
    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    cases.push(("alg none", forge(&json!({"alg": "none", "typ": "JWT", "kid": kid}), &good, b""), "invalid_token"));
    // HS256 keyed with the public key (the classic confusion attack).
    let jwks: Value = app.get("/.well-known/jwks.json").await.json().await.unwrap();
    let public_x = jwks["keys"][0]["x"].as_str().unwrap().to_string();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid.clone());
    let hs_token =
        jsonwebtoken::encode(&hs, &good, &jsonwebtoken::EncodingKey::from_secret(public_x.as_bytes())).unwrap();
    cases.push(("HS256 with public key", hs_token, "invalid_token"));
    cases.push(("unknown kid", sign_with_app_key(&app, &good, Some("no-such-kid")).await, "invalid_token"));
    let mut c = good.clone();
    c["exp"] = json!(now - 60);
    c["iat"] = json!(now - 400);
    c["nbf"] = json!(now - 400);
    cases.push(("expired", sign_with_app_key(&app, &c, None).await, "token_expired"));
    let mut c = good.clone();
    c["aud"] = json!("someone-else");
    cases.push(("wrong aud", sign_with_app_key(&app, &c, None).await, "invalid_token"));
    let mut c = good.clone();
    c["iss"] = json!("https://evil.example");
    cases.push(("wrong iss", sign_with_app_key(&app, &c, None).await, "invalid_token"));
    let mut c = good.clone();
    c["nbf"] = json!(now + 3600);
    cases.push(("not yet valid", sign_with_app_key(&app, &c, None).await, "invalid_token"));
    // Tampered payload: the real token with another subject spliced in.
    let parts: Vec<&str> = u.jwt.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = json!(Uuid::new_v4().to_string());
    let tampered = format!("{}.{}.{}", parts[0], B64URL.encode(serde_json::to_vec(&payload).unwrap()), parts[2]);
    cases.push(("tampered", tampered, "invalid_token"));
    cases.push(("garbage", "a.b.c".into(), "invalid_token"));
    cases.push(("not a jwt", "hello".into(), "invalid_token"));
    for (name, token, want) in cases {
        let (s, code, _, _) = envelope(me(&app, &token).await).await;
        assert_eq!((s, code.as_str()), (401, want), "{name}");
    }
}

#[tokio::test]
async fn jwks_verifies_with_an_independent_library_and_survives_rotation() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "ivy@example.com").await;
    let disco: Value = app.get("/.well-known/openid-configuration").await.json().await.unwrap();
    assert_eq!(disco["issuer"], app.state.config.issuer());
    let jwks_url = disco["jwks_uri"].as_str().unwrap().to_string();
    // The public URL in tests is the default; point jose at the real address.
    let jwks_url = jwks_url.replace(&app.state.config.issuer(), &app.base);
    let verify = |token: String| {
        let url = jwks_url.clone();
        let iss = app.state.config.issuer();
        async move {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node");
            tokio::process::Command::new("node")
                .arg("verify-jwt.mjs")
                .args([&url, &token, &iss, "carmenta"])
                .current_dir(dir)
                .output()
                .await
                .unwrap()
        }
    };
    let out = verify(u.jwt.clone()).await;
    assert!(out.status.success(), "jose rejected our token: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["payload"]["sub"], u.id.to_string());
    assert_eq!(v["header"]["alg"], "EdDSA");
    for claim in ["sub", "sid", "iss", "aud", "exp", "iat", "nbf", "jti"] {
        assert!(!v["payload"][claim].is_null(), "{claim}");
    }
    // jose refuses a tampered token.
    // (Flip a character inside the signature: the last one partly encodes padding.)
    let mut chars: Vec<char> = u.jwt.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let bad: String = chars.into_iter().collect();
    assert!(!verify(bad).await.status.success());

    // Rotation: new tokens use the new key; old ones stay valid and published.
    let old_kid = jsonwebtoken::decode_header(&u.jwt).unwrap().kid.unwrap();
    let new_kid = carmenta::auth::tokens::rotate(&app.pool, &app.state.keyring).await.unwrap();
    let jwks = refreshed_jwks(&app).await;
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()), "{kids:?}");
    let t: Value = app.call(Method::POST, "/v1/auth/token").by(&u.session).value().await;
    let fresh = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(jsonwebtoken::decode_header(&fresh).unwrap().kid.unwrap(), new_kid);
    assert_eq!(me(&app, &u.jwt).await.status(), 200, "old token still verifies");
    assert!(verify(fresh).await.status.success());
    // Once past the grace period the old key is no longer published.
    sqlx::query("UPDATE auth_signing_keys SET retired_at = now() - interval '1 day' WHERE kid = $1")
        .bind(&old_kid)
        .execute(&app.pool)
        .await
        .unwrap();
    let jwks = refreshed_jwks(&app).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(envelope(me(&app, &u.jwt).await).await.1, "invalid_token");
    // Private key material is stored encrypted.
    let sealed: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT private_key FROM auth_signing_keys").fetch_all(&app.pool).await.unwrap();
    assert!(sealed.iter().all(|s| s[0] == 1 && s.len() == 1 + 4 + 12 + 32 + 16));
}

#[tokio::test]
async fn csrf_protects_cookie_writes() {
    let app = TestApp::spawn().await;
    let r = app
        .call(Method::POST, "/v1/auth/sign-up")
        .json(&json!({"email": "jo@example.com", "password": PW}))
        .send()
        .await;
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let jwt = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let patch = |origin: Option<&str>| {
        let mut rb = app.client.patch(app.url("/v1/me")).header("cookie", &cookie).json(&json!({"name": "Jo"}));
        if let Some(o) = origin {
            rb = rb.header("origin", o);
        }
        rb.send()
    };
    let (s, code, _, _) = envelope(patch(None).await.unwrap()).await;
    assert_eq!((s, code.as_str()), (403, "csrf_failed"));
    let (s, code, _, _) = envelope(patch(Some("https://evil.example")).await.unwrap()).await;
    assert_eq!((s, code.as_str()), (403, "csrf_failed"));
    let own = app.state.config.public_url.origin().ascii_serialization();
    assert_eq!(patch(Some(&own)).await.unwrap().status(), 200);
    // Reads with a cookie need no origin; bearer writes need none either.
    assert_eq!(app.call(Method::GET, "/v1/me").header("cookie", &cookie).send().await.status(), 200);
    assert_eq!(app.patch_as("/v1/me", &jwt, &json!({"name": "Jo2"})).await.0, 200);
    // Login CSRF: a foreign origin cannot post credentials.
    let r = app
        .call(Method::POST, "/v1/auth/sign-in")
        .header("origin", "https://evil.example")
        .json(&json!({"email": "jo@example.com", "password": PW}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "csrf_failed");
}

#[tokio::test]
async fn profile_and_metadata() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "kim@example.com").await;
    let patch = |body: Value| app.client.patch(app.url("/v1/me")).bearer_auth(&u.jwt).json(&body).send();
    let r =
        patch(json!({"name": "Kim", "image_url": "https://img.example/k.png", "unsafe_metadata": {"onboarded": true}}))
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["name"].as_str(), v["unsafe_metadata"]["onboarded"].as_bool()), (Some("Kim"), Some(true)));
    let r = patch(json!({"name": null})).await.unwrap();
    assert!(r.json::<Value>().await.unwrap()["name"].is_null());
    for (body, code, status) in [
        (json!({"image_url": "javascript:alert(1)"}), "invalid_image_url", 422),
        (json!({"unsafe_metadata": {"big": "x".repeat(9000)}}), "metadata_too_large", 422),
        (json!({"unsafe_metadata": [1, 2]}), "invalid_metadata", 422),
        (json!({"public_metadata": {"plan": "pro"}}), "forbidden", 403),
        (json!({"name": "n".repeat(300)}), "invalid_name", 422),
    ] {
        let (s, c, _, _) = envelope(patch(body.clone()).await.unwrap()).await;
        assert_eq!((s, c.as_str()), (status, code), "{body}");
    }
}

#[tokio::test]
async fn service_keys_scope_act_as_and_audit() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "lee@example.com").await;
    let (full, row) = carmenta::auth::service::create_service_key(&app.pool, "backend", true).await.unwrap();
    assert!(full.starts_with("ck_"));
    assert_eq!(row.scope, "full");
    let (read, _) = carmenta::auth::service::create_service_key(&app.pool, "reporting", false).await.unwrap();
    // Stored hashed.
    let hashes: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT key_hash FROM service_keys").fetch_all(&app.pool).await.unwrap();
    assert!(hashes.iter().all(|h| h.len() == 32));

    // A service key must name the user for user endpoints.
    let (s, code, _, _) = envelope(me(&app, &full).await).await;
    assert_eq!((s, code.as_str()), (400, "user_required"));
    let as_user = |key: &str, user: &str| {
        app.client.get(app.url("/v1/me")).bearer_auth(key).header("x-carmenta-user-id", user).send()
    };
    let r = as_user(&full, &u.id.to_string()).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["private_metadata"].is_object(), "service keys see private metadata");
    let (s, _, _, _) = envelope(as_user(&full, &Uuid::new_v4().to_string()).await.unwrap()).await;
    assert_eq!(s, 404);
    let (s, code, _, _) = envelope(as_user(&full, "not-a-uuid").await.unwrap()).await;
    assert_eq!((s, code.as_str()), (400, "invalid_user_id"));
    // Users cannot impersonate.
    let r = app
        .call(Method::GET, "/v1/me")
        .by(&u.jwt)
        .header("x-carmenta-user-id", Uuid::new_v4().to_string())
        .send()
        .await;
    assert_eq!(r.status(), 403);

    // Service keys may set backend metadata; read-only keys may not write.
    let r = app
        .call(Method::PATCH, "/v1/me")
        .acting_for(&full, u.id)
        .json(&json!({"public_metadata": {"plan": "pro"}, "private_metadata": {"stripe": "cus_1"}}))
        .send()
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(as_user(&read, &u.id.to_string()).await.unwrap().status(), 200);
    let r = app.call(Method::PATCH, "/v1/me").acting_for(&read, u.id).json(&json!({"name": "x"})).send().await;
    let (s, code, _, _) = envelope(r).await;
    assert_eq!((s, code.as_str()), (403, "insufficient_scope"));
    // The user sees public, not private, metadata.
    let v: Value = me(&app, &u.jwt).await.json().await.unwrap();
    assert_eq!(v["public_metadata"]["plan"], "pro");
    assert!(v.get("private_metadata").is_none());
    // A revoked or unknown key fails.
    carmenta::auth::db::revoke_service_key(&app.pool, "backend").await.unwrap();
    assert_eq!(envelope(as_user(&full, &u.id.to_string()).await.unwrap()).await.1, "invalid_token");

    let acted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'service_key.act_as' AND on_behalf_of = $1")
            .bind(u.id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(acted >= 3, "{acted}");
}

#[tokio::test]
async fn password_change_revokes_other_sessions() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "max@example.com").await;
    let other: Value = sign_in(&app, "max@example.com", PW).await.json().await.unwrap();
    let change = |cur: &str, new: &str| {
        app.client
            .post(app.url("/v1/me/password"))
            .bearer_auth(&u.session)
            .json(&json!({"current_password": cur, "new_password": new}))
            .send()
    };
    assert_eq!(envelope(change("wrong one!", "a brand new passphrase").await.unwrap()).await.1, "invalid_credentials");
    assert_eq!(envelope(change(PW, "password1").await.unwrap()).await.1, "weak_password");
    assert_eq!(change(PW, "a brand new passphrase").await.unwrap().status(), 204);
    assert_eq!(me(&app, &u.session).await.status(), 200, "this session stays");
    assert_eq!(me(&app, other["session_token"].as_str().unwrap()).await.status(), 401, "others are revoked");
    assert_eq!(sign_in(&app, "max@example.com", PW).await.status(), 401);
    assert_eq!(sign_in(&app, "max@example.com", "a brand new passphrase").await.status(), 200);
}

#[tokio::test]
async fn deleting_the_account_deletes_everything_it_owns() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "ned@example.com").await;
    let keep = sign_up(&app, "olga@example.com").await;
    sign_in(&app, "ned@example.com", PW).await;
    assert_eq!(app.delete_as("/v1/me", &u.jwt).await.0, 204);
    // Every column that references users, in every table, holds no trace of ned.
    let refs: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.conrelid::regclass::text, a.attname::text FROM pg_constraint c
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
         WHERE c.contype = 'f' AND c.confrelid = 'users'::regclass",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(refs.iter().any(|(t, _)| t == "sessions"), "{refs:?}");
    for (table, column) in &refs {
        let sql = format!("SELECT count(*) FROM {table} WHERE {column} = $1");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(u.id).fetch_one(&app.pool).await.unwrap();
        assert_eq!(n, 0, "{table}.{column} still references the deleted user");
    }
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE id = $1").bind(u.id).fetch_one(&app.pool).await.unwrap();
    assert_eq!(n, 0);
    assert_eq!(me(&app, &u.session).await.status(), 401);
    assert_eq!(me(&app, &keep.jwt).await.status(), 200, "others are untouched");
}

#[tokio::test]
async fn audit_log_records_security_events() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "pia@example.com").await;
    sign_in(&app, "pia@example.com", "wrong password").await;
    let s: Value = sign_in(&app, "pia@example.com", PW).await.json().await.unwrap();
    let (status, list) = app.get_as("/v1/me/sessions", &u.jwt).await;
    assert_eq!(status, 200, "{list}");
    let sid = list["data"].as_array().unwrap().iter().find(|x| x["current"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.call(Method::DELETE, &format!("/v1/me/sessions/{sid}")).by(&u.jwt).send().await;
    app.call(Method::POST, "/v1/me/password")
        .by(&u.session)
        .json(&json!({"current_password": PW, "new_password": "another good passphrase"}))
        .send()
        .await;
    app.call(Method::POST, "/v1/auth/sign-out").by(&u.session).send().await;
    carmenta::auth::service::create_service_key(&app.pool, "k", true).await.unwrap();
    let _ = s;
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id").fetch_all(&app.pool).await.unwrap();
    for a in [
        "auth.sign_up",
        "auth.sign_in_failed",
        "auth.sign_in",
        "auth.session_revoke",
        "auth.password_change",
        "auth.sign_out",
        "service_key.create",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} missing from {actions:?}");
    }
    let rid: Option<String> = sqlx::query_scalar("SELECT request_id FROM audit_log WHERE action = 'auth.sign_up'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(rid.is_some_and(|r| r.len() == 32), "audit rows carry the request id");
}

#[tokio::test]
async fn caches_are_invalidated_across_replicas() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    assert!(
        eventually(Duration::from_secs(2), || async { a.state.auth.cache.enabled() && b.state.auth.cache.enabled() })
            .await,
        "listeners connected"
    );
    let u = sign_up(&a, "rep@example.com").await;
    // Replica B serves the user (and caches the profile and session).
    for token in [&u.jwt, &u.session] {
        let r = me(&b, token).await;
        assert_eq!(r.status(), 200);
        assert!(r.json::<Value>().await.unwrap()["name"].is_null());
    }
    assert!(b.state.auth.cache.user(u.id).is_some(), "B cached the profile");
    // A change through replica A reaches B's cache.
    a.call(Method::PATCH, "/v1/me").by(&u.jwt).json(&json!({"name": "Renamed"})).send().await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            me(&b, &u.session).await.json::<Value>().await.unwrap()["name"] == "Renamed"
        })
        .await,
        "B still serves the old profile"
    );
    // A session revoked through A stops working on B.
    let r = a.call(Method::POST, "/v1/auth/sign-out").by(&u.session).send().await;
    assert_eq!(r.status(), 204);
    assert!(
        eventually(Duration::from_secs(2), || async { me(&b, &u.session).await.status() == 401 }).await,
        "B still accepts the revoked session"
    );
    // Deleting the user through A: B's cached profile is gone too.
    let t: Value = sign_in(&a, "rep@example.com", PW).await.json().await.unwrap();
    let jwt = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(me(&b, &jwt).await.status(), 200);
    a.call(Method::DELETE, "/v1/me").by(&jwt).send().await;
    assert!(
        eventually(Duration::from_secs(2), || async { me(&b, &jwt).await.status() == 401 }).await,
        "B serves a deleted user"
    );
}
