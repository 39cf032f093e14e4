//! Memory: memories with provenance and history (add, slots, corrections,
//! invalidation, deletion that reaches every index, export), hybrid search with
//! per-signal scores, extraction through a local chat-completions server with
//! scripted answers (fences, near-JSON, garbage, 429 and 500, secrets, opt-outs),
//! context assembly within a token budget, hybrid recall of past messages, and
//! another user's 404 on every route.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestApp, User, eventually, sign_up};

async fn call(app: &TestApp, u: &User, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut c = app.call(method, path).by(&u.jwt);
    if let Some(b) = body {
        c = c.json(&b);
    }
    c.reply().await
}

async fn add(app: &TestApp, u: &User, body: Value) -> Value {
    let (s, b) = call(app, u, Method::POST, "/v1/memories", Some(body)).await;
    assert_eq!(s, 201, "{b}");
    b
}

async fn conversation(app: &TestApp, u: &User) -> String {
    let (s, b) = call(app, u, Method::POST, "/v1/conversations", Some(json!({"title": "t"}))).await;
    assert_eq!(s, 201, "{b}");
    b["id"].as_str().unwrap().to_string()
}

async fn say(app: &TestApp, u: &User, conv: &str, id: &str, role: &str, text: &str) {
    let (s, b) = call(
        app,
        u,
        Method::POST,
        &format!("/v1/conversations/{conv}/messages"),
        Some(json!({"id": id, "role": role, "parts": [{"type": "text", "text": text}]})),
    )
    .await;
    assert!(s == 200 || s == 201, "{s} {b}");
}

fn ids(v: &Value) -> Vec<String> {
    v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn memories_keep_provenance_history_and_owners() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "mem1@example.com").await;
    let b = sign_up(&app, "mem2@example.com").await;

    // Slots: a second name supersedes the first, linked both ways.
    let n1 = add(&app, &a, json!({"kind": "profile", "slot": "name", "text": "Ana"})).await;
    assert_eq!(n1["provenance"]["source"], "user");
    let n2 = add(&app, &a, json!({"kind": "profile", "slot": "name", "text": "Ana Maria"})).await;
    let (_, old) = call(&app, &a, Method::GET, &format!("/v1/memories/{}", n1["id"].as_str().unwrap()), None).await;
    assert_eq!(old["status"], "superseded");
    assert_eq!(old["superseded_by"], n2["id"]);
    assert!(old["valid_to"].is_string());
    let events: Vec<&str> = old["history"].as_array().unwrap().iter().map(|h| h["event"].as_str().unwrap()).collect();
    assert_eq!(events, vec!["added", "superseded"]);
    let (_, new) = call(&app, &a, Method::GET, &format!("/v1/memories/{}", n2["id"].as_str().unwrap()), None).await;
    assert_eq!(new["supersedes"][0]["id"], n1["id"]);

    // Bad input: stable codes, never a 500.
    for (body, status, code) in [
        (json!({"text": ""}), 422, "invalid_text"),
        (json!({"text": "x", "kind": "gossip"}), 422, "invalid_kind"),
        (json!({"text": "x", "confidence": 2}), 422, "invalid_confidence"),
        (json!({"text": "x", "slot": "no spaces"}), 422, "invalid_slot"),
        (json!({"text": "x", "metadata": [1]}), 422, "invalid_metadata"),
        (json!({"text": "My password is hunter2"}), 422, "contains_secret"),
        (json!({"text": "card 4111 1111 1111 1111"}), 422, "contains_secret"),
        (json!({"text": "key sk-proj-abcdefghijklmnopqrstuvwx"}), 422, "contains_secret"),
        (json!({"text": "Ana  Maria!"}), 409, "duplicate_memory"),
    ] {
        let (s, e) = call(&app, &a, Method::POST, "/v1/memories", Some(body.clone())).await;
        assert_eq!((s, e["error"]["code"].as_str().unwrap()), (status, code), "{body}: {e}");
    }

    // A correction supersedes with a new memory; the edit of a pin is in place.
    let cat = add(&app, &a, json!({"text": "The user has a cat named Miso", "metadata": {"k": 1}})).await;
    let cat_id = cat["id"].as_str().unwrap();
    let (s, fixed) = call(
        &app,
        &a,
        Method::PATCH,
        &format!("/v1/memories/{cat_id}"),
        Some(json!({"text": "The user has a dog named Miso"})),
    )
    .await;
    assert_eq!(s, 200, "{fixed}");
    assert_ne!(fixed["id"], cat["id"]);
    assert_eq!(fixed["supersedes"][0]["id"], cat["id"]);
    assert_eq!(fixed["metadata"]["k"], 1);
    let (s, e) = call(&app, &a, Method::PATCH, &format!("/v1/memories/{cat_id}"), Some(json!({"text": "again"}))).await;
    assert_eq!((s, e["error"]["code"].as_str().unwrap()), (409, "memory_ended"));
    let dog_id = fixed["id"].as_str().unwrap().to_string();
    let (s, pinned) =
        call(&app, &a, Method::PATCH, &format!("/v1/memories/{dog_id}"), Some(json!({"pinned": true}))).await;
    assert_eq!(s, 200);
    assert_eq!(pinned["id"].as_str().unwrap(), dog_id);
    assert_eq!(pinned["pinned"], true);
    assert_eq!(pinned["history"].as_array().unwrap().last().unwrap()["event"], "updated");

    // Invalidation ends validity and keeps the memory.
    let job = add(&app, &a, json!({"text": "The user works at Initech"})).await;
    let job_id = job["id"].as_str().unwrap();
    let (s, inv) = call(&app, &a, Method::POST, &format!("/v1/memories/{job_id}/invalidate"), Some(json!({}))).await;
    assert_eq!((s, inv["status"].as_str().unwrap()), (200, "invalidated"));
    let (s, _) = call(&app, &a, Method::POST, &format!("/v1/memories/{job_id}/invalidate"), Some(json!({}))).await;
    assert_eq!(s, 409);

    // Lists: active only by default; everything on request; filters.
    let (_, active) = call(&app, &a, Method::GET, "/v1/memories", None).await;
    let active = ids(&active);
    assert_eq!(active.len(), 2, "{active:?}");
    assert!(active.contains(&dog_id) && active.contains(&n2["id"].as_str().unwrap().to_string()));
    let (_, all) = call(&app, &a, Method::GET, "/v1/memories?include_superseded=true", None).await;
    assert_eq!(ids(&all).len(), 5);
    let (_, profile) = call(&app, &a, Method::GET, "/v1/memories?kind=profile&include_superseded=true", None).await;
    assert_eq!(ids(&profile).len(), 2);
    let (_, q) = call(&app, &a, Method::GET, "/v1/memories?q=dog", None).await;
    assert_eq!(ids(&q), vec![dog_id.clone()]);
    let (s, _) = call(&app, &a, Method::GET, "/v1/memories?kind=gossip", None).await;
    assert_eq!(s, 422);
    let (_, paged) = call(&app, &a, Method::GET, "/v1/memories?include_superseded=true&limit=2", None).await;
    let cursor = paged["next_cursor"].as_str().unwrap();
    let (_, rest) =
        call(&app, &a, Method::GET, &format!("/v1/memories?include_superseded=true&limit=10&cursor={cursor}"), None)
            .await;
    assert_eq!(ids(&paged).len() + ids(&rest).len(), 5);

    // Another user sees none of it, on every route.
    for (method, path, body) in [
        (Method::GET, format!("/v1/memories/{dog_id}"), None),
        (Method::PATCH, format!("/v1/memories/{dog_id}"), Some(json!({"pinned": false}))),
        (Method::POST, format!("/v1/memories/{dog_id}/invalidate"), Some(json!({}))),
        (Method::DELETE, format!("/v1/memories/{dog_id}"), None),
        (Method::GET, "/v1/memories/not-a-uuid".to_string(), None),
    ] {
        let (s, e) = call(&app, &b, method.clone(), &path, body).await;
        assert_eq!(s, 404, "{method} {path}: {e}");
    }
    let (_, theirs) = call(&app, &b, Method::GET, "/v1/memories?include_superseded=true", None).await;
    assert!(ids(&theirs).is_empty());
    let (_, found) = call(&app, &b, Method::POST, "/v1/memories/search", Some(json!({"query": "dog Miso"}))).await;
    assert!(found["data"].as_array().unwrap().is_empty(), "{found}");
    let (_, ctx) = call(&app, &b, Method::POST, "/v1/context", Some(json!({"query": "dog Miso"}))).await;
    assert!(!ctx["text"].as_str().unwrap().contains("Miso"), "{ctx}");
    let (_, exported) = call(&app, &b, Method::GET, "/v1/memories/export", None).await;
    assert!(exported["memories"].as_array().unwrap().is_empty());

    // The BM25 statistics follow every change: the active count, and each word's
    // document frequency, equal what a full count finds.
    let check_stats = |label: &'static str| {
        let pool = app.pool.clone();
        let user = a.id;
        async move {
            let (kept, fresh): (i64, i64) = sqlx::query_as(
                "SELECT coalesce((SELECT memories FROM memory_stats WHERE user_id = $1), 0), \
                        (SELECT count(*) FROM memories WHERE user_id = $1 AND status = 'active')",
            )
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(kept, fresh, "{label}: memory count");
            let wrong: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM memory_terms t WHERE t.user_id = $1 AND t.df <> \
                   (SELECT count(*) FROM memories m WHERE m.user_id = $1 AND m.status = 'active' \
                      AND m.tsv @@ kb_or_query(ARRAY[t.lexeme]))",
            )
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(wrong, 0, "{label}: document frequencies");
        }
    };
    check_stats("after supersede, correct, invalidate").await;

    // Export holds everything with history.
    let (s, exported) = call(&app, &a, Method::GET, "/v1/memories/export", None).await;
    assert_eq!(s, 200);
    assert_eq!(exported["memories"].as_array().unwrap().len(), 5);
    assert_eq!(exported["settings"]["extraction"], true);

    // Deletion: gone from the API, search, context and the table (vector included);
    // the history keeps the event without the text.
    let (s, found) = call(&app, &a, Method::POST, "/v1/memories/search", Some(json!({"query": "dog Miso"}))).await;
    assert_eq!(s, 200);
    assert_eq!(found["data"][0]["id"].as_str().unwrap(), dog_id);
    let (s, _) = call(&app, &a, Method::DELETE, &format!("/v1/memories/{dog_id}"), None).await;
    assert_eq!(s, 204);
    let (s, _) = call(&app, &a, Method::GET, &format!("/v1/memories/{dog_id}"), None).await;
    assert_eq!(s, 404);
    for mode in ["hybrid", "fulltext", "vector"] {
        let (_, found) =
            call(&app, &a, Method::POST, "/v1/memories/search", Some(json!({"query": "dog Miso", "mode": mode}))).await;
        assert!(!found.to_string().contains(&dog_id), "{mode}: {found}");
    }
    let (_, ctx) = call(&app, &a, Method::POST, "/v1/context", Some(json!({"query": "dog Miso"}))).await;
    assert!(!ctx["text"].as_str().unwrap().contains("dog"), "{ctx}");
    let uuid: uuid::Uuid = dog_id.parse().unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM memories WHERE id = $1")
        .bind(uuid)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    let texts: Vec<Option<String>> =
        sqlx::query_scalar("SELECT text FROM memory_history WHERE memory_id = $1 ORDER BY id")
            .bind(uuid)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(texts.iter().all(Option::is_none), "{texts:?}");
    let last: String =
        sqlx::query_scalar("SELECT event FROM memory_history WHERE memory_id = $1 ORDER BY id DESC LIMIT 1")
            .bind(uuid)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(last, "deleted");

    // Delete all needs confirmation.
    let (s, e) = call(&app, &a, Method::DELETE, "/v1/memories", None).await;
    assert_eq!((s, e["error"]["code"].as_str().unwrap()), (400, "confirmation_required"));
    let (s, d) = call(&app, &a, Method::DELETE, "/v1/memories?confirm=true", None).await;
    assert_eq!((s, d["deleted"].as_u64().unwrap()), (200, 4));
    let (_, all) = call(&app, &a, Method::GET, "/v1/memories?include_superseded=true", None).await;
    assert!(ids(&all).is_empty());
    check_stats("after delete all").await;

    // Without a model, extraction is off and says so; everything else worked.
    let conv = conversation(&app, &a).await;
    let (s, e) = call(&app, &a, Method::POST, "/v1/memory/extract", Some(json!({"conversation_id": conv}))).await;
    assert_eq!((s, e["error"]["code"].as_str().unwrap()), (409, "extraction_not_configured"));
}

#[tokio::test]
async fn memory_search_explains_each_signal() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "mem3@example.com").await;
    for t in [
        "The user is allergic to peanuts",
        "The user runs marathons in spring",
        "The user prefers answers in Portuguese",
        "The user's sister lives in Berlin",
    ] {
        add(&app, &a, json!({"text": t})).await;
    }
    add(&app, &a, json!({"text": "Always cite sources", "kind": "instruction"})).await;
    // The app's own writes (a service key acting for the user) say so.
    let (key, _) = carmenta::auth::service::create_service_key(&app.pool, "backend", true).await.unwrap();
    let (s, by_app) = app
        .call(Method::POST, "/v1/memories")
        .acting_for(&key, a.id)
        .json(&json!({"text": "The user signed up for the premium plan"}))
        .reply()
        .await;
    assert_eq!(s, 201, "{by_app}");
    assert_eq!(by_app["provenance"]["source"], "api");
    let (_, detail) =
        call(&app, &a, Method::GET, &format!("/v1/memories/{}", by_app["id"].as_str().unwrap()), None).await;
    assert_eq!(detail["history"][0]["actor"], "app");
    let (s, r) = call(&app, &a, Method::POST, "/v1/memories/search", Some(json!({"query": "peanuts allergy"}))).await;
    assert_eq!(s, 200, "{r}");
    let top = &r["data"][0];
    assert_eq!(top["text"], "The user is allergic to peanuts");
    assert_eq!(top["scores"]["fulltext_rank"], 1);
    assert!(top["scores"]["vector_rank"].is_number(), "{top}");
    assert!(top["scores"]["fused"].as_f64().unwrap() > 0.0);
    assert_eq!(r["weights"].as_array().unwrap().len(), 3);
    let (_, v) =
        call(&app, &a, Method::POST, "/v1/memories/search", Some(json!({"query": "peanut", "mode": "vector"}))).await;
    assert!(v["data"][0]["scores"]["fulltext_rank"].is_null());
    let (_, k) = call(
        &app,
        &a,
        Method::POST,
        "/v1/memories/search",
        Some(json!({"query": "cite sources", "kinds": ["fact"], "mode": "fulltext"})),
    )
    .await;
    assert!(k["data"].as_array().unwrap().is_empty(), "{k}");
    for (body, status) in [
        (json!({"query": ""}), 422),
        (json!({"query": "x", "mode": "magic"}), 422),
        (json!({"query": "x", "limit": 0}), 400),
        (json!({"query": "x", "weights": [1, -1, 0]}), 422),
        (json!({"query": "x", "kinds": ["nope"]}), 422),
        (json!({"query": "x", "surprise": 1}), 422),
    ] {
        let (s, e) = call(&app, &a, Method::POST, "/v1/memories/search", Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {e}");
    }
}

/// A request the model server saw: its Authorization header and body.
type Seen = (Option<String>, Value);

/// A local server speaking the chat-completions protocol: answers from a script
/// (status, content), `{"operations": []}` once the script is out; every request
/// recorded.
#[derive(Clone, Default)]
struct ScriptedModel {
    script: Arc<Mutex<VecDeque<(u16, String)>>>,
    requests: Arc<Mutex<Vec<Seen>>>,
}

impl ScriptedModel {
    fn push(&self, status: u16, content: &str) {
        self.script.lock().unwrap().push_back((status, content.to_string()));
    }

    fn requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }

    async fn serve(&self) -> String {
        use axum::response::IntoResponse;
        use axum::routing::post;
        let me = self.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            post(move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
                let me = me.clone();
                async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(String::from);
                    me.requests.lock().unwrap().push((auth, body.clone()));
                    let (status, content) =
                        me.script.lock().unwrap().pop_front().unwrap_or((200, "{\"operations\": []}".into()));
                    if status != 200 {
                        let code = axum::http::StatusCode::from_u16(status).unwrap();
                        return (code, [("retry-after", "0")], axum::Json(json!({"error": {"message": "scripted"}})))
                            .into_response();
                    }
                    axum::Json(json!({
                        "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}]
                    }))
                    .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/v1")
    }
}

async fn extractions(app: &TestApp, u: &User, conv: &str) -> Vec<Value> {
    let (_, b) = call(app, u, Method::GET, &format!("/v1/memory/extractions?conversation_id={conv}"), None).await;
    b["data"].as_array().unwrap().clone()
}

async fn wait_runs(app: &TestApp, u: &User, conv: &str, finished: usize) -> Vec<Value> {
    let ok = eventually(Duration::from_secs(40), || async {
        let runs = extractions(app, u, conv).await;
        runs.iter().filter(|r| r["status"] != "running").count() >= finished
    })
    .await;
    let runs = extractions(app, u, conv).await;
    assert!(ok, "{finished} finished extraction runs expected: {runs:?}");
    runs
}

async fn active(app: &TestApp, u: &User) -> Vec<Value> {
    let (_, b) = call(app, u, Method::GET, "/v1/memories", None).await;
    b["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn extraction_through_a_chat_completions_server() {
    let model = ScriptedModel::default();
    let url = model.serve().await;
    let app = TestApp::builder()
        .config(|c| {
            c.memory.llm = Some(carmenta::config::LlmConfig {
                url: url.parse().unwrap(),
                model: "scripted-1".into(),
                key: Some(carmenta::config::Secret::new("llm-key".to_string())),
                timeout: Duration::from_secs(5),
            });
            c.memory.extract_after = 2;
            c.memory.idle = Duration::from_secs(3600);
            c.memory.scan_interval = Duration::from_secs(1);
        })
        .spawn()
        .await;
    let runner = carmenta::background::start(&app.state).await.unwrap();
    let a = sign_up(&app, "mem4@example.com").await;
    let b = sign_up(&app, "mem5@example.com").await;
    let conv = conversation(&app, &a).await;

    // Run 1: a 429 and a 500 first (retried), then fenced JSON in prose: one fact
    // with a quote, one secret (refused), one duplicate within the answer.
    model.push(429, "");
    model.push(500, "");
    model.push(
        200,
        r#"Here is what I found:
```json
{"operations": [
  {"op": "ADD", "id": null, "kind": "profile", "slot": "location", "text": "The user lives in Porto.",
   "quote": "I live in Porto", "message_ids": ["m1"], "confidence": 0.9},
  {"op": "ADD", "id": null, "kind": "fact", "slot": null, "text": "The user's password is hunter2.",
   "quote": null, "message_ids": ["m1"], "confidence": 1},
  {"op": "ADD", "id": null, "kind": "profile", "slot": "location", "text": "the user lives in porto",
   "quote": null, "message_ids": [], "confidence": 0.5}
]}
```
Hope this helps!"#,
    );
    say(&app, &a, &conv, "m-1", "user", "Hi! I'm Ana and I live in Porto. My password is hunter2, don't tell.").await;
    say(&app, &a, &conv, "m-2", "assistant", "Nice to meet you, Ana.").await;
    let runs = wait_runs(&app, &a, &conv, 1).await;
    assert_eq!(runs[0]["status"], "done", "{runs:?}");
    assert_eq!(
        (runs[0]["added"].as_i64(), runs[0]["rejected"].as_i64(), runs[0]["unchanged"].as_i64()),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(runs[0]["messages"], 2);
    let mems = active(&app, &a).await;
    assert_eq!(mems.len(), 1, "{mems:?}");
    let porto = &mems[0];
    assert_eq!(porto["text"], "The user lives in Porto.");
    assert_eq!(porto["slot"], "location");
    assert_eq!(porto["provenance"]["source"], "conversation");
    assert_eq!(porto["provenance"]["conversation_id"].as_str().unwrap(), conv);
    assert_eq!(porto["provenance"]["message_ids"], json!(["m-1"]));
    assert_eq!(porto["provenance"]["quote"], "I live in Porto");
    let reqs = model.requests();
    assert_eq!(reqs.len(), 3, "429 and 500 retried");
    let (auth, body) = &reqs[2];
    assert_eq!(auth.as_deref(), Some("Bearer llm-key"));
    assert_eq!(body["model"], "scripted-1");
    assert_eq!(body["response_format"]["type"], "json_schema");
    let prompt = body["messages"][1]["content"].as_str().unwrap();
    assert!(prompt.contains("I live in Porto") && prompt.contains("[m1]"), "{prompt}");
    assert!(!prompt.contains("hunter2") && prompt.contains("[redacted password]"), "secrets never leave: {prompt}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM memories WHERE text ILIKE '%hunter2%'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    // Run 2: near-JSON (single quotes, bare keys, trailing commas) updating memory
    // "1" (the model saw it by its short id): the old one is superseded, linked.
    model.push(
        200,
        "{operations: [{'op': 'UPDATE', 'id': '1', 'kind': 'profile', 'slot': 'location', \
         'text': 'The user lives in Lisbon since November 2026.', 'quote': 'moved to Lisbon', \
         'message_ids': ['m1'], 'confidence': 0.9,},],}",
    );
    say(&app, &a, &conv, "m-3", "user", "Big news: I moved to Lisbon last week.").await;
    say(&app, &a, &conv, "m-4", "assistant", "Congratulations!").await;
    let runs = wait_runs(&app, &a, &conv, 2).await;
    assert_eq!(runs[0]["status"], "done", "{runs:?}");
    assert_eq!(runs[0]["updated"], 1);
    let prompt = model.requests().last().unwrap().1["messages"][1]["content"].as_str().unwrap().to_string();
    assert!(prompt.contains("[1] (profile) The user lives in Porto."), "{prompt}");
    let mems = active(&app, &a).await;
    assert_eq!(mems.len(), 1);
    let lisbon = mems[0].clone();
    assert_eq!(lisbon["text"], "The user lives in Lisbon since November 2026.");
    let (_, why) = call(&app, &a, Method::GET, &format!("/v1/memories/{}", lisbon["id"].as_str().unwrap()), None).await;
    assert_eq!(why["supersedes"][0]["id"], porto["id"]);
    assert_eq!(why["history"][0]["actor"], "extractor");
    assert_eq!(why["history"][0]["extraction_id"], runs[0]["id"]);
    assert_eq!(why["provenance"]["message_ids"], json!(["m-3"]));

    // Run 3: a contradiction invalidates (nothing deleted).
    let cat = add(&app, &a, json!({"text": "The user has a cat"})).await;
    model.push(
        200,
        r#"{"operations": [{"op": "INVALIDATE", "id": "1", "kind": null, "slot": null, "text": null,
            "quote": "I gave my cat away", "message_ids": ["m1"], "confidence": null}]}"#,
    );
    say(&app, &a, &conv, "m-5", "user", "Sadly I gave my cat away; my new flat does not allow pets.").await;
    say(&app, &a, &conv, "m-6", "assistant", "I'm sorry to hear that.").await;
    let runs = wait_runs(&app, &a, &conv, 3).await;
    assert_eq!((runs[0]["status"].as_str(), runs[0]["invalidated"].as_i64()), (Some("done"), Some(1)), "{runs:?}");
    let (_, c) = call(&app, &a, Method::GET, &format!("/v1/memories/{}", cat["id"].as_str().unwrap()), None).await;
    assert_eq!(c["status"], "invalidated", "{c}");
    assert!(c["valid_to"].is_string());

    // Run 4: garbage three times: a visible failure per attempt, then the messages
    // are passed over (not retried forever).
    for _ in 0..3 {
        model.push(200, "I am sorry, I cannot help with that.");
    }
    say(&app, &a, &conv, "m-7", "user", "I love hiking in the Alps.").await;
    say(&app, &a, &conv, "m-8", "assistant", "Sounds lovely.").await;
    let runs = wait_runs(&app, &a, &conv, 6).await;
    let failed: Vec<&Value> = runs.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 3, "{runs:?}");
    assert!(failed.iter().all(|r| r["error_code"] == "unparseable_answer" && r["error"].is_string()));
    let pending: i32 = sqlx::query_scalar("SELECT pending FROM memory_conversations WHERE conversation_id = $1::uuid")
        .bind(&conv)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);

    // Opt-outs: a conversation not to be remembered, and a user who turned it off.
    let (s, _) =
        call(&app, &a, Method::PUT, &format!("/v1/memory/conversations/{conv}"), Some(json!({"remember": false})))
            .await;
    assert_eq!(s, 200);
    let (s, e) = call(&app, &a, Method::POST, "/v1/memory/extract", Some(json!({"conversation_id": conv}))).await;
    assert_eq!((s, e["error"]["code"].as_str().unwrap()), (409, "not_remembered"));
    let before = model.requests().len();
    say(&app, &a, &conv, "m-9", "user", "My daughter is called Rita.").await;
    say(&app, &a, &conv, "m-10", "assistant", "Lovely name.").await;
    let conv2 = conversation(&app, &a).await;
    let (s, _) = call(&app, &a, Method::PUT, "/v1/memory/settings", Some(json!({"extraction": false}))).await;
    assert_eq!(s, 200);
    say(&app, &a, &conv2, "n-1", "user", "My son is called Tomas.").await;
    say(&app, &a, &conv2, "n-2", "assistant", "Nice.").await;
    let (s, e) = call(&app, &a, Method::POST, "/v1/memory/extract", Some(json!({"conversation_id": conv2}))).await;
    assert_eq!((s, e["error"]["code"].as_str().unwrap()), (409, "extraction_disabled"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(model.requests().len(), before, "nothing sent to the model after opting out");

    // Back on: an explicit extraction runs now.
    let (s, _) = call(&app, &a, Method::PUT, "/v1/memory/settings", Some(json!({"extraction": true}))).await;
    assert_eq!(s, 200);
    let (s, q) = call(&app, &a, Method::POST, "/v1/memory/extract", Some(json!({"conversation_id": conv2}))).await;
    assert_eq!(s, 202, "{q}");
    wait_runs(&app, &a, &conv2, 1).await;

    // Another user: 404 on the conversation routes; nothing of A's in their lists.
    for (method, path, body) in [
        (Method::GET, format!("/v1/memory/conversations/{conv}"), None),
        (Method::PUT, format!("/v1/memory/conversations/{conv}"), Some(json!({"remember": true}))),
        (Method::POST, "/v1/memory/extract".to_string(), Some(json!({"conversation_id": conv}))),
    ] {
        let (s, e) = call(&app, &b, method.clone(), &path, body).await;
        assert_eq!(s, 404, "{method} {path}: {e}");
    }
    let (_, theirs) =
        call(&app, &b, Method::GET, &format!("/v1/memory/extractions?conversation_id={conv}"), None).await;
    assert!(theirs["data"].as_array().unwrap().is_empty());
    runner.shutdown().await;
}

#[tokio::test]
async fn context_fits_the_budget_and_says_what_it_left_out() {
    let app = TestApp::spawn().await;
    let runner = carmenta::background::start(&app.state).await.unwrap();
    let a = sign_up(&app, "mem6@example.com").await;
    let b = sign_up(&app, "mem7@example.com").await;
    add(&app, &a, json!({"kind": "profile", "slot": "name", "text": "Ana"})).await;
    add(&app, &a, json!({"kind": "instruction", "text": "Answer briefly"})).await;
    add(&app, &a, json!({"text": "The user is training for the Lisbon marathon in October"})).await;
    add(&app, &a, json!({"text": "The user dislikes cilantro"})).await;
    let (s, _) = app
        .post_as(
            "/v1/knowledge/documents",
            &a.jwt,
            &json!({"title": "Marathon plan", "body": "# Week 1\nRun 20 km on Sunday at an easy pace before the marathon."}),
        )
        .await;
    assert_eq!(s, 201);
    let conv = conversation(&app, &a).await;
    for i in 0..12 {
        say(&app, &a, &conv, &format!("c{i}"), "user", &format!("Filler message number {i} about the weather")).await;
    }
    say(&app, &a, &conv, "last", "user", "How should I train for the marathon this week?").await;

    let (s, ctx) =
        call(&app, &a, Method::POST, "/v1/context", Some(json!({"conversation_id": conv, "budget_tokens": 4000})))
            .await;
    assert_eq!(s, 200, "{ctx}");
    assert_eq!(ctx["query"], "How should I train for the marathon this week?");
    assert!(ctx["tokens"].as_u64().unwrap() <= 4000);
    let names: Vec<&str> = ctx["sections"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["profile", "memories", "knowledge", "messages"]);
    let text = ctx["text"].as_str().unwrap();
    assert!(text.contains("- name: Ana") && text.contains("Instruction: Answer briefly"), "{text}");
    assert!(text.contains("Lisbon marathon") && text.contains("Run 20 km"), "{text}");
    let memories = &ctx["sections"][1]["items"];
    assert!(memories[0]["text"].as_str().unwrap().contains("marathon"), "{memories}");
    assert!(memories[0]["scores"]["fused"].is_number());
    assert!(
        ctx["omitted"].as_array().unwrap().iter().any(|o| o["reason"] == "duplicate"),
        "profile memories are not repeated"
    );
    let msgs = ctx["sections"][3]["items"].as_array().unwrap();
    assert_eq!(msgs.last().unwrap()["id"], "last", "newest last in reading order");
    // Section tokens add up to at most the whole.
    let sum: u64 = ctx["sections"].as_array().unwrap().iter().map(|s| s["tokens"].as_u64().unwrap()).sum();
    assert!(sum <= ctx["tokens"].as_u64().unwrap() + 8, "{sum} vs {}", ctx["tokens"]);

    // Deterministic.
    let (_, again) =
        call(&app, &a, Method::POST, "/v1/context", Some(json!({"conversation_id": conv, "budget_tokens": 4000})))
            .await;
    assert_eq!(again, ctx);

    // A small budget: within it, newest messages kept, the rest listed as omitted.
    let (_, small) = call(
        &app,
        &a,
        Method::POST,
        "/v1/context",
        Some(json!({"conversation_id": conv, "budget_tokens": 120, "model": "gpt-4"})),
    )
    .await;
    assert!(small["tokens"].as_u64().unwrap() <= 120, "{small}");
    let counted = tiktoken_rs::cl100k_base().unwrap().encode_ordinary(small["text"].as_str().unwrap()).len();
    assert_eq!(counted as u64, small["tokens"].as_u64().unwrap(), "counted with gpt-4's tokenizer");
    let omitted = small["omitted"].as_array().unwrap();
    assert!(omitted.iter().any(|o| o["section"] == "messages" && o["reason"] == "budget"), "{small}");
    let kept: Vec<&str> =
        small["sections"][3]["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    if let Some(last) = kept.last() {
        assert_eq!(*last, "last");
    }

    // Sections on request; bad input.
    let (_, only) =
        call(&app, &a, Method::POST, "/v1/context", Some(json!({"query": "cilantro", "sections": ["memories"]}))).await;
    assert_eq!(only["sections"].as_array().unwrap().len(), 1);
    assert!(only["text"].as_str().unwrap().contains("cilantro"));
    for (body, status, code) in [
        (json!({"budget_tokens": 10}), 422, "invalid_budget"),
        (json!({"model": "no-such-model"}), 422, "unknown_model"),
        (json!({"sections": ["gossip"]}), 422, "invalid_sections"),
        (json!({"sections": ["profile", "profile"]}), 422, "invalid_sections"),
        (json!({"query": ""}), 422, "invalid_query"),
    ] {
        let (s, e) = call(&app, &a, Method::POST, "/v1/context", Some(body.clone())).await;
        assert_eq!((s, e["error"]["code"].as_str().unwrap_or("")), (status, code), "{body}: {e}");
    }
    // Another user's conversation is a 404; their context holds none of A's.
    let (s, _) = call(&app, &b, Method::POST, "/v1/context", Some(json!({"conversation_id": conv}))).await;
    assert_eq!(s, 404);
    let (_, theirs) =
        call(&app, &b, Method::POST, "/v1/context", Some(json!({"query": "marathon cilantro Ana"}))).await;
    let t = theirs["text"].as_str().unwrap();
    assert!(!t.contains("marathon") && !t.contains("Ana"), "{t}");
    runner.shutdown().await;
}

#[tokio::test]
async fn past_messages_are_recalled_by_both_signals_with_filters() {
    let app = TestApp::spawn().await;
    let runner = carmenta::background::start(&app.state).await.unwrap();
    let a = sign_up(&app, "mem8@example.com").await;
    let b = sign_up(&app, "mem9@example.com").await;
    let c1 = conversation(&app, &a).await;
    let c2 = conversation(&app, &a).await;
    say(&app, &a, &c1, "x1", "user", "We booked flights to Tokyo for the cherry blossom season").await;
    say(&app, &a, &c1, "x2", "assistant", "Great, Tokyo in spring is beautiful").await;
    say(&app, &a, &c2, "x3", "user", "Remind me to renew my passport before the trip").await;
    // Vectors come from the embed job the messages queued.
    let ok = eventually(Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE owner_id = $1 AND embedding IS NOT NULL")
            .bind(a.id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        n == 3
    })
    .await;
    assert!(ok, "messages embedded");
    let (s, r) = call(&app, &a, Method::GET, "/v1/search/messages?q=Tokyo%20flights", None).await;
    assert_eq!(s, 200, "{r}");
    let top = &r["data"][0];
    assert_eq!(top["message_id"], "x1");
    assert_eq!(top["scores"]["fulltext_rank"], 1);
    assert!(top["scores"]["vector_rank"].is_number(), "{top}");
    assert!(top["headline"].as_str().unwrap().contains("<mark>"));
    // Vector alone finds a message sharing no stemmed word with the query's spelling.
    let (_, v) = call(&app, &a, Method::GET, "/v1/search/messages?q=passports%20renewal&mode=vector", None).await;
    assert_eq!(v["data"][0]["message_id"], "x3", "{v}");
    // Filters: conversation, role, time.
    let (_, f) = call(&app, &a, Method::GET, &format!("/v1/search/messages?q=Tokyo&conversation_id={c2}"), None).await;
    assert!(f["data"].as_array().unwrap().iter().all(|h| h["conversation_id"] == c2.as_str()), "{f}");
    let (_, f) = call(&app, &a, Method::GET, "/v1/search/messages?q=Tokyo&role=assistant&mode=fulltext", None).await;
    assert_eq!(ids_of(&f), vec!["x2"]);
    let (_, f) = call(&app, &a, Method::GET, "/v1/search/messages?q=Tokyo&after=2099-01-01T00:00:00Z", None).await;
    assert!(f["data"].as_array().unwrap().is_empty());
    let (_, f) =
        call(&app, &a, Method::GET, "/v1/search/messages?q=Tokyo&before=2099-01-01T00:00:00Z&mode=fulltext", None)
            .await;
    assert_eq!(ids_of(&f).len(), 2);
    for q in ["q=Tokyo&mode=magic", "q=Tokyo&role=robot", "q=", "q=Tokyo&after=yesterday"] {
        let (s, _) = call(&app, &a, Method::GET, &format!("/v1/search/messages?{q}"), None).await;
        assert_eq!(s, 400, "{q}");
    }
    // Another user finds none of it.
    let (_, theirs) = call(&app, &b, Method::GET, "/v1/search/messages?q=Tokyo%20passport", None).await;
    assert!(theirs["data"].as_array().unwrap().is_empty(), "{theirs}");
    runner.shutdown().await;
}

fn ids_of(v: &Value) -> Vec<String> {
    v["data"].as_array().unwrap().iter().map(|h| h["message_id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn bm25_pruning_returns_the_exhaustive_top() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "mem10@example.com").await;
    // "alpha" in every memory, "beta" in half, "gamma" in a tenth, one rare word each.
    for i in 0..120 {
        let mut words = vec!["alpha".to_string()];
        if i % 2 == 0 {
            words.push("beta".into());
        }
        if i % 10 == 0 {
            words.push("gamma".into());
        }
        words.push(format!("rare{i}x"));
        add(&app, &a, json!({"text": format!("The user {}", words.join(" "))})).await;
    }
    let m = &app.state.memory;
    let filter = carmenta::memory::db::SearchFilter::default();
    for query in ["alpha beta gamma rare40x", "alpha beta", "gamma alpha", "rare7x alpha", "alpha"] {
        for limit in [5, 10, 50] {
            let pruned = carmenta::memory::service::bm25(m, a.id, query, &filter, limit).await.unwrap();
            let stats = carmenta::memory::db::term_stats(&app.pool, a.id, query).await.unwrap();
            let n = stats.docs.max(1) as f64;
            let weighted: Vec<(String, f64)> = stats
                .terms
                .iter()
                .map(|(l, df)| (l.clone(), (1.0 + (n - *df as f64 + 0.5) / (*df as f64 + 0.5)).ln()))
                .collect();
            let all: Vec<String> = stats.terms.iter().map(|t| t.0.clone()).collect();
            let avg = (stats.total_len as f64 / n).max(1.0);
            let full =
                carmenta::memory::db::bm25_over(&app.pool, a.id, &weighted, &all, avg, &filter, limit).await.unwrap();
            assert_eq!(pruned.len(), full.len(), "{query} {limit}");
            for (p, f) in pruned.iter().zip(&full) {
                assert!((p.1 - f.1).abs() < 1e-9, "{query} {limit}: {pruned:?} vs {full:?}");
            }
            assert_eq!(pruned.iter().map(|p| p.0).collect::<Vec<_>>(), full.iter().map(|p| p.0).collect::<Vec<_>>());
        }
    }
}

#[tokio::test]
async fn a_quiet_conversation_is_extracted_after_the_idle_time() {
    let model = ScriptedModel::default();
    let url = model.serve().await;
    model.push(
        200,
        r#"{"operations": [{"op": "ADD", "id": null, "kind": "preference", "slot": null,
            "text": "The user prefers tea to coffee.", "quote": "I prefer tea", "message_ids": ["m1"], "confidence": 0.9}]}"#,
    );
    let app = TestApp::builder()
        .config(|c| {
            c.memory.llm = Some(carmenta::config::LlmConfig {
                url: url.parse().unwrap(),
                model: "scripted-2".into(),
                key: None,
                timeout: Duration::from_secs(5),
            });
            c.memory.extract_after = 100;
            c.memory.idle = Duration::from_secs(1);
            c.memory.scan_interval = Duration::from_secs(1);
        })
        .spawn()
        .await;
    let runner = carmenta::background::start(&app.state).await.unwrap();
    let a = sign_up(&app, "mem11@example.com").await;
    let conv = conversation(&app, &a).await;
    say(&app, &a, &conv, "q-1", "user", "By the way, I prefer tea over coffee.").await;
    let runs = wait_runs(&app, &a, &conv, 1).await;
    assert_eq!(runs[0]["status"], "done", "{runs:?}");
    let mems = active(&app, &a).await;
    assert_eq!(mems[0]["kind"], "preference");
    assert_eq!(mems[0]["provenance"]["quote"], "I prefer tea");
    assert!(model.requests()[0].0.is_none(), "no key configured, none sent");
    runner.shutdown().await;
}
