//! The one NOTIFY-invalidated cache type, and the listener that feeds every such
//! cache its channel's invalidations.
//!
//! [`Notified`] is a map with a TTL and a size bound that is used only while its
//! invalidation listener is connected (it starts empty on every (dis)connection, so
//! a notification missed while disconnected cannot leave a stale entry). Writers
//! evict locally and `NOTIFY` their channel (or a trigger does); every replica's
//! [`Channels`] listener hands the payload to the cache registered for that channel.
//! A generation counter keeps a read that raced an eviction from re-inserting the
//! row it read: take [`Notified::generation`] before the query, give it to
//! [`Notified::put`] after.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// A token proving no eviction happened between a read and the fill that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

/// A NOTIFY-invalidated map from `K` to shared `V`s.
#[derive(Debug)]
pub struct Notified<K, V> {
    rows: RwLock<HashMap<K, (Instant, Arc<V>)>>,
    ttl: Duration,
    max_entries: usize,
    generation: AtomicU64,
    listening: AtomicBool,
}

impl<K: Eq + Hash, V> Notified<K, V> {
    /// An empty cache whose entries live `ttl` at most; when `max_entries` is
    /// reached it starts over empty (cheap, and the hot entries come back at once).
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Notified {
            rows: RwLock::new(HashMap::new()),
            ttl,
            max_entries,
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        }
    }

    /// Whether the cache is in use (its invalidation listener is connected).
    pub fn enabled(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Marks the listener (dis)connected; either way the cache starts empty.
    pub fn set_listening(&self, on: bool) {
        self.clear();
        self.listening.store(on, Ordering::Release);
    }

    /// The current generation, taken before reading the database.
    pub fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::Acquire))
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// An unexpired entry.
    pub fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.enabled() {
            return None;
        }
        let g = self.rows.read().ok()?;
        g.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, v)| v.clone())
    }

    /// Caches `value` read at generation `at`; dropped if an eviction came since.
    pub fn put(&self, at: Generation, key: K, value: Arc<V>) {
        if !self.enabled() || self.generation() != at {
            return;
        }
        if let Ok(mut g) = self.rows.write() {
            // Re-checked under the write lock: an eviction bumps the generation first.
            if self.generation() != at {
                return;
            }
            if g.len() >= self.max_entries {
                g.clear();
            }
            g.insert(key, (Instant::now(), value));
        }
    }

    /// Evicts one entry.
    pub fn evict<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.bump();
        if let Ok(mut g) = self.rows.write() {
            g.remove(key);
        }
    }

    /// Evicts every entry for which `keep` is false.
    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.bump();
        if let Ok(mut g) = self.rows.write() {
            g.retain(|k, (_, v)| keep(k, v));
        }
    }

    /// Empties the cache.
    pub fn clear(&self) {
        self.bump();
        if let Ok(mut g) = self.rows.write() {
            g.clear();
        }
    }
}

/// What a cache registered on a channel does with its notifications.
pub trait Invalidate: Send + Sync {
    /// Applies one notification's payload.
    fn apply(&self, payload: &str);
    /// The listener (dis)connected: the cache is off while it is not.
    fn set_listening(&self, on: bool);
}

/// The channels a process listens on, each with the cache it invalidates.
#[derive(Default, Clone)]
pub struct Channels {
    handlers: Vec<(&'static str, Arc<dyn Invalidate>)>,
}

impl Channels {
    /// Registers `cache` for `channel`.
    pub fn register(mut self, channel: &'static str, cache: Arc<dyn Invalidate>) -> Self {
        self.handlers.push((channel, cache));
        self
    }

    /// Hands a notification to its channel's cache; an unknown channel is logged.
    pub fn dispatch(&self, channel: &str, payload: &str) {
        match self.handlers.iter().find(|(c, _)| *c == channel) {
            Some((_, cache)) => cache.apply(payload),
            None => tracing::warn!(channel, "notification on a channel no cache is registered for"),
        }
    }

    fn set_listening(&self, on: bool) {
        for (_, cache) in &self.handlers {
            cache.set_listening(on);
        }
    }

    /// Listens on every registered channel and applies what arrives; the caches
    /// are on only while connected (reconnecting every second). Ends when the pool
    /// closes.
    pub fn spawn_listener(self, pool: PgPool) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let names: Vec<&str> = self.handlers.iter().map(|(c, _)| *c).collect();
            while !pool.is_closed() {
                let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if listener.listen_all(names.iter().copied()).await.is_err() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                self.set_listening(true);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => self.dispatch(n.channel(), n.payload()),
                        // The connection dropped: notifications may have been missed.
                        Ok(None) | Err(_) => {
                            self.set_listening(false);
                            break;
                        }
                    }
                }
            }
            self.set_listening(false);
        })
    }
}

/// Sends `payload` on `channel` to every replica (this one included).
pub async fn notify(pool: &PgPool, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
    crate::db::notify(pool, channel, payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe(std::sync::Mutex<Vec<String>>);
    impl Invalidate for Probe {
        fn apply(&self, payload: &str) {
            self.0.lock().unwrap().push(payload.to_string());
        }
        fn set_listening(&self, _: bool) {}
    }

    #[test]
    fn stale_fills_are_dropped_and_evictions_apply() {
        let c: Notified<u32, String> = Notified::new(Duration::from_secs(60), 10);
        let g = c.generation();
        c.put(g, 1, Arc::new("a".into()));
        assert!(c.get(&1).is_none(), "off until the listener is connected");
        c.set_listening(true);
        let g = c.generation();
        c.evict(&2);
        c.put(g, 1, Arc::new("a".into()));
        assert!(c.get(&1).is_none(), "a fill that raced an eviction is dropped");
        let g = c.generation();
        c.put(g, 1, Arc::new("a".into()));
        assert_eq!(c.get(&1).as_deref().map(String::as_str), Some("a"));
        c.retain(|k, _| *k != 1);
        assert!(c.get(&1).is_none());
        c.set_listening(false);
        assert!(c.get(&1).is_none());
    }

    #[test]
    fn entries_expire_and_the_size_is_bounded() {
        let c: Notified<u32, u32> = Notified::new(Duration::from_millis(20), 3);
        c.set_listening(true);
        for k in 0..3 {
            c.put(c.generation(), k, Arc::new(k));
        }
        assert!(c.get(&2).is_some());
        c.put(c.generation(), 3, Arc::new(3));
        assert!(c.get(&0).is_none() && c.get(&3).is_some(), "full: started over");
        std::thread::sleep(Duration::from_millis(30));
        assert!(c.get(&3).is_none(), "expired");
    }

    #[test]
    fn notifications_go_to_their_channels_cache_only() {
        let a = Arc::new(Probe(Default::default()));
        let b = Arc::new(Probe(Default::default()));
        let ch = Channels::default().register("a", a.clone()).register("b", b.clone());
        ch.dispatch("a", "1");
        ch.dispatch("b", "2");
        ch.dispatch("unknown", "3");
        assert_eq!(*a.0.lock().unwrap(), ["1"]);
        assert_eq!(*b.0.lock().unwrap(), ["2"], "an unknown channel reaches no cache");
    }
}
