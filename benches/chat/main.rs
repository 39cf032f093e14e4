//! Chat benchmark: appending a message over HTTP at 32 concurrent clients (each in
//! its own conversation, as 32 users chatting) next to the same INSERT issued
//! directly through a pool of the server's size, in the same run; and the latest 50
//! messages of a 10,000-message conversation over HTTP, p50 and p99.
//!
//! Run: `cargo bench --bench chat` (see benches/README.md).

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, load_with, post_json, quantile, request, spawn_carmenta, stop, wait_ready};

const CLIENTS: usize = 32;
const LOAD_SECS: u64 = 5;
const READS: usize = 500;

fn main() {
    let bin = env!("CARGO_BIN_EXE_carmenta");
    let dir = tempfile::Builder::new().prefix("carmenta-bench-chat-").tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let mut server = spawn_carmenta(bin, &data, port, &[("CARMENTA_ACCESS_TOKEN_TTL", "3600")]);
    wait_ready(port, "/readyz", &mut server);
    let json = r#"{"email":"chat-bench@example.com","password":"correct horse battery staple"}"#;
    let (status, body) =
        request(port, "POST", "/v1/auth/sign-up", &[("Content-Type", "application/json")], json).expect("sign-up");
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let jwt = v["access_token"].as_str().expect("jwt").to_string();
    let user_id = v["user"]["id"].as_str().expect("id").to_string();
    let bearer = format!("Bearer {jwt}");
    let mut conversations = Vec::new();
    for _ in 0..=CLIENTS {
        let (s, b) = request(
            port,
            "POST",
            "/v1/conversations",
            &[("Content-Type", "application/json"), ("Authorization", &bearer)],
            "{}",
        )
        .expect("create");
        assert_eq!(s, 201, "{b}");
        let c: serde_json::Value = serde_json::from_str(&b).expect("json");
        conversations.push(c["id"].as_str().expect("id").to_string());
    }
    let big = conversations.pop().expect("one more");
    println!(
        "carmenta chat benchmark ({} cores, {CLIENTS} clients, {LOAD_SECS} s per run)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let parts = r#"[{"type":"text","text":"What is the capital of France? Please answer briefly."}]"#;

    // Over HTTP.
    let convs = Arc::new(conversations.clone());
    let b2 = bearer.clone();
    let http_rate = rt.block_on(load_with(addr, CLIENTS, LOAD_SECS, move |conn, n| {
        let body = format!(r#"{{"id":"h-{conn}-{n}","role":"user","parts":{parts}}}"#);
        post_json(&format!("/v1/conversations/{}/messages", convs[conn]), &[("Authorization", &b2)], &body)
    }));

    // Directly through a pool of the server's default size (10).
    let opts = carmenta::db::embedded::socket_connect_options(&data.join("run"), carmenta::db::EMBEDDED_DATABASE);
    let direct_rate = rt.block_on(async {
        let pool = carmenta::db::pool_options(10).connect_with(opts.clone()).await.expect("pool");
        let owner: uuid::Uuid = user_id.parse().expect("uuid");
        let parts_v: serde_json::Value = serde_json::from_str(parts).expect("parts");
        let deadline = Instant::now() + Duration::from_secs(LOAD_SECS);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (conn, conv) in conversations.iter().enumerate() {
            let (pool, parts_v) = (pool.clone(), parts_v.clone());
            let conv: uuid::Uuid = conv.parse().expect("uuid");
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    sqlx::query("INSERT INTO messages (owner_id, id, conversation_id, role, parts) VALUES ($1, $2, $3, 'user', $4)")
                        .bind(owner)
                        .bind(format!("d-{conn}-{n}"))
                        .bind(conv)
                        .bind(&parts_v)
                        .execute(&pool)
                        .await
                        .expect("insert");
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap_or(0);
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        // A 10,000-message conversation for the read test.
        let big: uuid::Uuid = big.parse().expect("uuid");
        sqlx::query(
            "INSERT INTO messages (owner_id, id, conversation_id, role, parts)
             SELECT $1, 'big-' || g, $2, CASE WHEN g % 2 = 0 THEN 'user' ELSE 'assistant' END,
                    jsonb_build_array(jsonb_build_object('type', 'text', 'text', 'message number ' || g || ' with some ordinary words in it'))
             FROM generate_series(1, 10000) g",
        )
        .bind(owner)
        .bind(big)
        .execute(&pool)
        .await
        .expect("seed");
        pool.close().await;
        rate
    });

    let path = format!("/v1/conversations/{big}/messages?limit=50");
    let mut lat = Vec::with_capacity(READS);
    for _ in 0..READS {
        let t = Instant::now();
        let (s, b) = request(port, "GET", &path, &[("Authorization", &bearer)], "").expect("read");
        lat.push(t.elapsed());
        assert_eq!(s, 200);
        assert!(b.contains("big-10000"));
    }
    lat.sort();
    stop(&mut server);

    println!();
    println!("{:<44} {:>12} {:>10}", "append, 32 clients", "msgs/s", "target");
    println!("{:<44} {:>12.0} {:>10}", "direct INSERT through a pool (anchor)", direct_rate, "");
    println!("{:<44} {:>12.0} {:>10}", "POST /v1/conversations/{id}/messages", http_rate, "");
    println!("{:<44} {:>11.1}% {:>10}", "HTTP vs direct", 100.0 * http_rate / direct_rate, ">= 70 %");
    println!();
    println!(
        "latest 50 of 10,000 messages over HTTP ({READS} sequential reads): p50 {:.2} ms  p99 {:.2} ms  (target p50 <= 2 ms)",
        quantile(&lat, 0.5).as_secs_f64() * 1000.0,
        quantile(&lat, 0.99).as_secs_f64() * 1000.0
    );
}
