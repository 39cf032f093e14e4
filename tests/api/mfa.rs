//! Second factors: TOTP enrolment with codes computed here (RFC 6238 written out
//! independently of the server's crate), single use of each time step, backup
//! codes, the second-factor step on every sign-in path (API and hosted pages),
//! `amr`/`aal` in access tokens, attempt limits, re-authentication before
//! removal, the admin's reset, and the client address behind trusted proxies.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{PASSWORD as PW, TestApp, envelope, sign_up};

/// RFC 4648 base32 (no padding) decoding.
fn base32(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut n, mut out) = (0u64, 0u32, Vec::new());
    for c in s.trim_end_matches('=').bytes() {
        let v = alphabet.iter().position(|a| *a == c.to_ascii_uppercase()).expect("base32 character") as u64;
        bits = (bits << 5) | v;
        n += 5;
        if n >= 8 {
            out.push((bits >> (n - 8)) as u8);
            n -= 8;
        }
    }
    out
}

/// RFC 6238 TOTP (HMAC-SHA-1, 30 s steps, 6 digits) at Unix time `t`.
pub fn totp(secret: &[u8], t: u64) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).unwrap();
    mac.update(&(t / 30).to_be_bytes());
    let h = mac.finalize().into_bytes();
    let off = (h[19] & 0xf) as usize;
    let bin = (u32::from(h[off] & 0x7f) << 24)
        | (u32::from(h[off + 1]) << 16)
        | (u32::from(h[off + 2]) << 8)
        | u32::from(h[off + 3]);
    format!("{:06}", bin % 1_000_000)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The claims of a JWT (unverified; the auth tests verify signatures).
pub fn claims(jwt: &str) -> Value {
    serde_json::from_slice(&B64URL.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// The token of the last mail to `to` whose link goes to `path`.
async fn mailed_token(app: &TestApp, to: &str, path: &str) -> String {
    let body: String = sqlx::query_scalar(
        "SELECT body FROM mail_outbox WHERE to_addr = $1 AND body LIKE '%' || $2 || '%' ORDER BY id DESC LIMIT 1",
    )
    .bind(to)
    .bind(path)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let rest = body.split("token=").nth(1).expect("a token in the mail");
    rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect()
}

async fn sign_in(app: &TestApp, email: &str) -> reqwest::Response {
    app.call(Method::POST, "/v1/auth/sign-in").json(&json!({"email": email, "password": PW})).send().await
}

/// Enrols an authenticator for `session`: its secret and the backup codes.
pub async fn enrol(app: &TestApp, session: &str) -> (Vec<u8>, Vec<String>) {
    let (s, e) = app.post_as("/v1/me/mfa/totp", session, &json!({})).await;
    assert_eq!(s, 201, "{e}");
    let secret = base32(e["secret"].as_str().unwrap());
    let (s, b) = app.post_as("/v1/me/mfa/totp/confirm", session, &json!({"code": totp(&secret, now())})).await;
    assert_eq!(s, 200, "{b}");
    let codes = b["codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    (secret, codes)
}

#[test]
fn the_test_totp_matches_rfc_6238() {
    // Appendix B of RFC 6238, SHA-1 rows (8 digits there; the last 6 here).
    let key = b"12345678901234567890";
    for (t, code) in [(59, "94287082"), (1111111109, "07081804"), (1234567890, "89005924"), (2000000000, "69279037")] {
        assert_eq!(totp(key, t), code[2..]);
    }
}

#[tokio::test]
async fn totp_enrolment_single_use_codes_backup_codes_and_amr() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "tess@example.com").await;
    assert_eq!(claims(&u.jwt)["amr"], json!(["pwd"]));
    assert_eq!(claims(&u.jwt)["aal"], "aal1");
    let (_, st) = app.get_as("/v1/me/mfa", &u.session).await;
    assert_eq!((st["totp"].as_bool(), st["factors"].as_array().map(Vec::len)), (Some(false), Some(0)));

    let (s, e) = app.post_as("/v1/me/mfa/totp", &u.session, &json!({})).await;
    assert_eq!(s, 201);
    let secret = base32(e["secret"].as_str().unwrap());
    assert_eq!(secret.len(), 20, "160-bit secret");
    let url = e["otpauth_url"].as_str().unwrap();
    assert!(
        url.starts_with("otpauth://totp/Carmenta:tess%40example.com?") && url.contains(e["secret"].as_str().unwrap()),
        "{url}"
    );
    assert!(e["qr_svg"].as_str().unwrap().contains("<svg"));
    assert!(e["qr_data_url"].as_str().unwrap().starts_with("data:image/svg+xml;base64,"));
    // Sealed at rest: the stored value is not the secret.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret FROM auth_totp WHERE user_id = $1")
        .bind(u.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!stored.windows(secret.len()).any(|w| w == secret.as_slice()));
    // Not on until confirmed: sign-in still has one step.
    assert_eq!(sign_in(&app, "tess@example.com").await.status(), 200);
    let wrong = if totp(&secret, now()) == "000000" { "111111" } else { "000000" };
    let r = app.call(Method::POST, "/v1/me/mfa/totp/confirm").by(&u.session).json(&json!({"code": wrong})).send().await;
    assert_eq!(envelope(r).await.1, "invalid_code");
    let t0 = now();
    let (s, b) = app.post_as("/v1/me/mfa/totp/confirm", &u.session, &json!({"code": totp(&secret, t0)})).await;
    assert_eq!(s, 200, "{b}");
    let codes: Vec<String> = b["codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().into()).collect();
    assert_eq!(codes.len(), 10);
    assert_eq!(codes.iter().collect::<std::collections::HashSet<_>>().len(), 10);
    // The enrolling session now counts as two-factor.
    let (_, tok) = app.post_as("/v1/auth/token", &u.session, &json!({})).await;
    let c = claims(tok["access_token"].as_str().unwrap());
    assert_eq!((c["aal"].as_str(), c["amr"].clone()), (Some("aal2"), json!(["mfa", "otp", "pwd"])));
    // A second enrolment is refused while one is on.
    let (s, b) = app.post_as("/v1/me/mfa/totp", &u.session, &json!({})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("totp_exists")));

    // Password sign-in now stops at the second factor: 202, no session, no cookie.
    let r = sign_in(&app, "tess@example.com").await;
    assert_eq!(r.status(), 202);
    assert!(r.headers().get("set-cookie").is_none());
    let ch: Value = r.json().await.unwrap();
    assert_eq!(ch["status"], "needs_second_factor");
    assert_eq!(ch["factors"], json!(["totp", "backup_code"]));
    assert!(ch.get("session_token").is_none() && ch.get("access_token").is_none());
    let mfa_token = ch["mfa_token"].as_str().unwrap();
    // The step's token is not a credential.
    assert_eq!(app.call(Method::GET, "/v1/me").by(mfa_token).send().await.status(), 401);
    // The code that confirmed enrolment (same time step) is spent.
    let verify = |token: &str, body: Value| {
        let mut b = body;
        b["mfa_token"] = json!(token);
        app.call(Method::POST, "/v1/auth/mfa/verify").json(&b).send()
    };
    let r = verify(mfa_token, json!({"code": totp(&secret, t0)})).await;
    assert_eq!(envelope(r).await.1, "invalid_code");
    // Both fields, or neither: 400.
    let r = verify(mfa_token, json!({"code": "123456", "backup_code": codes[0]})).await;
    assert_eq!(envelope(r).await.0, 400);
    // The next step's code (one step of skew is allowed) signs in: amr and aal2.
    let next = totp(&secret, t0 + 30);
    let r = verify(mfa_token, json!({"code": next})).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["set-cookie"].to_str().unwrap().starts_with("carmenta_session=cs_"));
    let b: Value = r.json().await.unwrap();
    let c = claims(b["access_token"].as_str().unwrap());
    assert_eq!(c["amr"], json!(["pwd", "otp", "mfa"]));
    assert_eq!(c["aal"], "aal2");
    // The same code again, on a fresh step: refused (each time step works once).
    let ch: Value = sign_in(&app, "tess@example.com").await.json().await.unwrap();
    let r = verify(ch["mfa_token"].as_str().unwrap(), json!({"code": next})).await;
    assert_eq!(envelope(r).await.1, "invalid_code");
    // A used step token cannot be used again either.
    let r = verify(mfa_token, json!({"code": totp(&secret, t0 + 30)})).await;
    assert_eq!(envelope(r).await.1, "invalid_mfa_token");

    // A backup code works once, typed in any case and without dashes.
    let typed = codes[3].replace('-', "").to_uppercase();
    let r = verify(ch["mfa_token"].as_str().unwrap(), json!({"backup_code": typed})).await;
    assert_eq!(r.status(), 200);
    let c = claims(r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap());
    assert_eq!(c["amr"], json!(["pwd", "backup_code", "mfa"]));
    let ch: Value = sign_in(&app, "tess@example.com").await.json().await.unwrap();
    let r = verify(ch["mfa_token"].as_str().unwrap(), json!({"backup_code": codes[3]})).await;
    assert_eq!(envelope(r).await.1, "invalid_code");
    let (_, st) = app.get_as("/v1/me/mfa", &u.session).await;
    assert_eq!(st["backup_codes_remaining"], 9);
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT code_hash FROM auth_backup_codes WHERE user_id = $1")
        .bind(u.id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(hashes.iter().all(|h| h.len() == 32 && !codes.iter().any(|c| h.as_slice() == c.as_bytes())));
}

#[tokio::test]
async fn every_sign_in_path_stops_at_the_second_factor() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "paths@example.com").await;
    // Enrolment used the current time step; one step of skew leaves the next for
    // one more code before the clock moves on, so later sign-ins use backup codes.
    let (secret, backup) = enrol(&app, &u.session).await;

    // Magic link: the mailed token leads to the second-factor step, not a session.
    let r = app.call(Method::POST, "/v1/auth/magic-link").json(&json!({"email": "paths@example.com"})).send().await;
    assert_eq!(r.status(), 202);
    let token = mailed_token(&app, "paths@example.com", "magic-link").await;
    let r = app.call(Method::POST, "/v1/auth/magic-link/verify").json(&json!({"token": token})).send().await;
    assert_eq!(r.status(), 202);
    assert!(r.headers().get("set-cookie").is_none());
    let ch: Value = r.json().await.unwrap();
    let r = app
        .call(Method::POST, "/v1/auth/mfa/verify")
        .json(&json!({"mfa_token": ch["mfa_token"], "code": totp(&secret, now() + 30)}))
        .send()
        .await;
    assert_eq!(r.status(), 200);
    let c = claims(r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap());
    assert_eq!(c["amr"], json!(["email", "otp", "mfa"]));

    // Password reset signs nobody in; the sign-in after it asks for the factor.
    let r =
        app.call(Method::POST, "/v1/auth/password/forgot").json(&json!({"email": "paths@example.com"})).send().await;
    assert_eq!(r.status(), 202);
    let token = mailed_token(&app, "paths@example.com", "reset-password").await;
    let r = app
        .call(Method::POST, "/v1/auth/password/reset")
        .json(&json!({"token": token, "new_password": "another strong passphrase"}))
        .send()
        .await;
    assert_eq!(r.status(), 204);
    assert!(r.headers().get("set-cookie").is_none());
    let r = app
        .call(Method::POST, "/v1/auth/sign-in")
        .json(&json!({"email": "paths@example.com", "password": "another strong passphrase"}))
        .send()
        .await;
    assert_eq!(r.status(), 202);

    // Hosted sign-in page: on to /auth/mfa with the step in a cookie, no session cookie.
    let r = app
        .client
        .post(app.url("/auth/sign-in"))
        .header("origin", &app.base)
        .form(&[("email", "paths@example.com"), ("password", "another strong passphrase")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/auth/mfa");
    let cookies: Vec<String> =
        r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(
        cookies[0].starts_with("carmenta_mfa=cm_")
            && cookies[0].contains("HttpOnly")
            && cookies[0].contains("Path=/auth")
    );
    let mfa_cookie = cookies[0].split(';').next().unwrap().to_string();
    let page = app.client.get(app.url("/auth/mfa")).header("cookie", &mfa_cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("name=\"code\"") && html.contains("name=\"backup_code\""));
    let post = |field: &'static str, code: String| {
        app.client
            .post(app.url("/auth/mfa"))
            .header("origin", &app.base)
            .header("cookie", &mfa_cookie)
            .form(&[(field, code)])
            .send()
    };
    // An earlier step's code is refused once a later one was used.
    let r = post("code", totp(&secret, now() - 30)).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("role=\"alert\""));
    let r = post("backup_code", backup[0].clone()).await.unwrap();
    assert_eq!(r.status(), 303);
    let set: Vec<String> = r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert!(set.iter().any(|c| c.starts_with("carmenta_session=cs_")), "{set:?}");
    assert!(set.iter().any(|c| c.starts_with("carmenta_mfa=;") && c.contains("Max-Age=0")), "{set:?}");

    // Removing the factor needs a recent sign-in: age this session's, then re-authenticate.
    let ch: Value = app
        .call(Method::POST, "/v1/auth/sign-in")
        .json(&json!({"email": "paths@example.com", "password": "another strong passphrase"}))
        .send()
        .await
        .json()
        .await
        .unwrap();
    let (s, b) = app
        .call(Method::POST, "/v1/auth/mfa/verify")
        .json(&json!({"mfa_token": ch["mfa_token"], "backup_code": backup[1]}))
        .reply()
        .await;
    assert_eq!(s, 200, "{b}");
    let session = b["session_token"].as_str().unwrap().to_string();
    assert_eq!(app.call(Method::DELETE, "/v1/me/mfa/totp").by(&u.session).send().await.status(), 401, "reset ended it");
    sqlx::query("UPDATE sessions SET authenticated_at = now() - interval '1 hour' WHERE user_id = $1")
        .bind(u.id)
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app.call(Method::DELETE, "/v1/me/mfa/totp").by(&session).send().await;
    assert_eq!(envelope(r).await.1, "reauthentication_required");
    let r = app.call(Method::POST, "/v1/auth/reauthenticate").by(&session).json(&json!({"password": PW})).send().await;
    assert_eq!(envelope(r).await.1, "invalid_credentials", "the old password no longer proves anything");
    let r = app
        .call(Method::POST, "/v1/auth/reauthenticate")
        .by(&session)
        .json(&json!({"password": "another strong passphrase"}))
        .send()
        .await;
    assert_eq!(r.status(), 204);
    let r = app.call(Method::DELETE, "/v1/me/mfa/totp").by(&session).send().await;
    assert_eq!(r.status(), 204);
    let (_, st) = app.get_as("/v1/me/mfa", &session).await;
    assert_eq!((st["totp"].as_bool(), st["backup_codes_remaining"].as_i64()), (Some(false), Some(0)));
    let r = app
        .call(Method::POST, "/v1/auth/sign-in")
        .json(&json!({"email": "paths@example.com", "password": "another strong passphrase"}))
        .send()
        .await;
    assert_eq!(r.status(), 200, "no factor left: one step");
    let audit: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log WHERE on_behalf_of = $1 ORDER BY at")
        .bind(u.id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    for a in ["auth.mfa_enrolled", "auth.mfa_required", "auth.mfa_verified", "auth.mfa_failed", "auth.mfa_removed"] {
        assert!(audit.iter().any(|x| x == a), "{a} in {audit:?}");
    }
}

#[tokio::test]
async fn second_factor_attempts_are_limited_per_step_and_per_user() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "guess@example.com").await;
    let (secret, _) = enrol(&app, &u.session).await;
    let wrong = |t: u64| {
        let right: Vec<String> = (0..3).map(|i| totp(&secret, t + i * 30 - 30)).collect();
        (0..1_000_000).map(|n| format!("{n:06}")).find(|c| !right.contains(c)).unwrap()
    };
    let step = || async {
        let r = sign_in(&app, "guess@example.com").await;
        assert_eq!(r.status(), 202);
        r.json::<Value>().await.unwrap()["mfa_token"].as_str().unwrap().to_string()
    };
    let try_code = |token: String, code: String| {
        app.call(Method::POST, "/v1/auth/mfa/verify").json(&json!({"mfa_token": token, "code": code})).send()
    };
    // Five tries per step; the sixth finds the step void, even with the right code.
    let t = step().await;
    for _ in 0..5 {
        assert_eq!(envelope(try_code(t.clone(), wrong(now())).await).await.1, "invalid_code");
    }
    let r = try_code(t, totp(&secret, now() + 30)).await;
    assert_eq!(envelope(r).await.1, "invalid_mfa_token");
    // Ten tries per user per ten minutes across steps (the enrolment's code was one).
    let t = step().await;
    for _ in 0..4 {
        assert_eq!(envelope(try_code(t.clone(), wrong(now())).await).await.1, "invalid_code");
    }
    let t = step().await;
    let (s, code, _, _) = envelope(try_code(t, totp(&secret, now() + 30)).await).await;
    assert_eq!((s, code.as_str()), (429, "rate_limited"));
}

#[tokio::test]
async fn an_admin_resets_a_users_factors_and_it_is_audited() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "lost@example.com").await;
    enrol(&app, &u.session).await;
    assert_eq!(sign_in(&app, "lost@example.com").await.status(), 202);
    let a = crate::admin::sign_in(&app, "root@example.com").await;
    let (_, html) = crate::admin::get_page(&app, &a.cookie, &format!("/admin/users/{}", u.id)).await;
    assert!(html.contains("reset-factors"));
    let (s, loc, _) = crate::admin::post_form(&app, &a, &format!("/admin/users/{}/reset-factors", u.id), &[]).await;
    assert_eq!((s, loc), (303, format!("/admin/users/{}?done=factors_reset", u.id)));
    assert_eq!(sign_in(&app, "lost@example.com").await.status(), 200);
    let (actor, detail): (String, Value) = sqlx::query_as(
        "SELECT actor, detail FROM audit_log WHERE action = 'admin.user.reset_factors' AND on_behalf_of = $1",
    )
    .bind(u.id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(actor.starts_with("admin:"));
    assert_eq!(detail["before"]["factors"], json!(["totp", "backup_code"]));
}

#[tokio::test]
async fn the_client_address_comes_from_forwarded_for_only_behind_a_trusted_proxy() {
    // Untrusted: a client's own X-Forwarded-For changes nothing.
    let app = TestApp::builder().config(|c| c.signin_ip_limit = 3).spawn().await;
    sign_up(&app, "xff@example.com").await;
    for i in 0..3 {
        let r = app
            .call(Method::POST, "/v1/auth/sign-in")
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&json!({"email": "xff@example.com", "password": "wrong password here"}))
            .send()
            .await;
        let status = r.status().as_u16();
        assert!(status == 401 || status == 429, "{status}");
    }
    let r = app
        .call(Method::POST, "/v1/auth/sign-in")
        .header("x-forwarded-for", "198.51.100.77")
        .json(&json!({"email": "xff@example.com", "password": PW}))
        .send()
        .await;
    assert_eq!(r.status(), 429, "spoofed addresses do not escape the limit");

    // Behind a trusted proxy (loopback here): the rightmost untrusted hop is the
    // client; a spoofed leftmost entry is ignored.
    let app = TestApp::builder()
        .config(|c| {
            c.signin_ip_limit = 3;
            c.trusted_proxies = vec![carmenta::config::IpNet::parse("127.0.0.1").unwrap()];
        })
        .spawn()
        .await;
    sign_up(&app, "xff@example.com").await;
    let attempt = |xff: &'static str, pw: &'static str| {
        app.call(Method::POST, "/v1/auth/sign-in")
            .header("x-forwarded-for", xff)
            .json(&json!({"email": "xff@example.com", "password": pw}))
            .send()
    };
    for spoof in ["1.1.1.1, 203.0.113.9", "2.2.2.2, 203.0.113.9", "3.3.3.3, 203.0.113.9"] {
        assert_eq!(attempt(spoof, "wrong password here").await.status(), 401);
    }
    assert_eq!(attempt("4.4.4.4, 203.0.113.9", PW).await.status(), 429, "same client behind the proxy");
    let r = attempt("203.0.113.10", PW).await;
    assert_eq!(r.status(), 200, "another client has its own budget");
    let session = r.json::<Value>().await.unwrap()["session_token"].as_str().unwrap().to_string();
    let (_, list) = app.get_as("/v1/me/sessions", &session).await;
    let ips: Vec<&str> = list["data"].as_array().unwrap().iter().filter_map(|s| s["ip"].as_str()).collect();
    assert!(ips.contains(&"203.0.113.10"), "{list}");
    assert!(!ips.contains(&"127.0.0.1") || ips.len() > 1, "{list}");
}
