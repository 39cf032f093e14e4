//! The organization pages in real Chromium: `tests/browser/orgs.py` (Playwright
//! for Python and Debian's `chromium`, installed by `scripts/bootstrap`) plays an
//! owner and an invitee in two browser contexts against a live test server; this
//! test hands the script the invitation token from the mail outbox (as the
//! invitee's mailbox would) and checks in the database what the browser did.
//! Screenshots land in `target/orgs-screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

use crate::admin_browser::playwright_python;
use crate::harness::{PASSWORD, TestApp};
use crate::orgs::{claims, mailed_token};

#[tokio::test]
async fn organization_pages_work_in_chromium() {
    let app = TestApp::spawn().await;
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/orgs-screenshots");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/orgs.py");
    let dir = tempfile::tempdir().unwrap();
    let handoff = dir.path().join("token");
    let child = tokio::process::Command::new(playwright_python())
        .arg(&script)
        .env("BASE", &app.base)
        .env("OWNER", "owner@example.com")
        .env("INVITEE", "ivy@example.com")
        .env("PASSWORD", PASSWORD)
        .env("HANDOFF", &handoff)
        .env("SHOTS", &shots)
        .kill_on_drop(true)
        .output();
    // The invitee's mailbox: once the invitation's mail is written, its token goes to the script.
    let pool = app.pool.clone();
    let hand = async {
        loop {
            let waiting: bool = sqlx::query_scalar(
                "SELECT NOT EXISTS (SELECT 1 FROM mail_outbox WHERE to_addr = 'ivy@example.com' AND strpos(body, 'oin_') > 0)",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if !waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let token = mailed_token(&app, "ivy@example.com").await;
        std::fs::write(&handoff, token).unwrap();
    };
    let run = async {
        let (out, ()) = tokio::join!(child, async {
            let _ = tokio::time::timeout(Duration::from_secs(120), hand).await;
        });
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(180), run).await.expect("the browser test timed out").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "browser test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["console_errors"], serde_json::json!([]));
    let org: Uuid = report["org_id"].as_str().and_then(|s| s.parse().ok()).expect("the organization's id");

    // What the browser did, read back from the database.
    let name: String = sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1")
        .bind(org)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(name, "Browser Team");
    let members: Vec<(String, String)> = sqlx::query_as(
        "SELECT u.email, m.role FROM org_members m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1",
    )
    .bind(org)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(members, [("owner@example.com".to_string(), "org:owner".to_string())], "the invitee left");
    let invitations: Vec<(String, String)> =
        sqlx::query_as("SELECT email, status FROM org_invitations WHERE org_id = $1 ORDER BY email")
            .bind(org)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        invitations,
        [("ivy@example.com".to_string(), "accepted".to_string()), ("second@example.com".into(), "revoked".into())]
    );
    // The invitee's account was made by the invitation, its email proved by the token.
    let (ivy, verified): (Uuid, bool) =
        sqlx::query_as("SELECT id, email_verified_at IS NOT NULL FROM users WHERE email = 'ivy@example.com'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(verified);
    // While active, the session's token carried Clerk's claims; leaving cleared the session's active organization.
    let c = claims(report["jwt"].as_str().expect("a token"));
    assert_eq!(c["sub"], ivy.to_string());
    assert_eq!((c["org_id"].as_str(), c["org_role"].as_str()), (Some(org.to_string().as_str()), Some("org:member")));
    let active: Vec<Option<Uuid>> = sqlx::query_scalar("SELECT active_org_id FROM sessions WHERE user_id = $1")
        .bind(ivy)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(!active.is_empty() && active.iter().all(Option::is_none), "{active:?}");
}
