//! Chunk size, chosen by measurement: each LoCoMo session becomes one document
//! (its turns as paragraphs), chunked at several sizes (overlap an eighth of the
//! size), and each question's hybrid results are read in rank order until a
//! context budget of 512 tokens is spent. The figure: the share of evidence turns
//! whose text lies inside the chunks read (evidence recall at a fixed budget,
//! so bigger chunks get no free credit for holding more text).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;

use super::{Conversation, Turn, locomo};

const BUDGET: i64 = 512;

pub fn run(data: &std::path::Path, users: &[(String, String)]) {
    let convs = locomo();
    println!(
        "\n## Chunk size: evidence recall within a {BUDGET}-token budget (LoCoMo sessions as documents, hybrid search)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let opts = carmenta::db::embedded::socket_connect_options(&data.join("run"), carmenta::db::EMBEDDED_DATABASE);
    rt.block_on(async {
        let pool = carmenta::db::pool_options(4).connect_with(opts).await.expect("pool");
        let keyring =
            carmenta::crypto::Keyring::from_base64(&[carmenta::config::Secret::new(carmenta::crypto::generate_key())])
                .expect("keyring");
        println!("{:>8} {:>8} {:>16}", "tokens", "overlap", "evidence recall");
        for (i, size) in [64usize, 128, 256, 512].into_iter().enumerate() {
            let mut config = carmenta::config::Config::for_data_dir(data);
            config.knowledge.chunk_tokens = size;
            config.knowledge.chunk_overlap = size / 8;
            let storage = Arc::new(carmenta::storage::Storage::open(&config, &keyring, pool.clone()).expect("storage"));
            let k = carmenta::knowledge::Knowledge::open(&config, pool.clone(), storage).expect("knowledge");
            let (mut found, mut total) = (0usize, 0usize);
            for (ci, conv) in convs.iter().enumerate() {
                let user: uuid::Uuid = users[i * convs.len() + ci].1.parse().expect("uuid");
                let spans = ingest_sessions(&k, user, conv).await;
                for q in &conv.queries {
                    let req: carmenta::knowledge::types::SearchRequest =
                        serde_json::from_value(json!({"query": q.text, "limit": 50})).expect("req");
                    let page = carmenta::knowledge::service::search(
                        &k,
                        &[carmenta::knowledge::service::Space::own(user)],
                        req,
                    )
                    .await
                    .expect("search");
                    let mut read: Vec<(uuid::Uuid, i32, i32)> = Vec::new();
                    let mut spent = 0i64;
                    for h in page.data.iter().map(|h| &h.chunk) {
                        let tokens = (h.char_end - h.char_start) as i64 / 4; // about 4 characters a token
                        if spent + tokens > BUDGET && !read.is_empty() {
                            break;
                        }
                        spent += tokens;
                        read.push((h.document_id, h.char_start, h.char_end));
                    }
                    for ev in &q.relevant {
                        let Some((doc, s, e)) = spans.get(ev) else { continue };
                        total += 1;
                        if read.iter().any(|(d, cs, ce)| d == doc && *cs <= *s && *ce >= *e) {
                            found += 1;
                        }
                    }
                }
            }
            println!("{size:>8} {:>8} {:>16.3}", size / 8, found as f64 / total.max(1) as f64);
        }
    });
}

/// Creates one document per session; returns where each turn (by dia_id) lies.
async fn ingest_sessions(
    k: &carmenta::knowledge::Knowledge,
    user: uuid::Uuid,
    conv: &Conversation,
) -> HashMap<String, (uuid::Uuid, i32, i32)> {
    let mut by_session: Vec<(String, Vec<&Turn>)> = Vec::new();
    for t in &conv.turns {
        let session = t.0.split(':').next().unwrap_or("").to_string();
        match by_session.last_mut() {
            Some((s, v)) if *s == session => v.push(t),
            _ => by_session.push((session, vec![t])),
        }
    }
    let mut spans = HashMap::new();
    for (session, turns) in by_session {
        let mut body = String::new();
        let mut local = Vec::new();
        for (dia, speaker, text) in turns {
            let line = format!("{speaker}: {text}");
            let start = body.chars().count() as i32;
            body.push_str(&line);
            local.push((dia.clone(), start, start + line.chars().count() as i32));
            body.push_str("\n\n");
        }
        let req: carmenta::knowledge::types::CreateDocument =
            serde_json::from_value(json!({"title": format!("Session {session}"), "body": body})).expect("req");
        let d = carmenta::knowledge::service::create_document(k, user, req).await.expect("create");
        for (dia, s, e) in local {
            spans.insert(dia, (d.summary.id, s, e));
        }
    }
    spans
}
