//! Memory benchmark, three parts, every figure next to its anchor from the same run:
//!
//! 1. **Quality** on LoCoMo's development half (`../shared/data/locomo/locomo-dev.json`,
//!    read at run time): each conversation's `observation` facts become memories of
//!    one user (`POST /v1/memories`, dated by their session, their source turn ids
//!    kept); questions of categories 1–4 are queries through `POST /v1/memories/search`
//!    of the real server; recall@10 and nDCG@10 of the facts whose source turn is in
//!    the question's evidence, for full text, vector and hybrid, next to tantivy BM25
//!    over the same facts. A grid of fusion weights (full text, vector, recency),
//!    fused offline with the server's own `rank::fuse`, shows how the default was
//!    chosen.
//! 2. **Extraction overhead**: conversations of LoCoMo turns extracted through a local
//!    chat-completions server that answers at once; the job's own time per message
//!    (total minus the model call, from the extraction rows), next to the model
//!    call's time and a message append's latency in the same run.
//! 3. **Context assembly at scale**: one user with `MEM_SCALE_MEMORIES` memories
//!    (default 100,000) and `MEM_SCALE_CHUNKS` knowledge chunks (default 100,000),
//!    and a 30-message conversation; p50/p95/p99 of `POST /v1/context` (budget 4,000
//!    tokens) over HTTP, next to the sum of its component queries run directly
//!    in-process.
//!
//! Run: `cargo bench --bench memory` (see benches/README.md). Skip parts with
//! `MEM_SKIP_QUALITY`, `MEM_SKIP_EXTRACTION`, `MEM_SKIP_SCALE`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/retrieval.rs"]
mod retrieval;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Api, free_port, quantile, spawn_carmenta, stop, wait_ready};
use retrieval::{Zipf, base26, evidence, score, tantivy_rankings};
use serde_json::{Value, json};

fn main() {
    let bin = env!("CARGO_BIN_EXE_carmenta");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("carmenta memory benchmark ({cores} cores)");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let calls = Arc::new(AtomicUsize::new(0));
    let model_url = rt.block_on(instant_model(calls.clone()));
    let dir = tempfile::Builder::new().prefix("carmenta-bench-mem-").tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let mut server = spawn_carmenta(
        bin,
        &data,
        port,
        &[
            ("CARMENTA_ACCESS_TOKEN_TTL", "3600"),
            ("CARMENTA_SIGNIN_IP_LIMIT", "100000"),
            ("CARMENTA_LLM_URL", &model_url),
            ("CARMENTA_LLM_MODEL", "instant"),
            // Extraction only when asked (the quality and scale parts write messages too).
            ("CARMENTA_MEMORY_EXTRACT_AFTER", "10000"),
            ("CARMENTA_MEMORY_IDLE", "86400"),
        ],
    );
    wait_ready(port, "/readyz", &mut server);
    if std::env::var("MEM_SKIP_QUALITY").is_err() {
        quality(port);
    }
    if std::env::var("MEM_SKIP_EXTRACTION").is_err() {
        extraction(port, &calls);
    }
    if std::env::var("MEM_SKIP_SCALE").is_err() {
        scale(port, &data, &rt);
    }
    if std::env::var("MEM_KEEP").is_ok() {
        // For looking at plans afterwards: the server and its cluster stay up.
        println!("kept: server on port {port}, data in {}", dir.keep().display());
        return;
    }
    stop(&mut server);
}

/// A chat-completions server that answers at once with two new facts per call.
async fn instant_model(calls: Arc<AtomicUsize>) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |axum::Json(_body): axum::Json<Value>| {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let op = |i: usize| {
                    json!({"op": "ADD", "id": null, "kind": "fact", "slot": null,
                           "text": format!("The user mentioned topic {} number {i}.", base26(n * 7 + i)),
                           "quote": null, "message_ids": ["m1"], "confidence": 0.8})
                };
                let content = json!({"operations": [op(0), op(1)]}).to_string();
                axum::Json(json!({"id": "c", "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

/// "1:56 pm on 8 May, 2023" as RFC 3339 (UTC).
fn locomo_time(s: &str) -> Option<String> {
    let (clock, date) = s.split_once(" on ")?;
    let (hm, ampm) = clock.trim().split_once(' ')?;
    let (h, m) = hm.split_once(':')?;
    let mut h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    if ampm.eq_ignore_ascii_case("pm") && h != 12 {
        h += 12;
    }
    if ampm.eq_ignore_ascii_case("am") && h == 12 {
        h = 0;
    }
    let parts: Vec<&str> = date.split([' ', ',']).filter(|p| !p.is_empty()).collect();
    let day: u32 = parts.first()?.parse().ok()?;
    let months = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = parts.get(1)?;
    let month = months.iter().position(|x| x.eq_ignore_ascii_case(name))? + 1;
    let year: u32 = parts.get(2)?.parse().ok()?;
    Some(format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:00Z"))
}

/// A search hit: (memory id, signal score, valid_from).
type Hit = (String, f64, String);

fn search(api: &Api, query: &str, mode: &str, limit: usize) -> Vec<Hit> {
    let r = api.post("/v1/memories/search", &json!({"query": query, "mode": mode, "limit": limit}));
    r["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|h| {
            let s = if mode == "vector" {
                h["scores"]["vector_distance"].as_f64()
            } else {
                h["scores"]["fulltext"].as_f64()
            };
            (
                h["id"].as_str().unwrap_or_default().to_string(),
                s.unwrap_or(0.0),
                h["valid_from"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn quality(port: u16) {
    let raw = retrieval::locomo_raw();
    let convs = raw.as_array().expect("array");
    let grid: Vec<[f64; 3]> = vec![
        [1.0, 0.0, 0.0],
        [1.0, 0.1, 0.0],
        [1.0, 0.25, 0.0],
        [1.0, 0.5, 0.0],
        [1.0, 0.75, 0.0],
        [1.0, 1.0, 0.0],
        [1.0, 0.5, 0.1],
        [1.0, 0.5, 0.25],
        [1.0, 0.25, 0.1],
        [1.0, 0.25, 0.05],
        [1.0, 0.1, 0.05],
        [0.5, 1.0, 0.0],
        [0.0, 1.0, 0.0],
    ];
    let mut sums: HashMap<String, (f64, f64)> = HashMap::new();
    let mut add = |name: &str, s: (f64, f64)| {
        let e = sums.entry(name.to_string()).or_default();
        e.0 += s.0;
        e.1 += s.1;
    };
    let (mut facts_total, mut refused, mut questions) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    for (ci, c) in convs.iter().enumerate() {
        let (api, _) = Api::sign_up(port, &format!("memq{ci}-{}@example.com", std::process::id()));
        let mut sources: HashMap<String, HashSet<String>> = HashMap::new();
        let mut docs: Vec<(String, String)> = Vec::new();
        let obs = c["observation"].as_object().expect("observation");
        let mut keys: Vec<(usize, &String)> = obs
            .keys()
            .filter_map(|k| Some((k.strip_prefix("session_")?.strip_suffix("_observation")?.parse().ok()?, k)))
            .collect();
        keys.sort();
        for (n, k) in keys {
            let when = c["conversation"][format!("session_{n}_date_time")].as_str().and_then(locomo_time);
            for facts in obs[k].as_object().into_iter().flat_map(|o| o.values()) {
                for f in facts.as_array().into_iter().flatten() {
                    let text = f[0].as_str().unwrap_or_default();
                    facts_total += 1;
                    let mut body = json!({"text": text, "kind": "fact"});
                    if let Some(w) = &when {
                        body["valid_from"] = json!(w);
                    }
                    let (s, b) = api.call("POST", "/v1/memories", Some(&body));
                    if s != 201 {
                        refused += 1;
                        continue;
                    }
                    let id = b["id"].as_str().expect("id").to_string();
                    sources.insert(id.clone(), evidence(&f[1]));
                    docs.push((id, text.to_string()));
                }
            }
        }
        let qs: Vec<(String, HashSet<String>)> = c["qa"]
            .as_array()
            .expect("qa")
            .iter()
            .filter(|q| matches!(q["category"].as_i64(), Some(1..=4)))
            .filter_map(|q| {
                let ev = evidence(&q["evidence"]);
                let relevant: HashSet<String> =
                    sources.iter().filter(|(_, s)| !s.is_disjoint(&ev)).map(|(id, _)| id.clone()).collect();
                let text = q["question"].as_str()?.to_string();
                (!relevant.is_empty() && !text.is_empty()).then_some((text, relevant))
            })
            .collect();
        questions += qs.len();
        let anchors = tantivy_rankings(&docs, &qs.iter().map(|q| q.0.clone()).collect::<Vec<_>>());
        for ((q, relevant), anchor) in qs.iter().zip(anchors) {
            add("tantivy BM25", score(&anchor, relevant));
            let ft = search(&api, q, "fulltext", 50);
            let vec = search(&api, q, "vector", 50);
            let hy = search(&api, q, "hybrid", 10);
            let ids = |h: &[Hit]| h.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
            add("full-text (BM25 in PostgreSQL)", score(&ids(&ft), relevant));
            add("vector (potion-base-8M)", score(&ids(&vec), relevant));
            add("hybrid (default weights)", score(&ids(&hy), relevant));
            // The grid, fused offline with the server's own function.
            let mut index: HashMap<String, i64> = HashMap::new();
            let mut times: Vec<(String, String)> = Vec::new();
            for h in ft.iter().chain(vec.iter()) {
                if !index.contains_key(&h.0) {
                    index.insert(h.0.clone(), index.len() as i64);
                    times.push((h.2.clone(), h.0.clone()));
                }
            }
            times.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let recency: Vec<i64> = times.iter().map(|t| index[&t.1]).collect();
            let rev: HashMap<i64, String> = index.iter().map(|(k, v)| (*v, k.clone())).collect();
            let f: Vec<(i64, f64)> = ft.iter().map(|x| (index[&x.0], x.1)).collect();
            let v: Vec<(i64, f64)> = vec.iter().map(|x| (index[&x.0], x.1)).collect();
            for w in &grid {
                let lists = carmenta::rank::Lists { fulltext: &f, vector: &v, recency: &recency };
                let fused = carmenta::rank::fuse(lists, *w, carmenta::rank::RRF_K);
                let ranked: Vec<String> = fused.iter().take(10).map(|x| rev[&x.0].clone()).collect();
                add(&format!("grid ft {:.2} : vec {:.2} : recency {:.2}", w[0], w[1], w[2]), score(&ranked, relevant));
            }
        }
    }
    println!(
        "\n## Quality: LoCoMo dev observations ({} conversations, {facts_total} facts, {refused} refused as duplicates or secrets, {questions} questions of categories 1-4 with a sourced fact)",
        convs.len()
    );
    println!("(loading and {} searches took {:.0} s)", questions * 3, start.elapsed().as_secs_f64());
    let n = questions as f64;
    let anchor = sums["tantivy BM25"].0 / n;
    println!("{:<44} {:>8} {:>10} {:>12}", "", "nDCG@10", "recall@10", "vs tantivy");
    let mut names: Vec<&String> = sums.keys().collect();
    names.sort_by_key(|k| (k.starts_with("grid"), (*k).clone()));
    for name in names {
        let (nd, rc) = sums[name];
        println!("{name:<44} {:>8.3} {:>10.3} {:>11.2}x", nd / n, rc / n, (nd / n) / anchor);
    }
    println!(
        "default weights {:?} (k {}); target: hybrid >= 1.0x tantivy's nDCG@10",
        carmenta::memory::service::DEFAULT_WEIGHTS,
        carmenta::rank::RRF_K
    );
}

fn extraction(port: u16, calls: &AtomicUsize) {
    let raw = retrieval::locomo_raw();
    let turns: Vec<String> = raw[0]["conversation"]["session_1"]
        .as_array()
        .into_iter()
        .chain(raw[0]["conversation"]["session_2"].as_array())
        .flatten()
        .filter_map(|t| t["text"].as_str().map(String::from))
        .collect();
    let conversations = 40;
    let per = 10;
    println!(
        "\n## Extraction overhead: {conversations} conversations of {per} LoCoMo turns, a model that answers at once"
    );
    let (api, _) = Api::sign_up(port, &format!("memx-{}@example.com", std::process::id()));
    let before = calls.load(Ordering::SeqCst);
    let mut append = Vec::new();
    let mut convs = Vec::new();
    for c in 0..conversations {
        let conv =
            api.post("/v1/conversations", &json!({"title": format!("c{c}")}))["id"].as_str().expect("id").to_string();
        for i in 0..per {
            let text = &turns[(c * per + i) % turns.len()];
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            let t = Instant::now();
            api.post(
                &format!("/v1/conversations/{conv}/messages"),
                &json!({"id": format!("c{c}m{i}"), "role": role, "parts": [{"type": "text", "text": text}]}),
            );
            append.push(t.elapsed());
        }
        convs.push(conv);
    }
    let start = Instant::now();
    for conv in &convs {
        let (s, b) = api.call("POST", "/v1/memory/extract", Some(&json!({"conversation_id": conv})));
        assert_eq!(s, 202, "{b}");
    }
    let rows = loop {
        let (_, b) = api.call("GET", "/v1/memory/extractions?limit=100", None);
        let rows: Vec<Value> = b["data"].as_array().cloned().unwrap_or_default();
        if rows.iter().filter(|r| r["status"] == "done" || r["status"] == "failed").count() >= conversations {
            break rows;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "extractions did not finish: {b}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let failed = rows.iter().filter(|r| r["status"] == "failed").count();
    let mut own: Vec<Duration> = Vec::new();
    let mut model: Vec<Duration> = Vec::new();
    let mut messages = 0i64;
    for r in rows.iter().filter(|r| r["status"] == "done") {
        let total = r["total_ms"].as_i64().unwrap_or(0);
        let m = r["model_ms"].as_i64().unwrap_or(0);
        let n = r["messages"].as_i64().unwrap_or(1).max(1);
        messages += n;
        own.push(Duration::from_micros(((total - m) * 1000 / n) as u64));
        model.push(Duration::from_millis(m as u64));
    }
    own.sort();
    model.sort();
    append.sort();
    let added: i64 = rows.iter().map(|r| r["added"].as_i64().unwrap_or(0)).sum();
    println!(
        "{} runs ({failed} failed), {messages} messages, {added} memories added, {} model calls, wall {:.1} s",
        rows.len(),
        calls.load(Ordering::SeqCst) - before,
        start.elapsed().as_secs_f64()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{:<46} {:>8} {:>8}", "", "p50 ms", "p95 ms");
    println!(
        "{:<46} {:>8.2} {:>8.2}",
        "job's own time per message (without the model)",
        ms(quantile(&own, 0.5)),
        ms(quantile(&own, 0.95))
    );
    println!(
        "{:<46} {:>8.2} {:>8.2}",
        "model call per run (local, answers at once)",
        ms(quantile(&model, 0.5)),
        ms(quantile(&model, 0.95))
    );
    println!(
        "{:<46} {:>8.2} {:>8.2}",
        "anchor: appending one message over HTTP",
        ms(quantile(&append, 0.5)),
        ms(quantile(&append, 0.95))
    );
}

fn scale(port: u16, data: &Path, rt: &tokio::runtime::Runtime) {
    let n_mem: usize = std::env::var("MEM_SCALE_MEMORIES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let n_chunks: usize = std::env::var("MEM_SCALE_CHUNKS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    println!(
        "\n## Context assembly: one user with {n_mem} memories and {n_chunks} knowledge chunks (Zipf vocabulary of 50,000 words)"
    );
    let (api, uid) = Api::sign_up(port, &format!("memscale-{}@example.com", std::process::id()));
    let user: uuid::Uuid = uid.parse().expect("uuid");
    let conv = api.post("/v1/conversations", &json!({"title": "scale"}))["id"].as_str().expect("id").to_string();
    let mut zipf = Zipf::new(50_000, 0x2545f4914f6cdd1d);
    for i in 0..30 {
        let text: String = (0..25).map(|_| zipf.word().to_string()).collect::<Vec<_>>().join(" ");
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        api.post(
            &format!("/v1/conversations/{conv}/messages"),
            &json!({"id": format!("s{i}"), "role": role, "parts": [{"type": "text", "text": text}]}),
        );
    }
    rt.block_on(async {
        let (pool, config, k) = retrieval::knowledge_in_process(data).await;
        // Memory shares the knowledge base's embedder, as in the server.
        let m = carmenta::memory::Memory::open(&config, pool.clone(), k.clone());
        let m = Arc::new(m);
        let build = Instant::now();
        // Memories: 12-word Zipf sentences, a few profile slots and instructions.
        let writer = {
            let m = m.clone();
            tokio::spawn(async move {
                let mut z = Zipf::new(50_000, 0x9e3779b97f4a7c15);
                for i in 0..n_mem {
                    let words: Vec<String> = (0..12).map(|_| z.word().to_string()).collect();
                    let (kind, slot) = match i {
                        0..=4 => ("profile", Some(format!("slot{i}"))),
                        5..=7 => ("instruction", None),
                        _ => ("fact", None),
                    };
                    let req: carmenta::memory::types::CreateMemory = serde_json::from_value(json!({
                        "text": format!("The user {} ({i})", words.join(" ")), "kind": kind, "slot": slot
                    }))
                    .expect("req");
                    carmenta::memory::service::add(&m, user, carmenta::memory::service::Actor::App, req).await.expect("add");
                }
            })
        };
        // Chunks: documents of 100 paragraphs of 60 Zipf words (about one chunk each).
        let docs = (n_chunks / 100).max(1);
        let mut z = Zipf::new(50_000, 0x51afd7ed558ccd);
        for d in 0..docs {
            let body: String =
                (0..100).map(|_| (0..60).map(|_| z.word().to_string()).collect::<Vec<_>>().join(" ")).collect::<Vec<_>>().join("\n\n");
            let req: carmenta::knowledge::types::CreateDocument =
                serde_json::from_value(json!({"title": format!("doc {d}"), "body": body})).expect("req");
            carmenta::knowledge::service::create_document(&k, user, req).await.expect("create");
        }
        writer.await.expect("writer");
        let (mems, chunks): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM memories WHERE user_id = $1), (SELECT count(*) FROM kb_chunks WHERE user_id = $1)",
        )
        .bind(user)
        .fetch_one(&pool)
        .await
        .expect("counts");
        println!("built {mems} memories and {chunks} chunks in {:.0} s", build.elapsed().as_secs_f64());
        // What autovacuum does after a bulk load: without statistics the planner
        // reads a user's rows by owner instead of the full-text index.
        sqlx::query("ANALYZE memories, memory_terms, kb_chunks, kb_documents, kb_terms, messages")
            .execute(&pool)
            .await
            .expect("analyze");
        let rare: Vec<String> = (0..40).map(|i| format!("w{} w{} w{}", base26(5_000 + i * 13), base26(20_000 + i * 7), base26(30_000 + i))).collect();
        let common: Vec<String> = (0..40).map(|i| format!("w{} w{} w{}", base26(i % 10), base26(10 + i % 10), base26(300 + i))).collect();
        println!("{:<34} {:>24} {:>26}", "", "HTTP p50/p95/p99 ms", "components in-process");
        for (label, queries) in [("rare terms", &rare), ("common terms", &common)] {
            let mut http = Vec::new();
            let mut parts = Vec::new();
            let mut tokens = Vec::new();
            let mut split: Vec<[Duration; 4]> = Vec::new();
            for q in queries.iter() {
                let body = json!({"conversation_id": conv, "query": q, "budget_tokens": 4000});
                let t = Instant::now();
                let (s, b) = api.call("POST", "/v1/context", Some(&body));
                http.push(t.elapsed());
                assert_eq!(s, 200, "{b}");
                tokens.push(b["tokens"].as_u64().unwrap_or(0));
                // The same work as separate calls: profile, memory search, knowledge
                // search, recent messages.
                let t = Instant::now();
                carmenta::memory::db::always_on(&pool, user, 100).await.expect("profile");
                let t1 = Instant::now();
                carmenta::memory::service::rank(
                    &m,
                    user,
                    q,
                    &carmenta::memory::db::SearchFilter::default(),
                    carmenta::memory::service::Mode::Hybrid,
                    carmenta::memory::service::DEFAULT_WEIGHTS,
                    30,
                )
                .await
                .expect("rank");
                let t2 = Instant::now();
                carmenta::knowledge::service::retrieve(&k, user, q, None, 12).await.expect("retrieve");
                let t3 = Instant::now();
                carmenta::memory::db::recent_messages(&pool, user, conv.parse().expect("uuid"), None, 100).await.expect("recent");
                parts.push(t.elapsed());
                split.push([t1 - t, t2 - t1, t3 - t2, t3.elapsed()]);
            }
            http.sort();
            parts.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{:<34} {:>8.1}/{:>6.1}/{:>6.1} {:>10.1}/{:>6.1}/{:>6.1}",
                format!("{label} (mean {} tokens)", tokens.iter().sum::<u64>() / tokens.len().max(1) as u64),
                ms(quantile(&http, 0.5)),
                ms(quantile(&http, 0.95)),
                ms(quantile(&http, 0.99)),
                ms(quantile(&parts, 0.5)),
                ms(quantile(&parts, 0.95)),
                ms(quantile(&parts, 0.99)),
            );
            let median = |i: usize| {
                let mut v: Vec<Duration> = split.iter().map(|s| s[i]).collect();
                v.sort();
                ms(quantile(&v, 0.5))
            };
            println!(
                "    component medians: profile {:.1} ms, memory search {:.1} ms, knowledge search {:.1} ms, recent messages {:.1} ms",
                median(0),
                median(1),
                median(2),
                median(3)
            );
        }
        println!("targets: p50 <= 20 ms, p95 <= 50 ms (Zep publishes 87 / 155 ms retrieval)");
    });
}
