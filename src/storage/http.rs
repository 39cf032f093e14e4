//! HTTP helpers of storage: the storage-shaped JSON extractor and error response,
//! the caller extractor ([`Who`]), header parsing, streaming an upload body into a
//! blob, and answering a download (conditional requests, ranges, validators).

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::blobs::Blobs;
use super::db::{self, ObjectRow};
use super::service::{
    UploadTarget, cache_control_value, check_key, clean_content_type, commit, mime_allowed, precheck, size_limit,
    write_error,
};
use super::{Actor, Storage, StorageError, StorageResult, Who};
use crate::auth::{AuthState, Caller, service::Principal};

impl IntoResponse for StorageError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "statusCode": self.status.to_string(),
            "error": self.error,
            "message": self.message,
            "code": self.code,
        });
        let mut res = (self.http, axum::Json(body)).into_response();
        if self.status == 404 {
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        res
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Who
where
    std::sync::Arc<AuthState>: axum::extract::FromRef<S>,
{
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let got = <Caller as axum::extract::OptionalFromRequestParts<S>>::from_request_parts(parts, state).await;
        Ok(Who(match got {
            Ok(None) => Ok(Actor::Anon),
            Ok(Some(Caller(Principal::Service { acting_for, .. }))) => Ok(Actor::Service { acting_for }),
            Ok(Some(Caller(Principal::User { user_id, .. }))) => Ok(Actor::User(user_id)),
            Err(e) => Err(e.into()),
        }))
    }
}

/// A JSON body whose rejections are storage-shaped.
pub(super) struct SJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for SJson<T> {
    type Rejection = StorageError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| StorageError::invalid(format!("reading the body: {}", e.body_text())))?;
        let bytes =
            if bytes.iter().all(u8::is_ascii_whitespace) { axum::body::Bytes::from_static(b"{}") } else { bytes };
        if crate::error::json_has_nul(&bytes) {
            return Err(StorageError::invalid("text must not contain NUL (\\u0000) characters"));
        }
        serde_json::from_slice(&bytes).map(SJson).map_err(|e| StorageError::invalid(format!("body/{e}")))
    }
}

pub(super) fn ts(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub(super) fn http_date(t: OffsetDateTime) -> String {
    httpdate::fmt_http_date(std::time::SystemTime::from(t))
}

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty())
}

/// `x-metadata`: base64 of a JSON object.
pub(super) fn metadata_header(headers: &HeaderMap) -> StorageResult<Option<Value>> {
    let Some(raw) = header_str(headers, "x-metadata") else { return Ok(None) };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .map_err(|_| StorageError::invalid("x-metadata must be base64-encoded JSON"))?;
    parse_metadata(&bytes).map(Some)
}

pub(super) fn parse_metadata(bytes: &[u8]) -> StorageResult<Value> {
    if bytes.len() > 8192 {
        return Err(StorageError::invalid("metadata is larger than 8 KB"));
    }
    if crate::error::json_has_nul(bytes) {
        return Err(StorageError::invalid("metadata must not contain NUL (\\u0000) characters"));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(StorageError::invalid("metadata must be a JSON object")),
    }
}

/// Streams an upload (raw body or multipart form) into a new blob and records it.
pub(super) async fn receive(
    state: &Storage,
    t: UploadTarget<'_>,
    headers: &HeaderMap,
    body: Body,
) -> StorageResult<ObjectRow> {
    check_key(t.key)?;
    let limit = size_limit(state, t.bucket);
    let ct = header_str(headers, "content-type").unwrap_or("");
    let version = Uuid::now_v7();
    let blob = Blobs::blob_path(version);
    if ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        let boundary =
            multer::parse_boundary(ct).map_err(|_| StorageError::invalid("multipart body without a boundary"))?;
        let mut form = multer::Multipart::with_constraints(
            body.into_data_stream(),
            boundary,
            multer::Constraints::new().size_limit(multer::SizeLimit::new().per_field(limit.saturating_add(1))),
        );
        let mut cache = None;
        let mut metadata = None;
        let mut content_type = None;
        let mut fields = 0;
        while let Some(field) = form.next_field().await.map_err(|e| StorageError::invalid(format!("multipart: {e}")))? {
            fields += 1;
            if fields > 11 {
                return Err(StorageError::invalid("too many multipart fields"));
            }
            let name = field.name().unwrap_or("").to_string();
            if field.file_name().is_none()
                && matches!(
                    name.as_str(),
                    "cacheControl" | "metadata" | "userMetadata" | "contentType" | "contentEncoding"
                )
            {
                let text = field.text().await.map_err(|e| StorageError::invalid(format!("multipart: {e}")))?;
                match name.as_str() {
                    "cacheControl" => cache = Some(text),
                    "contentType" => content_type = Some(text),
                    "contentEncoding" => {}
                    _ => metadata = Some(parse_metadata(text.as_bytes())?),
                }
                continue;
            }
            // The file part.
            let mime = clean_content_type(content_type.as_deref().or(field.content_type().map(|m| m.as_ref())));
            if !mime_allowed(t.bucket.allowed_mime_types.as_deref(), &mime) {
                return Err(StorageError::invalid_mime(&mime));
            }
            precheck(state, &t).await?;
            let written = state.blobs.write(&blob, field, limit, false).await.map_err(write_error)?;
            let cache = cache_control_value(cache.as_deref());
            return commit(state, &t, version, written.size, &mime, &cache, metadata.as_ref()).await;
        }
        return Err(StorageError::invalid("the multipart form has no file"));
    }
    let mime = clean_content_type(Some(ct));
    if !mime_allowed(t.bucket.allowed_mime_types.as_deref(), &mime) {
        return Err(StorageError::invalid_mime(&mime));
    }
    if let Some(len) = header_str(headers, "content-length").and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(StorageError::too_large());
    }
    let metadata = metadata_header(headers)?;
    precheck(state, &t).await?;
    let written = state.blobs.write(&blob, body.into_data_stream(), limit, false).await.map_err(write_error)?;
    let cache = cache_control_value(header_str(headers, "cache-control"));
    commit(state, &t, version, written.size, &mime, &cache, metadata.as_ref()).await
}

/// Parses a single `bytes=` range against `size`: `Ok(None)` for no (or an
/// ignorable multi-) range, `Err` when unsatisfiable.
pub(super) fn parse_range(raw: Option<&str>, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(spec) = raw.and_then(|r| r.trim().strip_prefix("bytes=")) else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    // No byte of an empty object can be asked for.
    if size == 0 {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        size.saturating_sub(n)..size
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(size.saturating_sub(1))
        };
        if start >= size || end < start {
            return Err(());
        }
        start..end + 1
    };
    Ok(Some(range))
}

pub(super) fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

pub(super) fn content_disposition(download: Option<&str>) -> Option<HeaderValue> {
    let d = download?;
    let name = if d.is_empty() { return HeaderValue::from_str("attachment;").ok() } else { d };
    let enc = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string();
    HeaderValue::from_str(&format!("attachment; filename={enc}; filename*=UTF-8''{enc}")).ok()
}

/// How a download is answered.
pub(super) struct Serve<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub download: Option<&'a str>,
    /// Signed URLs send `Expires` instead of the object's Cache-Control.
    pub expires: Option<i64>,
}

/// Opens the blob of `row`. When it was overwritten between reading the row and
/// opening the blob (its old bytes deleted), reads the new row once: the new
/// version is served if it has the same size (headers are already computed), else
/// the client is asked to retry.
pub(super) async fn open_blob(
    state: &Storage,
    row: &mut ObjectRow,
    range: Option<std::ops::Range<u64>>,
) -> StorageResult<futures::stream::BoxStream<'static, Result<axum::body::Bytes, object_store::Error>>> {
    match state.blobs.read(&Blobs::blob_path(row.version), range.clone()).await {
        Ok(s) => Ok(s),
        Err(object_store::Error::NotFound { .. }) => {
            let fresh = db::object(&state.pool, &row.bucket_id, &row.name, None)
                .await?
                .ok_or_else(StorageError::no_such_key)?;
            if fresh.size != row.size {
                return Err(StorageError::new(
                    412,
                    "precondition_failed",
                    "PreconditionFailed",
                    "the object changed; retry",
                ));
            }
            *row = fresh;
            Ok(state.blobs.read(&Blobs::blob_path(row.version), range).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// The headers a download and a render share: `ETag`, the object's
/// `Cache-Control` (or `Expires` for a signed URL), `Last-Modified`, `X-Robots-Tag`.
pub(super) fn validators(h: &mut HeaderMap, etag: &str, row: &ObjectRow, expires: Option<i64>) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    match expires {
        Some(exp) => {
            let t = OffsetDateTime::from_unix_timestamp(exp).unwrap_or_else(|_| OffsetDateTime::now_utc());
            if let Ok(v) = HeaderValue::from_str(&http_date(t)) {
                h.insert(header::EXPIRES, v);
            }
        }
        None => {
            if let Ok(v) = HeaderValue::from_str(&row.cache_control) {
                h.insert(header::CACHE_CONTROL, v);
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(row.updated_at)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h.insert("x-robots-tag", HeaderValue::from_static("none"));
    // Never guess a type: a text/plain upload stays text.
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}

/// Content types a browser shows without running script (served inline). HTML,
/// SVG, XML and everything not listed here can carry script.
pub(super) fn passive(mime: &str) -> bool {
    let base = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (top, sub) = base.split_once('/').unwrap_or((base.as_str(), ""));
    match top {
        "image" => sub != "svg+xml",
        "audio" | "video" | "font" => true,
        "text" => matches!(sub, "plain" | "csv"),
        "application" => matches!(sub, "json" | "pdf" | "octet-stream" | "zip" | "gzip"),
        _ => false,
    }
}

/// Keeps an object that could run script from doing so on the API's origin (where
/// the session cookie lives): `Content-Security-Policy: sandbox` (an opaque origin,
/// no script, no forms), and, unless the request came to the cookie-less storage
/// origin (`CARMENTA_STORAGE_PUBLIC_URL`), a download instead of a page.
pub(super) fn contain_active(
    state: &Storage,
    h: &mut HeaderMap,
    request: &HeaderMap,
    mime: &str,
    key: &str,
    download: Option<&str>,
) {
    if passive(mime) {
        return;
    }
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    let on_content_origin = state.content_host.as_deref().is_some_and(|c| header_str(request, "host") == Some(c));
    if download.is_none() && !on_content_origin {
        let name = key.rsplit('/').next().unwrap_or(key);
        if let Some(v) = content_disposition(Some(name)) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
}

/// Answers a download of `row`: 304, 416, 206 or 200, streaming the bytes.
pub(super) async fn serve(state: &Storage, mut row: ObjectRow, how: Serve<'_>) -> StorageResult<Response> {
    let size = u64::try_from(row.size).unwrap_or(0);
    let inm = header_str(how.headers, "if-none-match");
    let not_modified = match inm {
        Some(v) => etag_matches(v, &row.etag),
        None => header_str(how.headers, "if-modified-since")
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| {
                std::time::SystemTime::from(row.updated_at.replace_nanosecond(0).unwrap_or(row.updated_at)) <= since
            }),
    };
    let mut res = Response::builder();
    let h = res.headers_mut().ok_or_else(|| StorageError::internal("response builder"))?;
    validators(h, &row.etag, &row, how.expires);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if not_modified {
        return res.status(StatusCode::NOT_MODIFIED).body(Body::empty()).map_err(StorageError::internal);
    }
    let range = match parse_range(header_str(how.headers, "range"), size) {
        Ok(r) => r,
        Err(()) => {
            let mut e =
                StorageError::new(416, "invalid_range", "InvalidRange", "The requested range is not satisfiable")
                    .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                e.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(e);
        }
    };
    if let Ok(v) = HeaderValue::from_str(&row.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(v) = content_disposition(how.download) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    contain_active(state, h, how.headers, &row.content_type, &row.name, how.download);
    let (status, len) = match &range {
        Some(r) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{}/{size}", r.start, r.end - 1)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, r.end - r.start)
        }
        None => (StatusCode::OK, size),
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if *how.method == Method::HEAD || len == 0 {
        return res.status(status).body(Body::empty()).map_err(StorageError::internal);
    }
    if size <= super::cache::MAX_CACHED_OBJECT {
        let bytes = match state.cache.bytes(row.version) {
            Some(b) => b,
            None => {
                let chunks: Vec<axum::body::Bytes> = open_blob(state, &mut row, None).await?.try_collect().await?;
                let all = axum::body::Bytes::from(chunks.concat());
                if all.len() as u64 != size {
                    return Err(StorageError::internal("blob size differs from its row"));
                }
                state.cache.put_bytes(row.version, all.clone());
                all
            }
        };
        let body = match &range {
            Some(r) => bytes.slice(usize::try_from(r.start).unwrap_or(0)..usize::try_from(r.end).unwrap_or(0)),
            None => bytes,
        };
        return res.status(status).body(Body::from(body)).map_err(StorageError::internal);
    }
    let stream = open_blob(state, &mut row, range).await?;
    res.status(status).body(Body::from_stream(stream.map_err(std::io::Error::other))).map_err(StorageError::internal)
}
