//! Connections, first part: the provider catalog (built-in, overridable, validated)
//! and integrations (service-key CRUD, client secrets encrypted and never returned).

use serde_json::{Value, json};

use crate::auth::sign_up;
use crate::harness::{TestApp, envelope};

#[tokio::test]
async fn providers_are_listed() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "p@example.com").await;
    let list: Value =
        app.client.get(app.url("/v1/providers")).bearer_auth(&u.jwt).send().await.unwrap().json().await.unwrap();
    let all = list.as_array().unwrap();
    assert!(all.len() >= 20, "{}", all.len());
    let mail = all.iter().find(|p| p["name"] == "google-mail").unwrap();
    assert_eq!(mail["proxy_base_url"], "https://gmail.googleapis.com");
    assert_eq!(mail["auth_mode"], "OAUTH2");
    let ms = all.iter().find(|p| p["name"] == "microsoft").unwrap();
    assert_eq!(ms["default_scopes"], json!(["offline_access", ".default"]));
    let r = app.client.get(app.url("/v1/providers")).send().await.unwrap();
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
    let r = app.client.post(app.url("/v1/integrations")).bearer_auth(&key).json(&body).send().await.unwrap();
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
    assert_eq!(carmenta::connections::integrations::client_secret(&app.state, id, &sealed).unwrap(), secret);
    assert!(app.state.keyring.decrypt(&sealed, uuid::Uuid::nil().as_bytes()).is_err(), "bound to the id");
    // Default scopes when none are given; refusals.
    let r = app
        .client
        .post(app.url("/v1/integrations"))
        .bearer_auth(&key)
        .json(&json!({"unique_key": "ms", "provider": "microsoft", "client_id": "a", "client_secret": "b"}))
        .send()
        .await
        .unwrap();
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
        let r = app.client.post(app.url("/v1/integrations")).bearer_auth(&key).json(&body).send().await.unwrap();
        let (s, c, m, _) = envelope(r).await;
        assert_eq!((s, c.as_str()), (status, code), "{body}: {m}");
        if code == "unknown_provider" {
            assert!(m.contains("myspace"), "{m}");
        }
    }
    // Users cannot manage integrations.
    let r = app.client.get(app.url("/v1/integrations")).bearer_auth(&user.jwt).send().await.unwrap();
    assert_eq!(envelope(r).await.0, 403);
    let r = app.client.post(app.url("/v1/integrations")).bearer_auth(&user.jwt).json(&body).send().await.unwrap();
    assert_eq!(envelope(r).await.0, 403);
    // Read, update (a new secret), list, delete.
    let one: Value = app
        .client
        .get(app.url("/v1/integrations/gmail-prod"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["client_id"], "cid.apps.googleusercontent.com");
    let r = app
        .client
        .patch(app.url("/v1/integrations/gmail-prod"))
        .bearer_auth(&key)
        .json(&json!({"client_secret": "rotated-secret", "scopes": ["openid"]}))
        .send()
        .await
        .unwrap();
    let patched: Value = r.json().await.unwrap();
    assert_eq!(patched["scopes"], json!(["openid"]));
    assert_eq!(patched["client_id"], "cid.apps.googleusercontent.com");
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT client_secret FROM integrations WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(carmenta::connections::integrations::client_secret(&app.state, id, &sealed).unwrap(), "rotated-secret");
    let list: Value =
        app.client.get(app.url("/v1/integrations")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let r = app.client.delete(app.url("/v1/integrations/gmail-prod")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = app.client.get(app.url("/v1/integrations/gmail-prod")).bearer_auth(&key).send().await.unwrap();
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
    std::fs::write(&good, r#"{"acme": {"auth_mode": "API_KEY", "proxy": {"base_url": "https://api.acme.test", "headers": {"x-api-key": "${apiKey}"}}},
                             "notion": {"proxy": {"headers": {"notion-version": "2025-09-03"}}}}"#).unwrap();
    let app = TestApp::builder().config(|c| c.providers_file = Some(good.clone())).spawn().await;
    let u = sign_up(&app, "o@example.com").await;
    let list: Value =
        app.client.get(app.url("/v1/providers")).bearer_auth(&u.jwt).send().await.unwrap().json().await.unwrap();
    let acme = list.as_array().unwrap().iter().find(|p| p["name"] == "acme").unwrap();
    assert_eq!(acme["proxy_base_url"], "https://api.acme.test");
    let notion = app.state.catalog.get("notion").unwrap();
    assert_eq!(notion.raw["proxy"]["headers"]["notion-version"], "2025-09-03");
    assert_eq!(notion.proxy_base_url(), Some("https://api.notion.com"));
    // A bad file stops start-up with the entry and field named.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"slack": {"token_url": 42}}"#).unwrap();
    let mut config = carmenta::config::Config::for_data_dir(&dir);
    config.providers_file = Some(bad);
    let e = carmenta::connections::catalog::load_configured(&config).unwrap_err();
    assert!(e.contains("\"slack\"") && e.contains("token_url"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
