//! Connections (the OAuth broker that replaces Nango). So far: the provider catalog
//! (`catalog.rs`), the app's integrations (`integrations.rs`: a provider plus the
//! app's client id, encrypted client secret, scopes and authorization parameter
//! overrides), the connect flow with the connections API (`connect.rs`) and token
//! refresh (`refresh.rs`), the API proxy (`proxy.rs`) with its connection cache (`cache.rs`), upkeep (`upkeep.rs`) and
//! webhooks to the app (`webhooks.rs`).

pub mod cache;
pub mod catalog;
pub mod connect;
pub mod integrations;
pub mod proxy;
pub mod refresh;
pub mod upkeep;
pub mod webhooks;

pub use catalog::Catalog;

/// The JSON API routes of connections.
pub fn routes() -> utoipa_axum::router::OpenApiRouter<crate::app::AppState> {
    integrations::routes().merge(connect::routes())
}
