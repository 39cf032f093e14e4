//! Storage: the Supabase Storage API over both object stores (local directory and a
//! real S3 server), ownership (user B gets not-found in every route), limits,
//! signed URLs, listings, the orphan sweeper, TUS and the real `@supabase/storage-js`.
//! Every case runs twice: `storage::fs::*` and `storage::s3::*`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Backend, Call, TestApp, User, sign_up};

/// An app with a service key and two users.
pub struct St {
    pub app: TestApp,
    pub key: String,
    pub a: User,
    pub b: User,
}

impl St {
    pub async fn new(backend: Backend) -> St {
        Self::with(backend, |_| {}).await
    }

    pub async fn with(backend: Backend, f: impl FnOnce(&mut carmenta::config::Config)) -> St {
        let app = TestApp::builder().config(f).backend(backend).await.spawn().await;
        let (key, _) = carmenta::auth::service::create_service_key(&app.pool, "storage", true).await.unwrap();
        let a = sign_up(&app, "a@example.com").await;
        let b = sign_up(&app, "b@example.com").await;
        St { app, key, a, b }
    }

    pub fn url(&self, path: &str) -> String {
        self.app.url(&format!("/storage/v1{path}"))
    }

    /// A request with `token` as bearer (`""`: anonymous).
    pub fn req(&self, method: Method, path: &str, token: &str) -> Call {
        let r = self.app.call(method, &format!("/storage/v1{path}"));
        if token.is_empty() { r } else { r.by(token) }
    }

    pub async fn bucket(&self, id: &str, body: Value) {
        let mut body = body;
        body["name"] = json!(id);
        let r = self.req(Method::POST, "/bucket", &self.key).json(&body).send().await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    pub async fn put(&self, token: &str, bucket: &str, key: &str, body: &'static [u8], ct: &str) -> reqwest::Response {
        self.req(Method::POST, &format!("/object/{bucket}/{key}"), token)
            .header("content-type", ct)
            .body(body)
            .send()
            .await
    }
}

/// Asserts a Supabase-shaped error: HTTP status, string `statusCode`, `code`.
pub async fn err(r: reqwest::Response, http: u16, status: &str, code: &str) -> Value {
    let got = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(got, http, "{body}");
    assert_eq!(body["statusCode"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].is_string() && body["error"].is_string(), "{body}");
    body
}

async fn blob_count(st: &St) -> usize {
    st.app.state.storage.blobs.list("blobs").await.unwrap().len()
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod fs {
            $( #[tokio::test] async fn $name() { super::$name(crate::harness::Backend::Fs).await } )*
        }
        mod s3 {
            $( #[tokio::test] async fn $name() { super::$name(crate::harness::Backend::S3).await } )*
        }
    };
}

both_backends!(
    buckets,
    upload_download_and_headers,
    multipart_upload,
    limits_and_keys,
    ownership,
    listing,
    move_and_copy,
    signed_urls,
    large_object_streams,
    sweeper_removes_orphans,
    storage_js_client,
    tus_resume,
);

async fn buckets(backend: Backend) {
    let st = St::new(backend).await;
    st.bucket("avatars", json!({"public": true, "file_size_limit": "1MB", "allowed_mime_types": ["image/*"]})).await;
    st.bucket("docs", json!({"public": false, "file_size_limit": 1000})).await;
    // Duplicate, bad names, not a service key.
    let r = st.req(Method::POST, "/bucket", &st.key).json(&json!({"name": "docs"})).send().await;
    err(r, 400, "409", "BucketAlreadyExists").await;
    // Names the routes use are reserved (`/object/public/…` could not reach a bucket "public").
    for bad in ["", "a/b", " lead", &"x".repeat(101), "public", "sign", "authenticated"] {
        let r = st.req(Method::POST, "/bucket", &st.key).json(&json!({"name": bad})).send().await;
        err(r, 400, "400", "InvalidBucketName").await;
    }
    let r = st.req(Method::POST, "/bucket", &st.a.jwt).json(&json!({"name": "mine"})).send().await;
    err(r, 403, "403", "AccessDenied").await;
    let r =
        st.req(Method::POST, "/bucket", &st.key).json(&json!({"name": "x", "file_size_limit": "lots"})).send().await;
    err(r, 400, "400", "InvalidRequest").await;
    // Get and list (any signed-in user may read bucket settings).
    let b: Value = st.req(Method::GET, "/bucket/avatars", &st.a.jwt).value().await;
    assert_eq!(b["public"], true);
    assert_eq!(b["file_size_limit"], 1_000_000);
    assert_eq!(b["allowed_mime_types"], json!(["image/*"]));
    let r = st.req(Method::GET, "/bucket/nope", &st.key).send().await;
    err(r, 400, "404", "NoSuchBucket").await;
    let list: Value = st.req(Method::GET, "/bucket?sortColumn=name&sortOrder=desc", &st.key).value().await;
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["docs", "avatars"]);
    let r = st.req(Method::GET, "/bucket", "").send().await;
    err(r, 403, "403", "AccessDenied").await;
    // Update.
    let r = st
        .req(Method::PUT, "/bucket/docs", &st.key)
        .json(&json!({"public": true, "file_size_limit": null, "allowed_mime_types": ["text/plain"]}))
        .send()
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Successfully updated");
    let b: Value = st.req(Method::GET, "/bucket/docs", &st.key).value().await;
    assert_eq!((b["public"].clone(), b["file_size_limit"].clone()), (json!(true), Value::Null));
    let r = st.req(Method::PUT, "/bucket/docs", &st.a.jwt).json(&json!({"public": false})).send().await;
    err(r, 403, "403", "AccessDenied").await;
    // A non-empty bucket refuses deletion; empty it, then it goes.
    assert_eq!(st.put(&st.key, "docs", "a.txt", b"hello", "text/plain").await.status(), 200);
    assert_eq!(blob_count(&st).await, 1);
    let r = st.req(Method::DELETE, "/bucket/docs", &st.key).json(&json!({})).send().await;
    err(r, 400, "409", "ResourceNotEmpty").await;
    let r = st.req(Method::POST, "/bucket/docs/empty", &st.key).json(&json!({})).send().await;
    assert_eq!(r.status(), 200);
    assert_eq!(blob_count(&st).await, 0, "emptying removes the bytes too");
    let r = st.req(Method::DELETE, "/bucket/docs", &st.key).json(&json!({})).send().await;
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Successfully deleted");
    let r = st.req(Method::GET, "/bucket/docs", &st.key).send().await;
    err(r, 400, "404", "NoSuchBucket").await;
}

async fn upload_download_and_headers(backend: Backend) {
    let st = St::new(backend).await;
    st.bucket("files", json!({})).await;
    let meta = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, br#"{"k":"v"}"#);
    let r = st
        .req(Method::POST, "/object/files/dir/hello.txt", &st.a.jwt)
        .header("content-type", "text/plain;charset=UTF-8")
        .header("cache-control", "max-age=3600")
        .header("x-metadata", meta)
        .body("hello world")
        .send()
        .await;
    assert_eq!(r.status(), 200);
    let up: Value = r.json().await.unwrap();
    assert_eq!(up["Key"], "files/dir/hello.txt");
    assert!(up["Id"].is_string());
    // Download with its headers.
    let r = st.req(Method::GET, "/object/files/dir/hello.txt", &st.a.jwt).send().await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/plain;charset=UTF-8");
    assert_eq!(h["cache-control"], "max-age=3600");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-length"], "11");
    assert_eq!(h["x-robots-tag"], "none");
    let etag = h["etag"].to_str().unwrap().to_string();
    let modified = h["last-modified"].to_str().unwrap().to_string();
    assert_eq!(r.text().await.unwrap(), "hello world");
    // Same through /object/authenticated, and HEAD.
    let r = st.req(Method::HEAD, "/object/authenticated/files/dir/hello.txt", &st.a.jwt).send().await;
    assert_eq!((r.status(), r.headers()["content-length"].to_str().unwrap()), (StatusCode::OK, "11"));
    // Ranges.
    let r = st.req(Method::GET, "/object/files/dir/hello.txt", &st.a.jwt).header("range", "bytes=6-").send().await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 6-10/11");
    assert_eq!(r.text().await.unwrap(), "world");
    let r = st.req(Method::GET, "/object/files/dir/hello.txt", &st.a.jwt).header("range", "bytes=-3").send().await;
    assert_eq!(r.text().await.unwrap(), "rld");
    let r = st.req(Method::GET, "/object/files/dir/hello.txt", &st.a.jwt).header("range", "bytes=20-30").send().await;
    assert_eq!(r.headers()["content-range"], "bytes */11");
    err(r, 416, "416", "InvalidRange").await;
    // Conditional requests.
    let r = st.req(Method::GET, "/object/files/dir/hello.txt", &st.a.jwt).header("if-none-match", &etag).send().await;
    assert_eq!(r.status(), 304);
    let r = st
        .req(Method::GET, "/object/files/dir/hello.txt", &st.a.jwt)
        .header("if-modified-since", &modified)
        .send()
        .await;
    assert_eq!(r.status(), 304);
    let r = st
        .req(Method::GET, "/object/files/dir/hello.txt", &st.a.jwt)
        .header("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")
        .send()
        .await;
    assert_eq!(r.status(), 200);
    // ?download.
    let r = st.req(Method::GET, "/object/files/dir/hello.txt?download", &st.a.jwt).send().await;
    assert_eq!(r.headers()["content-disposition"], "attachment;");
    let r = st.req(Method::GET, "/object/files/dir/hello.txt?download=r%C3%A9sum%C3%A9.txt", &st.a.jwt).send().await;
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=r%C3%A9sum%C3%A9%2Etxt; filename*=UTF-8''r%C3%A9sum%C3%A9%2Etxt"
    );
    // Info.
    let info: Value = st.req(Method::GET, "/object/info/files/dir/hello.txt", &st.a.jwt).value().await;
    assert_eq!(info["size"], 11);
    assert_eq!(info["metadata"], json!({"k": "v"}));
    assert_eq!(info["etag"], etag.as_str());
    assert_eq!(info["bucket_id"], "files");
    // A taken key without x-upsert: 409; with it: replaced, old bytes gone.
    let r = st.put(&st.a.jwt, "files", "dir/hello.txt", b"again", "text/plain").await;
    err(r, 400, "409", "Duplicate").await;
    let r = st
        .req(Method::POST, "/object/files/dir/hello.txt", &st.a.jwt)
        .header("x-upsert", "true")
        .body("replaced")
        .send()
        .await;
    assert_eq!(r.status(), 200);
    let r = st.req(Method::PUT, "/object/files/dir/hello.txt", &st.a.jwt).body("updated!").send().await;
    assert_eq!(r.status(), 200);
    let r = st.req(Method::GET, "/object/files/dir/hello.txt", &st.a.jwt).send().await;
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.text().await.unwrap(), "updated!");
    assert_eq!(blob_count(&st).await, 1, "overwritten versions' bytes are deleted");
    // Missing objects, buckets, routes.
    let r = st.req(Method::GET, "/object/files/nope.txt", &st.a.jwt).send().await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    err(r, 400, "404", "NoSuchKey").await;
    let r = st.req(Method::GET, "/object/nobucket/x", &st.a.jwt).send().await;
    err(r, 400, "404", "NoSuchBucket").await;
    let r = st.req(Method::GET, "/nothing/here", &st.a.jwt).send().await;
    err(r, 404, "404", "InvalidRequest").await;
    let r = st.req(Method::GET, "/object/files/dir/hello.txt", "not-a-token").send().await;
    err(r, 400, "400", "InvalidJWT").await;
    // Delete one.
    let r = st.req(Method::DELETE, "/object/files/dir/hello.txt", &st.a.jwt).send().await;
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Successfully deleted");
    assert_eq!(blob_count(&st).await, 0);
}

async fn multipart_upload(backend: Backend) {
    let st = St::new(backend).await;
    st.bucket("files", json!({})).await;
    let form = reqwest::multipart::Form::new().text("cacheControl", "120").text("metadata", r#"{"from":"form"}"#).part(
        "",
        reqwest::multipart::Part::bytes(b"<svg/>".to_vec()).file_name("blob").mime_str("image/svg+xml").unwrap(),
    );
    let r = st.req(Method::POST, "/object/files/pic.svg", &st.a.jwt).multipart(form).send().await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = st.req(Method::GET, "/object/files/pic.svg", &st.a.jwt).send().await;
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    assert_eq!(r.headers()["cache-control"], "max-age=120");
    assert_eq!(r.text().await.unwrap(), "<svg/>");
    let info: Value = st.req(Method::GET, "/object/info/files/pic.svg", &st.a.jwt).value().await;
    assert_eq!(info["metadata"], json!({"from": "form"}));
    // A form without a file.
    let form = reqwest::multipart::Form::new().text("cacheControl", "120");
    let r = st.req(Method::POST, "/object/files/none.bin", &st.a.jwt).multipart(form).send().await;
    err(r, 400, "400", "InvalidRequest").await;
}

async fn limits_and_keys(backend: Backend) {
    let st = St::with(backend, |c| c.storage_max_file_size = 64 * 1024).await;
    st.bucket("img", json!({"file_size_limit": "1KB", "allowed_mime_types": ["image/*", "application/pdf"]})).await;
    st.bucket("big", json!({})).await;
    let r = st.put(&st.a.jwt, "img", "a.png", &[0u8; 1001], "image/png").await;
    err(r, 400, "413", "EntityTooLarge").await;
    assert_eq!(st.put(&st.a.jwt, "img", "a.png", &[0u8; 1000], "image/png").await.status(), 200);
    let r = st.put(&st.a.jwt, "img", "a.txt", b"hi", "text/plain").await;
    let body = err(r, 400, "415", "InvalidMimeType").await;
    assert_eq!(body["message"], "mime type text/plain is not supported");
    assert_eq!(st.put(&st.a.jwt, "img", "a.pdf", b"%PDF", "application/pdf").await.status(), 200);
    // The global limit caps every bucket, also for bodies without a length.
    let r = st.put(&st.a.jwt, "big", "x.bin", &[1u8; 64 * 1024 + 1], "application/octet-stream").await;
    err(r, 400, "413", "EntityTooLarge").await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..70).map(|_| Ok(vec![7u8; 1024])).collect();
    let r = st
        .req(Method::POST, "/object/big/stream.bin", &st.a.jwt)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    err(r, 400, "413", "EntityTooLarge").await;
    assert_eq!(blob_count(&st).await, 2, "refused uploads leave no bytes");
    // Keys.
    // Encoded so the client sends them as they are (it would resolve a literal `..`).
    for bad in ["a//b", "..%2Fx", "a%2F..%2Fb", "a%2F.%2Fb", "%00x", "a%5Cb", "%0Aa", "%2Flead"] {
        let r = st.put(&st.a.jwt, "big", bad, b"x", "text/plain").await;
        err(r, 400, "400", "InvalidKey").await;
    }
    let long = "k".repeat(1025);
    let r = st.put(&st.a.jwt, "big", &long, b"x", "text/plain").await;
    err(r, 400, "400", "InvalidKey").await;
    assert_eq!(st.put(&st.a.jwt, "big", "ünïcode/ok%20name.txt", b"x", "text/plain").await.status(), 200);
    let r = st.req(Method::GET, "/object/big/%C3%BCn%C3%AFcode/ok%20name.txt", &st.a.jwt).send().await;
    assert_eq!(r.status(), 200);
}

async fn ownership(backend: Backend) {
    let st = St::new(backend).await;
    st.bucket("private", json!({})).await;
    st.bucket("open", json!({"public": true})).await;
    assert_eq!(st.put(&st.a.jwt, "private", "a/secret.txt", b"A's secret", "text/plain").await.status(), 200);
    assert_eq!(st.put(&st.a.jwt, "open", "a/open.txt", b"A's open file", "text/plain").await.status(), 200);
    let b = &st.b.jwt;
    let nsk = |r| err(r, 400, "404", "NoSuchKey");
    // Every route on A's private object answers B with NoSuchKey.
    nsk(st.req(Method::GET, "/object/private/a/secret.txt", b).send().await).await;
    nsk(st.req(Method::GET, "/object/authenticated/private/a/secret.txt", b).send().await).await;
    let r = st.req(Method::HEAD, "/object/private/a/secret.txt", b).send().await;
    assert_eq!(r.status(), 400);
    nsk(st.req(Method::GET, "/object/info/private/a/secret.txt", b).send().await).await;
    nsk(st.req(Method::GET, "/object/info/authenticated/private/a/secret.txt", b).send().await).await;
    nsk(st.req(Method::DELETE, "/object/private/a/secret.txt", b).send().await).await;
    nsk(st.req(Method::POST, "/object/sign/private/a/secret.txt", b).json(&json!({"expiresIn": 60})).send().await)
        .await;
    let many: Value = st
        .req(Method::POST, "/object/sign/private", b)
        .json(&json!({"expiresIn": 60, "paths": ["a/secret.txt"]}))
        .value()
        .await;
    assert_eq!(many[0]["signedURL"], Value::Null);
    assert!(many[0]["error"].is_string());
    let mv = json!({"bucketId": "private", "sourceKey": "a/secret.txt", "destinationKey": "b/stolen.txt"});
    nsk(st.req(Method::POST, "/object/move", b).json(&mv).send().await).await;
    nsk(st.req(Method::POST, "/object/copy", b).json(&mv).send().await).await;
    let removed: Value =
        st.req(Method::DELETE, "/object/private", b).json(&json!({"prefixes": ["a/secret.txt"]})).value().await;
    assert_eq!(removed, json!([]));
    let listed: Value = st.req(Method::POST, "/object/list/private", b).json(&json!({"prefix": "a"})).value().await;
    assert_eq!(listed, json!([]));
    let listed: Value = st.req(Method::POST, "/object/list-v2/private", b).json(&json!({"prefix": ""})).value().await;
    assert_eq!(listed["objects"], json!([]));
    assert_eq!(listed["folders"], json!([]));
    // B cannot overwrite A's key (Supabase's row-level-security answer), nor sign an upload to it.
    let r = st.req(Method::PUT, "/object/private/a/secret.txt", b).body("mine now").send().await;
    err(r, 403, "403", "AccessDenied").await;
    let r = st.req(Method::POST, "/object/upload/sign/private/a/secret.txt", b).header("x-upsert", "true").send().await;
    err(r, 403, "403", "AccessDenied").await;
    // Anonymous: nothing private.
    nsk(st.req(Method::GET, "/object/private/a/secret.txt", "").send().await).await;
    let r = st.put("", "private", "anon.txt", b"x", "text/plain").await;
    err(r, 403, "403", "AccessDenied").await;
    // A and the service key still see it, untouched.
    let r = st.req(Method::GET, "/object/private/a/secret.txt", &st.a.jwt).send().await;
    assert_eq!(r.text().await.unwrap(), "A's secret");
    let r = st.req(Method::GET, "/object/private/a/secret.txt", &st.key).send().await;
    assert_eq!(r.text().await.unwrap(), "A's secret");
    // A session cookie works like a bearer token.
    let r = st
        .app
        .client
        .get(st.url("/object/private/a/secret.txt"))
        .header("cookie", format!("carmenta_session={}", st.a.session))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Public buckets: anyone reads, by both URL forms, even with a bad token; only the owner writes.
    let r = st.req(Method::GET, "/object/public/open/a/open.txt", "").send().await;
    assert_eq!(r.text().await.unwrap(), "A's open file");
    let r = st.req(Method::GET, "/object/open/a/open.txt", "garbage").send().await;
    assert_eq!(r.status(), 200);
    let r = st.req(Method::GET, "/object/info/public/open/a/open.txt", "").send().await;
    assert_eq!(r.status(), 200);
    let r = st.req(Method::GET, "/object/public/private/a/secret.txt", "").send().await;
    err(r, 400, "404", "NoSuchBucket").await;
    nsk(st.req(Method::DELETE, "/object/open/a/open.txt", b).send().await).await;
    let r = st.req(Method::PUT, "/object/open/a/open.txt", b).body("defaced").send().await;
    err(r, 403, "403", "AccessDenied").await;
    // A service key acting for B creates an object owned by B.
    let r = st
        .req(Method::POST, "/object/private/b/from-backend.txt", &st.key)
        .header("x-carmenta-user-id", st.b.id.to_string())
        .body("for b")
        .send()
        .await;
    assert_eq!(r.status(), 200);
    let r = st.req(Method::GET, "/object/private/b/from-backend.txt", b).send().await;
    assert_eq!(r.text().await.unwrap(), "for b");
    nsk(st.req(Method::GET, "/object/private/b/from-backend.txt", &st.a.jwt).send().await).await;
    // Deleting a user deletes their objects' rows (bytes go with the sweeper).
    let r = st.app.call(Method::DELETE, "/v1/me").by(&st.a.jwt).send().await;
    assert!(r.status().is_success());
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM storage_objects WHERE owner_id = $1")
        .bind(st.a.id)
        .fetch_one(&st.app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

async fn listing(backend: Backend) {
    let st = St::new(backend).await;
    st.bucket("l", json!({})).await;
    for k in ["top.txt", "docs/a.txt", "docs/b.txt", "docs/deep/c.txt", "img/x.png", "docs2.txt"] {
        assert_eq!(st.put(&st.a.jwt, "l", k, b"data", "text/plain").await.status(), 200, "{k}");
    }
    let list = |body: Value| {
        let st = &st;
        async move {
            let r = st.req(Method::POST, "/object/list/l", &st.a.jwt).json(&body).send().await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let root =
        list(json!({"prefix": "", "limit": 100, "offset": 0, "sortBy": {"column": "name", "order": "asc"}})).await;
    let names: Vec<(&str, bool)> =
        root.as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e["id"].is_null())).collect();
    assert_eq!(names, [("docs", true), ("docs2.txt", false), ("img", true), ("top.txt", false)]);
    assert_eq!(root[0]["metadata"], Value::Null);
    assert_eq!(root[1]["metadata"]["size"], 4);
    assert_eq!(root[1]["metadata"]["mimetype"], "text/plain");
    let docs = list(json!({"prefix": "docs"})).await;
    let names: Vec<&str> = docs.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a.txt", "b.txt", "deep"]);
    let searched = list(json!({"prefix": "docs/", "search": "b"})).await;
    assert_eq!(searched.as_array().unwrap().len(), 1);
    let paged =
        list(json!({"prefix": "docs", "limit": 1, "offset": 1, "sortBy": {"column": "name", "order": "desc"}})).await;
    assert_eq!(paged[0]["name"], "b.txt");
    let r = st.req(Method::POST, "/object/list/l", &st.a.jwt).json(&json!({"limit": 1})).send().await;
    err(r, 400, "400", "InvalidRequest").await;
    // v2: flat with a cursor, and with a delimiter.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut body = json!({"prefix": "", "limit": 4});
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        let page: Value = st.req(Method::POST, "/object/list-v2/l", &st.a.jwt).json(&body).value().await;
        seen.extend(page["objects"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap().to_string()));
        if page["hasNext"] == false {
            break;
        }
        cursor = Some(page["nextCursor"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["docs/a.txt", "docs/b.txt", "docs/deep/c.txt", "docs2.txt", "img/x.png", "top.txt"]);
    let v2: Value = st
        .req(Method::POST, "/object/list-v2/l", &st.a.jwt)
        .json(&json!({"prefix": "docs/", "with_delimiter": true}))
        .value()
        .await;
    assert_eq!(v2["folders"], json!([{"name": "deep", "key": "docs/deep/"}]));
    let keys: Vec<&str> = v2["objects"].as_array().unwrap().iter().map(|o| o["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["docs/a.txt", "docs/b.txt"]);
    let r = st.req(Method::POST, "/object/list-v2/l", &st.a.jwt).json(&json!({"cursor": "!!"})).send().await;
    err(r, 400, "400", "InvalidRequest").await;
    // Remove many at once; over 1000 refused.
    let removed: Value = st
        .req(Method::DELETE, "/object/l", &st.a.jwt)
        .json(&json!({"prefixes": ["docs/a.txt", "docs/b.txt", "missing.txt"]}))
        .value()
        .await;
    let mut names: Vec<&str> = removed.as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["docs/a.txt", "docs/b.txt"]);
    let many: Vec<String> = (0..1001).map(|i| format!("k{i}")).collect();
    let r = st.req(Method::DELETE, "/object/l", &st.a.jwt).json(&json!({"prefixes": many})).send().await;
    err(r, 400, "400", "InvalidRequest").await;
}

async fn move_and_copy(backend: Backend) {
    let st = St::new(backend).await;
    st.bucket("src", json!({})).await;
    st.bucket("dst", json!({})).await;
    st.bucket("pics", json!({"allowed_mime_types": ["image/png"]})).await;
    assert_eq!(st.put(&st.a.jwt, "src", "one.txt", b"first", "text/plain").await.status(), 200);
    assert_eq!(st.put(&st.a.jwt, "src", "two.txt", b"second", "text/plain").await.status(), 200);
    let call = |path: &'static str, body: Value| {
        let st = &st;
        async move { st.req(Method::POST, path, &st.a.jwt).json(&body).send().await }
    };
    let r = call("/object/move", json!({"bucketId": "src", "sourceKey": "one.txt", "destinationKey": "moved/one.txt"}))
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["message"], "Successfully moved");
    let r = st.req(Method::GET, "/object/src/moved/one.txt", &st.a.jwt).send().await;
    assert_eq!(r.text().await.unwrap(), "first");
    err(st.req(Method::GET, "/object/src/one.txt", &st.a.jwt).send().await, 400, "404", "NoSuchKey").await;
    // Across buckets; onto a taken key; into a bucket whose rules refuse it.
    let r = call(
        "/object/move",
        json!({"bucketId": "src", "sourceKey": "moved/one.txt", "destinationKey": "one.txt", "destinationBucket": "dst"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = call(
        "/object/move",
        json!({"bucketId": "src", "sourceKey": "two.txt", "destinationKey": "one.txt", "destinationBucket": "dst"}),
    )
    .await;
    err(r, 400, "409", "KeyAlreadyExists").await;
    let r = call(
        "/object/move",
        json!({"bucketId": "src", "sourceKey": "two.txt", "destinationKey": "t.txt", "destinationBucket": "pics"}),
    )
    .await;
    err(r, 400, "415", "InvalidMimeType").await;
    // Copy: new bytes, independent of the source.
    let r = call(
        "/object/copy",
        json!({"bucketId": "src", "sourceKey": "two.txt", "destinationKey": "copy.txt", "destinationBucket": "dst"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["Key"], "dst/copy.txt");
    let r = st.req(Method::DELETE, "/object/src/two.txt", &st.a.jwt).send().await;
    assert_eq!(r.status(), 200);
    let r = st.req(Method::GET, "/object/dst/copy.txt", &st.a.jwt).send().await;
    assert_eq!(r.text().await.unwrap(), "second");
    let r =
        call("/object/copy", json!({"bucketId": "dst", "sourceKey": "copy.txt", "destinationKey": "one.txt"})).await;
    err(r, 400, "409", "Duplicate").await;
    let r = st
        .req(Method::POST, "/object/copy", &st.a.jwt)
        .header("x-upsert", "true")
        .json(&json!({"bucketId": "dst", "sourceKey": "copy.txt", "destinationKey": "one.txt", "metadata": {"mimetype": "text/markdown"}}))
        .send().await;
    assert_eq!(r.status(), 200);
    let r = st.req(Method::GET, "/object/dst/one.txt", &st.a.jwt).send().await;
    assert_eq!(r.headers()["content-type"], "text/markdown");
    assert_eq!(r.text().await.unwrap(), "second");
    assert_eq!(blob_count(&st).await, 2, "one blob per live object");
}

async fn signed_urls(backend: Backend) {
    let st = St::new(backend).await;
    st.bucket("s", json!({})).await;
    assert_eq!(st.put(&st.a.jwt, "s", "doc.txt", b"signed content", "text/plain").await.status(), 200);
    let r = st.req(Method::POST, "/object/sign/s/doc.txt", &st.a.jwt).json(&json!({"expiresIn": 60})).send().await;
    let url = r.json::<Value>().await.unwrap()["signedURL"].as_str().unwrap().to_string();
    assert!(url.starts_with("/object/sign/s/doc.txt?token="), "{url}");
    let r = st.req(Method::GET, &url, "").send().await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("expires"));
    assert_eq!(r.text().await.unwrap(), "signed content");
    let r = st.req(Method::GET, &format!("{url}&download=x.txt"), "").send().await;
    assert!(r.headers()["content-disposition"].to_str().unwrap().contains("x%2Etxt"));
    // Tampered, for another object, missing, expired.
    let token = url.split("token=").nth(1).unwrap();
    let r = st.req(Method::GET, &format!("/object/sign/s/doc.txt?token={token}x"), "").send().await;
    err(r, 400, "400", "InvalidSignature").await;
    let r = st.req(Method::GET, &format!("/object/sign/s/other.txt?token={token}"), "").send().await;
    err(r, 400, "400", "InvalidSignature").await;
    let r = st.req(Method::GET, "/object/sign/s/doc.txt", "").send().await;
    err(r, 400, "400", "InvalidSignature").await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = st
        .app
        .state
        .storage
        .sign(&carmenta::storage::UrlClaims {
            url: "s/doc.txt".into(),
            scope: "download".into(),
            exp: now - 5,
            iat: now - 65,
            owner: None,
            upsert: None,
            transformations: None,
            by: None,
        })
        .unwrap();
    let r = st.req(Method::GET, &format!("/object/sign/s/doc.txt?token={expired}"), "").send().await;
    let body = err(r, 400, "400", "InvalidSignature").await;
    assert!(body["message"].as_str().unwrap().contains("expired"));
    let r = st.req(Method::POST, "/object/sign/s/doc.txt", &st.a.jwt).json(&json!({"expiresIn": 0})).send().await;
    err(r, 400, "400", "InvalidRequest").await;
    // Many at once, with a missing one.
    let many: Value = st
        .req(Method::POST, "/object/sign/s", &st.a.jwt)
        .json(&json!({"expiresIn": 60, "paths": ["doc.txt", "missing.txt"]}))
        .value()
        .await;
    assert_eq!(many[0]["error"], Value::Null);
    assert_eq!(many[1]["signedURL"], Value::Null);
    let r = st.req(Method::GET, many[0]["signedURL"].as_str().unwrap(), "").send().await;
    assert_eq!(r.text().await.unwrap(), "signed content");
    // Signed upload: the token carries the owner; a token for one key cannot write another.
    let r = st.req(Method::POST, "/object/upload/sign/s/up.txt", &st.a.jwt).send().await;
    let v: Value = r.json().await.unwrap();
    let up = v["url"].as_str().unwrap().to_string();
    let token = v["token"].as_str().unwrap().to_string();
    let r = st.req(Method::PUT, &up, "").header("content-type", "text/plain").body("via signed url").send().await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = st.req(Method::GET, "/object/s/up.txt", &st.a.jwt).send().await;
    assert_eq!(r.text().await.unwrap(), "via signed url");
    err(st.req(Method::GET, "/object/s/up.txt", &st.b.jwt).send().await, 400, "404", "NoSuchKey").await;
    let r =
        st.req(Method::PUT, &format!("/object/upload/sign/s/elsewhere.txt?token={token}"), "").body("x").send().await;
    err(r, 400, "400", "InvalidSignature").await;
    // Without upsert in the token, a second upload to the key is refused.
    let r = st.req(Method::PUT, &up, "").body("again").send().await;
    err(r, 400, "409", "Duplicate").await;
}

/// Pseudo-random bytes, reproducible from `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn large_object_streams(backend: Backend) {
    let st = St::new(backend).await;
    st.bucket("big", json!({})).await;
    // 20 MiB: more than two multipart parts; sent as a stream without a length.
    let data = pattern(20 * 1024 * 1024 + 123, 7);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = data.chunks(1 << 20).map(|c| Ok(c.to_vec())).collect();
    let r = st
        .req(Method::POST, "/object/big/blob.bin", &st.key)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = st.req(Method::GET, "/object/big/blob.bin", &st.key).send().await;
    assert_eq!(r.headers()["content-length"], data.len().to_string());
    let got = r.bytes().await.unwrap();
    assert!(got[..] == data[..], "round trip differs");
    let r =
        st.req(Method::GET, "/object/big/blob.bin", &st.key).header("range", "bytes=10000000-10000099").send().await;
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap()[..] == data[10_000_000..10_000_100]);
}

async fn sweeper_removes_orphans(backend: Backend) {
    let st = St::new(backend).await;
    st.bucket("s", json!({})).await;
    assert_eq!(st.put(&st.a.jwt, "s", "kept.txt", b"kept", "text/plain").await.status(), 200);
    // Bytes written with no row pointing at them: what a crash between the two leaves.
    let blobs = &st.app.state.storage.blobs;
    let orphan = carmenta::storage::Blobs::blob_path(uuid::Uuid::now_v7());
    let body = futures::stream::iter([Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"orphan"))]);
    blobs.write(&orphan, body, 100, false).await.unwrap();
    assert_eq!(blob_count(&st).await, 2);
    // Younger than the age limit: kept.
    let r = carmenta::storage::sweep(&st.app.pool, blobs, std::time::Duration::from_secs(3600)).await.unwrap();
    assert_eq!(r.orphan_blobs, 0);
    let r = carmenta::storage::sweep(&st.app.pool, blobs, std::time::Duration::ZERO).await.unwrap();
    assert_eq!(r.orphan_blobs, 1);
    assert_eq!(blob_count(&st).await, 1);
    let r = st.req(Method::GET, "/object/s/kept.txt", &st.a.jwt).send().await;
    assert_eq!(r.text().await.unwrap(), "kept");
}

/// Runs a Node script from tests/node with `env`; returns its stdout, failing the
/// test with its output when it fails.
pub async fn node(script: &str, env: &[(&str, String)]) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join(script)).current_dir(&dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out =
        tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output()).await.expect("node timed out").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

async fn storage_js_client(backend: Backend) {
    let st = St::new(backend).await;
    let out = node(
        "storage-js.mjs",
        &[
            ("STORAGE_URL", st.url("")),
            ("SERVICE_KEY", st.key.clone()),
            ("USER_A", st.a.jwt.clone()),
            ("USER_B", st.b.jwt.clone()),
        ],
    )
    .await;
    // The script prints one line per checked client method, then `done N`.
    let done = out.lines().find_map(|l| l.strip_prefix("done ")).unwrap_or_else(|| panic!("no summary:\n{out}"));
    assert!(done.parse::<u32>().unwrap() >= 25, "{out}");
}

async fn tus_resume(backend: Backend) {
    // A relay in front of the server that cuts the first connection mid-body; the
    // server's public URL is the relay's, so every request (and TUS `Location`) uses it.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let st = St::with(backend, |c| c.public_url = format!("http://{relay_addr}").parse().unwrap()).await;
    tokio::spawn(cutting_relay(relay, st.app.addr, 6 * 1024 * 1024));
    st.bucket("tus", json!({})).await;
    let dir = crate::harness::temp_dir("carmenta-tus-");
    let file = dir.join("upload.bin");
    std::fs::write(&file, pattern(24 * 1024 * 1024, 42)).unwrap();
    let out = node(
        "tus-resume.mjs",
        &[
            ("STORAGE_URL", format!("http://{relay_addr}/storage/v1")),
            ("TOKEN", st.a.jwt.clone()),
            ("OTHER_TOKEN", st.b.jwt.clone()),
            ("FILE", file.display().to_string()),
        ],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap_or_else(|_| panic!("{out}"));
    let size = v["size"].as_u64().unwrap();
    let resumed_at = v["resumedAt"].as_u64().unwrap();
    assert!(resumed_at > 0 && resumed_at < size, "the resumed upload kept the bytes sent before the cut: {v}");
    // The object is whole and exactly what was sent.
    let r = st.req(Method::GET, "/object/tus/big/resumed.bin", &st.a.jwt).send().await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-test");
    let got = r.bytes().await.unwrap();
    assert!(got[..] == pattern(usize::try_from(size).unwrap(), 42)[..], "resumed upload differs from the original");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM storage_uploads").fetch_one(&st.app.pool).await.unwrap();
    assert_eq!(left, 0);
    assert_eq!(blob_count(&st).await, v["objects"].as_u64().unwrap() as usize);
    assert!(st.app.state.storage.blobs.list("uploads").await.unwrap().is_empty(), "pieces are removed");
}

/// Two replicas on one database and one store: a public object cached by one is
/// re-read after the other overwrites or deletes it (NOTIFY invalidation).
#[tokio::test]
async fn public_object_cache_follows_writes_on_other_replicas() {
    let st = St::new(Backend::Fs).await;
    st.bucket("pub", json!({"public": true})).await;
    let root = match &st.app.state.config.storage {
        carmenta::config::StorageBackend::Fs { root } => root.clone(),
        other => panic!("{other:?}"),
    };
    let keys = st.app.state.config.encryption_keys.clone();
    let other = TestApp::builder()
        .config(|c| {
            c.storage = carmenta::config::StorageBackend::Fs { root };
            c.encryption_keys = keys;
        })
        .same_database_as(&st.app)
        .spawn()
        .await;
    // Wait for both replicas' invalidation listeners (the cache is off until then).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !(st.app.state.storage.cache.enabled() && other.state.storage.cache.enabled()) {
        assert!(std::time::Instant::now() < deadline, "invalidation listeners did not connect");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let read = |app: &TestApp| {
        let url = app.url("/storage/v1/object/public/pub/logo.txt");
        let client = app.client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(st.put(&st.a.jwt, "pub", "logo.txt", b"version one", "text/plain").await.status(), 200);
    // A read fills the cache, unless an invalidation (the upload's own NOTIFY) lands
    // while it runs: then the next read does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert_eq!(read(&other).await, (200, "version one".to_string()));
        if other.state.storage.cache.public_row("pub", "logo.txt").is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the row is never cached");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(read(&other).await, (200, "version one".to_string()), "served from the cache");
    let r = st.req(Method::PUT, "/object/pub/logo.txt", &st.a.jwt).body("version two").send().await;
    assert_eq!(r.status(), 200);
    let mut seen = read(&other).await;
    for _ in 0..50 {
        if seen.1 == "version two" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        seen = read(&other).await;
    }
    assert_eq!(seen, (200, "version two".to_string()));
    let r = st.req(Method::DELETE, "/object/pub/logo.txt", &st.a.jwt).send().await;
    assert_eq!(r.status(), 200);
    let mut status = read(&other).await.0;
    for _ in 0..50 {
        if status == 400 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        status = read(&other).await.0;
    }
    assert_eq!(status, 400, "deleted object still served by the other replica");
    // Making the bucket private drops its cached rows everywhere.
    assert_eq!(st.put(&st.a.jwt, "pub", "logo.txt", b"three", "text/plain").await.status(), 200);
    assert_eq!(read(&other).await.0, 200);
    let r = st.req(Method::PUT, "/bucket/pub", &st.key).json(&json!({"public": false})).send().await;
    assert_eq!(r.status(), 200);
    let mut status = read(&other).await.0;
    for _ in 0..50 {
        if status == 400 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        status = read(&other).await.0;
    }
    assert_eq!(status, 400, "a bucket made private is no longer served publicly");
}

/// Forwards connections to `to`; the first connection is cut (both ways) once
/// `cut_after` bytes of request have passed, as a network failure would.
async fn cutting_relay(listener: tokio::net::TcpListener, to: std::net::SocketAddr, cut_after: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = true;
    while let Ok((mut client, _)) = listener.accept().await {
        let Ok(mut server) = tokio::net::TcpStream::connect(to).await else { continue };
        let cut = std::mem::replace(&mut first, false);
        tokio::spawn(async move {
            let (mut cr, mut cw) = client.split();
            let (mut sr, mut sw) = server.split();
            let up = async {
                let mut buf = vec![0u8; 64 * 1024];
                let mut sent = 0usize;
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if cut && sent + n > cut_after {
                        break;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
            };
            let down = tokio::io::copy(&mut sr, &mut cw);
            // Whichever side ends first ends the connection (a cut ends both).
            tokio::select! {
                _ = up => {}
                _ = down => {}
            }
        });
    }
}

/// With `owner_folders`, a user writes only under `<their id>/`: a key outside
/// it is refused the same way whether or not another user's object is there, so
/// nobody can probe for other users' keys (uploads, signed uploads, TUS, copy, move).
#[tokio::test]
async fn owner_folders_hide_other_users_keys() {
    let st = St::new(Backend::Fs).await;
    st.bucket("homes", json!({"public": false, "owner_folders": true})).await;
    let b: Value = st.req(Method::GET, "/bucket/homes", &st.key).value().await;
    assert_eq!(b["owner_folders"], true);
    let (a, bid) = (st.a.id.to_string(), st.b.id.to_string());
    let r = st.put(&st.a.jwt, "homes", &format!("{a}/secret.txt"), b"mine", "text/plain").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // B probing A's existing key and a key nobody has: the same answer.
    let taken = st.put(&st.b.jwt, "homes", &format!("{a}/secret.txt"), b"x", "text/plain").await;
    let free = st.put(&st.b.jwt, "homes", &format!("{a}/nothing-here.txt"), b"x", "text/plain").await;
    let (t_status, f_status) = (taken.status(), free.status());
    let (t, f): (Value, Value) = (taken.json().await.unwrap(), free.json().await.unwrap());
    assert_eq!((t_status.as_u16(), f_status.as_u16()), (403, 403));
    assert_eq!((t["error"].clone(), t["message"].clone()), (f["error"].clone(), f["message"].clone()));
    // Every way of writing is held to the rule.
    let r = st.req(Method::POST, &format!("/object/upload/sign/homes/{a}/x.txt"), &st.b.jwt).send().await;
    assert_eq!(r.status(), 403);
    let r = st
        .req(Method::POST, "/upload/resumable", &st.b.jwt)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "1")
        .header("upload-metadata", format!("bucketName aG9tZXM=,objectName {}", base64_of(&format!("{a}/t.txt"))))
        .send()
        .await;
    assert_eq!(r.status(), 403);
    let r = st.put(&st.b.jwt, "homes", &format!("{bid}/own.txt"), b"b's", "text/plain").await;
    assert_eq!(r.status(), 200);
    for op in ["/object/copy", "/object/move"] {
        let body = json!({"bucketId": "homes", "sourceKey": format!("{bid}/own.txt"), "destinationKey": format!("{a}/moved.txt")});
        let r = st.req(Method::POST, op, &st.b.jwt).json(&body).send().await;
        assert_eq!(r.status(), 403, "{op}");
    }
    // A service key writes anywhere.
    let r = st.put(&st.key, "homes", "shared/readme.txt", b"hi", "text/plain").await;
    assert_eq!(r.status(), 200);
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// How a route answered: allowed, refused for want of a permission (HTTP 403
/// `AccessDenied`), or as if the bucket did not exist (Supabase's HTTP 400 with
/// `statusCode` "404").
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    Ok,
    Denied,
    Hidden,
    Other(u16),
}

async fn seen(r: reqwest::Response) -> (Seen, String) {
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let seen = match (status, v["statusCode"].as_str(), v["code"].as_str()) {
        (200..=299, _, _) => Seen::Ok,
        (403, Some("403"), Some("AccessDenied")) => Seen::Denied,
        // TUS answers its errors with their own status, the Supabase routes with 400.
        (400 | 404, Some("404"), Some("NoSuchBucket" | "OrganizationNotFound")) => Seen::Hidden,
        _ => Seen::Other(status),
    };
    (seen, body)
}

fn tus_create(st: &St, token: &str, bucket: &str, key: &str, len: usize) -> Call {
    st.req(Method::POST, "/upload/resumable", token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", len.to_string())
        .header("upload-metadata", format!("bucketName {},objectName {}", base64_of(bucket), base64_of(key)))
}

/// Buckets an organization holds: members with `org:storage:read` read every
/// object, with `org:storage:write` write and manage; a member whose role lacks the
/// permission gets 403 and a non-member is told the bucket does not exist, on every
/// route; leaving ends access at once; deleting the organization deletes its buckets.
#[tokio::test]
async fn organizations_share_buckets_and_every_route_checks_the_member() {
    use Seen::*;
    let st = St::new(Backend::Fs).await;
    let app = &st.app;
    let t = crate::harness::team(app, "bucket").await;
    let org = t.org_id.clone();
    st.bucket("mine", json!({})).await;

    // Making one: org:storage:write in that organization (or a service key).
    let body = json!({"name": "team", "org_id": org});
    for (u, want) in [(&t.member, Denied), (&t.guest, Denied), (&t.stranger, Hidden)] {
        let r = st.req(Method::POST, "/bucket", &u.jwt).json(&body).send().await;
        assert_eq!(seen(r).await.0, want);
    }
    let r =
        st.req(Method::POST, "/bucket", &st.key).json(&json!({"name": "x", "org_id": uuid::Uuid::nil()})).send().await;
    err(r, 400, "404", "OrganizationNotFound").await;
    let r = st.req(Method::POST, "/bucket", &t.admin.jwt).json(&body).send().await;
    assert_eq!(seen(r).await.0, Ok);
    let (s, b) = st.req(Method::GET, "/bucket/team", &t.member.jwt).reply().await;
    assert_eq!((s, b["org_id"].as_str()), (200, Some(org.as_str())));
    for (u, want) in [(&t.guest, Denied), (&t.stranger, Hidden)] {
        assert_eq!(seen(st.req(Method::GET, "/bucket/team", &u.jwt).send().await).await.0, want);
    }
    // Listed to those who may read it, and to service keys.
    for (u, listed) in [(&t.member, true), (&t.guest, false), (&t.stranger, false), (&t.owner, true)] {
        let all: Value = st.req(Method::GET, "/bucket", &u.jwt).value().await;
        let names: Vec<&str> = all.as_array().unwrap().iter().filter_map(|b| b["name"].as_str()).collect();
        assert_eq!(names.contains(&"team"), listed, "{names:?}");
        assert!(names.contains(&"mine"));
    }

    // Writing: every way in needs org:storage:write.
    assert_eq!(st.put(&t.admin.jwt, "team", "doc.txt", b"team notes", "text/plain").await.status(), 200);
    let png = crate::imaging::jpeg(&crate::imaging::picture(64, 48, None));
    let r = st.req(Method::POST, "/object/team/pic.jpg", &t.admin.jwt).header("content-type", "image/jpeg");
    assert_eq!(r.body(png).send().await.status(), 200);
    for (u, want) in [(&t.member, Denied), (&t.guest, Denied), (&t.stranger, Hidden)] {
        let tok = u.jwt.as_str();
        let moved = json!({"bucketId": "team", "sourceKey": "doc.txt", "destinationKey": "moved.txt"});
        let copied = json!({"bucketId": "team", "sourceKey": "doc.txt", "destinationKey": "copy.txt"});
        let into = json!({"bucketId": "mine", "sourceKey": format!("{}/own.txt", u.id), "destinationKey": "in.txt", "destinationBucket": "team"});
        let writes = [
            ("upload", st.put(tok, "team", "new.txt", b"x", "text/plain").await),
            ("update", st.req(Method::PUT, "/object/team/doc.txt", tok).body("x").send().await),
            ("delete", st.req(Method::DELETE, "/object/team/doc.txt", tok).send().await),
            (
                "remove",
                st.req(Method::DELETE, "/object/team", tok).json(&json!({"prefixes": ["doc.txt"]})).send().await,
            ),
            ("move", st.req(Method::POST, "/object/move", tok).json(&moved).send().await),
            ("copy", st.req(Method::POST, "/object/copy", tok).json(&copied).send().await),
            ("sign upload", st.req(Method::POST, "/object/upload/sign/team/up.txt", tok).send().await),
            ("tus", tus_create(&st, tok, "team", "tus.txt", 3).send().await),
            ("bucket update", st.req(Method::PUT, "/bucket/team", tok).json(&json!({"public": false})).send().await),
            ("bucket empty", st.req(Method::POST, "/bucket/team/empty", tok).send().await),
            ("bucket delete", st.req(Method::DELETE, "/bucket/team", tok).send().await),
        ];
        for (what, r) in writes {
            let (got, body) = seen(r).await;
            assert_eq!(got, want, "{what} by {}: {body}", u.id);
        }
        // Into the shared bucket from one's own: writing there is what is checked.
        assert_eq!(st.put(tok, "mine", &format!("{}/own.txt", u.id), b"own", "text/plain").await.status(), 200);
        assert_eq!(seen(st.req(Method::POST, "/object/move", tok).json(&into).send().await).await.0, want);
    }
    assert_eq!(st.req(Method::GET, "/object/team/doc.txt", &st.key).send().await.text().await.unwrap(), "team notes");

    // Reading: org:storage:read (org:member has it; the guest role does not).
    for (u, want) in [(&t.member, Ok), (&t.guest, Denied), (&t.stranger, Hidden)] {
        let tok = u.jwt.as_str();
        let out = json!({"bucketId": "team", "sourceKey": "doc.txt", "destinationKey": format!("{}/copied.txt", u.id), "destinationBucket": "mine"});
        let reads = [
            ("download", st.req(Method::GET, "/object/team/doc.txt", tok).send().await),
            ("authenticated", st.req(Method::GET, "/object/authenticated/team/doc.txt", tok).send().await),
            ("info", st.req(Method::GET, "/object/info/team/doc.txt", tok).send().await),
            ("info authenticated", st.req(Method::GET, "/object/info/authenticated/team/doc.txt", tok).send().await),
            ("list", st.req(Method::POST, "/object/list/team", tok).json(&json!({"prefix": ""})).send().await),
            ("list v2", st.req(Method::POST, "/object/list-v2/team", tok).json(&json!({})).send().await),
            (
                "sign",
                st.req(Method::POST, "/object/sign/team/doc.txt", tok).json(&json!({"expiresIn": 60})).send().await,
            ),
            (
                "sign many",
                st.req(Method::POST, "/object/sign/team", tok)
                    .json(&json!({"expiresIn": 60, "paths": ["doc.txt"]}))
                    .send()
                    .await,
            ),
            ("render", st.req(Method::GET, "/render/image/authenticated/team/pic.jpg?width=32", tok).send().await),
            ("copy out", st.req(Method::POST, "/object/copy", tok).json(&out).send().await),
        ];
        for (what, r) in reads {
            let (got, body) = seen(r).await;
            assert_eq!(got, want, "{what} by {}: {body}", u.id);
            if what == "download" && got == Ok {
                assert_eq!(body, "team notes");
            }
            if what == "list v2" && got == Ok {
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["objects"].as_array().unwrap().len(), 2, "every member sees every object: {v}");
            }
        }
    }

    // Writers replace each other's objects; signed upload URLs and TUS work for them.
    let r = st.req(Method::PUT, "/object/team/doc.txt", &t.owner.jwt).header("content-type", "text/plain");
    assert_eq!(r.body("owner's notes").send().await.status(), 200);
    let (s, signed) =
        st.req(Method::POST, "/object/upload/sign/team/doc.txt", &t.admin.jwt).header("x-upsert", "true").reply().await;
    assert_eq!(s, 200, "{signed}");
    let r = app
        .client
        .put(st.url(signed["url"].as_str().unwrap()))
        .header("content-type", "text/plain")
        .body("signed by the admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = tus_create(&st, &t.owner.jwt, "team", "tus.txt", 3).send().await;
    assert_eq!(r.status(), 201);
    let id = r.headers()["location"].to_str().unwrap().rsplit('/').next().unwrap().to_string();
    let r = st
        .req(Method::PATCH, &format!("/upload/resumable/{id}"), &t.owner.jwt)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body("tus")
        .send()
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(st.req(Method::GET, "/object/team/tus.txt", &t.member.jwt).send().await.text().await.unwrap(), "tus");
    assert_eq!(
        st.req(Method::GET, "/object/team/doc.txt", &t.member.jwt).send().await.text().await.unwrap(),
        "signed by the admin"
    );

    // Signed URLs last only while their signer keeps the permission.
    let fetch = |url: String| app.client.get(st.url(&url)).send();
    let (_, dl) =
        st.req(Method::POST, "/object/sign/team/doc.txt", &t.member.jwt).json(&json!({"expiresIn": 600})).reply().await;
    let (_, img) = st
        .req(Method::POST, "/object/sign/team/pic.jpg", &t.member.jwt)
        .json(&json!({"expiresIn": 600, "transform": {"width": 16}}))
        .reply()
        .await;
    let (dl, img) = (dl["signedURL"].as_str().unwrap().to_string(), img["signedURL"].as_str().unwrap().to_string());
    assert!(img.starts_with("/render/image/sign/"), "{img}");
    assert_eq!(fetch(dl.clone()).await.unwrap().status(), 200);
    assert_eq!(fetch(img.clone()).await.unwrap().status(), 200);
    let (_, up) = st.req(Method::POST, "/object/upload/sign/team/later.txt", &t.admin.jwt).reply().await;
    crate::harness::set_org_role(&app.pool, &org, t.admin.id, "org:member").await;
    let r = app.client.put(st.url(up["url"].as_str().unwrap())).body("too late").send().await.unwrap();
    err(r, 400, "400", "InvalidSignature").await;

    // Removal from the organization ends access at once, signed URLs included.
    let (s, _) = app.delete_as(&format!("/v1/orgs/{org}/members/{}", t.member.id), &t.owner.jwt).await;
    assert_eq!(s, 204);
    assert_eq!(seen(st.req(Method::GET, "/object/team/doc.txt", &t.member.jwt).send().await).await.0, Hidden);
    err(fetch(dl).await.unwrap(), 400, "400", "InvalidSignature").await;
    err(fetch(img).await.unwrap(), 400, "400", "InvalidSignature").await;

    // Deleting the organization deletes its buckets with their objects.
    let (s, _) = app.delete_as(&format!("/v1/orgs/{org}?confirm=true"), &t.owner.jwt).await;
    assert_eq!(s, 204);
    err(st.req(Method::GET, "/bucket/team", &st.key).send().await, 400, "404", "NoSuchBucket").await;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM storage_objects WHERE bucket_id = 'team'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
