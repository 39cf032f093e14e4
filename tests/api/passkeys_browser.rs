//! Second factors and passkeys on the hosted pages in real Chromium with its
//! virtual authenticator: `tests/browser/auth_factors.py` (Playwright for Python
//! and Debian's `chromium`, installed by `scripts/bootstrap`) drives a live test
//! server whose public URL is `http://localhost:port`; this test checks in the
//! database what the browser did. Screenshots land in `target/auth-screenshots/`.

use std::time::Duration;

use crate::admin_browser::run_browser_script;
use crate::harness::{PASSWORD, TestApp};

#[tokio::test]
async fn totp_and_passkeys_work_in_chromium() {
    let app = TestApp::builder().config(|c| c.public_url = "http://localhost:0".parse().unwrap()).spawn().await;
    let env = [
        ("BASE", app.state.config.public_url.to_string()),
        ("EMAIL", "chromium@example.com".to_string()),
        ("PASSWORD", PASSWORD.to_string()),
    ];
    run_browser_script("auth_factors.py", "auth-screenshots", &env, Duration::from_secs(180)).await;
    // What the browser did, read back from the database.
    let user: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = 'chromium@example.com'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM auth_passkeys WHERE user_id = $1")
        .bind(user)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(names, ["Chromium key"]);
    let confirmed: bool = sqlx::query_scalar("SELECT confirmed_at IS NOT NULL FROM auth_totp WHERE user_id = $1")
        .bind(user)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(confirmed);
    let sessions: Vec<(Vec<String>, i16)> =
        sqlx::query_as("SELECT amr, aal FROM sessions WHERE user_id = $1 ORDER BY created_at")
            .bind(user)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(sessions.contains(&(vec!["passkey".to_string()], 2)), "{sessions:?}");
    assert!(sessions.contains(&(vec!["pwd".into(), "passkey".into(), "mfa".into()], 2)), "{sessions:?}");
}
