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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use super::db::ObjectRow;
use crate::cache::{Generation, Invalidate, Notified};

/// The notification channel.
pub const CHANNEL: &str = "carmenta_storage";
const ROW_TTL: Duration = Duration::from_secs(10);
const MAX_ROWS: usize = 100_000;
/// Objects up to this size have their bytes cached.
pub const MAX_CACHED_OBJECT: u64 = 64 * 1024;
const MAX_CACHED_BYTES: usize = 64 * 1024 * 1024;

/// The cache.
#[derive(Debug)]
pub struct StorageCache {
    rows: Notified<(String, String), ObjectRow>,
    bytes: RwLock<HashMap<Uuid, Bytes>>,
    bytes_total: AtomicUsize,
}

impl Default for StorageCache {
    fn default() -> Self {
        StorageCache {
            rows: Notified::new(ROW_TTL, MAX_ROWS),
            bytes: RwLock::default(),
            bytes_total: AtomicUsize::new(0),
        }
    }
}

impl StorageCache {
    /// Whether the cache is in use (its invalidation listener is connected).
    pub fn enabled(&self) -> bool {
        self.rows.enabled()
    }

    /// The current generation, taken before reading the database.
    pub fn generation(&self) -> Generation {
        self.rows.generation()
    }

    /// The cached row of a public object.
    pub fn public_row(&self, bucket: &str, key: &str) -> Option<Arc<ObjectRow>> {
        // A tuple of Strings needs owned keys to look up; objects keys are short.
        self.rows.get(&(bucket.to_string(), key.to_string()))
    }

    /// Caches the row of an object in a public bucket, read at `at`.
    pub fn put_public_row(&self, at: Generation, row: Arc<ObjectRow>) {
        self.rows.put(at, (row.bucket_id.clone(), row.name.clone()), row);
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
        match payload.split_once(':') {
            Some(("o", path)) if let Some((b, k)) = path.split_once('/') => {
                self.rows.evict(&(b.to_string(), k.to_string()));
            }
            Some(("b", bucket)) => self.rows.retain(|(b, _), _| b != bucket),
            _ => self.rows.clear(),
        }
    }

    /// Empties the row cache.
    pub fn clear(&self) {
        self.rows.clear();
    }
}

impl Invalidate for StorageCache {
    fn apply(&self, payload: &str) {
        StorageCache::apply(self, payload)
    }
    fn set_listening(&self, on: bool) {
        self.rows.set_listening(on);
    }
}

/// Evicts here and tells every replica (best effort: the TTL bounds a lost message).
pub async fn invalidate(pool: &sqlx::PgPool, cache: &StorageCache, payload: String) {
    cache.apply(&payload);
    if let Err(e) = crate::cache::notify(pool, CHANNEL, &payload).await {
        tracing::warn!(error = %e, "storage cache invalidation not sent");
    }
}
