//! Retrieval helpers shared by the knowledge and memory benchmarks: nDCG and
//! recall, tantivy BM25 as the anchor, LoCoMo loading, a Zipf vocabulary.
#![allow(dead_code)]

use std::collections::HashSet;

/// nDCG@10 (binary relevance) and recall@10 of a ranking.
pub fn score(ranked: &[String], relevant: &HashSet<String>) -> (f64, f64) {
    if relevant.is_empty() {
        return (0.0, 0.0);
    }
    let mut dcg = 0.0;
    let mut hits = 0;
    for (i, id) in ranked.iter().take(10).enumerate() {
        if relevant.contains(id) {
            dcg += 1.0 / ((i + 2) as f64).log2();
            hits += 1;
        }
    }
    let ideal: f64 = (0..relevant.len().min(10)).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
    (dcg / ideal, hits as f64 / relevant.len() as f64)
}

/// Tantivy's BM25 (k1 1.2, b 0.75) over `docs` (id, text), with English stop words
/// and stemming (as PostgreSQL's `english` configuration): the top 10 ids per query.
pub fn tantivy_rankings(docs: &[(String, String)], queries: &[String]) -> Vec<Vec<String>> {
    use tantivy::collector::TopDocs;
    use tantivy::query::QueryParser;
    use tantivy::schema::{IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions, Value as _};
    use tantivy::tokenizer::{
        Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
    };
    let mut sb = Schema::builder();
    let opts = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default().set_tokenizer("en_sw").set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let text = sb.add_text_field("text", opts);
    let id = sb.add_text_field("id", STORED);
    let index = tantivy::Index::create_in_ram(sb.build());
    let analyzer = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(StopWordFilter::new(Language::English).expect("stop words"))
        .filter(Stemmer::new(Language::English))
        .build();
    index.tokenizers().register("en_sw", analyzer);
    let mut w: tantivy::IndexWriter = index.writer(50_000_000).expect("writer");
    for (doc_id, t) in docs {
        let mut d = tantivy::TantivyDocument::default();
        d.add_text(text, t);
        d.add_text(id, doc_id);
        w.add_document(d).expect("add");
    }
    w.commit().expect("commit");
    let reader = index.reader().expect("reader");
    let searcher = reader.searcher();
    let qp = QueryParser::for_index(&index, vec![text]);
    queries
        .iter()
        .map(|q| {
            let cleaned: String = q.chars().map(|c| if c.is_alphanumeric() { c } else { ' ' }).collect();
            let (query, _) = qp.parse_query_lenient(&cleaned);
            let top = searcher.search(&query, &TopDocs::with_limit(10).order_by_score()).expect("search");
            top.into_iter()
                .filter_map(|(_, addr)| {
                    let d: tantivy::TantivyDocument = searcher.doc(addr).ok()?;
                    d.get_first(id).and_then(|v| v.as_str().map(str::to_string))
                })
                .collect()
        })
        .collect()
}

/// LoCoMo's development half (`../shared/data/locomo/locomo-dev.json`), read at run time.
pub fn locomo_raw() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/locomo/locomo-dev.json");
    let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&raw).expect("locomo json")
}

/// A question's evidence turn ids (some lists hold "D8:6; D9:17" in one string).
pub fn evidence(v: &serde_json::Value) -> HashSet<String> {
    let parts: Vec<&str> = match v {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(a) => a.iter().filter_map(|e| e.as_str()).collect(),
        _ => Vec::new(),
    };
    parts
        .into_iter()
        .flat_map(|e| e.split([';', ',']).map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect()
}

/// A Zipf-distributed vocabulary sampler.
pub struct Zipf {
    words: Vec<String>,
    cdf: Vec<f64>,
    state: u64,
}

impl Zipf {
    pub fn new(n: usize, seed: u64) -> Zipf {
        let words: Vec<String> = (0..n).map(|i| format!("w{}", base26(i))).collect();
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for r in 1..=n {
            acc += 1.0 / r as f64;
            cdf.push(acc);
        }
        let total = acc;
        for c in cdf.iter_mut() {
            *c /= total;
        }
        Zipf { words, cdf, state: seed }
    }

    fn next_f64(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn word(&mut self) -> &str {
        let x = self.next_f64();
        let i = self.cdf.partition_point(|&c| c < x).min(self.words.len() - 1);
        &self.words[i]
    }
}

pub fn base26(mut i: usize) -> String {
    let mut s = String::new();
    loop {
        s.push((b'a' + (i % 26) as u8) as char);
        i /= 26;
        if i == 0 {
            return s;
        }
    }
}

/// The knowledge area in this process, on the benchmark server's own cluster (its
/// Unix socket under `data`) with the built-in embedder: for building large corpora
/// through the service without HTTP. Returns the pool, the configuration and the state.
pub async fn knowledge_in_process(
    data: &std::path::Path,
) -> (sqlx::PgPool, carmenta::config::Config, std::sync::Arc<carmenta::knowledge::Knowledge>) {
    let opts = carmenta::db::embedded::socket_connect_options(&data.join("run"), carmenta::db::EMBEDDED_DATABASE);
    let pool = carmenta::db::pool_options(4).connect_with(opts).await.expect("pool");
    let mut config = carmenta::config::Config::for_data_dir(data);
    config.knowledge.chunk_tokens = 128;
    let keyring =
        carmenta::crypto::Keyring::from_base64(&[carmenta::config::Secret::new(carmenta::crypto::generate_key())])
            .expect("keyring");
    let storage =
        std::sync::Arc::new(carmenta::storage::Storage::open(&config, &keyring, pool.clone()).expect("storage"));
    let model_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/models/potion-base-8M");
    let mut k = carmenta::knowledge::Knowledge::open(&config, pool.clone(), storage).expect("knowledge");
    k.embedder = carmenta::embed::Embedder::builtin(&model_dir).expect("model");
    (pool, config, std::sync::Arc::new(k))
}
