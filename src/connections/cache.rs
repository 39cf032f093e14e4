//! An in-memory cache of what the API proxy reads per call: the connection's owner,
//! integration key, provider, configuration, status and **sealed** credentials (the
//! plaintext never sits in the cache; it is opened per call inside the vault code).
//! With it a proxied call on a fresh token needs no database round trip.
//!
//! Invalidation cannot depend on every writer remembering it: triggers on
//! `connections` and `integrations` (migration `…_connection_cache.sql`) send
//! `NOTIFY carmenta_connections` with the connection id (or `*` for an integration
//! change) on every update and delete, cascades included, at commit. Every replica
//! listens and evicts. While the listener is disconnected the cache is off and
//! empty; entries expire after a short TTL anyway, and a generation counter keeps a
//! read that raced an eviction from re-inserting the stale row.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::cache::{Generation, Invalidate, Notified};

/// The notification channel the triggers send on.
pub const CHANNEL: &str = "carmenta_connections";
const TTL: Duration = Duration::from_secs(10);
const MAX_ENTRIES: usize = 100_000;

pub use super::db::ProxyRow;

/// The cache.
#[derive(Debug)]
pub struct ConnectionCache {
    rows: Notified<Uuid, ProxyRow>,
}

impl Default for ConnectionCache {
    fn default() -> Self {
        ConnectionCache { rows: Notified::new(TTL, MAX_ENTRIES) }
    }
}

impl ConnectionCache {
    /// Whether the cache is in use (its invalidation listener is connected).
    pub fn enabled(&self) -> bool {
        self.rows.enabled()
    }

    /// Marks the listener (dis)connected; either way the cache starts empty.
    pub fn set_listening(&self, on: bool) {
        self.rows.set_listening(on);
    }

    /// The current generation, taken before reading the database.
    pub fn generation(&self) -> Generation {
        self.rows.generation()
    }

    /// A cached, unexpired row.
    pub fn get(&self, id: Uuid) -> Option<Arc<ProxyRow>> {
        self.rows.get(&id)
    }

    /// Caches a row read at generation `at` (dropped if an eviction came since).
    pub fn put(&self, at: Generation, row: Arc<ProxyRow>) {
        self.rows.put(at, row.id, row);
    }

    /// Applies an invalidation: a connection id evicts it; anything else clears all.
    pub fn apply(&self, payload: &str) {
        match Uuid::parse_str(payload) {
            Ok(id) => self.rows.evict(&id),
            Err(_) => self.rows.clear(),
        }
    }
}

impl Invalidate for ConnectionCache {
    fn apply(&self, payload: &str) {
        ConnectionCache::apply(self, payload)
    }
    fn set_listening(&self, on: bool) {
        ConnectionCache::set_listening(self, on)
    }
}

/// The connection `id` of `owner` under the integration `key`, from the cache or
/// (on a miss) from one query that also brings its sealed credentials.
pub async fn lookup(
    c: &super::Connections,
    id: Uuid,
    owner: Uuid,
    key: &str,
) -> Result<Arc<ProxyRow>, crate::error::ApiError> {
    let not_found = || crate::error::ApiError::not_found("connection not found");
    let row = match c.cache.get(id) {
        Some(row) => row,
        None => {
            let at = c.cache.generation();
            let row = Arc::new(super::db::proxy_row(&c.pool, id, key).await?.ok_or_else(not_found)?);
            c.cache.put(at, row.clone());
            row
        }
    };
    // One answer for "no such connection", "not yours" and "another integration's".
    if row.unique_key != key {
        return Err(not_found());
    }
    match row.org_id {
        None if row.owner_id == owner => Ok(row),
        None => Err(not_found()),
        // Shared: membership is read on every call, so leaving ends use at once.
        Some(org) => {
            super::service::org_access(c, org, owner, super::service::Need::Read).await?;
            Ok(row)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: Uuid) -> Arc<ProxyRow> {
        Arc::new(ProxyRow {
            id,
            owner_id: Uuid::nil(),
            org_id: None,
            unique_key: "k".into(),
            provider: "p".into(),
            connection_config: serde_json::json!({}),
            status: "connected".into(),
            credentials: vec![1],
        })
    }

    #[test]
    fn stale_fills_are_dropped_and_evictions_apply() {
        let c = ConnectionCache::default();
        let id = Uuid::new_v4();
        let g = c.generation();
        c.put(g, row(id));
        assert!(c.get(id).is_none(), "off until the listener is connected");
        c.set_listening(true);
        let g = c.generation();
        c.apply(&Uuid::new_v4().to_string());
        c.put(g, row(id));
        assert!(c.get(id).is_none(), "a fill that raced an eviction is dropped");
        let g = c.generation();
        c.put(g, row(id));
        assert!(c.get(id).is_some());
        c.apply(&id.to_string());
        assert!(c.get(id).is_none());
        let g = c.generation();
        c.put(g, row(id));
        c.apply("*");
        assert!(c.get(id).is_none());
    }
}
