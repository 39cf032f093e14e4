//! Connections (the OAuth broker that replaces Nango): the provider catalog
//! (`catalog.rs`), the app's integrations (`integrations.rs`), the connect flow and
//! connection rules (`service.rs`), the OAuth client (`oauth.rs`), the vault that
//! alone seals and opens secrets (`vault.rs`), token refresh (`refresh.rs`), the API
//! proxy (`proxy.rs`) with its connection cache (`cache.rs`), upkeep of idle
//! connections (`upkeep.rs`), webhooks to the app (`webhooks.rs`), every SQL
//! statement (`db.rs`) and the HTTP handlers (`routes.rs`, hosted connect page in
//! `templates/connect_page.html`).

pub mod cache;
pub mod catalog;
pub mod db;
pub mod integrations;
pub mod oauth;
pub mod proxy;
pub mod refresh;
pub mod routes;
pub mod service;
pub mod types;
pub mod upkeep;
pub mod vault;
pub mod webhooks;

use std::sync::Arc;

pub use catalog::Catalog;
pub use routes::routes;
pub use vault::Vault;

/// Where events are POSTed, and the `whsec_` secret that signs them.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    /// `CARMENTA_WEBHOOK_URL`.
    pub url: url::Url,
    /// `CARMENTA_WEBHOOK_SECRET`.
    pub secret: crate::config::Secret,
}

/// The state of connections: what its services need, and nothing of other areas.
#[derive(Debug)]
pub struct Connections {
    /// The database pool.
    pub pool: sqlx::PgPool,
    /// Seals and opens secrets.
    pub vault: Vault,
    /// The provider catalog (built-in plus `CARMENTA_PROVIDERS_FILE`).
    pub catalog: Arc<Catalog>,
    /// Per-connection refresh queues of this process.
    pub locks: refresh::Locks,
    /// The proxy's connection rows (sealed credentials), invalidated by NOTIFY.
    pub cache: Arc<cache::ConnectionCache>,
    /// The public base URL without a trailing slash (links, the OAuth callback).
    pub public_base: String,
    /// The app's webhook endpoint, when configured.
    pub webhook: Option<WebhookTarget>,
}

impl Connections {
    /// The state for `config`, loading the catalog.
    pub fn open(
        config: &crate::config::Config,
        pool: sqlx::PgPool,
        keyring: Arc<crate::crypto::Keyring>,
    ) -> Result<Connections, catalog::CatalogError> {
        let webhook = match (&config.webhook_url, &config.webhook_secret) {
            (Some(url), Some(secret)) => Some(WebhookTarget { url: url.clone(), secret: secret.clone() }),
            _ => None,
        };
        Ok(Connections {
            pool,
            vault: Vault::new(keyring),
            catalog: Arc::new(catalog::load_configured(config)?),
            locks: refresh::Locks::default(),
            cache: Arc::default(),
            public_base: config.public_url.as_str().trim_end_matches('/').to_string(),
            webhook,
        })
    }

    /// The OAuth callback URL registered with providers.
    pub fn callback_url(&self) -> String {
        format!("{}/oauth/callback", self.public_base)
    }
}
