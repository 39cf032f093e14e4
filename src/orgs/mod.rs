//! Organizations: create, rename, delete (with confirmation); members with roles —
//! built-in `org:owner`, `org:admin`, `org:member`, or custom named sets of
//! permission strings — where an organization always keeps an owner; invitations
//! by email (single-use token, expiry, accepted by the signed-in user whose
//! verified email matches; declined, revoked, resent); and the session's active
//! organization, whose claims (`org_id`, `org_slug`, `org_role`,
//! `org_permissions`) access tokens carry. Every route checks membership (else
//! 404) and the permission (else 403) inside its handler.
//!
//! The permissions of every role, built-in or custom, are read from one view
//! (`org_role_permissions`, migration 20); auth reads the same view for the
//! token claims.

pub mod db;
mod routes;
pub mod service;
pub mod types;

pub use routes::routes;
