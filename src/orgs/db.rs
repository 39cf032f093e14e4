//! Every statement on the organization tables: organizations, members, roles
//! (custom ones; every role's permissions through the `org_role_permissions`
//! view), invitations.

use sqlx::{FromRow, PgConnection, PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

/// An organization with the caller's membership.
#[derive(Debug, Clone, FromRow)]
pub struct OrgRow {
    /// Id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Slug.
    pub slug: String,
    /// Image URL.
    pub image_url: Option<String>,
    /// Created.
    pub created_at: OffsetDateTime,
    /// The caller's role.
    pub role: String,
    /// The role's permissions.
    pub permissions: Vec<String>,
}

const ORG_FOR_USER: &str = "SELECT o.id, o.name, o.slug, o.image_url, o.created_at, m.role, \
     COALESCE(p.permissions, '{}') AS permissions \
     FROM organizations o JOIN org_members m ON m.org_id = o.id AND m.user_id = $1 \
     LEFT JOIN org_role_permissions p ON p.org_id = o.id AND p.key = m.role";

/// Organization `id` with `user`'s membership, or `None` if not a member.
pub async fn org_for(pool: &PgPool, user: Uuid, id: Uuid) -> Result<Option<OrgRow>, sqlx::Error> {
    let sql = format!("{ORG_FOR_USER} WHERE o.id = $2");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(user).bind(id).fetch_optional(pool).await
}

/// `user`'s organizations, by name.
pub async fn orgs_of(pool: &PgPool, user: Uuid) -> Result<Vec<OrgRow>, sqlx::Error> {
    let sql = format!("{ORG_FOR_USER} ORDER BY lower(o.name), o.id LIMIT 500");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(user).fetch_all(pool).await
}

/// Whether an error is the slug's unique violation.
pub fn slug_taken(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.constraint() == Some("organizations_slug_key"))
}

/// Creates an organization with `owner` as its owner.
pub async fn create(
    conn: &mut PgConnection,
    owner: Uuid,
    name: &str,
    slug: &str,
    image_url: Option<&str>,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO organizations (id, name, slug, image_url, created_by) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(name)
        .bind(slug)
        .bind(image_url)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO org_members (org_id, user_id, role) VALUES ($1, $2, 'org:owner')")
        .bind(id)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

/// An organization's name.
pub async fn org_name(pool: &PgPool, id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM organizations WHERE id = $1").bind(id).fetch_optional(pool).await
}

/// Changes name, slug and image (each when given).
pub async fn update(
    db: impl sqlx::PgExecutor<'_>,
    id: Uuid,
    name: Option<&str>,
    slug: Option<&str>,
    image_url: Option<Option<&str>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE organizations SET name = COALESCE($2, name), slug = COALESCE($3, slug),
         image_url = CASE WHEN $4 THEN $5 ELSE image_url END, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(name)
    .bind(slug)
    .bind(image_url.is_some())
    .bind(image_url.flatten())
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes an organization (members, roles and invitations with it).
pub async fn delete(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM organizations WHERE id = $1").bind(id).execute(db).await?;
    Ok(())
}

/// A member row.
#[derive(Debug, Clone, FromRow)]
pub struct MemberRow {
    /// User id.
    pub user_id: Uuid,
    /// Email.
    pub email: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Role.
    pub role: String,
    /// Joined.
    pub created_at: OffsetDateTime,
}

/// Members, oldest first.
pub async fn members(pool: &PgPool, org: Uuid) -> Result<Vec<MemberRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.user_id, u.email, u.name, m.role, m.created_at FROM org_members m JOIN users u ON u.id = m.user_id
         WHERE m.org_id = $1 ORDER BY m.created_at, m.user_id LIMIT 1000",
    )
    .bind(org)
    .fetch_all(pool)
    .await
}

/// One member.
pub async fn member(pool: &PgPool, org: Uuid, user: Uuid) -> Result<Option<MemberRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT m.user_id, u.email, u.name, m.role, m.created_at FROM org_members m JOIN users u ON u.id = m.user_id
         WHERE m.org_id = $1 AND m.user_id = $2",
    )
    .bind(org)
    .bind(user)
    .fetch_optional(pool)
    .await
}

/// Locks the organization's membership for a change (serialises the owner rule).
pub async fn lock_members(tx: &mut Transaction<'_, Postgres>, org: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE").bind(org).execute(&mut **tx).await?;
    Ok(())
}

/// A member's role (under the lock).
pub async fn role_of(tx: &mut Transaction<'_, Postgres>, org: Uuid, user: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT role FROM org_members WHERE org_id = $1 AND user_id = $2")
        .bind(org)
        .bind(user)
        .fetch_optional(&mut **tx)
        .await
}

/// How many owners the organization has (under the lock).
pub async fn owners(tx: &mut Transaction<'_, Postgres>, org: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM org_members WHERE org_id = $1 AND role = 'org:owner'")
        .bind(org)
        .fetch_one(&mut **tx)
        .await
}

/// Sets a member's role.
pub async fn set_role(
    tx: &mut Transaction<'_, Postgres>,
    org: Uuid,
    user: Uuid,
    role: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE org_members SET role = $3, updated_at = now() WHERE org_id = $1 AND user_id = $2")
        .bind(org)
        .bind(user)
        .bind(role)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Removes a member, and the organization from their sessions' active one.
pub async fn remove_member(tx: &mut Transaction<'_, Postgres>, org: Uuid, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM org_members WHERE org_id = $1 AND user_id = $2")
        .bind(org)
        .bind(user)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE sessions SET active_org_id = NULL WHERE user_id = $2 AND active_org_id = $1")
        .bind(org)
        .bind(user)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Every role of the organization: (key, built in, permissions).
pub async fn roles(pool: &PgPool, org: Uuid) -> Result<Vec<(String, bool, Vec<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.key, r.key IS NULL AS builtin, p.permissions FROM org_role_permissions p
         LEFT JOIN org_roles r ON r.org_id = p.org_id AND r.key = p.key
         WHERE p.org_id = $1 ORDER BY builtin DESC, p.key",
    )
    .bind(org)
    .fetch_all(pool)
    .await
}

/// Whether the organization has role `key`.
pub async fn role_exists(pool: &PgPool, org: Uuid, key: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM org_role_permissions WHERE org_id = $1 AND key = $2)")
        .bind(org)
        .bind(key)
        .fetch_one(pool)
        .await
}

/// Adds a custom role; false when the key is taken.
pub async fn create_role(
    db: impl sqlx::PgExecutor<'_>,
    org: Uuid,
    key: &str,
    name: &str,
    permissions: &[String],
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO org_roles (org_id, key, name, permissions) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(org)
    .bind(key)
    .bind(name)
    .bind(permissions)
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Removes a custom role nobody holds; `None` when it does not exist, `Some(false)`
/// when a member or a pending invitation holds it.
pub async fn delete_role(tx: &mut PgConnection, org: Uuid, key: &str) -> Result<Option<bool>, sqlx::Error> {
    let exists: Option<String> =
        sqlx::query_scalar("SELECT key FROM org_roles WHERE org_id = $1 AND key = $2 FOR UPDATE")
            .bind(org)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM org_members WHERE org_id = $1 AND role = $2)
             OR EXISTS (SELECT 1 FROM org_invitations WHERE org_id = $1 AND role = $2 AND status = 'pending')",
    )
    .bind(org)
    .bind(key)
    .fetch_one(&mut *tx)
    .await?;
    if held {
        return Ok(Some(false));
    }
    sqlx::query("DELETE FROM org_roles WHERE org_id = $1 AND key = $2").bind(org).bind(key).execute(&mut *tx).await?;
    Ok(Some(true))
}

/// An invitation row.
#[derive(Debug, Clone, FromRow)]
pub struct InvitationRow {
    /// Id.
    pub id: Uuid,
    /// Organization.
    pub org_id: Uuid,
    /// Email.
    pub email: String,
    /// Role.
    pub role: String,
    /// Status.
    pub status: String,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// Created.
    pub created_at: OffsetDateTime,
}

const INVITATION_COLS: &str = "id, org_id, email, role, status, expires_at, created_at";

/// Creates a pending invitation; `None` when one is already pending for the email.
pub async fn create_invitation(
    db: impl sqlx::PgExecutor<'_>,
    org: Uuid,
    email: &str,
    role: &str,
    token_hash: &[u8],
    ttl_secs: f64,
    invited_by: Uuid,
) -> Result<Option<InvitationRow>, sqlx::Error> {
    let sql = format!(
        "INSERT INTO org_invitations (id, org_id, email, role, token_hash, expires_at, invited_by)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7)
         ON CONFLICT (org_id, lower(email)) WHERE status = 'pending' DO NOTHING RETURNING {INVITATION_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::now_v7())
        .bind(org)
        .bind(email)
        .bind(role)
        .bind(token_hash)
        .bind(ttl_secs)
        .bind(invited_by)
        .fetch_optional(db)
        .await
}

/// The organization's invitations, newest first.
pub async fn invitations(pool: &PgPool, org: Uuid) -> Result<Vec<InvitationRow>, sqlx::Error> {
    let sql =
        format!("SELECT {INVITATION_COLS} FROM org_invitations WHERE org_id = $1 ORDER BY created_at DESC LIMIT 500");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(org).fetch_all(pool).await
}

/// Sets a pending invitation's status (`revoked`); false if none pending.
pub async fn end_invitation(
    db: impl sqlx::PgExecutor<'_>,
    org: Uuid,
    id: Uuid,
    status: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE org_invitations SET status = $3, updated_at = now() WHERE id = $1 AND org_id = $2 AND status = 'pending'",
    )
    .bind(id)
    .bind(org)
    .bind(status)
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Gives a pending invitation a new token and expiry; the row, or `None`.
pub async fn renew_invitation(
    db: impl sqlx::PgExecutor<'_>,
    org: Uuid,
    id: Uuid,
    token_hash: &[u8],
    ttl_secs: f64,
) -> Result<Option<InvitationRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE org_invitations SET token_hash = $3, expires_at = now() + make_interval(secs => $4), updated_at = now()
         WHERE id = $1 AND org_id = $2 AND status = 'pending' RETURNING {INVITATION_COLS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).bind(org).bind(token_hash).bind(ttl_secs).fetch_optional(db).await
}

/// The live (pending, unexpired) invitation with this token, locked.
/// (Locks the row when run inside a transaction that then settles it.)
pub async fn live_invitation(
    db: impl sqlx::PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<Option<InvitationRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {INVITATION_COLS} FROM org_invitations WHERE token_hash = $1 AND status = 'pending' AND expires_at > now()
         FOR UPDATE"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(token_hash).fetch_optional(db).await
}

/// Marks an invitation accepted or declined.
pub async fn settle_invitation(tx: &mut Transaction<'_, Postgres>, id: Uuid, status: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE org_invitations SET status = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Adds a member (an existing membership stays as it is); false if already one.
pub async fn add_member<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    org: Uuid,
    user: Uuid,
    role: &str,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("INSERT INTO org_members (org_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(org)
        .bind(user)
        .bind(role)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// A verified domain.
#[derive(Debug, Clone, FromRow)]
pub struct DomainRow {
    /// The domain.
    pub domain: String,
    /// Role given to users who join through it.
    pub role: String,
    /// Added.
    pub created_at: OffsetDateTime,
}

/// Adds a verified domain; false when some organization already has it.
pub async fn add_domain(
    db: impl sqlx::PgExecutor<'_>,
    org: Uuid,
    domain: &str,
    role: &str,
    by: Uuid,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "INSERT INTO org_domains (org_id, domain, role, verified_by) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(org)
    .bind(domain)
    .bind(role)
    .bind(by)
    .execute(db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The organization's domains.
pub async fn domains(pool: &PgPool, org: Uuid) -> Result<Vec<DomainRow>, sqlx::Error> {
    sqlx::query_as("SELECT domain, role, created_at FROM org_domains WHERE org_id = $1 ORDER BY domain")
        .bind(org)
        .fetch_all(pool)
        .await
}

/// Removes a domain; false if the organization does not have it.
pub async fn remove_domain(db: impl sqlx::PgExecutor<'_>, org: Uuid, domain: &str) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("DELETE FROM org_domains WHERE org_id = $1 AND domain = $2")
        .bind(org)
        .bind(domain)
        .execute(db)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// The organization owning `domain` and the role it gives, if any.
pub async fn domain_owner(pool: &PgPool, domain: &str) -> Result<Option<(Uuid, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.org_id, o.name, d.role FROM org_domains d JOIN organizations o ON o.id = d.org_id WHERE d.domain = $1",
    )
    .bind(domain)
    .fetch_optional(pool)
    .await
}
