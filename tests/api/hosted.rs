//! Hosted auth pages: forms render, sign-in and sign-up through them set the
//! session cookie and redirect, and open redirects are impossible.

use serde_json::json;

use crate::harness::{TestApp, envelope};
use reqwest::Method;

const PW: &str = "correct horse battery staple";

async fn app() -> TestApp {
    TestApp::builder().config(|c| c.allowed_origins = vec!["https://app.example.com".into()]).spawn().await
}

#[tokio::test]
async fn pages_render_with_safe_headers() {
    let app = app().await;
    for path in [
        "/auth/sign-in",
        "/auth/sign-up",
        "/auth/magic-link",
        "/auth/magic-link/sent",
        "/auth/forgot-password",
        "/auth/signed-in",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"), "{csp}");
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        let html = r.text().await.unwrap();
        assert!(html.starts_with("<!doctype html>"), "{path}");
    }
    // User input is escaped.
    let r = app
        .client
        .post(app.url("/auth/sign-in"))
        .header("origin", &app.base)
        .form(&[("email", "<script>x</script>@a.co"), ("password", "nope-nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let html = r.text().await.unwrap();
    assert!(
        !html.contains("<script>x") && (html.contains("&lt;script&gt;") || html.contains("&#60;script&#62;")),
        "{html}"
    );
}

#[tokio::test]
async fn sign_up_and_sign_in_through_pages() {
    let app = app().await;
    let r = app
        .client
        .post(app.url("/auth/sign-up"))
        .header("origin", &app.base)
        .form(&[("email", "uma@example.com"), ("password", PW), ("redirect_url", "https://app.example.com/welcome")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "https://app.example.com/welcome");
    assert!(r.headers()["set-cookie"].to_str().unwrap().starts_with("carmenta_session=cs_"));

    let r = app
        .client
        .post(app.url("/auth/sign-in"))
        .header("origin", &app.base)
        .form(&[("email", "uma@example.com"), ("password", PW)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/auth/signed-in");
    let r = app
        .client
        .post(app.url("/auth/sign-in"))
        .header("origin", &app.base)
        .form(&[("email", "uma@example.com"), ("password", "wrong-password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap().contains("email or password is incorrect"));
    // A page posted from another site is refused.
    let r = app
        .client
        .post(app.url("/auth/sign-in"))
        .header("origin", "https://evil.example")
        .form(&[("email", "uma@example.com"), ("password", PW)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());
}

const EVIL: &[&str] = &[
    "https://evil.example/",
    "http://evil.example",
    "//evil.example",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "/\t/evil.example",
    " //evil.example",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "%2F%2Fevil.example",
    "/%2F/evil.example",
    "/%2f%2fevil.example",
    "/%252F%252Fevil.example",
    "/%5Cevil.example",
    "https://app.example.com@evil.example/",
    "https://user:pw@app.example.com/",
    "https://app.example.com.evil.example/",
    "https:evil.example",
    "https://evil.example#https://app.example.com",
    "ftp://app.example.com/",
    "http://app.example.com/",
];

#[tokio::test]
async fn open_redirects_are_impossible() {
    let app = app().await;
    crate::harness::sign_up(&app, "vic@example.com").await;
    for bad in EVIL {
        // The page refuses to render a form that would send the browser there.
        let r = app.client.get(app.url("/auth/sign-in")).query(&[("redirect_url", bad)]).send().await.unwrap();
        assert_eq!(r.status(), 422, "GET sign-in with {bad:?}");
        // A successful sign-in never redirects there.
        let r = app
            .client
            .post(app.url("/auth/sign-in"))
            .header("origin", &app.base)
            .form(&[("email", "vic@example.com"), ("password", PW), ("redirect_url", bad)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "POST sign-in with {bad:?}");
        assert!(r.headers().get("location").is_none() && r.headers().get("set-cookie").is_none(), "{bad:?}");
        // The API refuses to mail a link carrying it.
        let r = app
            .call(Method::POST, "/v1/auth/magic-link")
            .json(&json!({"email": "vic@example.com", "redirect_url": bad}))
            .send()
            .await;
        let (s, code, _, _) = envelope(r).await;
        assert_eq!((s, code.as_str()), (422, "invalid_redirect_url"), "{bad:?}");
    }
    // Allowed targets work.
    for good in ["/dashboard?tab=1", "https://app.example.com/cb", &format!("{}/x", app.base)] {
        let r = app
            .client
            .post(app.url("/auth/sign-in"))
            .header("origin", &app.base)
            .form(&[("email", "vic@example.com"), ("password", PW), ("redirect_url", good)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{good}");
        assert_eq!(r.headers()["location"], good);
    }
}
