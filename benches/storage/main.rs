//! Storage benchmark, in one run on one machine:
//! - upload and download throughput of 1 MB and 100 MB objects over HTTP, next to
//!   writing and reading the same bytes as plain files on the same filesystem
//!   (`std::fs` write and read, with and without `fsync`, since Carmenta fsyncs
//!   before it records an object);
//! - requests per second for a 4 KB object in a public bucket, next to nginx (from
//!   Debian) serving the same file from disk, 32 keep-alive connections each.
//!
//! Run: `cargo bench --bench storage` (see benches/README.md).

#[path = "../common/mod.rs"]
mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Guard, free_port, get_request, load, spawn_carmenta, stop, wait_ready};
use futures::StreamExt;

const CONNECTIONS: usize = 32;
const LOAD_SECS: u64 = 5;

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Plain files: write (optionally fsync) and read back `data`, `n` times; MB/s.
fn plain_files(dir: &Path, data: &[u8], n: usize, fsync: bool) -> (f64, f64) {
    let start = Instant::now();
    for i in 0..n {
        let mut f = std::fs::File::create(dir.join(format!("plain-{i}"))).expect("create");
        f.write_all(data).expect("write");
        if fsync {
            f.sync_all().expect("fsync");
        }
    }
    let write = mb_per_s(data.len() * n, start.elapsed());
    let start = Instant::now();
    let mut total = 0;
    for i in 0..n {
        let mut f = std::fs::File::open(dir.join(format!("plain-{i}"))).expect("open");
        total += std::io::copy(&mut f, &mut std::io::sink()).expect("read") as usize;
    }
    let read = mb_per_s(total, start.elapsed());
    for i in 0..n {
        let _ = std::fs::remove_file(dir.join(format!("plain-{i}")));
    }
    (write, read)
}

/// Carmenta over HTTP: upload and download `data` `n` times; MB/s.
async fn over_http(base: &str, key: &str, data: &[u8], n: usize, tag: &str) -> (f64, f64) {
    let client = reqwest::Client::new();
    let body = axum::body::Bytes::copy_from_slice(data);
    let start = Instant::now();
    for i in 0..n {
        let r = client
            .post(format!("{base}/object/bench/{tag}-{i}.bin"))
            .bearer_auth(key)
            .header("content-type", "application/octet-stream")
            .body(body.clone())
            .send()
            .await
            .expect("upload");
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
    let up = mb_per_s(data.len() * n, start.elapsed());
    let start = Instant::now();
    let mut total = 0;
    for i in 0..n {
        let r =
            client.get(format!("{base}/object/bench/{tag}-{i}.bin")).bearer_auth(key).send().await.expect("download");
        assert_eq!(r.status(), 200);
        let mut s = r.bytes_stream();
        while let Some(c) = s.next().await {
            total += c.expect("body").len();
        }
    }
    assert_eq!(total, data.len() * n);
    (up, mb_per_s(total, start.elapsed()))
}

fn main() {
    carmenta::install_tls_provider();
    let bin = env!("CARGO_BIN_EXE_carmenta");
    let dir = tempfile::Builder::new().prefix("carmenta-bench-storage-").tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let port = free_port();
    let mut server = Guard(spawn_carmenta(bin, &data_dir, port, &[("CARMENTA_STORAGE_MAX_FILE_SIZE", "1GB")]));
    wait_ready(port, "/readyz", &mut server.0);
    // A service key, made by the CLI beside the running server.
    let key = common::service_key(bin, &data_dir);
    let base = format!("http://127.0.0.1:{port}/storage/v1");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{base}/bucket"))
            .bearer_auth(&key)
            .json(&serde_json::json!({"name": "bench", "public": true}))
            .send()
            .await
            .expect("bucket");
        assert_eq!(r.status(), 200);
    });
    println!(
        "carmenta storage benchmark ({} cores)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let plain_dir = data_dir.join("plain");
    std::fs::create_dir_all(&plain_dir).expect("plain dir");
    for (label, size, n) in [("1 MB", 1_000_000usize, 100usize), ("100 MB", 100_000_000, 5)] {
        let data = payload(size);
        let (pw, pr) = plain_files(&plain_dir, &data, n, false);
        let (fw, fr) = plain_files(&plain_dir, &data, n, true);
        let (up, down) = rt.block_on(over_http(&base, &key, &data, n, label.split(' ').next().unwrap_or("x")));
        println!("{label} objects × {n}:");
        println!(
            "  upload   {up:8.0} MB/s   plain write {pw:8.0} MB/s ({:5.1} %)   write+fsync {fw:8.0} MB/s ({:5.1} %)",
            100.0 * up / pw,
            100.0 * up / fw
        );
        println!(
            "  download {down:8.0} MB/s   plain read  {pr:8.0} MB/s ({:5.1} %)   (after fsync run: {fr:.0} MB/s)",
            100.0 * down / pr
        );
    }

    // 4 KB public object: Carmenta next to nginx serving the same bytes from disk.
    let small = payload(4096);
    rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{base}/object/bench/small.bin"))
            .bearer_auth(&key)
            .body(small.clone())
            .send()
            .await
            .expect("upload small");
        assert_eq!(r.status(), 200);
    });
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("small.bin"), &small).expect("small file");
    let (mut ng, nginx_port) = common::nginx(&www, dir.path());
    let ours = SocketAddr::from(([127, 0, 0, 1], port));
    let theirs = SocketAddr::from(([127, 0, 0, 1], nginx_port));
    let ours_req = get_request("/storage/v1/object/public/bench/small.bin", &[]);
    let theirs_req = get_request("/small.bin", &[]);
    let mut c = Vec::new();
    let mut g = Vec::new();
    for _ in 0..2 {
        c.push(rt.block_on(load(ours, ours_req.clone(), CONNECTIONS, LOAD_SECS)));
        g.push(rt.block_on(load(theirs, theirs_req.clone(), CONNECTIONS, LOAD_SECS)));
    }
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (c, g) = (best(&c), best(&g));
    println!("4 KB public object, {CONNECTIONS} connections, {LOAD_SECS} s (best of 2):");
    println!("  carmenta {c:8.0} req/s   nginx {g:8.0} req/s   ({:5.1} %; target ≥ 50 %)", 100.0 * c / g);
    let rss = common::rss_kb(server.0.id());
    println!("server RSS after the run: {} MB", rss / 1024);
    common::stop_nginx(&mut ng);
    stop(&mut server.0);
}
