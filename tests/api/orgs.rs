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
pub(crate) async fn mailed_token(app: &TestApp, email: &str) -> String {
    let body: String = sqlx::query_scalar(
        "SELECT body FROM mail_outbox WHERE lower(to_addr) = lower($1) AND strpos(body, 'oin_') > 0 ORDER BY id DESC LIMIT 1",
    )
        .bind(email)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    body.split_whitespace().find(|w| w.starts_with("oin_")).expect("a token in the mail").to_string()
}

/// The claims of a JWT, unverified.
pub(crate) fn claims(jwt: &str) -> Value {
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

#[tokio::test]
async fn webhook_events_commit_with_their_change_or_not_at_all() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "atomic@example.com").await;
    let (_, org) = call(&app, &a, Method::POST, "/v1/orgs", Some(json!({"name": "Atomic"}))).await;
    let id = org["id"].as_str().unwrap().to_string();
    // The outbox refuses this one event type: the change it belongs to must not happen.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_org_updated() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.event_type = 'organization.updated' THEN RAISE EXCEPTION 'outbox refused'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER refuse_org_updated BEFORE INSERT ON webhook_outbox FOR EACH ROW EXECUTE FUNCTION refuse_org_updated();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let (s, _) = call(&app, &a, Method::PATCH, &format!("/v1/orgs/{id}"), Some(json!({"name": "Renamed"}))).await;
    assert_eq!(s, 500);
    let (_, now) = call(&app, &a, Method::GET, &format!("/v1/orgs/{id}"), None).await;
    assert_eq!(now["name"], "Atomic", "the rename rolled back with its event");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'org.update'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audited, 0);
    sqlx::raw_sql("DROP TRIGGER refuse_org_updated ON webhook_outbox").execute(&app.pool).await.unwrap();
    let (s, _) = call(&app, &a, Method::PATCH, &format!("/v1/orgs/{id}"), Some(json!({"name": "Renamed"}))).await;
    assert_eq!(s, 200);
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_outbox WHERE event_type = 'organization.updated'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(events, 1);
}

#[tokio::test]
async fn an_invited_email_signs_up_and_joins_in_one_step() {
    let app = TestApp::spawn().await;
    let owner = sign_up(&app, "boss@example.com").await;
    let (_, org) = call(&app, &owner, Method::POST, "/v1/orgs", Some(json!({"name": "Joiners"}))).await;
    let id = org["id"].as_str().unwrap().to_string();
    let (s, _) = call(
        &app,
        &owner,
        Method::POST,
        &format!("/v1/orgs/{id}/invitations"),
        Some(json!({"email": "New@Example.com"})),
    )
    .await;
    assert_eq!(s, 201);
    let token = mailed_token(&app, "new@example.com").await;
    // The mail links the hosted invitation page.
    let body: String = sqlx::query_scalar("SELECT body FROM mail_outbox WHERE lower(to_addr) = 'new@example.com'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(body.contains(&format!("/auth/invitation?token={token}")), "{body}");
    let (s, preview) = app.call(Method::POST, "/v1/invitations/preview").json(&json!({"token": token})).reply().await;
    assert_eq!(s, 200);
    assert_eq!((preview["organization"].as_str(), preview["account_exists"].as_bool()), (Some("Joiners"), Some(false)));
    let r = app
        .call(Method::POST, "/v1/invitations/sign-up")
        .json(&json!({"token": token, "password": "a strong new passphrase", "name": "Newt"}))
        .send()
        .await;
    assert_eq!(r.status(), 201);
    assert!(r.headers()["set-cookie"].to_str().unwrap().starts_with("carmenta_session="));
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["user"]["email"].as_str(), b["user"]["email_verified"].as_bool()),
        (Some("New@Example.com"), Some(true))
    );
    let jwt = b["access_token"].as_str().unwrap().to_string();
    let (s, orgs) = app.get_as("/v1/orgs", &jwt).await;
    assert_eq!((s, orgs[0]["id"].as_str(), orgs[0]["role"].as_str()), (200, Some(id.as_str()), Some("org:member")));
    // No verification mail: the invitation proved the address.
    let verify_mails: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM mail_outbox WHERE lower(to_addr) = 'new@example.com' AND body LIKE '%verify-email%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(verify_mails, 0);
    // The token is spent; an email with an account signs in and accepts instead.
    let r = app
        .call(Method::POST, "/v1/invitations/sign-up")
        .json(&json!({"token": token, "password": "another good passphrase"}))
        .send()
        .await;
    assert_eq!(r.status(), 404);
    sign_up(&app, "existing@example.com").await;
    call(
        &app,
        &owner,
        Method::POST,
        &format!("/v1/orgs/{id}/invitations"),
        Some(json!({"email": "existing@example.com"})),
    )
    .await;
    let token = mailed_token(&app, "existing@example.com").await;
    let (s, e) = app
        .call(Method::POST, "/v1/invitations/sign-up")
        .json(&json!({"token": token, "password": "another good passphrase"}))
        .reply()
        .await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("email_taken")));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM org_members WHERE org_id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 2, "the refused sign-up joined nobody");
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM webhook_outbox WHERE payload->'data'->>'organization_id' = $1 ORDER BY id",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(events.contains(&"organizationMembership.created".to_string()), "{events:?}");
}

/// The session cookie of a hosted form's answer.
fn session_cookie_of(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("carmenta_session=cs_"))
        .map(|c| c.split(';').next().unwrap().to_string())
}

#[tokio::test]
async fn hosted_pages_create_switch_invite_and_join() {
    let app = TestApp::spawn().await;
    let owner = sign_up(&app, "host@example.com").await;
    let cookie = format!("carmenta_session={}", owner.session);
    let page = |path: &str, cookie: &str| app.client.get(app.url(path)).header("cookie", cookie.to_string()).send();
    let post = |path: &str, cookie: &str, form: Vec<(&'static str, String)>| {
        app.client
            .post(app.url(path))
            .header("cookie", cookie.to_string())
            .header("origin", &app.base)
            .form(&form)
            .send()
    };
    // Without a session the pages send the browser to sign in.
    let r = app.client.get(app.url("/auth/orgs")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let html = page("/auth/orgs", &cookie).await.unwrap().text().await.unwrap();
    assert!(html.contains("not in an organization yet") && html.contains("Create organization"));
    let r = post("/auth/orgs", &cookie, vec![("name", "Hosted Co".into())]).await.unwrap();
    assert_eq!(r.status(), 303);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let id = loc.trim_start_matches("/auth/orgs/").to_string();
    let html = page(&loc, &cookie).await.unwrap().text().await.unwrap();
    assert!(
        html.contains("Hosted Co") && html.contains("host@example.com") && html.contains("Send invitation"),
        "{html}"
    );
    // Invite by the form; the invitation page (no session) offers to sign up.
    let r = post(
        &format!("/auth/orgs/{id}/invite"),
        &cookie,
        vec![("email", "fresh@example.com".into()), ("role", "org:member".into())],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    let token = mailed_token(&app, "fresh@example.com").await;
    let html = app.get(&format!("/auth/invitation?token={token}")).await.text().await.unwrap();
    assert!(
        html.contains("fresh@example.com is invited to join Hosted Co") && html.contains("Create account and join"),
        "{html}"
    );
    let html = page(&format!("/auth/orgs/{id}"), &cookie).await.unwrap().text().await.unwrap();
    assert!(html.contains("Revoke the invitation of fresh@example.com"));
    let r = post(
        "/auth/invitation/sign-up",
        "",
        vec![("token", token.clone()), ("password", "fresh strong passphrase".into()), ("name", "".into())],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], format!("/auth/orgs/{id}").as_str());
    let fresh = session_cookie_of(&r).expect("signed in");
    let html = page(&format!("/auth/orgs/{id}"), &fresh).await.unwrap().text().await.unwrap();
    assert!(html.contains("you are org:member") && !html.contains("Send invitation"), "a member cannot invite: {html}");
    // A member without the permission is refused (403); a stranger sees nothing (404).
    let r = post(&format!("/auth/orgs/{id}/invite"), &fresh, vec![("email", "x@example.com".into())]).await.unwrap();
    assert_eq!(r.status(), 403);
    let stranger = sign_up(&app, "stranger@example.com").await;
    let sc = format!("carmenta_session={}", stranger.session);
    assert_eq!(page(&format!("/auth/orgs/{id}"), &sc).await.unwrap().status(), 404);
    assert_eq!(post(&format!("/auth/orgs/{id}/switch"), &sc, vec![]).await.unwrap().status(), 404);
    // Switching makes it the session's active organization: its tokens carry the claims.
    let r = post(&format!("/auth/orgs/{id}/switch"), &fresh, vec![]).await.unwrap();
    assert_eq!(r.status(), 303);
    let token = fresh.trim_start_matches("carmenta_session=");
    let (_, t) = app.post_as("/v1/auth/token", token, &json!({})).await;
    let c = claims(t["access_token"].as_str().unwrap());
    assert_eq!((c["org_id"].as_str(), c["org_role"].as_str()), (Some(id.as_str()), Some("org:member")));
    let html = page("/auth/orgs", &fresh).await.unwrap().text().await.unwrap();
    assert!(html.contains("Hosted Co (org:member) · active"), "{html}");
    // Leaving takes access away at once.
    let r = post(&format!("/auth/orgs/{id}/leave"), &fresh, vec![]).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(page(&format!("/auth/orgs/{id}"), &fresh).await.unwrap().status(), 404);
}

#[tokio::test]
async fn an_organization_keeps_an_owner_when_its_owners_account_is_deleted() {
    let app = TestApp::spawn().await;
    let owner = sign_up(&app, "leaving-owner@example.com").await;
    let (_, org) = call(&app, &owner, Method::POST, "/v1/orgs", Some(json!({"name": "Heirs"}))).await;
    let id = org["id"].as_str().unwrap().to_string();
    let (_, lonely) = call(&app, &owner, Method::POST, "/v1/orgs", Some(json!({"name": "Lonely"}))).await;
    let lonely = lonely["id"].as_str().unwrap().to_string();
    let member = sign_up(&app, "old-member@example.com").await;
    let admin = sign_up(&app, "new-admin@example.com").await;
    for (u, role) in [(&member, "org:member"), (&admin, "org:admin")] {
        sqlx::query("INSERT INTO org_members (org_id, user_id, role) VALUES ($1::uuid, $2, $3)")
            .bind(&id)
            .bind(u.id)
            .bind(role)
            .execute(&app.pool)
            .await
            .unwrap();
    }
    // The owner deletes their account through the API.
    let r = app.call(Method::DELETE, "/v1/me").by(&owner.session).send().await;
    assert_eq!(r.status(), 204);
    // The admin (admins first) is the owner now; the memberless organization is gone.
    let (s, members) = call(&app, &admin, Method::GET, &format!("/v1/orgs/{id}/members"), None).await;
    assert_eq!(s, 200);
    let roles: Vec<(String, String)> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["email"].as_str().unwrap().to_string(), m["role"].as_str().unwrap().to_string()))
        .collect();
    assert!(roles.contains(&("new-admin@example.com".into(), "org:owner".into())), "{roles:?}");
    assert!(roles.contains(&("old-member@example.com".into(), "org:member".into())), "{roles:?}");
    let gone: i64 = sqlx::query_scalar("SELECT count(*) FROM organizations WHERE id = $1::uuid")
        .bind(&lonely)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(gone, 0);
}

#[tokio::test]
async fn hosted_pages_manage_members_the_profile_and_deletion() {
    let app = TestApp::spawn().await;
    let t = crate::harness::team(&app, "hosted").await;
    let org = t.org_id.clone();
    let cookie = |u: &User| format!("carmenta_session={}", u.session);
    let page = |u: &User| app.client.get(app.url(&format!("/auth/orgs/{org}"))).header("cookie", cookie(u)).send();
    let post = |u: &User, path: String, form: Vec<(&'static str, &'static str)>| {
        app.client.post(app.url(&path)).header("cookie", cookie(u)).header("origin", &app.base).form(&form).send()
    };
    let role_of = |u: uuid::Uuid| {
        sqlx::query_scalar::<_, String>("SELECT role FROM org_members WHERE org_id = $1::uuid AND user_id = $2")
            .bind(org.clone())
            .bind(u)
            .fetch_optional(&app.pool)
    };
    let member_path = |u: &User, action: &str| format!("/auth/orgs/{org}/members/{}/{action}", u.id);

    // The owner sees every form: roles to choose (custom ones too), removal, profile, deletion.
    let html = page(&t.owner).await.unwrap().text().await.unwrap();
    for needle in [
        "Change the role of hosted-member@example.com",
        "Remove hosted-guest@example.com",
        "<option value=\"org:guest\"",
        "Save name and slug",
        "Delete this organization",
    ] {
        assert!(html.contains(needle), "the owner's page lacks {needle:?}");
    }
    assert!(!html.contains("Remove hosted-owner@example.com"), "no form acts on oneself");
    // An admin manages members and the profile but cannot delete; a member manages nothing.
    let html = page(&t.admin).await.unwrap().text().await.unwrap();
    assert!(html.contains("Remove hosted-member@example.com") && html.contains("Save name and slug"));
    assert!(!html.contains("Delete this organization"));
    assert!(!html.contains("Remove hosted-owner@example.com"), "an admin is offered no action on an owner");
    assert!(!html.contains("<option value=\"org:owner\""), "nor the owner role");
    let html = page(&t.member).await.unwrap().text().await.unwrap();
    assert!(!html.contains("Remove ") && !html.contains("Change the role") && !html.contains("Save name"), "{html}");

    // Role changes: the permission, the owner rule and the role's existence are checked.
    let r = post(&t.member, member_path(&t.guest, "role"), vec![("role", "org:admin")]).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post(&t.stranger, member_path(&t.guest, "role"), vec![("role", "org:admin")]).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = post(&t.admin, member_path(&t.owner, "role"), vec![("role", "org:member")]).await.unwrap();
    assert_eq!(r.status(), 403, "only owners unmake owners");
    for bad in ["", "org:nonesuch"] {
        let r = post(&t.admin, member_path(&t.member, "role"), vec![("role", bad)]).await.unwrap();
        assert_eq!(r.status(), 422, "{bad:?}");
    }
    let r = post(&t.admin, member_path(&t.member, "role"), vec![("role", "org:guest")]).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.headers()["location"].to_str().unwrap()),
        (303, format!("/auth/orgs/{org}").as_str())
    );
    assert_eq!(role_of(t.member.id).await.unwrap().as_deref(), Some("org:guest"));
    // Removal: refused without the permission, then done; the removed member's page is gone.
    let r = post(&t.member, member_path(&t.guest, "remove"), vec![]).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post(&t.owner, member_path(&t.guest, "remove"), vec![]).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(role_of(t.guest.id).await.unwrap(), None);
    assert_eq!(page(&t.guest).await.unwrap().status(), 404);
    let r = post(&t.owner, member_path(&t.guest, "promote"), vec![]).await.unwrap();
    assert_eq!(r.status(), 404);

    // The profile: name and slug, checked like the API.
    let path = format!("/auth/orgs/{org}/profile");
    let r = post(&t.admin, path.clone(), vec![("name", "Renamed"), ("slug", "Bad Slug")]).await.unwrap();
    assert_eq!(r.status(), 422);
    let r = post(&t.member, path.clone(), vec![("name", "Mine"), ("slug", "mine")]).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post(&t.admin, path, vec![("name", "Renamed Team"), ("slug", "renamed")]).await.unwrap();
    assert_eq!(r.status(), 303);
    let html = page(&t.owner).await.unwrap().text().await.unwrap();
    assert!(html.contains("Renamed Team (renamed)"), "{html}");

    // Deletion: only with org:sys_profile:delete, and only with the slug typed.
    let path = format!("/auth/orgs/{org}/delete");
    let r = post(&t.admin, path.clone(), vec![("confirm", "renamed")]).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = post(&t.owner, path.clone(), vec![("confirm", "hosted-team")]).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("type the slug (renamed)"));
    let r = post(&t.owner, path, vec![("confirm", "renamed")]).await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/auth/orgs"));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM organizations WHERE id = $1::uuid")
        .bind(&org)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(page(&t.owner).await.unwrap().status(), 404);
}

#[tokio::test]
async fn the_apps_backend_adds_changes_and_removes_members_with_a_service_key() {
    let app = TestApp::spawn().await;
    let (key, _) = carmenta::auth::service::create_service_key(&app.pool, "backend", true).await.unwrap();
    let (read_only, _) = carmenta::auth::service::create_service_key(&app.pool, "reader", false).await.unwrap();
    let t = crate::harness::team(&app, "backend").await;
    let org = t.org_id.clone();
    let newcomer = sign_up(&app, "newcomer@example.com").await;
    let members = format!("/v1/orgs/{org}/members");
    let add = |token: &str, body: Value| app.call(Method::POST, &members).by(token).json(&body).reply();

    // Members invite; they cannot add directly (403), strangers see nothing (404).
    let (s, e) = add(&t.owner.jwt, json!({"user_id": newcomer.id})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("service_key_required")), "{e}");
    let (s, _) = add(&t.stranger.jwt, json!({"user_id": newcomer.id})).await;
    assert_eq!(s, 404);
    let (s, _) = add(&read_only, json!({"user_id": newcomer.id})).await;
    assert_eq!(s, 403, "a read-only key writes nothing");
    // Bad input: unknown organization, user or role; a body that is not the schema.
    let (s, _) = app
        .call(Method::POST, &format!("/v1/orgs/{}/members", uuid::Uuid::nil()))
        .by(&key)
        .json(&json!({"user_id": newcomer.id}))
        .reply()
        .await;
    assert_eq!(s, 404);
    let (s, _) = add(&key, json!({"user_id": uuid::Uuid::nil()})).await;
    assert_eq!(s, 404);
    let (s, e) = add(&key, json!({"user_id": newcomer.id, "role": "org:nonesuch"})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("unknown_role")));
    let (s, _) = add(&key, json!({"user_id": "not-a-uuid"})).await;
    assert!((400..500).contains(&s), "{s}");
    // The key adds the user with a role; the user sees the organization at once.
    let (s, m) = add(&key, json!({"user_id": newcomer.id, "role": "org:guest"})).await;
    assert_eq!((s, m["role"].as_str(), m["email"].as_str()), (201, Some("org:guest"), Some("newcomer@example.com")));
    let (s, o) = call(&app, &newcomer, Method::GET, &format!("/v1/orgs/{org}"), None).await;
    assert_eq!((s, o["role"].as_str()), (200, Some("org:guest")));
    let (s, e) = add(&key, json!({"user_id": newcomer.id})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("already_member")));
    // Changing a role and removing, with no user named: any organization, the owner rule kept.
    let member = |u: &User| format!("/v1/orgs/{org}/members/{}", u.id);
    let (s, m) = app.call(Method::PATCH, &member(&newcomer)).by(&key).json(&json!({"role": "org:owner"})).reply().await;
    assert_eq!((s, m["role"].as_str()), (200, Some("org:owner")));
    let (s, _) = app.call(Method::DELETE, &member(&t.owner)).by(&key).reply().await;
    assert_eq!(s, 204, "another owner remains");
    let (s, e) = app.call(Method::DELETE, &member(&newcomer)).by(&key).reply().await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("last_owner")));
    let (s, _) = app.call(Method::DELETE, &member(&t.stranger)).by(&key).reply().await;
    assert_eq!(s, 404);
    let (s, _) = app
        .call(Method::DELETE, &format!("/v1/orgs/{}/members/{}", uuid::Uuid::nil(), newcomer.id))
        .by(&key)
        .reply()
        .await;
    assert_eq!(s, 404);
    // Acting for a user, a key is that user: the member rules apply.
    let (s, _) = app.call(Method::DELETE, &member(&t.guest)).acting_for(&key, t.member.id).reply().await;
    assert_eq!(s, 403);
    // Each change is audited as the key and heard by the app.
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM webhook_outbox WHERE payload->'data'->>'actor' LIKE 'service_key:%' ORDER BY created_at, id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        ["organizationMembership.created", "organizationMembership.updated", "organizationMembership.deleted"]
    );
}

#[tokio::test]
async fn invitation_mails_stay_within_budget_per_recipient_and_per_inviter() {
    let app = TestApp::spawn().await;
    let owner = sign_up(&app, "budget-owner@example.com").await;
    let (_, org) = call(&app, &owner, Method::POST, "/v1/orgs", Some(json!({"name": "Budget"}))).await;
    let id = org["id"].as_str().unwrap().to_string();
    let invitations = format!("/v1/orgs/{id}/invitations");
    // Budgets count in fixed ten-minute windows: start well inside one.
    let left: f64 = sqlx::query_scalar("SELECT (600 - mod(extract(epoch FROM now()), 600))::float8")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    if left < 30.0 {
        tokio::time::sleep(std::time::Duration::from_secs_f64(left + 1.0)).await;
    }
    let mails = |to: &'static str| {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM mail_outbox WHERE to_addr = $1")
            .bind(to)
            .fetch_one(&app.pool)
    };
    // One address: the invitation and four resends are mailed; the sixth mail is refused
    // and the renewal rolls back (the last mailed token still works).
    let (s, inv) = call(&app, &owner, Method::POST, &invitations, Some(json!({"email": "target@example.com"}))).await;
    assert_eq!(s, 201, "{inv}");
    let resend = format!("{invitations}/{}/resend", inv["id"].as_str().unwrap());
    for _ in 0..4 {
        assert_eq!(call(&app, &owner, Method::POST, &resend, None).await.0, 200);
    }
    let last = mailed_token(&app, "target@example.com").await;
    let (s, e) = call(&app, &owner, Method::POST, &resend, None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (429, Some("rate_limited")), "{e}");
    assert_eq!(mails("target@example.com").await.unwrap(), 5);
    let (s, p) = app.call(Method::POST, "/v1/invitations/preview").json(&json!({"token": last})).reply().await;
    assert_eq!((s, p["email"].as_str()), (200, Some("target@example.com")), "{p}");
    // One inviter: 100 invitation mails per window (the six above counted, the refused one too).
    let mut refused = None;
    for i in 0..100 {
        let (s, _) =
            call(&app, &owner, Method::POST, &invitations, Some(json!({"email": format!("many{i}@example.com")})))
                .await;
        if s != 201 {
            refused = Some((i, s));
            break;
        }
    }
    assert_eq!(refused, Some((94, 429)), "the 101st invitation mail of the window is refused");
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM org_invitations WHERE org_id = $1::uuid AND status = 'pending'")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(pending, 95, "a refused invitation is not created");
}
