//! Cursor pagination shared by list endpoints: opaque cursors (base64url of a
//! small text form) and the `limit` bounds (1–100, default 50).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

use crate::error::ApiError;

/// Default page size.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page size.
pub const MAX_LIMIT: i64 = 100;

/// Validates `limit` (1–100; default 50).
pub fn limit(raw: Option<i64>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request("invalid_limit", format!("limit must be between 1 and {MAX_LIMIT}"))),
    }
}

/// Wraps a cursor's text form.
pub fn encode(text: &str) -> String {
    B64URL.encode(text.as_bytes())
}

/// Unwraps a cursor made by [`encode`]; a malformed one is a 400 `invalid_cursor`.
pub fn decode(cursor: &str) -> Result<String, ApiError> {
    B64URL
        .decode(cursor.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::bad_request("invalid_cursor", "cursor is malformed"))
}
