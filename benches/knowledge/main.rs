//! Knowledge benchmark, four parts, every figure next to its anchor from the same run:
//!
//! 1. **Quality** on LoCoMo's development half (`../shared/data/locomo/locomo-dev.json`,
//!    read at run time): each conversation's turns become documents of one user
//!    (title: the speaker; body: the turn), its questions of categories 1–4 are
//!    queries through `POST /v1/knowledge/search` of the real server; nDCG@10 and
//!    recall@10 of full-text (BM25 in PostgreSQL), vector (built-in potion-base-8M)
//!    and hybrid, next to BM25 by tantivy over the same turns and queries (English
//!    stop words and stemming, as PostgreSQL's `english` configuration). A grid of
//!    fusion weights, fused offline with the server's own `fuse`, shows how the
//!    default was chosen.
//! 2. **Chunk size** (`chunking.rs`): evidence recall within a fixed token budget at
//!    several chunk sizes, on LoCoMo sessions as documents.
//! 3. **Scale**: `KB_SCALE_CHUNKS` chunks (default 100,000; the 1M figure is in
//!    benches/README.md) of generated Zipf text over 100 users; p50/p95/p99 of hybrid
//!    search for rare- and common-term queries, with and without a subtree filter,
//!    over HTTP next to the same service call in-process; index build time and size.
//! 4. **Ingestion**: PDF pages/s through the sandboxed extractor next to `pdftotext`
//!    on the same files (word agreement reported); Markdown and HTML MB/s (extract +
//!    chunk); built-in embedder texts/s.
//!
//! Run: `cargo bench --bench knowledge` (see benches/README.md).

mod chunking;
#[path = "../common/mod.rs"]
mod common;
#[path = "../common/retrieval.rs"]
mod retrieval;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Api, free_port, quantile, spawn_carmenta, stop, wait_ready};
use retrieval::{Zipf, base26, evidence, score, tantivy_rankings};
use serde_json::{Value, json};

fn main() {
    let bin = env!("CARGO_BIN_EXE_carmenta");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("carmenta knowledge benchmark ({cores} cores)");
    let dir = tempfile::Builder::new().prefix("carmenta-bench-kb-").tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let mut server = spawn_carmenta(
        bin,
        &data,
        port,
        &[("CARMENTA_ACCESS_TOKEN_TTL", "3600"), ("CARMENTA_SIGNIN_IP_LIMIT", "100000")],
    );
    wait_ready(port, "/readyz", &mut server);

    if std::env::var("KB_SKIP_QUALITY").is_err() {
        quality(port);
    }
    if std::env::var("KB_SKIP_CHUNKING").is_err() {
        let users: Vec<(String, String)> = (0..4 * locomo().len())
            .map(|i| {
                let (_, id) = Api::sign_up(port, &format!("chunking{i}-{}@example.com", std::process::id()));
                (String::new(), id)
            })
            .collect();
        chunking::run(&data, &users);
    }
    if std::env::var("KB_SKIP_SCALE").is_err() {
        scale(port, &data);
    }
    if std::env::var("KB_SKIP_INGEST").is_err() {
        ingestion(bin);
    }
    stop(&mut server);
}

struct Query {
    text: String,
    relevant: HashSet<String>,
}

/// A turn: (dia_id, speaker, text).
type Turn = (String, String, String);

struct Conversation {
    turns: Vec<Turn>,
    queries: Vec<Query>,
}

fn locomo() -> Vec<Conversation> {
    let v = retrieval::locomo_raw();
    v.as_array()
        .expect("array")
        .iter()
        .map(|c| {
            let conv = c["conversation"].as_object().expect("conversation");
            let mut sessions: Vec<(usize, &Value)> = conv
                .iter()
                .filter_map(|(k, v)| {
                    let n = k.strip_prefix("session_")?.parse::<usize>().ok()?;
                    Some((n, v))
                })
                .collect();
            sessions.sort_by_key(|s| s.0);
            let turns = sessions
                .iter()
                .flat_map(|(_, s)| s.as_array().into_iter().flatten())
                .map(|t| {
                    (
                        t["dia_id"].as_str().unwrap_or("").to_string(),
                        t["speaker"].as_str().unwrap_or("").to_string(),
                        t["text"].as_str().unwrap_or("").to_string(),
                    )
                })
                .filter(|t| !t.2.trim().is_empty())
                .collect();
            let queries = c["qa"]
                .as_array()
                .expect("qa")
                .iter()
                .filter(|q| matches!(q["category"].as_i64(), Some(1..=4)))
                .map(|q| Query {
                    text: q["question"].as_str().unwrap_or("").to_string(),
                    relevant: evidence(&q["evidence"]),
                })
                .filter(|q| !q.text.is_empty() && !q.relevant.is_empty())
                .collect();
            Conversation { turns, queries }
        })
        .collect()
}

fn ranking(api: &Api, query: &str, mode: &str, limit: usize, by_chunk: &HashMap<String, String>) -> Vec<(String, f64)> {
    let r = api.post("/v1/knowledge/search", &json!({"query": query, "mode": mode, "limit": limit}));
    r["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|h| {
            let dia = by_chunk.get(h["document_id"].as_str()?)?.clone();
            let s = if mode == "vector" {
                h["scores"]["vector_distance"].as_f64()
            } else {
                h["scores"]["fulltext"].as_f64()
            };
            Some((dia, s.unwrap_or(0.0)))
        })
        .collect()
}

fn quality(port: u16) {
    let convs = locomo();
    let total_q: usize = convs.iter().map(|c| c.queries.len()).sum();
    let total_t: usize = convs.iter().map(|c| c.turns.len()).sum();
    println!(
        "\n## Quality: LoCoMo dev ({} conversations, {total_t} turns, {total_q} questions of categories 1-4)",
        convs.len()
    );
    let weights_grid: Vec<[f64; 2]> = vec![
        [1.0, 0.0],
        [1.0, 0.05],
        [1.0, 0.1],
        [1.0, 0.15],
        [1.0, 0.2],
        [1.0, 0.25],
        [1.0, 0.35],
        [1.0, 0.5],
        [1.0, 0.75],
        [1.0, 1.0],
        [0.5, 1.0],
        [0.0, 1.0],
    ];
    let mut sums: HashMap<String, (f64, f64)> = HashMap::new();
    let mut add = |name: &str, s: (f64, f64)| {
        let e = sums.entry(name.to_string()).or_default();
        e.0 += s.0;
        e.1 += s.1;
    };
    let start = Instant::now();
    for (ci, conv) in convs.iter().enumerate() {
        let (api, _) = Api::sign_up(port, &format!("locomo{ci}-{}@example.com", std::process::id()));
        let mut by_doc: HashMap<String, String> = HashMap::new();
        for (dia, speaker, text) in &conv.turns {
            let d = api.post("/v1/knowledge/documents", &json!({"title": speaker, "body": text}));
            by_doc.insert(d["id"].as_str().expect("id").to_string(), dia.clone());
        }
        let docs: Vec<(String, String)> =
            conv.turns.iter().map(|(dia, speaker, t)| (dia.clone(), format!("{speaker}: {t}"))).collect();
        let questions: Vec<String> = conv.queries.iter().map(|q| q.text.clone()).collect();
        let anchors = tantivy_rankings(&docs, &questions);
        for (q, anchor) in conv.queries.iter().zip(anchors) {
            add("tantivy BM25", score(&anchor, &q.relevant));
            let ft = ranking(&api, &q.text, "fulltext", 50, &by_doc);
            let vec = ranking(&api, &q.text, "vector", 50, &by_doc);
            let hy = ranking(&api, &q.text, "hybrid", 10, &by_doc);
            add(
                "full-text (BM25 in PostgreSQL)",
                score(&ft.iter().map(|x| x.0.clone()).collect::<Vec<_>>(), &q.relevant),
            );
            add("vector (potion-base-8M)", score(&vec.iter().map(|x| x.0.clone()).collect::<Vec<_>>(), &q.relevant));
            add("hybrid (default weights)", score(&hy.iter().map(|x| x.0.clone()).collect::<Vec<_>>(), &q.relevant));
            // The grid, fused offline with the server's own function.
            let ids: HashMap<String, i64> =
                ft.iter().chain(vec.iter()).enumerate().map(|(i, x)| (x.0.clone(), i as i64)).collect();
            let rev: HashMap<i64, String> = ids.iter().map(|(k, v)| (*v, k.clone())).collect();
            let f: Vec<(i64, f64)> = ft.iter().map(|x| (ids[&x.0], x.1)).collect();
            let v: Vec<(i64, f64)> = vec.iter().map(|x| (ids[&x.0], x.1)).collect();
            for w in &weights_grid {
                let fused = carmenta::knowledge::service::fuse(&f, &v, *w, carmenta::knowledge::service::RRF_K);
                let ranked: Vec<String> = fused.iter().take(10).map(|x| rev[&x.0].clone()).collect();
                add(&format!("grid fulltext {:.2} : vector {:.2}", w[0], w[1]), score(&ranked, &q.relevant));
            }
        }
    }
    let n = total_q as f64;
    let anchor = sums["tantivy BM25"].0 / n;
    println!("(indexing and {} searches took {:.0} s)", total_q * 3, start.elapsed().as_secs_f64());
    println!("{:<38} {:>8} {:>10} {:>12}", "", "nDCG@10", "recall@10", "vs tantivy");
    let mut names: Vec<&String> = sums.keys().collect();
    names.sort_by_key(|k| (k.starts_with("grid"), (*k).clone()));
    for name in names {
        let (nd, rc) = sums[name];
        println!("{name:<38} {:>8.3} {:>10.3} {:>11.2}x", nd / n, rc / n, (nd / n) / anchor);
    }
    println!(
        "default weights {:?} (k {}); target: hybrid >= 1.0x tantivy's nDCG@10",
        carmenta::knowledge::service::DEFAULT_WEIGHTS,
        carmenta::knowledge::service::RRF_K
    );
}

fn scale(port: u16, data: &Path) {
    let chunks: usize = std::env::var("KB_SCALE_CHUNKS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let users = 100usize;
    let docs_per_user = (chunks / 100 / users).max(1); // 100 chunks a document
    println!(
        "\n## Scale: {chunks} chunks, {} documents of {users} users (Zipf vocabulary of 50,000 words)",
        docs_per_user * users
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut apis = Vec::new();
    let mut folders = Vec::new();
    for u in 0..users {
        let (api, id) = Api::sign_up(port, &format!("scale{u}-{}@example.com", std::process::id()));
        // One folder per user holding one of the user's documents (1 % at 1M chunks).
        let f = api.post("/v1/knowledge/folders", &json!({"name": "small"}));
        folders.push(f["id"].as_str().expect("id").to_string());
        apis.push((api, id));
    }
    // Bodies: 100 paragraphs of 60 Zipf words each (one chunk each at 64 tokens or so).
    let build = Instant::now();
    rt.block_on(async {
        let (pool, _, k) = retrieval::knowledge_in_process(data).await;
        let embedder = k.embedder.clone();
        // Two writers (one per core), each on its own users (a user's writes serialise).
        let mut writers = Vec::new();
        for part in 0..2usize {
            let k = k.clone();
            let users: Vec<(usize, uuid::Uuid, uuid::Uuid)> = apis
                .iter()
                .enumerate()
                .filter(|(ui, _)| ui % 2 == part)
                .map(|(ui, (_, uid))| (ui, uid.parse().expect("uuid"), folders[ui].parse().expect("uuid")))
                .collect();
            let mut zipf = Zipf::new(50_000, 0x9e3779b97f4a7c15 + part as u64);
            writers.push(tokio::spawn(async move {
                for (_, user, folder) in users {
                    for d in 0..docs_per_user {
                        let body: String = (0..100)
                            .map(|_| (0..60).map(|_| zipf.word().to_string()).collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                        let folder = (d == 0).then_some(folder);
                        let req: carmenta::knowledge::types::CreateDocument = serde_json::from_value(json!({
                            "title": format!("doc {d}"), "body": body, "folder_id": folder
                        }))
                        .expect("req");
                        carmenta::knowledge::service::create_document(&k, user, req).await.expect("create");
                    }
                }
            }));
        }
        for w in writers {
            w.await.expect("writer");
        }
        let (rows, size): (i64, i64) = sqlx::query_as(
            "SELECT count(*), pg_total_relation_size('kb_chunks') FROM kb_chunks",
        )
        .fetch_one(&pool)
        .await
        .expect("size");
        println!(
            "built {rows} chunks in {:.0} s (chunk, embed, index, BM25 statistics); kb_chunks with indexes {:.0} MB; database {:.0} MB",
            build.elapsed().as_secs_f64(),
            size as f64 / 1e6,
            sqlx::query_scalar::<_, i64>("SELECT pg_database_size(current_database())").fetch_one(&pool).await.expect("db") as f64 / 1e6
        );
        // Queries: rare terms (rank ~20,000) and common ones (the top 20).
        let rare: Vec<String> = (0..50).map(|i| format!("w{} w{}", base26(20_000 + i * 7), base26(30_000 + i))).collect();
        let common: Vec<String> = (0..50).map(|i| format!("w{} w{}", base26(i % 10), base26(10 + i % 10))).collect();
        println!("{:<34} {:>22} {:>22}", "", "HTTP p50/p95/p99 ms", "in-process p50/p95/p99");
        for (label, queries) in [("rare terms", &rare), ("common terms", &common)] {
            for filtered in [false, true] {
                let mut http = Vec::new();
                let mut direct = Vec::new();
                for (i, q) in queries.iter().enumerate() {
                    let (api, uid) = &apis[i % users];
                    let mut body = json!({"query": q, "mode": "hybrid", "limit": 10});
                    if filtered {
                        body["folder_id"] = json!(folders[i % users]);
                    }
                    let t = Instant::now();
                    api.post("/v1/knowledge/search", &body);
                    http.push(t.elapsed());
                    let req: carmenta::knowledge::types::SearchRequest = serde_json::from_value(body).expect("req");
                    let t = Instant::now();
                    carmenta::knowledge::service::search(&k, &[carmenta::knowledge::service::Space::own(uid.parse().expect("uuid"))], req).await.expect("search");
                    direct.push(t.elapsed());
                }
                http.sort();
                direct.sort();
                let f = |v: &[Duration]| {
                    format!(
                        "{:.1}/{:.1}/{:.1}",
                        quantile(v, 0.5).as_secs_f64() * 1e3,
                        quantile(v, 0.95).as_secs_f64() * 1e3,
                        quantile(v, 0.99).as_secs_f64() * 1e3
                    )
                };
                let share = format!(", subtree of {:.0}%", 100.0 / docs_per_user as f64);
                let name = format!("hybrid, {label}{}", if filtered { share.as_str() } else { "" });
                let mean = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len().max(1) as f64;
                println!(
                    "{name:<34} {:>22} {:>22}   HTTP/in-process throughput {:.2}x",
                    f(&http),
                    f(&direct),
                    mean(&direct) / mean(&http)
                );
            }
        }
        // Throughput: 2 clients (one per core) for 5 s each, HTTP on keep-alive
        // connections next to two tasks calling the service in-process.
        let bearers: std::sync::Arc<Vec<String>> = std::sync::Arc::new(apis.iter().map(|a| a.0.bearer.clone()).collect());
        let uids: Vec<uuid::Uuid> = apis.iter().map(|a| a.1.parse().expect("uuid")).collect();
        for (label, queries) in [("rare terms", &rare), ("common terms", &common)] {
            let qs = std::sync::Arc::new(queries.clone());
            let b2 = bearers.clone();
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let http = common::load_with(addr, 2, 5, move |conn, n| {
                let i = (conn * 31 + n as usize) % qs.len();
                let body = json!({"query": qs[i], "mode": "hybrid", "limit": 10}).to_string();
                common::post_json("/v1/knowledge/search", &[("Authorization", &b2[i % b2.len()])], &body)
            })
            .await;
            let deadline = Instant::now() + Duration::from_secs(5);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for t in 0..2usize {
                let (k, qs, uids) = (k.clone(), queries.clone(), uids.clone());
                tasks.push(tokio::spawn(async move {
                    let mut n = 0usize;
                    while Instant::now() < deadline {
                        let i = (t * 31 + n) % qs.len();
                        let req: carmenta::knowledge::types::SearchRequest =
                            serde_json::from_value(json!({"query": qs[i], "mode": "hybrid", "limit": 10})).expect("req");
                        carmenta::knowledge::service::search(&k, &[carmenta::knowledge::service::Space::own(uids[i % uids.len()])], req).await.expect("search");
                        n += 1;
                    }
                    n
                }));
            }
            let mut done = 0;
            for t in tasks {
                done += t.await.expect("task");
            }
            let direct = done as f64 / start.elapsed().as_secs_f64();
            println!(
                "throughput, hybrid, {label}, 2 clients: HTTP {http:.0}/s, in-process {direct:.0}/s = {:.2}x",
                http / direct
            );
        }
        println!("target: hybrid p95 <= 50 ms at 1M chunks; HTTP >= 0.8x the in-process throughput");
        // Filtered recall: the subtree search's top 10 against an exact scan.
        let mut same = 0;
        let mut total = 0;
        for (i, q) in rare.iter().chain(common.iter()).enumerate().take(40) {
            let (_, uid) = &apis[i % users];
            let user: uuid::Uuid = uid.parse().expect("uuid");
            let folder: uuid::Uuid = folders[i % users].parse().expect("uuid");
            let v = embedder.embed_blocking(std::slice::from_ref(q)).expect("embed").pop().expect("vector");
            let path: String = sqlx::query_scalar("SELECT path::text FROM kb_folders WHERE id = $1")
                .bind(folder)
                .fetch_one(&pool)
                .await
                .expect("path");
            let filters = carmenta::knowledge::db::Filters { path: Some(path), ..Default::default() };
            let query = |v: Vec<f32>| carmenta::knowledge::db::VectorQuery {
                model: embedder.model(),
                dim: embedder.dim(),
                vector: pgvector::Vector::from(v),
            };
            let exact = carmenta::knowledge::db::nearest(&pool, user, query(v.clone()), &filters, 10, true).await.expect("exact");
            let index = carmenta::knowledge::db::nearest(&pool, user, query(v), &filters, 10, false).await.expect("index");
            let a: HashSet<i64> = exact.iter().map(|x| x.0).collect();
            same += index.iter().filter(|x| a.contains(&x.0)).count();
            total += a.len();
        }
        println!(
            "subtree-filtered vector search (served exact): HNSW path with iterative scan would return {:.0}% of the exact top 10",
            100.0 * same as f64 / total.max(1) as f64
        );
    });
}

fn words(s: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for w in s.split_whitespace() {
        let w: String = w.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect();
        if !w.is_empty() {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

fn agreement(a: &str, b: &str) -> f64 {
    let (wa, wb) = (words(a), words(b));
    let common: usize = wa.iter().map(|(w, n)| (*n).min(*wb.get(w).unwrap_or(&0))).sum();
    let total: usize = wa.values().sum::<usize>() + wb.values().sum::<usize>();
    if total == 0 { 1.0 } else { 2.0 * common as f64 / total as f64 }
}

fn pdfs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/usr/share/doc")];
    if let Ok(home) = std::env::var("CARGO_HOME").or_else(|_| std::env::var("HOME").map(|h| format!("{h}/.cargo"))) {
        stack.push(PathBuf::from(home).join("registry/src"));
    }
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "pdf") && e.metadata().is_ok_and(|m| m.len() > 20_000) {
                out.push(p);
            }
        }
    }
    out.sort();
    out.dedup_by_key(|p| p.file_name().map(|f| f.to_os_string()));
    out
}

fn ingestion(bin: &str) {
    use carmenta::knowledge::extract::{self, Format, Limits};
    println!("\n## Ingestion");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let limits = Limits { max_pages: 5000, max_text_bytes: 50 * 1024 * 1024 };
    let files = pdfs();
    if files.is_empty() {
        println!("no PDFs found under /usr/share/doc or the cargo registry: PDF figures skipped");
    }
    let (mut ours_t, mut theirs_t, mut pages, mut agree_sum, mut compared) =
        (Duration::ZERO, Duration::ZERO, 0usize, 0.0, 0usize);
    for f in &files {
        let bytes = std::fs::read(f).expect("read pdf");
        let t = Instant::now();
        let ours = rt.block_on(extract::isolated::extract(
            Path::new(bin),
            Format::Pdf,
            bytes,
            limits,
            Duration::from_secs(120),
        ));
        let our_time = t.elapsed();
        let t = Instant::now();
        let out = std::process::Command::new("pdftotext").arg("-q").arg(f).arg("-").output();
        let their_time = t.elapsed();
        match (ours, out) {
            (Ok(x), Ok(o)) if o.status.success() => {
                let theirs = String::from_utf8_lossy(&o.stdout);
                let a = agreement(&x.body, &theirs);
                println!(
                    "  {:<40} {:>4} pages  ours {:>7.1} ms  pdftotext {:>7.1} ms  word agreement {:.3}",
                    f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    x.page_starts.len(),
                    our_time.as_secs_f64() * 1e3,
                    their_time.as_secs_f64() * 1e3,
                    a
                );
                ours_t += our_time;
                theirs_t += their_time;
                pages += x.page_starts.len();
                agree_sum += a;
                compared += 1;
            }
            (ours, out) => println!(
                "  {}: skipped (ours: {:?}; pdftotext exit: {:?})",
                f.display(),
                ours.err().map(|e| e.code),
                out.map(|o| o.status.code())
            ),
        }
    }
    if pages > 0 {
        let ours = pages as f64 / ours_t.as_secs_f64();
        let theirs = pages as f64 / theirs_t.as_secs_f64();
        println!(
            "PDF: {pages} pages, ours {ours:.0} pages/s vs pdftotext {theirs:.0} pages/s = {:.2}x (target >= 0.5x); mean word agreement {:.3}",
            ours / theirs,
            agree_sum / compared as f64
        );
    }
    let config = carmenta::knowledge::chunk::ChunkConfig { tokens: 256, overlap: 32 };
    let mut md = String::new();
    let mut z = Zipf::new(20_000, 42);
    let mut section = 0;
    while md.len() < 5 * 1024 * 1024 {
        section += 1;
        md.push_str(&format!("## Section {section}\n\n"));
        for _ in 0..4 {
            let p: Vec<String> = (0..80).map(|_| z.word().to_string()).collect();
            md.push_str(&p.join(" "));
            md.push_str(".\n\n");
        }
    }
    let t = Instant::now();
    let x = extract::extract(Format::Markdown, md.as_bytes(), &limits).expect("markdown");
    let n = carmenta::knowledge::chunk::chunk(&x.body, &x.page_starts, &config).len();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "Markdown: {:.1} MB in {:.2} s = {:.1} MB/s ({n} chunks)",
        md.len() as f64 / 1e6,
        secs,
        md.len() as f64 / 1e6 / secs
    );
    let html = format!(
        "<html><head><title>t</title><script>var x = 1;</script></head><body><nav>a b c</nav><main>{}</main></body></html>",
        md.split("\n\n")
            .map(|p| match p.strip_prefix("## ") {
                Some(h) => format!("<h2>{h}</h2>"),
                None => format!("<p>{p}</p>"),
            })
            .collect::<String>()
    );
    let t = Instant::now();
    let x = extract::extract(Format::Html, html.as_bytes(), &limits).expect("html");
    let n = carmenta::knowledge::chunk::chunk(&x.body, &x.page_starts, &config).len();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "HTML: {:.1} MB in {:.2} s = {:.1} MB/s ({n} chunks)",
        html.len() as f64 / 1e6,
        secs,
        html.len() as f64 / 1e6 / secs
    );
    let model_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/models/potion-base-8M");
    let embedder = carmenta::embed::Embedder::builtin(&model_dir).expect("model");
    let texts: Vec<String> = locomo().into_iter().flat_map(|c| c.turns.into_iter().map(|t| t.2)).collect();
    embedder.embed_blocking(&texts[..1]).expect("load the model");
    let t = Instant::now();
    let v = embedder.embed_blocking(&texts).expect("embed");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "built-in embedder: {} texts in {:.3} s = {:.0} texts/s ({} dimensions)",
        v.len(),
        secs,
        v.len() as f64 / secs,
        embedder.dim()
    );
}
