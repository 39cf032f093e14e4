//! The application state: one reference-counted struct holding each area's own
//! state (auth, chat, storage, connections) and the shared pieces (configuration,
//! pool, keyring, metrics), the caches' NOTIFY channels, and per-process upkeep.
//! Areas take their own state (`State<Arc<Area>>` through `FromRef`), never this.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::auth::AuthState;
use crate::config::Config;
use crate::crypto::Keyring;
use crate::mail::Mailer;

/// Why the application state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Auth (signing keys, external issuer).
    #[error(transparent)]
    Auth(#[from] crate::auth::service::AuthSetupError),
    /// Mail configuration.
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
    /// The object store.
    #[error(transparent)]
    Storage(#[from] crate::storage::blobs::OpenError),
    /// The provider catalog.
    #[error(transparent)]
    Catalog(#[from] crate::connections::catalog::CatalogError),
    /// The embedding model.
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
}

/// State shared by every handler: one reference-counted pointer, so the clone
/// every extractor and middleware makes is a single atomic increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points at.
pub struct Shared {
    /// The resolved configuration.
    pub config: Arc<Config>,
    /// The database pool.
    pub pool: PgPool,
    /// Keys for secrets at rest.
    pub keyring: Arc<Keyring>,
    /// The Prometheus handle `/metrics` renders.
    pub metrics: PrometheusHandle,
    /// Auth: accounts, sessions, signing keys, mail.
    pub auth: Arc<AuthState>,
    /// Chat: conversations and messages.
    pub chat: Arc<crate::chat::Chat>,
    /// Object storage.
    pub storage: Arc<crate::storage::Storage>,
    /// Connections: catalog, vault, refresh locks, proxy cache, webhooks.
    pub connections: Arc<crate::connections::Connections>,
    /// The knowledge base: documents, ingestion, embeddings, search.
    pub knowledge: Arc<crate::knowledge::Knowledge>,
    /// Memory: memories, extraction, context assembly.
    pub memory: Arc<crate::memory::Memory>,
    /// The admin console.
    pub admin: Arc<crate::admin::Admin>,
}

impl AppState {
    /// Builds the state from its parts: each area's own state, the signing keys
    /// loaded (or created).
    pub async fn build(config: Config, pool: PgPool, keyring: Keyring) -> Result<AppState, StartupError> {
        crate::http_client::allow_link_local(config.allow_link_local_urls);
        let config = Arc::new(config);
        let keyring = Arc::new(keyring);
        let mailer = Mailer::from_config(&config)?;
        let auth = AuthState::load(pool.clone(), keyring.clone(), config.clone(), mailer).await?;
        let storage = Arc::new(crate::storage::Storage::open(&config, &keyring, pool.clone())?);
        let connections = Arc::new(crate::connections::Connections::open(&config, pool.clone(), keyring.clone())?);
        let knowledge = Arc::new(crate::knowledge::Knowledge::open(&config, pool.clone(), storage.clone())?);
        let memory = Arc::new(crate::memory::Memory::open(&config, pool.clone(), knowledge.clone()));
        let chat = Arc::new(crate::chat::Chat {
            pool: pool.clone(),
            max_message_bytes: config.chat_max_message_bytes,
            embedder: knowledge.embedder.clone(),
        });
        let admin = Arc::new(crate::admin::Admin {
            pool: pool.clone(),
            config: config.clone(),
            auth: auth.clone(),
            storage: storage.clone(),
            connections: connections.clone(),
            knowledge: knowledge.clone(),
            memory: memory.clone(),
        });
        // Off the start-up path: the dummy hash is ready long before the first sign-in.
        tokio::spawn(crate::auth::password::warm_up());
        Ok(AppState(Arc::new(Shared {
            config,
            pool,
            keyring,
            metrics: crate::telemetry::metrics_handle(),
            auth,
            chat,
            storage,
            connections,
            knowledge,
            memory,
            admin,
        })))
    }

    /// The NOTIFY channels this process listens on, each with its cache.
    pub fn cache_channels(&self) -> crate::cache::Channels {
        crate::cache::Channels::default()
            .register(crate::auth::cache::CHANNEL, self.auth.cache.clone())
            .register(crate::storage::cache::CHANNEL, self.storage.cache.clone())
            .register(crate::connections::cache::CHANNEL, self.connections.cache.clone())
    }

    /// Starts the listener that applies every replica's cache invalidations; each
    /// cache is used only while it is connected. Ends when the pool closes.
    pub fn spawn_cache_listener(&self) -> tokio::task::JoinHandle<()> {
        self.cache_channels().spawn_listener(self.pool.clone())
    }

    /// Starts this process's signing-key refresh (every minute, to pick up another
    /// replica's rotation). Not a job: every replica refreshes its own memory.
    pub fn spawn_upkeep(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick completes at once; the keys were just loaded.
            tick.tick().await;
            loop {
                tick.tick().await;
                if state.pool.is_closed() {
                    return;
                }
                if let Err(e) = state.auth.keys.refresh(&state.pool, &state.keyring).await {
                    tracing::warn!(error = %e, "refreshing signing keys");
                }
            }
        })
    }
}
