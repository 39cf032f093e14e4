//! External issuer mode (Clerk): tokens verified against a JWKS served by a real
//! local HTTP server, `azp`/`iss`/skew rules, re-fetch on an unknown `kid`, a pinned
//! PEM key, and Svix-signed webhooks that keep users in sync.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::{TestApp, envelope};
use reqwest::Method;

const PRIVATE_PEM: &str = include_str!("../fixtures/external_rs256.pem");
const PUBLIC_PEM: &str = include_str!("../fixtures/external_rs256.pub.pem");
const JWKS: &str = include_str!("../fixtures/external_jwks.json");
const KID: &str = "ins_test_key_1";
const AZP: &str = "https://app.example.com";

/// A real HTTP server publishing a JWKS that the test can change, counting fetches.
struct JwksServer {
    base: String,
    jwks: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server() -> JwksServer {
    let jwks = Arc::new(Mutex::new(serde_json::from_str::<Value>(JWKS).unwrap()));
    let hits = Arc::new(AtomicUsize::new(0));
    let (j, h) = (jwks.clone(), hits.clone());
    let app = Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let (j, h) = (j.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                axum::Json(j.lock().unwrap().clone())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    JwksServer { base, jwks, hits }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn clerk_token(iss: &str, sub: &str, kid: &str, patch: impl FnOnce(&mut Value)) -> String {
    let n = now();
    let mut claims =
        json!({"sub": sub, "iss": iss, "azp": AZP, "sid": "sess_1", "exp": n + 60, "iat": n, "nbf": n - 5, "v": 2});
    patch(&mut claims);
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_rsa_pem(PRIVATE_PEM.as_bytes()).unwrap()).unwrap()
}

async fn me(app: &TestApp, token: &str) -> reqwest::Response {
    app.call(Method::GET, "/v1/me").by(token).send().await
}

#[tokio::test]
async fn clerk_tokens_against_a_live_jwks() {
    let jwks = jwks_server().await;
    let issuer = jwks.base.clone();
    let app = TestApp::builder()
        .config(|c| {
            c.external_issuer = Some(issuer.clone());
            c.external_azp = vec![AZP.into()];
        })
        .spawn()
        .await;
    let good = clerk_token(&issuer, "user_2abc", KID, |_| {});
    let r = me(&app, &good).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let ext: Option<String> = sqlx::query_scalar("SELECT external_id FROM users").fetch_one(&app.pool).await.unwrap();
    assert_eq!(ext.as_deref(), Some("user_2abc"), "provisioned on first sight");
    assert_eq!(me(&app, &good).await.status(), 200);
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 1, "the JWKS is cached");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&app.pool).await.unwrap();
    assert_eq!(users, 1);

    // Within the 5 s skew is accepted; beyond it is not.
    assert_eq!(me(&app, &clerk_token(&issuer, "user_2abc", KID, |c| c["exp"] = json!(now() - 3))).await.status(), 200);
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", clerk_token(&issuer, "user_2abc", KID, |c| c["exp"] = json!(now() - 30)), "token_expired"),
        ("not yet valid", clerk_token(&issuer, "user_2abc", KID, |c| c["nbf"] = json!(now() + 60)), "invalid_token"),
        (
            "azp not allowed",
            clerk_token(&issuer, "user_2abc", KID, |c| c["azp"] = json!("https://evil.example")),
            "invalid_token",
        ),
        (
            "azp missing",
            clerk_token(&issuer, "user_2abc", KID, |c| {
                c.as_object_mut().unwrap().remove("azp");
            }),
            "invalid_token",
        ),
        ("other issuer", clerk_token("https://other.example", "user_2abc", KID, |_| {}), "invalid_token"),
        ("no sub", clerk_token(&issuer, "", KID, |_| {}), "invalid_token"),
    ];
    for (name, token, code) in cases {
        let (s, c, _, _) = envelope(me(&app, &token).await).await;
        assert_eq!((s, c.as_str()), (401, code), "{name}");
    }
    // HS256 keyed with the public key, and alg none.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(KID.into());
    let claims = json!({"sub": "user_2abc", "iss": issuer, "azp": AZP, "exp": now() + 60});
    let hs = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(PUBLIC_PEM.as_bytes())).unwrap();
    assert_eq!(me(&app, &hs).await.status(), 401);
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let none = format!("{}.{}.", b64u.encode(br#"{"alg":"none","typ":"JWT"}"#), b64u.encode(claims.to_string()));
    assert_eq!(me(&app, &none).await.status(), 401);
    // Tampered payload.
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload: Value = serde_json::from_slice(&b64u.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = json!("user_admin");
    let tampered = format!("{}.{}.{}", parts[0], b64u.encode(payload.to_string()), parts[2]);
    assert_eq!(me(&app, &tampered).await.status(), 401);

    // An unknown kid makes us re-fetch; once the issuer publishes it, it verifies.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let before = jwks.hits.load(Ordering::SeqCst);
    let rotated = clerk_token(&issuer, "user_2abc", "ins_rotated", |_| {});
    assert_eq!(envelope(me(&app, &rotated).await).await.1, "invalid_token");
    assert_eq!(jwks.hits.load(Ordering::SeqCst), before + 1, "re-fetched on an unknown kid");
    {
        let mut j = jwks.jwks.lock().unwrap();
        let mut k = j["keys"][0].clone();
        k["kid"] = json!("ins_rotated");
        j["keys"].as_array_mut().unwrap().push(k);
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(me(&app, &rotated).await.status(), 200);
    // Our own tokens still work beside the external ones.
    let own = crate::harness::sign_up(&app, "local@example.com").await;
    assert_eq!(me(&app, &own.jwt).await.status(), 200);
}

#[tokio::test]
async fn pinned_pem_key_needs_no_network() {
    let app = TestApp::builder()
        .config(|c| {
            c.external_issuer = Some("https://clerk.example.com".into());
            c.external_jwt_key = Some(PUBLIC_PEM.replace('\n', "\\n"));
        })
        .spawn()
        .await;
    let t = clerk_token("https://clerk.example.com", "user_pem", "whatever", |_| {});
    assert_eq!(me(&app, &t).await.status(), 200);
    let forged = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("x".into());
        jsonwebtoken::encode(
            &h,
            &json!({"sub": "user_pem", "iss": "https://clerk.example.com", "exp": now() + 60}),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap()
    };
    assert_eq!(me(&app, &forged).await.status(), 401);
}

fn svix(secret: &str, id: &str, ts: i64, body: &str) -> String {
    let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn clerk_webhooks_keep_users_in_sync() {
    let old = format!("whsec_{}", B64.encode(b"an-old-secret-for-clerk-webhooks"));
    let new = format!("whsec_{}", B64.encode(b"the-new-secret-for-clerk-hooks!!"));
    let issuer = "https://clerk.example.com";
    let (o, n) = (old.clone(), new.clone());
    let app = TestApp::builder()
        .config(move |c| {
            c.external_issuer = Some(issuer.into());
            c.external_jwt_key = Some(PUBLIC_PEM.into());
            c.clerk_webhook_secrets = vec![carmenta::config::Secret::new(o), carmenta::config::Secret::new(n)];
        })
        .spawn()
        .await;
    let post = |id: &str, ts: i64, body: String, sig: String| {
        app.client
            .post(app.url("/v1/webhooks/clerk"))
            .header("svix-id", id)
            .header("svix-timestamp", ts.to_string())
            .header("svix-signature", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let created = json!({"object": "event", "type": "user.created", "timestamp": now() * 1000, "data": {
        "id": "user_ada", "first_name": "Ada", "last_name": "Lovelace", "image_url": "https://img.example/ada.png",
        "primary_email_address_id": "idn_2",
        "email_addresses": [
            {"id": "idn_1", "email_address": "old@example.com", "verification": {"status": "unverified"}},
            {"id": "idn_2", "email_address": "ada@example.com", "verification": {"status": "verified"}}
        ],
        "public_metadata": {"plan": "pro"}, "private_metadata": {}, "unsafe_metadata": {}
    }})
    .to_string();
    let ts = now();
    // Signed with the old secret, alongside a bogus signature: accepted.
    let sig = format!("v1,bm90LWEtc2ln {}", svix(&old, "msg_1", ts, &created));
    let r = post("msg_1", ts, created.clone(), sig.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "processed");
    // The same delivery again is a no-op.
    let r = post("msg_1", ts, created.clone(), sig).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "duplicate");

    // The user's token now shows the synced profile.
    let token = clerk_token(issuer, "user_ada", KID, |_| {});
    let v: Value = me(&app, &token).await.json().await.unwrap();
    assert_eq!((v["email"].as_str(), v["name"].as_str()), (Some("ada@example.com"), Some("Ada Lovelace")));
    assert_eq!(v["email_verified"], true);
    assert_eq!(v["public_metadata"]["plan"], "pro");

    // Updated, signed with the new secret.
    let updated = created.replace("user.created", "user.updated").replace("\"Ada\"", "\"Augusta\"");
    let ts = now();
    let r = post("msg_2", ts, updated.clone(), svix(&new, "msg_2", ts, &updated)).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = me(&app, &token).await.json().await.unwrap();
    assert_eq!(v["name"], "Augusta Lovelace");

    // Refused: bad signature, tampered body, stale and future timestamps, no headers.
    let bad = [
        ("msg_3", ts, updated.clone(), "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string()),
        ("msg_4", ts, updated.replace("Augusta", "Mallory"), svix(&new, "msg_4", ts, &updated)),
        ("msg_5", ts - 400, updated.clone(), svix(&new, "msg_5", ts - 400, &updated)),
        ("msg_6", ts + 400, updated.clone(), svix(&new, "msg_6", ts + 400, &updated)),
    ];
    for (id, t, body, sig) in bad {
        let (s, code, _, _) = envelope(post(id, t, body, sig).await.unwrap()).await;
        assert_eq!((s, code.as_str()), (401, "invalid_signature"), "{id}");
    }
    let r = app.call(Method::POST, "/v1/webhooks/clerk").body(updated.clone()).send().await;
    assert_eq!(r.status(), 401);
    let v: Value = me(&app, &token).await.json().await.unwrap();
    assert_eq!(v["name"], "Augusta Lovelace", "refused deliveries changed nothing");

    // Deleted: the user and everything they own go.
    let user_id = v["id"].as_str().unwrap().to_string();
    let deleted = json!({"type": "user.deleted", "object": "event", "data": {"id": "user_ada", "deleted": true, "object": "user"}}).to_string();
    let ts = now();
    let r = post("msg_7", ts, deleted.clone(), svix(&new, "msg_7", ts, &deleted)).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], true);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE id = $1::uuid")
        .bind(&user_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    // Unknown event types are acknowledged.
    let other = json!({"type": "session.created", "data": {}}).to_string();
    let r = post("msg_8", ts, other.clone(), svix(&new, "msg_8", ts, &other)).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ignored");
}

#[tokio::test]
async fn webhooks_are_not_found_unless_configured() {
    let app = TestApp::spawn().await;
    let r = app.call(Method::POST, "/v1/webhooks/clerk").body("{}").send().await;
    assert_eq!(r.status(), 404);
}
