//! Carmenta: a self-hosted backend for AI-assistant products, as one program.
//!
//! Module map (see ARCHITECTURE.md):
//! - [`config`]: typed configuration from `CARMENTA_*` and `carmenta.toml`.
//! - [`app`]: shared state, the router and its middleware, `serve`.
//! - [`error`]: the API error envelope.
//! - [`db`]: the pool, migrations, and the embedded PostgreSQL manager.
//! - [`crypto`]: AES-256-GCM envelope encryption with key ids.
//! - [`telemetry`]: logs and metrics.
//! - [`ops`]: health, readiness, metrics endpoints.
//! - [`auth`]: accounts, sessions, access tokens, service keys.
//! - [`audit`]: the audit log.
//! - [`chat`]: conversations and messages (AI SDK UIMessages).
//! - [`pagination`]: cursors and limits for list endpoints.
//! - [`hosted`]: server-rendered auth pages.
//! - [`imaging`]: image transformations (libvips) and their variant cache.
//! - [`mail`]: outgoing mail (SMTP or the outbox).
//! - [`doctor`]: environment checks behind `carmenta doctor`.

pub mod app;
pub mod audit;
pub mod auth;
pub mod chat;
pub mod config;
pub mod connections;
pub mod crypto;
pub mod db;
pub mod doctor;
pub mod error;
pub mod hosted;
pub mod imaging;
pub mod mail;
pub mod ops;
pub mod pagination;
pub mod server;
pub mod storage;
pub mod telemetry;

/// Installs the process-wide TLS crypto provider (ring) that outgoing HTTPS
/// clients use. Idempotent; called at startup and before any client is built.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Caps glibc's malloc arenas at two per process. By default glibc gives each busy
/// thread its own arena (up to 8 × cores), and the freed buffers of image
/// transformations (a decoded source is megabytes) stay in all of them: under a
/// steady transform load the server's RSS kept growing (142 → 229 MB over 650
/// transforms), with two arenas it stays flat (≈ 100 MB). Called first in `main`,
/// before any thread starts; a no-op elsewhere than glibc, and when glibc's own
/// `MALLOC_ARENA_MAX` is set (the operator's choice wins).
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
