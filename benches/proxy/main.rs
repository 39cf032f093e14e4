//! Proxy benchmark, in one run: a local upstream returning 1 KB, called directly and
//! through `/v1/proxy` with a valid token, 64 concurrent keep-alive clients each
//! (requests per second), then 2,000 sequential requests each way for the latency
//! the proxy adds (p50, p99).
//!
//! Run: `cargo bench --bench proxy` (see benches/README.md).

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Guard, free_port, get_request, load, quantile, request, spawn_carmenta, stop, wait_ready};

const CONNECTIONS: usize = 64;
const LOAD_SECS: u64 = 5;
const SEQUENTIAL: usize = 2000;

/// The upstream: an OAuth token endpoint (accepts any code) and a 1 KB API answer.
async fn upstream(listener: tokio::net::TcpListener) {
    use axum::routing::{get, post};
    let body = "x".repeat(1024);
    let app = axum::Router::new()
        .route(
            "/token",
            post(|| async {
                axum::Json(
                    serde_json::json!({"access_token": "bench-token", "refresh_token": "r", "expires_in": 86400}),
                )
            }),
        )
        .route("/api/data", get(move || std::future::ready(body.clone())));
    let _ = axum::serve(listener, app).await;
}

fn main() {
    carmenta::install_tls_provider();
    let bin = env!("CARGO_BIN_EXE_carmenta");
    let dir = tempfile::Builder::new().prefix("carmenta-bench-proxy-").tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // The upstream on its own thread and runtime, like a separate service.
    let up_port = free_port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", up_port)).await.expect("bind upstream");
            upstream(l).await;
        });
    });
    let providers = dir.path().join("providers.json");
    std::fs::write(
        &providers,
        serde_json::json!({"bench": {"auth_mode": "OAUTH2", "authorization_url": format!("http://127.0.0.1:{up_port}/authorize"),
            "token_url": format!("http://127.0.0.1:{up_port}/token"), "proxy": {"base_url": format!("http://127.0.0.1:{up_port}/api")},
            "scope_separator": " ", "docs": "https://docs.example.test/oauth", "categories": ["dev-tools"]}})
        .to_string(),
    )
    .expect("providers file");
    let port = free_port();
    let providers_env = providers.display().to_string();
    let mut server = Guard(spawn_carmenta(
        bin,
        &data,
        port,
        &[("CARMENTA_PROVIDERS_FILE", &providers_env), ("CARMENTA_ACCESS_TOKEN_TTL", "3600")],
    ));
    wait_ready(port, "/readyz", &mut server.0);
    let key = common::service_key(bin, &data);
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("json");
    let ct = ("Content-Type", "application/json");
    let bearer_key = format!("Bearer {key}");
    let (s, b) = request(
        port,
        "POST",
        "/v1/integrations",
        &[ct, ("Authorization", &bearer_key)],
        r#"{"unique_key":"bench","provider":"bench","client_id":"c","client_secret":"s"}"#,
    )
    .expect("integration");
    assert_eq!(s, 201, "{b}");
    let (s, b) = request(
        port,
        "POST",
        "/v1/auth/sign-up",
        &[ct],
        r#"{"email":"proxy-bench@example.com","password":"correct horse battery staple"}"#,
    )
    .expect("sign-up");
    assert_eq!(s, 201, "{b}");
    let jwt = json(&b)["access_token"].as_str().expect("jwt").to_string();
    let bearer = format!("Bearer {jwt}");
    let (s, b) =
        request(port, "POST", "/v1/connect/sessions", &[ct, ("Authorization", &bearer)], r#"{"return_url":"/done"}"#)
            .expect("session");
    assert_eq!(s, 201, "{b}");
    let link = json(&b)["links"]["bench"].as_str().expect("link").to_string();
    let path = link.split_once(&format!("127.0.0.1:{port}")).expect("local link").1.to_string();
    let location = |path: &str| -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out.lines()
            .find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: ")))
            .expect("Location")
            .trim()
            .to_string()
    };
    let to_provider = location(&path);
    let state = url::Url::parse(&to_provider)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "state")
        .expect("state")
        .1
        .into_owned();
    let back = location(&format!("/oauth/callback?code=bench&state={state}"));
    let conn = back.rsplit("connection_id=").next().expect("connection id").to_string();

    println!(
        "carmenta proxy benchmark ({} cores, {CONNECTIONS} clients, {LOAD_SECS} s per run, 1 KB answers)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let direct_addr = SocketAddr::from(([127, 0, 0, 1], up_port));
    let proxy_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let direct_req = get_request("/api/data", &[]);
    let proxy_req = get_request(
        "/v1/proxy/data",
        &[("Authorization", &bearer), ("Connection-Id", &conn), ("Provider-Config-Key", "bench")],
    );
    // For reference, what a dedicated reverse proxy gets in the same conditions:
    // nginx (2 workers) passing the same request to the same upstream over
    // keep-alive connections (it injects nothing and checks nothing).
    let (mut ng, ng_port) = common::nginx_with(
        dir.path(),
        &format!("upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}"),
        "location /api/ { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }",
    );
    let nginx_addr = SocketAddr::from(([127, 0, 0, 1], ng_port));
    let (mut d, mut p, mut n) = (0.0f64, 0.0f64, 0.0f64);
    for _ in 0..2 {
        d = d.max(rt.block_on(load(direct_addr, direct_req.clone(), CONNECTIONS, LOAD_SECS)));
        p = p.max(rt.block_on(load(proxy_addr, proxy_req.clone(), CONNECTIONS, LOAD_SECS)));
        n = n.max(rt.block_on(load(nginx_addr, direct_req.clone(), CONNECTIONS, LOAD_SECS)));
    }
    common::stop_nginx(&mut ng);
    println!("throughput: direct {d:8.0} req/s   proxied {p:8.0} req/s   ({:5.1} %; target ≥ 70 %)", 100.0 * p / d);
    println!("  for reference, nginx proxy_pass {n:8.0} req/s ({:5.1} % of direct)", 100.0 * n / d);
    // Latency, sequential, one keep-alive connection each.
    let lat = |addr: SocketAddr, req: Vec<u8>| -> Vec<Duration> {
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let _ = s.set_nodelay(true);
            let mut out = Vec::with_capacity(SEQUENTIAL);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            for _ in 0..SEQUENTIAL {
                let t = Instant::now();
                s.write_all(&req).await.expect("write");
                loop {
                    if let Some(len) = common::response_len(&buf) {
                        buf.drain(..len);
                        break;
                    }
                    let n = s.read(&mut chunk).await.expect("read");
                    assert!(n > 0, "closed");
                    buf.extend_from_slice(&chunk[..n]);
                }
                out.push(t.elapsed());
            }
            out.sort();
            out
        })
    };
    let dl = lat(direct_addr, direct_req);
    let pl = lat(proxy_addr, proxy_req);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "latency: direct p50 {:.3} ms p99 {:.3} ms   proxied p50 {:.3} ms p99 {:.3} ms   added p50 {:.3} ms (target ≤ 1 ms), p99 {:.3} ms",
        ms(quantile(&dl, 0.5)),
        ms(quantile(&dl, 0.99)),
        ms(quantile(&pl, 0.5)),
        ms(quantile(&pl, 0.99)),
        ms(quantile(&pl, 0.5)) - ms(quantile(&dl, 0.5)),
        ms(quantile(&pl, 0.99)) - ms(quantile(&dl, 0.99))
    );
    stop(&mut server.0);
}
