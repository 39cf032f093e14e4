//! An in-memory cache of user profiles and live sessions, so that authenticating a
//! session and reading `/v1/me` need no database round trip on the hot path.
//!
//! Correctness across replicas: every write that changes a user or ends a session
//! evicts locally at once and sends `NOTIFY carmenta_auth`; each replica listens and
//! evicts too. While the listener is disconnected the cache is bypassed and cleared,
//! and entries expire after a short TTL in any case. A generation counter keeps a
//! read that raced an eviction from re-inserting the stale row.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::db::{SessionRow, UserRow};

/// The notification channel.
pub const CHANNEL: &str = "carmenta_auth";
const USER_TTL: Duration = Duration::from_secs(30);
const SESSION_TTL: Duration = Duration::from_secs(10);
const MAX_ENTRIES: usize = 100_000;

/// The cache.
#[derive(Debug, Default)]
pub struct AuthCache {
    users: RwLock<HashMap<Uuid, (Instant, UserRow)>>,
    sessions: RwLock<HashMap<Vec<u8>, (Instant, SessionRow)>>,
    generation: AtomicU64,
    listening: AtomicBool,
}

/// A token proving no eviction happened between a read and the fill that follows.
#[derive(Debug, Clone, Copy)]
pub struct Generation(u64);

impl AuthCache {
    /// Whether the cache may be used (the invalidation listener is connected).
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

    /// A cached user.
    pub fn user(&self, id: Uuid) -> Option<UserRow> {
        if !self.enabled() {
            return None;
        }
        let g = self.users.read().ok()?;
        g.get(&id).filter(|(at, _)| at.elapsed() < USER_TTL).map(|(_, u)| u.clone())
    }

    /// Caches a user read at generation `gen`.
    pub fn put_user(&self, gen_at_read: Generation, user: UserRow) {
        if !self.enabled() || self.generation().0 != gen_at_read.0 {
            return;
        }
        if let Ok(mut g) = self.users.write() {
            if g.len() >= MAX_ENTRIES {
                g.clear();
            }
            g.insert(user.id, (Instant::now(), user));
        }
    }

    /// A cached live session for a token hash (expiry re-checked here).
    pub fn session(&self, token_hash: &[u8], idle: Option<Duration>) -> Option<SessionRow> {
        if !self.enabled() {
            return None;
        }
        let g = self.sessions.read().ok()?;
        let (at, s) = g.get(token_hash)?;
        let now = time::OffsetDateTime::now_utc();
        let idle_ok = idle.is_none_or(|d| now - s.last_active_at < d);
        (at.elapsed() < SESSION_TTL && s.expires_at > now && idle_ok).then(|| s.clone())
    }

    /// Caches a live session read at generation `gen`.
    pub fn put_session(&self, gen_at_read: Generation, token_hash: Vec<u8>, s: SessionRow) {
        if !self.enabled() || self.generation().0 != gen_at_read.0 {
            return;
        }
        if let Ok(mut g) = self.sessions.write() {
            if g.len() >= MAX_ENTRIES {
                g.clear();
            }
            g.insert(token_hash, (Instant::now(), s));
        }
    }

    /// Applies an invalidation message: `u:<id>` (user changed or deleted, with
    /// their sessions), `s:<id>` (a session ended); anything else clears all.
    pub fn apply(&self, payload: &str) {
        self.bump();
        match payload.split_once(':') {
            Some(("u", id)) => match Uuid::parse_str(id) {
                Ok(id) => {
                    if let Ok(mut g) = self.users.write() {
                        g.remove(&id);
                    }
                    if let Ok(mut g) = self.sessions.write() {
                        g.retain(|_, (_, s)| s.user_id != id);
                    }
                }
                Err(_) => self.clear(),
            },
            Some(("s", id)) => match Uuid::parse_str(id) {
                Ok(id) => {
                    if let Ok(mut g) = self.sessions.write() {
                        g.retain(|_, (_, s)| s.id != id);
                    }
                }
                Err(_) => self.clear(),
            },
            _ => self.clear(),
        }
    }

    /// Empties the cache.
    pub fn clear(&self) {
        self.bump();
        if let Ok(mut g) = self.users.write() {
            g.clear();
        }
        if let Ok(mut g) = self.sessions.write() {
            g.clear();
        }
    }
}
