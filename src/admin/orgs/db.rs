//! The console's organization listings: organizations with their counts, and
//! the buckets an organization holds.

use sqlx::{FromRow, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

/// An organization with what it has.
#[derive(Debug, FromRow)]
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
    /// Members.
    pub members: i64,
    /// Pending invitations.
    pub pending: i64,
    /// Buckets it holds.
    pub buckets: i64,
    /// Connections it holds.
    pub connections: i64,
    /// Documents in its knowledge space.
    pub documents: i64,
}

/// Organizations, newest first: one (`id`) or those whose name or slug match
/// `q` (a LIKE pattern, escaped by the caller), or all.
async fn select(pool: &PgPool, id: Option<Uuid>, q: Option<&str>, limit: i64) -> Result<Vec<OrgRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.id, o.name, o.slug, o.image_url, o.created_at,
                (SELECT count(*) FROM org_members m WHERE m.org_id = o.id) AS members,
                (SELECT count(*) FROM org_invitations i WHERE i.org_id = o.id AND i.status = 'pending') AS pending,
                (SELECT count(*) FROM storage_buckets b WHERE b.org_id = o.id) AS buckets,
                (SELECT count(*) FROM connections c WHERE c.org_id = o.id) AS connections,
                (SELECT count(*) FROM kb_documents d WHERE d.space_id = o.id) AS documents
         FROM organizations o
         WHERE ($1::uuid IS NULL OR o.id = $1) AND ($2::text IS NULL OR o.name ILIKE $2 OR o.slug ILIKE $2)
         ORDER BY o.created_at DESC, o.id LIMIT $3",
    )
    .bind(id)
    .bind(q)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Organizations, newest first; `q` filters by name or slug (a LIKE pattern, escaped by the caller).
pub async fn orgs(pool: &PgPool, q: Option<&str>, limit: i64) -> Result<Vec<OrgRow>, sqlx::Error> {
    select(pool, None, q, limit).await
}

/// One organization.
pub async fn org(pool: &PgPool, id: Uuid) -> Result<Option<OrgRow>, sqlx::Error> {
    Ok(select(pool, Some(id), None, 1).await?.pop())
}

/// The buckets an organization holds: (id, public).
pub async fn buckets(pool: &PgPool, org: Uuid) -> Result<Vec<(String, bool)>, sqlx::Error> {
    sqlx::query_as("SELECT id, public FROM storage_buckets WHERE org_id = $1 ORDER BY id")
        .bind(org)
        .fetch_all(pool)
        .await
}

/// The organizations a user is in: (id, name, role).
pub async fn orgs_of(pool: &PgPool, user: Uuid) -> Result<Vec<(Uuid, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.id, o.name, m.role FROM org_members m JOIN organizations o ON o.id = m.org_id
         WHERE m.user_id = $1 ORDER BY o.name, o.id",
    )
    .bind(user)
    .fetch_all(pool)
    .await
}
