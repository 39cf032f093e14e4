//! The admin console over real HTTP: admins made by the CLI's service (and the
//! real binary), sign-in by link and password, 404 for everyone else, CSRF, user
//! actions (ban, revoke, impersonate with `act`), the table browser (keyset
//! pages, filters, foreign keys, typed edits, sealed columns, CSV export and
//! import) and the SQL runner (read-only by default, writes confirmed and
//! audited, saved queries never overwritten silently). The browser tests are in
//! `admin_browser.rs`.

use base64::Engine;
use reqwest::Method;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::Value;
use uuid::Uuid;

use crate::harness::{PASSWORD, TestApp, sign_up};

/// A signed-in admin: the cookie header value and the session's CSRF token.
pub struct AdminLogin {
    pub user_id: Uuid,
    pub cookie: String,
    pub csrf: String,
}

/// Makes `email` an admin through the service the CLI uses; the sign-in link.
pub async fn make_admin(app: &TestApp, email: &str) -> (Uuid, String) {
    let c = carmenta::admin::service::create_admin(&app.pool, &app.base, email).await.expect("create admin");
    (c.user_id, c.link)
}

/// The CSRF token in a console page.
pub fn csrf_of(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("a csrf field in the page");
    let rest = &html[i + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("end of value")].to_string()
}

/// Signs in with a one-time link.
pub async fn sign_in(app: &TestApp, email: &str) -> AdminLogin {
    let (user_id, link) = make_admin(app, email).await;
    let token = link.split("token=").nth(1).expect("token in link").to_string();
    // The link's page only shows a button: fetching it uses nothing up.
    let page = app.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/admin/sign-in/link"));
    let res = app.client.post(app.url("/admin/sign-in/link")).form(&[("token", token.as_str())]).send().await.unwrap();
    assert_eq!(res.status(), 303, "sign-in by link");
    let set = res.headers().get(SET_COOKIE).expect("cookie").to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/admin"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let html = get_page(app, &cookie, "/admin").await.1;
    AdminLogin { user_id, cookie, csrf: csrf_of(&html) }
}

/// GETs a console page with the admin cookie: (status, body).
pub async fn get_page(app: &TestApp, cookie: &str, path: &str) -> (u16, String) {
    let res = app.client.get(app.url(path)).header(COOKIE, cookie).send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// POSTs a form with the admin cookie (the CSRF token added): (status, Location, body).
pub async fn post_form(app: &TestApp, a: &AdminLogin, path: &str, fields: &[(&str, &str)]) -> (u16, String, String) {
    let mut form: Vec<(&str, &str)> = vec![("csrf", a.csrf.as_str())];
    form.extend_from_slice(fields);
    let res = app.client.post(app.url(path)).header(COOKIE, &a.cookie).form(&form).send().await.unwrap();
    let status = res.status().as_u16();
    let location = res.headers().get(LOCATION).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, location, res.text().await.unwrap())
}

fn key(values: &[&str]) -> String {
    let v: Vec<String> = values.iter().map(|s| s.to_string()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
}

async fn audit_rows(app: &TestApp, action: &str) -> Vec<(String, Option<Uuid>, Option<String>, Value)> {
    sqlx::query_as("SELECT actor, on_behalf_of, target, detail FROM audit_log WHERE action = $1 ORDER BY id")
        .bind(action)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn everyone_but_an_admin_gets_404_on_every_admin_path() {
    let app = TestApp::spawn().await;
    let user = sign_up(&app, "plain@example.com").await;
    let unknown = app.get("/no/such/path").await;
    assert_eq!(unknown.status(), 404);
    let unknown_body = unknown.text().await.unwrap();
    let paths = [
        "/admin",
        "/admin/users",
        &format!("/admin/users/{}", user.id),
        "/admin/tables",
        "/admin/tables/users",
        "/admin/sql",
        "/admin/audit",
        "/admin/storage",
        "/admin/memory",
        "/admin/orgs",
        &format!("/admin/orgs/{}", Uuid::nil()),
        "/admin/nonexistent",
    ];
    for path in paths {
        for creds in
            [None, Some(format!("carmenta_session={}", user.session)), Some("carmenta_admin=cas_forged".to_string())]
        {
            let mut req = app.client.get(app.url(path)).bearer_auth(&user.jwt);
            if let Some(c) = &creds {
                req = req.header(COOKIE, c);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 404, "{path} with {creds:?}");
            let body = res.text().await.unwrap();
            // The same answer as a path that does not exist (request ids aside).
            let strip = |b: &str| b.split("\"request_id\"").next().unwrap_or("").to_string();
            assert_eq!(strip(&body), strip(&unknown_body), "{path}");
        }
    }
    // POSTs too.
    let res = app.client.post(app.url("/admin/sql")).form(&[("sql", "SELECT 1")]).send().await.unwrap();
    assert_eq!(res.status(), 404);
    // The sign-in page is the one public page; a non-admin's right password is refused.
    assert_eq!(app.get("/admin/sign-in").await.status(), 200);
    let res = app
        .client
        .post(app.url("/admin/sign-in"))
        .form(&[("email", "plain@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get(SET_COOKIE).is_none());
    // The landing page points to the console, the docs and the sign-in page.
    let landing = app.get("/").await.text().await.unwrap();
    for href in ["/admin/sign-in", "/docs", "/auth/sign-in"] {
        assert!(landing.contains(href), "{href}");
    }
}

#[tokio::test]
async fn admins_sign_in_by_link_once_or_by_password_and_sessions_end_when_idle() {
    let app = TestApp::builder().config(|c| c.admin.idle_timeout = std::time::Duration::from_secs(2)).spawn().await;
    sign_up(&app, "owner@example.com").await;
    // An existing account is promoted; its password signs it in to the console.
    let (id, link) = make_admin(&app, "owner@example.com").await;
    let token = link.split("token=").nth(1).unwrap();
    let first = app.client.post(app.url("/admin/sign-in/link")).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(first.status(), 303);
    let again = app.client.post(app.url("/admin/sign-in/link")).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(again.status(), 400, "a link works once");
    let res = app
        .client
        .post(app.url("/admin/sign-in"))
        .form(&[("email", "owner@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let cookie = res.headers().get(SET_COOKIE).unwrap().to_str().unwrap().split(';').next().unwrap().to_string();
    let (status, html) = get_page(&app, &cookie, "/admin").await;
    assert_eq!(status, 200);
    assert!(html.contains("owner@example.com"));
    let res = app.client.get(app.url("/admin")).header(COOKIE, &cookie).send().await.unwrap();
    let csp = res.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline") && csp.contains("frame-ancestors 'none'")
    );
    // Assets come from the binary.
    assert_eq!(app.get("/admin/assets/admin.css").await.status(), 200);
    assert!(!html.contains("http://") || !html.contains("<script src=\"http"), "nothing from a CDN");
    // Idle past the timeout: the session is gone.
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    assert_eq!(get_page(&app, &cookie, "/admin").await.0, 404);
    let signed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'admin.sign_in' AND actor = $1")
            .bind(format!("admin:{id}"))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(signed, 2);
}

#[tokio::test]
async fn a_form_without_its_csrf_token_or_from_another_site_is_refused() {
    let app = TestApp::spawn().await;
    let a = sign_in(&app, "admin@example.com").await;
    let victim = sign_up(&app, "victim@example.com").await;
    let path = format!("/admin/users/{}/ban", victim.id);
    let no_token = app.client.post(app.url(&path)).header(COOKIE, &a.cookie).form(&[("x", "1")]).send().await.unwrap();
    assert_eq!(no_token.status(), 403);
    let wrong =
        app.client.post(app.url(&path)).header(COOKIE, &a.cookie).form(&[("csrf", "nope")]).send().await.unwrap();
    assert_eq!(wrong.status(), 403);
    let cross = app
        .client
        .post(app.url(&path))
        .header(COOKIE, &a.cookie)
        .header("origin", "https://evil.example")
        .form(&[("csrf", a.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let banned: Option<time::OffsetDateTime> = sqlx::query_scalar("SELECT banned_at FROM users WHERE id = $1")
        .bind(victim.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(banned.is_none(), "nothing happened");
    // With the token: banned, signed out everywhere, sign-in refused.
    let (status, location, _) = post_form(&app, &a, &path, &[]).await;
    assert_eq!((status, location.as_str()), (303, format!("/admin/users/{}?done=banned", victim.id).as_str()));
    let (s, _) = app.get_as("/v1/me", &victim.jwt).await;
    assert_eq!(s, 401, "the access token's session ended");
    let (s, b) = app
        .call(Method::POST, "/v1/auth/sign-in")
        .json(&serde_json::json!({"email": "victim@example.com", "password": PASSWORD}))
        .reply()
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("user_banned")));
    let rows = audit_rows(&app, "admin.user.ban").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, format!("admin:{}", a.user_id));
    assert_eq!(rows[0].1, Some(victim.id));
    assert!(rows[0].3["before"]["banned_at"].is_null() && rows[0].3["after"]["banned_at"].is_string(), "{}", rows[0].3);
    // Unban: sign-in works again.
    assert_eq!(post_form(&app, &a, &format!("/admin/users/{}/unban", victim.id), &[]).await.0, 303);
    let (s, _) = app
        .call(Method::POST, "/v1/auth/sign-in")
        .json(&serde_json::json!({"email": "victim@example.com", "password": PASSWORD}))
        .reply()
        .await;
    assert_eq!(s, 200);
    // Deleting needs the email typed.
    let (s, _, _) = post_form(&app, &a, &format!("/admin/users/{}/delete", victim.id), &[("confirm", "wrong")]).await;
    assert_eq!(s, 400);
    let (s, _, _) =
        post_form(&app, &a, &format!("/admin/users/{}/delete", victim.id), &[("confirm", "victim@example.com")]).await;
    assert_eq!(s, 303);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE id = $1")
        .bind(victim.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn impersonation_tokens_carry_act_and_show_in_the_users_sessions_and_the_audit_log() {
    let app = TestApp::spawn().await;
    let a = sign_in(&app, "admin@example.com").await;
    let user = sign_up(&app, "someone@example.com").await;
    let (s, _, html) = post_form(&app, &a, &format!("/admin/users/{}/impersonate", user.id), &[]).await;
    assert_eq!(s, 200, "{html}");
    // The page shows the session token and the access token in <pre> blocks.
    let pres: Vec<&str> = html.split("<pre>").skip(1).map(|p| p.split("</pre>").next().unwrap()).collect();
    let session = pres.iter().find(|p| p.starts_with("cs_")).expect("session token").to_string();
    let jwt = pres.iter().find(|p| p.starts_with("ey")).expect("access token").to_string();
    let payload = jwt.split('.').nth(1).unwrap();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["sub"], user.id.to_string());
    assert_eq!(claims["act"]["sub"], a.user_id.to_string());
    // The token works as the user, and a refreshed token keeps `act`.
    let (s, me) = app.get_as("/v1/me", &jwt).await;
    assert_eq!((s, me["id"].as_str()), (200, Some(user.id.to_string().as_str())));
    let (s, t) = app.post_as("/v1/auth/token", &session, &serde_json::json!({})).await;
    assert_eq!(s, 200, "{t}");
    let payload = t["access_token"].as_str().unwrap().split('.').nth(1).unwrap().to_string();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["act"]["sub"], a.user_id.to_string());
    // The user's own session list shows it.
    let (_, list) = app.get_as("/v1/me/sessions", &user.jwt).await;
    let shown: Vec<&Value> =
        list["data"].as_array().unwrap().iter().filter(|s| s["impersonated_by"].is_string()).collect();
    assert_eq!(shown.len(), 1, "{list}");
    assert_eq!(shown[0]["impersonated_by"], a.user_id.to_string());
    // The audit row names both, and what the admin does as the user is audited as both.
    let rows = audit_rows(&app, "admin.user.impersonate").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, format!("admin:{}", a.user_id));
    assert_eq!(rows[0].1, Some(user.id));
    let (s, _) = app.post_as("/v1/auth/sign-out", &jwt, &serde_json::json!({})).await;
    assert_eq!(s, 204);
    let actor: String =
        sqlx::query_scalar("SELECT actor FROM audit_log WHERE action = 'auth.sign_out' ORDER BY id DESC LIMIT 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(actor, format!("admin:{} as user:{}", a.user_id, user.id));
}

#[tokio::test]
async fn the_table_browser_pages_sorts_filters_follows_keys_and_hides_sealed_columns() {
    let app = TestApp::spawn().await;
    let a = sign_in(&app, "admin@example.com").await;
    for i in 0..120 {
        sqlx::query("INSERT INTO users (id, email, name) VALUES ($1, $2, $3)")
            .bind(Uuid::now_v7())
            .bind(format!("u{i:03}@example.com"))
            .bind(if i % 3 == 0 { None } else { Some(format!("name {}", i % 7)) })
            .execute(&app.pool)
            .await
            .unwrap();
    }
    // Sorted by a nullable column, descending, in pages of 50 (the third starts
    // after a NULL): every row once, in the database's own order.
    let expected: Vec<String> = sqlx::query_scalar("SELECT id::text FROM users ORDER BY name DESC NULLS LAST, id DESC")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut path = "/admin/tables/users?sort=name&dir=desc".to_string();
    for _ in 0..10 {
        let (s, html) = get_page(&app, &a.cookie, &path).await;
        assert_eq!(s, 200, "{html}");
        for part in html.split("/admin/tables/users/row/").skip(1) {
            let k = part.split('"').next().unwrap();
            let ids: Vec<String> =
                serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(k).unwrap()).unwrap();
            seen.push(ids[0].clone());
        }
        match html
            .split("rel=\"next\"")
            .next()
            .and_then(|h| h.rsplit("href=\"").next())
            .filter(|_| html.contains("rel=\"next\""))
        {
            Some(next) => path = next.split('"').next().unwrap().replace("&#38;", "&").replace("&amp;", "&"),
            None => break,
        }
    }
    assert_eq!(seen, expected);
    // Typed filters: contains, equality, null.
    let (_, html) = get_page(&app, &a.cookie, "/admin/tables/users?fc=email&fo=contains&fv=u07").await;
    assert_eq!(html.matches("/admin/tables/users/row/").count(), 10, "u070..u079");
    let (_, html) = get_page(&app, &a.cookie, "/admin/tables/users?fc=name&fo=null&fv=").await;
    assert_eq!(html.matches("/admin/tables/users/row/").count(), 40 + 1, "120/3 without a name, and the admin");
    let (s, html) = get_page(&app, &a.cookie, "/admin/tables/users?fc=created_at&fo=gt&fv=not-a-time").await;
    assert_eq!(s, 422, "a value the column's type refuses: {html}");
    let (s, _) = get_page(&app, &a.cookie, "/admin/tables/users?fc=password_hash&fo=eq&fv=x").await;
    assert_eq!(s, 400, "sealed columns cannot be filtered");
    let (s, _) = get_page(&app, &a.cookie, "/admin/tables/no_such_table").await;
    assert_eq!(s, 404);
    // Sealed columns never appear; foreign keys are links both ways.
    let (_, html) = get_page(&app, &a.cookie, "/admin/tables/sessions").await;
    assert!(!html.contains("token_hash"), "sealed column shown");
    let (_, html) =
        get_page(&app, &a.cookie, &format!("/admin/tables/users/row/{}", key(&[&a.user_id.to_string()]))).await;
    assert!(html.contains("Sealed or secret columns, never shown: password_hash"), "{html}");
    assert!(html.contains("/admin/tables/sessions?fc=user_id&#38;fo=eq&#38;fv="), "incoming key link");
    let (_, html) = get_page(&app, &a.cookie, "/admin/tables/admin_sessions").await;
    assert!(html.contains("/admin/tables/admins?fc=user_id&#38;fo=eq"), "outgoing key link");
    assert!(!html.contains("csrf_token"));
    // Row counts: exact for a small table.
    let (_, html) = get_page(&app, &a.cookie, "/admin/tables/users").await;
    assert!(html.contains("121 rows"), "exact small count");
}

#[tokio::test]
async fn table_edits_round_trip_with_typed_values_and_are_audited() {
    let app = TestApp::spawn().await;
    let a = sign_in(&app, "admin@example.com").await;
    let user = sign_up(&app, "edit@example.com").await;
    let row = format!("/admin/tables/users/row/{}", key(&[&user.id.to_string()]));
    let (_, html) = get_page(&app, &a.cookie, &row).await;
    assert!(html.contains("name=\"v.public_metadata\""), "json in a text area");
    // Change the name and the JSON metadata; leave the rest.
    let (s, location, body) = post_form(
        &app,
        &a,
        &row,
        &[
            ("v.email", "edit@example.com"),
            ("v.name", "Edited Name"),
            ("v.public_metadata", "{\"plan\": \"pro\"}"),
            ("v.banned_at", ""),
            ("null.v.banned_at", "true"),
        ],
    )
    .await;
    assert_eq!(s, 303, "{body}");
    assert!(location.contains("done=updated"));
    let (name, meta): (Option<String>, Value) = sqlx::query_as("SELECT name, public_metadata FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("Edited Name"));
    assert_eq!(meta["plan"], "pro");
    let rows = audit_rows(&app, "admin.table.update").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].3["before"]["name"], Value::Null);
    assert_eq!(rows[0].3["after"]["name"], "Edited Name");
    assert_eq!(rows[0].3["columns"], serde_json::json!(["name", "public_metadata"]));
    assert!(rows[0].3["after"].get("password_hash").is_none(), "sealed columns stay out of the audit too");
    // Bad values are refused by the column's type, nothing written.
    let (s, _, body) = post_form(&app, &a, &row, &[("v.public_metadata", "{not json")]).await;
    assert_eq!(s, 422, "{body}");
    assert!(body.contains("invalid input syntax for type json"), "{body}");
    // Insert and delete a row of another table (text key, boolean, array, default).
    let (s, location, body) = post_form(
        &app,
        &a,
        "/admin/tables/storage_buckets/new",
        &[
            ("v.id", "from-console"),
            ("v.name", "from-console"),
            ("v.public", "true"),
            ("v.allowed_mime_types", "{image/png,image/jpeg}"),
        ],
    )
    .await;
    assert_eq!(s, 303, "{body}");
    assert!(location.contains("done=inserted"));
    let (public, mimes): (bool, Option<Vec<String>>) =
        sqlx::query_as("SELECT public, allowed_mime_types FROM storage_buckets WHERE id = 'from-console'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(public);
    assert_eq!(mimes, Some(vec!["image/png".to_string(), "image/jpeg".to_string()]));
    let (s, _, _) =
        post_form(&app, &a, &format!("/admin/tables/storage_buckets/row/{}/delete", key(&["from-console"])), &[]).await;
    assert_eq!(s, 303);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM storage_buckets WHERE id = 'from-console'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(audit_rows(&app, "admin.table.insert").await.len(), 1);
    let deleted = audit_rows(&app, "admin.table.delete").await;
    assert_eq!(deleted[0].3["before"]["public"], "true");
    assert!(deleted[0].3["after"].is_null());
}

#[tokio::test]
async fn csv_export_streams_every_row_and_import_is_all_or_nothing() {
    let app = TestApp::spawn().await;
    let a = sign_in(&app, "admin@example.com").await;
    sqlx::query("INSERT INTO users (id, email, name) SELECT gen_random_uuid(), 'bulk' || g || '@example.com', 'a,\"b' FROM generate_series(1, 3000) g")
        .execute(&app.pool)
        .await
        .unwrap();
    let res = app
        .client
        .get(app.url("/admin/tables/users/export.csv?fc=email&fo=contains&fv=bulk"))
        .header(COOKIE, &a.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    let body = res.text().await.unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 3001, "header + 3000 rows");
    assert!(lines[0].starts_with("id,email,email_verified_at,name"), "{}", lines[0]);
    assert!(!lines[0].contains("password_hash"));
    assert!(lines[1].contains("\"a,\"\"b\""), "CSV quoting: {}", lines[1]);
    // Import: two good rows land together; a file with one bad row writes nothing.
    let import = |csv: &'static str| {
        let form = reqwest::multipart::Form::new()
            .text("csrf", a.csrf.clone())
            .part("file", reqwest::multipart::Part::bytes(csv.as_bytes().to_vec()).file_name("b.csv"));
        app.client
            .post(app.url("/admin/tables/storage_buckets/import"))
            .header(COOKIE, &a.cookie)
            .multipart(form)
            .send()
    };
    let res = import("id,name,public\nimp-1,imp-1,true\nimp-2,imp-2,false\n").await.unwrap();
    assert_eq!(res.status(), 303);
    let res = import("id,name,public\nimp-3,imp-3,true\nimp-4,imp-4,maybe\n").await.unwrap();
    assert_eq!(res.status(), 422);
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM storage_buckets WHERE id LIKE 'imp-%' ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(ids, vec!["imp-1", "imp-2"]);
    let res = import("id,password_hash\nx,y\n").await.unwrap();
    assert_eq!(res.status(), 400, "unknown or sealed columns are refused");
    // Without the CSRF field the import is refused.
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(b"id,name\nz,z\n".to_vec()).file_name("b.csv"));
    let res = app
        .client
        .post(app.url("/admin/tables/storage_buckets/import"))
        .header(COOKIE, &a.cookie)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let rows = audit_rows(&app, "admin.table.import").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].3["rows"], 2);
}

#[tokio::test]
async fn the_sql_runner_is_read_only_unless_told_and_keeps_saved_queries() {
    let app = TestApp::spawn().await;
    let a = sign_in(&app, "admin@example.com").await;
    let (s, _, html) =
        post_form(&app, &a, "/admin/sql", &[("sql", "SELECT email, 1 + 1 AS two FROM users"), ("mode", "read")]).await;
    assert_eq!(s, 200, "{html}");
    assert!(
        html.contains("admin@example.com") && html.contains("<th>two</th>") && html.contains("rolled back"),
        "{html}"
    );
    // Writes are refused in read-only mode, also when smuggled.
    for sql in [
        "DELETE FROM users",
        "WITH d AS (DELETE FROM users RETURNING 1) SELECT * FROM d",
        "SELECT 1; DELETE FROM users",
        "COMMIT; DELETE FROM users",
        "SET TRANSACTION READ WRITE",
        "DO $$ BEGIN SET TRANSACTION READ WRITE; DELETE FROM users; END $$",
    ] {
        let (s, _, html) = post_form(&app, &a, "/admin/sql", &[("sql", sql), ("mode", "read")]).await;
        assert_eq!(s, 422, "{sql}: {html}");
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&app.pool).await.unwrap();
    assert_eq!(n, 1, "nothing was deleted");
    let (_, _, html) = post_form(&app, &a, "/admin/sql", &[("sql", "DELETE FROM users"), ("mode", "read")]).await;
    assert!(html.contains("read-only transaction"), "{html}");
    // Write mode needs the confirmation, then commits and is audited.
    let update = "UPDATE users SET name = 'via sql' WHERE email = 'admin@example.com'";
    let (s, _, _) = post_form(&app, &a, "/admin/sql", &[("sql", update), ("mode", "write")]).await;
    assert_eq!(s, 400);
    let (s, _, html) =
        post_form(&app, &a, "/admin/sql", &[("sql", update), ("mode", "write"), ("confirm", "true")]).await;
    assert_eq!(s, 200, "{html}");
    assert!(html.contains("1 affected") && html.contains("committed"), "{html}");
    let name: Option<String> = sqlx::query_scalar("SELECT name FROM users").fetch_one(&app.pool).await.unwrap();
    assert_eq!(name.as_deref(), Some("via sql"));
    let rows = audit_rows(&app, "admin.sql.write").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].3["sql"], update);
    // Row cap, statement timeout, EXPLAIN.
    let (_, _, html) =
        post_form(&app, &a, "/admin/sql", &[("sql", "SELECT g FROM generate_series(1, 5000) g"), ("mode", "read")])
            .await;
    assert!(html.contains("1000 rows (cut at 1000)"), "{html}");
    let (_, _, html) = post_form(
        &app,
        &a,
        "/admin/sql",
        &[("sql", "SELECT * FROM users WHERE id IS NOT NULL"), ("mode", "read"), ("explain", "explain")],
    )
    .await;
    assert!(html.contains("Seq Scan") || html.contains("Index"), "{html}");
    // Saved queries: a save from a stale version is refused, the newer text stays.
    let (s, location, _) =
        post_form(&app, &a, "/admin/sql/save", &[("name", "Recent users"), ("sql", "SELECT 1")]).await;
    assert_eq!(s, 303);
    let id = location.split("saved=").nth(1).unwrap().split('&').next().unwrap().to_string();
    let (s, _, _) = post_form(
        &app,
        &a,
        "/admin/sql/save",
        &[("id", &id), ("version", "1"), ("name", "Recent users"), ("sql", "SELECT 2")],
    )
    .await;
    assert_eq!(s, 303);
    let (s, _, html) = post_form(
        &app,
        &a,
        "/admin/sql/save",
        &[("id", &id), ("version", "1"), ("name", "Recent users"), ("sql", "SELECT 3")],
    )
    .await;
    assert_eq!(s, 409, "{html}");
    assert!(html.contains("SELECT 2"), "the saved text is shown beside the refused one");
    let (sql, version): (String, i32) = sqlx::query_as("SELECT sql, version FROM admin_queries WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!((sql.as_str(), version), ("SELECT 2", 2));
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM admin_query_versions WHERE query_id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(versions, 2, "every version kept");
    let (s, _, _) = post_form(&app, &a, "/admin/sql/save", &[("name", "recent USERS"), ("sql", "SELECT 4")]).await;
    assert_eq!(s, 409, "a second query of the same name does not replace the first");
    // Another admin does not see it.
    let b = sign_in(&app, "other-admin@example.com").await;
    let (s, _) = get_page(&app, &b.cookie, &format!("/admin/sql?saved={id}")).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn every_console_page_renders_for_an_admin() {
    let app = TestApp::spawn().await;
    let a = sign_in(&app, "admin@example.com").await;
    let user = sign_up(&app, "pages@example.com").await;
    let (_, conv) = app.post_as("/v1/conversations", &user.jwt, &serde_json::json!({"title": "Trip"})).await;
    let conv_id = conv["id"].as_str().unwrap().to_string();
    let (s, _) = app
        .post_as(
            &format!("/v1/conversations/{conv_id}/messages"),
            &user.jwt,
            &serde_json::json!({"id": "m1", "role": "user", "parts": [{"type": "text", "text": "Book me a train to Lyon"}]}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, mem) =
        app.post_as("/v1/memories", &user.jwt, &serde_json::json!({"text": "Prefers trains over planes"})).await;
    assert_eq!(s, 201, "{mem}");
    let mem_id = mem["id"].as_str().unwrap().to_string();
    let pages = [
        ("/admin", "Overview"),
        ("/admin/users", "pages@example.com"),
        (&format!("/admin/users/{}", user.id), "Sessions"),
        ("/admin/audit", "admin.sign_in"),
        ("/admin/tables", "storage_objects"),
        ("/admin/tables/memories", "Prefers trains"),
        ("/admin/tables/users/new", "Insert"),
        ("/admin/sql", "Saved queries"),
        ("/admin/storage", "New bucket"),
        ("/admin/connections", "Integrations"),
        ("/admin/conversations", "Trip"),
        (&format!("/admin/conversations/{conv_id}"), "Book me a train to Lyon"),
        (&format!("/admin/knowledge?user={}", user.id), "Folders"),
        ("/admin/memory", "Prefers trains"),
        (&format!("/admin/memory/{mem_id}"), "History"),
    ];
    for (path, needle) in pages {
        let (s, html) = get_page(&app, &a.cookie, path).await;
        assert_eq!(s, 200, "{path}: {html}");
        assert!(html.contains(needle), "{path} lacks {needle:?}");
    }
    // Memory edits through the console supersede, with actor admin in the history.
    let (s, location, body) =
        post_form(&app, &a, &format!("/admin/memory/{mem_id}/edit"), &[("text", "Prefers night trains")]).await;
    assert_eq!(s, 303, "{body}");
    let new_id = location.split("/admin/memory/").nth(1).unwrap().split('?').next().unwrap().to_string();
    let actor: String =
        sqlx::query_scalar("SELECT actor FROM memory_history WHERE memory_id = $1::uuid AND event = 'added'")
            .bind(&new_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(actor, "admin");
    let (_, detail) = app.get_as(&format!("/v1/memories/{new_id}"), &user.jwt).await;
    assert_eq!(detail["text"], "Prefers night trains");
    assert_eq!(audit_rows(&app, "admin.memory.update").await.len(), 1);
}

#[tokio::test]
async fn the_organizations_pages_show_what_an_organization_has_and_act_under_the_owner_rule() {
    use serde_json::json;
    let app = TestApp::spawn().await;
    let a = sign_in(&app, "admin@example.com").await;
    let t = crate::harness::team(&app, "acme").await;
    let org = t.org_id.clone();
    let (s, b) = app.post_as("/storage/v1/bucket", &t.owner.jwt, &json!({"name": "acme-files", "org_id": org})).await;
    assert_eq!(s, 200, "{b}");
    let (s, inv) =
        app.post_as(&format!("/v1/orgs/{org}/invitations"), &t.owner.jwt, &json!({"email": "later@example.com"})).await;
    assert_eq!(s, 201, "{inv}");
    let inv_id = inv["id"].as_str().unwrap().to_string();

    // The list, searchable by name or slug.
    let (s, html) = get_page(&app, &a.cookie, "/admin/orgs").await;
    assert_eq!(s, 200);
    assert!(html.contains(&format!("/admin/orgs/{org}")) && html.contains("acme-team"), "{html}");
    assert!(html.contains("1 buckets · 0 connections · 0 documents"), "{html}");
    assert!(get_page(&app, &a.cookie, "/admin/orgs?q=ACME").await.1.contains("acme-team"));
    assert!(get_page(&app, &a.cookie, "/admin/orgs?q=%25").await.1.contains("No organization matches."));
    // One organization: members with roles, the invitation, roles, shared buckets.
    let (s, html) = get_page(&app, &a.cookie, &format!("/admin/orgs/{org}")).await;
    assert_eq!(s, 200);
    for needle in [
        "acme-owner@example.com",
        "acme-guest@example.com",
        "org:guest",
        "later@example.com",
        "/admin/storage/b/acme%2Dfiles",
        "Make owner",
        &format!("/admin/orgs/{org}/invitations/{inv_id}/revoke"),
    ] {
        assert!(html.contains(needle), "the organization's page lacks {needle:?}");
    }
    assert!(!html.contains("acme-stranger@example.com"));
    // The sole owner has no Remove button; the others have.
    assert!(!html.contains(&format!("/admin/orgs/{org}/members/{}/remove", t.owner.id)));
    assert!(html.contains(&format!("/admin/orgs/{org}/members/{}/remove", t.admin.id)));
    // The user's page links the organizations they are in.
    let (_, html) = get_page(&app, &a.cookie, &format!("/admin/users/{}", t.member.id)).await;
    assert!(html.contains(&format!("/admin/orgs/{org}")) && html.contains("org:member"));
    // Unknown or malformed ids are 404.
    assert_eq!(get_page(&app, &a.cookie, &format!("/admin/orgs/{}", Uuid::nil())).await.0, 404);
    assert_eq!(get_page(&app, &a.cookie, "/admin/orgs/not-an-id").await.0, 404);

    // The owner rule holds for the operator: the last owner cannot be removed (no
    // button is offered above, and a forged post is refused)…
    let owner_path = format!("/admin/orgs/{org}/members/{}", t.owner.id);
    let (s, _, body) = post_form(&app, &a, &format!("{owner_path}/remove"), &[]).await;
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("keeps at least one owner"));
    // …until another member is made owner.
    let (s, loc, _) = post_form(&app, &a, &format!("/admin/orgs/{org}/members/{}/make-owner", t.admin.id), &[]).await;
    assert_eq!((s, loc.as_str()), (303, format!("/admin/orgs/{org}?done=saved").as_str()));
    let (s, _, _) = post_form(&app, &a, &format!("{owner_path}/remove"), &[]).await;
    assert_eq!(s, 303);
    // Removal takes access away at once.
    assert_eq!(app.get_as(&format!("/v1/orgs/{org}"), &t.member.jwt).await.0, 200);
    let (s, _, _) = post_form(&app, &a, &format!("/admin/orgs/{org}/members/{}/remove", t.member.id), &[]).await;
    assert_eq!(s, 303);
    assert_eq!(app.get_as(&format!("/v1/orgs/{org}"), &t.member.jwt).await.0, 404);
    assert_eq!(app.call(Method::GET, "/storage/v1/bucket/acme-files").by(&t.member.jwt).send().await.status(), 400);
    let roles: Vec<(Uuid, String)> = sqlx::query_as("SELECT user_id, role FROM org_members WHERE org_id = $1::uuid")
        .bind(&org)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(roles.contains(&(t.admin.id, "org:owner".into())) && roles.len() == 2, "{roles:?}");
    // A stranger's id is no member; an unknown action is 404.
    let (s, _, _) = post_form(&app, &a, &format!("/admin/orgs/{org}/members/{}/remove", t.stranger.id), &[]).await;
    assert_eq!(s, 404);
    let (s, _, _) = post_form(&app, &a, &format!("/admin/orgs/{org}/members/{}/promote", t.guest.id), &[]).await;
    assert_eq!(s, 404);
    // Revoking the invitation ends its link.
    let (s, _, _) = post_form(&app, &a, &format!("/admin/orgs/{org}/invitations/{inv_id}/revoke"), &[]).await;
    assert_eq!(s, 303);
    let status: String = sqlx::query_scalar("SELECT status FROM org_invitations WHERE id = $1::uuid")
        .bind(&inv_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "revoked");
    let (s, _, _) = post_form(&app, &a, &format!("/admin/orgs/{org}/invitations/{inv_id}/revoke"), &[]).await;
    assert_eq!(s, 404, "a revoked invitation cannot be revoked again");
    // Each change is audited with the operator as actor and heard by the app.
    for action in ["org.member_role", "org.member_remove", "org.invitation_revoke"] {
        let rows = audit_rows(&app, action).await;
        assert!(rows.iter().any(|r| r.0 == format!("admin:{}", a.user_id)), "{action}: {rows:?}");
    }
    let removed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_outbox WHERE event_type = 'organizationMembership.deleted'
           AND payload->'data'->>'actor' = $1",
    )
    .bind(format!("admin:{}", a.user_id))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(removed, 2);

    // Deleting needs the slug typed; then the organization and its bucket are gone.
    let delete = format!("/admin/orgs/{org}/delete");
    let (s, _, body) = post_form(&app, &a, &delete, &[("confirm", "acme")]).await;
    assert_eq!(s, 400, "{body}");
    let (s, loc, _) = post_form(&app, &a, &delete, &[("confirm", "acme-team")]).await;
    assert_eq!((s, loc.as_str()), (303, "/admin/orgs?done=deleted"));
    assert_eq!(app.get_as(&format!("/v1/orgs/{org}"), &t.admin.jwt).await.0, 404);
    let buckets: i64 = sqlx::query_scalar("SELECT count(*) FROM storage_buckets WHERE id = 'acme-files'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(buckets, 0);
    assert_eq!(audit_rows(&app, "org.delete").await.len(), 1);
}

#[tokio::test]
async fn storage_pages_create_buckets_upload_preview_move_and_delete() {
    let app = TestApp::spawn().await;
    let a = sign_in(&app, "admin@example.com").await;
    let (s, _, body) = post_form(&app, &a, "/admin/storage/buckets", &[("id", "media"), ("limit", "1000000")]).await;
    assert_eq!(s, 303, "{body}");
    // A 2×2 PNG, uploaded from the console.
    let png = image_png();
    let form = reqwest::multipart::Form::new()
        .text("csrf", a.csrf.clone())
        .text("prefix", "pics/")
        .part("file", reqwest::multipart::Part::bytes(png).file_name("dot.png").mime_str("image/png").unwrap());
    let res = app
        .client
        .post(app.url("/admin/storage/b/media/upload"))
        .header(COOKIE, &a.cookie)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "{}", res.text().await.unwrap());
    let (s, html) = get_page(&app, &a.cookie, "/admin/storage/b/media").await;
    assert_eq!(s, 200);
    assert!(html.contains("pics/"), "folder navigation");
    let (_, html) = get_page(&app, &a.cookie, "/admin/storage/b/media?prefix=pics/").await;
    let thumb = html
        .split("class=\"thumb\" src=\"")
        .nth(1)
        .expect("a thumbnail")
        .split('"')
        .next()
        .unwrap()
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    let res = app.client.get(app.url(&thumb)).send().await.unwrap();
    assert_eq!(res.status(), 200, "the thumbnail renders through the imaging area");
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("image/"));
    let (s, _, _) =
        post_form(&app, &a, "/admin/storage/b/media/move", &[("key", "pics/dot.png"), ("to", "pics/moved.png")]).await;
    assert_eq!(s, 303);
    let (s, _, html) = post_form(&app, &a, "/admin/storage/b/media/sign", &[("key", "pics/moved.png")]).await;
    assert_eq!(s, 200);
    let link =
        html.split("<pre>").nth(1).unwrap().split("</pre>").next().unwrap().replace("&#38;", "&").replace("&amp;", "&");
    let res = app.client.get(&link).send().await.unwrap();
    assert_eq!(res.status(), 200, "the signed link downloads");
    let (s, _, _) = post_form(&app, &a, "/admin/storage/b/media/delete", &[("key", "pics/moved.png")]).await;
    assert_eq!(s, 303);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM storage_objects").fetch_one(&app.pool).await.unwrap();
    assert_eq!(n, 0);
    for action in [
        "admin.storage.bucket_create",
        "admin.storage.object_upload",
        "admin.storage.object_move",
        "admin.storage.object_delete",
    ] {
        assert_eq!(audit_rows(&app, action).await.len(), 1, "{action}");
    }
}

/// A 4×4 red PNG.
fn image_png() -> Vec<u8> {
    vec![
        137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 4, 0, 0, 0, 4, 8, 2, 0, 0, 0, 38, 147,
        9, 41, 0, 0, 0, 16, 73, 68, 65, 84, 120, 156, 99, 56, 33, 39, 7, 71, 12, 196, 113, 0, 177, 99, 16, 65, 59, 75,
        99, 130, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
    ]
}

#[tokio::test]
async fn the_cli_creates_an_admin_and_prints_a_link() {
    let app = TestApp::spawn().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carmenta"))
        .args(["admin", "create", "--email", "cli-admin@example.com"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", app.database_url())
        .env("CARMENTA_PUBLIC_URL", &app.base)
        .env("CARMENTA_CONFIG", "/dev/null")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let link = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(link.starts_with(&format!("{}/admin/sign-in?token=", app.base)), "{link}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("created the account"));
    let token = link.split("token=").nth(1).unwrap();
    let res = app.client.post(app.url("/admin/sign-in/link")).form(&[("token", token)]).send().await.unwrap();
    assert_eq!(res.status(), 303);
}
