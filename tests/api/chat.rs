//! Chat: conversations, lossless UIMessage round trips (AI SDK v5 and v6 part types,
//! checked against the real `ai` package's type definitions), idempotent appends,
//! paging both ways, truncation, feedback, search, visibility and ownership.

use serde_json::{Value, json};

use crate::harness::{TestApp, User, envelope, sign_up};
use reqwest::Method;

async fn create(app: &TestApp, user: &User, body: Value) -> Value {
    let (status, body) = app.post_as("/v1/conversations", &user.jwt, &body).await;
    assert_eq!(status, 201, "{body}");
    body
}

async fn append(app: &TestApp, user: &User, conv: &str, body: &Value) -> reqwest::Response {
    app.call(Method::POST, &format!("/v1/conversations/{conv}/messages")).by(&user.jwt).json(body).send().await
}

async fn list(app: &TestApp, token: Option<&str>, conv: &str, query: &str) -> reqwest::Response {
    let mut rb = app.client.get(app.url(&format!("/v1/conversations/{conv}/messages{query}")));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    rb.send().await.unwrap()
}

fn text_message(id: &str, text: &str) -> Value {
    json!({"id": id, "role": "user", "parts": [{"type": "text", "text": text}]})
}

#[tokio::test]
async fn fixtures_round_trip_losslessly() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "chat1@example.com").await;
    for (file, dts) in [("ui-messages-v5.json", "ai5"), ("ui-messages-v6.json", "ai6")] {
        let fixtures: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap(),
        )
        .unwrap();
        // Every part type and tool state in the fixtures is one the real package defines.
        let types = std::fs::read_to_string(format!(
            "{}/tests/node/node_modules/{dts}/dist/index.d.ts",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("tests/node/node_modules (run scripts/bootstrap)");
        for m in fixtures.as_array().unwrap() {
            for p in m["parts"].as_array().unwrap() {
                let t = p["type"].as_str().unwrap();
                let known = if t.starts_with("tool-") {
                    types.contains("type: `tool-${")
                } else if t.starts_with("data-") {
                    types.contains("type: `data-${")
                } else {
                    types.contains(&format!("type: '{t}'"))
                };
                assert!(known || t == "future-part-type", "{t} is not a part type of {dts}");
                if let Some(state) = p.get("state").and_then(|s| s.as_str()) {
                    assert!(types.contains(&format!("'{state}'")), "state {state} not in {dts}");
                }
            }
        }
        let conv = create(&app, &u, json!({"title": file})).await;
        let id = conv["id"].as_str().unwrap();
        let r = append(&app, &u, id, &json!({"messages": fixtures})).await;
        assert_eq!(r.status(), 201);
        let got: Value = list(&app, Some(&u.jwt), id, "").await.json().await.unwrap();
        let got = got["data"].as_array().unwrap();
        let want = fixtures.as_array().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["id"], w["id"]);
            assert_eq!(g["role"], w["role"]);
            assert_eq!(g["parts"], w["parts"], "parts of {} changed in storage", w["id"]);
            assert_eq!(g.get("metadata"), w.get("metadata"), "metadata of {}", w["id"]);
        }
    }
}

#[tokio::test]
async fn conversations_crud_paging_and_visibility() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "chat2a@example.com").await;
    let b = sign_up(&app, "chat2b@example.com").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let c = create(&app, &a, json!({"title": format!("chat {i}")})).await;
        assert_eq!(c["visibility"], "private");
        ids.push(c["id"].as_str().unwrap().to_string());
    }
    // A client-chosen id; reusing it conflicts.
    let fixed = uuid::Uuid::new_v4().to_string();
    create(&app, &a, json!({"id": fixed})).await;
    let r = app.call(Method::POST, "/v1/conversations").by(&a.jwt).json(&json!({"id": fixed})).send().await;
    assert_eq!(envelope(r).await.1, "conversation_exists");
    ids.push(fixed.clone());

    // Activity moves a conversation to the top.
    append(&app, &a, &ids[0], &text_message("m0", "hello")).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/conversations?limit=2&cursor={c}"),
            None => "/v1/conversations?limit=2".to_string(),
        };
        let (status, page) = app.get_as(&q, &a.jwt).await;
        assert_eq!(status, 200, "{page}");
        for c in page["data"].as_array().unwrap() {
            seen.push(c["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6, "every conversation exactly once: {seen:?}");
    assert_eq!(seen[0], ids[0], "newest activity first");
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 6);

    // Rename and archive; archived ones leave the default list.
    let r = app
        .call(Method::PATCH, &format!("/v1/conversations/{}", ids[1]))
        .by(&a.jwt)
        .json(&json!({"title": "renamed", "archived": true}))
        .send()
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["title"], "renamed");
    let (status, active) = app.get_as("/v1/conversations", &a.jwt).await;
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["data"].as_array().unwrap().len(), 5);
    let (status, archived) = app.get_as("/v1/conversations?archived=true", &a.jwt).await;
    assert_eq!(status, 200, "{archived}");
    assert_eq!(archived["data"][0]["id"], ids[1].as_str());

    // Another user: not found everywhere, and an empty list.
    let conv = &ids[0];
    let paths = [
        ("GET", format!("/v1/conversations/{conv}")),
        ("PATCH", format!("/v1/conversations/{conv}")),
        ("DELETE", format!("/v1/conversations/{conv}")),
        ("GET", format!("/v1/conversations/{conv}/messages")),
        ("POST", format!("/v1/conversations/{conv}/messages")),
        ("DELETE", format!("/v1/conversations/{conv}/messages/m0")),
        ("DELETE", format!("/v1/conversations/{conv}/messages?after=m0")),
        ("PUT", format!("/v1/conversations/{conv}/messages/m0/feedback")),
    ];
    for (method, path) in &paths {
        let body = match *method {
            "POST" => text_message("b1", "intrude"),
            "PUT" => json!({"value": "down"}),
            "PATCH" => json!({"title": "mine now"}),
            _ => json!({}),
        };
        let rb = app.client.request(method.parse().unwrap(), app.url(path)).bearer_auth(&b.jwt);
        let rb = if matches!(*method, "POST" | "PUT" | "PATCH") { rb.json(&body) } else { rb };
        let (s, code, _, _) = envelope(rb.send().await.unwrap()).await;
        assert_eq!((s, code.as_str()), (404, "not_found"), "{method} {path}");
    }
    let (status, theirs) = app.get_as("/v1/conversations", &b.jwt).await;
    assert_eq!(status, 200, "{theirs}");
    assert!(theirs["data"].as_array().unwrap().is_empty());
    // Unauthenticated: private is not found.
    assert_eq!(app.get(&format!("/v1/conversations/{conv}")).await.status(), 404);

    // Public: read-only to anyone with the id.
    app.call(Method::PATCH, &format!("/v1/conversations/{conv}"))
        .by(&a.jwt)
        .json(&json!({"visibility": "public"}))
        .send()
        .await;
    let (status, v) = app.get_as(&format!("/v1/conversations/{conv}"), &b.jwt).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["read_only"], true);
    let anon: Value = list(&app, None, conv, "").await.json().await.unwrap();
    assert_eq!(anon["data"][0]["id"], "m0");
    let r = append(&app, &b, conv, &text_message("b2", "still no")).await;
    assert_eq!(r.status(), 404, "public is read-only");
    assert_eq!(app.patch_as(&format!("/v1/conversations/{conv}"), &b.jwt, &json!({"title": "x"})).await.0, 404);

    // Delete cascades to messages.
    assert_eq!(app.delete_as(&format!("/v1/conversations/{conv}"), &a.jwt).await.0, 204);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&app.pool).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn appends_are_idempotent_and_pages_walk_both_ways() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "chat3@example.com").await;
    let c = create(&app, &u, json!({})).await;
    let conv = c["id"].as_str().unwrap();
    let msgs: Vec<Value> =
        (0..25).map(|i| text_message(&format!("msg-{i:02}"), &format!("message number {i}"))).collect();
    let r = append(&app, &u, conv, &json!({"messages": msgs})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["created"], 25);
    // The SDK resends whole messages: same content is a no-op (200), new content replaces.
    let r = append(&app, &u, conv, &msgs[3]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["unchanged"], 1);
    let r = append(&app, &u, conv, &text_message("msg-03", "edited text")).await;
    assert_eq!(r.json::<Value>().await.unwrap()["replaced"], 1);

    // Latest page by default, chronological within the page.
    let page: Value = list(&app, Some(&u.jwt), conv, "?limit=10").await.json().await.unwrap();
    let ids: Vec<&str> = page["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.first(), Some(&"msg-15"));
    assert_eq!(ids.last(), Some(&"msg-24"));
    // Walk backwards to the start.
    let mut all: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    let mut cursor = page["next_cursor"].as_str().map(str::to_string);
    while let Some(c) = cursor {
        let p: Value = list(&app, Some(&u.jwt), conv, &format!("?limit=10&before={c}")).await.json().await.unwrap();
        let mut older: Vec<String> =
            p["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
        older.append(&mut all);
        all = older;
        cursor = p["next_cursor"].as_str().map(str::to_string);
    }
    let want: Vec<String> = (0..25).map(|i| format!("msg-{i:02}")).collect();
    assert_eq!(all, want);
    // And forwards from the first message.
    let everything: Value = list(&app, Some(&u.jwt), conv, "?limit=100").await.json().await.unwrap();
    assert!(everything["next_cursor"].is_null());
    let mut fwd = Vec::new();
    let mut after = everything["before_cursor"].as_str().map(str::to_string);
    while let Some(a) = after {
        let p: Value = list(&app, Some(&u.jwt), conv, &format!("?limit=6&after={a}")).await.json().await.unwrap();
        for m in p["data"].as_array().unwrap() {
            fwd.push(m["id"].as_str().unwrap().to_string());
        }
        after = p["next_cursor"].as_str().map(str::to_string);
    }
    assert_eq!(fwd, want[1..].to_vec());

    // Truncate after a message (regenerate), and from a message (edit).
    let r =
        app.call(Method::DELETE, &format!("/v1/conversations/{conv}/messages?after=msg-19")).by(&u.jwt).send().await;
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], 5);
    let r = app.call(Method::DELETE, &format!("/v1/conversations/{conv}/messages?from=msg-18")).by(&u.jwt).send().await;
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], 2);
    assert_eq!(app.delete_as(&format!("/v1/conversations/{conv}/messages/msg-00"), &u.jwt).await.0, 204);
    assert_eq!(app.delete_as(&format!("/v1/conversations/{conv}/messages/msg-00"), &u.jwt).await.0, 404);
    let page: Value = list(&app, Some(&u.jwt), conv, "?limit=100").await.json().await.unwrap();
    let ids: Vec<&str> = page["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 17);
    assert_eq!((ids[0], ids[16]), ("msg-01", "msg-17"));
}

#[tokio::test]
async fn feedback_search_and_bad_input() {
    let app = TestApp::builder().config(|c| c.chat_max_message_bytes = 2048).spawn().await;
    let u = sign_up(&app, "chat4@example.com").await;
    let other = sign_up(&app, "chat4b@example.com").await;
    let c1 = create(&app, &u, json!({})).await;
    let c2 = create(&app, &u, json!({})).await;
    let (c1, c2) = (c1["id"].as_str().unwrap().to_string(), c2["id"].as_str().unwrap().to_string());
    append(&app, &u, &c1, &json!({"messages": [
        text_message("q1", "How do I bake sourdough bread at home?"),
        {"id": "a1", "role": "assistant", "parts": [{"type": "text", "text": "Sourdough needs a starter, flour, water and salt. Bake at 250 degrees."}]},
        text_message("q2", "What about pizza dough?")
    ]}))
    .await;
    // Feedback.
    let put = |mid: &str, body: Value| {
        app.client
            .put(app.url(&format!("/v1/conversations/{c1}/messages/{mid}/feedback")))
            .bearer_auth(&u.jwt)
            .json(&body)
            .send()
    };
    let r = put("a1", json!({"value": "up", "comment": "great"})).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["value"], "up");
    let page: Value = list(&app, Some(&u.jwt), &c1, "").await.json().await.unwrap();
    assert_eq!(page["data"][1]["feedback"], "up");
    put("a1", json!({"value": null})).await.unwrap();
    let page: Value = list(&app, Some(&u.jwt), &c1, "").await.json().await.unwrap();
    assert!(page["data"][1].get("feedback").is_none());
    assert_eq!(envelope(put("a1", json!({"value": "meh"})).await.unwrap()).await.1, "invalid_feedback");
    assert_eq!(put("nope", json!({"value": "up"})).await.unwrap().status(), 404);

    // Search: ranked, highlighted, scoped to the caller.
    let theirs = create(&app, &other, json!({})).await;
    append(&app, &other, theirs["id"].as_str().unwrap(), &text_message("x1", "my own sourdough secrets")).await;
    let (status, r) = app.get_as("/v1/search/messages?q=sourdough", &u.jwt).await;
    assert_eq!(status, 200, "{r}");
    let hits = r["data"].as_array().unwrap();
    assert_eq!(hits.len(), 2, "{r}");
    assert!(hits.iter().all(|h| h["conversation_id"] == c1.as_str()));
    assert!(hits[0]["headline"].as_str().unwrap().contains("<mark>"), "{r}");
    assert!(hits[0]["rank"].as_f64().unwrap() >= hits[1]["rank"].as_f64().unwrap());
    let (status, r) = app.get_as("/v1/search/messages?q=sourdough&limit=1", &u.jwt).await;
    assert_eq!(status, 200, "{r}");
    let next = r["next_cursor"].as_str().unwrap().to_string();
    let (status, r2) = app.get_as(&format!("/v1/search/messages?q=sourdough&limit=1&cursor={next}"), &u.jwt).await;
    assert_eq!(status, 200, "{r2}");
    assert_ne!(r["data"][0]["message_id"], r2["data"][0]["message_id"]);
    assert!(r2["next_cursor"].is_null());
    let r = app.call(Method::GET, "/v1/search/messages?q=").by(&u.jwt).send().await;
    assert_eq!(envelope(r).await.1, "invalid_query");

    // Bad input, each a 4xx with a stable code.
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"id": "z1", "role": "robot", "parts": []}), 422, "invalid_role"),
        (json!({"id": "z2", "role": "user", "parts": {"type": "text"}}), 422, "invalid_parts"),
        (json!({"id": "z3", "role": "user", "parts": [{"text": "no type"}]}), 422, "invalid_parts"),
        (json!({"id": "", "role": "user", "parts": []}), 422, "invalid_message_id"),
        (
            json!({"id": "z4", "role": "user", "parts": [{"type": "text", "text": "x".repeat(4000)}]}),
            413,
            "message_too_large",
        ),
        (
            json!({"id": "q1", "role": "user", "parts": [{"type": "text", "text": "reused"}]}),
            409,
            "message_id_conflict",
        ),
        (json!({"messages": []}), 422, "invalid_messages"),
        (json!({"nonsense": true}), 422, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let (s, c, _, _) = envelope(append(&app, &u, &c2, &body).await).await;
        assert_eq!((s, c.as_str()), (status, code), "{body}");
    }
    // Another user may use the same message id in their own conversation.
    let oc = create(&app, &other, json!({})).await;
    assert_eq!(append(&app, &other, oc["id"].as_str().unwrap(), &text_message("q1", "mine")).await.status(), 201);
    for q in ["?limit=0", "?limit=101", "?before=!!!", "?before=bTE&after=bTE"] {
        let (s, code, _, _) = envelope(list(&app, Some(&u.jwt), &c1, q).await).await;
        assert_eq!(s, 400, "{q} {code}");
    }
    assert_eq!(list(&app, Some(&u.jwt), "not-a-uuid", "").await.status(), 404);
    let r = app.call(Method::GET, "/v1/conversations?archived=maybe").by(&u.jwt).send().await;
    assert_eq!(envelope(r).await.1, "invalid_filter");
    let r = app.call(Method::POST, "/v1/conversations").by(&u.jwt).json(&json!({"visibility": "friends"})).send().await;
    assert_eq!(envelope(r).await.1, "invalid_visibility");
}

#[tokio::test]
async fn attachments_link_my_storage_objects() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "att-a@example.com").await;
    let b = sign_up(&app, "att-b@example.com").await;
    let (key, _) = carmenta::auth::service::create_service_key(&app.pool, "k", true).await.unwrap();
    assert_eq!(app.post_as("/storage/v1/bucket", &key, &json!({"name": "uploads"})).await.0, 200);
    for (user, name) in [(&a, "a/photo.png"), (&a, "a/notes.pdf"), (&b, "b/secret.png")] {
        let r = app
            .call(Method::POST, &format!("/storage/v1/object/uploads/{name}"))
            .by(&user.jwt)
            .header("content-type", "image/png")
            .body("bytes")
            .send()
            .await;
        assert_eq!(r.status(), 200);
    }
    let conv = create(&app, &a, json!({})).await["id"].as_str().unwrap().to_string();
    let mut m = text_message("m1", "look at these");
    m["attachments"] =
        json!([{"bucket": "uploads", "key": "a/photo.png"}, {"bucket": "uploads", "key": "a/notes.pdf"}]);
    let r = append(&app, &a, &conv, &m).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let body: Value = r.json().await.unwrap();
    let keys: Vec<&str> =
        body["data"][0]["attachments"].as_array().unwrap().iter().map(|x| x["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a/photo.png", "a/notes.pdf"]);
    assert_eq!(body["data"][0]["attachments"][0]["size"], 5);
    // Someone else's object, or none at all: a 404 that does not tell them apart; nothing stored.
    for bad in [json!({"bucket": "uploads", "key": "b/secret.png"}), json!({"bucket": "uploads", "key": "nope.png"})] {
        let mut m = text_message("m2", "sneaky");
        m["attachments"] = json!([bad]);
        let r = append(&app, &a, &conv, &m).await;
        let (status, code, _, _) = envelope(r).await;
        assert_eq!((status, code.as_str()), (404, "attachment_not_found"));
    }
    // The listing carries them; a resend without `attachments` keeps them; `[]` clears.
    let page: Value = list(&app, Some(&a.jwt), &conv, "").await.json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["attachments"].as_array().unwrap().len(), 2);
    assert_eq!(
        append(&app, &a, &conv, &text_message("m1", "look at these")).await.status(),
        200,
        "an unchanged resend"
    );
    let page: Value = list(&app, Some(&a.jwt), &conv, "").await.json().await.unwrap();
    assert_eq!(page["data"][0]["attachments"].as_array().unwrap().len(), 2);
    // Deleting the object removes the link.
    assert_eq!(app.delete_as("/storage/v1/object/uploads/a/notes.pdf", &a.jwt).await.0, 200);
    let page: Value = list(&app, Some(&a.jwt), &conv, "").await.json().await.unwrap();
    assert_eq!(page["data"][0]["attachments"].as_array().unwrap().len(), 1);
    let mut m = text_message("m1", "look at these");
    m["attachments"] = json!([]);
    assert_eq!(append(&app, &a, &conv, &m).await.status(), 200);
    let page: Value = list(&app, Some(&a.jwt), &conv, "").await.json().await.unwrap();
    assert!(page["data"][0].get("attachments").is_none(), "{page}");
    // B cannot attach to A's conversation at all.
    let mut m = text_message("m9", "x");
    m["attachments"] = json!([{"bucket": "uploads", "key": "b/secret.png"}]);
    let (status, _, _, _) = envelope(append(&app, &b, &conv, &m).await).await;
    assert_eq!(status, 404);
}
