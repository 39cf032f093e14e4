//! The organization pages in real Chromium: `tests/browser/orgs.py` (Playwright
//! for Python and Debian's `chromium`, installed by `scripts/bootstrap`) plays an
//! owner and an invitee in two browser contexts against a live test server; this
//! test hands the script the invitation token from the mail outbox (as the
//! invitee's mailbox would) and checks in the database what the browser did.
//! Screenshots land in `target/orgs-screenshots/`.

use std::time::Duration;

use uuid::Uuid;

use crate::admin_browser::run_browser_script;
use crate::harness::{PASSWORD, TestApp};
use crate::orgs::{claims, mailed_token};

#[tokio::test]
async fn organization_pages_work_in_chromium() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let handoff = dir.path().join("token");
    let env = [
        ("BASE", app.base.clone()),
        ("OWNER", "owner@example.com".to_string()),
        ("INVITEE", "ivy@example.com".to_string()),
        ("PASSWORD", PASSWORD.to_string()),
        ("HANDOFF", handoff.display().to_string()),
    ];
    let browser = run_browser_script("orgs.py", "orgs-screenshots", &env, Duration::from_secs(180));
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
    // The mailbox stops waiting after two minutes; the script fails on its own then.
    let (report, ()) = tokio::join!(browser, async {
        let _ = tokio::time::timeout(Duration::from_secs(120), hand).await;
    });
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
