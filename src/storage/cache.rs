//! An in-memory cache for reads of public objects: the object row by (bucket, key),
//! and the bytes of small objects by version. Public objects are what a CDN or an
//! `<img>` tag hits hardest; with the cache such a read needs no query and no file.
//!
//! Bytes are cached by version, and a version's blob never changes, so they need no
//! invalidation. Rows are invalidated like the auth cache: every write to a public
//! bucket evicts locally at once and sends `NOTIFY carmenta_storage`; every replica
//! listens and evicts. While the listener is down the cache is off and empty;
//! entries expire after a short TTL in any case (the backstop for rows removed by a
//! cascade, such as a deleted user's objects), and a generation counter keeps a read
//! that raced an eviction from re-inserting the stale row.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use uuid::Uuid;

use super::db::ObjectRow;

/// The notification channel.
pub const CHANNEL: &str = "carmenta_storage";
const ROW_TTL: Duration = Duration::from_secs(10);
const MAX_ROWS: usize = 100_000;
/// Objects up to this size have their bytes cached.
pub const MAX_CACHED_OBJECT: u64 = 64 * 1024;
const MAX_CACHED_BYTES: usize = 64 * 1024 * 1024;

/// Cached rows by (bucket, key), with when they were read.
type Rows = HashMap<(String, String), (Instant, Arc<ObjectRow>)>;

/// The cache.
#[derive(Debug, Default)]
pub struct StorageCache {
    rows: RwLock<Rows>,
    bytes: RwLock<HashMap<Uuid, Bytes>>,
    bytes_total: AtomicUsize,
    generation: AtomicU64,
    listening: AtomicBool,
}

/// A token proving no eviction happened between a read and the fill that follows.
#[derive(Debug, Clone, Copy)]
pub struct Generation(u64);

impl StorageCache {
    /// Whether the cache is in use (its invalidation listener is connected).
    pub fn enabled(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Marks the listener (dis)connected; either way the row cache starts empty.
    pub fn set_listening(&self, on: bool) {
        self.clear();
        self.listening.store(on, Ordering::Release);
    }

    /// The current generation, taken before reading the database.
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    /// The cached row of a public object.
    pub fn public_row(&self, bucket: &str, key: &str) -> Option<Arc<ObjectRow>> {
        if !self.enabled() {
            return None;
        }
        let g = self.rows.read().ok()?;
        // A tuple of Strings needs owned keys to look up; objects keys are short.
        g.get(&(bucket.to_string(), key.to_string())).filter(|(at, _)| at.elapsed() < ROW_TTL).map(|(_, r)| r.clone())
    }

    /// Caches the row of an object in a public bucket, read at `at`.
    pub fn put_public_row(&self, at: Generation, row: Arc<ObjectRow>) {
        if !self.enabled() || self.generation().0 != at.0 {
            return;
        }
        if let Ok(mut g) = self.rows.write() {
            if g.len() >= MAX_ROWS {
                g.clear();
            }
            g.insert((row.bucket_id.clone(), row.name.clone()), (Instant::now(), row));
        }
    }

    /// The cached bytes of a version.
    pub fn bytes(&self, version: Uuid) -> Option<Bytes> {
        self.bytes.read().ok()?.get(&version).cloned()
    }

    /// Caches the bytes of a (small) version.
    pub fn put_bytes(&self, version: Uuid, bytes: Bytes) {
        if let Ok(mut g) = self.bytes.write() {
            if self.bytes_total.load(Ordering::Relaxed) + bytes.len() > MAX_CACHED_BYTES {
                g.clear();
                self.bytes_total.store(0, Ordering::Relaxed);
            }
            self.bytes_total.fetch_add(bytes.len(), Ordering::Relaxed);
            g.insert(version, bytes);
        }
    }

    /// Applies an invalidation: `o:<bucket>/<key>` (one object), `b:<bucket>` (a
    /// whole bucket); anything else clears the rows.
    pub fn apply(&self, payload: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let Ok(mut g) = self.rows.write() else { return };
        match payload.split_once(':') {
            Some(("o", path)) => match path.split_once('/') {
                Some((b, k)) => {
                    g.remove(&(b.to_string(), k.to_string()));
                }
                None => g.clear(),
            },
            Some(("b", bucket)) => g.retain(|(b, _), _| b != bucket),
            _ => g.clear(),
        }
    }

    /// Empties the row cache.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut g) = self.rows.write() {
            g.clear();
        }
    }
}

/// Evicts here and tells every replica (best effort: the TTL bounds a lost message).
pub async fn invalidate(pool: &sqlx::PgPool, cache: &StorageCache, payload: String) {
    cache.apply(&payload);
    if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(&payload).execute(pool).await {
        tracing::warn!(error = %e, "storage cache invalidation not sent");
    }
}
