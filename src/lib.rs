//! Carmenta: a self-hosted backend for AI-assistant products, as one program.
//!
//! Module map (see ARCHITECTURE.md):
//! - [`config`]: typed configuration from `CARMENTA_*` and `carmenta.toml`.
//! - [`state`]: `AppState`, holding each area's own state.
//! - [`router`]: every route, the layers around them, `serve`.
//! - [`middleware`]: request ids, logs, metrics, the error envelope, panics.
//! - [`error`]: the API error envelope.
//! - [`cache`]: the one NOTIFY-invalidated cache type and its listener.
//! - [`db`]: the pool, migrations, the embedded PostgreSQL manager, shared statements.
//! - [`jobs`]: the durable job queue (PostgreSQL, `SKIP LOCKED`), schedules, workers.
//! - [`background`]: the server's job kinds and periodic schedules.
//! - [`crypto`]: AES-256-GCM envelope encryption with key ids.
//! - [`telemetry`]: logs and metrics.
//! - [`ops`]: health, readiness, metrics endpoints.
//! - [`auth`]: accounts, sessions, access tokens, service keys.
//! - [`audit`]: the audit log.
//! - [`chat`]: conversations and messages (AI SDK UIMessages), hybrid recall of past messages.
//! - [`knowledge`]: documents, folders, versions, ingestion, hybrid search.
//! - [`embed`]: the embedder (built-in static model or an OpenAI-compatible endpoint).
//! - [`memory`]: memories with provenance and history, extraction, context assembly.
//! - [`llm`]: the chat-completions client extraction uses.
//! - [`rank`]: reciprocal-rank fusion shared by every hybrid search.
//! - [`storage`]: Supabase Storage's API over a local directory or S3, TUS, rendering.
//! - [`connections`]: the OAuth broker: catalog, integrations, connect flow, vault, refresh, proxy, webhooks.
//! - [`server`]: `carmenta serve` and `carmenta migrate`.
//! - [`pagination`]: `Page<T>` and `PageQuery` for every list endpoint.
//! - [`http_client`]: the one outgoing HTTP client, with its guard against link-local and metadata addresses.
//! - [`hosted`]: server-rendered auth pages.
//! - [`imaging`]: image transformations (libvips) and their variant cache.
//! - [`mail`]: outgoing mail (SMTP or the outbox).
//! - [`doctor`]: environment checks behind `carmenta doctor`.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod background;
pub mod cache;
pub mod chat;
pub mod config;
pub mod connections;
pub mod crypto;
pub mod db;
pub mod doctor;
pub mod embed;
pub mod error;
pub mod hosted;
pub mod http_client;
pub mod imaging;
pub mod jobs;
pub mod knowledge;
pub mod llm;
pub mod mail;
pub mod memory;
pub mod middleware;
pub mod ops;
pub mod orgs;
pub mod pagination;
pub mod rank;
pub mod router;
pub mod server;
pub mod state;
pub mod storage;
pub mod telemetry;

/// Installs the process-wide TLS crypto provider (ring) that outgoing HTTPS
/// clients use. Idempotent; called at startup and before any client is built.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_t`, mimalloc 3.3;
/// `libmimalloc-sys` names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets up both allocators of the server process; called first in `main`, before
/// any thread starts. An operator's own variable wins over each setting.
///
/// - glibc's malloc (the C libraries': libvips, libjpeg-turbo) gets at most two
///   arenas. By default glibc gives each busy thread its own (up to 8 × cores), and
///   the freed buffers of image transformations (a decoded source is megabytes)
///   stay in all of them: under a steady transform load the server's RSS kept
///   growing (142 → 229 MB over 650 transforms); with two it stays flat.
///   `MALLOC_ARENA_MAX` overrides; a no-op elsewhere than glibc.
/// - mimalloc (Rust's allocations, the binary's global allocator) returns freed
///   pages to the system at once, not after its default delay of a second: a GiB
///   streamed through the server otherwise leaves ~20 MB more resident at its
///   peak. `MIMALLOC_PURGE_DELAY` (read by mimalloc itself) overrides.
///   (Transparent huge pages are off for mimalloc's memory: the `no_thp` build
///   feature; with them a small heap is held in 2 MB pages.)
pub fn tune_allocators() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an option value, read on later purges.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}
