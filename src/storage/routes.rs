//! Supabase Storage's routes under `/storage/v1`: buckets, object upload (raw and
//! multipart), download (ranges, conditional requests, `?download`), info, list
//! (v1 folders and v2 cursors), move, copy, remove, signed download and upload URLs.
//! Every object route checks the caller against the object's owner; someone else's
//! object answers `NoSuchKey`. A bucket an organization holds is its members':
//! each route checks the caller's permission there (`org:storage:read` to read,
//! `org:storage:write` to write and manage), a non-member is told `NoSuchBucket`.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use time::OffsetDateTime;

use uuid::Uuid;

use super::blobs::Blobs;
use super::db::{self, BucketRow, ObjectRow};
use super::http::*;
use super::service::*;
use super::{Actor, Storage, StorageError, StorageResult, Who};
use crate::auth::AuthState;
use axum::extract::FromRef;

/// The storage router, to be nested at `/storage/v1`: the Supabase routes, TUS
/// resumable uploads and image rendering (neither calls back into this file).
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Storage>: FromRef<S>,
    Arc<AuthState>: FromRef<S>,
{
    Router::new()
        .route("/bucket", get(list_buckets).post(create_bucket))
        .route("/bucket/", get(list_buckets).post(create_bucket))
        .route("/bucket/{id}", get(get_bucket).put(update_bucket).delete(delete_bucket))
        .route("/bucket/{id}/empty", post(empty_bucket))
        .route("/object/list/{bucket}", post(list_v1))
        .route("/object/list-v2/{bucket}", post(list_v2))
        .route("/object/move", post(move_object))
        .route("/object/copy", post(copy_object))
        .route("/object/sign/{bucket}", post(sign_many))
        .route("/object/sign/{bucket}/{*key}", post(sign_one).get(download_signed))
        .route("/object/upload/sign/{bucket}/{*key}", post(sign_upload).put(upload_signed))
        .route("/object/public/{bucket}/{*key}", get(download_public))
        .route("/object/authenticated/{bucket}/{*key}", get(download_authenticated))
        .route("/object/info/{bucket}/{*key}", get(info))
        .route("/object/info/public/{bucket}/{*key}", get(info_public))
        .route("/object/info/authenticated/{bucket}/{*key}", get(info))
        .route("/object/{bucket}", axum::routing::delete(remove_many))
        .route(
            "/object/{bucket}/{*key}",
            post(upload_post).put(upload_put).get(download_authenticated).delete(delete_one),
        )
        .merge(super::tus::router())
        .merge(super::render::router())
        .fallback(fallback)
}

async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    let body = json!({
        "statusCode": "404",
        "error": "Not Found",
        "message": format!("Route {method}:{} not found", uri.path()),
        "code": "InvalidRequest",
    });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

// ---------------------------------------------------------------------------
// Validation

// ---------------------------------------------------------------------------
// Buckets

fn bucket_json(b: &BucketRow) -> Value {
    json!({
        "id": b.id, "name": b.name, "owner": "", "public": b.public, "type": "STANDARD",
        "file_size_limit": b.file_size_limit, "allowed_mime_types": b.allowed_mime_types,
        "owner_folders": b.owner_folders, "org_id": b.org_id, "created_at": ts(b.created_at), "updated_at": ts(b.updated_at),
    })
}

/// Bucket management: a service key, or (for an organization's bucket) a member
/// with `org:storage:write`.
async fn may_manage(state: &Storage, actor: Actor, bucket: Option<&BucketRow>) -> StorageResult<()> {
    match (actor, bucket.and_then(|b| b.org_id)) {
        (Actor::Service { .. }, _) => Ok(()),
        (Actor::User(u), Some(org)) => org_gate(state, org, u, Need::Write).await,
        _ => Err(StorageError::access_denied("bucket management needs a service key")),
    }
}

/// The bucket `id` for managing it (a non-member of its organization is told it
/// does not exist).
async fn managed(state: &Storage, who: &Who, id: &str) -> StorageResult<BucketRow> {
    let actor = who.signed_in()?;
    let b = bucket_or_404(state, id).await?;
    may_manage(state, actor, Some(&b)).await?;
    Ok(b)
}

#[derive(Deserialize)]
struct ListBucketsQuery {
    limit: Option<i64>,
    offset: Option<i64>,
    #[serde(rename = "sortColumn")]
    sort_column: Option<String>,
    #[serde(rename = "sortOrder")]
    sort_order: Option<String>,
    search: Option<String>,
}

async fn list_buckets(
    State(state): State<Arc<Storage>>,
    who: Who,
    Query(q): Query<ListBucketsQuery>,
) -> StorageResult<Response> {
    // A user sees the buckets outside organizations and those of organizations
    // whose buckets they may read.
    let orgs = match who.signed_in()? {
        Actor::User(u) => Some(crate::auth::shared::orgs_granting(&state.pool, u, "storage", Need::Read).await?),
        _ => None,
    };
    let rows = db::list_buckets(
        &state.pool,
        orgs.as_deref(),
        q.sort_column.as_deref().unwrap_or("id"),
        q.sort_order.as_deref() == Some("desc"),
        q.search.as_deref().filter(|s| !s.is_empty()),
        q.limit.unwrap_or(1000).clamp(1, 1000),
        q.offset.unwrap_or(0).max(0),
    )
    .await?;
    Ok(axum::Json(rows.iter().map(bucket_json).collect::<Vec<_>>()).into_response())
}

async fn get_bucket(State(state): State<Arc<Storage>>, who: Who, Path(id): Path<String>) -> StorageResult<Response> {
    let actor = who.signed_in()?;
    let b = bucket_or_404(&state, &id).await?;
    if let (Some(org), Actor::User(u)) = (b.org_id, actor) {
        org_gate(&state, org, u, Need::Read).await?;
    }
    Ok(axum::Json(bucket_json(&b)).into_response())
}

/// `file_size_limit`: a number of bytes, a string such as "100MB", or null.
fn parse_limit(v: &Value) -> StorageResult<Option<i64>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| StorageError::invalid("file_size_limit must be a non-negative integer")),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => crate::config::parse_size(s)
            .ok()
            .and_then(|n| i64::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| StorageError::invalid(format!("file_size_limit {s:?} is not a size like 100MB"))),
        _ => Err(StorageError::invalid("file_size_limit must be a number or a string")),
    }
}

fn parse_mimes(v: &Value) -> StorageResult<Option<Vec<String>>> {
    match v {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .filter(|s| {
                        let s = s.trim();
                        s.contains('/') && s.len() <= 255 && !s.chars().any(char::is_control)
                    })
                    .map(|s| s.trim().to_string())
                    .ok_or_else(|| StorageError::invalid("allowed_mime_types must be MIME types like image/png"))
            })
            .collect::<StorageResult<Vec<_>>>()
            .map(Some),
        _ => Err(StorageError::invalid("allowed_mime_types must be an array of strings")),
    }
}

#[derive(Deserialize)]
struct CreateBucket {
    id: Option<String>,
    name: Option<String>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    file_size_limit: Value,
    #[serde(default)]
    allowed_mime_types: Value,
    /// Carmenta's extension: users write only under `<their user id>/`.
    #[serde(default)]
    owner_folders: bool,
    /// Carmenta's extension: the organization that holds the bucket (a user
    /// making one needs `org:storage:write` there).
    #[serde(default)]
    org_id: Option<Uuid>,
}

async fn create_bucket(
    State(state): State<Arc<Storage>>,
    who: Who,
    SJson(b): SJson<CreateBucket>,
) -> StorageResult<Response> {
    let actor = who.signed_in()?;
    match (actor, b.org_id) {
        (Actor::Service { .. }, Some(org)) if !db::org_exists(&state.pool, org).await? => {
            return Err(StorageError::no_such_org());
        }
        (Actor::User(u), Some(org)) => org_gate(&state, org, u, Need::Write)
            .await
            .map_err(|e| if e.code == "NoSuchBucket" { StorageError::no_such_org() } else { e })?,
        _ => may_manage(&state, actor, None).await?,
    }
    let name = b.name.or(b.id).ok_or_else(|| StorageError::invalid("body must have required property 'name'"))?;
    if !valid_bucket_name(&name) {
        return Err(StorageError::new(
            400,
            "Invalid Input",
            "InvalidBucketName",
            format!("Bucket name invalid: {name}"),
        ));
    }
    let limit = parse_limit(&b.file_size_limit)?;
    let mimes = parse_mimes(&b.allowed_mime_types)?;
    let new = db::NewBucket {
        name: &name,
        public: b.public,
        file_size_limit: limit,
        allowed_mime_types: mimes.as_deref(),
        owner_folders: b.owner_folders,
        org_id: b.org_id,
    };
    if !db::insert_bucket(&state.pool, &new).await? {
        return Err(StorageError::duplicate("BucketAlreadyExists"));
    }
    Ok(axum::Json(json!({ "name": name })).into_response())
}

async fn update_bucket(
    State(state): State<Arc<Storage>>,
    who: Who,
    Path(id): Path<String>,
    SJson(b): SJson<serde_json::Map<String, Value>>,
) -> StorageResult<Response> {
    managed(&state, &who, &id).await?;
    // A key present with null clears that setting; an absent key leaves it.
    let public = match b.get("public") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(p)) => Some(*p),
        Some(_) => return Err(StorageError::invalid("public must be a boolean")),
    };
    let owner_folders = match b.get("owner_folders") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(p)) => Some(*p),
        Some(_) => return Err(StorageError::invalid("owner_folders must be a boolean")),
    };
    let limit = b.get("file_size_limit").map(parse_limit).transpose()?;
    let mimes = b.get("allowed_mime_types").map(parse_mimes).transpose()?;
    if public.is_none() && limit.is_none() && mimes.is_none() && owner_folders.is_none() {
        return Err(StorageError::invalid(
            "body must have public, file_size_limit, allowed_mime_types or owner_folders",
        ));
    }
    if !db::update_bucket(&state.pool, &id, public, limit, mimes, owner_folders).await? {
        return Err(StorageError::no_such_bucket());
    }
    invalidate(&state, format!("b:{id}")).await;
    Ok(axum::Json(json!({ "message": "Successfully updated" })).into_response())
}

async fn delete_bucket(State(state): State<Arc<Storage>>, who: Who, Path(id): Path<String>) -> StorageResult<Response> {
    managed(&state, &who, &id).await?;
    match db::delete_bucket(&state.pool, &id).await? {
        db::BucketDelete::Deleted => {
            invalidate(&state, format!("b:{id}")).await;
            Ok(axum::Json(json!({ "message": "Successfully deleted" })).into_response())
        }
        db::BucketDelete::NotEmpty => Err(StorageError::new(
            409,
            "Bucket not empty",
            "ResourceNotEmpty",
            "The bucket you tried to delete is not empty",
        )),
        db::BucketDelete::Missing => Err(StorageError::no_such_bucket()),
    }
}

async fn empty_bucket(State(state): State<Arc<Storage>>, who: Who, Path(id): Path<String>) -> StorageResult<Response> {
    managed(&state, &who, &id).await?;
    loop {
        // Rows first, then bytes: a crash leaves orphans for the sweeper, never rows without bytes.
        let versions = db::empty_bucket_batch(&state.pool, &id, 500).await?;
        if versions.is_empty() {
            break;
        }
        invalidate(&state, format!("b:{id}")).await;
        for v in versions {
            if let Err(e) = state.blobs.delete(&Blobs::blob_path(v)).await {
                tracing::warn!(error = %e, "deleting a blob while emptying a bucket; the sweeper will retry");
            }
        }
    }
    invalidate(&state, format!("b:{id}")).await;
    Ok(axum::Json(json!({ "message": "Successfully emptied" })).into_response())
}

// ---------------------------------------------------------------------------
// Upload

fn upsert_header(headers: &HeaderMap) -> bool {
    header_str(headers, "x-upsert").is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn upload(
    state: Arc<Storage>,
    who: Who,
    bucket: String,
    key: String,
    upsert: bool,
    req: Request,
) -> StorageResult<Response> {
    let actor = who.actor()?;
    let b = bucket_or_404(&state, &bucket).await?;
    let writer = writer_in(&state, actor, &b).await?;
    let (parts, body) = req.into_parts();
    let t = UploadTarget { bucket: &b, key: &key, owner: actor.new_owner(), writer, upsert };
    let row = receive(&state, t, &parts.headers, body).await?;
    Ok(axum::Json(json!({ "Id": row.id, "Key": format!("{}/{}", row.bucket_id, row.name) })).into_response())
}

async fn upload_post(
    State(state): State<Arc<Storage>>,
    who: Who,
    Path((bucket, key)): Path<(String, String)>,
    req: Request,
) -> StorageResult<Response> {
    let upsert = upsert_header(req.headers());
    upload(state, who, bucket, key, upsert, req).await
}

async fn upload_put(
    State(state): State<Arc<Storage>>,
    who: Who,
    Path((bucket, key)): Path<(String, String)>,
    req: Request,
) -> StorageResult<Response> {
    // `update()` overwrites.
    upload(state, who, bucket, key, true, req).await
}

// ---------------------------------------------------------------------------
// Download

async fn download_authenticated(
    State(state): State<Arc<Storage>>,
    who: Who,
    method: Method,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> StorageResult<Response> {
    download(
        &state,
        Some(&who),
        &bucket,
        &key,
        Serve { method: &method, headers: &headers, download: q.get("download").map(String::as_str), expires: None },
    )
    .await
}

async fn download_public(
    State(state): State<Arc<Storage>>,
    method: Method,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> StorageResult<Response> {
    // Transformation parameters on a public URL render it, as on /render/image/public.
    if method == Method::GET && crate::imaging::params::NAMES.iter().any(|n| q.contains_key(*n)) {
        return super::render::public_with(&state, &headers, &bucket, &key, &q).await;
    }
    download(
        &state,
        None,
        &bucket,
        &key,
        Serve { method: &method, headers: &headers, download: q.get("download").map(String::as_str), expires: None },
    )
    .await
}

/// A download by the caller `who`, or anonymously through the public route
/// (`None`: only public buckets exist there). Public buckets' rows are cached and
/// served whatever the credentials, as Supabase does.
async fn download(
    state: &Storage,
    who: Option<&Who>,
    bucket: &str,
    key: &str,
    how: Serve<'_>,
) -> StorageResult<Response> {
    let row = visible(state, who, bucket, key).await?;
    serve(state, row, how).await
}

async fn download_signed(
    State(state): State<Arc<Storage>>,
    method: Method,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> StorageResult<Response> {
    let token = q.get("token").ok_or_else(|| StorageError::invalid_signature("querystring must have token"))?;
    let claims = state.verify(token, &format!("{bucket}/{key}"), "download")?;
    signer_may(&state, &bucket_or_404(&state, &bucket).await?, claims.by, Need::Read).await?;
    let row = db::object(&state.pool, &bucket, &key, None).await?.ok_or_else(StorageError::no_such_key)?;
    serve(
        &state,
        row,
        Serve {
            method: &method,
            headers: &headers,
            download: q.get("download").map(String::as_str),
            expires: Some(claims.exp),
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// Info, delete, list

fn info_json(o: &ObjectRow) -> Value {
    json!({
        "id": o.id, "name": o.name, "version": o.version, "bucket_id": o.bucket_id, "size": o.size,
        "content_type": o.content_type, "cache_control": o.cache_control, "etag": o.etag,
        "metadata": o.user_metadata, "last_modified": ts(o.updated_at), "created_at": ts(o.created_at),
    })
}

fn object_json(o: &ObjectRow) -> Value {
    json!({
        "name": o.name, "bucket_id": o.bucket_id, "owner": o.owner_id.map(|u| u.to_string()).unwrap_or_default(),
        "owner_id": o.owner_id, "id": o.id, "version": o.version,
        "updated_at": ts(o.updated_at), "created_at": ts(o.created_at), "last_accessed_at": ts(o.last_accessed_at),
        "metadata": metadata_json(o.size, &o.content_type, &o.cache_control, &o.etag, o.updated_at),
        "user_metadata": o.user_metadata,
    })
}

fn metadata_json(size: i64, mime: &str, cache: &str, etag: &str, modified: OffsetDateTime) -> Value {
    json!({
        "eTag": etag, "size": size, "mimetype": mime, "cacheControl": cache,
        "lastModified": ts(modified), "contentLength": size, "httpStatusCode": 200,
    })
}

async fn info(
    State(state): State<Arc<Storage>>,
    who: Who,
    Path((bucket, key)): Path<(String, String)>,
) -> StorageResult<Response> {
    let b = bucket_or_404(&state, &bucket).await?;
    let actor = if b.public { who.actor().unwrap_or(Actor::Anon) } else { who.actor()? };
    Ok(axum::Json(info_json(&readable(&state, actor, &b, &key).await?)).into_response())
}

async fn info_public(
    State(state): State<Arc<Storage>>,
    Path((bucket, key)): Path<(String, String)>,
) -> StorageResult<Response> {
    let b = db::bucket(&state.pool, &bucket).await?.filter(|b| b.public).ok_or_else(StorageError::no_such_bucket)?;
    Ok(axum::Json(info_json(&readable(&state, Actor::Anon, &b, &key).await?)).into_response())
}

async fn delete_one(
    State(state): State<Arc<Storage>>,
    who: Who,
    Path((bucket, key)): Path<(String, String)>,
) -> StorageResult<Response> {
    let rows = remove(&state, who.actor()?, &bucket, std::slice::from_ref(&key)).await?;
    if rows.is_empty() {
        return Err(StorageError::no_such_key());
    }
    Ok(axum::Json(json!({ "message": "Successfully deleted" })).into_response())
}

#[derive(Deserialize)]
struct RemoveBody {
    prefixes: Vec<Value>,
}

async fn remove_many(
    State(state): State<Arc<Storage>>,
    who: Who,
    Path(bucket): Path<String>,
    SJson(body): SJson<RemoveBody>,
) -> StorageResult<Response> {
    let actor = who.actor()?;
    if body.prefixes.is_empty() || body.prefixes.len() > 1000 {
        return Err(StorageError::invalid("prefixes must hold 1 to 1000 keys"));
    }
    let names: Vec<String> = body
        .prefixes
        .iter()
        .map(|p| match p {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("path").and_then(Value::as_str).map(str::to_string),
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| StorageError::invalid("prefixes must be keys"))?;
    let rows = remove(&state, actor, &bucket, &names).await?;
    Ok(axum::Json(rows.iter().map(object_json).collect::<Vec<_>>()).into_response())
}

#[derive(Deserialize, Default)]
struct SortBy {
    column: Option<String>,
    order: Option<String>,
}

#[derive(Deserialize)]
struct ListV1 {
    prefix: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
    #[serde(rename = "sortBy", default)]
    sort_by: Option<SortBy>,
    search: Option<String>,
}

async fn list_v1(
    State(state): State<Arc<Storage>>,
    who: Who,
    Path(bucket): Path<String>,
    SJson(body): SJson<ListV1>,
) -> StorageResult<Response> {
    let actor = who.actor()?;
    let b = bucket_or_404(&state, &bucket).await?;
    let prefix = body.prefix.ok_or_else(|| StorageError::invalid("body must have required property 'prefix'"))?;
    let mut folder = prefix.trim_start_matches('/').to_string();
    if !folder.is_empty() && !folder.ends_with('/') {
        folder.push('/');
    }
    let Some(owner) = objects_for(&state, actor, &b, Need::Read).await? else {
        return Ok(axum::Json(Vec::<Value>::new()).into_response());
    };
    let sort = body.sort_by.unwrap_or_default();
    let search = body.search.unwrap_or_default();
    let q = db::ListQuery {
        bucket: &b.id,
        folder: &folder,
        starts_with: &search,
        delimiter: true,
        sort: sort.column.as_deref().unwrap_or("name"),
        desc: sort.order.as_deref().is_some_and(|o| o.eq_ignore_ascii_case("desc")),
        after: None,
        limit: body.limit.unwrap_or(100).clamp(1, 1000),
        offset: body.offset.unwrap_or(0).max(0),
        owner,
    };
    let rows = db::list(&state.pool, &q).await?;
    let out: Vec<Value> = rows
        .iter()
        .map(|e| {
            if e.folder {
                json!({"name": e.name, "id": null, "updated_at": null, "created_at": null, "last_accessed_at": null, "metadata": null})
            } else {
                entry_json(e)
            }
        })
        .collect();
    Ok(axum::Json(out).into_response())
}

fn entry_json(e: &db::ListEntry) -> Value {
    let modified = e.updated_at.unwrap_or(OffsetDateTime::UNIX_EPOCH);
    json!({
        "name": e.name, "key": e.key, "id": e.id,
        "updated_at": e.updated_at.map(ts), "created_at": e.created_at.map(ts),
        "last_accessed_at": e.last_accessed_at.map(ts),
        "metadata": metadata_json(
            e.size.unwrap_or(0), e.content_type.as_deref().unwrap_or(""), e.cache_control.as_deref().unwrap_or(""),
            e.etag.as_deref().unwrap_or(""), modified),
    })
}

#[derive(Deserialize)]
struct ListV2 {
    prefix: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
    with_delimiter: Option<bool>,
    #[serde(rename = "sortBy", default)]
    sort_by: Option<SortBy>,
}

async fn list_v2(
    State(state): State<Arc<Storage>>,
    who: Who,
    Path(bucket): Path<String>,
    SJson(body): SJson<ListV2>,
) -> StorageResult<Response> {
    let actor = who.actor()?;
    let b = bucket_or_404(&state, &bucket).await?;
    let prefix = body.prefix.unwrap_or_default();
    let prefix = prefix.trim_start_matches('/');
    // The folder is the prefix up to its last slash; the rest filters names in it.
    let (folder, starts_with) = match prefix.rfind('/') {
        Some(i) => (&prefix[..=i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    let after = match body.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| StorageError::invalid("invalid cursor"))?,
        ),
        None => None,
    };
    let limit = body.limit.unwrap_or(1000).clamp(1, 1000);
    let sort = body.sort_by.unwrap_or_default();
    let desc = sort.order.as_deref().is_some_and(|o| o.eq_ignore_ascii_case("desc"));
    if sort.column.as_deref().is_some_and(|c| c != "name") && after.is_some() {
        return Err(StorageError::invalid("cursors page by name; sort by name to use one"));
    }
    let Some(owner) = objects_for(&state, actor, &b, Need::Read).await? else {
        return Ok(axum::Json(json!({"hasNext": false, "folders": [], "objects": []})).into_response());
    };
    let q = db::ListQuery {
        bucket: &b.id,
        folder,
        starts_with,
        delimiter: body.with_delimiter.unwrap_or(false),
        sort: sort.column.as_deref().unwrap_or("name"),
        desc,
        after: after.as_deref(),
        limit: limit + 1,
        offset: 0,
        owner,
    };
    let mut rows = db::list(&state.pool, &q).await?;
    let has_next = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(1000));
    let next = if has_next {
        rows.last().map(|e| {
            let k = e.key.trim_end_matches('/');
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k)
        })
    } else {
        None
    };
    let folders: Vec<Value> = rows.iter().filter(|e| e.folder).map(|e| json!({"name": e.name, "key": e.key})).collect();
    let objects: Vec<Value> = rows.iter().filter(|e| !e.folder).map(entry_json).collect();
    let mut out = json!({"hasNext": has_next, "folders": folders, "objects": objects});
    if let Some(n) = next {
        out["nextCursor"] = json!(n);
    }
    Ok(axum::Json(out).into_response())
}

// ---------------------------------------------------------------------------
// Move and copy

#[derive(Deserialize)]
struct MoveCopy {
    #[serde(rename = "bucketId")]
    bucket_id: String,
    #[serde(rename = "sourceKey")]
    source_key: String,
    #[serde(rename = "destinationKey")]
    destination_key: String,
    #[serde(rename = "destinationBucket")]
    destination_bucket: Option<String>,
    #[serde(rename = "copyMetadata")]
    copy_metadata: Option<bool>,
    metadata: Option<CopyMetadata>,
}

#[derive(Deserialize)]
struct CopyMetadata {
    #[serde(rename = "cacheControl")]
    cache_control: Option<String>,
    mimetype: Option<String>,
}

async fn move_object(
    State(state): State<Arc<Storage>>,
    who: Who,
    SJson(m): SJson<MoveCopy>,
) -> StorageResult<Response> {
    let actor = who.actor()?;
    check_key(&m.destination_key)?;
    let src_bucket = bucket_or_404(&state, &m.bucket_id).await?;
    // Moving takes the object out of its bucket: that needs writing there.
    let Some(owner) = objects_for(&state, actor, &src_bucket, Need::Write).await? else {
        return Err(StorageError::no_such_key());
    };
    let dest_id = m.destination_bucket.clone().unwrap_or_else(|| m.bucket_id.clone());
    let dest = bucket_or_404(&state, &dest_id).await?;
    own_folder(&dest, writer_in(&state, actor, &dest).await?, &m.destination_key)?;
    // The destination bucket's rules hold for what is moved into it.
    if dest.id != src_bucket.id {
        let src = db::object(&state.pool, &src_bucket.id, &m.source_key, owner)
            .await?
            .ok_or_else(StorageError::no_such_key)?;
        admit(&state, &dest, &src)?;
    }
    match db::move_object(&state.pool, (&src_bucket.id, &m.source_key), (&dest.id, &m.destination_key), owner).await? {
        db::MoveOutcome::Moved => {
            if src_bucket.public {
                invalidate(&state, format!("o:{}/{}", src_bucket.id, m.source_key)).await;
            }
            Ok(axum::Json(json!({ "message": "Successfully moved" })).into_response())
        }
        db::MoveOutcome::NoSource => Err(StorageError::no_such_key()),
        db::MoveOutcome::Exists => Err(StorageError::duplicate("KeyAlreadyExists")),
    }
}

/// Checks an existing object against a bucket's type and size rules.
async fn copy_object(
    State(state): State<Arc<Storage>>,
    who: Who,
    headers: HeaderMap,
    SJson(m): SJson<MoveCopy>,
) -> StorageResult<Response> {
    let actor = who.actor()?;
    check_key(&m.destination_key)?;
    let src_bucket = bucket_or_404(&state, &m.bucket_id).await?;
    let src = readable(&state, actor, &src_bucket, &m.source_key).await?;
    let dest_id = m.destination_bucket.clone().unwrap_or_else(|| m.bucket_id.clone());
    let dest = bucket_or_404(&state, &dest_id).await?;
    let writer = writer_in(&state, actor, &dest).await?;
    let (content_type, cache_control) = match (&m.metadata, m.copy_metadata.unwrap_or(true)) {
        (Some(md), _) => (
            md.mimetype.clone().unwrap_or_else(|| src.content_type.clone()),
            md.cache_control.as_deref().map_or_else(|| src.cache_control.clone(), |c| cache_control_value(Some(c))),
        ),
        (None, _) => (src.content_type.clone(), src.cache_control.clone()),
    };
    let mut checked = src.clone();
    checked.content_type = content_type.clone();
    admit(&state, &dest, &checked)?;
    let t = UploadTarget {
        bucket: &dest,
        key: &m.destination_key,
        owner: actor.new_owner(),
        writer,
        upsert: upsert_header(&headers),
    };
    precheck(&state, &t).await?;
    let version = Uuid::now_v7();
    state.blobs.copy(&Blobs::blob_path(src.version), &Blobs::blob_path(version)).await?;
    let metadata = if m.copy_metadata.unwrap_or(true) { src.user_metadata.clone() } else { None };
    let row = commit(
        &state,
        &t,
        version,
        u64::try_from(src.size).unwrap_or(0),
        &content_type,
        &cache_control,
        metadata.as_ref(),
    )
    .await?;
    let mut out = object_json(&row);
    out["Id"] = json!(row.id);
    out["Key"] = json!(format!("{}/{}", row.bucket_id, row.name));
    Ok(axum::Json(out).into_response())
}

// ---------------------------------------------------------------------------
// Signed URLs

#[derive(Deserialize)]
struct SignOne {
    #[serde(rename = "expiresIn")]
    expires_in: i64,
    transform: Option<Value>,
}

async fn sign_one(
    State(state): State<Arc<Storage>>,
    who: Who,
    Path((bucket, key)): Path<(String, String)>,
    SJson(body): SJson<SignOne>,
) -> StorageResult<Response> {
    let actor = who.actor()?;
    let b = bucket_or_404(&state, &bucket).await?;
    readable(&state, actor, &b, &key).await?;
    let mut claims = signed_claims(format!("{bucket}/{key}"), "download", body.expires_in)?;
    claims.by = actor.user();
    if let Some(t) = body.transform.as_ref().and_then(Value::as_object).filter(|t| !t.is_empty()) {
        let mut parts: Vec<String> = t
            .iter()
            .map(|(k, v)| format!("{k}:{}", v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
        parts.sort();
        claims.transformations = Some(parts.join(","));
    }
    let token = state.sign(&claims)?;
    let route = if claims.transformations.is_some() { "render/image/sign" } else { "object/sign" };
    Ok(axum::Json(json!({ "signedURL": format!("/{route}/{bucket}/{key}?token={token}") })).into_response())
}

#[derive(Deserialize)]
struct SignMany {
    #[serde(rename = "expiresIn")]
    expires_in: i64,
    paths: Vec<String>,
}

async fn sign_many(
    State(state): State<Arc<Storage>>,
    who: Who,
    Path(bucket): Path<String>,
    SJson(body): SJson<SignMany>,
) -> StorageResult<Response> {
    let actor = who.actor()?;
    if body.paths.is_empty() || body.paths.len() > 1000 {
        return Err(StorageError::invalid("paths must hold 1 to 1000 keys"));
    }
    let b = bucket_or_404(&state, &bucket).await?;
    let mut out = Vec::with_capacity(body.paths.len());
    for path in &body.paths {
        match readable(&state, actor, &b, path).await {
            Ok(_) => {
                let mut claims = signed_claims(format!("{bucket}/{path}"), "download", body.expires_in)?;
                claims.by = actor.user();
                let token = state.sign(&claims)?;
                out.push(json!({"error": null, "path": path, "signedURL": format!("/object/sign/{bucket}/{path}?token={token}")}));
            }
            Err(e) if e.code == "NoSuchKey" => out.push(
                json!({"error": "Either the object does not exist or you do not have access to it", "path": path, "signedURL": null}),
            ),
            Err(e) => return Err(e),
        }
    }
    Ok(axum::Json(out).into_response())
}

async fn sign_upload(
    State(state): State<Arc<Storage>>,
    who: Who,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
) -> StorageResult<Response> {
    let actor = who.actor()?;
    check_key(&key)?;
    let b = bucket_or_404(&state, &bucket).await?;
    let writer = writer_in(&state, actor, &b).await?;
    let upsert = upsert_header(&headers);
    precheck(&state, &UploadTarget { bucket: &b, key: &key, owner: actor.new_owner(), writer, upsert }).await?;
    let ttl = i64::try_from(state.upload_url_ttl.as_secs()).unwrap_or(7200);
    let mut claims = signed_claims(format!("{bucket}/{key}"), "upload", ttl)?;
    claims.by = actor.user();
    claims.owner = actor.new_owner();
    claims.upsert = Some(upsert);
    let token = state.sign(&claims)?;
    Ok(axum::Json(json!({ "url": format!("/object/upload/sign/{bucket}/{key}?token={token}"), "token": token }))
        .into_response())
}

async fn upload_signed(
    State(state): State<Arc<Storage>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> StorageResult<Response> {
    let token = q.get("token").ok_or_else(|| StorageError::invalid_signature("querystring must have token"))?;
    let claims = state.verify(token, &format!("{bucket}/{key}"), "upload")?;
    let b = bucket_or_404(&state, &bucket).await?;
    signer_may(&state, &b, claims.by, Need::Write).await?;
    let (parts, body) = req.into_parts();
    // The token carries the rights: its owner, and whether it may overwrite.
    let t = UploadTarget {
        bucket: &b,
        key: &key,
        owner: claims.owner,
        writer: signed_writer(&b, claims.owner),
        upsert: claims.upsert.unwrap_or(false),
    };
    let row = receive(&state, t, &parts.headers, body).await?;
    Ok(axum::Json(json!({ "Id": row.id, "Key": format!("{}/{}", row.bucket_id, row.name) })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["a", "a/b.txt", "folder/", "x y/ü.png", "a/.hidden"] {
            assert!(valid_key(ok), "{ok}");
        }
        for bad in ["", "/a", "a//b", "../a", "a/../b", "a/./b", "a\u{0}b", "a\\b", "a\nb", &"x".repeat(1025)] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn mimes() {
        let l = vec!["image/*".to_string(), "application/pdf".to_string()];
        assert!(mime_allowed(Some(&l), "image/png"));
        assert!(mime_allowed(Some(&l), "application/pdf; charset=binary"));
        assert!(!mime_allowed(Some(&l), "text/plain"));
        assert!(!mime_allowed(Some(&l), "imagex/png"));
        assert!(mime_allowed(None, "text/plain"));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Ok(Some(0..10)));
        assert_eq!(parse_range(Some("bytes=90-"), 100), Ok(Some(90..100)));
        assert_eq!(parse_range(Some("bytes=-10"), 100), Ok(Some(90..100)));
        assert_eq!(parse_range(Some("bytes=50-1000"), 100), Ok(Some(50..100)));
        assert_eq!(parse_range(Some("bytes=100-"), 100), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(parse_range(None, 100), Ok(None));
    }
}
