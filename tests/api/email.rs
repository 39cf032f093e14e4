//! Email flows against a real SMTP server (aiosmtpd, from Debian's packages):
//! verification on sign-up, magic-link sign-in, password reset; and the outbox
//! with `carmenta mail` when no SMTP server is configured.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{TestApp, envelope};
use reqwest::Method;

const PW: &str = "correct horse battery staple";

/// A real SMTP server on loopback that stores every message in a maildir.
struct SmtpServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::Builder::new().prefix("carmenta-mail-").tempdir().unwrap();
        let maildir = dir.path().join("maildir");
        let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("aiosmtpd (apt-get install python3-aiosmtpd)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(15), "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer { child, port, maildir, _dir: dir }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in rd.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// Waits for a message to `to` whose body contains `needle`; returns it decoded.
    async fn wait_for(&self, to: &str, needle: &str) -> String {
        let start = Instant::now();
        loop {
            for m in self.messages() {
                let decoded = decode_qp(&m);
                if decoded.contains(&format!("To: {to}")) && decoded.contains(needle) {
                    return decoded;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no mail to {to} containing {needle}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Undoes quoted-printable soft breaks and `=3D` (enough for our plain mails).
fn decode_qp(s: &str) -> String {
    s.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=")
}

/// The first link in `text` that starts with `prefix`.
fn link(text: &str, prefix: &str) -> String {
    let start = text.find(prefix).unwrap_or_else(|| panic!("no {prefix} link in\n{text}"));
    text[start..].split_whitespace().next().unwrap().to_string()
}

fn token_of(link: &str) -> String {
    let u = url::Url::parse(link).unwrap();
    u.query_pairs().find(|(k, _)| k == "token").unwrap().1.into_owned()
}

async fn app_with_smtp(smtp: &SmtpServer) -> TestApp {
    let url = smtp.url();
    TestApp::builder().config(move |c| c.smtp_url = Some(carmenta::config::Secret::new(url))).spawn().await
}

#[tokio::test]
async fn verification_mail_on_sign_up() {
    let smtp = SmtpServer::start();
    let app = app_with_smtp(&smtp).await;
    let u = crate::harness::sign_up(&app, "quinn@example.com").await;
    let mail = smtp.wait_for("quinn@example.com", "/auth/verify-email").await;
    assert!(mail.contains("Subject: Confirm your email address"), "{mail}");
    let verify = link(&mail, &format!("{}/auth/verify-email", app.base));
    let (status, me) = app.get_as("/v1/me", &u.jwt).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email_verified"], false);
    // Following the link in the mail confirms the address.
    let r = app.client.get(&verify).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The token-bearing URL is never sent to another site as a referrer.
    assert_eq!(r.headers()["referrer-policy"], "same-origin");
    assert!(r.text().await.unwrap().contains("Email confirmed"));
    let (status, me) = app.get_as("/v1/me", &u.jwt).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["email_verified"], true);
    // Single use.
    let r = app.client.get(&verify).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = app.call(Method::POST, "/v1/auth/verify-email").json(&json!({"token": token_of(&verify)})).send().await;
    assert_eq!(envelope(r).await.1, "invalid_link");
    // Tokens are stored hashed.
    let raw: i64 =
        sqlx::query_scalar("SELECT count(*) FROM auth_email_tokens WHERE encode(token_hash, 'escape') LIKE '%ce_%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(raw, 0);
}

#[tokio::test]
async fn magic_link_sign_in_through_the_hosted_page() {
    let smtp = SmtpServer::start();
    let app = app_with_smtp(&smtp).await;
    crate::harness::sign_up(&app, "rita@example.com").await;
    let r = app
        .call(Method::POST, "/v1/auth/magic-link")
        .json(&json!({"email": "rita@example.com", "redirect_url": "/app/home"}))
        .send()
        .await;
    assert_eq!(r.status(), 202);
    // Unknown emails get the same answer and no mail.
    let r = app.call(Method::POST, "/v1/auth/magic-link").json(&json!({"email": "nobody@example.com"})).send().await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "accepted");

    let mail = smtp.wait_for("rita@example.com", "/auth/magic-link").await;
    let url = link(&mail, &format!("{}/auth/magic-link?", app.base));
    // Opening the link shows a confirmation page (prefetchers do not use the token up).
    let page = app.client.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("/auth/magic-link/confirm") && page.contains("name=\"token\""), "{page}");
    let token = token_of(&url);
    let confirm = |token: String| {
        app.client
            .post(app.url("/auth/magic-link/confirm"))
            .header("origin", &app.base)
            .form(&[("token", token.as_str()), ("redirect_url", "/app/home")])
            .send()
    };
    let r = confirm(token.clone()).await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/app/home");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let me: Value = app.call(Method::GET, "/v1/me").header("cookie", &cookie).value().await;
    assert_eq!(me["email"], "rita@example.com");
    assert_eq!(me["email_verified"], true, "a magic link proves the address");
    // Single use.
    let r = confirm(token).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(smtp.messages().iter().all(|m| !m.contains("nobody@example.com")));
}

#[tokio::test]
async fn password_reset_by_mail() {
    let smtp = SmtpServer::start();
    let app = app_with_smtp(&smtp).await;
    let u = crate::harness::sign_up(&app, "sam@example.com").await;
    let r =
        app.client.post(app.url("/auth/forgot-password")).form(&[("email", "sam@example.com")]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mail = smtp.wait_for("sam@example.com", "/auth/reset-password").await;
    let url = link(&mail, &format!("{}/auth/reset-password", app.base));
    let page = app.client.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("new_password"));
    let token = token_of(&url);
    let submit = |pw: &'static str, token: String| {
        app.client
            .post(app.url("/auth/reset-password"))
            .header("origin", &app.base)
            .form(&[("token", token), ("new_password", pw.to_string())])
            .send()
    };
    // A weak choice is refused without using the token up.
    let r = submit("password1", token.clone()).await.unwrap();
    assert_eq!(r.status(), 422);
    let r = submit("a fresh strong passphrase", token.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Password changed"));
    // Sessions were signed out; the new password works, the old does not.
    assert_eq!(app.call(Method::GET, "/v1/me").by(&u.session).send().await.status(), 401);
    let signin = |pw: &str| {
        app.client.post(app.url("/v1/auth/sign-in")).json(&json!({"email": "sam@example.com", "password": pw})).send()
    };
    assert_eq!(signin(PW).await.unwrap().status(), 401);
    assert_eq!(signin("a fresh strong passphrase").await.unwrap().status(), 200);
    // The token is spent; an expired one fails the same way.
    let r = app
        .call(Method::POST, "/v1/auth/password/reset")
        .json(&json!({"token": token, "new_password": "yet another passphrase"}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "invalid_link");
    app.call(Method::POST, "/v1/auth/password/forgot").json(&json!({"email": "sam@example.com"})).send().await;
    let start = Instant::now();
    let fresh = loop {
        let links: Vec<String> = smtp
            .messages()
            .iter()
            .map(|m| decode_qp(m))
            .filter(|m| m.contains("To: sam@example.com") && m.contains("/auth/reset-password"))
            .map(|m| token_of(&link(&m, &format!("{}/auth/reset-password", app.base))))
            .collect();
        if links.len() >= 2 {
            break links.into_iter().find(|t| *t != token_of(&url)).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sqlx::query("UPDATE auth_email_tokens SET expires_at = now() - interval '1 second' WHERE kind = 'password_reset' AND used_at IS NULL")
        .execute(&app.pool)
        .await
        .unwrap();
    let r = app
        .call(Method::POST, "/v1/auth/password/reset")
        .json(&json!({"token": fresh, "new_password": "yet another passphrase"}))
        .send()
        .await;
    assert_eq!(envelope(r).await.1, "invalid_link");
}

#[tokio::test]
async fn outbox_without_smtp_and_the_mail_command() {
    let app = TestApp::spawn().await;
    let data = tempfile::tempdir().unwrap();
    crate::harness::sign_up(&app, "tess@example.com").await;
    let r = app.call(Method::POST, "/v1/auth/magic-link").json(&json!({"email": "tess@example.com"})).send().await;
    assert_eq!(r.status(), 202);
    let out = Command::new(env!("CARGO_BIN_EXE_carmenta"))
        .args(["mail", "--to", "tess@example.com"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CARMENTA_CONFIG", "/dev/null")
        .env("DATABASE_URL", app.database_url())
        .env("CARMENTA_ENCRYPTION_KEY", carmenta::crypto::generate_key())
        .env("CARMENTA_DATA_DIR", data.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("Subject: Confirm your email address") && text.contains("Subject: Your sign-in link"),
        "{text}"
    );
    let magic = link(&text, &format!("{}/auth/magic-link?", app.base));
    let r = app.call(Method::POST, "/v1/auth/magic-link/verify").json(&json!({"token": token_of(&magic)})).send().await;
    assert_eq!(r.status(), 200);
    // Deleting the user deletes their mail too.
    let jwt = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    app.call(Method::DELETE, "/v1/me").by(&jwt).send().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM mail_outbox").fetch_one(&app.pool).await.unwrap();
    assert_eq!(n, 0);
}
