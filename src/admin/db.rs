//! Every statement of the admin console outside the table browser: admins, their
//! sessions and sign-in links, the overview's counts, user search and detail,
//! bans, the audit log, saved queries and the SQL runner.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use sqlx::{Column, Executor, FromRow, PgPool, Row, SqlSafeStr, Statement};
use time::OffsetDateTime;
use uuid::Uuid;

/// Makes `user` an admin; false if it already was.
pub async fn promote(pool: &PgPool, user: Uuid, by: &str) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("INSERT INTO admins (user_id, created_by) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(user)
        .bind(by)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// Whether `user` is an admin.
pub async fn is_admin(pool: &PgPool, user: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM admins WHERE user_id = $1)").bind(user).fetch_one(pool).await
}

/// Stores a one-time sign-in link's hash for `user`, valid for `ttl`.
pub async fn insert_sign_in_token(pool: &PgPool, hash: &[u8], user: Uuid, ttl: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO admin_sign_in_tokens (token_hash, user_id, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(hash)
    .bind(user)
    .bind(ttl.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Uses up a live sign-in link; the admin it was for.
pub async fn consume_sign_in_token(pool: &PgPool, hash: &[u8]) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE admin_sign_in_tokens SET used_at = now()
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING user_id",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await
}

/// A live admin session with who it belongs to.
#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    /// Session id.
    pub id: Uuid,
    /// The admin's user id.
    pub user_id: Uuid,
    /// The admin's email.
    pub email: Option<String>,
    /// The session's CSRF token.
    pub csrf_token: String,
}

/// Opens an admin session.
pub async fn insert_session(
    pool: &PgPool,
    user: Uuid,
    hash: &[u8],
    csrf: &str,
    ttl: Duration,
    ip: Option<&str>,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO admin_sessions (id, user_id, token_hash, csrf_token, expires_at, ip)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), $6)",
    )
    .bind(id)
    .bind(user)
    .bind(hash)
    .bind(csrf)
    .bind(ttl.as_secs_f64())
    .bind(ip)
    .execute(pool)
    .await?;
    Ok(id)
}

/// The live admin session with this token hash (not revoked, not expired, not
/// idle past `idle`, its user still an admin and not banned); records activity.
pub async fn live_session(pool: &PgPool, hash: &[u8], idle: Duration) -> Result<Option<SessionRow>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE admin_sessions s SET last_active_at = now()
         FROM admins a JOIN users u ON u.id = a.user_id
         WHERE s.token_hash = $1 AND a.user_id = s.user_id AND s.revoked_at IS NULL AND s.expires_at > now()
           AND s.last_active_at > now() - make_interval(secs => $2) AND u.banned_at IS NULL
         RETURNING s.id, s.user_id, u.email, s.csrf_token",
    )
    .bind(hash)
    .bind(idle.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// Ends an admin session.
pub async fn revoke_session(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE admin_sessions SET revoked_at = now() WHERE id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// The overview's counts.
#[derive(Debug, Default, FromRow)]
pub struct Counts {
    /// Users.
    pub users: i64,
    /// Banned users.
    pub banned: i64,
    /// Admins.
    pub admins: i64,
    /// Storage objects.
    pub objects: i64,
    /// Their bytes.
    pub bytes: i64,
    /// Conversations.
    pub conversations: i64,
    /// Messages.
    pub messages: i64,
    /// Knowledge documents.
    pub documents: i64,
    /// Active memories.
    pub memories: i64,
    /// Failed jobs.
    pub failed_jobs: i64,
}

/// Counts for the overview. Big tables are counted from the planner's estimate
/// (`pg_class.reltuples`) once they pass 100,000 rows, so the page never scans them.
pub async fn counts(pool: &PgPool) -> Result<Counts, sqlx::Error> {
    sqlx::query_as(
        "WITH est AS (SELECT relname, reltuples::int8 AS n FROM pg_class c
                      JOIN pg_namespace s ON s.oid = c.relnamespace AND s.nspname = 'public' WHERE c.relkind = 'r')
         SELECT
           (SELECT count(*) FROM users) AS users,
           (SELECT count(*) FROM users WHERE banned_at IS NOT NULL) AS banned,
           (SELECT count(*) FROM admins) AS admins,
           CASE WHEN (SELECT n FROM est WHERE relname = 'storage_objects') > 100000
                THEN (SELECT n FROM est WHERE relname = 'storage_objects')
                ELSE (SELECT count(*) FROM storage_objects) END AS objects,
           (SELECT COALESCE(sum(size), 0)::int8 FROM storage_objects) AS bytes,
           (SELECT count(*) FROM conversations) AS conversations,
           CASE WHEN (SELECT n FROM est WHERE relname = 'messages') > 100000
                THEN (SELECT n FROM est WHERE relname = 'messages')
                ELSE (SELECT count(*) FROM messages) END AS messages,
           (SELECT count(*) FROM kb_documents) AS documents,
           CASE WHEN (SELECT n FROM est WHERE relname = 'memories') > 100000
                THEN (SELECT n FROM est WHERE relname = 'memories')
                ELSE (SELECT count(*) FROM memories WHERE status = 'active') END AS memories,
           (SELECT count(*) FROM jobs WHERE state = 'failed') AS failed_jobs",
    )
    .fetch_one(pool)
    .await
}

/// Connections by status.
pub async fn connections_by_status(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM connections GROUP BY status ORDER BY status").fetch_all(pool).await
}

/// A user in the admin's list.
#[derive(Debug, Clone, FromRow)]
pub struct UserListRow {
    /// Id.
    pub id: Uuid,
    /// Email.
    pub email: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Verified.
    pub email_verified: bool,
    /// Banned.
    pub banned: bool,
    /// Admin.
    pub admin: bool,
    /// Created.
    pub created_at: OffsetDateTime,
}

/// Users matching `q` (email or name, case-insensitive; an id matches exactly),
/// newest first, after the keyset `before`.
pub async fn search_users(
    pool: &PgPool,
    q: Option<&str>,
    before: Option<(OffsetDateTime, Uuid)>,
    limit: i64,
) -> Result<Vec<UserListRow>, sqlx::Error> {
    let pattern = q.map(|q| format!("%{}%", crate::storage::db::like_escape(q)));
    sqlx::query_as(
        "SELECT u.id, u.email, u.name, u.email_verified_at IS NOT NULL AS email_verified,
                u.banned_at IS NOT NULL AS banned, a.user_id IS NOT NULL AS admin, u.created_at
         FROM users u LEFT JOIN admins a ON a.user_id = u.id
         WHERE ($1::text IS NULL OR u.email ILIKE $1 OR u.name ILIKE $1 OR u.id::text = $2)
           AND ($3::timestamptz IS NULL OR (u.created_at, u.id) < ($3, $4))
         ORDER BY u.created_at DESC, u.id DESC LIMIT $5",
    )
    .bind(pattern)
    .bind(q)
    .bind(before.map(|b| b.0))
    .bind(before.map(|b| b.1))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Every session of a user (live or not), newest first, at most 50.
#[derive(Debug, Clone, FromRow)]
pub struct UserSessionRow {
    /// Id.
    pub id: Uuid,
    /// Created.
    pub created_at: OffsetDateTime,
    /// Last activity.
    pub last_active_at: OffsetDateTime,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// Revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// IP.
    pub ip: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// The impersonating admin.
    pub impersonator_id: Option<Uuid>,
}

/// A user's sessions, newest first.
pub async fn user_sessions(pool: &PgPool, user: Uuid) -> Result<Vec<UserSessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, created_at, last_active_at, expires_at, revoked_at, ip, user_agent, impersonator_id
         FROM sessions WHERE user_id = $1 ORDER BY created_at DESC LIMIT 50",
    )
    .bind(user)
    .fetch_all(pool)
    .await
}

/// What a user holds: objects and bytes, conversations, documents, memories.
#[derive(Debug, Default, FromRow)]
pub struct Usage {
    /// Objects owned.
    pub objects: i64,
    /// Their bytes.
    pub bytes: i64,
    /// Conversations.
    pub conversations: i64,
    /// Knowledge documents.
    pub documents: i64,
    /// Active memories.
    pub memories: i64,
}

/// A user's usage.
pub async fn usage(pool: &PgPool, user: Uuid) -> Result<Usage, sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM storage_objects WHERE owner_id = $1) AS objects,
                (SELECT COALESCE(sum(size), 0)::int8 FROM storage_objects WHERE owner_id = $1) AS bytes,
                (SELECT count(*) FROM conversations WHERE owner_id = $1) AS conversations,
                (SELECT count(*) FROM kb_documents WHERE space_id = $1) AS documents,
                (SELECT count(*) FROM memories WHERE user_id = $1 AND status = 'active') AS memories",
    )
    .bind(user)
    .fetch_one(pool)
    .await
}

/// A connection as the admin lists it.
#[derive(Debug, Clone, FromRow)]
pub struct ConnectionRow {
    /// Id.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Owner's email.
    pub email: Option<String>,
    /// Integration key.
    pub integration: String,
    /// Status.
    pub status: String,
    /// Last error.
    pub last_error: Option<String>,
    /// Updated.
    pub updated_at: OffsetDateTime,
}

/// Connections, newest first (when `user` is set: those a user made, or those an organization holds).
pub async fn connections(pool: &PgPool, user: Option<Uuid>, limit: i64) -> Result<Vec<ConnectionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.owner_id AS user_id, u.email, i.unique_key AS integration, c.status,
                c.last_error, c.updated_at
         FROM connections c JOIN users u ON u.id = c.owner_id JOIN integrations i ON i.id = c.integration_id
         WHERE ($1::uuid IS NULL OR c.owner_id = $1 OR c.org_id = $1) ORDER BY c.updated_at DESC LIMIT $2",
    )
    .bind(user)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Sets or clears a ban; the (before, after) `banned_at`, or `None` if no such user.
pub async fn set_banned(
    pool: &PgPool,
    user: Uuid,
    banned: bool,
) -> Result<Option<(Option<OffsetDateTime>, Option<OffsetDateTime>)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE users u SET banned_at = CASE WHEN $2 THEN COALESCE(o.banned_at, now()) END
         FROM (SELECT id, banned_at FROM users WHERE id = $1 FOR UPDATE) o
         WHERE u.id = o.id RETURNING o.banned_at, u.banned_at",
    )
    .bind(user)
    .bind(banned)
    .fetch_optional(pool)
    .await
}

/// An audit row.
#[derive(Debug, Clone, FromRow)]
pub struct AuditRow {
    /// Id.
    pub id: i64,
    /// When.
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// For whom.
    pub on_behalf_of: Option<Uuid>,
    /// What.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// Details (before and after for admin writes).
    pub detail: serde_json::Value,
}

/// Audit rows, newest first, filtered by actor prefix, action prefix and target
/// or subject user, before id `before`.
pub async fn audit(
    pool: &PgPool,
    actor: Option<&str>,
    action: Option<&str>,
    user: Option<Uuid>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor, on_behalf_of, action, target, detail FROM audit_log
         WHERE ($1::text IS NULL OR actor LIKE $1 || '%') AND ($2::text IS NULL OR action LIKE $2 || '%')
           AND ($3::uuid IS NULL OR on_behalf_of = $3 OR target = $3::text)
           AND ($4::int8 IS NULL OR id < $4)
         ORDER BY id DESC LIMIT $5",
    )
    .bind(actor)
    .bind(action)
    .bind(user)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A saved query.
#[derive(Debug, Clone, FromRow)]
pub struct SavedQuery {
    /// Id.
    pub id: Uuid,
    /// Name (unique per admin, case-insensitive).
    pub name: String,
    /// The SQL.
    pub sql: String,
    /// Version (each save adds one).
    pub version: i32,
    /// Last saved.
    pub updated_at: OffsetDateTime,
}

/// An admin's saved queries, by name.
pub async fn saved_queries(pool: &PgPool, admin: Uuid) -> Result<Vec<SavedQuery>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, sql, version, updated_at FROM admin_queries
         WHERE admin_id = $1 AND deleted_at IS NULL ORDER BY lower(name)",
    )
    .bind(admin)
    .fetch_all(pool)
    .await
}

/// One of an admin's saved queries.
pub async fn saved_query(pool: &PgPool, admin: Uuid, id: Uuid) -> Result<Option<SavedQuery>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, sql, version, updated_at FROM admin_queries
         WHERE id = $1 AND admin_id = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(admin)
    .fetch_optional(pool)
    .await
}

/// Why a save was refused.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// Another query of this admin has the name.
    #[error("a saved query is already named so")]
    NameTaken,
    /// The query changed since the version the editor started from.
    #[error("the query was saved elsewhere since (now version {0})")]
    Stale(i32),
    /// No such query.
    #[error("no such saved query")]
    Missing,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn name_taken(e: sqlx::Error) -> SaveError {
    if crate::auth::db::is_unique_violation(&e) { SaveError::NameTaken } else { SaveError::Db(e) }
}

/// Saves a new query (version 1).
pub async fn create_query(pool: &PgPool, admin: Uuid, name: &str, sql: &str) -> Result<SavedQuery, SaveError> {
    let mut tx = pool.begin().await?;
    let row: SavedQuery = sqlx::query_as(
        "INSERT INTO admin_queries (id, admin_id, name, sql) VALUES ($1, $2, $3, $4)
         RETURNING id, name, sql, version, updated_at",
    )
    .bind(Uuid::now_v7())
    .bind(admin)
    .bind(name)
    .bind(sql)
    .fetch_one(&mut *tx)
    .await
    .map_err(name_taken)?;
    sqlx::query("INSERT INTO admin_query_versions (query_id, version, sql) VALUES ($1, 1, $2)")
        .bind(row.id)
        .bind(sql)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row)
}

/// Saves a new version of a query edited from version `expected`; a stale
/// `expected` is refused (the newer text is never overwritten silently).
pub async fn update_query(
    pool: &PgPool,
    admin: Uuid,
    id: Uuid,
    expected: i32,
    name: &str,
    sql: &str,
) -> Result<SavedQuery, SaveError> {
    let mut tx = pool.begin().await?;
    let current: Option<i32> = sqlx::query_scalar(
        "SELECT version FROM admin_queries WHERE id = $1 AND admin_id = $2 AND deleted_at IS NULL FOR UPDATE",
    )
    .bind(id)
    .bind(admin)
    .fetch_optional(&mut *tx)
    .await?;
    let current = current.ok_or(SaveError::Missing)?;
    if current != expected {
        return Err(SaveError::Stale(current));
    }
    let row: SavedQuery = sqlx::query_as(
        "UPDATE admin_queries SET name = $2, sql = $3, version = version + 1, updated_at = now()
         WHERE id = $1 RETURNING id, name, sql, version, updated_at",
    )
    .bind(id)
    .bind(name)
    .bind(sql)
    .fetch_one(&mut *tx)
    .await
    .map_err(name_taken)?;
    sqlx::query("INSERT INTO admin_query_versions (query_id, version, sql) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(row.version)
        .bind(sql)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row)
}

/// Removes a saved query from the list (its versions stay).
pub async fn delete_query(pool: &PgPool, admin: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE admin_queries SET deleted_at = now() WHERE id = $1 AND admin_id = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(admin)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// How the SQL runner runs a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// In a read-only transaction, always rolled back.
    ReadOnly,
    /// In a read-write transaction, committed when the statement succeeds.
    Write,
}

/// What the SQL runner answers.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows as text (`None`: NULL), at most the cap.
    pub rows: Vec<Vec<Option<String>>>,
    /// Whether more rows existed than were shown.
    pub truncated: bool,
    /// Rows a write affected.
    pub affected: Option<u64>,
    /// Whether the transaction was committed.
    pub committed: bool,
    /// Time the statement took.
    pub elapsed: Duration,
}

/// Why the SQL runner refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Several statements in one run.
    #[error("run one statement at a time")]
    Several,
    /// PostgreSQL refused the statement (its message and SQLSTATE).
    #[error("{message}")]
    Refused {
        /// The server's message.
        message: String,
        /// SQLSTATE.
        code: Option<String>,
    },
    /// The database failed otherwise.
    #[error(transparent)]
    Db(sqlx::Error),
}

impl From<sqlx::Error> for RunError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(d) => {
                let message = d.message().to_string();
                if message.contains("cannot insert multiple commands") {
                    return RunError::Several;
                }
                RunError::Refused { message, code: d.code().map(|c| c.into_owned()) }
            }
            e => RunError::Db(e),
        }
    }
}

/// Sets the transaction's statement timeout (a `SELECT`: it takes the snapshot).
pub async fn set_timeout(tx: &mut sqlx::PgTransaction<'_>, timeout: Duration) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{}ms", timeout.as_millis()))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The first keyword of a statement, lower case, after comments and parentheses.
fn first_keyword(sql: &str) -> String {
    let mut s = sql.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map(|(_, r)| r).unwrap_or("").trim_start();
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map(|(_, r)| r).unwrap_or("").trim_start();
        } else if let Some(rest) = s.strip_prefix('(') {
            s = rest.trim_start();
        } else {
            break;
        }
    }
    s.chars().take_while(|c| c.is_ascii_alphabetic()).collect::<String>().to_ascii_lowercase()
}

/// Runs one statement. Read-only mode: `BEGIN READ ONLY`, a snapshot taken
/// before the statement (so it cannot switch the transaction to read-write), a
/// statement timeout, the rows read through a cursor up to `cap`, and a rollback.
/// Write mode: the same in a read-write transaction, committed on success.
/// PostgreSQL's extended protocol refuses several statements in one parse, which
/// is checked before anything runs. Rows come back as text (simple protocol).
pub async fn run_sql(
    pool: &PgPool,
    sql: &str,
    mode: RunMode,
    timeout: Duration,
    cap: u32,
) -> Result<RunOutcome, RunError> {
    let mut tx = pool.begin().await?;
    if mode == RunMode::ReadOnly {
        sqlx::query("SET TRANSACTION READ ONLY").execute(&mut *tx).await?;
    }
    // Takes the snapshot: from here the access mode cannot change.
    set_timeout(&mut tx, timeout).await?;
    let sql = sql.trim().trim_end_matches(';').trim_end();
    let statement = (&mut *tx).prepare(sqlx::AssertSqlSafe(sql.to_string()).into_sql_str()).await?;
    let columns: Vec<String> = statement.columns().iter().map(|c| c.name().to_string()).collect();
    let started = Instant::now();
    let mut out = RunOutcome { columns, ..RunOutcome::default() };
    let kw = first_keyword(sql);
    let cursor = mode == RunMode::ReadOnly && matches!(kw.as_str(), "select" | "with" | "values" | "table");
    if cursor {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DECLARE carmenta_admin_q NO SCROLL CURSOR FOR {sql}")))
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("FETCH FORWARD {} FROM carmenta_admin_q", cap + 1)))
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            if out.rows.len() == cap as usize {
                out.truncated = true;
                break;
            }
            out.rows.push(text_row(&row));
        }
    } else {
        let mut stream = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).fetch_many(&mut *tx);
        let mut affected = 0;
        while let Some(item) = stream.try_next().await? {
            match item {
                sqlx::Either::Left(done) => affected += done.rows_affected(),
                sqlx::Either::Right(row) => {
                    if out.rows.len() < cap as usize {
                        out.rows.push(text_row(&row));
                    } else {
                        out.truncated = true;
                    }
                }
            }
        }
        out.affected = Some(affected);
    }
    out.elapsed = started.elapsed();
    if mode == RunMode::Write && kw != "explain" {
        tx.commit().await?;
        out.committed = true;
    } else {
        tx.rollback().await?;
    }
    Ok(out)
}

/// A row of the simple protocol (text format) as strings.
fn text_row(row: &sqlx::postgres::PgRow) -> Vec<Option<String>> {
    (0..row.len()).map(|i| row.try_get_unchecked::<Option<String>, _>(i).unwrap_or(None)).collect()
}

#[cfg(test)]
mod tests {
    use super::first_keyword;

    #[test]
    fn first_keyword_skips_comments_and_parentheses() {
        assert_eq!(first_keyword("  -- hi\n /* x */ (SELECT 1)"), "select");
        assert_eq!(first_keyword("WITH a AS (SELECT 1) DELETE FROM t"), "with");
        assert_eq!(first_keyword("insert into t values (1)"), "insert");
        assert_eq!(first_keyword(""), "");
    }
}
