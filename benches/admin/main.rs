//! Admin console benchmark, every figure next to its anchor from the same run:
//!
//! 1. **Table browser** on a table of `ADMIN_ROWS` users (default 1,000,000): a
//!    page of 50 rows sorted by `created_at` descending (indexed) and by `name`
//!    (no index), filtered (`email` contains `7`), first pages and keyset pages
//!    deep into the table, p50/p95/p99 over HTTP with the admin session (session
//!    check, introspection, the page query, rendering), next to the same page query
//!    run directly through `carmenta::admin::table::db::browse` on a pool of the
//!    server's database.
//! 2. **CSV export memory**: the server's resident set sampled every 20 ms while an
//!    admin streams the whole table as CSV, and while it streams about a twentieth
//!    of it; flat means the peak over the baseline does not grow with the rows
//!    exported.
//!
//! Run: `cargo bench --bench admin` (see benches/README.md).

#[path = "../common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Guard, free_port, quantile, request, rss_kb, spawn_carmenta, wait_ready};

const PAGES: usize = 200;

fn main() {
    let bin = env!("CARGO_BIN_EXE_carmenta");
    let rows: i64 = std::env::var("ADMIN_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("carmenta admin benchmark ({cores} cores, {rows} users)");
    let dir = tempfile::Builder::new().prefix("carmenta-bench-admin-").tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = spawn_carmenta(bin, &data, port, &[("CARMENTA_PUBLIC_URL", &base)]);
    wait_ready(port, "/readyz", &mut server);
    let server = Guard(server);
    let pid = server.0.id();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let opts = carmenta::db::embedded::socket_connect_options(&data.join("run"), carmenta::db::EMBEDDED_DATABASE);
    let pool = rt.block_on(carmenta::db::pool_options(4).connect_with(opts)).expect("pool");

    // The table: `rows` users, one a second back from now.
    let t = Instant::now();
    rt.block_on(async {
        let mut from = 1i64;
        while from <= rows {
            let to = (from + 99_999).min(rows);
            sqlx::query(
                "INSERT INTO users (id, email, name, created_at, updated_at)
                 SELECT gen_random_uuid(), 'user' || g || '@example.com', 'User ' || g,
                        now() - g * interval '1 second', now()
                 FROM generate_series($1::int8, $2::int8) g",
            )
            .bind(from)
            .bind(to)
            .execute(&pool)
            .await
            .expect("insert users");
            from = to + 1;
        }
        sqlx::query("ANALYZE users").execute(&pool).await.expect("analyze");
    });
    println!("  built {rows} users in {:.1} s", t.elapsed().as_secs_f64());

    // An admin, signed in by the CLI's one-time link.
    let out = Command::new(bin)
        .args(["admin", "create", "--email", "bench-admin@example.com"])
        .env("CARMENTA_DATA_DIR", &data)
        .env("CARMENTA_CONFIG", "/dev/null")
        .env("CARMENTA_PUBLIC_URL", &base)
        .env_remove("DATABASE_URL")
        .output()
        .expect("admin create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let link = String::from_utf8(out.stdout).expect("utf8");
    let token = link.trim().split("token=").nth(1).expect("token").to_string();
    let cookie = sign_in(port, &token);

    // 1. Table browser pages: sorted by an indexed column, and by one without an index.
    let info = rt.block_on(carmenta::admin::table::db::info(&pool, "users")).expect("info").expect("users");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (label, sort, desc, pages) in
        [("created_at desc (indexed)", "created_at", true, PAGES), ("name asc (no index)", "name", false, 20)]
    {
        let dir = if desc { "&dir=desc" } else { "" };
        let first = format!("/admin/tables/users?sort={sort}{dir}&fc=email&fo=contains&fv=7");
        let (status, html) = get(port, &first, &cookie);
        assert_eq!(status, 200, "{html}");
        assert_eq!(html.matches("/admin/tables/users/row/").count(), 50, "a full page");
        let mut http = Vec::with_capacity(pages);
        let mut path = first.clone();
        for i in 0..pages {
            if i % 20 == 0 {
                path = first.clone(); // first pages, then deeper and deeper keyset pages
            }
            let t = Instant::now();
            let (status, html) = get(port, &path, &cookie);
            http.push(t.elapsed());
            assert_eq!(status, 200);
            path = next_link(&html).expect("a next page");
        }
        http.sort();
        let mut direct = Vec::with_capacity(pages);
        let mut browse = carmenta::admin::table::Browse {
            sort: Some(sort.into()),
            desc,
            filters: vec![carmenta::admin::table::Filter {
                column: "email".into(),
                op: carmenta::admin::table::Op::Contains,
                value: "7".into(),
            }],
            after: None,
            limit: 50,
        };
        for i in 0..pages {
            if i % 20 == 0 {
                browse.after = None;
            }
            let t = Instant::now();
            let page = rt
                .block_on(carmenta::admin::table::db::browse(&pool, &info, &browse, Duration::from_secs(10)))
                .expect("browse");
            direct.push(t.elapsed());
            let last = &page[49];
            browse.after =
                Some(carmenta::admin::table::Cursor { sort: Some(last.sort.clone()), key: last.key.clone() });
        }
        direct.sort();
        println!(
            "table browser: 50 rows of {rows}, sorted by {label}, filtered email contains '7' ({pages} pages, first to 20 deep)"
        );
        println!(
            "  carmenta page over HTTP   p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms   (target p95 <= 100 ms)",
            ms(quantile(&http, 0.5)),
            ms(quantile(&http, 0.95)),
            ms(quantile(&http, 0.99))
        );
        println!(
            "  same query run directly   p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms",
            ms(quantile(&direct, 0.5)),
            ms(quantile(&direct, 0.95)),
            ms(quantile(&direct, 0.99))
        );
    }

    // 2. CSV export memory.
    println!("CSV export: the server's RSS sampled every 20 ms while one admin streams");
    for (label, path, expect) in [
        ("emails containing '99' (~5%)", "/admin/tables/users/export.csv?fc=email&fo=contains&fv=99", None),
        ("every row", "/admin/tables/users/export.csv", Some(rows + 1)),
    ] {
        let baseline = rss_kb(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(baseline));
        let sampler = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let t = Instant::now();
        let (bytes, lines) = stream(port, path, &cookie);
        let took = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        sampler.join().expect("sampler");
        if let Some(n) = expect {
            assert_eq!(lines as i64, n + 1, "header + every row (+ the admin)");
        }
        let peak = peak.load(Ordering::Relaxed);
        println!(
            "  {label:<32} {:>9} lines {:>8.1} MB in {:>5.1} s   RSS baseline {:>6.1} MB, peak {:>6.1} MB (+{:.1} MB)",
            lines,
            bytes as f64 / 1e6,
            took.as_secs_f64(),
            baseline as f64 / 1024.0,
            peak as f64 / 1024.0,
            (peak.saturating_sub(baseline)) as f64 / 1024.0
        );
    }
    drop(server);
}

/// Signs in with the one-time link; the cookie header value.
fn sign_in(port: u16, token: &str) -> String {
    let body = format!("token={token}");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "POST /admin/sign-in/link HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.1 303"), "{out}");
    let line = out.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).expect("cookie");
    line.split_once(':').expect("header").1.trim().split(';').next().expect("value").to_string()
}

fn get(port: u16, path: &str, cookie: &str) -> (u16, String) {
    request(port, "GET", path, &[("Cookie", cookie)], "").expect("request")
}

/// The page's "next page" link.
fn next_link(html: &str) -> Option<String> {
    let before = html.split("rel=\"next\"").next().filter(|_| html.contains("rel=\"next\""))?;
    let href = before.rsplit("href=\"").next()?;
    Some(href.split('"').next()?.replace("&#38;", "&").replace("&amp;", "&"))
}

/// Streams a GET to the end, reading as fast as it arrives; (bytes, lines).
fn stream(port: u16, path: &str, cookie: &str) -> (u64, u64) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    // HTTP/1.0: the body is delimited by the close, not chunked, so lines count rows.
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\nCookie: {cookie}\r\n\r\n").expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let (mut bytes, mut lines) = (0u64, 0u64);
    let mut head = Vec::new();
    let mut in_body = false;
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        if !in_body {
            head.extend_from_slice(chunk);
            let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            assert!(
                head.starts_with(b"HTTP/1.0 200") || head.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            assert!(!String::from_utf8_lossy(&head).to_ascii_lowercase().contains("chunked"));
            in_body = true;
            let rest = head.split_off(i + 4);
            bytes += rest.len() as u64;
            lines += rest.iter().filter(|b| **b == b'\n').count() as u64;
            chunk = &[];
        }
        bytes += chunk.len() as u64;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }
    (bytes, lines)
}
