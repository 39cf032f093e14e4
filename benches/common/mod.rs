//! Helpers shared by the benchmark programs: spawning the real `carmenta` binary,
//! readiness, RSS, raw HTTP/1.1 requests, and a loopback load generator.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Starts `carmenta serve` on `data` and `port` with extra environment.
pub fn spawn_carmenta(bin: &str, data: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(bin);
    c.arg("serve")
        .env("CARMENTA_DATA_DIR", data)
        .env("CARMENTA_LISTEN", format!("127.0.0.1:{port}"))
        .env("CARMENTA_CONFIG", "/dev/null")
        .env("CARMENTA_LOG", "warn")
        .env_remove("DATABASE_URL");
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("spawn carmenta")
}

/// Sends SIGTERM and waits.
pub fn stop(child: &mut Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

/// One blocking HTTP/1.1 request; returns (status, body).
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Waits until `path` answers 200.
pub fn wait_ready(port: u16, path: &str, child: &mut Child) {
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("server exited before ready: {st}");
        }
        if request(port, "GET", path, &[], "").map(|r| r.0) == Some(200) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "not ready after 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Resident set size of a process, in KiB.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Keeps `connections` keep-alive connections sending `request` for `secs` and
/// returns completed 2xx requests per second (a non-2xx answer aborts the run).
pub async fn load(addr: SocketAddr, request: Vec<u8>, connections: usize, secs: u64) -> f64 {
    let request = std::sync::Arc::new(request);
    load_with(addr, connections, secs, move |_, _| request.as_ref().clone()).await
}

/// Like [`load`], with a request made per (connection, sequence number), so each
/// request can differ (e.g. a fresh message id).
pub async fn load_with<F>(addr: SocketAddr, connections: usize, secs: u64, make: F) -> f64
where
    F: Fn(usize, u64) -> Vec<u8> + Send + Sync + 'static,
{
    let make = std::sync::Arc::new(make);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for conn in 0..connections {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return 0 };
            let _ = s.set_nodelay(true);
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            while Instant::now() < deadline {
                if s.write_all(&make(conn, done)).await.is_err() {
                    break;
                }
                loop {
                    if let Some(len) = response_len(&buf) {
                        assert!(
                            buf.starts_with(b"HTTP/1.1 2"),
                            "non-2xx answer: {}",
                            String::from_utf8_lossy(&buf[..len.min(300)])
                        );
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

/// A POST request with a JSON body and extra headers, as bytes.
pub fn post_json(path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

/// A GET request with extra headers, as bytes.
pub fn get_request(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// The length of the first complete response in `buf`, if it is complete.
pub fn response_len(buf: &[u8]) -> Option<usize> {
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

/// The value at quantile `q` (0..1) of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Starts nginx (2 workers, `sendfile on`) serving `root` on a free port, with its
/// files in `work`; returns it once it accepts connections.
pub fn nginx(root: &Path, work: &Path) -> (Child, u16) {
    nginx_with(work, "", &format!("root {};", root.display()))
}

/// Starts nginx with `http_extra` in its `http` block and `server_body` in its one
/// `server` block (on a free port), its files in `work`.
pub fn nginx_with(work: &Path, http_extra: &str, server_body: &str) -> (Child, u16) {
    let port = free_port();
    let conf = work.join("nginx.conf");
    let user = if nix::unistd::Uid::effective().is_root() { "user root;" } else { "" };
    std::fs::write(
        &conf,
        format!(
            "{user}\nworker_processes 2;\ndaemon off;\npid {pid};\nerror_log {err} warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;\n\
               client_body_temp_path {w}/tmp; proxy_temp_path {w}/tmp; fastcgi_temp_path {w}/tmp;\n\
               uwsgi_temp_path {w}/tmp; scgi_temp_path {w}/tmp;\n\
               {http_extra}\n\
               server {{ listen 127.0.0.1:{port}; {server_body} }} }}\n",
            pid = work.join("nginx.pid").display(),
            err = work.join("error.log").display(),
            w = work.display(),
        ),
    )
    .expect("nginx.conf");
    std::fs::create_dir_all(work.join("tmp")).expect("tmp");
    let child = Command::new("nginx")
        .args(["-c", &conf.display().to_string(), "-p", &work.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx (scripts/bootstrap installs nginx-light)");
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// Stops nginx gracefully.
pub fn stop_nginx(child: &mut Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGQUIT);
    let _ = child.wait();
}

/// A service key made by the CLI beside the running server on `data`.
pub fn service_key(bin: &str, data: &Path) -> String {
    let out = Command::new(bin)
        .args(["key", "create", "--name", "bench"])
        .env("CARMENTA_DATA_DIR", data)
        .env("CARMENTA_CONFIG", "/dev/null")
        .env_remove("DATABASE_URL")
        .output()
        .expect("key create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf8").trim().to_string()
}

/// Peak resident set size of a process, in KiB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A server process, stopped however `main` ends (a failed assertion included).
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// A signed-up user talking JSON to a running server.
pub struct Api {
    /// The server's port.
    pub port: u16,
    /// `Bearer <session token>`.
    pub bearer: String,
}

impl Api {
    /// Signs up `email`; returns the client and the user id.
    pub fn sign_up(port: u16, email: &str) -> (Api, String) {
        let body = serde_json::json!({"email": email, "password": "correct horse battery staple"}).to_string();
        let (s, b) =
            request(port, "POST", "/v1/auth/sign-up", &[("Content-Type", "application/json")], &body).expect("sign-up");
        assert_eq!(s, 201, "{b}");
        let v: serde_json::Value = serde_json::from_str(&b).expect("json");
        // The session token (valid for days): a 1M-chunk build outlives any access token.
        let token = v["session_token"].as_str().expect("session token");
        (Api { port, bearer: format!("Bearer {token}") }, v["user"]["id"].as_str().expect("id").to_string())
    }

    /// POSTs JSON; panics unless 200 or 201.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let (s, b) = request(
            self.port,
            "POST",
            path,
            &[("Content-Type", "application/json"), ("Authorization", &self.bearer)],
            &body.to_string(),
        )
        .expect("request");
        assert!(s == 200 || s == 201, "{path}: {s} {b}");
        serde_json::from_str(&b).expect("json")
    }

    /// Sends a request with an optional JSON body; returns (status, JSON or null).
    pub fn call(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, serde_json::Value) {
        let text = body.map(|b| b.to_string()).unwrap_or_default();
        let (s, b) = request(
            self.port,
            method,
            path,
            &[("Content-Type", "application/json"), ("Authorization", &self.bearer)],
            &text,
        )
        .expect("request");
        (s, serde_json::from_str(&b).unwrap_or(serde_json::Value::Null))
    }
}
