//! Handlers of the console's area pages: storage, connections and integrations,
//! conversations, knowledge and memory. Each acts through its area's service
//! functions and writes an audit row for every change.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use uuid::Uuid;

use super::db;
use crate::admin::routes::{
    AdminForm, AdminSession, Fail, Fields, Upload, connection_table, done_notice, guard, multipart_form, page,
    path_segment, query_pairs, query_string, render, see_other,
};
use crate::admin::view::{Action, Block, Cell, Field, Form as VForm, Head, Notice, Table, human_bytes, when};
use crate::admin::{Admin, service};
use crate::error::ApiError;
use crate::storage::StorageError;

type PageResult = Result<Response, Fail>;

/// The area pages' routes.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Admin>: FromRef<S>,
{
    Router::new()
        .route("/admin/storage", get(storage))
        .route("/admin/storage/buckets", post(create_bucket))
        .route("/admin/storage/buckets/{id}/settings", post(bucket_settings))
        .route("/admin/storage/b/{bucket}", get(bucket))
        .route("/admin/storage/b/{bucket}/object", get(object))
        .route("/admin/storage/b/{bucket}/upload", post(upload))
        .route("/admin/storage/b/{bucket}/{action}", post(object_action))
        .route("/admin/connections", get(connections))
        .route("/admin/connections/{id}/{action}", post(connection_action))
        .route("/admin/integrations", post(create_integration))
        .route("/admin/integrations/{key}", post(update_integration))
        .route("/admin/conversations", get(conversations))
        .route("/admin/conversations/{id}", get(conversation))
        .route("/admin/knowledge", get(knowledge))
        .route("/admin/knowledge/files/{id}/reingest", post(reingest))
        .route("/admin/memory", get(memories))
        .route("/admin/memory/{id}", get(memory))
        .route("/admin/memory/{id}/{action}", post(memory_action))
}

fn storage_fail(e: StorageError) -> Fail {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    Fail(ApiError::new(status, "storage_refused", e.message))
}

fn user_param(q: &[(String, String)]) -> Result<Option<Uuid>, Fail> {
    match q.iter().find(|(k, _)| k == "user").map(|(_, v)| v.as_str()).filter(|v| !v.is_empty()) {
        Some(u) => Ok(Some(
            Uuid::parse_str(u).map_err(|_| Fail(ApiError::bad_request("invalid_user", "user must be a user id")))?,
        )),
        None => Ok(None),
    }
}

/// `raw` as an id, or 404 naming `what`.
pub(crate) fn uuid(raw: &str, what: &str) -> Result<Uuid, Fail> {
    Uuid::parse_str(raw).map_err(|_| Fail(ApiError::not_found(format!("{what} not found"))))
}

/// A key as a URL path (each segment encoded, slashes kept).
fn enc_key(key: &str) -> String {
    key.split('/').map(path_segment).collect::<Vec<_>>().join("/")
}

/// A page listing one user's rows or everyone's (`?user=`), with its filter form.
fn user_page(
    s: &crate::admin::db::SessionRow,
    raw: &Option<String>,
    title: &str,
    section: &'static str,
) -> Result<(crate::admin::view::Page, Option<Uuid>), Fail> {
    let q = query_pairs(raw);
    let user = user_param(&q)?;
    let mut p = page(s, title, section);
    p.notice = done_notice(&q);
    p.push(user_filter_form(&format!("/admin/{section}"), user));
    Ok((p, user))
}

fn user_filter_form(action: &str, user: Option<Uuid>) -> Block {
    Block::Form(VForm::get(action, "Show").field(
        Field::new("text", "user", "User or organization id").value(user.map(|u| u.to_string()).unwrap_or_default()),
    ))
}

// ---- storage --------------------------------------------------------------------

async fn storage(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let mut p = page(&s, "Storage", "storage");
    p.notice = done_notice(&query_pairs(&raw));
    let rows = db::buckets(&admin.pool)
        .await?
        .into_iter()
        .map(|b| {
            vec![
                Cell::Link(format!("/admin/storage/b/{}", path_segment(&b.id)), b.id.clone()),
                Cell::Badge(if b.public { "public" } else { "private" }.into(), if b.public { "warn" } else { "ok" }),
                Cell::Text(b.file_size_limit.map(human_bytes).unwrap_or_else(|| "global".into())),
                Cell::Text(b.allowed_mime_types.map(|m| m.join(", ")).unwrap_or_else(|| "any".into())),
                Cell::Text(if b.owner_folders { "yes" } else { "no" }.into()),
                Cell::Text(b.organization.clone().unwrap_or_else(|| "—".into())),
                Cell::Text(format!("{} · {}", b.objects, human_bytes(b.bytes))),
                Cell::Actions(vec![
                    Action::new(
                        format!("/admin/storage/buckets/{}/settings", path_segment(&b.id)),
                        if b.public { "Make private" } else { "Make public" },
                    )
                    .field("public", if b.public { "false" } else { "true" }),
                ]),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["bucket", "access", "size limit", "types", "owner folders", "organization", "objects", ""]),
        rows,
        empty: "No buckets yet.".into(),
    }));
    p.push(Block::Heading("New bucket".into()));
    p.push(Block::Form(
        VForm::post("/admin/storage/buckets", "Create bucket")
            .field(Field::new("text", "id", "Name").required())
            .field(Field::new("checkbox", "public", "Public (anyone may read)"))
            .field(Field::new("text", "limit", "Size limit in bytes").hint("empty: the global limit"))
            .field(Field::new("text", "mimes", "Allowed types").hint("comma-separated, e.g. image/*, application/pdf")),
    ));
    Ok(render(StatusCode::OK, &p))
}

fn parse_limit(f: &Fields) -> Result<Option<i64>, Fail> {
    match f.get("limit").map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or(Fail(ApiError::bad_request("invalid_limit", "the size limit is a positive number of bytes"))),
        None => Ok(None),
    }
}

fn parse_mimes(f: &Fields) -> Option<Vec<String>> {
    let list: Vec<String> =
        f.get("mimes").unwrap_or("").split(',').map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect();
    (!list.is_empty()).then_some(list)
}

async fn create_bucket(State(admin): State<Arc<Admin>>, AdminForm { s, f }: AdminForm) -> PageResult {
    let id = f.get("id").unwrap_or("").trim().to_string();
    if !crate::storage::service::valid_bucket_name(&id) {
        return Err(Fail(ApiError::bad_request(
            "invalid_bucket_name",
            "bucket names are 1–100 letters, digits and - _ .",
        )));
    }
    let public = f.ticked("public");
    let limit = parse_limit(&f)?;
    let mimes = parse_mimes(&f);
    if !crate::storage::db::insert_bucket(
        &admin.pool,
        &crate::storage::db::NewBucket {
            name: &id,
            public,
            file_size_limit: limit,
            allowed_mime_types: mimes.as_deref(),
            owner_folders: false,
            org_id: None,
        },
    )
    .await?
    {
        return Err(Fail(ApiError::conflict("bucket_exists", "a bucket has that name")));
    }
    service::record(
        &admin,
        &s,
        "admin.storage.bucket_create",
        Some(&id),
        None,
        serde_json::json!({"before": null, "after": {"public": public, "file_size_limit": limit, "allowed_mime_types": mimes}}),
    )
    .await?;
    Ok(see_other("/admin/storage?done=created"))
}

async fn bucket_settings(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    AdminForm { s, f }: AdminForm,
) -> PageResult {
    let before =
        crate::storage::db::bucket(&admin.pool, &id).await?.ok_or(Fail(ApiError::not_found("no such bucket")))?;
    let public = f.get("public").map(|v| v == "true");
    let limit = if f.get("limit").is_some() { Some(parse_limit(&f)?) } else { None };
    crate::storage::db::update_bucket(&admin.pool, &id, public, limit, None, None).await?;
    crate::storage::service::invalidate(&admin.storage, format!("b:{id}")).await;
    service::record(
        &admin,
        &s,
        "admin.storage.bucket_update",
        Some(&id),
        None,
        serde_json::json!({"before": {"public": before.public, "file_size_limit": before.file_size_limit},
            "after": {"public": public.unwrap_or(before.public), "file_size_limit": limit.unwrap_or(before.file_size_limit)}}),
    )
    .await?;
    Ok(see_other("/admin/storage?done=updated"))
}

/// A signed render URL of an image object at `width`×`height` (cover).
fn thumb_url(admin: &Admin, bucket: &str, key: &str, width: u32, height: Option<u32>) -> Option<String> {
    let mut claims = crate::storage::service::signed_claims(format!("{bucket}/{key}"), "download", 600).ok()?;
    claims.transformations = Some(match height {
        Some(h) => format!("height:{h},resize:cover,width:{width}"),
        None => format!("width:{width}"),
    });
    let token = admin.storage.sign(&claims).ok()?;
    Some(format!("/storage/v1/render/image/sign/{}/{}?token={token}", path_segment(bucket), enc_key(key)))
}

/// A signed download URL lasting `secs`.
fn download_url(admin: &Admin, bucket: &str, key: &str, secs: i64) -> Result<String, Fail> {
    let claims =
        crate::storage::service::signed_claims(format!("{bucket}/{key}"), "download", secs).map_err(storage_fail)?;
    let token = admin.storage.sign(&claims).map_err(storage_fail)?;
    Ok(format!("/storage/v1/object/sign/{}/{}?token={token}", path_segment(bucket), enc_key(key)))
}

async fn bucket(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path(bucket): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let q = query_pairs(&raw);
    let b = crate::storage::service::bucket_or_404(&admin.storage, &bucket).await.map_err(storage_fail)?;
    let prefix = q.iter().find(|(k, _)| k == "prefix").map(|(_, v)| v.clone()).unwrap_or_default();
    let folder = if prefix.is_empty() || prefix.ends_with('/') { prefix.clone() } else { format!("{prefix}/") };
    let entries = crate::storage::db::list(
        &admin.pool,
        &crate::storage::db::ListQuery {
            bucket: &b.id,
            folder: &folder,
            starts_with: "",
            delimiter: true,
            sort: "name",
            desc: false,
            after: None,
            limit: 500,
            offset: 0,
            owner: None,
        },
    )
    .await?;
    let mut p = page(&s, format!("Bucket {}", b.id), "storage");
    p.notice = done_notice(&q);
    // Breadcrumbs.
    let base = format!("/admin/storage/b/{}", path_segment(&b.id));
    let mut crumbs = vec![(base.clone(), b.id.clone())];
    let mut acc = String::new();
    for seg in folder.split('/').filter(|s| !s.is_empty()) {
        acc.push_str(seg);
        acc.push('/');
        crumbs.push((format!("{base}{}", query_string(&[("prefix".into(), acc.clone())])), seg.to_string()));
    }
    p.push(Block::Links(crumbs));
    let rows = entries
        .into_iter()
        .map(|e| {
            if e.folder {
                vec![
                    Cell::Text("📁".into()),
                    Cell::Link(
                        format!("{base}{}", query_string(&[("prefix".into(), e.key.clone())])),
                        format!("{}/", e.name),
                    ),
                    Cell::Text(String::new()),
                    Cell::Text(String::new()),
                    Cell::Text(String::new()),
                    Cell::Text(String::new()),
                ]
            } else {
                let image = e.content_type.as_deref().is_some_and(|t| t.starts_with("image/"));
                vec![
                    match image.then(|| thumb_url(&admin, &b.id, &e.key, 96, Some(96))).flatten() {
                        Some(src) => Cell::Thumb(src),
                        None => Cell::Text(String::new()),
                    },
                    Cell::Link(format!("{base}/object{}", query_string(&[("key".into(), e.key.clone())])), e.name),
                    Cell::opt(e.content_type),
                    Cell::Text(e.size.map(human_bytes).unwrap_or_default()),
                    Cell::Text(e.updated_at.map(when).unwrap_or_default()),
                    Cell::Actions(vec![
                        Action::new(format!("{base}/sign"), "Signed link").field("key", e.key.clone()),
                        Action::new(format!("{base}/delete"), "Delete").danger().field("key", e.key.clone()),
                    ]),
                ]
            }
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["", "name", "type", "size", "updated", ""]),
        rows,
        empty: "This folder is empty.".into(),
    }));
    p.push(Block::Heading("Upload".into()));
    let mut form = VForm::post(format!("{base}/upload"), "Upload");
    form.multipart = true;
    form = form
        .field(Field::hidden("prefix", folder.clone()))
        .field(Field::new("file", "file", "File").required())
        .field(Field::new("text", "name", "Name").hint("empty: the file's own name, in this folder"))
        .field(Field::new("checkbox", "upsert", "Replace an existing object"));
    p.push(Block::Form(form));
    Ok(render(StatusCode::OK, &p))
}

async fn object(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path(bucket): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let q = query_pairs(&raw);
    let key = q.iter().find(|(k, _)| k == "key").map(|(_, v)| v.clone()).unwrap_or_default();
    let o = crate::storage::db::object(&admin.pool, &bucket, &key, None)
        .await?
        .ok_or(Fail(ApiError::not_found("no such object")))?;
    let base = format!("/admin/storage/b/{}", path_segment(&bucket));
    let mut p = page(&s, format!("{bucket}/{key}"), "storage");
    p.notice = done_notice(&q);
    let kv = |k: &str, v: Cell| vec![Cell::Text(k.into()), v];
    p.push(Block::Table(Table {
        head: vec![],
        rows: vec![
            kv("id", Cell::Mono(o.id.to_string())),
            kv("type", Cell::Text(o.content_type.clone())),
            kv("size", Cell::Text(human_bytes(o.size))),
            kv(
                "owner",
                match o.owner_id {
                    Some(u) => Cell::Link(format!("/admin/users/{u}"), u.to_string()),
                    None => Cell::Null,
                },
            ),
            kv("etag", Cell::Mono(o.etag.clone())),
            kv("updated", Cell::Text(when(o.updated_at))),
        ],
        empty: String::new(),
    }));
    if o.content_type.starts_with("image/") {
        if let Some(src) = thumb_url(&admin, &bucket, &key, 800, None) {
            p.push(Block::Image(src));
        }
    } else if o.content_type == "application/pdf" {
        p.push(Block::Pdf(download_url(&admin, &bucket, &key, 600)?));
    }
    p.push(Block::Table(Table {
        head: vec![],
        rows: vec![vec![Cell::Actions(vec![
            Action::new(format!("{base}/sign"), "Signed link").field("key", key.clone()),
            Action::new(format!("{base}/delete"), "Delete").danger().field("key", key.clone()),
        ])]],
        empty: String::new(),
    }));
    p.push(Block::Heading("Move or rename".into()));
    p.push(Block::Form(
        VForm::post(format!("{base}/move"), "Move")
            .field(Field::hidden("key", key.clone()))
            .field(Field::new("text", "to", "New name").value(key.clone()).required()),
    ));
    Ok(render(StatusCode::OK, &p))
}

async fn object_action(
    State(admin): State<Arc<Admin>>,
    Path((bucket, action)): Path<(String, String)>,
    AdminForm { s, f }: AdminForm,
) -> PageResult {
    let key = f.get("key").unwrap_or("").to_string();
    let b = crate::storage::service::bucket_or_404(&admin.storage, &bucket).await.map_err(storage_fail)?;
    let base = format!("/admin/storage/b/{}", path_segment(&b.id));
    let folder_of = |k: &str| k.rsplit_once('/').map(|(f, _)| format!("{f}/")).unwrap_or_default();
    let target = format!("{}/{}", b.id, key);
    match action.as_str() {
        "delete" => {
            let rows = crate::storage::service::remove(
                &admin.storage,
                crate::storage::Actor::Service { acting_for: None },
                &b.id,
                std::slice::from_ref(&key),
            )
            .await
            .map_err(storage_fail)?;
            let Some(row) = rows.first() else { return Err(Fail(ApiError::not_found("no such object"))) };
            service::record(
                &admin,
                &s,
                "admin.storage.object_delete",
                Some(&target),
                row.owner_id,
                serde_json::json!({"before": {"size": row.size, "content_type": row.content_type, "etag": row.etag}, "after": null}),
            )
            .await?;
            Ok(see_other(&format!(
                "{base}{}",
                query_string(&[("prefix".into(), folder_of(&key)), ("done".into(), "deleted".into())])
            )))
        }
        "move" => {
            let to = f.get("to").unwrap_or("").trim().to_string();
            crate::storage::service::check_key(&to).map_err(storage_fail)?;
            match crate::storage::db::move_object(&admin.pool, (&b.id, &key), (&b.id, &to), None).await? {
                crate::storage::db::MoveOutcome::Moved => {}
                crate::storage::db::MoveOutcome::NoSource => return Err(Fail(ApiError::not_found("no such object"))),
                crate::storage::db::MoveOutcome::Exists => {
                    return Err(Fail(ApiError::conflict("object_exists", "an object already has that name")));
                }
            }
            if b.public {
                crate::storage::service::invalidate(&admin.storage, format!("b:{}", b.id)).await;
            }
            service::record(
                &admin,
                &s,
                "admin.storage.object_move",
                Some(&target),
                None,
                serde_json::json!({"before": {"name": key}, "after": {"name": to}}),
            )
            .await?;
            Ok(see_other(&format!(
                "{base}/object{}",
                query_string(&[("key".into(), to), ("done".into(), "moved".into())])
            )))
        }
        "sign" => {
            let url = download_url(&admin, &b.id, &key, 3600)?;
            service::record(
                &admin,
                &s,
                "admin.storage.object_sign",
                Some(&target),
                None,
                serde_json::json!({"expires_in": 3600}),
            )
            .await?;
            let full = format!("{}{url}", admin.storage.public_base);
            let mut p = page(&s, "Signed link", "storage");
            p.notice = Notice::ok("A download link valid for one hour:");
            p.push(Block::Copy(full));
            p.push(Block::Links(vec![(
                format!("{base}/object{}", query_string(&[("key".into(), key)])),
                "Back to the object".into(),
            )]));
            Ok(render(StatusCode::OK, &p))
        }
        _ => Err(Fail(ApiError::not_found("no route for this path"))),
    }
}

async fn upload(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path(bucket): Path<String>,
    headers: HeaderMap,
    multipart: axum::extract::Multipart,
) -> PageResult {
    let b = crate::storage::service::bucket_or_404(&admin.storage, &bucket).await.map_err(storage_fail)?;
    let limit = crate::storage::service::size_limit(&admin.storage, &b);
    let (f, file) = multipart_form(multipart, limit).await?;
    guard(&admin, &s, &headers, &f)?;
    let Upload { file_name, content_type: ty, bytes } =
        file.ok_or(Fail(ApiError::bad_request("missing_file", "choose a file")))?;
    let name = f.get("name").map(str::trim).filter(|n| !n.is_empty()).map(str::to_string).unwrap_or(file_name);
    let key = format!("{}{name}", f.get("prefix").unwrap_or(""));
    crate::storage::service::check_key(&key).map_err(storage_fail)?;
    let ty = crate::storage::service::clean_content_type(Some(&ty));
    if !crate::storage::service::mime_allowed(b.allowed_mime_types.as_deref(), &ty) {
        return Err(storage_fail(StorageError::invalid_mime(&ty)));
    }
    let version = Uuid::now_v7();
    let size = bytes.len() as u64;
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(bytes)) });
    admin
        .storage
        .blobs
        .write(&crate::storage::Blobs::blob_path(version), body, limit, false)
        .await
        .map_err(|e| Fail(ApiError::internal(e)))?;
    let target = crate::storage::service::UploadTarget {
        bucket: &b,
        key: &key,
        owner: None,
        writer: None,
        upsert: f.ticked("upsert"),
    };
    let row = crate::storage::service::commit(&admin.storage, &target, version, size, &ty, "max-age=3600", None)
        .await
        .map_err(storage_fail)?;
    service::record(
        &admin,
        &s,
        "admin.storage.object_upload",
        Some(&format!("{}/{}", b.id, key)),
        None,
        serde_json::json!({"before": null, "after": {"size": row.size, "content_type": row.content_type}}),
    )
    .await?;
    Ok(see_other(&format!(
        "/admin/storage/b/{}/object{}",
        path_segment(&b.id),
        query_string(&[("key".into(), key), ("done".into(), "uploaded".into())])
    )))
}

// ---- connections and integrations -------------------------------------------------

async fn connections(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let (mut p, user) = user_page(&s, &raw, "Connections", "connections")?;
    let conns = crate::admin::db::connections(&admin.pool, user, 200).await?;
    p.push(Block::Table(connection_table(conns)));
    p.push(Block::Heading("Integrations".into()));
    let page_q = crate::pagination::PageQuery { limit: Some(100), cursor: None };
    let list = crate::connections::integrations::list(&admin.connections, &page_q).await?;
    let rows = list
        .data
        .into_iter()
        .map(|i| {
            vec![
                Cell::Mono(i.unique_key.clone()),
                Cell::Text(i.provider),
                Cell::opt(i.client_id),
                Cell::Text(if i.has_client_secret { "stored (write-only)" } else { "none" }.into()),
                Cell::Text(i.scopes.join(" ")),
                Cell::Text(when(i.updated_at)),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["key", "provider", "client id", "client secret", "scopes", "updated"]),
        rows,
        empty: "No integrations.".into(),
    }));
    p.push(Block::Heading("Create or edit an integration".into()));
    let mut providers: Vec<(String, String)> =
        crate::connections::integrations::providers(&admin.connections, &Default::default())
            .into_iter()
            .map(|pv| (pv.name.clone(), format!("{} ({})", pv.name, pv.auth_mode)))
            .collect();
    providers.sort_by_key(|p| p.1.to_lowercase());
    p.push(Block::Form(
        VForm::post("/admin/integrations", "Save integration")
            .field(Field::new("text", "unique_key", "Key").required().hint("an existing key is edited"))
            .field(Field::new("select", "provider", "Provider (new integrations)").options(providers))
            .field(Field::new("text", "client_id", "Client id"))
            .field(
                Field::new("password", "client_secret", "Client secret")
                    .hint("write-only: never shown; empty keeps the stored one"),
            )
            .field(Field::new("text", "scopes", "Scopes").hint("space-separated; empty keeps them")),
    ));
    Ok(render(StatusCode::OK, &p))
}

async fn connection_action(
    State(admin): State<Arc<Admin>>,
    Path((id, action)): Path<(String, String)>,
    AdminForm { s, .. }: AdminForm,
) -> PageResult {
    let id = uuid(&id, "connection")?;
    let owner =
        db::connection_owner(&admin.pool, id).await?.ok_or(Fail(ApiError::not_found("connection not found")))?;
    match action.as_str() {
        "refresh" => {
            let result = crate::connections::refresh::fresh_token(&admin.connections, id, true).await;
            let outcome = match &result {
                Ok(_) => serde_json::json!({"ok": true}),
                Err(e) => serde_json::json!({"ok": false, "code": e.code, "message": e.message}),
            };
            service::record(&admin, &s, "admin.connection.refresh", Some(&id.to_string()), Some(owner), outcome)
                .await?;
            result?;
            Ok(see_other("/admin/connections?done=refreshed"))
        }
        "delete" => {
            crate::connections::service::delete_any(&admin.connections, id).await?;
            service::record(
                &admin,
                &s,
                "admin.connection.delete",
                Some(&id.to_string()),
                Some(owner),
                serde_json::json!({"before": {"id": id}, "after": null}),
            )
            .await?;
            Ok(see_other("/admin/connections?done=deleted"))
        }
        _ => Err(Fail(ApiError::not_found("no route for this path"))),
    }
}

fn scopes_of(f: &Fields) -> Option<Vec<String>> {
    let s: Vec<String> = f.get("scopes").unwrap_or("").split_whitespace().map(str::to_string).collect();
    (!s.is_empty()).then_some(s)
}

fn non_empty(f: &Fields, k: &str) -> Option<String> {
    f.get(k).map(str::trim).filter(|v| !v.is_empty()).map(str::to_string)
}

async fn create_integration(State(admin): State<Arc<Admin>>, AdminForm { s, f }: AdminForm) -> PageResult {
    let key = non_empty(&f, "unique_key").unwrap_or_default();
    let actor = format!("admin:{}", s.user_id);
    let exists = crate::connections::integrations::by_key(&admin.connections, &key).await.is_ok();
    if exists {
        let req = crate::connections::integrations::PatchIntegration {
            client_id: non_empty(&f, "client_id"),
            client_secret: non_empty(&f, "client_secret"),
            scopes: scopes_of(&f),
            authorization_params: None,
        };
        let changed = serde_json::json!({"client_id": req.client_id.is_some(), "client_secret": req.client_secret.is_some(), "scopes": req.scopes});
        crate::connections::integrations::update(&admin.connections, &actor, &key, req).await?;
        service::record(
            &admin,
            &s,
            "admin.integration.update",
            Some(&key),
            None,
            serde_json::json!({"changed": changed}),
        )
        .await?;
    } else {
        let req = crate::connections::integrations::CreateIntegration {
            unique_key: key.clone(),
            provider: f.get("provider").unwrap_or("").to_string(),
            client_id: non_empty(&f, "client_id"),
            client_secret: non_empty(&f, "client_secret"),
            scopes: scopes_of(&f),
            authorization_params: None,
        };
        let i = crate::connections::integrations::create(&admin.connections, &actor, req).await?;
        service::record(
            &admin,
            &s,
            "admin.integration.create",
            Some(&key),
            None,
            serde_json::json!({"before": null, "after": {"provider": i.provider, "client_id": i.client_id, "has_client_secret": i.has_client_secret}}),
        )
        .await?;
    }
    Ok(see_other("/admin/connections?done=saved"))
}

async fn update_integration(
    State(admin): State<Arc<Admin>>,
    Path(key): Path<String>,
    AdminForm { s, f }: AdminForm,
) -> PageResult {
    let mut pairs = f.0;
    pairs.retain(|(k, _)| k != "unique_key");
    pairs.push(("unique_key".into(), key));
    create_integration(State(admin), AdminForm { s, f: Fields(pairs) }).await
}

// ---- conversations ----------------------------------------------------------------

async fn conversations(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let (mut p, user) = user_page(&s, &raw, "Conversations", "conversations")?;
    let rows = db::conversations(&admin.pool, user, 200)
        .await?
        .into_iter()
        .map(|c| {
            vec![
                Cell::Link(
                    format!("/admin/conversations/{}", c.id),
                    if c.title.is_empty() { "(untitled)".into() } else { c.title },
                ),
                Cell::Link(format!("/admin/users/{}", c.owner_id), c.email.unwrap_or_else(|| c.owner_id.to_string())),
                Cell::Text(c.messages.to_string()),
                Cell::Text(when(c.last_activity_at)),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["title", "user", "messages", "last activity"]),
        rows,
        empty: "No conversations.".into(),
    }));
    Ok(render(StatusCode::OK, &p))
}

/// A message part as readable text: text and reasoning as they are, tool calls
/// with their input and output, files as their name, type and URL.
fn part_text(part: &serde_json::Value) -> (String, String) {
    let ty = part.get("type").and_then(|t| t.as_str()).unwrap_or("?").to_string();
    let s = |k: &str| part.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let pretty = |k: &str| part.get(k).map(|v| serde_json::to_string_pretty(v).unwrap_or_default()).unwrap_or_default();
    match ty.as_str() {
        "text" | "reasoning" => (ty, s("text")),
        "file" => (ty, format!("{} ({})\n{}", s("filename"), s("mediaType"), s("url"))),
        t if t.starts_with("tool-") || t == "dynamic-tool" => (
            format!("{ty} · {}", s("state")),
            format!("input:\n{}\noutput:\n{}{}", pretty("input"), pretty("output"), {
                let e = s("errorText");
                if e.is_empty() { String::new() } else { format!("\nerror: {e}") }
            }),
        ),
        _ => (ty, serde_json::to_string_pretty(part).unwrap_or_default()),
    }
}

async fn conversation(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path(id): Path<String>,
) -> PageResult {
    let id = uuid(&id, "conversation")?;
    let c = db::conversation(&admin.pool, id).await?.ok_or(Fail(ApiError::not_found("conversation not found")))?;
    let mut p = page(&s, if c.title.is_empty() { "(untitled)".to_string() } else { c.title.clone() }, "conversations");
    p.push(Block::Links(vec![(
        format!("/admin/users/{}", c.owner_id),
        format!("Owner: {}", c.email.clone().unwrap_or_else(|| c.owner_id.to_string())),
    )]));
    p.push(Block::Text(format!("{} messages; read-only view (the first 500).", c.messages)));
    for m in db::messages(&admin.pool, id, 500).await? {
        p.push(Block::Heading(format!("{} · {}", m.role, when(m.created_at))));
        for part in m.parts.as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let (label, text) = part_text(part);
            if label != "text" {
                p.push(Block::Text(label));
            }
            p.push(Block::Pre(text));
        }
    }
    Ok(render(StatusCode::OK, &p))
}

// ---- knowledge ----------------------------------------------------------------------

async fn knowledge(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let (mut p, user) = user_page(&s, &raw, "Knowledge", "knowledge")?;
    if let Some(u) = user {
        p.push(Block::Heading("Folders".into()));
        let rows = db::folders(&admin.pool, u)
            .await?
            .into_iter()
            .map(|f| {
                vec![
                    Cell::Text(format!("{}{}", "    ".repeat((f.depth.max(1) - 1) as usize), f.name)),
                    Cell::Text(f.documents.to_string()),
                    Cell::Mono(f.id.to_string()),
                ]
            })
            .collect();
        p.push(Block::Table(Table {
            head: Head::all(&["folder", "documents", "id"]),
            rows,
            empty: "No folders.".into(),
        }));
    } else {
        p.push(Block::Text("Give a user id to see their folder tree.".into()));
    }
    p.push(Block::Heading("Documents".into()));
    let rows = db::documents(&admin.pool, user, 200)
        .await?
        .into_iter()
        .map(|d| {
            let state = if d.chunks == 0 {
                Cell::Badge("no chunks".into(), "warn")
            } else if d.unembedded > 0 {
                Cell::Badge(format!("embedding {}/{}", d.chunks - d.unembedded, d.chunks), "warn")
            } else {
                Cell::Badge(format!("{} chunks", d.chunks), "ok")
            };
            vec![
                Cell::Text(d.title),
                Cell::Link(
                    format!("/admin/knowledge?user={}", d.user_id),
                    d.email.unwrap_or_else(|| d.user_id.to_string()),
                ),
                Cell::opt(d.folder),
                Cell::Text(format!("{} v{}", d.source_kind, d.current_version)),
                state,
                Cell::Text(when(d.updated_at)),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["title", "user", "folder", "source", "index", "updated"]),
        rows,
        empty: "No documents.".into(),
    }));
    p.push(Block::Heading("Files (ingestion)".into()));
    let rows = db::files(&admin.pool, user, 200)
        .await?
        .into_iter()
        .map(|f| {
            let kind = match f.status.as_str() {
                "ready" => "ok",
                "failed" => "bad",
                _ => "warn",
            };
            vec![
                Cell::Text(format!("{}/{}", f.bucket_id, f.object_name)),
                Cell::Badge(format!("{} {:.0}%", f.status, f.progress * 100.0), kind),
                Cell::opt(f.error),
                Cell::Text(when(f.updated_at)),
                Cell::Actions(vec![Action::new(format!("/admin/knowledge/files/{}/reingest", f.id), "Re-ingest")]),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["object", "status", "error", "updated", ""]),
        rows,
        empty: "No files.".into(),
    }));
    Ok(render(StatusCode::OK, &p))
}

async fn reingest(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
    AdminForm { s, .. }: AdminForm,
) -> PageResult {
    let id = uuid(&id, "file")?;
    let owner = db::file_owner(&admin.pool, id).await?.ok_or(Fail(ApiError::not_found("file not found")))?;
    crate::knowledge::service::reingest(&admin.knowledge, owner, id).await?;
    service::record(&admin, &s, "admin.knowledge.reingest", Some(&id.to_string()), Some(owner), serde_json::json!({}))
        .await?;
    Ok(see_other(&format!("/admin/knowledge?user={owner}&done=queued")))
}

// ---- memory ---------------------------------------------------------------------------

async fn memories(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let q = query_pairs(&raw);
    let user = user_param(&q)?;
    let all = q.iter().any(|(k, v)| k == "all" && v == "true");
    let mut p = page(&s, "Memory", "memory");
    p.notice = done_notice(&q);
    p.push(Block::Form(
        VForm::get("/admin/memory", "Show")
            .field(
                Field::new("text", "user", "User or organization id")
                    .value(user.map(|u| u.to_string()).unwrap_or_default()),
            )
            .field(Field::new("checkbox", "all", "Include superseded and invalidated").value(if all {
                "true"
            } else {
                ""
            })),
    ));
    let rows = db::memories(&admin.pool, user, all, 300)
        .await?
        .into_iter()
        .map(|m| {
            vec![
                Cell::Link(format!("/admin/memory/{}", m.id), m.text),
                Cell::Text(m.kind),
                Cell::Badge(m.status.clone(), if m.status == "active" { "ok" } else { "warn" }),
                Cell::Text(m.source),
                Cell::Link(
                    format!("/admin/memory?user={}", m.user_id),
                    m.email.unwrap_or_else(|| m.user_id.to_string()),
                ),
                Cell::Text(when(m.updated_at)),
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["memory", "kind", "status", "source", "user", "updated"]),
        rows,
        empty: "No memories.".into(),
    }));
    Ok(render(StatusCode::OK, &p))
}

async fn memory(
    State(admin): State<Arc<Admin>>,
    AdminSession(s): AdminSession,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> PageResult {
    let id = uuid(&id, "memory")?;
    let owner = db::memory_owner(&admin.pool, id).await?.ok_or(Fail(ApiError::not_found("memory not found")))?;
    let d = crate::memory::service::get(&admin.memory, owner, id).await?;
    let m = &d.memory;
    let mut p = page(&s, format!("Memory {}", m.id), "memory");
    p.notice = done_notice(&query_pairs(&raw));
    let kv = |k: &str, v: Cell| vec![Cell::Text(k.into()), v];
    p.push(Block::Table(Table {
        head: vec![],
        rows: vec![
            kv("text", Cell::Text(m.text.clone())),
            kv(
                "kind",
                Cell::Text(format!("{}{}", m.kind, m.slot.as_ref().map(|s| format!(" · {s}")).unwrap_or_default())),
            ),
            kv("status", Cell::Text(m.status.clone())),
            kv("user", Cell::Link(format!("/admin/users/{owner}"), owner.to_string())),
            kv("confidence", Cell::Text(format!("{:.2}", m.confidence))),
            kv("pinned", Cell::Text(m.pinned.to_string())),
            kv("valid from", Cell::Text(when(m.valid_from))),
            kv("valid to", Cell::opt(m.valid_to.map(when))),
            kv("source", Cell::Text(m.provenance.source.clone())),
            kv(
                "conversation",
                match m.provenance.conversation_id {
                    Some(c) => Cell::Link(format!("/admin/conversations/{c}"), c.to_string()),
                    None => Cell::Null,
                },
            ),
            kv("quote", Cell::opt(m.provenance.quote.clone())),
            kv(
                "superseded by",
                match m.superseded_by {
                    Some(n) => Cell::Link(format!("/admin/memory/{n}"), n.to_string()),
                    None => Cell::Null,
                },
            ),
        ],
        empty: String::new(),
    }));
    p.push(Block::Heading("History".into()));
    let rows = d
        .history
        .iter()
        .map(|h| {
            vec![
                Cell::Text(when(h.at)),
                Cell::Text(h.event.clone()),
                Cell::Text(h.actor.clone()),
                Cell::opt(h.text.clone()),
                match h.related_id {
                    Some(r) => Cell::Link(format!("/admin/memory/{r}"), r.to_string()),
                    None => Cell::Null,
                },
            ]
        })
        .collect();
    p.push(Block::Table(Table {
        head: Head::all(&["at", "event", "actor", "text", "related"]),
        rows,
        empty: "No history.".into(),
    }));
    if !d.supersedes.is_empty() {
        p.push(Block::Heading("Supersedes".into()));
        let rows = d
            .supersedes
            .iter()
            .map(|o| vec![Cell::Link(format!("/admin/memory/{}", o.id), o.text.clone()), Cell::Text(o.status.clone())])
            .collect();
        p.push(Block::Table(Table { head: Head::all(&["memory", "status"]), rows, empty: String::new() }));
    }
    if m.status == "active" {
        p.push(Block::Heading("Correct".into()));
        p.push(Block::Form(
            VForm::post(format!("/admin/memory/{id}/edit"), "Save (supersedes this memory)")
                .field(Field::new("textarea", "text", "Text").value(m.text.clone()).required()),
        ));
    }
    p.push(Block::Table(Table {
        head: vec![],
        rows: vec![vec![Cell::Actions(vec![Action::new(format!("/admin/memory/{id}/delete"), "Delete").danger()])]],
        empty: String::new(),
    }));
    Ok(render(StatusCode::OK, &p))
}

async fn memory_action(
    State(admin): State<Arc<Admin>>,
    Path((id, action)): Path<(String, String)>,
    AdminForm { s, f }: AdminForm,
) -> PageResult {
    let id = uuid(&id, "memory")?;
    let owner = db::memory_owner(&admin.pool, id).await?.ok_or(Fail(ApiError::not_found("memory not found")))?;
    let before = crate::memory::service::get(&admin.memory, owner, id).await?.memory;
    let actor = crate::memory::service::Actor::Admin;
    match action.as_str() {
        "edit" => {
            let text = f.get("text").unwrap_or("").to_string();
            let req =
                crate::memory::types::PatchMemory { text: Some(text), pinned: None, confidence: None, metadata: None };
            let after = crate::memory::service::patch(&admin.memory, owner, actor, id, req).await?;
            service::record(
                &admin,
                &s,
                "admin.memory.update",
                Some(&id.to_string()),
                Some(owner),
                serde_json::json!({"before": {"id": id, "text": before.text}, "after": {"id": after.memory.id, "text": after.memory.text}}),
            )
            .await?;
            Ok(see_other(&format!("/admin/memory/{}?done=saved", after.memory.id)))
        }
        "delete" => {
            crate::memory::service::delete(&admin.memory, owner, actor, id).await?;
            service::record(
                &admin,
                &s,
                "admin.memory.delete",
                Some(&id.to_string()),
                Some(owner),
                serde_json::json!({"before": {"kind": before.kind, "status": before.status}, "after": null}),
            )
            .await?;
            Ok(see_other(&format!("/admin/memory?user={owner}&done=deleted")))
        }
        _ => Err(Fail(ApiError::not_found("no route for this path"))),
    }
}
