//! Integrations: the app's OAuth clients per provider (client id, sealed client
//! secret, scopes, authorization parameter overrides), managed with a service key.
//! The client secret is sealed by the vault (the integration id as associated
//! data) and never returned. Request and response types, checks, and the rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Connections;
use super::db::{self, IntegrationRow as Row};
use crate::error::ApiError;
use crate::pagination::{Page, PageQuery};

/// A catalog entry as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderView {
    /// Name (`google-mail`).
    pub name: String,
    /// `OAUTH2`, `API_KEY`, `BASIC`, …
    pub auth_mode: String,
    /// The API base URL the proxy reaches.
    pub proxy_base_url: Option<String>,
    /// Scopes used when an integration names none.
    pub default_scopes: Vec<String>,
    /// What the provider is for (`crm`, `mail`, …).
    pub categories: Vec<String>,
    /// The provider's developer documentation this entry was written from.
    pub docs: Option<String>,
    /// The entry it inherits from (a family such as `google` or `zoho`).
    pub alias: Option<String>,
    /// `reusable`, `rotating` or `none`: what its refresh tokens do.
    pub refresh: String,
    /// Connection configuration the user gives when connecting (`subdomain`, …).
    pub connection_config: Vec<String>,
}

/// `GET /v1/providers` filters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProviderQuery {
    /// Only providers of this category (`crm`, `mail`, `calendar`, …).
    pub category: Option<String>,
    /// Only this auth mode (`OAUTH2`, `OAUTH2_CC`, `API_KEY`, `BASIC`, …).
    pub auth_mode: Option<String>,
    /// Names containing this text (case-insensitive).
    pub q: Option<String>,
}

/// An integration as returned (never the secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct Integration {
    /// Id.
    pub id: Uuid,
    /// The app's key for it (Nango's `Provider-Config-Key`).
    pub unique_key: String,
    /// Catalog provider.
    pub provider: String,
    /// OAuth client id.
    pub client_id: Option<String>,
    /// Whether a client secret is stored (it is never returned).
    pub has_client_secret: bool,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// Authorization URL parameters overriding the provider's.
    #[schema(value_type = Object)]
    pub authorization_params: serde_json::Value,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Updated.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<Row> for Integration {
    fn from(r: Row) -> Self {
        Integration {
            id: r.id,
            unique_key: r.unique_key,
            provider: r.provider,
            client_id: r.client_id,
            has_client_secret: r.client_secret.is_some(),
            scopes: r.scopes,
            authorization_params: r.authorization_params,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `POST /v1/integrations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegration {
    /// The app's key (1–100 of `a-z 0-9 - _`).
    pub unique_key: String,
    /// Catalog provider name.
    pub provider: String,
    /// OAuth client id.
    pub client_id: Option<String>,
    /// OAuth client secret (stored encrypted, never returned).
    pub client_secret: Option<String>,
    /// Scopes; the provider's defaults when absent.
    pub scopes: Option<Vec<String>>,
    /// Authorization URL parameter overrides.
    pub authorization_params: Option<BTreeMap<String, String>>,
}

/// `PATCH /v1/integrations/{key}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchIntegration {
    /// New client id.
    pub client_id: Option<String>,
    /// New client secret.
    pub client_secret: Option<String>,
    /// New scopes.
    pub scopes: Option<Vec<String>>,
    /// New authorization parameter overrides.
    pub authorization_params: Option<BTreeMap<String, String>>,
}

fn check_text(field: &str, v: &Option<String>, max: usize) -> Result<(), ApiError> {
    match v {
        Some(s) if s.is_empty() || s.len() > max || s.chars().any(char::is_control) => {
            Err(ApiError::unprocessable("invalid_body", format!("{field} must be 1 to {max} characters")))
        }
        _ => Ok(()),
    }
}

fn check_scopes(scopes: &[String]) -> Result<(), ApiError> {
    if scopes.len() > 200 || scopes.iter().any(|s| s.is_empty() || s.len() > 500 || s.chars().any(char::is_whitespace))
    {
        return Err(ApiError::unprocessable(
            "invalid_scopes",
            "scopes must be at most 200 non-empty strings without spaces",
        ));
    }
    Ok(())
}

/// The catalog as listed, filtered by category, auth mode and name.
pub fn providers(c: &Connections, q: &ProviderQuery) -> Vec<ProviderView> {
    let needle = q.q.as_deref().map(str::to_lowercase);
    c.catalog
        .all()
        .filter(|p| q.auth_mode.as_deref().is_none_or(|m| p.auth_mode.eq_ignore_ascii_case(m)))
        .filter(|p| q.category.as_deref().is_none_or(|cat| p.categories().iter().any(|c| c == cat)))
        .filter(|p| needle.as_deref().is_none_or(|n| p.name.contains(n)))
        .map(|p| ProviderView {
            name: p.name.clone(),
            auth_mode: p.auth_mode.clone(),
            proxy_base_url: p.proxy_base_url().map(str::to_string),
            default_scopes: p.default_scopes(),
            categories: p.categories(),
            docs: p.str("docs").map(str::to_string),
            alias: p.str("alias").map(str::to_string),
            refresh: p.str("refresh").unwrap_or("reusable").to_string(),
            connection_config: p
                .raw
                .get("connection_config")
                .and_then(serde_json::Value::as_object)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
        })
        .collect()
}

/// An integration by id, or 404.
pub async fn by_id(c: &Connections, id: Uuid) -> Result<Row, ApiError> {
    db::integration_by_id(&c.pool, id).await?.ok_or_else(|| ApiError::not_found("integration not found"))
}

/// An integration by key, or 404.
pub async fn by_key(c: &Connections, key: &str) -> Result<Row, ApiError> {
    db::integration_by_key(&c.pool, key).await?.ok_or_else(|| ApiError::not_found("integration not found"))
}

/// Creates an integration; `actor` is recorded in the audit log.
pub async fn create(c: &Connections, actor: &str, req: CreateIntegration) -> Result<Integration, ApiError> {
    let key_ok = (1..=100).contains(&req.unique_key.len())
        && req.unique_key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !key_ok {
        return Err(ApiError::unprocessable(
            "invalid_unique_key",
            "unique_key must be 1 to 100 of a-z, 0-9, '-' and '_'",
        ));
    }
    let provider = c.catalog.get(&req.provider).ok_or_else(|| {
        ApiError::unprocessable("unknown_provider", format!("no provider named {:?} in the catalog", req.provider))
    })?;
    check_text("client_id", &req.client_id, 1000)?;
    check_text("client_secret", &req.client_secret, 4000)?;
    if matches!(provider.auth_mode.as_str(), "OAUTH2" | "CUSTOM" | "OAUTH2_CC")
        && (req.client_id.is_none() || req.client_secret.is_none())
    {
        return Err(ApiError::unprocessable(
            "missing_credentials",
            format!("{} uses OAuth: client_id and client_secret are required", provider.name),
        ));
    }
    let scopes = req.scopes.unwrap_or_else(|| provider.default_scopes());
    check_scopes(&scopes)?;
    let id = Uuid::now_v7();
    let new = db::NewIntegration {
        id,
        unique_key: &req.unique_key,
        provider: &provider.name,
        client_id: req.client_id.as_deref(),
        client_secret: req.client_secret.as_ref().map(|s| c.vault.seal_client_secret(id, s)),
        scopes: &scopes,
        authorization_params: serde_json::to_value(req.authorization_params.unwrap_or_default()).unwrap_or_default(),
    };
    let row = db::insert_integration(&c.pool, new).await?.ok_or_else(|| {
        ApiError::conflict("integration_exists", format!("an integration with key {:?} exists", req.unique_key))
    })?;
    let detail = serde_json::json!({"provider": row.provider});
    crate::audit::record(&c.pool, actor, None, "integration.create", Some(&row.unique_key), detail).await?;
    Ok(row.into())
}

/// A page of integrations, in key order.
pub async fn list(c: &Connections, page: &PageQuery) -> Result<Page<Integration>, ApiError> {
    let limit = page.limit()?;
    let after = page.cursor_text()?;
    let rows = db::list_integrations(&c.pool, after.as_deref(), limit + 1).await?;
    Ok(Page::from_rows(rows, limit, |r| crate::pagination::encode(&r.unique_key)).map(Integration::from))
}

/// Changes integration `key`'s credentials, scopes or parameters.
pub async fn update(c: &Connections, actor: &str, key: &str, req: PatchIntegration) -> Result<Integration, ApiError> {
    check_text("client_id", &req.client_id, 1000)?;
    check_text("client_secret", &req.client_secret, 4000)?;
    if let Some(s) = &req.scopes {
        check_scopes(s)?;
    }
    let current = by_key(c, key).await?;
    let changes = db::IntegrationChanges {
        client_id: req.client_id.as_deref(),
        client_secret: req.client_secret.as_ref().map(|s| c.vault.seal_client_secret(current.id, s)),
        scopes: req.scopes.as_deref(),
        authorization_params: req.authorization_params.map(|p| serde_json::to_value(p).unwrap_or_default()),
    };
    let row = db::update_integration(&c.pool, current.id, changes).await?;
    let detail = serde_json::json!({});
    crate::audit::record(&c.pool, actor, None, "integration.update", Some(&row.unique_key), detail).await?;
    Ok(row.into())
}

/// Deletes integration `key` (its connections go with it).
pub async fn delete(c: &Connections, actor: &str, key: &str) -> Result<(), ApiError> {
    if !db::delete_integration(&c.pool, key).await? {
        return Err(ApiError::not_found("integration not found"));
    }
    crate::audit::record(&c.pool, actor, None, "integration.delete", Some(key), serde_json::json!({})).await?;
    Ok(())
}
