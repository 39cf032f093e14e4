//! Connections (the OAuth broker that replaces Nango). So far: the provider catalog
//! (`catalog.rs`) and the app's integrations (a provider plus the app's client id,
//! encrypted client secret, scopes and authorization parameter overrides). The
//! connect flow, the vault of user tokens, refresh and the proxy are still to come.

pub mod catalog;
pub mod integrations;

pub use catalog::Catalog;
pub use integrations::routes;
