//! Startup benchmark: cold start (empty data directory to `/readyz` 200), warm
//! start, idle RSS of the server process, and `/healthz` throughput under a
//! loopback load generator, each printed next to a bare axum hello-world built
//! and measured in the same run (this same binary, re-executed in hello mode).
//!
//! Run: `cargo bench --bench startup` (see benches/README.md).

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, get_request, rss_kb, stop, wait_ready};

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
    let healthz = |port: u16| {
        rt.block_on(common::load(
            SocketAddr::from(([127, 0, 0, 1], port)),
            get_request("/healthz", &[]),
            CONNECTIONS,
            LOAD_SECS,
        ))
    };
    // Alternate ours and the anchor's, twice, so drift affects both alike.
    let (ours, anchor) = (healthz(port), healthz(hport));
    let (ours2, anchor2) = (healthz(port), healthz(hport));
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

fn spawn_carmenta(bin: &str, data: &Path, port: u16) -> Child {
    common::spawn_carmenta(bin, data, port, &[])
}

fn spawn_hello(me: &Path, port: u16) -> Child {
    Command::new(me)
        .env(HELLO_ENV, format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hello")
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
