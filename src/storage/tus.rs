//! TUS 1.0 resumable uploads at `/storage/v1/upload/resumable` (bearer auth) and
//! `/upload/resumable/sign` (an `x-signature` upload token), with Supabase's
//! metadata keys (`bucketName`, `objectName`, `contentType`, `cacheControl`,
//! `metadata`). Extensions: creation, creation-with-upload, termination, expiration.
//!
//! State lives in `storage_uploads`; each PATCH streams into its own piece
//! (`uploads/<id>/<offset>`), keeping what arrived when the connection is cut, so
//! the client resumes from the byte it got to. A PATCH holds a lease on the row
//! (a concurrent PATCH gets 409). The last piece joins the pieces into a blob and
//! records the object like any upload (first finisher wins unless `x-upsert`).

use std::collections::HashMap;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use base64::Engine;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use time::OffsetDateTime;

use uuid::Uuid;

use super::blobs::{Blobs, WriteError};
use super::db::{self, UploadRow};
use super::http::parse_metadata;
use super::service::{
    Need, UploadTarget, bucket_or_404, cache_control_value, check_key, clean_content_type, commit, mime_allowed,
    precheck, signed_writer, signer_may, size_limit, writer_in,
};
use super::{Actor, Storage, StorageError, Who};
use crate::auth::AuthState;
use axum::extract::FromRef;

const TUS_VERSION: &str = "1.0.0";
/// How long a PATCH holds its upload without renewing (renewed every third of it).
const PATCH_LEASE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long an unfinished upload can be resumed.
const UPLOAD_TTL_SECS: i64 = 24 * 3600;

/// The TUS routes, relative to `/storage/v1`.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Storage>: FromRef<S>,
    Arc<AuthState>: FromRef<S>,
{
    Router::new()
        .route("/upload/resumable", post(create_bearer).options(options))
        .route("/upload/resumable/", post(create_bearer).options(options))
        .route("/upload/resumable/sign", post(create_signed).options(options))
        .route("/upload/resumable/sign/", post(create_signed).options(options))
        .route("/upload/resumable/sign/{id}", any(upload_signed))
        .route("/upload/resumable/{id}", any(upload_bearer))
}

fn tus_headers(h: &mut HeaderMap) {
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert("cache-control", HeaderValue::from_static("no-store"));
}

/// A TUS answer: a real HTTP status (TUS clients read it), the storage error body.
fn tus_error(status: StatusCode, e: StorageError) -> Response {
    let mut res = e.into_response();
    *res.status_mut() = status;
    tus_headers(res.headers_mut());
    res
}

fn status_of(e: &StorageError) -> StatusCode {
    StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST)
}

fn fail(e: StorageError) -> Response {
    tus_error(status_of(&e), e)
}

fn empty(status: StatusCode, extra: &[(&'static str, String)]) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    tus_headers(res.headers_mut());
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(v) {
            res.headers_mut().insert(*k, v);
        }
    }
    res
}

async fn options() -> Response {
    empty(
        StatusCode::NO_CONTENT,
        &[
            ("tus-version", TUS_VERSION.into()),
            ("tus-extension", "creation,creation-with-upload,termination,expiration".into()),
        ],
    )
}

/// The 412 answer when the client does not speak TUS 1.0.0.
fn version_mismatch(headers: &HeaderMap) -> Option<Response> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => None,
        _ => Some(empty(StatusCode::PRECONDITION_FAILED, &[("tus-version", TUS_VERSION.into())])),
    }
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs.
fn parse_upload_metadata(raw: &str) -> Result<HashMap<String, String>, StorageError> {
    let mut out = HashMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once(' ').unwrap_or((pair, ""));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .map_err(|_| StorageError::invalid(format!("Upload-Metadata {k}: not base64")))?;
        let v =
            String::from_utf8(bytes).map_err(|_| StorageError::invalid(format!("Upload-Metadata {k}: not UTF-8")))?;
        out.insert(k.to_string(), v);
    }
    Ok(out)
}

/// Who owns an upload: a user, a service key, or a signed upload URL.
struct Rights {
    creator: String,
    /// The signed-in user (whose organization permissions are checked at the
    /// start and again at the end of an upload into an organization's bucket).
    user: Option<Uuid>,
    /// For a signed upload URL: the user who signed it.
    signed_by: Option<Uuid>,
    owner: Option<Uuid>,
    writer: Option<Uuid>,
    upsert_allowed: Option<bool>,
}

fn bearer_rights(who: &Who) -> Result<Rights, StorageError> {
    let actor = who.actor()?;
    let writer = match actor {
        Actor::Service { .. } => None,
        Actor::User(u) => Some(u),
        Actor::Anon => return Err(StorageError::rls()),
    };
    let user = match actor {
        Actor::User(u) => Some(u),
        _ => None,
    };
    Ok(Rights {
        creator: actor.creator(),
        user,
        signed_by: None,
        owner: actor.new_owner(),
        writer,
        upsert_allowed: None,
    })
}

/// Who the upload writes as in bucket `b` (see [`writer_in`] and [`signed_writer`]).
async fn writer_for(state: &Storage, rights: &Rights, b: &super::db::BucketRow) -> Result<Option<Uuid>, StorageError> {
    match rights.user {
        Some(u) => writer_in(state, Actor::User(u), b).await,
        None => {
            signer_may(state, b, rights.signed_by, Need::Write).await?;
            Ok(signed_writer(b, rights.writer))
        }
    }
}

fn signed_rights(state: &Storage, headers: &HeaderMap, url: &str) -> Result<Rights, StorageError> {
    let token = headers
        .get("x-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| StorageError::invalid_signature("x-signature header required"))?;
    let claims = state.verify(token, url, "upload")?;
    Ok(Rights {
        creator: format!("signed:{url}"),
        user: None,
        signed_by: claims.by,
        owner: claims.owner,
        writer: claims.owner,
        upsert_allowed: Some(claims.upsert.unwrap_or(false)),
    })
}

async fn create_bearer(State(state): State<Arc<Storage>>, who: Who, req: Request) -> Response {
    match bearer_rights(&who) {
        Ok(r) => create(state, r, "/upload/resumable", req).await,
        Err(e) => fail(e),
    }
}

async fn create_signed(State(state): State<Arc<Storage>>, req: Request) -> Response {
    create(
        state,
        Rights { creator: String::new(), user: None, signed_by: None, owner: None, writer: None, upsert_allowed: None },
        "/upload/resumable/sign",
        req,
    )
    .await
}

async fn create(state: Arc<Storage>, rights: Rights, base: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if let Some(r) = version_mismatch(&parts.headers) {
        return r;
    }
    let h = &parts.headers;
    let length = match h.get("upload-length").and_then(|v| v.to_str().ok()).map(|v| v.trim().parse::<i64>()) {
        Some(Ok(n)) if n >= 0 => n,
        _ => {
            return fail(StorageError::invalid(
                "Upload-Length must be a non-negative integer (deferred length is not supported)",
            ));
        }
    };
    let meta = match parse_upload_metadata(h.get("upload-metadata").and_then(|v| v.to_str().ok()).unwrap_or("")) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let (Some(bucket), Some(key)) = (meta.get("bucketName"), meta.get("objectName")) else {
        return fail(StorageError::invalid("Upload-Metadata must carry bucketName and objectName"));
    };
    let rights = if rights.creator.is_empty() {
        match signed_rights(&state, h, &format!("{bucket}/{key}")) {
            Ok(r) => r,
            Err(e) => return fail(e),
        }
    } else {
        rights
    };
    let upsert = match rights.upsert_allowed {
        Some(u) => u,
        None => h.get("x-upsert").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("true")),
    };
    let result = async {
        check_key(key)?;
        let b = bucket_or_404(&state, bucket).await?;
        let content_type = clean_content_type(meta.get("contentType").map(String::as_str));
        if !mime_allowed(b.allowed_mime_types.as_deref(), &content_type) {
            return Err(StorageError::invalid_mime(&content_type));
        }
        if u64::try_from(length).unwrap_or(u64::MAX) > size_limit(&state, &b) {
            return Err(StorageError::too_large());
        }
        let user_metadata = meta.get("metadata").map(|m| parse_metadata(m.as_bytes())).transpose()?;
        let writer = writer_for(&state, &rights, &b).await?;
        let t = UploadTarget { bucket: &b, key, owner: rights.owner, writer, upsert };
        precheck(&state, &t).await?;
        let row = UploadRow {
            id: Uuid::new_v4(),
            bucket_id: b.id.clone(),
            name: key.clone(),
            owner_id: rights.owner,
            creator: rights.creator.clone(),
            upload_length: length,
            upload_offset: 0,
            content_type,
            cache_control: cache_control_value(meta.get("cacheControl").map(String::as_str)),
            user_metadata,
            upsert,
            expires_at: OffsetDateTime::now_utc() + time::Duration::seconds(UPLOAD_TTL_SECS),
        };
        db::insert_upload(&state.pool, &row).await?;
        Ok(row)
    }
    .await;
    let row = match result {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let location = format!("{}/storage/v1{base}/{}", state.public_base, row.id);
    let expires = httpdate::fmt_http_date(std::time::SystemTime::from(row.expires_at));
    let with_body = h
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/offset+octet-stream"));
    if with_body {
        let mut res = patch(&state, row.id, 0, &rights, body).await;
        if res.status().is_success() {
            *res.status_mut() = StatusCode::CREATED;
            if let Ok(v) = HeaderValue::from_str(&location) {
                res.headers_mut().insert("location", v);
            }
        }
        return res;
    }
    empty(StatusCode::CREATED, &[("location", location), ("upload-expires", expires)])
}

async fn upload_bearer(State(state): State<Arc<Storage>>, who: Who, Path(id): Path<String>, req: Request) -> Response {
    match bearer_rights(&who) {
        Ok(r) => existing(state, r, id, req).await,
        Err(e) => fail(e),
    }
}

async fn upload_signed(State(state): State<Arc<Storage>>, Path(id): Path<String>, req: Request) -> Response {
    // The token names the object; it must match the upload's.
    let Ok(uuid) = Uuid::parse_str(&id) else { return fail(not_found()) };
    let row = match db::upload_target(&state.pool, uuid).await {
        Ok(r) => r,
        Err(e) => return fail(e.into()),
    };
    let Some((bucket, key)) = row else { return fail(not_found()) };
    match signed_rights(&state, req.headers(), &format!("{bucket}/{key}")) {
        Ok(r) => existing(state, r, id, req).await,
        Err(e) => fail(e),
    }
}

fn not_found() -> StorageError {
    StorageError::new(404, "not_found", "NoSuchUpload", "Upload not found")
}

async fn existing(state: Arc<Storage>, rights: Rights, id: String, req: Request) -> Response {
    if req.method() == Method::OPTIONS {
        return options().await;
    }
    if let Some(r) = version_mismatch(req.headers()) {
        return r;
    }
    let Ok(id) = Uuid::parse_str(&id) else { return fail(not_found()) };
    let upload = match db::upload(&state.pool, id, &rights.creator).await {
        Ok(Some(u)) => u,
        Ok(None) => return fail(not_found()),
        Err(e) => return fail(e.into()),
    };
    match *req.method() {
        Method::HEAD => empty(
            StatusCode::OK,
            &[("upload-offset", upload.upload_offset.to_string()), ("upload-length", upload.upload_length.to_string())],
        ),
        Method::PATCH => {
            let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
            if !ct.starts_with("application/offset+octet-stream") {
                return tus_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    StorageError::new(
                        415,
                        "invalid_mime_type",
                        "InvalidMimeType",
                        "PATCH needs Content-Type: application/offset+octet-stream",
                    ),
                );
            }
            let offset =
                match req.headers().get("upload-offset").and_then(|v| v.to_str().ok()).map(|v| v.trim().parse::<i64>())
                {
                    Some(Ok(n)) if n >= 0 => n,
                    _ => return fail(StorageError::invalid("Upload-Offset must be a non-negative integer")),
                };
            patch(&state, id, offset, &rights, req.into_body()).await
        }
        Method::DELETE => {
            if let Err(e) = db::delete_upload(&state.pool, id).await {
                return fail(e.into());
            }
            if let Err(e) = state.blobs.delete_prefix(&Blobs::upload_dir(id)).await {
                tracing::warn!(error = %e, "removing upload pieces; the sweeper will retry");
            }
            empty(StatusCode::NO_CONTENT, &[])
        }
        _ => tus_error(
            StatusCode::METHOD_NOT_ALLOWED,
            StorageError::new(405, "method_not_allowed", "InvalidRequest", "method not allowed"),
        ),
    }
}

/// Receives bytes at `offset`, keeping what arrives, and finishes the upload when
/// the last byte is in.
async fn patch(state: &Storage, id: Uuid, offset: i64, rights: &Rights, body: Body) -> Response {
    let upload = match db::lease_upload(&state.pool, id, offset, PATCH_LEASE).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            return match db::upload(&state.pool, id, &rights.creator).await {
                Ok(Some(u)) if u.upload_offset != offset => tus_error(
                    StatusCode::CONFLICT,
                    StorageError::new(
                        409,
                        "conflict",
                        "InvalidRequest",
                        format!("Upload-Offset is {}, not {offset}", u.upload_offset),
                    ),
                ),
                Ok(Some(_)) => tus_error(
                    StatusCode::CONFLICT,
                    StorageError::new(409, "conflict", "ResourceLocked", "another request is uploading to this URL"),
                ),
                Ok(None) => fail(not_found()),
                Err(e) => fail(e.into()),
            };
        }
        Err(e) => return fail(e.into()),
    };
    let remaining = u64::try_from(upload.upload_length - offset).unwrap_or(0);
    let piece = Blobs::upload_piece(id, u64::try_from(offset).unwrap_or(0));
    // The lease is renewed while bytes arrive, so a PATCH cut off by a crash
    // frees the upload within one lease, however long a live one runs.
    let write = state.blobs.write(&piece, body.into_data_stream(), remaining, true);
    tokio::pin!(write);
    let mut beat = tokio::time::interval(PATCH_LEASE / 3);
    beat.tick().await;
    let written = loop {
        tokio::select! {
            r = &mut write => break r,
            _ = beat.tick() => {
                if let Err(e) = db::renew_upload_lease(&state.pool, id, PATCH_LEASE).await {
                    tracing::warn!(error = %e, "renewing a resumable upload's lease");
                }
            }
        }
    };
    let got = match written {
        Ok(w) => i64::try_from(w.size).unwrap_or(0),
        Err(e) => {
            let _ = db::release_upload(&state.pool, id, offset).await;
            return match e {
                WriteError::TooLarge => tus_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    StorageError::new(413, "Payload too large", "EntityTooLarge", "more bytes than Upload-Length"),
                ),
                other => fail(StorageError::internal(other)),
            };
        }
    };
    let new_offset = offset + got;
    if new_offset < upload.upload_length {
        if let Err(e) = db::release_upload(&state.pool, id, new_offset).await {
            return fail(e.into());
        }
        return empty(StatusCode::NO_CONTENT, &[("upload-offset", new_offset.to_string())]);
    }
    match finish(state, &upload, rights).await {
        Ok(()) => {
            empty(StatusCode::NO_CONTENT, &[("upload-offset", new_offset.to_string()), ("tus-complete", "1".into())])
        }
        Err(e) => {
            // The bytes are all in; the object could not be recorded (taken, or refused).
            let _ = db::delete_upload(&state.pool, id).await;
            let _ = state.blobs.delete_prefix(&Blobs::upload_dir(id)).await;
            fail(e)
        }
    }
}

/// Joins the pieces into one blob and records the object.
async fn finish(state: &Storage, u: &UploadRow, rights: &Rights) -> Result<(), StorageError> {
    let blobs = &state.blobs;
    let dir = Blobs::upload_dir(u.id);
    let mut pieces: Vec<_> = blobs.list(dir.as_ref()).await?.into_iter().map(|m| m.location).collect();
    pieces.sort();
    let version = Uuid::now_v7();
    let blob = Blobs::blob_path(version);
    if pieces.len() == 1 {
        blobs.rename(&pieces[0], &blob).await?;
    } else {
        let reader = blobs.clone();
        // Futures made up front but polled one at a time, in order.
        let opens: Vec<_> = pieces.into_iter().map(|p| reader.read_owned(p)).collect();
        let joined = futures::stream::iter(opens).buffered(1).try_flatten();
        let len = u64::try_from(u.upload_length).unwrap_or(0);
        blobs.write(&blob, joined, len, false).await.map_err(|e| StorageError::internal(e.to_string()))?;
    }
    let b = bucket_or_404(state, &u.bucket_id).await?;
    let writer = writer_for(state, rights, &b).await?;
    let t = UploadTarget { bucket: &b, key: &u.name, owner: rights.owner, writer, upsert: u.upsert };
    let size = u64::try_from(u.upload_length).unwrap_or(0);
    commit(state, &t, version, size, &u.content_type, &u.cache_control, u.user_metadata.as_ref()).await?;
    db::delete_upload(&state.pool, u.id).await?;
    if let Err(e) = blobs.delete_prefix(&dir).await {
        tracing::warn!(error = %e, "removing upload pieces; the sweeper will retry");
    }
    Ok(())
}
