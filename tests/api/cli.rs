//! The real `carmenta` binary: `--help`, `doctor`, and `serve` end to end on the
//! embedded default (start, a refused second instance, SIGKILL and recovery,
//! SIGTERM stopping the cluster, logs without secrets).

use reqwest::Method;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_carmenta");

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn carmenta(dir: &Path, port: u16) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CARMENTA_DATA_DIR", dir)
        .env("CARMENTA_LISTEN", format!("127.0.0.1:{port}"))
        .env("CARMENTA_CONFIG", "/dev/null")
        .current_dir(dir.parent().unwrap());
    c
}

/// A spawned server whose standard error is collected.
pub(crate) struct Server {
    pub(crate) child: Child,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub(crate) fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        Server { child, log }
    }
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn wait_ready(port: u16, server: &mut Server) {
    let client = crate::harness::client();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("server exited early ({status}):\n{}", server.log());
        }
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server not ready:\n{}", server.log());
}

/// Sends SIGTERM and waits (at most 20 s) for the server to exit.
async fn terminate(server: &mut Server) -> std::process::ExitStatus {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.pid()), nix::sys::signal::Signal::SIGTERM).unwrap();
    let start = Instant::now();
    loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no exit after SIGTERM:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn postmaster_pid(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("postgres/postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

pub(crate) fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

async fn wait_dead(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[test]
fn every_command_has_help() {
    for args in [vec!["--help"], vec!["serve", "--help"], vec!["migrate", "--help"], vec!["doctor", "--help"]] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn doctor_redacts_and_reports() {
    let dir = crate::harness::temp_dir("carmenta-doc-");
    let key = carmenta::crypto::generate_key();
    let out = carmenta(&dir.join("data"), free_port())
        .env("DATABASE_URL", "postgres://app:hunter2-secret@127.0.0.1:1/app")
        .env("CARMENTA_ENCRYPTION_KEY", &key)
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("hunter2-secret") && !text.contains(&key), "{text}");
    assert!(text.contains("database_url") && text.contains("[redacted]"), "{text}");
    // The database is unreachable: a failed check with a fix, non-zero exit.
    assert!(text.contains("FAIL") && text.contains("fix:"), "{text}");
    assert!(!out.status.success());

    // Embedded default on this machine: binaries and extensions are found.
    let out = carmenta(&dir.join("data"), free_port()).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for check in ["postgresql binaries", "extension ltree", "extension vector", "libvips", "data directory"] {
        let line = text.lines().find(|l| l.contains(check)).unwrap_or_else(|| panic!("{check} missing:\n{text}"));
        assert!(line.contains(" ok "), "{line}\n{text}");
    }
    assert!(out.status.success(), "{text}");

    // A bad value is a startup error naming it.
    let out =
        carmenta(&dir.join("data"), free_port()).env("CARMENTA_LOG_FORMAT", "xml").arg("doctor").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CARMENTA_LOG_FORMAT"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn serve_end_to_end() {
    let dir = crate::harness::temp_dir("carmenta-cli-");
    let data = dir.join("data");
    let port = free_port();

    // Cold start on an empty data directory, JSON logs.
    let mut first = Server::spawn({
        let mut c = carmenta(&data, port);
        c.env("CARMENTA_LOG_FORMAT", "json").arg("serve");
        c
    });
    wait_ready(port, &mut first).await;
    let pg1 = postmaster_pid(&data).expect("postmaster.pid");

    // Secrets in headers and query strings never reach the logs.
    let client = crate::harness::client();
    let r = client
        .get(format!("http://127.0.0.1:{port}/healthz?token=query-secret-123"))
        .header("authorization", "Bearer header-secret-456")
        .header("cookie", "carmenta_session=cookie-secret-789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("http://127.0.0.1:{port}/nope"))
        .header("authorization", "Bearer header-secret-456")
        .body("body-secret-000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = first.log();
    for secret in ["query-secret-123", "header-secret-456", "cookie-secret-789", "body-secret-000"] {
        assert!(!log.contains(secret), "{secret} leaked into logs:\n{log}");
    }
    let mut json_lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        json_lines += 1;
    }
    assert!(json_lines > 0);
    assert!(log.contains("\"route\":\"unmatched\""), "{log}");

    // A second server on the same data directory is refused.
    let out = carmenta(&data, free_port()).arg("serve").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another carmenta process"), "{err}");
    // ...but a CLI command works beside the running server.
    let out = carmenta(&data, free_port()).arg("migrate").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(alive(pg1), "migrate must not stop the server's cluster");

    // SIGKILL: the watchdog stops the orphaned cluster; the next start recovers.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.pid()), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = first.child.wait();
    assert!(wait_dead(pg1, Duration::from_secs(10)).await, "postmaster survived its server");
    let mut second = Server::spawn({
        let mut c = carmenta(&data, port);
        c.arg("serve");
        c
    });
    wait_ready(port, &mut second).await;
    let pg2 = postmaster_pid(&data).unwrap();
    assert_ne!(pg1, pg2);

    // SIGTERM: graceful stop, cluster stopped, exit 0.
    let status = terminate(&mut second).await;
    assert!(status.success(), "{status}\n{}", second.log());
    assert!(wait_dead(pg2, Duration::from_secs(5)).await, "postmaster still running after SIGTERM");
    assert!(second.log().contains("PostgreSQL stopped"), "{}", second.log());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn key_create_prints_only_the_key_and_it_works() {
    let app = crate::harness::TestApp::spawn().await;
    // The CLI shares the server's encryption key, as replicas do.
    let key = app.state.config.encryption_keys[0].expose().to_string();
    let data = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CARMENTA_CONFIG", "/dev/null")
            .env("DATABASE_URL", app.database_url())
            .env("CARMENTA_ENCRYPTION_KEY", &key)
            .env("CARMENTA_DATA_DIR", data.path())
            .output()
            .unwrap()
    };
    let out = run(&["key", "create", "--name", "backend", "--read-only"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout must hold the key alone: {stdout:?}");
    let secret = lines[0];
    assert!(secret.starts_with("ck_") && secret.len() > 40);
    // Shown once: the listing has no secret.
    let out = run(&["key", "list"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("backend") && listing.contains("read") && !listing.contains(secret), "{listing}");
    // The key authenticates against the running app, read-only.
    let u = crate::harness::sign_up(&app, "cli@example.com").await;
    let r = app.call(Method::GET, "/v1/me").acting_for(secret, u.id).send().await;
    assert_eq!(r.status(), 200);
    let r =
        app.call(Method::PATCH, "/v1/me").acting_for(secret, u.id).json(&serde_json::json!({"name": "x"})).send().await;
    assert_eq!(r.status(), 403, "read-only");
    let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'service_key.create'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(audit, 1);
    // Revoke by name; then it fails.
    assert!(run(&["key", "revoke", "backend"]).status.success());
    let r = app.call(Method::GET, "/v1/me").acting_for(secret, u.id).send().await;
    assert_eq!(r.status(), 401);
    // Rotation through the CLI publishes a new key.
    let out = run(&["key", "rotate"]);
    assert!(out.status.success());
    let kid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    app.state.auth.keys.refresh(&app.pool, &app.state.keyring).await.unwrap();
    let jwks: serde_json::Value = app.get("/.well-known/jwks.json").await.json().await.unwrap();
    assert!(jwks["keys"].as_array().unwrap().iter().any(|k| k["kid"] == kid.as_str()), "{jwks}");
    let t: serde_json::Value = app.call(Method::POST, "/v1/auth/token").by(&u.session).value().await;
    let header = jsonwebtoken::decode_header(t["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
}

/// The path most laptop users take: `carmenta serve` as an ordinary (non-root)
/// user, where the cluster runs as that same user. Exercised here by running the
/// real binary as `nobody` when the tests run as root.
#[tokio::test]
async fn serve_as_an_ordinary_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !nix::unistd::Uid::effective().is_root() {
        return; // Every other test already runs as an ordinary user then.
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else { return };
    // A world-readable copy of the binary and a home owned by that user.
    let home = tempfile::Builder::new().prefix("carmenta-user-").tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = home.path().join("carmenta");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = home.path().join("work");
    std::fs::create_dir(&work).unwrap();
    nix::unistd::chown(&work, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let port = free_port();
    let mut cmd = Command::new(&bin);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &work)
        .env("CARMENTA_CONFIG", "/dev/null")
        .env("CARMENTA_LISTEN", format!("127.0.0.1:{port}"))
        .current_dir(&work)
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw());
    let mut server = Server::spawn(cmd);
    wait_ready(port, &mut server).await;
    // The default data directory, created by and private to that user.
    let data = work.join("carmenta-data");
    let meta = std::fs::metadata(&data).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (nobody.uid.as_raw(), 0o700));
    let pg = postmaster_pid(&data).unwrap();
    assert_eq!(carmenta::db::embedded::uid_of_pid(pg), Some(nobody.uid.as_raw()), "the cluster runs as the same user");
    let status = terminate(&mut server).await;
    assert!(status.success(), "{}", server.log());
    assert!(wait_dead(pg, Duration::from_secs(5)).await);
}
