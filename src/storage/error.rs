//! Storage errors, shaped as Supabase Storage shapes them, because
//! `@supabase/storage-js` reads them: HTTP 400 for every logical 4xx (403, 416 and
//! the image transformations' 422 keep their status), a body `{statusCode: "404", error, message, code}`.

use http::StatusCode;

use crate::error::ApiError;

/// An error answered by a storage route.
#[derive(Debug, Clone)]
pub struct StorageError {
    /// The HTTP status sent.
    pub http: StatusCode,
    /// The logical status, as a string in the body.
    pub status: u16,
    /// Supabase's `error` field.
    pub error: &'static str,
    /// Stable code (`NoSuchKey`, `EntityTooLarge`, …).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

/// Result alias for storage handlers.
pub type StorageResult<T> = Result<T, StorageError>;

impl StorageError {
    /// A logical status answered as HTTP 400 (Supabase's convention for 4xx).
    pub fn new(status: u16, error: &'static str, code: &'static str, message: impl Into<String>) -> StorageError {
        let http = match status {
            403 => StatusCode::FORBIDDEN,
            416 => StatusCode::RANGE_NOT_SATISFIABLE,
            // Image transformations: a source that cannot be transformed.
            422 => StatusCode::UNPROCESSABLE_ENTITY,
            429 => StatusCode::TOO_MANY_REQUESTS,
            s if s >= 500 => StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            _ => StatusCode::BAD_REQUEST,
        };
        StorageError { http, status, error, code, message: message.into() }
    }
    /// The bucket does not exist (or is not visible).
    pub fn no_such_bucket() -> Self {
        Self::new(404, "Bucket not found", "NoSuchBucket", "Bucket not found")
    }
    /// The organization named for a bucket does not exist (or the caller is not a member).
    pub fn no_such_org() -> Self {
        Self::new(404, "not_found", "OrganizationNotFound", "Organization not found")
    }
    /// The object does not exist, or belongs to someone else.
    pub fn no_such_key() -> Self {
        Self::new(404, "not_found", "NoSuchKey", "Object not found")
    }
    /// A key or bucket that already exists.
    pub fn duplicate(code: &'static str) -> Self {
        Self::new(409, "Duplicate", code, "The resource already exists")
    }
    /// The caller may not do this.
    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new(403, "Unauthorized", "AccessDenied", message)
    }
    /// A write refused by ownership rules, worded as Supabase's row-level security.
    pub fn rls() -> Self {
        Self::new(403, "Unauthorized", "AccessDenied", "new row violates row-level security policy")
    }
    /// A malformed request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", "InvalidRequest", message)
    }
    /// A key that breaks the naming rules.
    pub fn invalid_key(key: &str) -> Self {
        let shown: String = key.chars().filter(|c| !c.is_control()).take(200).collect();
        Self::new(400, "Invalid Input", "InvalidKey", format!("Invalid key: {shown}"))
    }
    /// A content type the bucket does not allow.
    pub fn invalid_mime(mime: &str) -> Self {
        Self::new(415, "invalid_mime_type", "InvalidMimeType", format!("mime type {mime} is not supported"))
    }
    /// Over the size limit.
    pub fn too_large() -> Self {
        Self::new(413, "Payload too large", "EntityTooLarge", "The object exceeded the maximum allowed size")
    }
    /// A bad or expired signed-URL token.
    pub fn invalid_signature(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidSignature", "InvalidSignature", message)
    }
    /// A server-side failure; the cause is logged, not sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "storage internal error");
        Self::new(500, "internal", "InternalError", "Internal Server Error")
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut => Self::new(429, "too_many_connections", "SlowDown", "database is busy"),
            ref e if crate::error::refused_text(e) => Self::invalid("text must not contain NUL characters"),
            other => Self::internal(other),
        }
    }
}

impl From<object_store::Error> for StorageError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { .. } => Self::no_such_key(),
            other => Self::internal(other),
        }
    }
}

impl From<ApiError> for StorageError {
    /// Auth failures from the shared extractors: a bad token is `InvalidJWT` (400),
    /// a refusal `AccessDenied` (403), rate limits keep 429.
    fn from(e: ApiError) -> Self {
        match e.status.as_u16() {
            401 => Self::new(400, "invalid_jwt", "InvalidJWT", e.message),
            403 => Self::access_denied(e.message),
            429 => Self::new(429, "too_many_requests", "SlowDown", e.message),
            s if s >= 500 => Self::new(s, "internal", "InternalError", e.message),
            _ => Self::invalid(e.message),
        }
    }
}
