//! The API error type and its JSON envelope
//! `{"error":{"code","message","request_id"}}`, the request-id task-local that the
//! envelope reads, and the JSON extractor whose rejections use the envelope.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

tokio::task_local! {
    /// The id of the request being handled, set by the request-id middleware.
    pub static REQUEST_ID: String;
}

/// The current request's id, or an empty string outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default()
}

/// An error answered to an API client: an HTTP status, a stable machine-readable
/// `code`, and a human-readable message.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, snake_case (e.g. `not_found`, `invalid_json`).
    pub code: &'static str,
    /// Human-readable explanation; never contains secrets.
    pub message: String,
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// Any status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    /// 400 with a specific code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// The same error with another code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// A 422 with `code`: the request is well-formed but its values are refused.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    /// 409 with a specific code.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// 500 `internal`; the cause is logged, never sent to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal server error")
    }
    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    request_id: String,
}

/// Serialises the envelope for a code and message with the current request id.
pub fn envelope_json(code: &str, message: &str) -> Vec<u8> {
    let env = Envelope { error: Body { code, message, request_id: current_request_id() } };
    serde_json::to_vec(&env)
        .unwrap_or_else(|_| br#"{"error":{"code":"internal","message":"","request_id":""}}"#.to_vec())
}

/// Builds an envelope response.
pub fn envelope_response(status: StatusCode, code: &str, message: &str) -> Response {
    let mut res = (status, envelope_json(code, message)).into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        envelope_response(self.status, self.code, &self.message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut => ApiError::unavailable("database is busy, retry shortly"),
            sqlx::Error::RowNotFound => ApiError::not_found("not found"),
            _ if refused_text(&e) => text_refused(),
            _ => ApiError::internal(e),
        }
    }
}

/// Whether PostgreSQL refused a value's characters (a NUL in text or in a JSON
/// string: SQLSTATE 22021 or 22P05). The checks at the edges catch these first;
/// this keeps any that slip through a 400, not a 500.
pub fn refused_text(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == "22021" || c == "22P05")
}

/// The answer to text PostgreSQL cannot store: 400 `invalid_text`.
pub fn text_refused() -> ApiError {
    ApiError::bad_request("invalid_text", "text must not contain NUL (\\u0000) characters")
}

/// What one pass over a JSON document finds that PostgreSQL would refuse or could
/// not return: a `\u0000` escape in a string (text it refuses; a raw NUL byte is
/// not valid JSON anyway), and numbers beyond ±1e300 (jsonb keeps a number's
/// decimal digits exactly, and one near `f64::MAX` reads back as more than an
/// `f64` holds).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JsonScan {
    /// A string holds a NUL escape.
    pub nul: bool,
    /// A number lies beyond ±1e300.
    pub huge_number: bool,
}

/// Scans a JSON document once for what [`JsonScan`] reports.
pub fn scan_json(bytes: &[u8]) -> JsonScan {
    let mut found = JsonScan::default();
    let (mut in_string, mut i) = (false, 0);
    while i < bytes.len() && !(found.nul && found.huge_number) {
        let b = bytes[i];
        if in_string {
            match b {
                // An escape: `\u0000` is the NUL; whatever it is, skip what it escapes.
                b'\\' => {
                    found.nul |= bytes[i + 1..].starts_with(b"u0000");
                    i += 2;
                    continue;
                }
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
        } else if b == b'"' {
            in_string = true;
            i += 1;
        } else if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                i += 1;
            }
            let n = std::str::from_utf8(&bytes[start..i]).ok().and_then(|t| t.parse::<f64>().ok());
            found.huge_number |= n.is_some_and(|n| !n.is_finite() || n.abs() >= 1e300);
        } else {
            i += 1;
        }
    }
    found
}

/// Whether a JSON document holds a `\u0000` escape in a string.
pub fn json_has_nul(bytes: &[u8]) -> bool {
    scan_json(bytes).nul
}

/// Whether every number in a JSON document is within ±1e300.
pub fn json_numbers_storable(bytes: &[u8]) -> bool {
    !scan_json(bytes).huge_number
}

/// The code and status for a response that left the router without a JSON body
/// (framework rejections, tower layers), by status.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        408 => "request_timeout",
        409 => "conflict",
        411 => "length_required",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable_entity",
        429 => "rate_limited",
        500 => "internal",
        501 => "not_implemented",
        503 => "unavailable",
        504 => "gateway_timeout",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// The body limit of JSON routes that take small documents (auth, profiles,
/// conversations, integrations, connections): a bigger body is refused (413)
/// before it is read, so a flood of large bodies costs no parsing and no memory.
/// Message appends take up to `CARMENTA_BODY_LIMIT`.
pub const SMALL_JSON_LIMIT: usize = 64 * 1024;

/// Bodies above this are read and parsed under [`large_bodies`]' permits.
const LARGE_BODY: u64 = 1024 * 1024;

/// The permits for reading and parsing large JSON bodies (two at a time).
fn large_bodies() -> &'static tokio::sync::Semaphore {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    &PERMITS
}

/// A JSON body extractor whose rejections answer with the error envelope:
/// `invalid_json` (400) for syntax errors, `invalid_body` (422) for wrong shapes,
/// `unsupported_media_type` (415) for a missing or wrong `Content-Type`,
/// `payload_too_large` (413).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected `Content-Type: application/json`",
            ));
        }
        // Large bodies (over 1 MiB, or of unknown length) are read and parsed two at a
        // time: parsed JSON costs many times its size, and thirty at once ran the
        // server to a gigabyte. Small ones never wait.
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let _permit = match declared {
            Some(n) if n <= LARGE_BODY => None,
            _ => large_bodies().acquire().await.ok(),
        };
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large")
            } else {
                ApiError::bad_request("invalid_body", e.body_text())
            }
        })?;
        let scan = scan_json(&bytes);
        if scan.nul {
            return Err(text_refused());
        }
        if scan.huge_number {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_number",
                "numbers must lie within ±1e300",
            ));
        }
        // Every body is a JSON object (serde would also take a struct as an array).
        if let Some(&first) = bytes.iter().find(|b| !b.is_ascii_whitespace())
            && first != b'{'
        {
            // Malformed JSON is still `invalid_json`; well-formed, it is the wrong shape.
            if let Err(rej) = axum::Json::<serde::de::IgnoredAny>::from_bytes(&bytes) {
                return Err(json_rejection(rej));
            }
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", "expected a JSON object"));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `application/json` or any `+json` type.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    match rej {
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request("invalid_json", format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", e.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(e) => {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body is too large")
            } else {
                ApiError::bad_request("invalid_body", e.body_text())
            }
        }
        other => ApiError::new(other.status(), code_for_status(other.status()), other.body_text()),
    }
}

/// Serde helper for PATCH bodies: tells an absent field (`None`) from an explicit
/// `null` (`Some(None)`); use with `#[serde(default, deserialize_with = …)]`.
pub fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// Serde helper for optional whole numbers in JSON bodies: `3` and `3.0` alike (JSON
/// Schema's `integer` admits both), anything fractional refused.
pub fn whole_number<'de, D>(d: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    match <Option<serde_json::Number> as serde::Deserialize>::deserialize(d)? {
        None => Ok(None),
        Some(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
            _ => Err(serde::de::Error::custom("expected a whole number")),
        },
    }
}

/// App metadata on a resource: a JSON object of at most 16 KB serialised
/// (422 `invalid_metadata` / `metadata_too_large`).
pub fn check_metadata(v: &serde_json::Value) -> Result<(), ApiError> {
    if !v.is_object() {
        return Err(ApiError::unprocessable("invalid_metadata", "metadata must be a JSON object"));
    }
    if serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX) > 16 * 1024 {
        return Err(ApiError::unprocessable("metadata_too_large", "metadata is larger than 16 KB"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::json_has_nul;

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not() {
        assert!(json_has_nul(br#"{"a":"x\u0000y"}"#));
        assert!(json_has_nul(br#"["\\\u0000"]"#), "an escaped backslash, then the escape");
        assert!(!json_has_nul(br#"{"a":"\\u0000"}"#), "a backslash and the text u0000");
        assert!(!json_has_nul(br#"{"a":"\u0001 \n"}"#));
        assert!(!json_has_nul(b"{}"));
    }

    #[test]
    fn huge_numbers_are_found_outside_strings_only() {
        use super::json_numbers_storable as ok;
        assert!(ok(br#"{"a":1.5,"b":[-2e10,3]}"#));
        assert!(!ok(br#"{"a":1.7976931348623155e+308}"#));
        assert!(!ok(br#"[1e400]"#));
        assert!(ok(br#"{"a":"1e400","b\"1e400":0}"#), "inside strings it is text");
    }
}
