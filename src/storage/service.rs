//! The object rules of storage, shared by the Supabase routes, TUS and render:
//! name and key validity, size and type limits, which object an actor may read or
//! overwrite (including buckets an organization holds: every member with
//! `org:storage:read` reads all their objects, with `org:storage:write` writes
//! them, checked on every call), writing a blob's row (and deleting the blob it
//! replaced), removal, and cache invalidation of public objects. No HTTP here.

use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::blobs::{Blobs, WriteError};
use super::db::{self, BucketRow, ObjectRow, PutOutcome};
use super::{Actor, Storage, StorageError, StorageResult, UrlClaims, Who};

/// Supabase's bucket-name rule: 1–100 characters from a fixed set, no slashes, no
/// surrounding whitespace.
pub fn valid_bucket_name(name: &str) -> bool {
    // Names the routes use as path segments could never be reached.
    const RESERVED: [&str; 9] =
        ["public", "authenticated", "sign", "info", "list", "list-v2", "upload", "move", "copy"];
    // `.` and `..` are path steps, and `?` starts a query: such a bucket's URLs
    // would reach something else.
    !RESERVED.contains(&name)
        && name != "."
        && name != ".."
        && (1..=100).contains(&name.chars().count())
        && name.trim() == name
        && name.chars().all(|c| c.is_alphanumeric() || c == '_' || "!.*'() &$@=;:+,-".contains(c))
}

/// Object keys: 1–1024 bytes, no control characters or backslashes, no empty,
/// `.` or `..` segments, no leading slash.
pub(super) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 1024
        && !key.chars().any(|c| c.is_control() || c == '\\' || c == '\u{FFFD}')
        && key.split('/').enumerate().all(|(i, seg)| {
            // A trailing slash marks a folder placeholder (`folder/`), as Supabase allows.
            let last = i == key.split('/').count() - 1;
            (!seg.is_empty() || (last && i > 0)) && seg != "." && seg != ".."
        })
}

/// [`valid_key`] as a Supabase error.
pub fn check_key(key: &str) -> StorageResult<()> {
    if valid_key(key) { Ok(()) } else { Err(StorageError::invalid_key(key)) }
}

/// Whether `mime` is allowed by a bucket's list (`image/*` wildcards).
pub fn mime_allowed(allowed: Option<&[String]>, mime: &str) -> bool {
    let Some(list) = allowed.filter(|l| !l.is_empty()) else { return true };
    let base = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    list.iter().any(|a| {
        let a = a.trim().to_ascii_lowercase();
        a == base || a == "*/*" || a.strip_suffix("/*").is_some_and(|t| base.split('/').next() == Some(t))
    })
}

/// The effective size limit: the bucket's, capped by the global one.
pub fn size_limit(state: &Storage, bucket: &BucketRow) -> u64 {
    let global = state.max_file_size;
    bucket.file_size_limit.and_then(|l| u64::try_from(l).ok()).map_or(global, |l| l.min(global))
}

/// Evicts cached public rows here and on every replica.
pub async fn invalidate(state: &Storage, payload: String) {
    super::cache::invalidate(&state.pool, &state.cache, payload).await;
}

/// The bucket, or Supabase's "Bucket not found".
pub async fn bucket_or_404(state: &Storage, id: &str) -> StorageResult<BucketRow> {
    db::bucket(&state.pool, id).await?.ok_or_else(StorageError::no_such_bucket)
}

pub use crate::auth::shared::Need;

/// Whether `user` may do `need` in the buckets of organization `org`: a non-member
/// is told the bucket does not exist, a member without the permission 403.
pub async fn org_gate(state: &Storage, org: Uuid, user: Uuid, need: Need) -> StorageResult<()> {
    use crate::auth::shared::Grant;
    match crate::auth::shared::grant(&state.pool, org, user, "storage", need).await? {
        Grant::Granted => Ok(()),
        Grant::NotMember => Err(StorageError::no_such_bucket()),
        Grant::Lacks(p) => Err(StorageError::access_denied(format!("your role in this organization lacks {p}"))),
    }
}

/// Which objects of `bucket` `actor` may read (`need` Read) or change and delete
/// (Write): `Some(None)` all of them (a service key, a public bucket for reading,
/// an organization's bucket for a member with the permission), `Some(Some(u))`
/// user `u`'s own, `None` none.
pub(super) async fn objects_for(
    state: &Storage,
    actor: Actor,
    bucket: &BucketRow,
    need: Need,
) -> StorageResult<Option<Option<Uuid>>> {
    if need == Need::Read && bucket.public {
        return Ok(Some(None));
    }
    match (bucket.org_id, actor) {
        (Some(org), Actor::User(u)) => {
            org_gate(state, org, u, need).await?;
            Ok(Some(None))
        }
        _ => Ok(actor.owner_filter()),
    }
}

/// Who writes into `bucket`: `None` may replace any object (a service key, or a
/// member with `org:storage:write` in an organization's bucket), `Some(u)` only
/// user `u`'s own; anonymous callers may not write.
pub(super) async fn writer_in(state: &Storage, actor: Actor, bucket: &BucketRow) -> StorageResult<Option<Uuid>> {
    match (bucket.org_id, actor) {
        (Some(org), Actor::User(u)) => {
            org_gate(state, org, u, Need::Write).await?;
            Ok(None)
        }
        _ => writer_of(actor),
    }
}

/// A signed URL for an organization's bucket works only while the user who
/// signed it may still do `need` there: leaving ends the URLs one made, at once.
pub(super) async fn signer_may(state: &Storage, bucket: &BucketRow, by: Option<Uuid>, need: Need) -> StorageResult<()> {
    match (bucket.org_id, by) {
        (Some(org), Some(user)) => org_gate(state, org, user, need)
            .await
            .map_err(|_| StorageError::invalid_signature("whoever signed this URL may no longer use this bucket")),
        _ => Ok(()),
    }
}

/// Who a signed upload URL writes as: in an organization's bucket the URL was
/// signed by someone who may replace any object there, elsewhere its owner.
pub(super) fn signed_writer(bucket: &BucketRow, owner: Option<Uuid>) -> Option<Uuid> {
    if bucket.org_id.is_some() { None } else { owner }
}

/// The object if `actor` may read it: anyone in a public bucket, members with the
/// permission in an organization's bucket, else the owner or a service key.
pub(super) async fn readable(state: &Storage, actor: Actor, bucket: &BucketRow, key: &str) -> StorageResult<ObjectRow> {
    let Some(owner) = objects_for(state, actor, bucket, Need::Read).await? else {
        return Err(StorageError::no_such_key());
    };
    db::object(&state.pool, &bucket.id, key, owner).await?.ok_or_else(StorageError::no_such_key)
}

/// `cacheControl` as seconds becomes `max-age=N`; a full header value is kept.
pub(super) fn cache_control_value(raw: Option<&str>) -> String {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) if s.bytes().all(|b| b.is_ascii_digit()) => format!("max-age={s}"),
        Some(s) if s.len() <= 200 && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') => s.to_string(),
        _ => "no-cache".to_string(),
    }
}

/// The content type to store (a default when absent or malformed).
pub fn clean_content_type(raw: Option<&str>) -> String {
    raw.map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .unwrap_or("application/octet-stream")
        .to_string()
}

/// Where an upload goes and on whose behalf.
pub struct UploadTarget<'a> {
    /// The bucket.
    pub bucket: &'a BucketRow,
    /// The object key.
    pub key: &'a str,
    /// Owner recorded on a new object.
    pub owner: Option<Uuid>,
    /// `None` for a service key; else only this user's object may be overwritten.
    pub writer: Option<Uuid>,
    /// Whether an existing object is replaced.
    pub upsert: bool,
}

/// In a bucket with `owner_folders`, a user writes only under `<their id>/`; the
/// refusal depends on the name alone, so it says nothing about other users' keys.
pub(super) fn own_folder(bucket: &BucketRow, writer: Option<Uuid>, key: &str) -> StorageResult<()> {
    match writer {
        Some(user) if bucket.owner_folders && key.split('/').next() != Some(user.to_string().as_str()) => {
            Err(StorageError::rls())
        }
        _ => Ok(()),
    }
}

/// Refuses early what is bound to fail: a key outside the writer's own folder, a
/// key taken (without upsert) or someone else's.
pub(super) async fn precheck(state: &Storage, t: &UploadTarget<'_>) -> StorageResult<()> {
    own_folder(t.bucket, t.writer, t.key)?;
    if let Some(existing) = db::object(&state.pool, &t.bucket.id, t.key, None).await? {
        if t.writer.is_some() && existing.owner_id != t.writer {
            return Err(StorageError::rls());
        }
        if !t.upsert {
            return Err(StorageError::duplicate("Duplicate"));
        }
    }
    Ok(())
}

/// Records a written blob as the object's current version; on refusal the blob is
/// deleted, on success the replaced blob is.
pub async fn commit(
    state: &Storage,
    t: &UploadTarget<'_>,
    version: Uuid,
    size: u64,
    content_type: &str,
    cache_control: &str,
    metadata: Option<&Value>,
) -> StorageResult<ObjectRow> {
    let new = db::NewObject {
        bucket: &t.bucket.id,
        name: t.key,
        owner: t.owner,
        version,
        size: i64::try_from(size).unwrap_or(i64::MAX),
        content_type,
        cache_control,
        user_metadata: metadata,
    };
    let blob = Blobs::blob_path(version);
    let outcome = match db::put_object(&state.pool, &new, t.upsert, t.writer).await {
        Ok(o) => o,
        Err(e) => {
            let _ = state.blobs.delete(&blob).await;
            return Err(e.into());
        }
    };
    match outcome {
        PutOutcome::Stored { row, replaced } => {
            if t.bucket.public {
                invalidate(state, format!("o:{}/{}", row.bucket_id, row.name)).await;
            }
            if let Some(old) = replaced
                && let Err(e) = state.blobs.delete(&Blobs::blob_path(old)).await
            {
                tracing::warn!(error = %e, "deleting a replaced blob; the sweeper will retry");
            }
            Ok(*row)
        }
        PutOutcome::Exists => {
            let _ = state.blobs.delete(&blob).await;
            Err(StorageError::duplicate("Duplicate"))
        }
        PutOutcome::Denied => {
            let _ = state.blobs.delete(&blob).await;
            Err(StorageError::rls())
        }
    }
}

pub(super) fn write_error(e: WriteError) -> StorageError {
    match e {
        WriteError::TooLarge => StorageError::too_large(),
        WriteError::Body(m) => StorageError::invalid(format!("the request body ended early: {m}")),
        WriteError::Store(e) => StorageError::internal(e),
    }
}

/// Whether `actor` may create objects at all (outside organizations' buckets).
fn writer_of(actor: Actor) -> StorageResult<Option<Uuid>> {
    match actor {
        Actor::Service { .. } => Ok(None),
        Actor::User(u) => Ok(Some(u)),
        Actor::Anon => Err(StorageError::rls()),
    }
}

/// The object `who` may read (or anyone, through a public route: `None`). Public
/// buckets' rows are cached and served whatever the credentials, as Supabase does.
pub(super) async fn visible(state: &Storage, who: Option<&Who>, bucket: &str, key: &str) -> StorageResult<ObjectRow> {
    if let Some(row) = state.cache.public_row(bucket, key) {
        return Ok((*row).clone());
    }
    let at = state.cache.generation();
    let b = match who {
        Some(_) => bucket_or_404(state, bucket).await?,
        None => db::bucket(&state.pool, bucket).await?.filter(|b| b.public).ok_or_else(StorageError::no_such_bucket)?,
    };
    let actor = match who {
        Some(w) if !b.public => w.actor()?,
        _ => Actor::Anon,
    };
    let row = readable(state, actor, &b, key).await?;
    if b.public {
        state.cache.put_public_row(at, std::sync::Arc::new(row.clone()));
    }
    Ok(row)
}

/// Deletes rows (the caller's, any for a service key or a member with
/// `org:storage:write` in an organization's bucket), then their blobs.
pub async fn remove(state: &Storage, actor: Actor, bucket: &str, names: &[String]) -> StorageResult<Vec<ObjectRow>> {
    let b = bucket_or_404(state, bucket).await?;
    let Some(owner) = objects_for(state, actor, &b, Need::Write).await? else { return Ok(Vec::new()) };
    let rows = db::delete_objects(&state.pool, bucket, names, owner).await?;
    if b.public && !rows.is_empty() {
        let payload = match rows.as_slice() {
            [one] => format!("o:{}/{}", one.bucket_id, one.name),
            _ => format!("b:{bucket}"),
        };
        invalidate(state, payload).await;
    }
    for r in &rows {
        if let Err(e) = state.blobs.delete(&Blobs::blob_path(r.version)).await {
            tracing::warn!(error = %e, "deleting a blob; the sweeper will retry");
        }
    }
    Ok(rows)
}

pub(super) fn admit(state: &Storage, dest: &BucketRow, o: &ObjectRow) -> StorageResult<()> {
    if !mime_allowed(dest.allowed_mime_types.as_deref(), &o.content_type) {
        return Err(StorageError::invalid_mime(&o.content_type));
    }
    if u64::try_from(o.size).unwrap_or(0) > size_limit(state, dest) {
        return Err(StorageError::too_large());
    }
    Ok(())
}

/// Claims of a signed URL for `bucket/key` lasting `expires_in` seconds.
pub fn signed_claims(url: String, scope: &str, expires_in: i64) -> StorageResult<UrlClaims> {
    if !(1..=10 * 365 * 86_400).contains(&expires_in) {
        return Err(StorageError::invalid("expiresIn must be a positive number of seconds"));
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    Ok(UrlClaims {
        url,
        scope: scope.into(),
        exp: now + expires_in,
        iat: now,
        owner: None,
        upsert: None,
        transformations: None,
        by: None,
    })
}
