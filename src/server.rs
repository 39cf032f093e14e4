//! `carmenta serve` and `carmenta migrate`: resolving the keyring, opening the
//! database, binding the listener, serving until a signal, and shutting down in
//! order (drain requests, close the pool, stop the embedded cluster).

use anyhow::Context;

use crate::config::Config;
use crate::crypto::{self, Keyring};
use crate::db::{self, OpenMode};
use crate::router;
use crate::state::AppState;

/// Name of the generated key file in the data directory (embedded default only).
pub const KEY_FILE: &str = "encryption.key";

/// The keyring for `config`: `CARMENTA_ENCRYPTION_KEY` if set; in the embedded
/// default a key generated on first start into the data directory (mode 0600);
/// with `DATABASE_URL` and no key, an error (replicas must share one key).
pub fn resolve_keyring(config: &Config) -> anyhow::Result<Keyring> {
    if !config.encryption_keys.is_empty() {
        return Ok(Keyring::from_base64(&config.encryption_keys)?);
    }
    if !config.embedded_db() {
        anyhow::bail!(
            "CARMENTA_ENCRYPTION_KEY is required when DATABASE_URL is set (every replica must use the same key); \
             generate one with `openssl rand -base64 32`"
        );
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let path = config.data_dir.join(KEY_FILE);
    let key =
        crypto::load_or_create_key_file(&path).with_context(|| format!("reading or creating {}", path.display()))?;
    Keyring::from_base64(&[key]).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let keyring = resolve_keyring(&config)?;
    let database = db::open(&config, OpenMode::Serve).await?;
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            database.close().await;
            anyhow::bail!("cannot listen on {}: {e} (set CARMENTA_LISTEN to another address)", config.listen);
        }
    };
    let addr = listener.local_addr()?;
    let serving = router::Serving::from_config(&config);
    let public_url = config.public_url.clone();
    let state = match AppState::build(config, database.pool.clone(), keyring).await {
        Ok(s) => s,
        Err(e) => {
            database.close().await;
            anyhow::bail!("starting: {e}");
        }
    };
    let upkeep = state.spawn_upkeep();
    let cache_listener = state.spawn_cache_listener();
    let jobs = match crate::background::start(&state).await {
        Ok(r) => r,
        Err(e) => {
            upkeep.abort();
            cache_listener.abort();
            database.close().await;
            anyhow::bail!("starting the job runner: {e}");
        }
    };
    let app = router::router(state);
    tracing::info!(%addr, %public_url, "carmenta listening");
    let result = router::serve(listener, app, router::shutdown_signal(), serving).await;
    // In-flight jobs finish within the drain time or are released for another replica.
    jobs.shutdown().await;
    upkeep.abort();
    cache_listener.abort();
    database.close().await;
    tracing::info!("carmenta stopped");
    result.context("serving HTTP")
}

/// Applies pending migrations and returns the applied versions.
pub async fn migrate(config: Config) -> anyhow::Result<Vec<i64>> {
    let database = db::open(&config, OpenMode::Client).await?;
    let versions = db::shared::migration_versions(&database.pool).await?;
    database.close().await;
    Ok(versions)
}
