//! Knowledge base: folders (ltree moves, breadcrumbs, subtree deletes), documents
//! and versions, `[[Title]]` links and backlinks, hybrid search with per-signal
//! scores and filters, ingestion of real files from storage (Markdown, HTML,
//! DOCX, PDF; broken, encrypted, bomb and binary files), re-ingestion that
//! re-embeds only changed chunks, an OpenAI-compatible embeddings server (with
//! 429s), model changes, and ownership on every route.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestApp, User, eventually, sign_up};

const K: &str = "/v1/knowledge";

async fn post(app: &TestApp, u: &User, path: &str, body: Value) -> Value {
    let (s, b) = app.post_as(&format!("{K}{path}"), &u.jwt, &body).await;
    assert!(s == 200 || s == 201 || s == 202, "POST {path}: {s} {b}");
    b
}

async fn get(app: &TestApp, u: &User, path: &str) -> Value {
    let (s, b) = app.get_as(&format!("{K}{path}"), &u.jwt).await;
    assert_eq!(s, 200, "GET {path}: {b}");
    b
}

async fn search(app: &TestApp, u: &User, body: Value) -> Value {
    post(app, u, "/search", body).await
}

fn titles(page: &Value) -> Vec<String> {
    page["data"].as_array().unwrap().iter().map(|h| h["title"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn folders_documents_and_versions() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "kb1@example.com").await;
    let a = post(&app, &u, "/folders", json!({"name": "Projects"})).await;
    let b = post(&app, &u, "/folders", json!({"name": "Alpha", "parent_id": a["id"]})).await;
    assert_eq!(b["parent_id"], a["id"]);
    assert_eq!(b["depth"], 2);
    // Sibling names are unique; a missing parent is a 404; a bad name a 422.
    let (s, e) = app.post_as(&format!("{K}/folders"), &u.jwt, &json!({"name": "projects"})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("folder_exists")));
    let (s, _) =
        app.post_as(&format!("{K}/folders"), &u.jwt, &json!({"name": "x", "parent_id": uuid::Uuid::new_v4()})).await;
    assert_eq!(s, 404);
    let (s, _) = app.post_as(&format!("{K}/folders"), &u.jwt, &json!({"name": "  "})).await;
    assert_eq!(s, 422);

    let body = "# Launch plan\n\nThe rocket uses kerosene.\n\n## Crew\n\nThree astronauts fly.\n";
    let d =
        post(&app, &u, "/documents", json!({"title": "Plan", "body": body, "folder_id": b["id"], "tags": ["space"]}))
            .await;
    let id = d["id"].as_str().unwrap().to_string();
    assert_eq!(d["version"], 1);
    assert_eq!(d["source"]["kind"], "manual");
    assert_eq!(
        d["breadcrumbs"].as_array().unwrap().iter().map(|c| c["name"].clone()).collect::<Vec<_>>(),
        vec![json!("Projects"), json!("Alpha")]
    );
    let chunks = get(&app, &u, &format!("/documents/{id}/chunks")).await;
    let chunks = chunks.as_array().unwrap();
    assert!(chunks.len() >= 2, "{chunks:?}");
    assert_eq!(chunks.last().unwrap()["headings"], json!(["Launch plan", "Crew"]));
    for c in chunks {
        // A chunk is an exact span of the version's body, in characters.
        let span: String = body
            .chars()
            .skip(c["char_start"].as_u64().unwrap() as usize)
            .take((c["char_end"].as_u64().unwrap() - c["char_start"].as_u64().unwrap()) as usize)
            .collect();
        assert_eq!(span, c["text"].as_str().unwrap());
        assert_eq!(c["embedded"], true, "the built-in model embeds at once");
    }

    // Replace: version 2; version 1 stays readable; search sees only the current one.
    let (s, d2) = app
        .call(Method::PUT, &format!("{K}/documents/{id}"))
        .by(&u.jwt)
        .json(&json!({"body": "# Launch plan\n\nThe rocket uses methane now.\n", "if_version": 1}))
        .reply()
        .await;
    assert_eq!((s, d2["version"].clone()), (200, json!(2)), "{d2}");
    let (s, e) = app
        .call(Method::PUT, &format!("{K}/documents/{id}"))
        .by(&u.jwt)
        .json(&json!({"body": "stale", "if_version": 1}))
        .reply()
        .await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("version_conflict")));
    let versions = get(&app, &u, &format!("/documents/{id}/versions")).await;
    assert_eq!(versions.as_array().unwrap().len(), 2);
    assert_eq!(versions[0]["current"], true);
    let v1 = get(&app, &u, &format!("/documents/{id}/versions/1")).await;
    assert_eq!(v1["body"], body);
    for mode in ["fulltext", "hybrid"] {
        let r = search(&app, &u, json!({"query": "kerosene", "mode": mode})).await;
        assert!(
            r["data"].as_array().unwrap().iter().all(|h| !h["snippet"].as_str().unwrap().contains("kerosene")),
            "{r}"
        );
        let r = search(&app, &u, json!({"query": "methane", "mode": mode})).await;
        assert_eq!(r["data"][0]["document_id"], json!(id), "{r}");
        assert_eq!(r["data"][0]["version"], 2);
    }

    // Moving Alpha to the top level moves its subtree; renaming keeps ids.
    let (s, moved) = app
        .patch_as(
            &format!("{K}/folders/{}", b["id"].as_str().unwrap()),
            &u.jwt,
            &json!({"parent_id": null, "name": "Alpha2"}),
        )
        .await;
    assert_eq!(s, 200, "{moved}");
    assert_eq!((moved["depth"].clone(), moved["name"].clone()), (json!(1), json!("Alpha2")));
    let doc = get(&app, &u, &format!("/documents/{id}")).await;
    assert_eq!(doc["breadcrumbs"], json!([{"id": b["id"], "name": "Alpha2"}]));
    let top = get(&app, &u, "/folders").await;
    assert_eq!(top.as_array().unwrap().len(), 2);
    // A folder cannot move into its own subtree.
    let c = post(&app, &u, "/folders", json!({"name": "Child", "parent_id": b["id"]})).await;
    let (s, e) = app
        .patch_as(&format!("{K}/folders/{}", b["id"].as_str().unwrap()), &u.jwt, &json!({"parent_id": c["id"]}))
        .await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("folder_cycle")));
    let view = get(&app, &u, &format!("/folders/{}", c["id"].as_str().unwrap())).await;
    assert_eq!(view["breadcrumbs"].as_array().unwrap().len(), 2);
    let view = get(&app, &u, &format!("/folders/{}", b["id"].as_str().unwrap())).await;
    assert_eq!(view["children"][0]["name"], "Child");
    assert_eq!(view["documents"][0]["id"], json!(id));

    // A subtree filter finds only documents under it.
    let other = post(&app, &u, "/documents", json!({"title": "Other", "body": "methane elsewhere"})).await;
    let r = search(&app, &u, json!({"query": "methane", "folder_id": b["id"]})).await;
    assert_eq!(titles(&r), vec!["Plan"]);
    let r = search(&app, &u, json!({"query": "methane", "tags": ["space"]})).await;
    assert_eq!(titles(&r), vec!["Plan"]);
    let r = search(&app, &u, json!({"query": "methane", "mode": "fulltext"})).await;
    assert_eq!(r["data"].as_array().unwrap().len(), 2);

    // Deleting the folder deletes its subtree and documents; statistics follow.
    let (s, _) = app.delete_as(&format!("{K}/folders/{}", b["id"].as_str().unwrap()), &u.jwt).await;
    assert_eq!(s, 204);
    let (s, _) = app.get_as(&format!("{K}/documents/{id}"), &u.jwt).await;
    assert_eq!(s, 404);
    let (s, _) = app.get_as(&format!("{K}/folders/{}", c["id"].as_str().unwrap()), &u.jwt).await;
    assert_eq!(s, 404);
    let r = search(&app, &u, json!({"query": "methane", "mode": "fulltext"})).await;
    assert_eq!(titles(&r), vec!["Other"]);
    let (chunks, total): (i64, i64) = sqlx::query_as("SELECT chunks, total_len FROM kb_stats WHERE space_id = $1")
        .bind(u.id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let (real, real_len): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(c.len), 0)::int8 FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id AND d.current_version = c.version WHERE d.space_id = $1",
    )
    .bind(u.id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((chunks, total), (real, real_len), "BM25 statistics match the current chunks");
    let _ = other;
}

#[tokio::test]
async fn links_and_backlinks_survive_moves_and_renames() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "kb2@example.com").await;
    let alpha =
        post(&app, &u, "/documents", json!({"title": "Alpha", "body": "See [[Beta]] and [[Gamma|the third]]."})).await;
    let aid = alpha["id"].as_str().unwrap().to_string();
    let links = get(&app, &u, &format!("/documents/{aid}/links")).await;
    assert_eq!(links["outgoing"].as_array().unwrap().len(), 2);
    assert!(links["outgoing"][0]["document_id"].is_null(), "Beta does not exist yet: {links}");
    let beta = post(&app, &u, "/documents", json!({"title": "Beta", "body": "Beta text."})).await;
    let bid = beta["id"].as_str().unwrap().to_string();
    let links = get(&app, &u, &format!("/documents/{aid}/links")).await;
    assert_eq!(links["outgoing"][0]["document_id"], json!(bid), "resolved when Beta appeared: {links}");
    let back = get(&app, &u, &format!("/documents/{bid}/links")).await;
    assert_eq!(back["backlinks"], json!([{"document_id": aid, "title": "Alpha", "kind": "wiki"}]));
    // Rename and move Beta: the link follows its id.
    let f = post(&app, &u, "/folders", json!({"name": "Archive"})).await;
    let (s, _) = app
        .patch_as(&format!("{K}/documents/{bid}"), &u.jwt, &json!({"title": "Beta (old)", "folder_id": f["id"]}))
        .await;
    assert_eq!(s, 200);
    let links = get(&app, &u, &format!("/documents/{aid}/links")).await;
    assert_eq!(links["outgoing"][0]["document_id"], json!(bid));
    assert_eq!(links["outgoing"][0]["title"], "Beta (old)");
    // Manual links both ways, and their removal.
    let gamma = post(&app, &u, "/documents", json!({"title": "Delta", "body": "d"})).await;
    let gid = gamma["id"].as_str().unwrap();
    let l = post(&app, &u, &format!("/documents/{bid}/links"), json!({"target_id": gid})).await;
    assert!(l["outgoing"].as_array().unwrap().iter().any(|x| x["document_id"] == json!(gid) && x["kind"] == "manual"));
    let (s, _) = app.delete_as(&format!("{K}/documents/{bid}/links/{gid}"), &u.jwt).await;
    assert_eq!(s, 204);
    let (s, _) = app.delete_as(&format!("{K}/documents/{bid}/links/{gid}"), &u.jwt).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn search_explains_itself_and_refuses_bad_input() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "kb3@example.com").await;
    for i in 0..25 {
        post(&app, &u, "/documents", json!({"title": format!("Note {i}"), "body": format!("Cooking pasta needs salted water & care <b>, note {i}.")})).await;
    }
    post(&app, &u, "/documents", json!({"title": "Recipe", "body": "Boil spaghetti in salted water for nine minutes.", "source_url": "https://example.com/r"})).await;
    let r = search(&app, &u, json!({"query": "how long to boil spaghetti", "limit": 5})).await;
    assert_eq!(r["mode"], "hybrid");
    let top = &r["data"][0];
    assert_eq!(top["title"], "Recipe", "{r}");
    let s = &top["scores"];
    assert!(s["fulltext"].as_f64().unwrap() > 0.0 && s["fulltext_rank"] == 1, "{s}");
    assert!(s["vector_distance"].as_f64().is_some() && s["vector_rank"].as_i64().is_some(), "{s}");
    assert!(s["fused"].as_f64().unwrap() > 0.0);
    assert!(top["snippet"].as_str().unwrap().contains("<mark>spaghetti</mark>"), "{top}");
    // Snippets escape the stored text.
    let r = search(&app, &u, json!({"query": "pasta care", "mode": "fulltext", "limit": 3})).await;
    let snip = r["data"][0]["snippet"].as_str().unwrap();
    assert!(snip.contains("&amp;") && !snip.contains("<b>"), "{snip}");
    // Cursor pagination walks every fulltext hit once.
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = json!({"query": "salted water", "mode": "fulltext", "limit": 10});
        if let Some(c) = &cursor {
            q["cursor"] = json!(c);
        }
        let page = search(&app, &u, q).await;
        for h in page["data"].as_array().unwrap() {
            assert!(seen.insert(h["chunk_id"].as_i64().unwrap()));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 26);
    let r = search(&app, &u, json!({"query": "spaghetti", "source": "url"})).await;
    assert_eq!(titles(&r), vec!["Recipe"]);
    let r = search(&app, &u, json!({"query": "spaghetti", "source": "manual", "mode": "fulltext"})).await;
    assert_eq!(r["data"], json!([]));
    let r = search(&app, &u, json!({"query": "spaghetti", "updated_after": "2999-01-01T00:00:00Z"})).await;
    assert_eq!(r["data"], json!([]), "dates filter");
    let r = search(&app, &u, json!({"query": "spaghetti", "updated_before": "2999-01-01T00:00:00Z"})).await;
    assert_eq!(titles(&r)[0], "Recipe");
    for (body, status, code) in [
        (json!({"query": ""}), 422, "invalid_query"),
        (json!({"query": "x", "mode": "magic"}), 422, "invalid_mode"),
        (json!({"query": "x", "limit": 0}), 400, "invalid_limit"),
        (json!({"query": "x", "cursor": "nope!"}), 400, "invalid_cursor"),
        (json!({"query": "x", "fulltext_weight": -1}), 422, "invalid_weights"),
        (json!({"query": "x", "source": "fax"}), 422, "invalid_source"),
        (json!({"query": "x", "folder_id": uuid::Uuid::new_v4()}), 404, "not_found"),
    ] {
        let (s, e) = app.post_as(&format!("{K}/search"), &u.jwt, &body).await;
        assert_eq!((s, e["error"]["code"].as_str()), (status, Some(code)), "{body}: {e}");
    }
}

#[tokio::test]
async fn everything_is_the_owners() {
    let app = TestApp::spawn().await;
    let a = sign_up(&app, "kba@example.com").await;
    let b = sign_up(&app, "kbb@example.com").await;
    let f = post(&app, &a, "/folders", json!({"name": "Private"})).await;
    let fid = f["id"].as_str().unwrap();
    let d =
        post(&app, &a, "/documents", json!({"title": "Secret", "body": "the vault code is zebra", "folder_id": fid}))
            .await;
    let did = d["id"].as_str().unwrap();
    for path in [
        format!("/folders/{fid}"),
        format!("/documents/{did}"),
        format!("/documents/{did}/versions"),
        format!("/documents/{did}/versions/1"),
        format!("/documents/{did}/chunks"),
        format!("/documents/{did}/links"),
    ] {
        let (s, _) = app.get_as(&format!("{K}{path}"), &b.jwt).await;
        assert_eq!(s, 404, "GET {path} as another user");
    }
    let (s, _) = app.patch_as(&format!("{K}/folders/{fid}"), &b.jwt, &json!({"name": "mine"})).await;
    assert_eq!(s, 404);
    let (s, _) = app.patch_as(&format!("{K}/documents/{did}"), &b.jwt, &json!({"tags": ["x"]})).await;
    assert_eq!(s, 404);
    let (s, _) =
        app.call(Method::PUT, &format!("{K}/documents/{did}")).by(&b.jwt).json(&json!({"body": "x"})).reply().await;
    assert_eq!(s, 404);
    let (s, _) = app.post_as(&format!("{K}/documents/{did}/links"), &b.jwt, &json!({"target_id": did})).await;
    assert_eq!(s, 404);
    let (s, _) =
        app.post_as(&format!("{K}/documents"), &b.jwt, &json!({"title": "t", "body": "b", "folder_id": fid})).await;
    assert_eq!(s, 404, "a document in another user's folder");
    let (s, _) = app.post_as(&format!("{K}/folders"), &b.jwt, &json!({"name": "n", "parent_id": fid})).await;
    assert_eq!(s, 404);
    let mine = post(&app, &b, "/documents", json!({"title": "Mine", "body": "zebra crossing"})).await;
    let (s, _) = app
        .post_as(&format!("{K}/documents/{}/links", mine["id"].as_str().unwrap()), &b.jwt, &json!({"target_id": did}))
        .await;
    assert_eq!(s, 404, "a link to another user's document");
    let (s, _) = app.post_as(&format!("{K}/search"), &b.jwt, &json!({"query": "zebra", "folder_id": fid})).await;
    assert_eq!(s, 404);
    for mode in ["fulltext", "vector", "hybrid"] {
        let r = search(&app, &b, json!({"query": "vault code zebra", "mode": mode})).await;
        assert_eq!(titles(&r), vec!["Mine"], "{mode}");
    }
    let (s, _) = app.delete_as(&format!("{K}/documents/{did}/links/{did}"), &b.jwt).await;
    assert_eq!(s, 404);
    let (s, _) = app.delete_as(&format!("{K}/documents/{did}"), &b.jwt).await;
    assert_eq!(s, 404);
    let (s, _) = app.delete_as(&format!("{K}/folders/{fid}"), &b.jwt).await;
    assert_eq!(s, 404);
    // Files: an object of A's cannot be ingested by B; A's file status is 404 to B.
    let key = storage_key(&app).await;
    bucket(&app, &key, "kb").await;
    upload(&app, &a.jwt, "kb", "a/notes.md", b"# Notes\n\nzebra".to_vec(), "text/markdown").await;
    let (s, _) = app.post_as(&format!("{K}/files"), &b.jwt, &json!({"bucket": "kb", "name": "a/notes.md"})).await;
    assert_eq!(s, 404);
    let file = post(&app, &a, "/files", json!({"bucket": "kb", "name": "a/notes.md"})).await;
    let (s, _) = app.get_as(&format!("{K}/files/{}", file["id"].as_str().unwrap()), &b.jwt).await;
    assert_eq!(s, 404);
    let (s, _) = app.post_as(&format!("{K}/files/{}/reingest", file["id"].as_str().unwrap()), &b.jwt, &json!({})).await;
    assert_eq!(s, 404);
    let (s, _) = app.delete_as(&format!("{K}/files/{}", file["id"].as_str().unwrap()), &b.jwt).await;
    assert_eq!(s, 404);
    let files = get(&app, &b, "/files").await;
    assert_eq!(files["data"], json!([]));
}

async fn storage_key(app: &TestApp) -> String {
    carmenta::auth::service::create_service_key(&app.pool, "kb", true).await.unwrap().0
}

async fn bucket(app: &TestApp, key: &str, name: &str) {
    let r = app.call(Method::POST, "/storage/v1/bucket").by(key).json(&json!({"name": name})).send().await;
    assert_eq!(r.status(), 200);
}

async fn upload(app: &TestApp, token: &str, bucket: &str, name: &str, bytes: Vec<u8>, ct: &str) {
    let r = app
        .call(Method::POST, &format!("/storage/v1/object/{bucket}/{name}"))
        .by(token)
        .header("content-type", ct)
        .header("x-upsert", "true")
        .body(bytes)
        .send()
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// A PDF with one text page per entry (Helvetica, one line per sentence).
pub fn pdf(pages: &[&str], encrypted: bool) -> Vec<u8> {
    let mut objects: Vec<String> = Vec::new();
    let n = pages.len();
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    objects.push("<< /Type /Catalog /Pages 2 0 R >>".into());
    objects.push(format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")));
    objects.push("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".into());
    for text in pages {
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
            objects.len() + 2
        ));
        let mut stream = String::from("BT /F1 12 Tf 14 TL 72 720 Td\n");
        for line in text.split(". ") {
            let esc = line.replace('\\', "\\\\").replace('(', "\\(").replace(')', "\\)");
            stream.push_str(&format!("({esc}) Tj T*\n"));
        }
        stream.push_str("ET");
        objects.push(format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()));
    }
    if encrypted {
        let h = "A".repeat(64);
        objects.push(format!("<< /Filter /Standard /V 1 /R 2 /O <{h}> /U <{h}> /P -44 >>"));
    }
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    let enc = if encrypted {
        format!(
            " /Encrypt {} 0 R /ID [<0123456789abcdef0123456789abcdef><0123456789abcdef0123456789abcdef>]",
            objects.len()
        )
    } else {
        String::new()
    };
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R{enc} >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    out
}

/// A DOCX (a zip of Office Open XML) with the given document.xml.
pub fn docx(document_xml: &[u8]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file("[Content_Types].xml", opts).unwrap();
        z.write_all(
            br#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>"#,
        )
        .unwrap();
        z.start_file("word/document.xml", opts).unwrap();
        z.write_all(document_xml).unwrap();
        z.finish().unwrap();
    }
    buf.into_inner()
}

fn word_xml(paragraphs: &[(&str, &str)]) -> Vec<u8> {
    let mut x = String::from(
        r#"<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>"#,
    );
    for (style, text) in paragraphs {
        x.push_str("<w:p>");
        if !style.is_empty() {
            x.push_str(&format!(r#"<w:pPr><w:pStyle w:val="{style}"/></w:pPr>"#));
        }
        x.push_str(&format!("<w:r><w:t>{text}</w:t></w:r></w:p>"));
    }
    x.push_str("</w:body></w:document>");
    x.into_bytes()
}

async fn file_status(app: &TestApp, u: &User, id: &str) -> Value {
    get(app, u, &format!("/files/{id}")).await
}

async fn settled(app: &TestApp, u: &User, id: &str) -> Value {
    let done = eventually(Duration::from_secs(60), || async {
        matches!(file_status(app, u, id).await["status"].as_str(), Some("ready" | "failed" | "removed"))
    })
    .await;
    let s = file_status(app, u, id).await;
    assert!(done, "ingestion did not settle: {s}");
    s
}

#[tokio::test]
async fn ingestion_of_files_with_status_versions_and_failures() {
    let app = TestApp::spawn().await;
    let runner = carmenta::background::start(&app.state).await.unwrap();
    let u = sign_up(&app, "kb4@example.com").await;
    let key = storage_key(&app).await;
    bucket(&app, &key, "docs").await;
    let folder = post(&app, &u, "/folders", json!({"name": "Inbox"})).await;

    // Markdown: ingested into the folder; then changed: a new version whose
    // unchanged chunks keep their vectors.
    let sections: Vec<String> = (0..6).map(|i| format!("## Part {i}\n\nParagraph {i} about topic{i}.\n")).collect();
    let md = format!("# Handbook\n\n{}", sections.join("\n"));
    upload(&app, &u.jwt, "docs", "u/handbook.md", md.clone().into_bytes(), "text/markdown").await;
    let f =
        post(&app, &u, "/files", json!({"bucket": "docs", "name": "u/handbook.md", "folder_id": folder["id"]})).await;
    let fid = f["id"].as_str().unwrap().to_string();
    let s = settled(&app, &u, &fid).await;
    assert_eq!((s["status"].as_str(), s["format"].as_str()), (Some("ready"), Some("markdown")), "{s}");
    let chunks = s["chunks"].as_i64().unwrap();
    assert_eq!(s["chunks_embedded"].as_i64(), Some(chunks));
    let doc = s["document_id"].as_str().unwrap().to_string();
    let d = get(&app, &u, &format!("/documents/{doc}")).await;
    assert_eq!((d["source"]["kind"].as_str(), d["folder_id"].clone()), (Some("upload"), folder["id"].clone()));
    assert_eq!(d["source"]["object_version"], s["ingested_version"]);
    let changed = md.replace("Paragraph 5 about topic5.", "Paragraph 5 now covers zeppelins.");
    upload(&app, &u.jwt, "docs", "u/handbook.md", changed.into_bytes(), "text/markdown").await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            let s = file_status(&app, &u, &fid).await;
            s["status"] == "ready" && s["ingested_version"] != d["source"]["object_version"]
        })
        .await
    );
    let s = file_status(&app, &u, &fid).await;
    assert_eq!(s["chunks_embedded"].as_i64(), Some(1), "only the changed chunk is re-embedded: {s}");
    let d2 = get(&app, &u, &format!("/documents/{doc}")).await;
    assert_eq!(d2["version"], 2);
    let r = search(&app, &u, json!({"query": "zeppelins"})).await;
    assert_eq!(r["data"][0]["document_id"], json!(doc));
    assert_eq!(r["data"][0]["headings"], json!(["Handbook", "Part 5"]));

    // HTML: main content, not navigation or scripts.
    let html = r#"<html><head><title>Guide</title><script>var tracking = "adtracker";</script></head><body>
        <nav>Home | Pricing | Login</nav><main><h1>Setup</h1><p>Install the quokka package.</p></main>
        <footer>Copyright footerword</footer></body></html>"#;
    upload(&app, &u.jwt, "docs", "u/guide.html", html.as_bytes().to_vec(), "text/html").await;
    let f = post(&app, &u, "/files", json!({"bucket": "docs", "name": "u/guide.html"})).await;
    let s = settled(&app, &u, f["id"].as_str().unwrap()).await;
    assert_eq!(s["status"], "ready", "{s}");
    let d = get(&app, &u, &format!("/documents/{}", s["document_id"].as_str().unwrap())).await;
    assert_eq!(d["title"], "Guide");
    assert!(d["body"].as_str().unwrap().contains("quokka"));
    for noise in ["adtracker", "Pricing", "footerword"] {
        assert!(!d["body"].as_str().unwrap().contains(noise), "{noise} in {}", d["body"]);
    }

    // DOCX with headings.
    let bytes = docx(&word_xml(&[("Heading1", "Overview"), ("", "Wombats dig burrows &amp; sleep.")]));
    upload(
        &app,
        &u.jwt,
        "docs",
        "u/report.docx",
        bytes,
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    )
    .await;
    let f = post(&app, &u, "/files", json!({"bucket": "docs", "name": "u/report.docx"})).await;
    let s = settled(&app, &u, f["id"].as_str().unwrap()).await;
    assert_eq!(s["status"], "ready", "{s}");
    let d = get(&app, &u, &format!("/documents/{}", s["document_id"].as_str().unwrap())).await;
    assert_eq!(d["body"], "# Overview\n\nWombats dig burrows & sleep.\n");

    // PDF: pages kept on chunks.
    let bytes =
        pdf(&["First page about aardvarks. They eat ants", "Second page about narwhals. They have tusks"], false);
    upload(&app, &u.jwt, "docs", "u/animals.pdf", bytes, "application/pdf").await;
    let f = post(&app, &u, "/files", json!({"bucket": "docs", "name": "u/animals.pdf"})).await;
    let s = settled(&app, &u, f["id"].as_str().unwrap()).await;
    assert_eq!((s["status"].as_str(), s["pages"].as_i64()), (Some("ready"), Some(2)), "{s}");
    let r = search(&app, &u, json!({"query": "narwhals", "mode": "fulltext"})).await;
    assert_eq!(r["data"][0]["page"], 2, "{r}");
    let r = search(&app, &u, json!({"query": "aardvarks", "mode": "fulltext"})).await;
    assert_eq!(r["data"][0]["page"], 1, "{r}");

    // Broken files fail with a clear reason, and the next file still goes through.
    let mut bomb_xml = word_xml(&[("", "x")]);
    bomb_xml.extend(std::iter::repeat_n(b' ', 30 * 1024 * 1024));
    let bad: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("u/broken.pdf", b"%PDF-1.4\n1 0 obj garbage".to_vec(), "application/pdf", "malformed_pdf"),
        ("u/locked.pdf", pdf(&["secret"], true), "application/pdf", "encrypted_pdf"),
        (
            "u/bomb.docx",
            docx(&bomb_xml),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "zip_bomb",
        ),
        ("u/binary.txt", (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(), "text/plain", "binary_content"),
        ("u/picture.png", vec![0x89, b'P', b'N', b'G', 0, 0], "image/png", "unsupported_format"),
    ];
    for (name, bytes, ct, code) in bad {
        upload(&app, &u.jwt, "docs", name, bytes, ct).await;
        let f = post(&app, &u, "/files", json!({"bucket": "docs", "name": name})).await;
        let s = settled(&app, &u, f["id"].as_str().unwrap()).await;
        assert_eq!((s["status"].as_str(), s["error_code"].as_str()), (Some("failed"), Some(code)), "{name}: {s}");
        assert!(s["error"].as_str().is_some_and(|e| e.len() > 10));
    }

    // Deleting the object removes its document.
    let r = app.call(Method::DELETE, "/storage/v1/object/docs/u/handbook.md").by(&u.jwt).send().await;
    assert_eq!(r.status(), 200);
    let s = settled(&app, &u, &fid).await;
    assert!(
        eventually(Duration::from_secs(30), || async { file_status(&app, &u, &fid).await["status"] == "removed" })
            .await,
        "{s}"
    );
    let (st, _) = app.get_as(&format!("{K}/documents/{doc}"), &u.jwt).await;
    assert_eq!(st, 404);
    let listed = get(&app, &u, "/files").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 9);
    runner.shutdown().await;
}

/// A local server speaking OpenAI's embeddings protocol: bag-of-words vectors of
/// dimension 16, a bearer key, and a 429 on the first call.
async fn embeddings_server(calls: Arc<AtomicUsize>) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/embeddings",
        post(move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
            let calls = calls.clone();
            async move {
                use axum::response::IntoResponse;
                if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer test-key") {
                    return (
                        axum::http::StatusCode::UNAUTHORIZED,
                        axum::Json(json!({"error": {"message": "bad key"}})),
                    )
                        .into_response();
                }
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return (
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "0")],
                        axum::Json(json!({"error": {"message": "slow down"}})),
                    )
                        .into_response();
                }
                let inputs: Vec<String> =
                    body["input"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_lowercase()).collect();
                let data: Vec<Value> = inputs
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let mut v = vec![0.0f32; 16];
                        for w in t.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 2) {
                            let h = w.bytes().fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
                            v[h % 16] += 1.0;
                        }
                        v[0] += 0.01;
                        json!({"object": "embedding", "index": i, "embedding": v})
                    })
                    .collect();
                axum::Json(json!({"object": "list", "data": data, "model": body["model"]})).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn openai_compatible_embeddings_and_model_changes() {
    // Documents written with the built-in model…
    let first = TestApp::spawn().await;
    let u = sign_up(&first, "kb5@example.com").await;
    post(&first, &u, "/documents", json!({"title": "Zoo", "body": "giraffes and zebras live here"})).await;
    post(&first, &u, "/documents", json!({"title": "Garage", "body": "engines and tyres are stored"})).await;
    // …then a replica configured for an OpenAI-compatible endpoint re-embeds them in
    // the background, and vector search uses only the new model's vectors.
    let calls = Arc::new(AtomicUsize::new(0));
    let url = embeddings_server(calls.clone()).await;
    let app = TestApp::builder()
        .same_database_as(&first)
        .config(|c| {
            c.encryption_keys = first.state.config.encryption_keys.clone();
            c.public_url = first.state.config.public_url.clone();
            c.knowledge.embedder = carmenta::config::EmbedderConfig::OpenAi {
                url: url.parse().unwrap(),
                model: "toy-embed".into(),
                key: Some(carmenta::config::Secret::new("test-key")),
                dimensions: 16,
            }
        })
        .spawn()
        .await;
    let runner = carmenta::background::start(&app.state).await.unwrap();
    let stale = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM kb_chunks WHERE embedding_model IS DISTINCT FROM 'toy-embed@16'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(30), || async { stale().await == 0 }).await,
        "re-embedded after the model change"
    );
    assert!(calls.load(Ordering::SeqCst) >= 2, "the 429 was retried");
    let r = search(&app, &u, json!({"query": "zebras giraffes", "mode": "vector"})).await;
    assert_eq!(r["data"][0]["title"], "Zoo", "{r}");
    // A document written now is embedded by a job through the endpoint.
    let d = post(&app, &u, "/documents", json!({"title": "Boats", "body": "sailing yachts harbour"})).await;
    let id = d["id"].as_str().unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(30), || async {
            let c = get(&app, &u, &format!("/documents/{id}/chunks")).await;
            c[0]["embedded"] == true
        })
        .await
    );
    let r = search(&app, &u, json!({"query": "yachts harbour", "mode": "vector"})).await;
    assert_eq!(r["data"][0]["title"], "Boats");
    let index: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_indexes WHERE tablename = 'kb_chunks' AND indexdef LIKE '%hnsw%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(index >= 1, "an HNSW index per model");
    runner.shutdown().await;
}

#[tokio::test]
async fn a_hung_or_crashing_extractor_fails_the_file_not_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (name, script) in
        [("hang", "#!/bin/sh\ncat >/dev/null\nsleep 30\n"), ("crash", "#!/bin/sh\ncat >/dev/null\nkill -SEGV $$\n")]
    {
        let path = dir.path().join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (name, code) in [("hang", "timeout"), ("crash", "extractor_failed")] {
        let exe = dir.path().join(name);
        let app = TestApp::builder()
            .config(|c| {
                c.knowledge.extractor = Some(exe);
                c.knowledge.extract_timeout = Duration::from_secs(1);
            })
            .spawn()
            .await;
        let runner = carmenta::background::start(&app.state).await.unwrap();
        let u = sign_up(&app, "kb6@example.com").await;
        let key = storage_key(&app).await;
        bucket(&app, &key, "docs").await;
        upload(&app, &u.jwt, "docs", "x.md", b"# Hello\n\nworld".to_vec(), "text/markdown").await;
        let f = post(&app, &u, "/files", json!({"bucket": "docs", "name": "x.md"})).await;
        let s = settled(&app, &u, f["id"].as_str().unwrap()).await;
        assert_eq!((s["status"].as_str(), s["error_code"].as_str()), (Some("failed"), Some(code)), "{name}: {s}");
        assert_eq!(app.get("/healthz").await.status(), 200);
        runner.shutdown().await;
    }
}

#[tokio::test]
async fn bm25_pruning_returns_the_exhaustive_top() {
    let app = TestApp::spawn().await;
    let u = sign_up(&app, "kbprune@example.com").await;
    // "alpha" in every chunk, "beta" in half, "gamma" in a tenth, one rare word each.
    for i in 0..80 {
        let mut words = vec!["alpha alpha".to_string()];
        if i % 2 == 0 {
            words.push("beta".into());
        }
        if i % 10 == 0 {
            words.push("gamma".into());
        }
        words.push(format!("rare{i}x"));
        post(&app, &u, "/documents", json!({"title": format!("d{i}"), "body": words.join(" ")})).await;
    }
    let filters = carmenta::knowledge::db::Filters::default();
    for query in ["alpha beta gamma rare40x", "alpha beta", "gamma alpha", "rare7x alpha", "alpha"] {
        for limit in [5, 10, 50] {
            let pruned = carmenta::knowledge::db::bm25(&app.pool, u.id, query, &filters, limit).await.unwrap();
            let stats = carmenta::knowledge::db::term_stats(&app.pool, u.id, query).await.unwrap();
            let n = stats.docs.max(1) as f64;
            let round = carmenta::rank::Round {
                weighted: stats
                    .terms
                    .iter()
                    .map(|(l, df)| (l.clone(), (1.0 + (n - *df as f64 + 0.5) / (*df as f64 + 0.5)).ln()))
                    .collect(),
                matching: stats.terms.iter().map(|t| t.0.clone()).collect(),
                avg_len: (stats.total_len as f64 / n).max(1.0),
            };
            let full = carmenta::knowledge::db::bm25_over(&app.pool, u.id, &round, &filters, limit).await.unwrap();
            assert_eq!(pruned, full, "{query} {limit}");
        }
    }
}

/// An organization's shared knowledge: members with `org:knowledge:read` read and
/// search it, those with `org:knowledge:write` change it; a member whose role lacks
/// the permission gets 403 and a non-member 404, on every route; files come only
/// from the organization's own buckets; leaving ends access at once; deleting the
/// organization deletes its knowledge.
#[tokio::test]
async fn organizations_share_knowledge_and_every_route_checks_the_member() {
    let app = TestApp::spawn().await;
    let runner = carmenta::background::start(&app.state).await.unwrap();
    let t = crate::harness::team(&app, "kb").await;
    let org = t.org_id.clone();
    let send = |u: &User, method: Method, path: String, body: Option<Value>| {
        let call = app.call(method, &format!("{K}{path}")).by(&u.jwt);
        let call = match body {
            Some(b) => call.json(&b),
            None => call,
        };
        async move { call.reply().await }
    };

    // The shared space: a folder, a document in it, a top-level document, a file.
    let folder = post(&app, &t.admin, "/folders", json!({"name": "Runbooks", "org_id": org})).await;
    assert_eq!(folder["org_id"], org.as_str());
    let fid = folder["id"].as_str().unwrap().to_string();
    let doc = post(
        &app,
        &t.admin,
        "/documents",
        json!({"title": "Pager duty", "body": "Rotate the pager every Monday. See [[Escalation]].", "folder_id": fid}),
    )
    .await;
    assert_eq!(doc["org_id"], org.as_str(), "a document in a shared folder is the organization's");
    let did = doc["id"].as_str().unwrap().to_string();
    let other = post(
        &app,
        &t.owner,
        "/documents",
        json!({"title": "Escalation", "body": "Call the on-call lead.", "org_id": org}),
    )
    .await;
    let oid = other["id"].as_str().unwrap().to_string();
    let links = get(&app, &t.member, &format!("/documents/{did}/links")).await;
    assert_eq!(
        links["outgoing"][0]["document_id"],
        oid.as_str(),
        "[[Title]] resolves inside the shared space: {links}"
    );
    let r = app
        .call(Method::POST, "/storage/v1/bucket")
        .by(&t.admin.jwt)
        .json(&json!({"name": "team-docs", "org_id": org}))
        .send()
        .await;
    assert_eq!(r.status(), 200);
    upload(
        &app,
        &t.admin.jwt,
        "team-docs",
        "handbook.md",
        b"# Handbook\n\nShip on Thursdays.".to_vec(),
        "text/markdown",
    )
    .await;
    let file =
        post(&app, &t.admin, "/files", json!({"bucket": "team-docs", "name": "handbook.md", "org_id": org})).await;
    let file_id = file["id"].as_str().unwrap().to_string();
    let ingested = settled(&app, &t.member, &file_id).await;
    assert_eq!((ingested["status"].as_str(), ingested["org_id"].as_str()), (Some("ready"), Some(org.as_str())));
    let handbook = get(&app, &t.member, &format!("/documents/{}", ingested["document_id"].as_str().unwrap())).await;
    assert_eq!(handbook["org_id"], org.as_str());
    post(&app, &t.admin, &format!("/documents/{did}/links"), json!({"target_id": oid})).await;

    // Reading: org:knowledge:read (org:member has it, the guest role not).
    let reads = [
        format!("/folders?org_id={org}"),
        format!("/folders/{fid}"),
        format!("/documents?org_id={org}"),
        format!("/documents?folder_id={fid}"),
        format!("/documents/{did}"),
        format!("/documents/{did}/versions"),
        format!("/documents/{did}/versions/1"),
        format!("/documents/{did}/chunks"),
        format!("/documents/{did}/links"),
        format!("/files?org_id={org}"),
        format!("/files/{file_id}"),
    ];
    for path in &reads {
        for (u, want) in [(&t.member, 200), (&t.guest, 403), (&t.stranger, 404)] {
            let (s, b) = send(u, Method::GET, path.clone(), None).await;
            assert_eq!(s, want, "GET {path} as {}: {b}", u.id);
            if want == 403 {
                assert_eq!(b["error"]["code"], "insufficient_permission", "{b}");
            }
        }
    }
    for body in [json!({"query": "pager", "org_id": org}), json!({"query": "pager", "folder_id": fid})] {
        for (u, want) in [(&t.member, 200), (&t.guest, 403), (&t.stranger, 404)] {
            assert_eq!(send(u, Method::POST, "/search".into(), Some(body.clone())).await.0, want, "search {body}");
        }
    }
    let hits = search(&app, &t.member, json!({"query": "pager Monday", "org_id": org})).await;
    assert_eq!(titles(&hits)[0], "Pager duty");
    let hits = search(&app, &t.member, json!({"query": "ship Thursdays", "org_id": org})).await;
    assert_eq!(titles(&hits)[0], handbook["title"].as_str().unwrap(), "{hits}");
    // A member's own knowledge does not hold the organization's.
    let mine = search(&app, &t.admin, json!({"query": "pager Monday"})).await;
    assert!(mine["data"].as_array().unwrap().is_empty(), "{mine}");
    assert_eq!(get(&app, &t.admin, "/folders").await, json!([]));

    // Writing: org:knowledge:write.
    let writes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, "/folders".into(), Some(json!({"name": "New", "org_id": org}))),
        (Method::POST, "/folders".into(), Some(json!({"name": "Sub", "parent_id": fid}))),
        (Method::PATCH, format!("/folders/{fid}"), Some(json!({"name": "Renamed"}))),
        (Method::DELETE, format!("/folders/{fid}"), None),
        (Method::POST, "/documents".into(), Some(json!({"title": "T", "body": "b", "org_id": org}))),
        (Method::POST, "/documents".into(), Some(json!({"title": "T", "body": "b", "folder_id": fid}))),
        (Method::PUT, format!("/documents/{did}"), Some(json!({"body": "changed"}))),
        (Method::PATCH, format!("/documents/{did}"), Some(json!({"tags": ["x"]}))),
        (Method::DELETE, format!("/documents/{did}"), None),
        (Method::POST, format!("/documents/{did}/links"), Some(json!({"target_id": oid}))),
        (Method::DELETE, format!("/documents/{did}/links/{oid}"), None),
        (Method::POST, "/files".into(), Some(json!({"bucket": "team-docs", "name": "handbook.md", "org_id": org}))),
        (Method::POST, format!("/files/{file_id}/reingest"), None),
        (Method::DELETE, format!("/files/{file_id}"), None),
    ];
    for (method, path, body) in &writes {
        for (u, want) in [(&t.member, 403), (&t.guest, 403), (&t.stranger, 404)] {
            let (s, b) = send(u, method.clone(), path.clone(), body.clone()).await;
            assert_eq!(s, want, "{method} {path} as {}: {b}", u.id);
        }
    }
    assert_eq!(get(&app, &t.member, &format!("/documents/{did}")).await["version"], 1, "nothing was changed");
    let (s, b) =
        send(&t.owner, Method::PUT, format!("/documents/{did}"), Some(json!({"body": "Rotate weekly."}))).await;
    assert_eq!((s, b["version"].as_i64()), (200, Some(2)), "{b}");
    // Moving between spaces is not possible: a folder of another space is not found.
    let own = post(&app, &t.admin, "/folders", json!({"name": "Mine"})).await;
    let (s, _) =
        send(&t.admin, Method::PATCH, format!("/documents/{did}"), Some(json!({"folder_id": own["id"]}))).await;
    assert_eq!(s, 404);

    // Files come from the organization's buckets only, read with org:storage:read.
    let (s, _) = app.post_as("/storage/v1/bucket", &storage_key(&app).await, &json!({"name": "personal"})).await;
    assert_eq!(s, 200);
    upload(&app, &t.admin.jwt, "personal", "own.md", b"# Own\n\nprivate".to_vec(), "text/markdown").await;
    let (s, _) = send(
        &t.admin,
        Method::POST,
        "/files".into(),
        Some(json!({"bucket": "personal", "name": "own.md", "org_id": org})),
    )
    .await;
    assert_eq!(s, 404, "a personal object does not feed the organization");
    let (s, _) =
        send(&t.admin, Method::POST, "/files".into(), Some(json!({"bucket": "team-docs", "name": "handbook.md"})))
            .await;
    assert_eq!(s, 404, "a shared object does not feed a member's own knowledge");
    let (s, _) = app
        .post_as(
            &format!("/v1/orgs/{org}/roles"),
            &t.owner.jwt,
            &json!({"key": "org:scribe", "name": "Scribe", "permissions": ["org:knowledge:write"]}),
        )
        .await;
    assert_eq!(s, 201);
    crate::harness::set_org_role(&app.pool, &org, t.guest.id, "org:scribe").await;
    let (s, b) = send(
        &t.guest,
        Method::POST,
        "/files".into(),
        Some(json!({"bucket": "team-docs", "name": "handbook.md", "org_id": org})),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("insufficient_permission")),
        "ingesting needs org:storage:read too"
    );
    let (s, _) = send(&t.guest, Method::GET, format!("/documents/{did}"), None).await;
    assert_eq!(s, 200, "writing includes reading");

    // Context assembly takes knowledge from the shared space when asked (or by folder).
    let ask = |u: &User, body: Value| app.call(Method::POST, "/v1/context").by(&u.jwt).json(&body).reply();
    for body in [
        json!({"query": "rotate weekly", "sections": ["knowledge"], "knowledge_org_id": org}),
        json!({"query": "rotate weekly", "sections": ["knowledge"], "knowledge_folder_id": fid}),
    ] {
        let (s, ctx) = ask(&t.member, body.clone()).await;
        assert_eq!(s, 200, "{ctx}");
        assert!(ctx["text"].as_str().unwrap().contains("Rotate weekly."), "{ctx}");
        assert_eq!(ask(&t.stranger, body.clone()).await.0, 404);
    }
    let (_, own) = ask(&t.member, json!({"query": "rotate weekly", "sections": ["knowledge"]})).await;
    assert!(!own["text"].as_str().unwrap().contains("Rotate"), "my own context holds no shared knowledge: {own}");
    // Or from my own space and the organization's together, ranked as one list.
    post(&app, &t.member, "/documents", json!({"title": "My notes", "body": "I rotate my own keys weekly too."})).await;
    let both = json!({"query": "rotate weekly", "sections": ["knowledge"], "knowledge_org_ids": [org]});
    let (s, ctx) = ask(&t.member, both.clone()).await;
    assert_eq!(s, 200, "{ctx}");
    let text = ctx["text"].as_str().unwrap();
    assert!(text.contains("Rotate weekly.") && text.contains("I rotate my own keys weekly too."), "{ctx}");
    let (_, mine) = ask(&t.member, json!({"query": "rotate weekly", "sections": ["knowledge"]})).await;
    assert!(
        mine["text"].as_str().unwrap().contains("my own keys")
            && !mine["text"].as_str().unwrap().contains("Rotate weekly.")
    );
    assert_eq!(ask(&t.stranger, both).await.0, 404, "each organization is checked");
    let (s, e) = ask(
        &t.member,
        json!({"query": "rotate", "sections": ["knowledge"], "knowledge_org_ids": [org], "knowledge_org_id": org}),
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("invalid_knowledge_scope")));
    // Search likewise: my own and the organization's hits in one ranked list, each
    // organization's hit naming it; pages follow the merged list.
    let search = |u: &User, body: Value| app.call(Method::POST, &format!("{K}/search")).by(&u.jwt).json(&body).reply();
    let (s, page) = search(&t.member, json!({"query": "rotate weekly", "org_ids": [org]})).await;
    assert_eq!(s, 200, "{page}");
    let hits = page["data"].as_array().unwrap();
    let org_of = |title: &str| hits.iter().find(|h| h["title"] == title).map(|h| h["org_id"].clone());
    assert_eq!(org_of("My notes"), Some(Value::Null), "my own hit names no organization: {page}");
    assert_eq!(org_of("Pager duty"), Some(json!(org)), "{page}");
    let fused: Vec<f64> = hits.iter().map(|h| h["scores"]["fused"].as_f64().unwrap()).collect();
    assert!(fused.windows(2).all(|w| w[0] >= w[1]), "one list, best first: {fused:?}");
    let (_, first) = search(&t.member, json!({"query": "rotate weekly", "org_ids": [org], "limit": 1})).await;
    let cursor = first["next_cursor"].as_str().expect("a next page").to_string();
    let (_, second) =
        search(&t.member, json!({"query": "rotate weekly", "org_ids": [org], "limit": 1, "cursor": cursor})).await;
    assert_eq!(first["data"][0]["chunk_id"], hits[0]["chunk_id"]);
    assert_eq!(second["data"][0]["chunk_id"], hits[1]["chunk_id"]);
    assert_eq!(search(&t.stranger, json!({"query": "rotate", "org_ids": [org]})).await.0, 404);
    let (s, e) = search(&t.member, json!({"query": "rotate", "org_ids": [org], "org_id": org})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("invalid_scope")));
    let (s, e) = search(&t.member, json!({"query": "rotate", "org_ids": vec![org.clone(); 11]})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (422, Some("invalid_scope")));

    // Removal from the organization ends access at once.
    let (s, _) = app.delete_as(&format!("/v1/orgs/{org}/members/{}", t.member.id), &t.owner.jwt).await;
    assert_eq!(s, 204);
    assert_eq!(send(&t.member, Method::GET, format!("/documents/{did}"), None).await.0, 404);
    let (s, _) = ask(&t.member, json!({"query": "rotate", "sections": ["knowledge"], "knowledge_org_id": org})).await;
    assert_eq!(s, 404);

    // Deleting the organization deletes its knowledge.
    let (s, _) = app.delete_as(&format!("/v1/orgs/{org}?confirm=true"), &t.owner.jwt).await;
    assert_eq!(s, 204);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM kb_documents WHERE space_id = $1::uuid")
        .bind(&org)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(get(&app, &t.admin, "/folders").await[0]["name"], "Mine", "members keep their own");
    runner.shutdown().await;
}
