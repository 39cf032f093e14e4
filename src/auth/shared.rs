//! Data an organization shares with its members (connections, storage buckets,
//! knowledge spaces): whether a user may read or write it. Asked on every call,
//! so leaving an organization or being removed ends access at once. Writing
//! includes reading (a custom role may list only the write permission).

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;

/// What a caller wants to do with something an organization shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// See it and use it (`org:<area>:read`).
    Read,
    /// Change or delete it, or make one (`org:<area>:write`).
    Write,
}

/// The answer for one user, organization and need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Not a member: the caller must not learn the thing exists (404).
    NotMember,
    /// A member whose role lacks the named permission (403).
    Lacks(String),
    /// Allowed.
    Granted,
}

impl Grant {
    /// The answer of a JSON API: a non-member gets `missing()` (the 404 of the
    /// thing asked for), a member without the permission 403 `insufficient_permission`.
    pub fn answer(self, missing: impl FnOnce() -> ApiError) -> Result<(), ApiError> {
        match self {
            Grant::Granted => Ok(()),
            Grant::NotMember => Err(missing()),
            Grant::Lacks(perm) => Err(ApiError::forbidden(format!("your role in this organization lacks {perm}"))
                .with_code("insufficient_permission")),
        }
    }
}

/// Whether `user` may do `need` with what organization `org` shares in `area`
/// (`connections`, `storage`, `knowledge`).
pub async fn grant(pool: &PgPool, org: Uuid, user: Uuid, area: &str, need: Need) -> Result<Grant, sqlx::Error> {
    let granting = permissions(area, need);
    Ok(match super::db::org_permissions(pool, org, user).await? {
        None => Grant::NotMember,
        Some(p) if p.iter().any(|x| granting.contains(x)) => Grant::Granted,
        Some(_) => Grant::Lacks(granting[0].clone()),
    })
}

/// The organizations in which `user` may do `need` in `area`.
pub async fn orgs_granting(pool: &PgPool, user: Uuid, area: &str, need: Need) -> Result<Vec<Uuid>, sqlx::Error> {
    super::db::orgs_with_any_permission(pool, user, &permissions(area, need)).await
}

/// The permissions that allow `need` in `area`, the one named for it first
/// (writing includes reading).
fn permissions(area: &str, need: Need) -> Vec<String> {
    let write = format!("org:{area}:write");
    match need {
        Need::Read => vec![format!("org:{area}:read"), write],
        Need::Write => vec![write],
    }
}
