//! Storage against the real `carmenta` binary: a 1 GiB object up and down while the
//! server's peak RSS stays under 100 MB, and SIGKILL in the middle of uploads
//! leaving no row without its bytes (then the sweeper removing what was left over).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::{Server, free_port, wait_ready};
use crate::harness::TestApp;

const BIN: &str = env!("CARGO_BIN_EXE_carmenta");

/// The real binary on `app`'s database, its objects under `data/storage`.
fn server(app: &TestApp, data: &Path, port: u16) -> Server {
    let mut c = Command::new(BIN);
    c.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CARMENTA_CONFIG", "/dev/null")
        .env("DATABASE_URL", app.database_url())
        .env("CARMENTA_ENCRYPTION_KEY", app.state.config.encryption_keys[0].expose())
        .env("CARMENTA_DATA_DIR", data)
        .env("CARMENTA_LISTEN", format!("127.0.0.1:{port}"))
        .env("CARMENTA_STORAGE_MAX_FILE_SIZE", "2GiB")
        .env("CARMENTA_LOG", "warn");
    Server::spawn(c)
}

/// Peak resident set size of `pid`, in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_gibibyte_streams_in_bounded_memory() {
    let app = TestApp::spawn().await;
    let (key, _) = carmenta::auth::service::create_service_key(&app.pool, "big", true).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut srv = server(&app, data.path(), port);
    wait_ready(port, &mut srv).await;
    let base = format!("http://127.0.0.1:{port}/storage/v1");
    let client = crate::harness::client();
    let r = client.post(format!("{base}/bucket")).bearer_auth(&key).json(&json!({"name": "big"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let rss_before = peak_rss(srv.pid());

    const MIB: usize = 1 << 20;
    const TOTAL: usize = 1024 * MIB;
    let block: Vec<u8> = crate::storage::pattern(MIB, 99);
    let mut sent = Sha256::new();
    // Each MiB differs (its first 8 bytes count), so reordering would show.
    let stream = futures::stream::iter(0..TOTAL / MIB).map(move |i| {
        let mut b = block.clone();
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Ok::<_, std::io::Error>(b)
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let hashing = stream.then(move |c| {
        let tx = tx.clone();
        async move {
            let c = c?;
            let _ = tx.send(c.clone()).await;
            Ok::<_, std::io::Error>(c)
        }
    });
    let hasher = tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            sent.update(&c);
        }
        sent.finalize()
    });
    let r = client
        .post(format!("{base}/object/big/huge.bin"))
        .bearer_auth(&key)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(hashing))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let sent = hasher.await.unwrap();

    let r = client.get(format!("{base}/object/big/huge.bin")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], TOTAL.to_string());
    let mut got = Sha256::new();
    let mut n = 0usize;
    let mut body = r.bytes_stream();
    while let Some(c) = body.next().await {
        let c = c.unwrap();
        n += c.len();
        got.update(&c);
    }
    assert_eq!(n, TOTAL);
    assert_eq!(got.finalize(), sent, "the downloaded GiB differs from the uploaded one");
    let peak = peak_rss(srv.pid());
    eprintln!(
        "server peak RSS: {} MB before the transfer, {} MB after 1 GiB up and down",
        rss_before >> 20,
        peak >> 20
    );
    // What streaming may add to the peak: buffers, not the gibibyte. (The absolute
    // figure is mostly the debug binary's mapped code, which grows with the crate.)
    assert!(peak - rss_before < 50 * 1000 * 1000, "server peak RSS grew from {rss_before} to {peak} bytes");
}

fn blob_file(data: &Path, version: uuid::Uuid) -> PathBuf {
    let s = version.simple().to_string();
    data.join("storage/blobs").join(&s[..2]).join(&s)
}

#[tokio::test]
async fn sigkill_mid_upload_leaves_no_row_without_bytes() {
    let app = TestApp::spawn().await;
    let (key, _) = carmenta::auth::service::create_service_key(&app.pool, "crash", true).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut srv = server(&app, data.path(), port);
    wait_ready(port, &mut srv).await;
    let base = format!("http://127.0.0.1:{port}/storage/v1");
    let client = crate::harness::client();
    let r = client.post(format!("{base}/bucket")).bearer_auth(&key).json(&json!({"name": "c"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Seed objects that will be overwritten while the server dies.
    for i in 0..8 {
        let r = client
            .post(format!("{base}/object/c/big{i}.bin"))
            .bearer_auth(&key)
            .body(vec![1u8; 1000])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Slow large overwrites (multipart in the store) and a stream of small uploads.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, base, key) = (client.clone(), base.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let chunks = futures::stream::iter(0..64).then(|_| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, std::io::Error>(vec![7u8; 512 * 1024])
            });
            let _ = client
                .put(format!("{base}/object/c/big{i}.bin"))
                .bearer_auth(&key)
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
                .await;
        }));
    }
    for w in 0..4 {
        let (client, base, key) = (client.clone(), base.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let r = client
                    .post(format!("{base}/object/c/small/{w}-{i}.txt"))
                    .bearer_auth(&key)
                    .body(format!("small object {w}-{i}"))
                    .send()
                    .await;
                if r.is_err() {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(srv.pid()), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = srv.child.wait();
    for t in tasks {
        let _ = t.await;
    }

    // Every row has its bytes, whole.
    let rows: Vec<(String, uuid::Uuid, i64)> =
        sqlx::query_as("SELECT name, version, size FROM storage_objects").fetch_all(&app.pool).await.unwrap();
    let small = rows.iter().filter(|r| r.0.starts_with("small/")).count();
    assert!(small > 0, "some uploads finished before the kill");
    for (name, version, size) in &rows {
        let meta = std::fs::metadata(blob_file(data.path(), *version))
            .unwrap_or_else(|e| panic!("row {name} has no bytes ({e})"));
        assert_eq!(meta.len(), *size as u64, "row {name}: size differs from its bytes");
    }
    // What the kill left (staging files, unreferenced blobs) is swept; rows keep their bytes.
    let mut config = carmenta::config::Config::for_data_dir(data.path());
    config.storage = carmenta::config::StorageBackend::Fs { root: data.path().join("storage") };
    let blobs = carmenta::storage::Blobs::open(&config.storage).unwrap();
    let report = carmenta::storage::sweep(&app.pool, &blobs, Duration::ZERO).await.unwrap();
    eprintln!("after SIGKILL: {} rows ({small} small), swept {report:?}", rows.len());
    let mut files = 0;
    for entry in walk(&data.path().join("storage/blobs")) {
        files += 1;
        let name = entry.file_name().unwrap().to_str().unwrap().to_string();
        assert!(!name.contains('#'), "staging file left: {name}");
        let v = uuid::Uuid::parse_str(&name).unwrap();
        assert!(rows.iter().any(|r| r.1 == v), "orphan blob left: {name}");
    }
    assert_eq!(files, rows.len());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { dirs.push(p) } else { out.push(p) }
        }
    }
    out
}
