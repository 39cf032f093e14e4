//! `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`, and isolation
//! between test databases.

use crate::harness::TestApp;

#[tokio::test]
async fn healthz_and_readyz() {
    let app = TestApp::spawn().await;
    let r = app.get("/healthz").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["status"], "ok");
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn readyz_fails_when_database_unreachable() {
    let app = TestApp::spawn().await;
    app.state.pool.close().await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), 503);
    let (_, code, _, _) = crate::harness::envelope(r).await;
    assert_eq!(code, "unavailable");
    // Liveness does not depend on the database.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn metrics_report_routes_latency_and_pool() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        app.get("/healthz").await;
    }
    app.get("/no/such/path").await;
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    // Route template, not raw path; status label.
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("http_requests_total{") && l.contains("route=\"/healthz\"") && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no healthz counter in\n{text}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 3.0, "{line}");
    assert!(text.contains("route=\"unmatched\""), "unmatched paths are one label, not one per path");
    assert!(!text.contains("/no/such/path"));
    assert!(text.contains("http_request_duration_seconds_bucket{"), "latency histogram");
    assert!(text.contains("db_pool_connections{state=\"idle\"}"));
    assert!(text.contains("db_pool_max_connections"));
}

#[tokio::test]
async fn openapi_lists_every_route() {
    let app = TestApp::spawn().await;
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    // Every route registered through the API router is documented.
    let (_, spec) = carmenta::router::api_routes().split_for_parts();
    let registered: Vec<String> = spec.paths.paths.keys().cloned().collect();
    assert!(!registered.is_empty());
    for p in &registered {
        assert!(paths.contains_key(p), "{p} missing from /openapi.json");
    }
    for p in ["/healthz", "/readyz", "/metrics"] {
        assert!(paths.contains_key(p), "{p} missing");
        // And each documented path answers (not 404).
        assert_ne!(app.get(p).await.status(), 404, "{p}");
    }
}

#[tokio::test]
async fn docs_render_without_internet() {
    let app = TestApp::spawn().await;
    let r = app.get("/docs/").await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger"), "{html}");
    // The UI's assets are served by us (vendored), not from a CDN.
    assert!(!html.contains("https://"), "docs page references an external URL");
    let js = app.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(js.status(), 200);
    assert!(js.text().await.unwrap().len() > 100_000);
    let init = app.get("/docs/swagger-initializer.js").await.text().await.unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
}

#[tokio::test]
async fn each_test_gets_its_own_database() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn().await;
    assert_ne!(a.database, b.database);
    sqlx::query("INSERT INTO audit_log (actor, action) VALUES ('test', 'isolation.a')").execute(&a.pool).await.unwrap();
    let in_a: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'isolation.a'")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'isolation.a'")
        .fetch_one(&b.pool)
        .await
        .unwrap();
    assert_eq!((in_a, in_b), (1, 0));
    // Both are migrated from the template, extensions included.
    let ext: Vec<String> =
        sqlx::query_scalar("SELECT extname::text FROM pg_extension ORDER BY 1").fetch_all(&b.pool).await.unwrap();
    assert!(ext.contains(&"ltree".to_string()) && ext.contains(&"vector".to_string()), "{ext:?}");
}

#[tokio::test]
async fn router_works_in_process_too() {
    use tower::ServiceExt;
    let app = TestApp::spawn().await;
    let req = axum::http::Request::get("/healthz").body(axum::body::Body::empty()).unwrap();
    let res = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    // The harness cluster is the embedded manager's unless pointed elsewhere.
    let c = crate::harness::cluster();
    assert_eq!(c.embedded.is_some(), std::env::var("CARMENTA_TEST_DATABASE_URL").map_or(true, |v| v.is_empty()));
}

#[tokio::test]
async fn the_openapi_document_is_a_contract() {
    let app = TestApp::spawn().await;
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for s in ["bearer", "serviceKey", "sessionCookie"] {
        assert!(schemes.contains_key(s), "{s} missing");
    }
    // Names are unique: auth's session and the connect session are two schemas.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas["SessionView"]["properties"].get("current").is_some(), "auth's SessionView");
    assert!(schemas["ConnectSessionView"]["properties"].get("links").is_some());
    // Every operation lists its error statuses; non-public ones need credentials.
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/proxy/{path}",
        "/oauth/connect",
        "/oauth/connect/{integration}",
        "/oauth/callback",
        "/auth/sign-in",
        "/auth/sign-up",
        "/auth/magic-link",
        "/auth/magic-link/sent",
        "/auth/magic-link/confirm",
        "/auth/forgot-password",
        "/auth/reset-password",
        "/auth/verify-email",
        "/auth/signed-in",
    ] {
        assert!(paths.contains_key(p), "{p} is documented");
    }
    let me = &paths["/v1/me"]["get"];
    for code in ["400", "401", "403", "503"] {
        assert!(me["responses"].get(code).is_some(), "GET /v1/me answers {code}");
    }
    assert!(me["security"].as_array().is_some_and(|s| !s.is_empty()));
    let sign_in = &paths["/v1/auth/sign-in"]["post"];
    for code in ["413", "415", "422", "429"] {
        assert!(sign_in["responses"].get(code).is_some(), "sign-in answers {code}");
    }
    assert!(sign_in.get("security").is_none(), "sign-in is public");
    // Storage is listed as external.
    assert!(doc["info"]["description"].as_str().unwrap().contains("/storage/v1"));
}
