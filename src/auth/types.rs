//! Request and response bodies of the auth API.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::db::{SessionRow, UserRow};

/// `POST /v1/auth/sign-up`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUpRequest {
    /// Email address (unique, case-insensitively).
    pub email: String,
    /// Password (policy: minimum length, not a common password).
    pub password: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Client-writable metadata (JSON object, ≤ 8 KB).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub unsafe_metadata: Option<serde_json::Value>,
}

/// `POST /v1/auth/sign-in`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    /// Email address.
    pub email: String,
    /// Password.
    pub password: String,
}

/// `POST /v1/auth/sign-out`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignOutRequest {
    /// Sign out of every session, not only this one.
    #[serde(default)]
    pub all: bool,
}

/// `POST /v1/me/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The current password.
    pub current_password: String,
    /// The new password.
    pub new_password: String,
}

/// `PATCH /v1/me`. Absent fields are left alone; `null` clears `name`/`image_url`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMeRequest {
    /// Display name (≤ 256 characters).
    #[serde(default, deserialize_with = "crate::error::double_option")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    /// Avatar URL (http or https).
    #[serde(default, deserialize_with = "crate::error::double_option")]
    #[schema(value_type = Option<String>)]
    pub image_url: Option<Option<String>>,
    /// Replaces the unsafe (client-writable) metadata.
    #[schema(value_type = Option<Object>)]
    pub unsafe_metadata: Option<serde_json::Value>,
    /// Replaces the public metadata (service keys only).
    #[schema(value_type = Option<Object>)]
    pub public_metadata: Option<serde_json::Value>,
    /// Replaces the private metadata (service keys only).
    #[schema(value_type = Option<Object>)]
    pub private_metadata: Option<serde_json::Value>,
}

/// A user as shown to API clients.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// Id.
    pub id: Uuid,
    /// Email (absent for an externally provisioned user not yet described by a webhook).
    pub email: Option<String>,
    /// Whether the email is verified.
    pub email_verified: bool,
    /// Display name.
    pub name: Option<String>,
    /// Avatar URL.
    pub image_url: Option<String>,
    /// Public metadata (readable by the user).
    #[schema(value_type = Object)]
    pub public_metadata: serde_json::Value,
    /// Private metadata: present only for service keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub private_metadata: Option<serde_json::Value>,
    /// Unsafe metadata (client-writable).
    #[schema(value_type = Object)]
    pub unsafe_metadata: serde_json::Value,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Updated.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl UserView {
    /// The view of `row`; `private` includes private metadata.
    pub fn of(row: UserRow, private: bool) -> UserView {
        UserView {
            id: row.id,
            email: row.email,
            email_verified: row.email_verified_at.is_some(),
            name: row.name,
            image_url: row.image_url,
            public_metadata: row.public_metadata,
            private_metadata: private.then_some(row.private_metadata),
            unsafe_metadata: row.unsafe_metadata,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The answer to sign-up and sign-in.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthResponse {
    /// The user.
    pub user: UserView,
    /// The opaque session token (also set as the `carmenta_session` cookie).
    pub session_token: String,
    /// A short-lived access token (JWT).
    pub access_token: String,
    /// When the access token expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// When the session expires.
    #[serde(with = "time::serde::rfc3339")]
    pub session_expires_at: OffsetDateTime,
}

/// The answer to `POST /v1/auth/token`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// A short-lived access token (JWT).
    pub access_token: String,
    /// `Bearer`.
    pub token_type: &'static str,
    /// When it expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A session as listed to its owner.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Id.
    pub id: Uuid,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last activity.
    #[serde(with = "time::serde::rfc3339")]
    pub last_active_at: OffsetDateTime,
    /// Absolute expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// IP address at sign-in.
    pub ip: Option<String>,
    /// User agent at sign-in.
    pub user_agent: Option<String>,
    /// Whether this is the session making the request.
    pub current: bool,
    /// The admin who opened this session as the user (impersonation), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonated_by: Option<Uuid>,
}

impl SessionView {
    /// The view of `row`.
    pub fn of(row: SessionRow, current: Option<Uuid>) -> SessionView {
        SessionView {
            current: Some(row.id) == current,
            id: row.id,
            created_at: row.created_at,
            last_active_at: row.last_active_at,
            expires_at: row.expires_at,
            ip: row.ip,
            user_agent: row.user_agent,
            impersonated_by: row.impersonator_id,
        }
    }
}

/// A page of sessions, newest first.
pub type SessionList = crate::pagination::Page<SessionView>;

/// `POST /v1/auth/magic-link` and `POST /v1/auth/password/forgot`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailLinkRequest {
    /// The account's email.
    pub email: String,
    /// Where the hosted page sends the browser afterwards (allow-listed).
    #[serde(default)]
    pub redirect_url: Option<String>,
}

/// A body carrying an emailed token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The token from the mailed link.
    pub token: String,
}

/// `POST /v1/auth/password/reset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPasswordRequest {
    /// The token from the mailed link.
    pub token: String,
    /// The new password.
    pub new_password: String,
}

/// An acknowledgement that does not reveal whether an account exists.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Always `accepted`.
    pub status: &'static str,
}

/// The answer to email verification.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifiedResponse {
    /// The user, now verified.
    pub user: UserView,
}

/// The answer to a first factor when the user has a second one (HTTP 202): no
/// session yet; send the second factor with `mfa_token` to `POST /v1/auth/mfa/verify`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MfaChallenge {
    /// Always `needs_second_factor`.
    pub status: &'static str,
    /// The single-use token of this step (valid 10 minutes, five attempts).
    pub mfa_token: String,
    /// The second factors the user can use: `totp`, `backup_code`, `passkey`.
    pub factors: Vec<String>,
    /// When the token expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// The second factor of a sign-in: exactly one of `code` and `backup_code`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaVerifyRequest {
    /// The token from the 202 answer of the first factor.
    pub mfa_token: String,
    /// A six-digit code from the authenticator app.
    #[serde(default)]
    pub code: Option<String>,
    /// One of the user's backup codes (used up).
    #[serde(default)]
    pub backup_code: Option<String>,
    /// A passkey's answer to the ceremony started with `POST /v1/auth/mfa/passkey`.
    #[serde(default)]
    pub passkey: Option<PasskeyAssertion>,
}

/// The caller's second factors.
#[derive(Debug, Serialize, ToSchema)]
pub struct MfaStatus {
    /// Whether a confirmed authenticator app (TOTP) is enrolled.
    pub totp: bool,
    /// Whether an enrolment waits for its confirming code.
    pub totp_pending: bool,
    /// Unused backup codes.
    pub backup_codes_remaining: i64,
    /// Second factors a sign-in would ask for (`totp`, `backup_code`, `passkey`).
    pub factors: Vec<String>,
}

/// A started TOTP enrolment: add it to an authenticator app (scan the QR code or
/// type the secret), then confirm with a code.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpEnrollment {
    /// The secret, base32 (for typing in).
    pub secret: String,
    /// The `otpauth://totp/…` URI.
    pub otpauth_url: String,
    /// The URI as a QR code, SVG.
    pub qr_svg: String,
    /// The same SVG as a `data:` URL for an `<img>`.
    pub qr_data_url: String,
}

/// A code from the authenticator app.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// Six digits.
    pub code: String,
}

/// Backup codes, shown once: each signs in once in place of the app's code.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupCodes {
    /// The codes (`xxxx-xxxx-xxxx`).
    pub codes: Vec<String>,
}

/// Proof of identity for a sensitive change: one of the password, an
/// authenticator code or a backup code.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReauthRequest {
    /// The account's password.
    #[serde(default)]
    pub password: Option<String>,
    /// A code from the authenticator app.
    #[serde(default)]
    pub code: Option<String>,
    /// A backup code (used up).
    #[serde(default)]
    pub backup_code: Option<String>,
}

/// A social sign-in provider offered to users.
#[derive(Debug, Serialize, ToSchema)]
pub struct SocialProviderView {
    /// Id (`google`, `github`, … or the id an OpenID provider was added under).
    pub id: String,
    /// Name for buttons.
    pub name: String,
}

/// Starts a social sign-in (or link) for an app with its own UI. The app keeps
/// a random `code_verifier` and sends its S256 hash; after the provider, the
/// browser comes back to `redirect_url?code=…`, and the app exchanges that code
/// with the verifier.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SocialStartRequest {
    /// Where the browser goes with the code (a path here or an allowed origin).
    pub redirect_url: String,
    /// BASE64URL(SHA-256(code_verifier)), 43 characters.
    pub code_challenge: String,
    /// Must be `S256` (`plain` is refused).
    pub code_challenge_method: String,
}

/// Where to send the browser.
#[derive(Debug, Serialize, ToSchema)]
pub struct SocialStart {
    /// The provider's authorization URL.
    pub authorization_url: String,
    /// When the flow expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Ends an app's social flow.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SocialExchangeRequest {
    /// The `code` the browser brought back.
    pub code: String,
    /// The verifier whose S256 hash started the flow.
    pub code_verifier: String,
}

/// A sign-in identity at a social provider, linked to the user.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityView {
    /// Id.
    pub id: Uuid,
    /// Provider id.
    pub provider: String,
    /// The provider's id of the user.
    pub subject: String,
    /// The email the provider gave.
    pub email: Option<String>,
    /// Whether the provider said the email is verified.
    pub email_verified: bool,
    /// Linked.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last sign-in with it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_sign_in_at: Option<OffsetDateTime>,
}

/// Configures a social provider (service key).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutSocialProvider {
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret (write-only; omit to keep the stored one).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// OpenID Connect discovery URL (required unless the id is a built-in provider).
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// GitHub Enterprise Server's URL (`github` only).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Scopes in place of the provider's defaults.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Name on buttons.
    #[serde(default)]
    pub name: Option<String>,
}

/// A configured social provider as the service-key API shows it (never the secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct SocialProviderAdminView {
    /// Id.
    pub id: String,
    /// `oidc`, or the built-in provider's id.
    pub kind: String,
    /// Name on buttons.
    pub name: String,
    /// OAuth client id.
    pub client_id: String,
    /// Whether a client secret is stored.
    pub has_client_secret: bool,
    /// OpenID Connect discovery URL.
    pub discovery_url: Option<String>,
    /// The provider's own server (GitHub Enterprise Server).
    pub base_url: Option<String>,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// `config` (read-only here) or `api`.
    pub source: &'static str,
}

/// A WebAuthn ceremony to run in the browser: pass `options` to
/// `navigator.credentials.create()` or `.get()` (after decoding its base64url
/// fields), then send the answer back with `ceremony_id`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyOptions {
    /// The ceremony (valid five minutes, used once).
    pub ceremony_id: Uuid,
    /// `PublicKeyCredentialCreationOptions` or `…RequestOptions` as JSON (`{"publicKey": …}`).
    #[schema(value_type = Object)]
    pub options: serde_json::Value,
}

/// The browser's new credential for a passkey registration.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyRegistration {
    /// From the start.
    pub ceremony_id: Uuid,
    /// The `PublicKeyCredential` from `navigator.credentials.create()`, as JSON.
    #[schema(value_type = Object)]
    pub credential: serde_json::Value,
    /// A name for it (default "Passkey").
    #[serde(default)]
    pub name: Option<String>,
}

/// A passkey's signed answer to a sign-in or second-factor ceremony.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyAssertion {
    /// From the start.
    pub ceremony_id: Uuid,
    /// The `PublicKeyCredential` from `navigator.credentials.get()`, as JSON.
    #[schema(value_type = Object)]
    pub credential: serde_json::Value,
}

/// Starts a passkey sign-in: with an email, for that account's passkeys;
/// without, for any passkey the device holds for this site (discoverable).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeySignInStart {
    /// The account's email (optional).
    #[serde(default)]
    pub email: Option<String>,
}

/// Starts a passkey as the second factor of a sign-in step.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaPasskeyStart {
    /// The token from the first factor's 202 answer.
    pub mfa_token: String,
}

/// A passkey as listed to its owner.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyView {
    /// Id.
    pub id: Uuid,
    /// The user's name for it.
    pub name: String,
    /// Added.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last used.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
}

/// Renames a passkey.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenamePasskey {
    /// 1-64 characters.
    pub name: String,
}
