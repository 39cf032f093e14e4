//! Every SQL statement of the job queue: enqueueing (with unique keys), claiming
//! with `FOR UPDATE SKIP LOCKED` under a lease, heartbeats, completion, retry with
//! backoff, release on shutdown, cancellation, periodic schedules, listing.

use serde_json::Value;
use sqlx::{FromRow, PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

/// A claimed job as the worker sees it.
#[derive(Debug, Clone, FromRow)]
pub struct Claimed {
    /// The job's id.
    pub id: Uuid,
    /// Its kind (a handler's name).
    pub kind: String,
    /// Its payload.
    pub payload: Value,
    /// Attempts so far, this one included.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// When it was due.
    pub run_at: OffsetDateTime,
    /// When this attempt started.
    pub started_at: OffsetDateTime,
    /// This claim's token: completion, retry and release only apply while it holds.
    pub lease_token: Uuid,
}

/// A job row as listed by `carmenta jobs list` and the admin console.
#[derive(Debug, Clone, FromRow, serde::Serialize)]
pub struct JobRow {
    /// Id.
    pub id: Uuid,
    /// Kind.
    pub kind: String,
    /// `queued`, `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// Payload.
    pub payload: Value,
    /// Due time.
    #[serde(with = "time::serde::rfc3339")]
    pub run_at: OffsetDateTime,
    /// Attempts made.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// The unique key, if any.
    pub unique_key: Option<String>,
    /// The worker holding it (running jobs).
    pub worker: Option<String>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Finished (done, failed, cancelled).
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// Inserts a job; with a unique key, when the same job (kind and key) is already
/// queued, no second one is made: the queued one keeps its id and runs at the
/// earlier of the two times. Returns the id and whether a job was inserted.
pub async fn insert(
    conn: &mut PgConnection,
    kind: &str,
    payload: &Value,
    run_at: Option<OffsetDateTime>,
    max_attempts: i32,
    unique_key: Option<&str>,
) -> Result<(Uuid, bool), sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO jobs (id, kind, payload, run_at, max_attempts, unique_key) \
         VALUES ($1, $2, $3, coalesce($4, now()), $5, $6) \
         ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND state = 'queued' \
         DO UPDATE SET run_at = least(jobs.run_at, excluded.run_at) \
         RETURNING id, (xmax = 0) AS inserted",
    )
    .bind(Uuid::now_v7())
    .bind(kind)
    .bind(payload)
    .bind(run_at)
    .bind(max_attempts)
    .bind(unique_key)
    .fetch_one(conn)
    .await
}

/// Claims the next due job of one of `kinds` (or one whose lease ran out) for
/// `worker`, holding it for `lease_secs`.
pub async fn claim(
    pool: &PgPool,
    worker: &str,
    kinds: &[String],
    lease_secs: f64,
) -> Result<Option<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_token = $4, worker = $1, \
         lease_until = now() + make_interval(secs => $3), started_at = now() \
         WHERE id = (SELECT id FROM jobs WHERE kind = ANY($2) AND \
                       ((state = 'queued' AND run_at <= now()) OR (state = 'running' AND lease_until < now())) \
                     ORDER BY run_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING id, kind, payload, attempts, max_attempts, run_at, started_at, lease_token",
    )
    .bind(worker)
    .bind(kinds)
    .bind(lease_secs)
    .bind(Uuid::new_v4())
    .fetch_optional(pool)
    .await
}

/// A query of sqlx's with its arguments.
type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Runs `UPDATE jobs SET {set}` on job `id` while this worker still holds it
/// (`$1` the id, `$2` the lease token; `more` binds `$3`…); false when it does not.
async fn held<'q>(
    set: &str,
    id: Uuid,
    token: Uuid,
    more: impl FnOnce(Query<'q>) -> Query<'q>,
    pool: &PgPool,
) -> Result<bool, sqlx::Error> {
    let sql = format!("UPDATE jobs SET {set} WHERE id = $1 AND lease_token = $2 AND state = 'running'");
    let r = more(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(token)).execute(pool).await?;
    Ok(r.rows_affected() == 1)
}

/// Extends a claim; false when it no longer holds (cancelled, or the lease ran
/// out and another worker took the job).
pub async fn heartbeat(pool: &PgPool, id: Uuid, token: Uuid, lease_secs: f64) -> Result<bool, sqlx::Error> {
    held("lease_until = now() + make_interval(secs => $3)", id, token, |q| q.bind(lease_secs), pool).await
}

/// Marks a claimed job done.
pub async fn complete(pool: &PgPool, id: Uuid, token: Uuid) -> Result<bool, sqlx::Error> {
    let set = "state = 'done', finished_at = now(), lease_token = NULL, lease_until = NULL, last_error = NULL";
    held(set, id, token, |q| q, pool).await
}

/// Records a failed attempt: queued again after `backoff_secs`, or `failed` with
/// its error kept when `give_up`.
pub async fn fail(
    pool: &PgPool,
    id: Uuid,
    token: Uuid,
    error: &str,
    backoff_secs: f64,
    give_up: bool,
) -> Result<bool, sqlx::Error> {
    // A unique job whose successor is already queued is not queued beside it (the
    // successor does the same work): it ends `cancelled`, its error kept.
    let set = "last_error = $3, lease_token = NULL, lease_until = NULL, \
        state = CASE WHEN $5 THEN 'failed' WHEN (SELECT count(*) FROM jobs o WHERE o.kind = jobs.kind \
                  AND o.unique_key = jobs.unique_key AND o.state = 'queued') > 0 THEN 'cancelled' ELSE 'queued' END, \
        finished_at = CASE WHEN $5 OR (SELECT count(*) FROM jobs o WHERE o.kind = jobs.kind \
                  AND o.unique_key = jobs.unique_key AND o.state = 'queued') > 0 THEN now() END, \
        run_at = CASE WHEN $5 THEN run_at ELSE now() + make_interval(secs => $4) END";
    held(set, id, token, |q| q.bind(error).bind(backoff_secs).bind(give_up), pool).await
}

/// Gives a claimed job back unfinished (shutdown): queued at once, the attempt
/// not counted.
pub async fn release(pool: &PgPool, id: Uuid, token: Uuid) -> Result<bool, sqlx::Error> {
    let set = "state = CASE WHEN (SELECT count(*) FROM jobs o WHERE o.kind = jobs.kind \
                  AND o.unique_key = jobs.unique_key AND o.state = 'queued') > 0 THEN 'cancelled' ELSE 'queued' END, \
        finished_at = CASE WHEN (SELECT count(*) FROM jobs o WHERE o.kind = jobs.kind \
                  AND o.unique_key = jobs.unique_key AND o.state = 'queued') > 0 THEN now() END, \
        run_at = now(), attempts = greatest(attempts - 1, 0), \
        lease_token = NULL, lease_until = NULL, worker = NULL";
    held(set, id, token, |q| q, pool).await
}

/// Cancels a queued or running job (a running one's worker stops it at its next
/// heartbeat); false when it had already finished or does not exist.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), lease_token = NULL, lease_until = NULL \
         WHERE id = $1 AND state IN ('queued', 'running')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Queues a failed or cancelled job again with a fresh set of attempts; false
/// when it is not failed or cancelled.
pub async fn retry(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE jobs SET state = 'queued', run_at = now(), attempts = 0, finished_at = NULL, worker = NULL \
         WHERE id = $1 AND state IN ('failed', 'cancelled') \
         AND NOT EXISTS (SELECT 1 FROM jobs q WHERE q.kind = jobs.kind AND q.unique_key = jobs.unique_key \
                         AND q.state = 'queued')",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// One job.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, state, payload, run_at, attempts, max_attempts, last_error, unique_key, worker, created_at, \
         finished_at FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Jobs newest first, optionally of one state.
pub async fn list(pool: &PgPool, state: Option<&str>, limit: i64) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, state, payload, run_at, attempts, max_attempts, last_error, unique_key, worker, created_at, \
         finished_at FROM jobs WHERE ($1::text IS NULL OR state = $1) ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Job counts by kind and state: every state of every kind that has jobs or a
/// schedule, zeros included (a gauge whose state emptied must read 0, not keep its
/// last count).
pub async fn counts(pool: &PgPool) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "WITH kinds AS (SELECT DISTINCT kind FROM jobs UNION SELECT kind FROM job_schedules), \
              n AS (SELECT kind, state, count(*) AS n FROM jobs GROUP BY kind, state) \
         SELECT k.kind, s.state, coalesce(n.n, 0) FROM kinds k \
         CROSS JOIN unnest(ARRAY['queued', 'running', 'done', 'failed', 'cancelled']) AS s(state) \
         LEFT JOIN n ON n.kind = k.kind AND n.state = s.state ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
}

/// Deletes done and cancelled jobs finished before `older_than_secs` ago.
pub async fn prune(pool: &PgPool, older_than_secs: f64) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(
        "DELETE FROM jobs WHERE state IN ('done', 'cancelled') AND finished_at < now() - make_interval(secs => $1)",
    )
    .bind(older_than_secs)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Registers (or updates) a periodic schedule; its next run time is kept.
pub async fn upsert_schedule(
    pool: &PgPool,
    name: &str,
    kind: &str,
    payload: &Value,
    every_secs: f64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_schedules (name, kind, payload, every_secs) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, payload = excluded.payload, \
         every_secs = excluded.every_secs, \
         next_run_at = least(job_schedules.next_run_at, now() + make_interval(secs => excluded.every_secs))",
    )
    .bind(name)
    .bind(kind)
    .bind(payload)
    .bind(every_secs)
    .execute(pool)
    .await?;
    Ok(())
}

/// Turns due schedules among `names` into jobs, once across all replicas, in one
/// statement: each due schedule row is locked (others skip it), moved to its next
/// period, and its job queued (payload plus `scheduled_for`, the period's start in
/// Unix seconds; one attempt, the next period being the retry). Returns how many
/// jobs were queued and the seconds until the earliest schedule is due next.
pub async fn fire_schedules(pool: &PgPool, names: &[String]) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "WITH due AS (SELECT name, next_run_at FROM job_schedules \
                      WHERE name = ANY($1) AND next_run_at <= now() FOR UPDATE SKIP LOCKED), \
              moved AS (UPDATE job_schedules s \
                        SET next_run_at = greatest(due.next_run_at + make_interval(secs => s.every_secs), now()) \
                        FROM due WHERE s.name = due.name \
                        RETURNING s.name, s.kind, s.payload, due.next_run_at AS slot, s.next_run_at AS next), \
              queued AS (INSERT INTO jobs (id, kind, payload, max_attempts, unique_key) \
                         SELECT gen_random_uuid(), kind, \
                                CASE WHEN jsonb_typeof(payload) = 'object' \
                                     THEN payload || jsonb_build_object('scheduled_for', extract(epoch FROM slot)) \
                                     ELSE payload END, \
                                1, 'schedule:' || name FROM moved \
                         ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL AND state = 'queued' \
                         DO UPDATE SET run_at = least(jobs.run_at, excluded.run_at) \
                         RETURNING (xmax = 0) AS inserted) \
         SELECT (SELECT count(*) FROM queued WHERE inserted), \
                coalesce(greatest(extract(epoch FROM least( \
                    (SELECT min(next) FROM moved), \
                    (SELECT min(next_run_at) FROM job_schedules \
                     WHERE name = ANY($1) AND name NOT IN (SELECT name FROM moved))) - now()), 0), 1)::float8",
    )
    .bind(names)
    .fetch_one(pool)
    .await
}
