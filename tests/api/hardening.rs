//! Issue #22's hardening: what an attacker or a careless client tried, refused.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Backend, PASSWORD, TestApp, eventually, fed_body, sign_up, trickled};
use crate::storage::St;

/// A page that, were it run on the API's origin, would take the visitor's session.
const EVIL_HTML: &[u8] = b"<html><script>fetch('/v1/auth/token',{method:'POST'})</script></html>";
const EVIL_SVG: &[u8] = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>";

#[tokio::test]
async fn uploaded_html_and_svg_cannot_run_script_on_the_api_origin() {
    let st = St::new(Backend::Fs).await;
    st.bucket("pub", json!({"public": true})).await;
    for (key, body, ct) in [
        ("evil.html", EVIL_HTML, "text/html"),
        ("evil.svg", EVIL_SVG, "image/svg+xml"),
        ("evil.xml", EVIL_SVG, "application/xml"),
        ("ok.txt", b"plain" as &[u8], "text/plain"),
        ("ok.json", b"{}" as &[u8], "application/json"),
    ] {
        let r = st.put(&st.a.jwt, "pub", key, body, ct).await;
        assert_eq!(r.status(), 200, "{key}");
    }
    let active = |h: &reqwest::header::HeaderMap, what: &str| {
        assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
        let csp = h.get("content-security-policy").map(|v| v.to_str().unwrap()).unwrap_or("");
        assert!(csp.contains("sandbox"), "{what}: CSP {csp:?}");
        let cd = h.get("content-disposition").map(|v| v.to_str().unwrap()).unwrap_or("");
        assert!(cd.starts_with("attachment"), "{what}: Content-Disposition {cd:?}");
    };
    for key in ["evil.html", "evil.svg", "evil.xml"] {
        // Public, authenticated and signed downloads, and a HEAD.
        let r = st.req(Method::GET, &format!("/object/public/pub/{key}"), "").send().await;
        assert_eq!(r.status(), 200);
        active(r.headers(), &format!("public {key}"));
        let r = st.req(Method::GET, &format!("/object/authenticated/pub/{key}"), &st.a.jwt).send().await;
        active(r.headers(), &format!("authenticated {key}"));
        let r = st.req(Method::HEAD, &format!("/object/public/pub/{key}"), "").send().await;
        active(r.headers(), &format!("HEAD {key}"));
        let (status, signed) = st
            .req(Method::POST, &format!("/object/sign/pub/{key}"), &st.a.jwt)
            .json(&json!({"expiresIn": 60}))
            .reply()
            .await;
        assert_eq!(status, 200, "{signed}");
        let path = signed["signedURL"].as_str().unwrap();
        let r = st.app.call(Method::GET, &format!("/storage/v1{path}")).send().await;
        assert_eq!(r.status(), 200, "{path}");
        active(r.headers(), &format!("signed {key}"));
    }
    // Passive types stay inline, never sniffed.
    for key in ["ok.txt", "ok.json"] {
        let r = st.req(Method::GET, &format!("/object/public/pub/{key}"), "").send().await;
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(h.get("content-security-policy").is_none() && h.get("content-disposition").is_none(), "{key}");
    }
    // Were a sandboxed page to run anyway, its cookie-authenticated token request
    // comes with `Origin: null` (its Referer may name our origin): refused.
    let public = st.app.url("");
    let (status, signed_in) = st
        .app
        .call(Method::POST, "/v1/auth/sign-in")
        .json(&json!({"email": "a@example.com", "password": PASSWORD}))
        .reply()
        .await;
    assert_eq!(status, 200, "{signed_in}");
    let cookie = format!("carmenta_session={}", signed_in["session_token"].as_str().unwrap());
    let token = |origin: Option<&'static str>| {
        let mut call = st
            .app
            .call(Method::POST, "/v1/auth/token")
            .header("cookie", cookie.clone())
            .header("referer", format!("{public}/storage/v1/object/public/pub/evil.html"));
        if let Some(o) = origin {
            call = call.header("origin", o);
        }
        call.reply()
    };
    let (status, body) = token(Some("null")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("csrf_failed")), "{body}");
    // The same request from the site itself (no Origin, its own Referer) passes.
    let (status, body) = token(None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_separate_storage_origin_shows_active_objects_inline_but_sandboxed() {
    let st = St::with(Backend::Fs, |c| {
        c.storage_public_url = Some(url::Url::parse("http://files.example.test:8080").unwrap());
    })
    .await;
    st.bucket("pub", json!({"public": true})).await;
    assert_eq!(st.put(&st.a.jwt, "pub", "page.html", EVIL_HTML, "text/html").await.status(), 200);
    let r =
        st.req(Method::GET, "/object/public/pub/page.html", "").header("host", "files.example.test:8080").send().await;
    let h = r.headers();
    assert!(h["content-security-policy"].to_str().unwrap().contains("sandbox"));
    assert!(h.get("content-disposition").is_none(), "inline on the storage origin");
    // Reached through the API's own host it is still an attachment.
    let r = st.req(Method::GET, "/object/public/pub/page.html", "").send().await;
    assert!(r.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
}

#[tokio::test]
async fn errors_stay_well_formed_under_compression_and_docs_cannot_be_framed() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "gz@example.com").await;
    // A framework rejection (text/plain, compressed) rewritten into the envelope.
    let r =
        app.call(Method::GET, "/v1/conversations?limit=abc").by(&u.jwt).header("accept-encoding", "gzip").send().await;
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("content-encoding").is_none(), "{:?}", r.headers());
    let body: Value = r.json().await.expect("a JSON envelope, not gzip bytes");
    assert!(body["error"]["code"].is_string(), "{body}");
    // Ordinary answers are still compressed.
    let r = app.call(Method::GET, "/openapi.json").header("accept-encoding", "gzip").send().await;
    assert_eq!(r.headers()["content-encoding"], "gzip");
    // The API explorer may not be framed.
    let r = app.get("/docs/").await;
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
}

/// Sends `body` (a JSON text) to `path` as `token`; the status and the error code.
async fn send_raw(app: &TestApp, method: Method, path: &str, token: &str, body: &str) -> (u16, String) {
    let r =
        app.call(method, path).by(token).header("content-type", "application/json").body(body.to_string()).send().await;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().or(v["code"].as_str()).unwrap_or("").to_string();
    (status, code)
}

#[tokio::test]
async fn nul_characters_are_a_400_on_every_route() {
    let st = St::new(Backend::Fs).await;
    let app = &st.app;
    let (jwt, key) = (st.a.jwt.clone(), st.key.clone());
    st.bucket("files", json!({})).await;
    assert_eq!(st.put(&jwt, "files", "a.txt", b"a", "text/plain").await.status(), 200);
    let (_, conv) = app.post_as("/v1/conversations", &jwt, &json!({"title": "t"})).await;
    let conv = conv["id"].as_str().unwrap().to_string();
    let nul = "\\u0000";
    // JSON bodies: NUL inside a string, wherever the string goes.
    let bodies: Vec<(Method, String, &str, String)> = vec![
        (
            Method::POST,
            "/v1/auth/sign-up".into(),
            "",
            format!(r#"{{"email":"x{nul}@example.com","password":"{PASSWORD}"}}"#),
        ),
        (Method::POST, "/v1/auth/sign-in".into(), "", format!(r#"{{"email":"a{nul}@example.com","password":"p"}}"#)),
        (Method::PATCH, "/v1/me".into(), &jwt, format!(r#"{{"name":"A{nul}"}}"#)),
        (Method::PATCH, "/v1/me".into(), &jwt, format!(r#"{{"unsafe_metadata":{{"k":"{nul}"}}}}"#)),
        (Method::POST, "/v1/conversations".into(), &jwt, format!(r#"{{"title":"t{nul}"}}"#)),
        (
            Method::POST,
            format!("/v1/conversations/{conv}/messages"),
            &jwt,
            format!(r#"{{"messages":[{{"id":"m1","role":"user","parts":[{{"type":"text","text":"hi{nul}"}}]}}]}}"#),
        ),
        (
            Method::POST,
            "/v1/integrations".into(),
            &key,
            format!(r#"{{"unique_key":"k","provider":"github","client_id":"c{nul}","client_secret":"s"}}"#),
        ),
        (Method::POST, "/v1/connect/sessions".into(), &jwt, format!(r#"{{"return_url":"/x{nul}"}}"#)),
        (Method::POST, "/storage/v1/object/list/files".into(), &jwt, format!(r#"{{"prefix":"a{nul}"}}"#)),
        (Method::POST, "/storage/v1/object/list-v2/files".into(), &jwt, format!(r#"{{"prefix":"a{nul}"}}"#)),
        (
            Method::POST,
            "/storage/v1/object/move".into(),
            &jwt,
            format!(r#"{{"bucketId":"files","sourceKey":"a{nul}.txt","destinationKey":"b.txt"}}"#),
        ),
        (Method::DELETE, "/storage/v1/object/files".into(), &jwt, format!(r#"{{"prefixes":["a{nul}.txt"]}}"#)),
        (
            Method::POST,
            "/storage/v1/object/sign/files".into(),
            &jwt,
            format!(r#"{{"expiresIn":60,"paths":["a{nul}.txt"]}}"#),
        ),
    ];
    for (method, path, token, body) in bodies {
        let (status, code) = send_raw(app, method.clone(), &path, token, &body).await;
        assert_eq!(status, 400, "{method} {path} {body}: {code}");
        if !path.starts_with("/storage/") {
            assert_eq!(code, "invalid_text", "{method} {path}");
        }
    }
    // Query strings and paths.
    for path in [
        "/v1/search/messages?q=a%00b".to_string(),
        "/v1/conversations?cursor=%00".to_string(),
        format!("/v1/conversations/{conv}%00"),
        "/v1/connections?integration=%00".to_string(),
    ] {
        let (status, code) = send_raw(app, Method::GET, &path, &jwt, "").await;
        assert_eq!((status, code.as_str()), (400, "invalid_text"), "{path}");
    }
    // Storage answers in Supabase's shape.
    let r = st.req(Method::GET, "/object/files/a%00.txt", &jwt).send().await;
    crate::storage::err(r, 400, "400", "InvalidRequest").await;
    let r = st.req(Method::GET, "/object/public/files/a.txt?download=%00", "").send().await;
    assert!(r.status().as_u16() < 500);
    // Storage's x-metadata header (base64 of JSON) and a multipart metadata field.
    let meta = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, r#"{"k":"\u0000"}"#);
    let r = st
        .req(Method::POST, "/object/files/m.txt", &jwt)
        .header("content-type", "text/plain")
        .header("x-metadata", meta)
        .body("x")
        .send()
        .await;
    crate::storage::err(r, 400, "400", "InvalidRequest").await;
    // A hosted page's form: the page answers, never a 5xx.
    for page in ["/auth/sign-in", "/auth/sign-up", "/auth/magic-link", "/auth/forgot-password"] {
        let r = app
            .call(Method::POST, page)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", app.url(""))
            .body("email=a%00b%40example.com&password=correct+horse+battery+staple")
            .send()
            .await;
        assert!(r.status().as_u16() < 500, "{page}: {}", r.status());
    }
    // Every documented operation, NUL in its path parameters and query: never a 5xx.
    let (_, spec) = app.get_as("/openapi.json", &jwt).await;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        let concrete: String =
            path.split('/').map(|seg| if seg.starts_with('{') { "x%00y" } else { seg }).collect::<Vec<_>>().join("/");
        for method in ops.as_object().unwrap().keys() {
            let Ok(m) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else { continue };
            for token in [jwt.as_str(), key.as_str()] {
                let url = format!("{concrete}?q=%00&cursor=%00&limit=1");
                let (status, _) = send_raw(app, m.clone(), &url, token, &format!(r#"{{"x":"{nul}"}}"#)).await;
                assert!(status < 500, "{method} {url}: {status}");
            }
        }
    }
}

#[tokio::test]
async fn small_storage_items_private_files_empty_ranges_bucket_names_and_short_tus_leases() {
    // (The TUS part trickles a body on purpose: no minimum rate here.)
    let st = St::with(Backend::Fs, |c| c.min_body_rate = 0).await;
    st.bucket("files", json!({})).await;
    assert_eq!(st.put(&st.a.jwt, "files", "empty.txt", b"", "text/plain").await.status(), 200);
    assert_eq!(st.put(&st.a.jwt, "files", "x.txt", b"secret", "text/plain").await.status(), 200);
    // Object bytes are the owner's alone: no group or world bits below the store.
    let root = match &st.app.state.config.storage {
        carmenta::config::StorageBackend::Fs { root } => root.clone(),
        other => panic!("{other:?}"),
    };
    fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
        use std::os::unix::fs::PermissionsExt;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push((p.clone(), std::fs::metadata(&p).unwrap().permissions().mode()));
            if p.is_dir() {
                walk(&p, out);
            }
        }
    }
    let mut entries = vec![];
    walk(&root, &mut entries);
    assert!(entries.iter().filter(|(p, _)| p.is_file()).count() >= 2, "{entries:?}");
    for (p, mode) in &entries {
        assert_eq!(mode & 0o077, 0, "{} is {:o}", p.display(), mode);
    }
    // A range of an empty object: 416 with `bytes */0`, never a bogus 206.
    let r = st.req(Method::GET, "/object/files/empty.txt", &st.a.jwt).header("range", "bytes=-5").send().await;
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */0");
    // Bucket names that are path steps or carry a query mark are refused.
    for name in [".", "..", "a?b"] {
        let r = st.req(Method::POST, "/bucket", &st.key).json(&json!({"name": name})).send().await;
        crate::storage::err(r, 400, "400", "InvalidBucketName").await;
    }
    // TUS: a PATCH's lease is short and renewed while bytes arrive, so a PATCH cut
    // off by a crash frees its upload within 30 s (it was 10 minutes).
    let meta =
        |k: &str, v: &str| format!("{k} {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v));
    let r = st
        .req(Method::POST, "/upload/resumable", &st.a.jwt)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "100")
        .header("upload-metadata", format!("{},{}", meta("bucketName", "files"), meta("objectName", "slow.bin")))
        .send()
        .await;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let id = location.rsplit('/').next().unwrap().to_string();
    let (tx, body) = fed_body();
    let patch = st
        .req(Method::PATCH, &format!("/upload/resumable/{id}"), &st.a.jwt)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(body);
    let sending = tokio::spawn(patch.send());
    tx.send(vec![1; 10]).await.unwrap();
    let uuid: uuid::Uuid = id.parse().unwrap();
    let left = || async {
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM lease_until - now())::float8 FROM storage_uploads WHERE id = $1",
        )
        .bind(uuid)
        .fetch_one(&st.app.pool)
        .await
        .unwrap();
        secs
    };
    let mut first = None;
    for _ in 0..50 {
        first = left().await;
        if first.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let first = first.expect("the PATCH holds a lease");
    assert!(first <= 30.5, "lease of {first} s");
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    tx.send(vec![2; 10]).await.unwrap();
    let later = left().await.expect("still held");
    assert!(later > 20.0 && later <= 30.5, "renewed while receiving: {later} s left");
    drop(tx);
    let r = sending.await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["upload-offset"], "20");
    assert_eq!(left().await, None, "released");
}

async fn status_of_me(app: &TestApp, token: &str) -> u16 {
    app.call(Method::GET, "/v1/me").by(token).send().await.status().as_u16()
}

/// Signs `email` in with `password`: (session token, access token).
async fn sign_in(app: &TestApp, email: &str, password: &str) -> (String, String) {
    let (status, b) =
        app.call(Method::POST, "/v1/auth/sign-in").json(&json!({"email": email, "password": password})).reply().await;
    assert_eq!(status, 200, "{b}");
    (b["session_token"].as_str().unwrap().into(), b["access_token"].as_str().unwrap().into())
}

/// The `token=` of the newest outbox mail to `to` whose link goes to `path`.
async fn outbox_tokens(app: &TestApp, to: &str, path: &str) -> Vec<String> {
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM mail_outbox WHERE to_addr = $1 AND body LIKE '%' || $2 || '%' ORDER BY id",
    )
    .bind(to)
    .bind(path)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    bodies
        .iter()
        .filter_map(|b| {
            let at = b.find("token=")? + "token=".len();
            Some(b[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect())
        })
        .collect()
}

#[tokio::test]
async fn revocation_reaches_every_replica_within_a_second() {
    let a = TestApp::spawn().await;
    let b = a.replica().await;
    let email = "rev@example.com";
    let u = sign_up(&a, email).await;
    // Sign-out: the session's access token stops working on the other replica.
    assert_eq!(status_of_me(&b, &u.jwt).await, 200, "B caches the session");
    let (status, _) = a.call(Method::POST, "/v1/auth/sign-out").by(&u.session).reply().await;
    assert_eq!(status, 204);
    assert!(eventually(SECOND, || async { status_of_me(&b, &u.jwt).await == 401 }).await, "sign-out");
    // Sign out everywhere: every session's tokens.
    let (s1, j1) = sign_in(&a, email, PASSWORD).await;
    let (_, j2) = sign_in(&a, email, PASSWORD).await;
    assert_eq!((status_of_me(&b, &j1).await, status_of_me(&b, &j2).await), (200, 200));
    let (status, _) = a.post_as("/v1/auth/sign-out", &s1, &json!({"all": true})).await;
    assert_eq!(status, 204);
    assert!(
        eventually(SECOND, || async { status_of_me(&b, &j1).await == 401 && status_of_me(&b, &j2).await == 401 }).await,
        "sign out everywhere"
    );
    // A password change signs the other sessions out, their tokens with them.
    let (_, other) = sign_in(&a, email, PASSWORD).await;
    let (_, mine) = sign_in(&a, email, PASSWORD).await;
    assert_eq!(status_of_me(&b, &other).await, 200);
    let new_pw = "another long passphrase";
    let body = json!({"current_password": PASSWORD, "new_password": new_pw});
    assert_eq!(a.call(Method::POST, "/v1/me/password").by(&mine).json(&body).send().await.status(), 204);
    assert!(eventually(SECOND, || async { status_of_me(&b, &other).await == 401 }).await, "password change");
    assert_eq!(status_of_me(&b, &mine).await, 200, "the changing session stays");
    // A reset: every session ends, and every other reset and magic link is void.
    for path in ["/v1/auth/password/forgot", "/v1/auth/magic-link", "/v1/auth/password/forgot"] {
        let (status, _) = a.call(Method::POST, path).json(&json!({"email": email})).reply().await;
        assert_eq!(status, 202, "{path}");
    }
    let resets = outbox_tokens(&a, email, "/auth/reset-password").await;
    let magic = outbox_tokens(&a, email, "/auth/magic-link").await;
    assert_eq!((resets.len(), magic.len()), (2, 1), "{resets:?} {magic:?}");
    let body = json!({"token": resets[1], "new_password": "the third long passphrase"});
    let (status, reply) = a.call(Method::POST, "/v1/auth/password/reset").json(&body).reply().await;
    assert_eq!(status, 204, "{reply}");
    assert!(eventually(SECOND, || async { status_of_me(&b, &mine).await == 401 }).await, "reset");
    let body = json!({"token": resets[0], "new_password": "a fourth long passphrase"});
    let (status, reply) = a.call(Method::POST, "/v1/auth/password/reset").json(&body).reply().await;
    assert_eq!((status, reply["error"]["code"].as_str()), (400, Some("invalid_link")), "older reset link");
    let (status, reply) =
        a.call(Method::POST, "/v1/auth/magic-link/verify").json(&json!({"token": magic[0]})).reply().await;
    assert_eq!((status, reply["error"]["code"].as_str()), (400, Some("invalid_link")), "magic link");
}

/// A client whose connections come from `ip` (a loopback address).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip.parse::<std::net::IpAddr>().unwrap()).build().unwrap()
}

async fn sign_in_from(app: &TestApp, ip: &str, email: &str, password: &str) -> u16 {
    client_from(ip)
        .post(app.url("/v1/auth/sign-in"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn failed_sign_ins_cannot_lock_the_owner_out_of_their_usual_address() {
    // The rule: `lockout_threshold` failures for an account from one address lock
    // that pair; five times as many from anywhere lock the account for addresses it
    // never signed in from.
    let app = TestApp::builder().config(|c| c.lockout_threshold = 3).spawn().await;
    let email = "owner@example.com";
    sign_up(&app, email).await; // from 127.0.0.1
    for _ in 0..3 {
        assert_eq!(sign_in_from(&app, "127.0.0.2", email, "wrong guess").await, 401);
    }
    assert_eq!(sign_in_from(&app, "127.0.0.2", email, PASSWORD).await, 429, "the attacker's address is locked");
    assert_eq!(sign_in_from(&app, "127.0.0.1", email, PASSWORD).await, 200, "the owner is not");
    // (The owner's success forgot the count.) Fifteen failures from five more
    // addresses: the account is locked for new addresses...
    for ip in ["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7"] {
        for _ in 0..3 {
            sign_in_from(&app, ip, email, "wrong guess").await;
        }
    }
    assert_eq!(sign_in_from(&app, "127.0.0.8", email, PASSWORD).await, 429, "a new address is locked");
    // ...but not for the address the owner signed in from.
    assert_eq!(sign_in_from(&app, "127.0.0.1", email, PASSWORD).await, 200, "the owner's usual address");
}

#[tokio::test]
async fn big_bodies_are_refused_before_they_are_read() {
    let app = TestApp::builder().config(|c| c.signin_ip_limit = 4).spawn().await;
    let u = sign_up(&app, "big@example.com").await;
    // A 1 MB sign-up or conversation: 413 (the small-JSON routes read 64 KB at most).
    let big = format!(
        r#"{{"email":"x@example.com","password":"{PASSWORD}","unsafe_metadata":{{"a":[{}0]}}}}"#,
        "0,".repeat(500_000)
    );
    let (status, code) = send_raw(&app, Method::POST, "/v1/auth/sign-up", "", &big).await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));
    let big = format!(r#"{{"title":"t","metadata":{{"a":[{}0]}}}}"#, "0,".repeat(500_000));
    let (status, code) = send_raw(&app, Method::POST, "/v1/conversations", &u.jwt, &big).await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));
    // A message append may be larger (up to CARMENTA_BODY_LIMIT).
    let (_, conv) = app.post_as("/v1/conversations", &u.jwt, &json!({"title": "t"})).await;
    let text = "x".repeat(200_000);
    let body = json!({"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]});
    let (status, reply) =
        app.post_as(&format!("/v1/conversations/{}/messages", conv["id"].as_str().unwrap()), &u.jwt, &body).await;
    assert!(status < 300, "{status} {reply}");
    // (The sign-up counted as one attempt.) An address over its sign-in budget is
    // refused before its body is read: a
    // request whose body never comes is answered at once.
    for _ in 0..3 {
        let (status, _) = app
            .call(Method::POST, "/v1/auth/sign-in")
            .json(&json!({"email": "big@example.com", "password": "x"}))
            .reply()
            .await;
        assert_eq!(status, 401);
    }
    let (tx, stalled) = fed_body();
    let call = app
        .call(Method::POST, "/v1/auth/sign-in")
        .header("content-type", "application/json")
        .header("content-length", "40000")
        .body(stalled)
        .send();
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), call).await.expect("answered before the body");
    assert_eq!(r.status(), 429);
    drop(tx);
}

/// How soon a revocation must reach the other replica.
const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads from `s` until the server closes it (or `limit` passes): whether it closed.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_and_healthz_still_answers() {
    use tokio::io::AsyncWriteExt;
    carmenta::config::raise_fd_limit();
    let app = TestApp::builder()
        .config(|c| {
            c.header_timeout = std::time::Duration::from_secs(1);
            c.max_connections = 100;
        })
        .spawn()
        .await;
    // A request line that never finishes: closed after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(closed_within(&mut slow, std::time::Duration::from_secs(3)).await, "slow head");
    // An idle keep-alive connection: closed too.
    let mut idle = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(closed_within(&mut idle, std::time::Duration::from_secs(3)).await, "idle keep-alive");
    // Three times the cap of sockets that stall mid-request: the server accepts up to
    // its cap, cuts them off, and /healthz answers within a few seconds.
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let _ = s.write_all(b"GET /healthz HTT").await;
        held.push(s);
    }
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), app.call(Method::GET, "/healthz").send())
        .await
        .expect("/healthz answers while slow clients pile up");
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "{:?}", started.elapsed());
    drop(held);
    // The cap holds: with 5 connections allowed and 5 stalled, a sixth waits (in the
    // kernel's backlog, no descriptor spent) until the stalled ones are cut off.
    let capped = TestApp::builder()
        .config(|c| {
            c.header_timeout = std::time::Duration::from_secs(3);
            c.max_connections = 5;
        })
        .spawn()
        .await;
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(capped.addr).await.unwrap();
        s.write_all(b"GET /healthz HTT").await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let call = capped.call(Method::GET, "/healthz").send();
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), call).await.expect("answered after the cut-off");
    assert_eq!(r.status(), 200);
    let waited = started.elapsed();
    assert!(waited > std::time::Duration::from_secs(2), "the sixth connection waited for a slot: {waited:?}");
}

#[tokio::test]
async fn a_body_trickled_slower_than_the_minimum_rate_is_cut_off() {
    let st = St::with(Backend::Fs, |c| c.min_body_rate = 100).await;
    st.bucket("files", json!({})).await;
    // One byte every 2 s (the minimum: 1,000 bytes per 10 s of waiting).
    let trickle = trickled(vec![b'x'], 29, std::time::Duration::from_secs(2));
    let started = std::time::Instant::now();
    let r = st
        .req(Method::POST, "/object/files/slow.bin", &st.a.jwt)
        .header("content-type", "application/octet-stream")
        .body(trickle)
        .send()
        .await;
    assert!(r.status().is_client_error(), "{}", r.status());
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "cut off after ~10 s: {:?}", started.elapsed());
    // Nothing was stored.
    let r = st.req(Method::GET, "/object/files/slow.bin", &st.a.jwt).send().await;
    assert_eq!(r.status(), 400);
    // A body at a normal pace is untouched.
    assert_eq!(st.put(&st.a.jwt, "files", "fast.bin", &[7u8; 100_000], "application/octet-stream").await.status(), 200);
}

#[tokio::test]
async fn a_tus_patch_trickled_slower_than_the_minimum_rate_is_ended_and_keeps_its_bytes() {
    let st = St::with(Backend::Fs, |c| c.min_body_rate = 100).await;
    st.bucket("files", json!({})).await;
    let meta =
        |k: &str, v: &str| format!("{k} {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v));
    let r = st
        .req(Method::POST, "/upload/resumable", &st.a.jwt)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5000")
        .header("upload-metadata", format!("{},{}", meta("bucketName", "files"), meta("objectName", "trickle.bin")))
        .send()
        .await;
    assert_eq!(r.status(), 201);
    let id = r.headers()["location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    // 2,000 bytes at once, then one byte every 2 s: cut off after a window of waiting.
    let body = trickled(vec![b'x'; 2000], 30, std::time::Duration::from_secs(2));
    let started = std::time::Instant::now();
    let r = st
        .req(Method::PATCH, &format!("/upload/resumable/{id}"), &st.a.jwt)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await;
    let waited = started.elapsed();
    // TUS keeps what arrived when a body ends early (that is how it resumes): the
    // PATCH is ended well before the 60 s the trickle would take, and answers the
    // offset reached.
    assert_eq!(r.status(), 204);
    assert!(waited < std::time::Duration::from_secs(40), "cut off, not {waited:?}");
    let offset: u64 = r.headers()["upload-offset"].to_str().unwrap().parse().unwrap();
    assert!((2000..2030).contains(&offset), "kept {offset} bytes");
    let r = st
        .req(Method::HEAD, &format!("/upload/resumable/{id}"), &st.a.jwt)
        .header("tus-resumable", "1.0.0")
        .send()
        .await;
    assert_eq!(r.headers()["upload-offset"].to_str().unwrap(), offset.to_string(), "resumes from there");
}
