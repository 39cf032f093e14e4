//! Storage: Supabase Storage's HTTP API under `/storage/v1` (buckets, objects,
//! signed URLs, TUS resumable uploads) over `object_store` (local directory or S3).
//! Owns who may touch which object ([`Actor`]), signed-URL tokens, and the sweeper
//! that removes orphan bytes and expired uploads.
//!
//! Crash safety: bytes are written to a fresh blob first, the row pointing at it is
//! written second, and a replaced blob is deleted last; a crash in between leaves at
//! most an orphan blob, which [`sweep`] removes once it is an hour old.

pub mod blobs;
pub mod cache;
pub mod db;
pub mod error;
pub mod http;
mod render;
mod routes;
pub mod service;
mod tus;

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use blobs::Blobs;
pub use error::{StorageError, StorageResult};
pub use routes::router;

/// Storage state: the database pool, the object store, the signed-URL keys and
/// the limits the object rules apply.
#[derive(Debug)]
pub struct Storage {
    /// The database pool.
    pub pool: sqlx::PgPool,
    /// The global object size limit (`CARMENTA_STORAGE_MAX_FILE_SIZE`).
    pub max_file_size: u64,
    /// How long a signed upload URL lives.
    pub upload_url_ttl: Duration,
    /// The public base URL without a trailing slash (TUS `Location`).
    pub public_base: String,
    /// `host[:port]` of `CARMENTA_STORAGE_PUBLIC_URL`, the cookie-less storage origin.
    pub content_host: Option<String>,
    /// The object store.
    pub blobs: Blobs,
    /// Public object rows and small objects' bytes.
    pub cache: std::sync::Arc<cache::StorageCache>,
    /// The image transformation engine behind `/render/image`.
    pub imaging: crate::imaging::Imaging,
    signing: Vec<[u8; 32]>,
}

/// Claims of a signed URL token (download or upload).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UrlClaims {
    /// `bucket/key` the token is for.
    pub url: String,
    /// `download` or `upload`.
    pub scope: String,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Owner recorded on an upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Uuid>,
    /// Whether an upload may overwrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upsert: Option<bool>,
    /// Image transformation carried by a signed render URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformations: Option<String>,
    /// The user who signed it: in an organization's bucket the URL works only
    /// while they keep the permission it needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Uuid>,
}

impl Storage {
    /// Opens the object store and derives the URL-signing keys from the keyring.
    pub fn open(
        config: &crate::config::Config,
        keyring: &crate::crypto::Keyring,
        pool: sqlx::PgPool,
    ) -> Result<Storage, blobs::OpenError> {
        Ok(Storage {
            pool,
            max_file_size: config.storage_max_file_size,
            upload_url_ttl: config.storage_upload_url_ttl,
            public_base: config.public_url.as_str().trim_end_matches('/').to_string(),
            content_host: config.storage_public_url.as_ref().and_then(|u| {
                let host = u.host_str()?;
                Some(match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_string(),
                })
            }),
            blobs: Blobs::open(&config.storage)?,
            cache: std::sync::Arc::default(),
            imaging: crate::imaging::Imaging::new(
                config.imaging_workers,
                config.imaging_queue,
                config.imaging_timeout,
                config.imaging_priority,
            ),
            signing: keyring.derive("carmenta storage url signing"),
        })
    }

    /// Signs URL claims (HS256 under the primary key's derived secret).
    pub fn sign(&self, claims: &UrlClaims) -> Result<String, StorageError> {
        let key = self.signing.first().ok_or_else(|| StorageError::internal("no signing key"))?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(key))
            .map_err(StorageError::internal)
    }

    /// Verifies a URL token for `bucket/key` and `scope`.
    pub fn verify(&self, token: &str, url: &str, scope: &str) -> Result<UrlClaims, StorageError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp"]);
        v.validate_aud = false;
        let mut last = StorageError::invalid_signature("invalid signature");
        for key in &self.signing {
            match jsonwebtoken::decode::<UrlClaims>(token, &DecodingKey::from_secret(key), &v) {
                Ok(d) if d.claims.url == url && d.claims.scope == scope => return Ok(d.claims),
                Ok(_) => return Err(StorageError::invalid_signature("the token is for another object")),
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                    return Err(StorageError::invalid_signature("the token has expired"));
                }
                Err(_) => last = StorageError::invalid_signature("invalid signature"),
            }
        }
        Err(last)
    }
}

/// Who is asking, as storage sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// A service key: every object; new objects are owned by the user it acts for.
    Service {
        /// The user named by `X-Carmenta-User-Id`.
        acting_for: Option<Uuid>,
    },
    /// A signed-in user: their own objects, and public buckets for reading.
    User(Uuid),
    /// No credentials: public buckets only.
    Anon,
}

impl Actor {
    /// The owner filter for object queries: `Some(None)` every object,
    /// `Some(Some(u))` user `u`'s, `None` none at all.
    pub fn owner_filter(&self) -> Option<Option<Uuid>> {
        match self {
            Actor::Service { .. } => Some(None),
            Actor::User(u) => Some(Some(*u)),
            Actor::Anon => None,
        }
    }
    /// The owner recorded on an object this actor creates.
    pub fn new_owner(&self) -> Option<Uuid> {
        match self {
            Actor::Service { acting_for } => *acting_for,
            Actor::User(u) => Some(*u),
            Actor::Anon => None,
        }
    }
    /// The signed-in user, if it is one.
    pub fn user(&self) -> Option<Uuid> {
        match self {
            Actor::User(u) => Some(*u),
            _ => None,
        }
    }
    /// Whether this is a service key.
    pub fn is_service(&self) -> bool {
        matches!(self, Actor::Service { .. })
    }
    /// A stable id for resumable-upload ownership.
    pub fn creator(&self) -> String {
        match self {
            Actor::Service { .. } => "service".into(),
            Actor::User(u) => u.to_string(),
            Actor::Anon => "anon".into(),
        }
    }
}

/// The caller's [`Actor`], or the storage-shaped authentication error; never rejects,
/// so routes that serve public objects can ignore bad credentials as Supabase does.
#[derive(Debug, Clone)]
pub struct Who(pub Result<Actor, StorageError>);

impl Who {
    /// The actor, or the authentication error.
    pub fn actor(&self) -> Result<Actor, StorageError> {
        self.0.clone()
    }
    /// The actor, which must not be anonymous.
    pub fn signed_in(&self) -> Result<Actor, StorageError> {
        match self.0.clone()? {
            Actor::Anon => Err(StorageError::access_denied("authentication required")),
            a => Ok(a),
        }
    }
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Orphan blobs deleted.
    pub orphan_blobs: usize,
    /// Expired or abandoned resumable uploads removed.
    pub uploads: usize,
    /// Half-written staging files of the local store removed.
    pub staging_files: usize,
    /// Image variants removed (their object was overwritten or deleted).
    pub variants: usize,
}

/// Removes blobs no row points at that are older than `min_age` (a crash between
/// writing bytes and their row, or a failed delete), and expired resumable uploads
/// with their pieces.
pub async fn sweep(pool: &sqlx::PgPool, blobs: &Blobs, min_age: Duration) -> Result<SweepReport, blobs::BlobError> {
    let mut report = SweepReport::default();
    let cutoff = chrono_cutoff(min_age);
    report.staging_files = blobs.sweep_staging(min_age).await?;
    report.orphan_blobs =
        blobs.sweep_unreferenced("blobs", min_age, |ids| async move { db::live_versions(pool, &ids).await }).await?;
    report.variants = crate::imaging::sweep(pool, blobs, min_age).await?;
    for id in db::expired_uploads(pool).await? {
        blobs.delete_prefix(&Blobs::upload_dir(id)).await?;
        report.uploads += 1;
    }
    // Pieces whose upload row is gone (finished or terminated by a process that died).
    let pieces = blobs.list("uploads").await?;
    let mut dirs: Vec<Uuid> = pieces
        .iter()
        .filter(|m| m.last_modified.timestamp() <= cutoff)
        .filter_map(|m| m.location.parts().nth(1).and_then(|p| Uuid::parse_str(p.as_ref()).ok()))
        .collect();
    dirs.sort();
    dirs.dedup();
    if !dirs.is_empty() {
        let live = db::live_uploads(pool, &dirs).await?;
        for id in dirs.into_iter().filter(|d| !live.contains(d)) {
            blobs.delete_prefix(&Blobs::upload_dir(id)).await?;
            report.uploads += 1;
        }
    }
    Ok(report)
}

fn chrono_cutoff(min_age: Duration) -> i64 {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    now - i64::try_from(min_age.as_secs()).unwrap_or(i64::MAX / 2)
}
