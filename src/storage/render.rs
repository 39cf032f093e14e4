//! Supabase's render routes, `/render/image/{public|authenticated|sign}/{bucket}/{key}`,
//! and transformation parameters on public object URLs: the object is checked as a
//! download would be, the parameters validated, and the variant served from the
//! cache or made by the imaging engine. Responses carry a variant `ETag`, the
//! object's `Cache-Control` (`Expires` for signed URLs), `Vary: Accept` and
//! `X-Transformations`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::Digest;

use super::db::ObjectRow;
use super::http::{content_disposition, etag_matches, header_str, validators};
use super::service::visible;
use super::{Storage, StorageError, StorageResult, Who};
use crate::auth::AuthState;
use crate::imaging::{ImageError, Transform};
use axum::extract::FromRef;

/// The render routes (nested under `/storage/v1` with the rest of storage).
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Storage>: FromRef<S>,
    Arc<AuthState>: FromRef<S>,
{
    Router::new()
        .route("/render/image/public/{bucket}/{*key}", get(render_public))
        .route("/render/image/authenticated/{bucket}/{*key}", get(render_authenticated))
        .route("/render/image/sign/{bucket}/{*key}", get(render_signed))
}

fn storage_error(e: ImageError) -> StorageError {
    match e.status {
        404 => StorageError::no_such_key(),
        // Already logged where it happened.
        500 => StorageError::new(500, "internal", "InternalError", e.message),
        s => StorageError::new(s, e.code, e.code, e.message),
    }
}

fn parse(q: &HashMap<String, String>) -> StorageResult<Transform> {
    Transform::parse(q.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(storage_error)
}

async fn render_public(
    State(state): State<Arc<Storage>>,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    public_with(&state, &headers, &bucket, &key, &q).await.unwrap_or_else(IntoResponse::into_response)
}

/// Renders a public object with the query's parameters.
pub(super) async fn public_with(
    state: &Storage,
    headers: &HeaderMap,
    bucket: &str,
    key: &str,
    q: &HashMap<String, String>,
) -> StorageResult<Response> {
    let t = parse(q)?;
    let row = visible(state, None, bucket, key).await?;
    render(state, row, &t, headers, q.get("download").map(String::as_str), None).await
}

async fn render_authenticated(
    State(state): State<Arc<Storage>>,
    who: Who,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> StorageResult<Response> {
    let t = parse(&q)?;
    let row = visible(&state, Some(&who), &bucket, &key).await?;
    render(&state, row, &t, &headers, q.get("download").map(String::as_str), None).await
}

async fn render_signed(
    State(state): State<Arc<Storage>>,
    headers: HeaderMap,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> StorageResult<Response> {
    let token = q.get("token").ok_or_else(|| StorageError::invalid_signature("querystring must have token"))?;
    let claims = state.verify(token, &format!("{bucket}/{key}"), "download")?;
    let b = super::service::bucket_or_404(&state, &bucket).await?;
    super::service::signer_may(&state, &b, claims.by, super::service::Need::Read).await?;
    // The transformation is the token's, never the query's.
    let t = Transform::parse_signed(claims.transformations.as_deref().unwrap_or("")).map_err(storage_error)?;
    let row = super::db::object(&state.pool, &bucket, &key, None).await?.ok_or_else(StorageError::no_such_key)?;
    render(&state, row, &t, &headers, q.get("download").map(String::as_str), Some(claims.exp)).await
}

/// Answers a render of `row`: 304 when the client has this variant, else the
/// variant's bytes.
async fn render(
    state: &Storage,
    row: ObjectRow,
    t: &Transform,
    headers: &HeaderMap,
    download: Option<&str>,
    expires: Option<i64>,
) -> StorageResult<Response> {
    let out = t.resolve(header_str(headers, "accept"));
    let params = t.normalised(out);
    let digest = sha2::Sha256::digest(params.as_bytes());
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let etag = format!("\"{}-{tag}\"", row.etag.trim_matches('"'));
    let mut res = Response::builder();
    let h = res.headers_mut().ok_or_else(|| StorageError::internal("response builder"))?;
    validators(h, &etag, &row, expires);
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    if let Ok(v) = HeaderValue::from_str(&params) {
        h.insert("x-transformations", v);
    }
    if header_str(headers, "if-none-match").is_some_and(|v| etag_matches(v, &etag)) {
        return res.status(StatusCode::NOT_MODIFIED).body(Body::empty()).map_err(StorageError::internal);
    }
    let variant = match state.imaging.variant(&state.pool, &state.blobs, (row.version, row.size), t, out, &params).await
    {
        Ok(v) => v,
        Err(e) if e.status == 503 => {
            let mut r = storage_error(e).into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Ok(r);
        }
        Err(e) => return Err(storage_error(e)),
    };
    if let Ok(v) = HeaderValue::from_str(&variant.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Some(v) = content_disposition(download) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(variant.bytes.len()));
    h.insert("x-variant-cache", HeaderValue::from_static(if variant.cached { "hit" } else { "miss" }));
    res.status(StatusCode::OK).body(Body::from(variant.bytes.clone())).map_err(StorageError::internal)
}
