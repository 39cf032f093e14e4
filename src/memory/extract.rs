//! Extraction of memories from a conversation's new messages: one call to the
//! configured chat-completions model with the new messages (secrets redacted) and
//! the most similar existing memories under short local ids; the answer (a JSON
//! schema, read leniently) is a list of ADD / UPDATE / INVALIDATE / NONE
//! operations, applied in one transaction: an update supersedes the old memory, an
//! invalidation ends its validity (nothing is deleted), duplicates (same normal
//! form, or a vector within [`DUPLICATE_DISTANCE`]) and secrets are refused. Every
//! run is a `memory_extractions` row, failed ones with their code and reason.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::Memory as State;
use super::db::{self, MessageText, SearchFilter};
use super::service::{self, Actor, Draft, Mode};
use crate::llm::{Llm, Message};

/// New messages read per run (the rest wait for the next run).
pub const MAX_MESSAGES: i64 = 40;

/// Earlier messages shown for context.
const CONTEXT_MESSAGES: i64 = 4;

/// Existing memories shown to the model.
const CANDIDATE_MEMORIES: i64 = 12;

/// Cosine distance under which a new fact counts as a duplicate of an active one.
pub const DUPLICATE_DISTANCE: f64 = 0.05;

/// Characters of one message shown to the model.
const MESSAGE_CHARS: usize = 4000;

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Memories added.
    pub added: i32,
    /// Memories that superseded others.
    pub updated: i32,
    /// Memories ended.
    pub invalidated: i32,
    /// Operations that changed nothing.
    pub unchanged: i32,
    /// Operations refused.
    pub rejected: i32,
}

/// The operation the model asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A new memory.
    Add,
    /// Replace memory `id`.
    Update(String),
    /// End memory `id`.
    Invalidate(String),
    /// Already known.
    None,
}

/// One operation, as read from the answer.
#[derive(Debug, Clone)]
pub struct Operation {
    /// What to do.
    pub op: Op,
    /// The memory's text (ADD, UPDATE).
    pub text: Option<String>,
    /// Its kind.
    pub kind: Option<String>,
    /// Its profile slot.
    pub slot: Option<String>,
    /// The words it rests on.
    pub quote: Option<String>,
    /// Local message ids (`m1`, …).
    pub messages: Vec<String>,
    /// 0 to 1.
    pub confidence: Option<f32>,
}

/// The JSON schema of the answer.
pub fn schema() -> Value {
    let nullable = |t: &str| json!({ "type": [t, "null"] });
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["operations"],
        "properties": {
            "operations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["op", "id", "kind", "slot", "text", "quote", "message_ids", "confidence"],
                    "properties": {
                        "op": { "type": "string", "enum": ["ADD", "UPDATE", "INVALIDATE", "NONE"] },
                        "id": nullable("string"),
                        "kind": { "type": ["string", "null"], "enum": ["profile", "fact", "preference", "instruction", null] },
                        "slot": nullable("string"),
                        "text": nullable("string"),
                        "quote": nullable("string"),
                        "message_ids": { "type": "array", "items": { "type": "string" } },
                        "confidence": nullable("number"),
                    },
                },
            },
        },
    })
}

const SYSTEM: &str = "You maintain long-term memory about a user for an AI assistant. From the NEW MESSAGES, \
find durable facts about the user worth remembering in later conversations: identity and profile (name, \
location, timezone, language, job, family), preferences, plans and events with their dates, and standing \
instructions for the assistant. Ignore small talk, questions without facts, and what the assistant said \
unless the user confirmed it. Never record passwords, keys, tokens, card or account numbers, or other secrets.\n\
Compare with EXISTING MEMORIES (referred to by their short ids) and answer with operations:\n\
- ADD: a new memory. `text` is one self-contained sentence in the third person naming the user \
(\"The user …\"), with relative dates resolved to absolute ones against the message time.\n\
- UPDATE: the new information changes or refines memory `id`; `text` is the full new memory.\n\
- INVALIDATE: the new messages say memory `id` no longer holds (nothing replaces it).\n\
- NONE: memory `id` is already known as said.\n\
For every ADD and UPDATE give `kind` (profile, fact, preference, instruction), `slot` for profile facts \
(name, timezone, language, location, occupation, …) or null, `quote`: the user's exact words it rests on, \
`message_ids`: the message ids (m1, …) it comes from, and `confidence` from 0 to 1. \
If there is nothing to remember, answer {\"operations\": []}. Answer with JSON only.";

/// The prompt's user message.
pub fn prompt(
    earlier: &[MessageText],
    new: &[(String, &MessageText)],
    memories: &[(String, &db::MemoryRow)],
    now: OffsetDateTime,
) -> String {
    let mut s = String::new();
    let stamp = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    s.push_str(&format!("CURRENT DATE: {}\n\nEXISTING MEMORIES:\n", stamp(now)));
    if memories.is_empty() {
        s.push_str("(none)\n");
    }
    for (id, m) in memories {
        s.push_str(&format!("[{id}] ({}) {}  (since {})\n", m.kind, m.text, stamp(m.valid_from)));
    }
    if !earlier.is_empty() {
        s.push_str("\nEARLIER MESSAGES (context only):\n");
        for m in earlier {
            s.push_str(&format!("{} at {}: {}\n", m.role, stamp(m.created_at), clip(&super::secrets::redact(&m.text))));
        }
    }
    s.push_str("\nNEW MESSAGES:\n");
    for (id, m) in new {
        s.push_str(&format!(
            "[{id}] {} at {}: {}\n",
            m.role,
            stamp(m.created_at),
            clip(&super::secrets::redact(&m.text))
        ));
    }
    s
}

fn clip(t: &str) -> String {
    if t.chars().count() <= MESSAGE_CHARS {
        return t.to_string();
    }
    let mut out: String = t.chars().take(MESSAGE_CHARS).collect();
    out.push('…');
    out
}

/// Reads the operations out of a parsed answer: `{"operations": [...]}` (or
/// `memory`/`memories`/`facts`), or a bare array; lower-case ops and `DELETE`
/// (read as INVALIDATE) accepted. Items that make no sense are counted, not fatal.
pub fn operations(v: &Value) -> Result<(Vec<Operation>, i32), String> {
    let list = match v {
        Value::Array(a) => a,
        Value::Object(o) => match ["operations", "memory", "memories", "facts"].iter().find_map(|k| o.get(*k)) {
            Some(Value::Array(a)) => a,
            _ => return Err("the answer has no `operations` list".into()),
        },
        _ => return Err("the answer is neither an object nor a list".into()),
    };
    let mut out = Vec::new();
    let mut bad = 0;
    for item in list {
        let Some(o) = item.as_object() else {
            bad += 1;
            continue;
        };
        let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::trim).filter(|x| !x.is_empty()).map(String::from);
        let id = s("id").or_else(|| o.get("id").and_then(Value::as_i64).map(|n| n.to_string()));
        let op = match (s("op").or_else(|| s("event")).map(|x| x.to_ascii_uppercase()).as_deref(), id) {
            (Some("ADD"), _) => Op::Add,
            (Some("UPDATE"), Some(id)) => Op::Update(id),
            (Some("INVALIDATE" | "DELETE" | "CONTRADICT"), Some(id)) => Op::Invalidate(id),
            (Some("NONE" | "NOOP"), _) => Op::None,
            _ => {
                bad += 1;
                continue;
            }
        };
        let messages = match o.get("message_ids") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
            _ => Vec::new(),
        };
        out.push(Operation {
            op,
            text: s("text").or_else(|| s("memory")),
            kind: s("kind").map(|k| k.to_ascii_lowercase()),
            slot: s("slot").map(|k| k.to_ascii_lowercase()),
            quote: s("quote"),
            messages,
            confidence: o.get("confidence").and_then(Value::as_f64).map(|c| c.clamp(0.0, 1.0) as f32),
        });
    }
    Ok((out, bad))
}

/// Why a run failed.
#[derive(Debug)]
pub struct Failure {
    /// Stable code.
    pub code: &'static str,
    /// The reason in a sentence.
    pub message: String,
    /// Whether trying again may help.
    pub retry: bool,
}

/// The outcome of [`run`].
#[derive(Debug)]
pub enum RunResult {
    /// Nothing new to read, or not to be remembered.
    Nothing,
    /// Done.
    Done(Counts),
    /// Failed (recorded).
    Failed(Failure),
}

/// Runs one extraction over a conversation's unread messages.
pub async fn run(m: &State, llm: &Llm, conversation: Uuid, attempt: i32, last: bool) -> Result<RunResult, sqlx::Error> {
    let started = Instant::now();
    let mut conn = m.pool.acquire().await?;
    let Some(state) = db::lock_conversation(&mut conn, conversation).await? else {
        return Ok(RunResult::Nothing);
    };
    let user = state.user_id;
    let new = db::messages_between(&mut conn, conversation, state.extracted_seq, MAX_MESSAGES).await?;
    drop(conn);
    let Some(last_seq) = new.last().map(|x| x.seq) else {
        return Ok(RunResult::Nothing);
    };
    if !state.remember || !state.extraction {
        let mut tx = m.pool.begin().await?;
        db::advance(&mut tx, conversation, last_seq).await?;
        tx.commit().await?;
        return Ok(RunResult::Nothing);
    }
    let first_seq = new.first().map(|x| x.seq).unwrap_or(last_seq);
    let id = Uuid::now_v7();
    db::start_extraction(
        &m.pool,
        id,
        user,
        conversation,
        (first_seq, last_seq),
        new.len() as i32,
        attempt,
        llm.model(),
    )
    .await?;
    let earlier = {
        let mut e =
            db::recent_messages(&m.pool, user, conversation, Some(state.extracted_seq), CONTEXT_MESSAGES).await?;
        e.reverse();
        e
    };
    let local: Vec<(String, &MessageText)> = new.iter().enumerate().map(|(i, x)| (format!("m{}", i + 1), x)).collect();
    // The memories most like the new messages, by both signals.
    let user_text: String =
        new.iter().filter(|x| x.role == "user").map(|x| x.text.as_str()).collect::<Vec<_>>().join("\n");
    let probe: String =
        if user_text.trim().is_empty() { new.iter().map(|x| x.text.as_str()).collect() } else { user_text };
    let probe: String = probe.chars().take(2000).collect();
    let candidates = if probe.trim().is_empty() {
        Vec::new()
    } else {
        match service::rank(
            m,
            user,
            &probe,
            &SearchFilter::default(),
            Mode::Hybrid,
            service::DEFAULT_WEIGHTS,
            CANDIDATE_MEMORIES,
        )
        .await
        {
            Ok(r) => r.hits.into_iter().map(|h| h.0).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "memory candidates for extraction");
                Vec::new()
            }
        }
    };
    let known: Vec<(String, &db::MemoryRow)> =
        candidates.iter().enumerate().map(|(i, r)| ((i + 1).to_string(), r)).collect();
    let now = new.last().map(|x| x.created_at).unwrap_or_else(OffsetDateTime::now_utc);
    let messages = [
        Message { role: "system", content: SYSTEM.to_string() },
        Message { role: "user", content: prompt(&earlier, &local, &known, now) },
    ];
    let answer = match llm.json(&messages, "memory_operations", schema()).await {
        Ok(a) => a,
        Err(e) => {
            let retry = !matches!(&e, crate::llm::LlmError::Remote(crate::http_client::RemoteError::Status { status, .. }) if *status < 500 && *status != 429);
            let f = Failure { code: e.code(), message: e.to_string(), retry };
            return finish_failed(m, id, conversation, last_seq, f, started, None, last).await;
        }
    };
    let model_ms = answer.elapsed.as_millis() as i32;
    let parsed = super::parse::lenient_json(&answer.content).map_err(|e| e.0).and_then(|v| operations(&v));
    let (ops, bad) = match parsed {
        Ok(x) => x,
        Err(message) => {
            let f = Failure { code: "unparseable_answer", message, retry: true };
            return finish_failed(m, id, conversation, last_seq, f, started, Some(model_ms), last).await;
        }
    };
    let ids_by_local: HashMap<&str, &MessageText> = local.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let known_by_local: HashMap<&str, Uuid> = known.iter().map(|(k, v)| (k.as_str(), v.id)).collect();
    let texts: Vec<String> = ops.iter().filter_map(|o| o.text.clone()).collect();
    let vectors = m.embedder.embed(texts.clone()).await.ok();
    let vector_of: HashMap<String, Vec<f32>> = match vectors {
        Some(vs) => texts.into_iter().zip(vs).collect(),
        None => HashMap::new(),
    };
    let mut counts = Counts { rejected: bad, ..Default::default() };
    let mut tx = m.pool.begin().await?;
    let Some(fresh) = db::lock_conversation(&mut tx, conversation).await? else {
        return Ok(RunResult::Nothing);
    };
    if fresh.extracted_seq != state.extracted_seq {
        // Another run read these messages meanwhile.
        let o = db::Outcome { status: "skipped", total_ms: started.elapsed().as_millis() as i32, ..Default::default() };
        db::finish_extraction(&mut tx, id, &o).await?;
        tx.commit().await?;
        return Ok(RunResult::Nothing);
    }
    db::lock_user(&mut tx, user).await?;
    let mut seen: HashSet<String> = HashSet::new();
    for op in ops {
        let refs: Vec<&MessageText> =
            op.messages.iter().filter_map(|k| ids_by_local.get(k.as_str()).copied()).collect();
        let refs: Vec<&MessageText> =
            if refs.is_empty() { local.iter().filter(|x| x.1.role == "user").map(|x| x.1).collect() } else { refs };
        let message_ids: Vec<String> = refs.iter().map(|x| x.id.clone()).collect();
        let at = refs.iter().map(|x| x.created_at).max().unwrap_or(now);
        let quote = op.quote.as_deref().filter(|q| {
            let q = q.to_lowercase();
            refs.iter().any(|x| x.text.to_lowercase().contains(&q)) && super::secrets::find(&q).is_none()
        });
        let target = match &op.op {
            Op::Update(k) | Op::Invalidate(k) => match known_by_local.get(k.as_str()) {
                Some(id) => Some(*id),
                None => {
                    counts.rejected += 1;
                    continue;
                }
            },
            _ => None,
        };
        match op.op {
            Op::None => counts.unchanged += 1,
            Op::Invalidate(_) => {
                let Some(old) = target else { continue };
                let text = db::memory(&mut tx, user, old, true).await?.map(|r| r.text);
                if db::end(&mut tx, user, old, None, Some(at)).await? {
                    db::record(
                        &mut tx,
                        &db::Event {
                            memory: old,
                            user,
                            event: "invalidated",
                            actor: "extractor",
                            text: text.as_deref(),
                            related: None,
                            extraction: Some(id),
                        },
                    )
                    .await?;
                    counts.invalidated += 1;
                } else {
                    counts.unchanged += 1;
                }
            }
            Op::Add | Op::Update(_) => {
                let Some(text) = op.text.as_deref().and_then(|t| service::check_text(t).ok()) else {
                    counts.rejected += 1;
                    continue;
                };
                let norm = service::normalize(text);
                if !seen.insert(norm.clone()) {
                    counts.unchanged += 1;
                    continue;
                }
                if db::same_norm(&mut tx, user, &norm).await?.is_some() {
                    counts.unchanged += 1;
                    continue;
                }
                let vector = vector_of.get(text).cloned();
                if let Some(v) = &vector
                    && target.is_none()
                {
                    let q = crate::db::shared::VectorQuery {
                        model: m.embedder.model(),
                        dim: m.embedder.dim(),
                        vector: pgvector::Vector::from(v.clone()),
                    };
                    let near = db::nearest_in(&mut tx, user, q, 1).await?;
                    if near.first().is_some_and(|n| n.1 <= DUPLICATE_DISTANCE) {
                        counts.unchanged += 1;
                        continue;
                    }
                }
                let kind = op
                    .kind
                    .as_deref()
                    .and_then(|k| service::KINDS.iter().find(|x| **x == k).copied())
                    .unwrap_or("fact");
                let slot = if kind == "profile" {
                    op.slot.as_deref().filter(|s| {
                        s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                    })
                } else {
                    None
                };
                // An update of a memory that ended meanwhile is an addition.
                let replaces = match target {
                    Some(old) => {
                        db::memory(&mut tx, user, old, true).await?.filter(|r| r.status == "active").map(|r| r.id)
                    }
                    None => None,
                };
                let draft = Draft {
                    kind,
                    slot,
                    text,
                    confidence: op.confidence.unwrap_or(0.8),
                    pinned: false,
                    conversation: Some((conversation, &message_ids, quote)),
                    metadata: &json!({}),
                    valid_from: Some(at),
                    vector: vector.map(pgvector::Vector::from),
                };
                let written = service::write(m, &mut tx, user, Actor::Extractor, draft, replaces, Some(id)).await;
                match written {
                    Ok(_) if replaces.is_some() => counts.updated += 1,
                    Ok(_) => counts.added += 1,
                    Err(e) => {
                        tracing::warn!(error = %e.message, "writing an extracted memory");
                        return Err(sqlx::Error::Protocol(format!("writing an extracted memory: {}", e.message)));
                    }
                }
            }
        }
    }
    db::advance(&mut tx, conversation, last_seq).await?;
    let o = db::Outcome {
        status: "done",
        added: counts.added,
        updated: counts.updated,
        invalidated: counts.invalidated,
        unchanged: counts.unchanged,
        rejected: counts.rejected,
        error: None,
        model_ms: Some(model_ms),
        total_ms: started.elapsed().as_millis() as i32,
    };
    db::finish_extraction(&mut tx, id, &o).await?;
    if !m.embedder.is_local() {
        super::jobs::queue_embed(&mut tx, user).await?;
    }
    tx.commit().await?;
    Ok(RunResult::Done(counts))
}

/// Records a failed run; on the last attempt (or when retrying cannot help) the
/// messages are passed over so later ones are not held up behind them.
#[allow(clippy::too_many_arguments)]
async fn finish_failed(
    m: &State,
    id: Uuid,
    conversation: Uuid,
    last_seq: i64,
    f: Failure,
    started: Instant,
    model_ms: Option<i32>,
    last: bool,
) -> Result<RunResult, sqlx::Error> {
    tracing::warn!(extraction = %id, code = f.code, "memory extraction failed");
    let mut tx = m.pool.begin().await?;
    let o = db::Outcome {
        status: "failed",
        error: Some((f.code, &f.message)),
        model_ms,
        total_ms: started.elapsed().as_millis() as i32,
        ..Default::default()
    };
    db::finish_extraction(&mut tx, id, &o).await?;
    if last || !f.retry {
        db::advance(&mut tx, conversation, last_seq).await?;
    }
    tx.commit().await?;
    Ok(RunResult::Failed(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_read_leniently() {
        let v = json!({"memory": [
            {"op": "add", "text": "The user lives in Lisbon.", "kind": "Profile", "slot": "location", "message_ids": ["m1"]},
            {"event": "DELETE", "id": 2},
            {"op": "UPDATE"},
            "nonsense",
            {"op": "NONE", "id": "1"}
        ]});
        let (ops, bad) = operations(&v).unwrap();
        assert_eq!(bad, 2);
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].op, Op::Add);
        assert_eq!(ops[0].kind.as_deref(), Some("profile"));
        assert_eq!(ops[1].op, Op::Invalidate("2".into()));
        assert_eq!(ops[2].op, Op::None);
        assert!(operations(&json!({"x": 1})).is_err());
    }
}
