//! The vault: the only code that seals and opens the connections' secrets, so
//! plaintext tokens and client secrets exist only here and in the outgoing request
//! being built. Each kind has its associated data fixed here: connection
//! credentials are bound to the connection id, client secrets to the integration
//! id, PKCE verifiers to the hash of the OAuth `state` they belong to.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::crypto::{CryptoError, Keyring};

/// A connection's credentials as sealed in its row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// Access token.
    pub access_token: String,
    /// Refresh token.
    pub refresh_token: Option<String>,
    /// Access token expiry.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// The access token's lifetime when it was issued, in seconds (remembered so
    /// the refresh margin fits the token; absent in credentials stored before it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_secs: Option<i64>,
    /// The provider's last token response.
    pub raw: Value,
}

/// What the proxy needs of sealed credentials: the access token, its expiry and
/// lifetime (the refresh token and the provider's raw answer are skipped, not built).
#[derive(Debug, Deserialize)]
pub struct Access {
    /// Access token.
    pub access_token: String,
    /// Its expiry.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub expires_at: Option<OffsetDateTime>,
    /// Its lifetime when issued.
    #[serde(default)]
    pub lifetime_secs: Option<i64>,
}

/// Why a secret could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Decryption failed (unknown key, other associated data, tampering).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The plaintext is not what was sealed there.
    #[error("sealed value is not well-formed: {0}")]
    Malformed(String),
}

impl From<VaultError> for crate::error::ApiError {
    fn from(e: VaultError) -> Self {
        crate::error::ApiError::internal(e)
    }
}

/// Seals and opens the connections' secrets with the process's keyring.
#[derive(Debug, Clone)]
pub struct Vault {
    keyring: Arc<Keyring>,
}

impl Vault {
    /// A vault over `keyring`.
    pub fn new(keyring: Arc<Keyring>) -> Vault {
        Vault { keyring }
    }

    /// Seals credentials with the connection id as associated data.
    pub fn seal_credentials(&self, connection: Uuid, c: &Credentials) -> Vec<u8> {
        // Serialising a struct of strings and JSON values cannot fail.
        self.keyring.encrypt(&serde_json::to_vec(c).unwrap_or_default(), connection.as_bytes())
    }

    /// Opens sealed credentials.
    pub fn open_credentials(&self, connection: Uuid, sealed: &[u8]) -> Result<Credentials, VaultError> {
        let plain = self.keyring.decrypt(sealed, connection.as_bytes())?;
        serde_json::from_slice(&plain).map_err(|e| VaultError::Malformed(e.to_string()))
    }

    /// Opens only the access part of sealed credentials (the proxy's per-call read).
    pub fn open_access(&self, connection: Uuid, sealed: &[u8]) -> Result<Access, VaultError> {
        let plain = self.keyring.decrypt(sealed, connection.as_bytes())?;
        serde_json::from_slice(&plain).map_err(|e| VaultError::Malformed(e.to_string()))
    }

    /// Seals an integration's client secret (its id as associated data).
    pub fn seal_client_secret(&self, integration: Uuid, secret: &str) -> Vec<u8> {
        self.keyring.encrypt(secret.as_bytes(), integration.as_bytes())
    }

    /// Opens an integration's client secret.
    pub fn open_client_secret(&self, integration: Uuid, sealed: &[u8]) -> Result<String, VaultError> {
        let plain = self.keyring.decrypt(sealed, integration.as_bytes())?;
        String::from_utf8(plain).map_err(|e| VaultError::Malformed(e.to_string()))
    }

    /// Seals a PKCE verifier under the hash of its OAuth `state`.
    pub fn seal_verifier(&self, state_hash: &[u8], verifier: &str) -> Vec<u8> {
        self.keyring.encrypt(verifier.as_bytes(), state_hash)
    }

    /// Opens a PKCE verifier.
    pub fn open_verifier(&self, state_hash: &[u8], sealed: &[u8]) -> Result<String, VaultError> {
        let plain = self.keyring.decrypt(sealed, state_hash)?;
        String::from_utf8(plain).map_err(|e| VaultError::Malformed(e.to_string()))
    }
}
