//! The durable job queue: every piece of background work is a job in PostgreSQL
//! (`jobs` table, claimed with `FOR UPDATE SKIP LOCKED`), never a hand-written loop.
//!
//! - **Typed jobs**: a [`Job`] is a serde payload with a kind name; [`enqueue`] stores
//!   it (optionally at a later `run_at`, with a unique key so the same pending job is
//!   not queued twice), inside the caller's transaction when it has one.
//! - **Attempts**: a failed attempt is queued again after an exponential backoff
//!   (2ⁿ s, capped); after `max_attempts` the job is `failed` with its last error kept
//!   (`carmenta jobs list --failed`, `carmenta jobs retry ID`).
//! - **Leases**: a claim holds the job for the lease time and the worker extends it
//!   while the handler runs; when a worker dies (SIGKILL, power loss) its lease runs
//!   out and another worker claims the job again.
//! - **Schedules**: periodic jobs are rows in `job_schedules`; the replica that locks
//!   a due row first moves it to its next period and queues the job, so a schedule
//!   runs once per period however many replicas are up.
//! - **Cancellation**: [`cancel`] ends a queued job, and a running one at its next
//!   heartbeat (its handler future is dropped).
//! - **Shutdown**: [`Runner::shutdown`] stops claiming; in-flight jobs get the drain
//!   time to finish, then are released (queued again, the attempt not counted).
//! - **Metrics**: `carmenta_jobs{kind,state}` (set at each `/metrics` scrape by
//!   [`record_gauges`]), `carmenta_job_start_delay_seconds{kind}` (from `run_at` to
//!   start), `carmenta_jobs_finished_total{kind,outcome}`.

pub mod db;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

pub use db::JobRow;

/// A kind of job: its payload type, its name, and how often it may be tried.
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The kind's stable name (`storage.sweep`, `webhooks.deliver`, …).
    const KIND: &'static str;
    /// Attempts before the job is `failed`.
    const MAX_ATTEMPTS: i32 = 10;
}

/// Why a job attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The payload did not match the job's type.
    #[error("bad payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// The database refused.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The handler's own error.
    #[error("{0}")]
    Failed(String),
}

impl JobError {
    /// A handler error from anything displayable.
    pub fn failed(e: impl std::fmt::Display) -> JobError {
        JobError::Failed(e.to_string())
    }
}

/// When and how to queue a job.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Not before this time (default: now).
    pub run_at: Option<OffsetDateTime>,
    /// At most one queued job of this kind with this key.
    pub unique_key: Option<String>,
}

/// Queues `job` on `conn` (a pool connection or the caller's transaction, so the
/// job exists exactly when the change that asked for it commits). Returns the job's
/// id and whether it was new (false: the same unique job was already queued). A
/// payload that cannot be serialised is an encoding error, as for any bound value.
pub async fn enqueue<J: Job>(
    conn: &mut sqlx::PgConnection,
    job: &J,
    options: Options,
) -> Result<(Uuid, bool), sqlx::Error> {
    let payload = serde_json::to_value(job).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    db::insert(conn, J::KIND, &payload, options.run_at, J::MAX_ATTEMPTS, options.unique_key.as_deref()).await
}

/// Cancels a queued or running job; false when it had finished or does not exist.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    db::cancel(pool, id).await
}

/// Queues a failed or cancelled job again with fresh attempts.
pub async fn retry(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    db::retry(pool, id).await
}

/// Sets the `carmenta_jobs{kind,state}` gauges from the table (for `/metrics`).
pub async fn record_gauges(pool: &PgPool) -> Result<(), sqlx::Error> {
    for (kind, state, n) in db::counts(pool).await? {
        metrics::gauge!("carmenta_jobs", "kind" => kind, "state" => state).set(n as f64);
    }
    Ok(())
}

/// What a claimed job's handler is told besides its payload.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The job's id.
    pub id: Uuid,
    /// This attempt's number (1 for the first).
    pub number: i32,
    /// Attempts allowed.
    pub max: i32,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;
type Handler<C> = Arc<dyn Fn(C, Value, Attempt) -> BoxFuture + Send + Sync>;

/// A periodic schedule: job `kind` with `payload` every `every`.
#[derive(Debug, Clone)]
struct Schedule {
    name: String,
    kind: String,
    payload: Value,
    every: Duration,
}

/// The handlers and schedules a runner serves, over a context `C` (the server's
/// state; the queue itself knows nothing of it).
pub struct Registry<C> {
    handlers: HashMap<&'static str, Handler<C>>,
    schedules: Vec<Schedule>,
}

impl<C: Clone + Send + Sync + 'static> Default for Registry<C> {
    fn default() -> Self {
        Registry { handlers: HashMap::new(), schedules: Vec::new() }
    }
}

impl<C: Clone + Send + Sync + 'static> Registry<C> {
    /// Registers the handler of job type `J`.
    pub fn handle<J, F, Fut>(mut self, f: F) -> Self
    where
        J: Job,
        F: Fn(C, J, Attempt) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Handler<C> = Arc::new(move |ctx, payload, attempt| {
            let f = f.clone();
            Box::pin(async move {
                let job: J = serde_json::from_value(payload)?;
                f(ctx, job, attempt).await
            })
        });
        self.handlers.insert(J::KIND, handler);
        self
    }

    /// Runs job `job` every `every` (once per period across all replicas); its
    /// kind must have a handler.
    pub fn every<J: Job>(mut self, name: &str, every: Duration, job: &J) -> Self {
        let payload = serde_json::to_value(job).unwrap_or(Value::Object(Default::default()));
        self.schedules.push(Schedule { name: name.to_string(), kind: J::KIND.to_string(), payload, every });
        self
    }
}

/// How a runner works.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// How long a claim holds without a heartbeat (heartbeats every third of it).
    pub lease: Duration,
    /// How often an idle worker looks for work (jobs queued here wake it at once).
    pub poll: Duration,
    /// The longest backoff between attempts.
    pub max_backoff: Duration,
    /// This process's name in `jobs.worker`.
    pub worker: String,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            concurrency: 2,
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3600),
            worker: format!("{}:{}", hostname(), std::process::id()),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into())
}

/// The backoff after attempt `n` failed: 2ⁿ seconds, at most `max`.
pub fn backoff(n: i32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << n.clamp(0, 30)).min(max)
}

/// A running worker pool: claims jobs, runs their handlers, fires schedules.
pub struct Runner {
    stop: watch::Sender<bool>,
    wake: Arc<Notify>,
    tasks: tokio::task::JoinHandle<()>,
    drain: Duration,
}

impl Runner {
    /// Starts `config.concurrency` workers and the scheduler over `pool`.
    pub async fn start<C: Clone + Send + Sync + 'static>(
        pool: PgPool,
        ctx: C,
        registry: Registry<C>,
        config: RunnerConfig,
        drain: Duration,
    ) -> Result<Runner, sqlx::Error> {
        for s in &registry.schedules {
            db::upsert_schedule(&pool, &s.name, &s.kind, &s.payload, s.every.as_secs_f64()).await?;
        }
        let (stop, stopped) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let shared = Arc::new(Shared {
            pool,
            kinds: registry.handlers.keys().map(|k| k.to_string()).collect(),
            handlers: registry.handlers,
            schedules: registry.schedules.iter().map(|s| s.name.clone()).collect(),
            config,
            wake: wake.clone(),
            drain,
        });
        let tasks = tokio::spawn(async move {
            let mut set = JoinSet::new();
            for _ in 0..shared.config.concurrency.max(1) {
                set.spawn(worker(shared.clone(), ctx.clone(), stopped.clone()));
            }
            if !shared.schedules.is_empty() {
                set.spawn(scheduler(shared.clone(), stopped.clone()));
            }
            while set.join_next().await.is_some() {}
        });
        Ok(Runner { stop, wake, tasks, drain })
    }

    /// Wakes an idle worker (after queueing a job in this process).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Stops claiming; waits for in-flight jobs up to the drain time, after which
    /// they are released to be run again.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.wake.notify_waiters();
        // Workers release their jobs themselves at the drain deadline; this bound
        // only guards against a handler that ignores being dropped.
        let _ = tokio::time::timeout(self.drain + Duration::from_secs(5), self.tasks).await;
    }
}

struct Shared<C> {
    pool: PgPool,
    kinds: Vec<String>,
    handlers: HashMap<&'static str, Handler<C>>,
    schedules: Vec<String>,
    config: RunnerConfig,
    wake: Arc<Notify>,
    drain: Duration,
}

async fn worker<C: Clone + Send + Sync + 'static>(shared: Arc<Shared<C>>, ctx: C, mut stopped: watch::Receiver<bool>) {
    let lease = shared.config.lease.as_secs_f64();
    while !*stopped.borrow() {
        let claimed = match db::claim(&shared.pool, &shared.config.worker, &shared.kinds, lease).await {
            Ok(c) => c,
            Err(e) => {
                if shared.pool.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "claiming a job");
                None
            }
        };
        let Some(job) = claimed else {
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(shared.config.poll) => {}
                r = stopped.changed() => if r.is_err() { return },
            }
            continue;
        };
        run_one(&shared, ctx.clone(), job, &mut stopped).await;
    }
}

/// Runs one claimed job to its end: done, retried, failed, cancelled or released.
async fn run_one<C: Clone + Send + Sync + 'static>(
    shared: &Shared<C>,
    ctx: C,
    mut job: db::Claimed,
    stopped: &mut watch::Receiver<bool>,
) {
    let kind = job.kind.clone();
    let delay = (job.started_at - job.run_at).as_seconds_f64().max(0.0);
    metrics::histogram!("carmenta_job_start_delay_seconds", "kind" => kind.clone()).record(delay);
    let pool = &shared.pool;
    let outcome = |o: &'static str| {
        metrics::counter!("carmenta_jobs_finished_total", "kind" => kind.clone(), "outcome" => o).increment(1);
    };
    if job.attempts > job.max_attempts {
        // Its earlier workers died holding it, as many times as it may be tried.
        let msg = format!("{}; the worker was lost (lease expired)", lost_error(job.attempts - 1));
        if let Err(e) = db::fail(pool, job.id, job.lease_token, &msg, 0.0, true).await {
            tracing::warn!(job = %job.id, error = %e, "recording a lost job");
        }
        outcome("failed");
        return;
    }
    let Some(handler) = shared.handlers.get(kind.as_str()).cloned() else { return };
    let attempt = Attempt { id: job.id, number: job.attempts, max: job.max_attempts };
    let mut run = handler(ctx, std::mem::take(&mut job.payload), attempt);
    let lease = shared.config.lease;
    let mut beat = tokio::time::interval(lease / 3);
    beat.tick().await;
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let result = loop {
        tokio::select! {
            r = &mut run => break Some(r),
            _ = beat.tick() => {
                match db::heartbeat(pool, job.id, job.lease_token, lease.as_secs_f64()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Cancelled, or taken over after a lost lease: stop here.
                        tracing::info!(job = %job.id, kind = %kind, "job cancelled or taken over; stopping it");
                        outcome("cancelled");
                        return;
                    }
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "job heartbeat"),
                }
            }
            _ = stopped.changed(), if deadline.is_none() => {
                deadline = Some(Box::pin(tokio::time::sleep(shared.drain)));
            }
            _ = async { if let Some(d) = deadline.as_mut() { d.await } }, if deadline.is_some() => break None,
        }
    };
    match result {
        None => {
            drop(run);
            match db::release(pool, job.id, job.lease_token).await {
                Ok(_) => tracing::info!(job = %job.id, kind = %kind, "job released at shutdown"),
                Err(e) => tracing::warn!(job = %job.id, error = %e, "releasing a job; its lease will run out"),
            }
            outcome("released");
        }
        Some(Ok(())) => {
            if let Err(e) = db::complete(pool, job.id, job.lease_token).await {
                tracing::warn!(job = %job.id, error = %e, "recording a finished job");
            }
            outcome("done");
        }
        Some(Err(e)) => {
            let give_up = job.attempts >= job.max_attempts;
            let wait = backoff(job.attempts, shared.config.max_backoff);
            let msg = e.to_string();
            tracing::warn!(job = %job.id, kind = %kind, attempt = job.attempts, give_up, error = %msg, "job failed");
            if let Err(e) = db::fail(pool, job.id, job.lease_token, &msg, wait.as_secs_f64(), give_up).await {
                tracing::warn!(job = %job.id, error = %e, "recording a failed job");
            }
            outcome(if give_up { "failed" } else { "retry" });
        }
    }
}

fn lost_error(n: i32) -> String {
    if n == 1 { "tried once".into() } else { format!("tried {n} times") }
}

async fn scheduler<C>(shared: Arc<Shared<C>>, mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow() {
        let next = match db::fire_schedules(&shared.pool, &shared.schedules).await {
            Ok((queued, next)) => {
                if queued > 0 {
                    shared.wake.notify_one();
                }
                next
            }
            Err(e) => {
                if shared.pool.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "firing job schedules");
                1.0
            }
        };
        // Wake at the next due time, but look again at least every second (another
        // replica may have moved it, or a new schedule appeared).
        let wait = Duration::from_secs_f64(next.clamp(0.05, 1.0));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = stopped.changed() => if r.is_err() { return },
        }
    }
}
