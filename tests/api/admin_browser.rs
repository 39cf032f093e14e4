//! The admin console in real Chromium: `tests/browser/admin_console.py` (Playwright
//! for Python with Debian's `chromium`, both installed by `scripts/bootstrap`)
//! drives a live test server; this test starts it, hands the script a sign-in
//! link and a user, and checks in the database what the browser changed.
//! Screenshots of every page land in `target/admin-screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use crate::admin::make_admin;
use crate::harness::{TestApp, sign_up};

/// The Python of the Playwright install `scripts/bootstrap` made.
pub fn playwright_python() -> PathBuf {
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools");
    std::fs::read_dir(&tools)
        .ok()
        .and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("playwright-")))
                .map(|p| p.join("bin/python"))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| panic!("Playwright for Python is missing under {}: run scripts/bootstrap", tools.display()))
}

/// Runs `tests/browser/<script>` in Playwright for Python with `env` (plus
/// `SHOTS`: `target/<shots>/`), within `limit`; asserts it succeeded with no
/// console errors and returns its report (the last line it printed, JSON).
pub async fn run_browser_script(
    script: &str,
    shots: &str,
    env: &[(&str, String)],
    limit: Duration,
) -> serde_json::Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = tokio::process::Command::new(playwright_python());
    cmd.arg(root.join("tests/browser").join(script)).env("SHOTS", root.join("target").join(shots)).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(limit, cmd.output()).await.expect("the browser test timed out").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "browser test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["console_errors"], serde_json::json!([]));
    report
}

#[tokio::test]
async fn the_console_works_in_chromium() {
    let app = TestApp::spawn().await;
    let user = sign_up(&app, "browser-user@example.com").await;
    let (s, org) = app.post_as("/v1/orgs", &user.jwt, &serde_json::json!({"name": "Browser Org"})).await;
    assert_eq!(s, 201, "{org}");
    let (admin_id, link) = make_admin(&app, "browser-admin@example.com").await;
    let env = [
        ("BASE", app.base.clone()),
        ("LINK", link.clone()),
        ("USER_ID", user.id.to_string()),
        ("ORG_ID", org["id"].as_str().unwrap_or_default().to_string()),
    ];
    let report = run_browser_script("admin_console.py", "admin-screenshots", &env, Duration::from_secs(240)).await;
    assert!(report["screenshots"].as_array().unwrap().len() >= 15);
    // What the browser did, read back from the database.
    let name: Option<String> =
        sqlx::query_scalar("SELECT name FROM users WHERE id = $1").bind(user.id).fetch_one(&app.pool).await.unwrap();
    assert_eq!(name.as_deref(), Some("Edited In Chromium"));
    let audit: Vec<(String, String)> = sqlx::query_as(
        "SELECT actor, action FROM audit_log WHERE action IN ('admin.table.update', 'admin.user.impersonate', \
         'admin.user.revoke_sessions') ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let actor = format!("admin:{admin_id}");
    assert_eq!(
        audit,
        vec![(actor.clone(), "admin.table.update".to_string()), (actor, "admin.user.impersonate".to_string())],
        "the refused form changed nothing"
    );
}
