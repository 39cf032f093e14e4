//! Auth benchmark, on one server: requests per second of `GET /v1/me` with a JWT
//! and with a session cookie, next to `/healthz` on the same server (the anchor),
//! and sign-in latency p50/p99 (argon2id with OWASP parameters); then the server's
//! peak RSS while 30 clients at once send 10 MB bad bodies (sign-ups, conversation
//! creations, message appends), next to its idle RSS (target ≤ 2 × idle + 50 MB).
//!
//! Run: `cargo bench --bench auth` (see benches/README.md).

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{free_port, get_request, load, quantile, request, spawn_carmenta, stop, wait_ready};

const LOAD_SECS: u64 = 5;
const CONNECTIONS: usize = 32;
const SIGN_INS: usize = 100;

fn main() {
    let bin = env!("CARGO_BIN_EXE_carmenta");
    let dir = tempfile::Builder::new().prefix("carmenta-bench-auth-").tempdir().expect("tempdir");
    let port = free_port();
    let mut server = spawn_carmenta(
        bin,
        &dir.path().join("data"),
        port,
        &[("CARMENTA_ACCESS_TOKEN_TTL", "3600"), ("CARMENTA_SIGNIN_IP_LIMIT", "1000000")],
    );
    wait_ready(port, "/readyz", &mut server);
    let json = r#"{"email":"bench@example.com","password":"correct horse battery staple"}"#;
    let (status, body) =
        request(port, "POST", "/v1/auth/sign-up", &[("Content-Type", "application/json")], json).expect("sign-up");
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let jwt = v["access_token"].as_str().expect("access_token").to_string();
    let session = v["session_token"].as_str().expect("session_token").to_string();

    println!(
        "carmenta auth benchmark ({} cores, {CONNECTIONS} connections, {LOAD_SECS} s per run)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let bearer = format!("Bearer {jwt}");
    let cookie = format!("carmenta_session={session}");
    let health = get_request("/healthz", &[]);
    let me_jwt = get_request("/v1/me", &[("Authorization", &bearer)]);
    let me_cookie = get_request("/v1/me", &[("Cookie", &cookie)]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (mut h, mut j, mut c) = (0.0, 0.0, 0.0);
    for _ in 0..2 {
        h += rt.block_on(load(addr, health.clone(), CONNECTIONS, LOAD_SECS)) / 2.0;
        j += rt.block_on(load(addr, me_jwt.clone(), CONNECTIONS, LOAD_SECS)) / 2.0;
        c += rt.block_on(load(addr, me_cookie.clone(), CONNECTIONS, LOAD_SECS)) / 2.0;
    }

    let mut lat = Vec::with_capacity(SIGN_INS);
    for _ in 0..SIGN_INS {
        let t = Instant::now();
        let (status, _) =
            request(port, "POST", "/v1/auth/sign-in", &[("Content-Type", "application/json")], json).expect("sign-in");
        lat.push(t.elapsed());
        assert_eq!(status, 200);
    }
    lat.sort();
    let pid = server.id();
    let idle = common::rss_kb(pid);
    let conv = {
        let (status, body) = request(
            port,
            "POST",
            "/v1/conversations",
            &[("Content-Type", "application/json"), ("Authorization", &bearer)],
            r#"{"title":"bench"}"#,
        )
        .expect("conversation");
        assert_eq!(status, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["id"].as_str().expect("id").to_string()
    };
    let floods = [
        ("sign-up, 10 MB metadata array", "/v1/auth/sign-up".to_string(), None),
        ("conversation, 10 MB metadata array", "/v1/conversations".to_string(), Some(bearer.clone())),
        ("message append, 10 MB parts array", format!("/v1/conversations/{conv}/messages"), Some(bearer.clone())),
    ];
    let mut peaks = Vec::new();
    for (name, path, auth) in &floods {
        peaks.push((*name, flood(port, pid, path, auth.as_deref())));
    }
    stop(&mut server);

    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!();
    println!("{:<32} {:>12} {:>16} {:>10}", "metric", "req/s", "vs /healthz", "target");
    println!("{:<32} {:>12.0} {:>16} {:>10}", "GET /healthz (anchor)", h, "100 %", "");
    println!("{:<32} {:>12.0} {:>15.1} % {:>10}", "GET /v1/me, JWT bearer", j, 100.0 * j / h, ">= 85 %");
    println!("{:<32} {:>12.0} {:>15.1} % {:>10}", "GET /v1/me, session cookie", c, 100.0 * c / h, ">= 60 %");
    println!();
    println!(
        "sign-in latency over {SIGN_INS} sequential sign-ins: p50 {}  p99 {}",
        ms(quantile(&lat, 0.5)),
        ms(quantile(&lat, 0.99))
    );
    println!(
        "(profiles and sessions are served from the auth cache; verified access tokens are remembered until they expire)"
    );
    println!();
    let target = 2 * idle + 50 * 1024;
    println!("idle RSS {} MB; target for the peaks: <= 2 x idle + 50 MB = {} MB", idle / 1024, target / 1024);
    println!("{:<40} {:>12} {:>10}", "30 parallel 10 MB bad bodies", "peak RSS", "target");
    for (name, peak) in peaks {
        let ok = if peak <= target { "ok" } else { "over" };
        println!("{:<40} {:>9} MB {:>10}", name, peak / 1024, ok);
    }
}

/// Sends 30 bodies of ~10 MB (a JSON array of 4.9 million zeros where an object
/// belongs) to `path` at once and returns the server's peak RSS meanwhile, in KiB
/// (the peak is reset first: `clear_refs` 5).
fn flood(port: u16, pid: u32, path: &str, auth: Option<&str>) -> u64 {
    use std::io::{Read, Write};
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let array = format!("[{}0]", "0,".repeat(4_900_000));
    let body = match path {
        "/v1/auth/sign-up" => format!(
            r#"{{"email":"flood@example.com","password":"correct horse battery staple","unsafe_metadata":{array}}}"#
        ),
        p if p.ends_with("/messages") => format!(r#"{{"id":"m","role":"user","parts":{array}}}"#),
        _ => format!(r#"{{"title":"t","metadata":{array}}}"#),
    };
    let body = std::sync::Arc::new(body);
    let threads: Vec<_> = (0..30)
        .map(|_| {
            let (body, path, auth) = (body.clone(), path.to_string(), auth.map(str::to_string));
            std::thread::spawn(move || {
                let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return };
                let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                let mut head = format!(
                    "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                );
                if let Some(a) = auth {
                    head.push_str(&format!("Authorization: {a}\r\n"));
                }
                head.push_str("\r\n");
                // The server may answer and close before the body is all sent.
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(body.as_bytes());
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    common::peak_rss_kb(pid)
}
