//! Integrations: created, read, updated and deleted by a service key. The client
//! secret is encrypted with the keyring (the integration id as associated data) and
//! never returned; `GET /v1/providers` lists the catalog.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson};

/// The connection routes present so far.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers))
        .routes(routes!(create_integration, list_integrations))
        .routes(routes!(get_integration, patch_integration, delete_integration))
}

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
}

/// The provider catalog.
#[utoipa::path(get, path = "/v1/providers", tag = "connections", responses((status = 200, body = Vec<ProviderView>)))]
async fn list_providers(State(state): State<AppState>, _caller: Caller) -> ApiJson<Vec<ProviderView>> {
    ApiJson(
        state
            .catalog
            .all()
            .map(|p| ProviderView {
                name: p.name.clone(),
                auth_mode: p.auth_mode.clone(),
                proxy_base_url: p.proxy_base_url().map(str::to_string),
                default_scopes: p.default_scopes(),
            })
            .collect(),
    )
}

/// An integration row (the secret still sealed).
#[derive(Debug, Clone, FromRow)]
pub struct Row {
    /// Id.
    pub id: Uuid,
    /// The app's key.
    pub unique_key: String,
    /// Catalog provider.
    pub provider: String,
    /// Client id.
    pub client_id: Option<String>,
    /// Sealed client secret.
    pub client_secret: Option<Vec<u8>>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Authorization parameter overrides.
    pub authorization_params: serde_json::Value,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Updated.
    pub updated_at: OffsetDateTime,
}

const COLS: &str =
    "id, unique_key, provider, client_id, client_secret, scopes, authorization_params, created_at, updated_at";

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

fn require_service(caller: &Caller) -> Result<(), ApiError> {
    if caller.0.is_service() {
        Ok(())
    } else {
        Err(ApiError::forbidden("integrations are managed with a service key").with_code("insufficient_scope"))
    }
}

use super::connect::unprocessable;

fn check_text(field: &str, v: &Option<String>, max: usize) -> Result<(), ApiError> {
    match v {
        Some(s) if s.is_empty() || s.len() > max || s.chars().any(char::is_control) => {
            Err(unprocessable("invalid_body", format!("{field} must be 1 to {max} characters")))
        }
        _ => Ok(()),
    }
}

fn check_scopes(scopes: &[String]) -> Result<(), ApiError> {
    if scopes.len() > 200 || scopes.iter().any(|s| s.is_empty() || s.len() > 500 || s.chars().any(char::is_whitespace))
    {
        return Err(unprocessable("invalid_scopes", "scopes must be at most 200 non-empty strings without spaces"));
    }
    Ok(())
}

/// An integration by id.
pub async fn fetch_id(state: &AppState, id: Uuid) -> Result<Row, ApiError> {
    let sql = format!("SELECT {COLS} FROM integrations WHERE id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&state.pool).await?;
    row.ok_or_else(|| ApiError::not_found("integration not found"))
}

/// Create an integration.
#[utoipa::path(post, path = "/v1/integrations", tag = "connections", request_body = CreateIntegration,
    responses((status = 201, body = Integration), (status = 409, description = "integration_exists"), (status = 422)))]
async fn create_integration(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateIntegration>,
) -> Result<Response, ApiError> {
    require_service(&caller)?;
    let key_ok = (1..=100).contains(&req.unique_key.len())
        && req.unique_key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !key_ok {
        return Err(unprocessable("invalid_unique_key", "unique_key must be 1 to 100 of a-z, 0-9, '-' and '_'"));
    }
    let provider = state.catalog.get(&req.provider).ok_or_else(|| {
        unprocessable("unknown_provider", format!("no provider named {:?} in the catalog", req.provider))
    })?;
    check_text("client_id", &req.client_id, 1000)?;
    check_text("client_secret", &req.client_secret, 4000)?;
    if matches!(provider.auth_mode.as_str(), "OAUTH2" | "CUSTOM" | "OAUTH2_CC")
        && (req.client_id.is_none() || req.client_secret.is_none())
    {
        return Err(unprocessable(
            "missing_credentials",
            format!("{} uses OAuth: client_id and client_secret are required", provider.name),
        ));
    }
    let scopes = req.scopes.unwrap_or_else(|| provider.default_scopes());
    check_scopes(&scopes)?;
    let id = Uuid::now_v7();
    let secret = req.client_secret.as_ref().map(|s| state.keyring.encrypt(s.as_bytes(), id.as_bytes()));
    let params = serde_json::to_value(req.authorization_params.unwrap_or_default()).unwrap_or_default();
    let sql = format!(
        "INSERT INTO integrations (id, unique_key, provider, client_id, client_secret, scopes, authorization_params) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (unique_key) DO NOTHING RETURNING {COLS}"
    );
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(&req.unique_key)
        .bind(&provider.name)
        .bind(&req.client_id)
        .bind(secret)
        .bind(&scopes)
        .bind(params)
        .fetch_optional(&state.pool)
        .await?;
    let row = row.ok_or_else(|| {
        ApiError::conflict("integration_exists", format!("an integration with key {:?} exists", req.unique_key))
    })?;
    crate::audit::record(
        &state.pool,
        &caller.0.actor(),
        None,
        "integration.create",
        Some(&row.unique_key),
        serde_json::json!({"provider": row.provider}),
    )
    .await?;
    Ok((StatusCode::CREATED, ApiJson(Integration::from(row))).into_response())
}

/// List integrations.
#[utoipa::path(get, path = "/v1/integrations", tag = "connections", responses((status = 200, body = Vec<Integration>)))]
async fn list_integrations(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<ApiJson<Vec<Integration>>, ApiError> {
    require_service(&caller)?;
    let sql = format!("SELECT {COLS} FROM integrations ORDER BY unique_key");
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&state.pool).await?;
    Ok(ApiJson(rows.into_iter().map(Integration::from).collect()))
}

/// An integration by key, or 404.
pub async fn fetch(state: &AppState, key: &str) -> Result<Row, ApiError> {
    let sql = format!("SELECT {COLS} FROM integrations WHERE unique_key = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(key).fetch_optional(&state.pool).await?;
    row.ok_or_else(|| ApiError::not_found("integration not found"))
}

/// One integration.
#[utoipa::path(get, path = "/v1/integrations/{key}", tag = "connections", params(("key" = String, Path)),
    responses((status = 200, body = Integration), (status = 404)))]
async fn get_integration(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<ApiJson<Integration>, ApiError> {
    require_service(&caller)?;
    fetch(&state, &key).await.map(|r| ApiJson(r.into()))
}

/// Change an integration's credentials, scopes or parameters.
#[utoipa::path(patch, path = "/v1/integrations/{key}", tag = "connections", params(("key" = String, Path)),
    request_body = PatchIntegration, responses((status = 200, body = Integration), (status = 404)))]
async fn patch_integration(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    ApiJson(req): ApiJson<PatchIntegration>,
) -> Result<ApiJson<Integration>, ApiError> {
    require_service(&caller)?;
    check_text("client_id", &req.client_id, 1000)?;
    check_text("client_secret", &req.client_secret, 4000)?;
    if let Some(s) = &req.scopes {
        check_scopes(s)?;
    }
    let current = fetch(&state, &key).await?;
    let secret = req.client_secret.as_ref().map(|s| state.keyring.encrypt(s.as_bytes(), current.id.as_bytes()));
    let params = req.authorization_params.map(|p| serde_json::to_value(p).unwrap_or_default());
    let sql = format!(
        "UPDATE integrations SET client_id = coalesce($2, client_id), client_secret = coalesce($3, client_secret), \
         scopes = coalesce($4, scopes), authorization_params = coalesce($5, authorization_params), updated_at = now() \
         WHERE id = $1 RETURNING {COLS}"
    );
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(current.id)
        .bind(&req.client_id)
        .bind(secret)
        .bind(&req.scopes)
        .bind(params)
        .fetch_one(&state.pool)
        .await?;
    crate::audit::record(
        &state.pool,
        &caller.0.actor(),
        None,
        "integration.update",
        Some(&row.unique_key),
        serde_json::json!({}),
    )
    .await?;
    Ok(ApiJson(row.into()))
}

/// Delete an integration.
#[utoipa::path(delete, path = "/v1/integrations/{key}", tag = "connections", params(("key" = String, Path)),
    responses((status = 204), (status = 404)))]
async fn delete_integration(
    State(state): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_service(&caller)?;
    let r = sqlx::query("DELETE FROM integrations WHERE unique_key = $1").bind(&key).execute(&state.pool).await?;
    if r.rows_affected() == 0 {
        return Err(ApiError::not_found("integration not found"));
    }
    crate::audit::record(&state.pool, &caller.0.actor(), None, "integration.delete", Some(&key), serde_json::json!({}))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The client secret of an integration, decrypted (for the connect flow).
pub fn client_secret(state: &AppState, id: Uuid, sealed: &[u8]) -> Result<String, ApiError> {
    let plain = state.keyring.decrypt(sealed, id.as_bytes()).map_err(ApiError::internal)?;
    String::from_utf8(plain).map_err(ApiError::internal)
}
