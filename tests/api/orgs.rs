//! Organizations over real HTTP: create, rename, delete with confirmation; the
//! owner rule; custom roles; invitations bound to a verified email (accept,
//! decline, revoke, resend); the active organization's claims in access tokens;
//! 404 for non-members and 403 for members without the permission on every route.

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestApp, User, sign_up};

async fn call(app: &TestApp, u: &User, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut c = app.call(method, path).by(&u.jwt);
    if let Some(b) = body {
        c = c.json(&b);
    }
    c.reply().await
}

async fn verify(app: &TestApp, u: &User) {
    sqlx::query("UPDATE users SET email_verified_at = now() WHERE id = $1")
        .bind(u.id)
        .execute(&app.pool)
        .await
        .unwrap();
}

/// The invitation token mailed to `email` (the newest).
async fn mailed_token(app: &TestApp, email: &str) -> String {
    let body: String = sqlx::query_scalar(
        "SELECT body FROM mail_outbox WHERE lower(to_addr) = lower($1) AND strpos(body, 'oin_') > 0 ORDER BY id DESC LIMIT 1",
    )
        .bind(email)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    body.split_whitespace().find(|w| w.starts_with("oin_")).expect("a token in the mail").to_string()
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn create_rename_and_delete_with_confirmation() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "alice@example.com").await;
    let (s, org) = call(&app, &a, Method::POST, "/v1/orgs", Some(json!({"name": "Acme, Inc."}))).await;
    assert_eq!(s, 201, "{org}");
    assert_eq!((org["slug"].as_str(), org["role"].as_str()), (Some("acme-inc"), Some("org:owner")));
    let id = org["id"].as_str().unwrap().to_string();
    let (s, e) = call(&app, &a, Method::POST, "/v1/orgs", Some(json!({"name": "Other", "slug": "acme-inc"}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("slug_taken")));
    let (s, e) = call(&app, &a, Method::POST, "/v1/orgs", Some(json!({"name": "x", "slug": "Bad Slug"}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("invalid_slug")));
    let (s, org) =
        call(&app, &a, Method::PATCH, &format!("/v1/orgs/{id}"), Some(json!({"name": "Acme", "slug": "acme"}))).await;
    assert_eq!((s, org["slug"].as_str(), org["name"].as_str()), (200, Some("acme"), Some("Acme")));
    let (s, list) = call(&app, &a, Method::GET, "/v1/orgs", None).await;
    assert_eq!((s, list.as_array().unwrap().len()), (200, 1));
    let (s, e) = call(&app, &a, Method::DELETE, &format!("/v1/orgs/{id}"), None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (400, Some("confirmation_required")));
    let (s, _) = call(&app, &a, Method::DELETE, &format!("/v1/orgs/{id}?confirm=true"), None).await;
    assert_eq!(s, 204);
    let (s, _) = call(&app, &a, Method::GET, &format!("/v1/orgs/{id}"), None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn invitations_bind_to_a_verified_email_and_roles_gate_every_route() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "owner@example.com").await;
    let b = sign_up(&app, "bob@example.com").await;
    let c = sign_up(&app, "carol@example.com").await;
    let (_, org) = call(&app, &a, Method::POST, "/v1/orgs", Some(json!({"name": "Team"}))).await;
    let id = org["id"].as_str().unwrap().to_string();
    let path = |p: &str| format!("/v1/orgs/{id}{p}");
    // A stranger gets 404 on every organization route.
    for (m, p, body) in [
        (Method::GET, path(""), None),
        (Method::PATCH, path(""), Some(json!({"name": "x"}))),
        (Method::DELETE, path("?confirm=true"), None),
        (Method::GET, path("/members"), None),
        (Method::PATCH, path(&format!("/members/{}", a.id)), Some(json!({"role": "org:member"}))),
        (Method::DELETE, path(&format!("/members/{}", a.id)), None),
        (Method::GET, path("/roles"), None),
        (Method::POST, path("/roles"), Some(json!({"key": "org:x", "name": "X", "permissions": []}))),
        (Method::DELETE, path("/roles/org:x"), None),
        (Method::GET, path("/invitations"), None),
        (Method::POST, path("/invitations"), Some(json!({"email": "c@example.com"}))),
    ] {
        let (s, e) = call(&app, &c, m.clone(), &p, body).await;
        assert_eq!(s, 404, "{m} {p}: {e}");
    }
    // Invite bob; the token is mailed, not returned.
    let (s, inv) = call(&app, &a, Method::POST, &path("/invitations"), Some(json!({"email": "Bob@Example.com"}))).await;
    assert_eq!(s, 201, "{inv}");
    assert!(inv.get("token").is_none());
    let (s, e) = call(&app, &a, Method::POST, &path("/invitations"), Some(json!({"email": "bob@example.com"}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("invitation_pending")));
    let token = mailed_token(&app, "bob@example.com").await;
    // Carol (another email) and bob unverified are refused; verified bob joins once.
    verify(&app, &c).await;
    let (s, e) = call(&app, &c, Method::POST, "/v1/invitations/accept", Some(json!({"token": token}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("email_mismatch")));
    let (s, e) = call(&app, &b, Method::POST, "/v1/invitations/accept", Some(json!({"token": token}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("email_not_verified")));
    verify(&app, &b).await;
    let (s, joined) = call(&app, &b, Method::POST, "/v1/invitations/accept", Some(json!({"token": token}))).await;
    assert_eq!((s, joined["role"].as_str()), (200, Some("org:member")), "{joined}");
    let (s, _) = call(&app, &b, Method::POST, "/v1/invitations/accept", Some(json!({"token": token}))).await;
    assert_eq!(s, 404, "single use");
    // A member without the permission gets 403; reading members is allowed.
    for (m, p, body) in [
        (Method::PATCH, path(""), Some(json!({"name": "x"}))),
        (Method::DELETE, path("?confirm=true"), None),
        (Method::PATCH, path(&format!("/members/{}", a.id)), Some(json!({"role": "org:member"}))),
        (Method::DELETE, path(&format!("/members/{}", a.id)), None),
        (Method::POST, path("/roles"), Some(json!({"key": "org:x", "name": "X", "permissions": []}))),
        (Method::GET, path("/invitations"), None),
        (Method::POST, path("/invitations"), Some(json!({"email": "c@example.com"}))),
    ] {
        let (s, e) = call(&app, &b, m.clone(), &p, body).await;
        assert_eq!((s, e["error"]["code"].as_str()), (403, Some("insufficient_permission")), "{m} {p}");
    }
    let (s, members) = call(&app, &b, Method::GET, &path("/members"), None).await;
    assert_eq!((s, members.as_array().unwrap().len()), (200, 2));
    // Custom roles: made, given, refused while held.
    let (s, role) = call(
        &app,
        &a,
        Method::POST,
        &path("/roles"),
        Some(json!({"key": "org:editor", "name": "Editor", "permissions": ["org:knowledge:write", "org:knowledge:read"]})),
    )
    .await;
    assert_eq!(s, 201, "{role}");
    let (s, e) = call(
        &app,
        &a,
        Method::POST,
        &path("/roles"),
        Some(json!({"key": "org:hack", "name": "H", "permissions": ["org:sys_roles:manage"]})),
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("invalid_permissions")));
    let (s, m) =
        call(&app, &a, Method::PATCH, &path(&format!("/members/{}", b.id)), Some(json!({"role": "org:editor"}))).await;
    assert_eq!((s, m["role"].as_str()), (200, Some("org:editor")));
    let (s, e) = call(&app, &a, Method::DELETE, &path("/roles/org:editor"), None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("role_in_use")));
    // The owner rule: the last owner cannot be demoted or leave; an admin cannot make owners.
    let (s, e) =
        call(&app, &a, Method::PATCH, &path(&format!("/members/{}", a.id)), Some(json!({"role": "org:admin"}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("last_owner")));
    let (s, e) = call(&app, &a, Method::DELETE, &path(&format!("/members/{}", a.id)), None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("last_owner")));
    let (s, _) =
        call(&app, &a, Method::PATCH, &path(&format!("/members/{}", b.id)), Some(json!({"role": "org:admin"}))).await;
    assert_eq!(s, 200);
    let (s, e) =
        call(&app, &b, Method::PATCH, &path(&format!("/members/{}", b.id)), Some(json!({"role": "org:owner"}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("insufficient_permission")));
    let (s, _) =
        call(&app, &a, Method::PATCH, &path(&format!("/members/{}", b.id)), Some(json!({"role": "org:owner"}))).await;
    assert_eq!(s, 200);
    let (s, _) = call(&app, &a, Method::DELETE, &path(&format!("/members/{}", a.id)), None).await;
    assert_eq!(s, 204, "with another owner, the first may leave");
    let (s, _) = call(&app, &a, Method::GET, &path(""), None).await;
    assert_eq!(s, 404, "gone at once");
    // Decline, revoke, resend.
    let (_, inv) =
        call(&app, &b, Method::POST, &path("/invitations"), Some(json!({"email": "carol@example.com"}))).await;
    let first = mailed_token(&app, "carol@example.com").await;
    let inv_id = inv["id"].as_str().unwrap();
    let (s, _) = call(&app, &b, Method::POST, &path(&format!("/invitations/{inv_id}/resend")), None).await;
    assert_eq!(s, 200);
    let second = mailed_token(&app, "carol@example.com").await;
    assert_ne!(first, second);
    let (s, _) = call(&app, &c, Method::POST, "/v1/invitations/accept", Some(json!({"token": first}))).await;
    assert_eq!(s, 404, "the old token stopped working");
    let (s, _) = call(&app, &c, Method::POST, "/v1/invitations/decline", Some(json!({"token": second}))).await;
    assert_eq!(s, 204);
    let (_, inv2) =
        call(&app, &b, Method::POST, &path("/invitations"), Some(json!({"email": "carol@example.com"}))).await;
    let third = mailed_token(&app, "carol@example.com").await;
    let (s, _) =
        call(&app, &b, Method::POST, &path(&format!("/invitations/{}/revoke", inv2["id"].as_str().unwrap())), None)
            .await;
    assert_eq!(s, 204);
    let (s, _) = call(&app, &c, Method::POST, "/v1/invitations/accept", Some(json!({"token": third}))).await;
    assert_eq!(s, 404, "revoked");
    let (_, list) = call(&app, &b, Method::GET, &path("/invitations"), None).await;
    let statuses: Vec<&str> = list.as_array().unwrap().iter().map(|i| i["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["revoked", "declined", "accepted"]);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action LIKE 'org.%'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(n >= 12, "{n} audit rows");
    // The app hears of every change through the webhook outbox.
    let events: Vec<String> = sqlx::query_scalar("SELECT DISTINCT event_type FROM webhook_outbox ORDER BY 1")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    for e in [
        "organization.created",
        "organizationInvitation.created",
        "organizationInvitation.declined",
        "organizationInvitation.revoked",
        "organizationMembership.created",
        "organizationMembership.deleted",
        "organizationMembership.updated",
        "role.created",
    ] {
        assert!(events.iter().any(|x| x == e), "{e} in {events:?}");
    }
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM webhook_outbox WHERE event_type = 'organizationMembership.created' LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(payload["data"]["organization_id"], json!(id));
}

#[tokio::test]
async fn the_active_organization_is_in_the_access_token_until_the_member_leaves() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "owner@example.com").await;
    let b = sign_up(&app, "member@example.com").await;
    verify(&app, &b).await;
    let (_, org) = call(&app, &a, Method::POST, "/v1/orgs", Some(json!({"name": "Claims"}))).await;
    let id = org["id"].as_str().unwrap().to_string();
    call(&app, &a, Method::POST, &format!("/v1/orgs/{id}/invitations"), Some(json!({"email": "member@example.com"})))
        .await;
    let token = mailed_token(&app, "member@example.com").await;
    let (s, _) = call(&app, &b, Method::POST, "/v1/invitations/accept", Some(json!({"token": token}))).await;
    assert_eq!(s, 200);
    // Switching: with the session (a JWT names it too).
    let switch = |who: &User, org: Value| {
        app.call(Method::PUT, "/v1/me/active-org").by(who.session.clone()).json(&json!({"org_id": org})).reply()
    };
    let (s, t) = switch(&b, json!(id)).await;
    assert_eq!(s, 200, "{t}");
    let c = claims(t["access_token"].as_str().unwrap());
    assert_eq!(
        (c["org_id"].as_str(), c["org_slug"].as_str(), c["org_role"].as_str()),
        (Some(id.as_str()), Some("claims"), Some("org:member"))
    );
    let perms: Vec<&str> = c["org_permissions"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(perms.contains(&"org:knowledge:read") && !perms.iter().any(|p| p.starts_with("org:sys_")), "{perms:?}");
    // A refreshed token keeps the claims.
    let (s, t) = app.post_as("/v1/auth/token", &b.session, &json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(claims(t["access_token"].as_str().unwrap())["org_id"].as_str(), Some(id.as_str()));
    // An organization the user is not in cannot be made active.
    let (_, other) = call(&app, &a, Method::POST, "/v1/orgs", Some(json!({"name": "Elsewhere"}))).await;
    let (s, _) = switch(&b, other["id"].clone()).await;
    assert_eq!(s, 404);
    // Removed: the next token has no organization.
    let (s, _) = call(&app, &a, Method::DELETE, &format!("/v1/orgs/{id}/members/{}", b.id), None).await;
    assert_eq!(s, 204);
    let (_, t) = app.post_as("/v1/auth/token", &b.session, &json!({})).await;
    assert!(claims(t["access_token"].as_str().unwrap()).get("org_id").is_none());
    // Clearing works; a service key has no session to switch.
    let (s, t) = switch(&b, Value::Null).await;
    assert_eq!(s, 200);
    assert!(claims(t["access_token"].as_str().unwrap()).get("org_id").is_none());
}

#[tokio::test]
async fn a_verified_domain_lets_its_users_join_without_an_invitation() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "alice@acme.test").await;
    let (_, org) = call(&app, &a, Method::POST, "/v1/orgs", Some(json!({"name": "Acme"}))).await;
    let id = org["id"].as_str().unwrap().to_string();
    let domains = format!("/v1/orgs/{id}/domains");
    // The owner's own email must be verified and at the domain.
    let (s, e) = call(&app, &a, Method::POST, &domains, Some(json!({"domain": "acme.test"}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("domain_not_verified")));
    verify(&app, &a).await;
    let (s, e) = call(&app, &a, Method::POST, &domains, Some(json!({"domain": "other.test"}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("domain_not_verified")));
    let (s, e) = call(&app, &a, Method::POST, &domains, Some(json!({"domain": "gmail.com"}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("public_email_domain")));
    let (s, e) =
        call(&app, &a, Method::POST, &domains, Some(json!({"domain": "acme.test", "role": "org:owner"}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("unknown_role")));
    let (s, d) = call(&app, &a, Method::POST, &domains, Some(json!({"domain": "ACME.test"}))).await;
    assert_eq!((s, d["domain"].as_str(), d["role"].as_str()), (201, Some("acme.test"), Some("org:member")));
    let (_, other) = call(&app, &a, Method::POST, "/v1/orgs", Some(json!({"name": "Acme Two"}))).await;
    let (s, e) = call(
        &app,
        &a,
        Method::POST,
        &format!("/v1/orgs/{}/domains", other["id"].as_str().unwrap()),
        Some(json!({"domain": "acme.test"})),
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("domain_taken")));
    // A verified colleague sees the suggestion and joins as a member.
    let d = sign_up(&app, "dave@acme.test").await;
    let (_, sugg) = call(&app, &d, Method::GET, "/v1/me/org-suggestions", None).await;
    assert_eq!(sugg, json!([]), "not before the email is verified");
    let (s, _) = call(&app, &d, Method::POST, &format!("/v1/orgs/{id}/join"), None).await;
    assert_eq!(s, 404);
    verify(&app, &d).await;
    let (_, sugg) = call(&app, &d, Method::GET, "/v1/me/org-suggestions", None).await;
    assert_eq!(sugg[0]["id"], json!(id));
    let (s, joined) = call(&app, &d, Method::POST, &format!("/v1/orgs/{id}/join"), None).await;
    assert_eq!((s, joined["role"].as_str()), (200, Some("org:member")));
    // Someone at another domain cannot; nor anyone once the domain is removed.
    let e = sign_up(&app, "erin@other.test").await;
    verify(&app, &e).await;
    let (s, _) = call(&app, &e, Method::POST, &format!("/v1/orgs/{id}/join"), None).await;
    assert_eq!(s, 404);
    let (s, _) = call(&app, &d, Method::DELETE, &format!("{domains}/acme.test"), None).await;
    assert_eq!(s, 403, "a member cannot remove it");
    let (s, _) = call(&app, &a, Method::DELETE, &format!("{domains}/acme.test"), None).await;
    assert_eq!(s, 204);
    let f = sign_up(&app, "frank@acme.test").await;
    verify(&app, &f).await;
    let (s, _) = call(&app, &f, Method::POST, &format!("/v1/orgs/{id}/join"), None).await;
    assert_eq!(s, 404);
}
