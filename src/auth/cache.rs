//! An in-memory cache of user profiles and live sessions, so that authenticating a
//! session and reading `/v1/me` need no database round trip on the hot path.
//!
//! Correctness across replicas: every write that changes a user or ends a session
//! evicts locally at once and sends `NOTIFY carmenta_auth`; each replica listens and
//! evicts too. While the listener is disconnected the cache is bypassed and cleared,
//! and entries expire after a short TTL in any case. A generation counter keeps a
//! read that raced an eviction from re-inserting the stale row.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::db::{SessionRow, UserRow};
use crate::cache::{Invalidate, Notified};

/// The notification channel.
pub const CHANNEL: &str = "carmenta_auth";
const USER_TTL: Duration = Duration::from_secs(30);
const SESSION_TTL: Duration = Duration::from_secs(10);
const MAX_ENTRIES: usize = 100_000;

/// The cache: users by id, live sessions by token hash and by id (the access
/// tokens' `sid`).
#[derive(Debug)]
pub struct AuthCache {
    users: Notified<Uuid, UserRow>,
    sessions: Notified<Vec<u8>, SessionRow>,
    by_id: Notified<Uuid, SessionRow>,
}

impl Default for AuthCache {
    fn default() -> Self {
        AuthCache {
            users: Notified::new(USER_TTL, MAX_ENTRIES),
            sessions: Notified::new(SESSION_TTL, MAX_ENTRIES),
            by_id: Notified::new(SESSION_TTL, MAX_ENTRIES),
        }
    }
}

/// A token proving no eviction happened between a read and the fill that follows.
#[derive(Debug, Clone, Copy)]
pub struct Generation(crate::cache::Generation, crate::cache::Generation, crate::cache::Generation);

impl AuthCache {
    /// Whether the cache may be used (the invalidation listener is connected).
    pub fn enabled(&self) -> bool {
        self.users.enabled()
    }

    /// The current generation, taken before reading the database.
    pub fn generation(&self) -> Generation {
        Generation(self.users.generation(), self.sessions.generation(), self.by_id.generation())
    }

    /// A cached user.
    pub fn user(&self, id: Uuid) -> Option<UserRow> {
        self.users.get(&id).map(|u| (*u).clone())
    }

    /// Caches a user read at generation `gen_at_read`.
    pub fn put_user(&self, gen_at_read: Generation, user: UserRow) {
        self.users.put(gen_at_read.0, user.id, Arc::new(user));
    }

    /// A cached live session for a token hash (expiry re-checked here).
    pub fn session(&self, token_hash: &[u8], idle: Option<Duration>) -> Option<SessionRow> {
        self.sessions.get(token_hash).filter(|s| still_live(s, idle)).map(|s| (*s).clone())
    }

    /// Caches a live session read at generation `gen_at_read`.
    pub fn put_session(&self, gen_at_read: Generation, token_hash: Vec<u8>, s: SessionRow) {
        self.sessions.put(gen_at_read.1, token_hash, Arc::new(s));
    }

    /// The owner of session `id` when it is cached and still live (expiry
    /// re-checked here; nothing is copied: this is on every JWT request).
    pub fn live_session_owner(&self, id: Uuid, idle: Option<Duration>) -> Option<Uuid> {
        self.by_id.get(&id).filter(|s| still_live(s, idle)).map(|s| s.user_id)
    }

    /// Caches a live session by id, read at generation `gen_at_read`.
    pub fn put_session_by_id(&self, gen_at_read: Generation, s: SessionRow) {
        self.by_id.put(gen_at_read.2, s.id, Arc::new(s));
    }

    /// Applies an invalidation message: `u:<id>` (user changed or deleted, with
    /// their sessions), `s:<id>` (a session ended); anything else clears all.
    pub fn apply(&self, payload: &str) {
        let id = |s: &str| Uuid::parse_str(s).ok();
        match payload.split_once(':') {
            Some(("u", u)) if let Some(u) = id(u) => {
                self.users.evict(&u);
                self.sessions.retain(|_, s| s.user_id != u);
                self.by_id.retain(|_, s| s.user_id != u);
            }
            Some(("s", sid)) if let Some(sid) = id(sid) => {
                self.sessions.retain(|_, s| s.id != sid);
                self.by_id.evict(&sid);
            }
            _ => self.clear(),
        }
    }

    /// Empties the cache.
    pub fn clear(&self) {
        self.users.clear();
        self.sessions.clear();
        self.by_id.clear();
    }
}

/// Whether a cached session has neither expired nor been idle longer than `idle`.
fn still_live(s: &SessionRow, idle: Option<Duration>) -> bool {
    let now = time::OffsetDateTime::now_utc();
    s.expires_at > now && idle.is_none_or(|d| now - s.last_active_at < d)
}

impl Invalidate for AuthCache {
    fn apply(&self, payload: &str) {
        AuthCache::apply(self, payload)
    }
    fn set_listening(&self, on: bool) {
        self.users.set_listening(on);
        self.sessions.set_listening(on);
        self.by_id.set_listening(on);
    }
}
