//! Passkeys through a software authenticator (1Password's `passkey` crate, a
//! CTAP2 authenticator and WebAuthn client written independently of the server's
//! webauthn-rs): registering several, naming and deleting them, passwordless
//! sign-in with and without an email, a passkey as the second factor, a replayed
//! or foreign answer refused, and the last way in kept.

use passkey::authenticator::{Authenticator, UserCheck, UserValidationMethod};
use passkey::client::{Client, DefaultClientData};
use passkey::types::Passkey as DeviceKey;
use passkey::types::ctap2::{Aaguid, Ctap2Error};
use passkey::types::webauthn::{CredentialCreationOptions, CredentialRequestOptions};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{PASSWORD as PW, TestApp, envelope, sign_up};

/// A user who is always there and verified (a device with a fingerprint reader).
struct Present;

#[async_trait::async_trait]
impl UserValidationMethod for Present {
    type PasskeyItem = DeviceKey;
    async fn check_user<'a>(
        &self,
        _hint: passkey::authenticator::UiHint<'a, Self::PasskeyItem>,
        _presence: bool,
        _verification: bool,
    ) -> Result<UserCheck, Ctap2Error> {
        Ok(UserCheck { presence: true, verification: true })
    }
    fn is_presence_enabled(&self) -> bool {
        true
    }
    fn is_verification_enabled(&self) -> Option<bool> {
        Some(true)
    }
}

type Device =
    Client<Option<DeviceKey>, Present, passkey::crypto::AvailableBackend, public_suffix::PublicSuffixList, ()>;

/// A new device holding one passkey slot.
fn device() -> Device {
    let auth = Authenticator::new(Aaguid::new_empty(), None, Present, passkey::crypto::AvailableBackend);
    Client::new(auth).allows_insecure_localhost(true)
}

fn origin(app: &TestApp) -> url::Url {
    app.state.config.public_url.clone()
}

/// Registers a passkey on `dev` for `session`, named `name`.
async fn register(app: &TestApp, dev: &mut Device, session: &str, name: &str) -> Value {
    let (s, start) = app.post_as("/v1/me/passkeys/register", session, &json!({})).await;
    assert_eq!(s, 200, "{start}");
    let options: CredentialCreationOptions =
        serde_json::from_value(start["options"].clone()).expect("creation options");
    let created = dev.register(&origin(app), options, DefaultClientData).await.expect("the device makes a credential");
    let (s, key) = app
        .post_as(
            "/v1/me/passkeys/register/finish",
            session,
            &json!({"ceremony_id": start["ceremony_id"], "credential": serde_json::to_value(&created).unwrap(), "name": name}),
        )
        .await;
    assert_eq!(s, 201, "{key}");
    key
}

/// Answers a sign-in ceremony's options with `dev`: the credential JSON.
async fn answer(app: &TestApp, dev: &mut Device, options: &Value) -> Value {
    let mut options = options.clone();
    options.as_object_mut().unwrap().remove("mediation");
    // An empty allow list means "any discoverable credential" (as browsers read it);
    // this authenticator's one-slot store reads only an absent list that way.
    if options["publicKey"]["allowCredentials"].as_array().is_some_and(Vec::is_empty) {
        options["publicKey"].as_object_mut().unwrap().remove("allowCredentials");
    }
    let request: CredentialRequestOptions = serde_json::from_value(options).expect("request options");
    let signed = dev.authenticate(&origin(app), request, DefaultClientData).await.expect("the device signs");
    serde_json::to_value(&signed).unwrap()
}

fn claims(jwt: &str) -> Value {
    crate::mfa::claims(jwt)
}

async fn app() -> TestApp {
    TestApp::builder().config(|c| c.public_url = "http://localhost:0".parse().unwrap()).spawn().await
}

#[tokio::test]
async fn passkeys_register_sign_in_without_a_password_and_are_managed() {
    let app = app().await;
    let u = sign_up(&app, "pia@example.com").await;
    let (mut phone, mut laptop) = (device(), device());
    let k1 = register(&app, &mut phone, &u.session, "Phone").await;
    let k2 = register(&app, &mut laptop, &u.session, "Laptop").await;
    let (_, list) = app.get_as("/v1/me/passkeys", &u.session).await;
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Phone", "Laptop"]);
    // The same device cannot register its credential twice (excluded, or refused).
    let (s, start) = app.post_as("/v1/me/passkeys/register", &u.session, &json!({})).await;
    assert_eq!(s, 200);
    let excluded = start["options"]["publicKey"]["excludeCredentials"].as_array().map(Vec::len);
    assert_eq!(excluded, Some(2));

    // Discoverable sign-in (no email): the phone's passkey names the account.
    let (s, start) = app.call(Method::POST, "/v1/auth/passkey").json(&json!({})).reply().await;
    assert_eq!(s, 200, "{start}");
    let cred = answer(&app, &mut phone, &start["options"]).await;
    let finish = json!({"ceremony_id": start["ceremony_id"], "credential": cred});
    let r = app.call(Method::POST, "/v1/auth/passkey/finish").json(&finish).send().await;
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["user"]["id"], u.id.to_string());
    let c = claims(b["access_token"].as_str().unwrap());
    assert_eq!((c["amr"].clone(), c["aal"].as_str()), (json!(["passkey"]), Some("aal2")));
    // The same answer again: the ceremony is spent.
    let r = app.call(Method::POST, "/v1/auth/passkey/finish").json(&finish).send().await;
    assert_eq!(envelope(r).await.1, "invalid_ceremony");

    // With an email: only that account's passkeys are asked for.
    let (_, start) =
        app.call(Method::POST, "/v1/auth/passkey").json(&json!({"email": "pia@example.com"})).reply().await;
    let allowed = start["options"]["publicKey"]["allowCredentials"].as_array().map(Vec::len);
    assert_eq!(allowed, Some(2));
    let cred = answer(&app, &mut laptop, &start["options"]).await;
    let (s, b) = app
        .call(Method::POST, "/v1/auth/passkey/finish")
        .json(&json!({"ceremony_id": start["ceremony_id"], "credential": cred}))
        .reply()
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, list) = app.get_as("/v1/me/passkeys", &u.session).await;
    assert!(list.as_array().unwrap().iter().all(|k| k["last_used_at"].is_string()));

    // Another account's ceremony cannot be answered with this account's passkey.
    let other = sign_up(&app, "otto@example.com").await;
    let mut otto_key = device();
    register(&app, &mut otto_key, &other.session, "Otto's").await;
    let (_, start) =
        app.call(Method::POST, "/v1/auth/passkey").json(&json!({"email": "otto@example.com"})).reply().await;
    // (The phone refuses Otto's ceremony itself; its answer to another one is sent instead.)
    let (_, mine) = app.call(Method::POST, "/v1/auth/passkey").json(&json!({})).reply().await;
    let forged = answer(&app, &mut phone, &mine["options"]).await;
    let r = app
        .call(Method::POST, "/v1/auth/passkey/finish")
        .json(&json!({"ceremony_id": start["ceremony_id"], "credential": forged}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "passkey_rejected");
    // Garbage is a 400, not a 500.
    let (_, start) = app.call(Method::POST, "/v1/auth/passkey").json(&json!({})).reply().await;
    let r = app
        .call(Method::POST, "/v1/auth/passkey/finish")
        .json(&json!({"ceremony_id": start["ceremony_id"], "credential": {"id": 1}}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "invalid_credential");

    // Rename; other users get 404 for it.
    let id1 = k1["id"].as_str().unwrap();
    let (s, renamed) = app.patch_as(&format!("/v1/me/passkeys/{id1}"), &u.session, &json!({"name": "Old phone"})).await;
    assert_eq!((s, renamed["name"].as_str()), (200, Some("Old phone")));
    let (s, _) = app.patch_as(&format!("/v1/me/passkeys/{id1}"), &other.session, &json!({"name": "mine"})).await;
    assert_eq!(s, 404);
    let (s, _) = app.delete_as(&format!("/v1/me/passkeys/{id1}"), &other.session).await;
    assert_eq!(s, 404);
    // Deleting needs a recent sign-in.
    sqlx::query("UPDATE sessions SET authenticated_at = now() - interval '1 hour' WHERE user_id = $1")
        .bind(u.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app.call(Method::DELETE, &format!("/v1/me/passkeys/{id1}")).by(&u.session).send().await;
    assert_eq!(envelope(r).await.1, "reauthentication_required");
    let r =
        app.call(Method::POST, "/v1/auth/reauthenticate").by(&u.session).json(&json!({"password": PW})).send().await;
    assert_eq!(r.status(), 204);
    let (s, _) = app.delete_as(&format!("/v1/me/passkeys/{id1}"), &u.session).await;
    assert_eq!(s, 204);
    let (_, list) = app.get_as("/v1/me/passkeys", &u.session).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let _ = k2;
}

#[tokio::test]
async fn a_passkey_is_a_second_factor_after_a_password() {
    let app = app().await;
    let u = sign_up(&app, "max@example.com").await;
    let mut key = device();
    register(&app, &mut key, &u.session, "Key").await;
    let r = app
        .call(Method::POST, "/v1/auth/sign-in")
        .json(&json!({"email": "max@example.com", "password": PW}))
        .send()
        .await;
    assert_eq!(r.status(), 202);
    let ch: Value = r.json().await.unwrap();
    assert_eq!(ch["factors"], json!(["passkey"]));
    let token = ch["mfa_token"].as_str().unwrap();
    let (s, start) = app.call(Method::POST, "/v1/auth/mfa/passkey").json(&json!({"mfa_token": token})).reply().await;
    assert_eq!(s, 200, "{start}");
    let cred = answer(&app, &mut key, &start["options"]).await;
    // Both a code and a passkey: refused as ambiguous.
    let r = app
        .call(Method::POST, "/v1/auth/mfa/verify")
        .json(&json!({"mfa_token": token, "code": "123456", "passkey": {"ceremony_id": start["ceremony_id"], "credential": cred}}))
        .send()
        .await;
    assert_eq!(envelope(r).await.0, 400);
    let (s, b) = app
        .call(Method::POST, "/v1/auth/mfa/verify")
        .json(&json!({"mfa_token": token, "passkey": {"ceremony_id": start["ceremony_id"], "credential": cred}}))
        .reply()
        .await;
    assert_eq!(s, 200, "{b}");
    let c = claims(b["access_token"].as_str().unwrap());
    assert_eq!((c["amr"].clone(), c["aal"].as_str()), (json!(["pwd", "passkey", "mfa"]), Some("aal2")));
    // A ceremony of one step cannot serve another.
    let ch: Value = app
        .call(Method::POST, "/v1/auth/sign-in")
        .json(&json!({"email": "max@example.com", "password": PW}))
        .send()
        .await
        .json()
        .await
        .unwrap();
    let (_, other_start) =
        app.call(Method::POST, "/v1/auth/mfa/passkey").json(&json!({"mfa_token": token})).reply().await;
    assert_eq!(other_start["error"]["code"], "invalid_mfa_token", "the first step is used");
    let (_, start) =
        app.call(Method::POST, "/v1/auth/mfa/passkey").json(&json!({"mfa_token": ch["mfa_token"]})).reply().await;
    let cred = answer(&app, &mut key, &start["options"]).await;
    let ch2: Value = app
        .call(Method::POST, "/v1/auth/sign-in")
        .json(&json!({"email": "max@example.com", "password": PW}))
        .send()
        .await
        .json()
        .await
        .unwrap();
    let r = app
        .call(Method::POST, "/v1/auth/mfa/verify")
        .json(&json!({"mfa_token": ch2["mfa_token"], "passkey": {"ceremony_id": start["ceremony_id"], "credential": cred}}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "invalid_code");
}

#[tokio::test]
async fn passkeys_need_a_domain_and_the_last_way_in_stays() {
    // An IP-address public URL cannot be a relying party: a clear 409 passkeys_unavailable.
    let ip_app = TestApp::spawn().await;
    let u = sign_up(&ip_app, "ip@example.com").await;
    let r = ip_app.call(Method::POST, "/v1/me/passkeys/register").by(&u.session).json(&json!({})).send().await;
    let (status, code, _, _) = envelope(r).await;
    assert_eq!((status, code.as_str()), (409, "passkeys_unavailable"));

    // A passkey-only account (password removed) keeps its last passkey.
    let app = app().await;
    let u = sign_up(&app, "solo@example.com").await;
    let mut key = device();
    let k = register(&app, &mut key, &u.session, "Only").await;
    sqlx::query("UPDATE users SET password_hash = NULL WHERE id = $1").bind(u.id).execute(&app.pool).await.unwrap();
    let r =
        app.call(Method::DELETE, &format!("/v1/me/passkeys/{}", k["id"].as_str().unwrap())).by(&u.session).send().await;
    assert_eq!(envelope(r).await.1, "last_sign_in_method");
    // A service key acting for the user cannot register passkeys.
    let (svc, _) = carmenta::auth::service::create_service_key(&app.pool, "backend", true).await.unwrap();
    let r = app.call(Method::POST, "/v1/me/passkeys/register").acting_for(&svc, u.id).json(&json!({})).send().await;
    assert_eq!(envelope(r).await.1, "session_required");
}
