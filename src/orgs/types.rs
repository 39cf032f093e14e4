//! Request and response types of the organization routes.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// An organization as the caller sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Org {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Slug (unique, lowercase letters, digits and `-`).
    pub slug: String,
    /// Image URL.
    pub image_url: Option<String>,
    /// The caller's role in it.
    pub role: String,
    /// The caller's permissions in it.
    pub permissions: Vec<String>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// `POST /v1/orgs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// Name (1–200 characters).
    pub name: String,
    /// Slug; made from the name when absent.
    pub slug: Option<String>,
    /// Image URL (http or https).
    pub image_url: Option<String>,
}

/// `PATCH /v1/orgs/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchOrg {
    /// New name.
    pub name: Option<String>,
    /// New slug.
    pub slug: Option<String>,
    /// New image URL (`null` clears it).
    #[serde(default, deserialize_with = "crate::error::double_option")]
    #[schema(value_type = Option<String>)]
    pub image_url: Option<Option<String>>,
}

/// A member.
#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    /// User id.
    pub user_id: Uuid,
    /// Email.
    pub email: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Role key.
    pub role: String,
    /// Joined.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// `POST /v1/orgs/{id}/members` (service keys only).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The user to add.
    pub user_id: Uuid,
    /// Their role (default `org:member`).
    #[serde(default)]
    pub role: Option<String>,
}

/// `PATCH /v1/orgs/{id}/members/{user_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMember {
    /// The new role key (`org:admin`, `org:member`, `org:owner` or a custom one).
    pub role: String,
}

/// A role and what it may do.
#[derive(Debug, Serialize, ToSchema)]
pub struct Role {
    /// Key (`org:admin`, `org:reviewer`, …).
    pub key: String,
    /// Whether it is built in.
    pub builtin: bool,
    /// Permission strings.
    pub permissions: Vec<String>,
}

/// `POST /v1/orgs/{id}/roles`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRole {
    /// Key: `org:` and 1–40 of `a-z 0-9 _`.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Permission strings such as `org:knowledge:write`.
    pub permissions: Vec<String>,
}

/// An invitation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invitation {
    /// Id.
    pub id: Uuid,
    /// Invited email.
    pub email: String,
    /// Role given on acceptance.
    pub role: String,
    /// `pending`, `accepted`, `declined` or `revoked`.
    pub status: String,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// `POST /v1/orgs/{id}/invitations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    /// Email to invite.
    pub email: String,
    /// Role given on acceptance (default `org:member`).
    pub role: Option<String>,
    /// Where the emailed link points (allow-listed); the token is added as
    /// `invitation_token`.
    pub redirect_url: Option<String>,
}

/// `POST /v1/invitations/accept` and `/decline`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationToken {
    /// The token from the invitation email.
    pub token: String,
}

/// `POST /v1/invitations/sign-up`: an account for the invited email, joined at once.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationSignUp {
    /// The token from the invitation email (it proves the address).
    pub token: String,
    /// The new account's password.
    pub password: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
}

/// An invitation as its token shows it (the page behind the mailed link).
#[derive(Debug, Serialize, ToSchema)]
pub struct InvitationPreview {
    /// The organization's name.
    pub organization: String,
    /// The invited email.
    pub email: String,
    /// The role it gives.
    pub role: String,
    /// Whether an account with this email exists (sign in and accept) or not (sign up).
    pub account_exists: bool,
}

/// `PUT /v1/me/active-org`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetActiveOrg {
    /// The organization to make active, or `null` for none.
    pub org_id: Option<Uuid>,
}

/// `DELETE /v1/orgs/{id}` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ConfirmQuery {
    /// Must be `true`: deleting an organization deletes its shared data.
    pub confirm: Option<bool>,
}

/// A verified domain of an organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct Domain {
    /// The domain (`example.com`).
    pub domain: String,
    /// Role given to users who join through it.
    pub role: String,
    /// Added.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// `POST /v1/orgs/{id}/domains`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDomain {
    /// The domain; the caller's own verified email must be at it.
    pub domain: String,
    /// Role for users who join through it (default `org:member`; not `org:owner`).
    pub role: Option<String>,
}

/// An organization the caller may join through their email's verified domain.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgSuggestion {
    /// Organization id (`POST /v1/orgs/{id}/join`).
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The role joining gives.
    pub role: String,
}

impl From<super::db::MemberRow> for Member {
    fn from(m: super::db::MemberRow) -> Self {
        Member { user_id: m.user_id, email: m.email, name: m.name, role: m.role, created_at: m.created_at }
    }
}

impl From<super::db::DomainRow> for Domain {
    fn from(d: super::db::DomainRow) -> Self {
        Domain { domain: d.domain, role: d.role, created_at: d.created_at }
    }
}
