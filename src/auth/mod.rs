//! Auth: users, passwords, sessions, access tokens (EdDSA JWT + JWKS), service keys,
//! sign-in limits and lockout, and the extractors other areas use to identify the
//! caller ([`Caller`], [`CurrentUser`]).

pub mod cache;
pub mod db;
pub mod email;
pub mod external;
pub mod jwks;
pub mod mfa;
pub mod passkeys;
pub mod password;
mod routes;
pub mod service;
pub mod shared;
pub mod social;
pub mod tokens;
pub mod types;

pub use routes::{ACT_AS_HEADER, Caller, CurrentUser, Peer, SESSION_COOKIE, routes};
pub(crate) use routes::{check_login_origin, client_info, cookie_value, session_cookie, with_session};
pub use service::{AuthState, Principal, Via};
