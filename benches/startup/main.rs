//! Startup benchmark: cold start (empty data directory to `/readyz` 200), warm
//! start, idle RSS of the server process, and `/healthz` throughput under a
//! loopback load generator, each printed next to a bare axum hello-world built
//! and measured in the same run (this same binary, re-executed in hello mode).
//!
//! Run: `cargo bench --bench startup` (see benches/README.md).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HELLO_ENV: &str = "CARMENTA_BENCH_HELLO_ADDR";
const LOAD_SECS: u64 = 5;
const CONNECTIONS: usize = 32;

fn main() {
    if let Ok(addr) = std::env::var(HELLO_ENV) {
        hello_world(&addr);
        return;
    }
    // `cargo bench` passes `--bench`; ignore arguments.
    let carmenta = env!("CARGO_BIN_EXE_carmenta");
    let me = std::env::current_exe().expect("current exe");
    let dir = tempfile::Builder::new().prefix("carmenta-bench-").tempdir().expect("tempdir");
    let data = dir.path().join("data");

    println!(
        "carmenta startup benchmark ({} cores)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    // Cold start: empty data directory (initdb, extensions, migrations).
    let port = free_port();
    let started = Instant::now();
    let mut server = spawn_carmenta(carmenta, &data, port);
    wait_ready(port, "/readyz", &mut server);
    let cold = started.elapsed();
    stop(&mut server);

    // Warm start: the same directory again, median of 3.
    let mut warm = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let started = Instant::now();
        let mut s = spawn_carmenta(carmenta, &data, port);
        wait_ready(port, "/readyz", &mut s);
        warm.push(started.elapsed());
        stop(&mut s);
    }
    warm.sort();
    let warm = warm[1];

    // The anchor's start: spawn to first 200.
    let hport = free_port();
    let started = Instant::now();
    let mut hello = spawn_hello(&me, hport);
    wait_ready(hport, "/healthz", &mut hello);
    let hello_start = started.elapsed();

    // Idle RSS and throughput, ours then the anchor's.
    let port = free_port();
    let mut server = spawn_carmenta(carmenta, &data, port);
    wait_ready(port, "/readyz", &mut server);
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = rss_kb(server.id());
    let hello_rss_idle = rss_kb(hello.id());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let ours = rt.block_on(load(SocketAddr::from(([127, 0, 0, 1], port)), "/healthz"));
    let anchor = rt.block_on(load(SocketAddr::from(([127, 0, 0, 1], hport)), "/healthz"));
    let ours2 = rt.block_on(load(SocketAddr::from(([127, 0, 0, 1], port)), "/healthz"));
    let anchor2 = rt.block_on(load(SocketAddr::from(([127, 0, 0, 1], hport)), "/healthz"));
    let rss_loaded = rss_kb(server.id());
    stop(&mut server);
    stop(&mut hello);

    let ours_rps = (ours + ours2) / 2.0;
    let anchor_rps = (anchor + anchor2) / 2.0;
    println!();
    println!("{:<28} {:>14} {:>22} {:>14}", "metric", "carmenta", "anchor: bare axum", "target");
    println!("{:<28} {:>14} {:>22} {:>14}", "cold start (to /readyz)", fmt_dur(cold), fmt_dur(hello_start), "<= 10 s");
    println!(
        "{:<28} {:>14} {:>22} {:>14}",
        "warm start (median of 3)",
        fmt_dur(warm),
        fmt_dur(hello_start),
        "<= 1.5 s"
    );
    println!(
        "{:<28} {:>14} {:>22} {:>14}",
        "idle RSS (server process)",
        format!("{:.1} MB", rss_idle as f64 / 1024.0),
        format!("{:.1} MB", hello_rss_idle as f64 / 1024.0),
        "<= 40 MB"
    );
    println!("{:<28} {:>14} {:>22} {:>14}", "RSS after load", format!("{:.1} MB", rss_loaded as f64 / 1024.0), "", "");
    println!(
        "{:<28} {:>14} {:>22} {:>14}",
        format!("/healthz req/s ({CONNECTIONS} conns)"),
        format!("{ours_rps:.0}"),
        format!("{anchor_rps:.0}"),
        ">= 90 %"
    );
    println!("{:<28} {:>14}", "throughput vs anchor", format!("{:.1} %", 100.0 * ours_rps / anchor_rps));
    println!();
    println!("(idle RSS is the carmenta process alone; the embedded PostgreSQL runs as its own processes)");
}

fn fmt_dur(d: Duration) -> String {
    if d.as_secs_f64() >= 1.0 {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn spawn_carmenta(bin: &str, data: &Path, port: u16) -> Child {
    Command::new(bin)
        .arg("serve")
        .env("CARMENTA_DATA_DIR", data)
        .env("CARMENTA_LISTEN", format!("127.0.0.1:{port}"))
        .env("CARMENTA_CONFIG", "/dev/null")
        .env("CARMENTA_LOG", "warn")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn carmenta")
}

fn spawn_hello(me: &Path, port: u16) -> Child {
    Command::new(me)
        .env(HELLO_ENV, format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hello")
}

fn stop(child: &mut Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

fn status_of(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn wait_ready(port: u16, path: &str, child: &mut Child) {
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("server exited before ready: {st}");
        }
        if status_of(port, path) == Some(200) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "not ready after 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Keeps `CONNECTIONS` keep-alive connections busy for `LOAD_SECS` and returns
/// completed requests per second.
async fn load(addr: SocketAddr, path: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(LOAD_SECS);
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes();
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..CONNECTIONS {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                return 0;
            };
            let _ = s.set_nodelay(true);
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            while Instant::now() < deadline {
                if s.write_all(&request).await.is_err() {
                    break;
                }
                // Read one full response.
                loop {
                    if let Some(len) = response_len(&buf) {
                        buf.drain(..len);
                        done += 1;
                        break;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return done,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// The length of the first complete response in `buf`, if it is complete.
fn response_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let cl: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= end + cl).then_some(end + cl)
}

/// The anchor: the smallest axum server answering `/healthz` with the same JSON.
fn hello_world(addr: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
                term.recv().await;
            })
            .await
            .expect("serve");
    });
}
