//! Request and response types of the connections API.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// `POST /v1/connect/sessions`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConnectSession {
    /// Connect for this organization (shared with its members; `org:connections:write`).
    #[serde(default)]
    pub org_id: Option<Uuid>,
    /// Integration keys the user may connect (all when absent).
    pub allowed_integrations: Option<Vec<String>>,
    /// Where the browser goes after the flow (a path here or an allowed origin).
    pub return_url: Option<String>,
}

/// A connect session.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectSessionView {
    /// The token to put in connect links (shown once).
    pub token: String,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// A link per allowed integration.
    pub links: std::collections::BTreeMap<String, String>,
}

/// A connection as returned (never a token; read from its row as it is).
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Connection {
    /// Id (send as `Connection-Id`).
    pub id: Uuid,
    /// Integration key.
    pub integration: String,
    /// Provider.
    pub provider: String,
    /// The external account.
    pub external_account_id: String,
    /// `connected` or `needs_reauth`.
    pub status: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Access token expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Last token exchange or refresh.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_refresh_at: Option<OffsetDateTime>,
    /// Last refresh error.
    pub last_error: Option<String>,
    /// App metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The organization that shares it (absent for the user's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<Uuid>,
}

/// Filter of the connection list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConnQuery {
    /// Only this integration.
    pub integration: Option<String>,
    /// The organization's shared connections instead of mine (`org:connections:read`).
    pub org_id: Option<Uuid>,
}

/// `PATCH /v1/connections/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchConnection {
    /// Replace the app metadata (a JSON object, ≤ 8 KB).
    #[schema(value_type = Object)]
    pub metadata: Value,
}

/// `POST /v1/connections`: credentials for an API-key or basic-auth provider.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyConnection {
    /// Store it for this organization (shared with its members; `org:connections:write`).
    #[serde(default)]
    pub org_id: Option<Uuid>,
    /// Integration key.
    pub integration: String,
    /// The API key (API_KEY providers).
    pub api_key: Option<String>,
    /// Username (BASIC providers).
    pub username: Option<String>,
    /// Password (BASIC providers).
    pub password: Option<String>,
    /// Which external account this is (default `default`).
    pub external_account_id: Option<String>,
    /// Client id (OAUTH2_CC providers; the integration's when absent).
    pub client_id: Option<String>,
    /// Client secret (OAUTH2_CC providers; stored encrypted, never returned).
    pub client_secret: Option<String>,
    /// Connection configuration the provider declares (`{"subdomain": "acme"}`).
    #[schema(value_type = Option<Object>)]
    pub connection_config: Option<serde_json::Value>,
}

/// A connection's access token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// The access token.
    pub access_token: String,
    /// Its expiry, when known.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// Query of the token route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// Refresh now even if the token is still fresh.
    #[serde(default)]
    pub force: bool,
}
