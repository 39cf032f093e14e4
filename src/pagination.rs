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

/// The query of a list endpoint: `limit` (1–100, default 50) and `cursor` (from a
/// previous page's `next_cursor`).
#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The validated page size.
    pub fn limit(&self) -> Result<i64, ApiError> {
        limit(self.limit)
    }

    /// The cursor's text form, when one was sent (an empty `cursor=` is none).
    pub fn cursor_text(&self) -> Result<Option<String>, ApiError> {
        self.cursor.as_deref().filter(|c| !c.is_empty()).map(decode).transpose()
    }
}

/// One page of a list: the items and, when more follow, the cursor of the next page.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items of this page.
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from up to `limit + 1` rows read (the extra one says more follow);
    /// `cursor_of` makes the next page's cursor from the page's last row.
    pub fn from_rows(mut rows: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Page<T> {
        let limit = usize::try_from(limit).unwrap_or(0);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more { rows.last().map(cursor_of) } else { None };
        Page { data: rows, next_cursor }
    }

    /// The same page with each item converted.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { data: self.data.into_iter().map(f).collect(), next_cursor: self.next_cursor }
    }
}

/// Parses the text of a `(time, id)` keyset cursor (`<unix nanos>|<uuid>`).
pub fn parse_time_id(text: &str) -> Result<(time::OffsetDateTime, uuid::Uuid), ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "cursor is malformed");
    let (nanos, id) = text.split_once('|').ok_or_else(bad)?;
    let nanos: i128 = nanos.parse().map_err(|_| bad())?;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| bad())?;
    Ok((at, uuid::Uuid::parse_str(id).map_err(|_| bad())?))
}

/// The text of a `(time, id)` keyset cursor, encoded.
pub fn time_id_cursor(at: time::OffsetDateTime, id: uuid::Uuid) -> String {
    encode(&format!("{}|{id}", at.unix_timestamp_nanos()))
}
