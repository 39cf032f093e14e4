//! The durable job queue on a real PostgreSQL: exactly-once over two replicas,
//! retries with backoff until `failed` with the error kept, unique keys,
//! cancellation, periodic schedules once per period with two replicas up, graceful
//! shutdown, a SIGKILLed server's job run again by another replica after its
//! lease, and the `carmenta jobs` commands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carmenta::jobs::{self, Job, JobError, Options, Registry, Runner, RunnerConfig};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::harness::TestApp;

#[derive(Debug, Serialize, Deserialize)]
struct Count {
    n: u32,
}
impl Job for Count {
    const KIND: &'static str = "test.count";
}

#[derive(Debug, Serialize, Deserialize)]
struct Flaky {
    /// Attempts that fail before one succeeds.
    fail_first: i32,
}
impl Job for Flaky {
    const KIND: &'static str = "test.flaky";
    const MAX_ATTEMPTS: i32 = 3;
}

#[derive(Debug, Serialize, Deserialize)]
struct Tick {
    #[serde(default)]
    scheduled_for: Option<f64>,
}
impl Job for Tick {
    const KIND: &'static str = "test.tick";
}

#[derive(Debug, Serialize, Deserialize)]
struct Sleep {
    ms: u64,
}
impl Job for Sleep {
    const KIND: &'static str = "test.sleep";
}

/// What the test handlers saw: counts by key, under one lock for every replica.
type Seen = Arc<Mutex<HashMap<String, u32>>>;

fn registry() -> Registry<Seen> {
    Registry::default()
        .handle(|seen: Seen, j: Count, _| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            *seen.lock().unwrap().entry(format!("count-{}", j.n)).or_default() += 1;
            Ok(())
        })
        .handle(|seen: Seen, j: Flaky, a| async move {
            *seen.lock().unwrap().entry("flaky".into()).or_default() += 1;
            if a.number <= j.fail_first {
                return Err(JobError::failed(format!("attempt {} of {} failed on purpose", a.number, a.max)));
            }
            Ok(())
        })
        .handle(|seen: Seen, j: Tick, _| async move {
            let slot = format!("tick-{:.3}", j.scheduled_for.unwrap_or_default());
            *seen.lock().unwrap().entry(slot).or_default() += 1;
            Ok(())
        })
        .handle(|seen: Seen, j: Sleep, _| async move {
            tokio::time::sleep(Duration::from_millis(j.ms)).await;
            *seen.lock().unwrap().entry(format!("slept-{}", j.ms)).or_default() += 1;
            Ok(())
        })
}

fn config(worker: &str) -> RunnerConfig {
    RunnerConfig {
        concurrency: 3,
        lease: Duration::from_secs(5),
        poll: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
        worker: worker.into(),
    }
}

/// A replica's runner: its own pool on `app`'s database.
async fn replica(app: &TestApp, seen: &Seen, worker: &str, registry: Registry<Seen>, drain: Duration) -> Runner {
    let pool = PgPool::connect(&app.database_url()).await.unwrap();
    Runner::start(pool, seen.clone(), registry, config(worker), drain).await.unwrap()
}

async fn enqueue<J: Job>(pool: &PgPool, job: &J, options: Options) -> (uuid::Uuid, bool) {
    let mut conn = pool.acquire().await.unwrap();
    jobs::enqueue(&mut conn, job, options).await.unwrap()
}

async fn state_of(pool: &PgPool, id: uuid::Uuid) -> jobs::JobRow {
    jobs::db::get(pool, id).await.unwrap().unwrap()
}

/// Waits until `f` holds (checked every 50 ms) or `secs` pass.
async fn until(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn count_in(pool: &PgPool, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = $1").bind(state).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn each_job_runs_exactly_once_over_two_replicas() {
    let app = TestApp::spawn().await;
    let seen = Seen::default();
    for n in 0..200 {
        enqueue(&app.pool, &Count { n }, Options::default()).await;
    }
    let a = replica(&app, &seen, "replica-a", registry(), Duration::from_secs(1)).await;
    let b = replica(&app, &seen, "replica-b", registry(), Duration::from_secs(1)).await;
    assert!(until(60, async || count_in(&app.pool, "done").await == 200).await, "not all 200 jobs finished");
    a.shutdown().await;
    b.shutdown().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 200);
    assert!(seen.values().all(|&c| c == 1), "a job ran twice: {seen:?}");
    let workers: Vec<(String, i64)> =
        sqlx::query_as("SELECT worker, count(*) FROM jobs GROUP BY worker ORDER BY worker")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(workers.len(), 2, "both replicas took work: {workers:?}");
    let attempts: i64 = sqlx::query_scalar("SELECT sum(attempts) FROM jobs").fetch_one(&app.pool).await.unwrap();
    assert_eq!(attempts, 200);
}

#[tokio::test]
async fn failures_back_off_then_fail_with_the_error_kept_and_can_be_retried() {
    let app = TestApp::spawn().await;
    let seen = Seen::default();
    let (recovers, _) = enqueue(&app.pool, &Flaky { fail_first: 2 }, Options::default()).await;
    let r = replica(&app, &seen, "w", registry(), Duration::from_secs(1)).await;
    assert!(until(20, async || state_of(&app.pool, recovers).await.state == "done").await);
    let row = state_of(&app.pool, recovers).await;
    assert_eq!((row.attempts, row.last_error), (3, None), "two failures, then success");
    // Always failing: after MAX_ATTEMPTS (3) it is `failed`, its last error kept.
    let (hopeless, _) = enqueue(&app.pool, &Flaky { fail_first: 99 }, Options::default()).await;
    assert!(until(20, async || state_of(&app.pool, hopeless).await.state == "failed").await);
    let row = state_of(&app.pool, hopeless).await;
    assert_eq!(row.attempts, 3);
    assert_eq!(row.last_error.as_deref(), Some("attempt 3 of 3 failed on purpose"));
    assert!(row.finished_at.is_some());
    // Retried by hand: fresh attempts, fails again three times.
    assert!(jobs::retry(&app.pool, hopeless).await.unwrap());
    assert!(!jobs::retry(&app.pool, recovers).await.unwrap(), "a done job is not retried");
    assert!(until(20, async || state_of(&app.pool, hopeless).await.state == "failed").await);
    r.shutdown().await;
    assert_eq!(seen.lock().unwrap()["flaky"], 3 + 3 + 3);
    // The backoff: 2ⁿ seconds, capped.
    assert_eq!(jobs::backoff(1, Duration::from_secs(3600)), Duration::from_secs(2));
    assert_eq!(jobs::backoff(5, Duration::from_secs(3600)), Duration::from_secs(32));
    assert_eq!(jobs::backoff(20, Duration::from_secs(3600)), Duration::from_secs(3600));
}

#[tokio::test]
async fn unique_keys_cancellation_and_run_at() {
    let app = TestApp::spawn().await;
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let keyed = |run_at| Options { run_at, unique_key: Some("k".into()) };
    let (first, new1) = enqueue(&app.pool, &Sleep { ms: 1 }, keyed(Some(later))).await;
    let (second, new2) = enqueue(&app.pool, &Sleep { ms: 1 }, keyed(Some(later + time::Duration::hours(1)))).await;
    assert_eq!((first, new1, new2), (second, true, false), "the same pending job is not queued twice");
    assert_eq!(count_in(&app.pool, "queued").await, 1);
    assert_eq!(state_of(&app.pool, first).await.run_at.unix_timestamp(), later.unix_timestamp());
    // Queued again for sooner: the one job moves up.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
    assert_eq!(enqueue(&app.pool, &Sleep { ms: 1 }, keyed(Some(soon))).await, (first, false));
    assert_eq!(state_of(&app.pool, first).await.run_at.unix_timestamp(), soon.unix_timestamp());
    // Not due yet: a runner leaves it alone; cancelled, it never runs.
    let seen = Seen::default();
    let r = replica(&app, &seen, "w", registry(), Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state_of(&app.pool, first).await.state, "queued");
    assert!(jobs::cancel(&app.pool, first).await.unwrap());
    assert!(!jobs::cancel(&app.pool, first).await.unwrap(), "cancelled once");
    assert_eq!(state_of(&app.pool, first).await.state, "cancelled");
    // A new job with the key may be queued now that the old one is not pending.
    let (third, new3) = enqueue(&app.pool, &Sleep { ms: 1 }, keyed(None)).await;
    assert!(new3 && third != first);
    assert!(until(10, async || state_of(&app.pool, third).await.state == "done").await);
    // A running job cancelled: its worker drops it at the next heartbeat (lease/3).
    let (long, _) = enqueue(&app.pool, &Sleep { ms: 60_000 }, Options::default()).await;
    assert!(until(10, async || state_of(&app.pool, long).await.state == "running").await);
    assert!(jobs::cancel(&app.pool, long).await.unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(state_of(&app.pool, long).await.state, "cancelled");
    let started = Instant::now();
    r.shutdown().await;
    assert!(started.elapsed() < Duration::from_millis(900), "nothing left running to drain");
    assert_eq!(seen.lock().unwrap().get("slept-1"), Some(&1));
    assert_eq!(seen.lock().unwrap().get("slept-60000"), None);
}

#[tokio::test]
async fn a_periodic_job_runs_once_per_period_with_two_replicas_up() {
    let app = TestApp::spawn().await;
    let seen = Seen::default();
    let every = || registry().every("tick", Duration::from_secs(1), &Tick { scheduled_for: None });
    let started = Instant::now();
    let a = replica(&app, &seen, "replica-a", every(), Duration::from_secs(1)).await;
    let b = replica(&app, &seen, "replica-b", every(), Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    a.shutdown().await;
    b.shutdown().await;
    let elapsed = started.elapsed().as_secs_f64();
    let seen = seen.lock().unwrap().clone();
    let ticks: Vec<_> = seen.iter().filter(|(k, _)| k.starts_with("tick-")).collect();
    assert!(ticks.iter().all(|(_, c)| **c == 1), "a period ran twice: {ticks:?}");
    // One at start, then one a second: 6 here; never more than the periods that
    // began, and (allowing a loaded CI machine to miss a slot or two) at least 3.
    assert!((3..=(elapsed as usize + 1)).contains(&ticks.len()), "{} runs in {elapsed:.1} s: {ticks:?}", ticks.len());
    let runs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'test.tick'").fetch_one(&app.pool).await.unwrap();
    assert_eq!(runs as usize, ticks.len());
}

#[tokio::test]
async fn shutdown_lets_a_short_job_finish_and_releases_a_long_one() {
    let app = TestApp::spawn().await;
    let seen = Seen::default();
    let r = replica(&app, &seen, "w", registry(), Duration::from_millis(700)).await;
    let (short, _) = enqueue(&app.pool, &Sleep { ms: 300 }, Options::default()).await;
    let (long, _) = enqueue(&app.pool, &Sleep { ms: 30_000 }, Options::default()).await;
    assert!(
        until(10, async || {
            state_of(&app.pool, short).await.state == "running" && state_of(&app.pool, long).await.state == "running"
        })
        .await
    );
    let started = Instant::now();
    r.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert_eq!(state_of(&app.pool, short).await.state, "done", "finished within the drain time");
    let row = state_of(&app.pool, long).await;
    assert_eq!(
        (row.state.as_str(), row.attempts, row.worker),
        ("queued", 0, None),
        "released, the attempt not counted"
    );
    // Another replica picks it up.
    let r2 = replica(&app, &seen, "w2", registry(), Duration::from_millis(100)).await;
    assert!(until(10, async || state_of(&app.pool, long).await.state == "running").await);
    r2.shutdown().await;
}

/// A TCP server that accepts connections and never answers (a hung webhook receiver).
async fn black_hole() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    url
}

#[tokio::test]
async fn a_job_whose_server_is_sigkilled_runs_again_after_its_lease() {
    let secret_key: [u8; 24] = rand::random();
    let secret = format!("whsec_{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, secret_key));
    let (good, recv) = crate::connections::receiver::start(secret_key.to_vec()).await;
    let (good_url, secret2) = (good.clone(), secret.clone());
    let app = TestApp::builder()
        .config(move |c| {
            c.webhook_url = Some(good_url.parse().unwrap());
            c.webhook_secret = Some(carmenta::config::Secret::new(secret2));
            c.job_lease = Duration::from_secs(3);
        })
        .spawn()
        .await;
    // An event: its delivery job is queued with it.
    let mut conn = app.pool.acquire().await.unwrap();
    carmenta::connections::webhooks::emit(&mut conn, "test.event", serde_json::json!({"n": 1})).await.unwrap();
    drop(conn);
    // A real server process on the same database whose receiver hangs: it claims the
    // delivery job and is killed in the middle of it.
    let dir = crate::harness::temp_dir("carmenta-jobs-kill-");
    let port = crate::cli::free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_carmenta"));
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CARMENTA_CONFIG", "/dev/null")
        .env("CARMENTA_DATA_DIR", &dir)
        .env("CARMENTA_LISTEN", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", app.database_url())
        .env("CARMENTA_ENCRYPTION_KEY", app.state.config.encryption_keys[0].expose())
        .env("CARMENTA_WEBHOOK_URL", black_hole().await)
        .env("CARMENTA_WEBHOOK_SECRET", &secret)
        .env("CARMENTA_JOB_LEASE", "3");
    let server = crate::cli::Server::spawn(cmd);
    let job = || async {
        sqlx::query_as::<_, (uuid::Uuid, String, Option<String>, i32)>(
            "SELECT id, state, worker, attempts FROM jobs WHERE kind = 'webhooks.deliver' AND unique_key = 'outbox'",
        )
        .fetch_optional(&app.pool)
        .await
        .unwrap()
    };
    let pid = server.pid();
    assert!(
        until(60, async || job()
            .await
            .is_some_and(|(_, s, w, _)| s == "running" && w.is_some_and(|w| w.ends_with(&format!(":{pid}")))))
        .await,
        "the server never claimed the delivery job: {:?}\n{}",
        job().await,
        server.log()
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();
    drop(server);
    let (id, state, _, attempts) = job().await.unwrap();
    assert_eq!((state.as_str(), attempts), ("running", 1), "still held by the dead worker until its lease runs out");
    // Another replica (this process, with a receiver that answers) runs it again
    // once the lease has run out, and the event arrives once.
    let runner = carmenta::background::start(&app.state).await.unwrap();
    assert!(
        until(30, async || recv.got.lock().unwrap().len() == 1).await,
        "the event was not delivered after the kill"
    );
    assert!(killed_at.elapsed() >= Duration::from_secs(1), "not before the lease ran out");
    assert!(until(10, async || state_of(&app.pool, id).await.state == "done").await);
    let row = state_of(&app.pool, id).await;
    assert_eq!(row.attempts, 2, "one attempt lost with the killed server, one that finished");
    runner.shutdown().await;
    assert_eq!(recv.got.lock().unwrap()[0]["type"], "test.event");
}

#[tokio::test]
async fn jobs_list_failed_and_retry_from_the_command_line() {
    let app = TestApp::spawn().await;
    let seen = Seen::default();
    let (id, _) = enqueue(&app.pool, &Flaky { fail_first: 99 }, Options::default()).await;
    let r = replica(&app, &seen, "w", registry(), Duration::from_secs(1)).await;
    assert!(until(20, async || state_of(&app.pool, id).await.state == "failed").await);
    r.shutdown().await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_carmenta"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CARMENTA_CONFIG", "/dev/null")
            .env("DATABASE_URL", app.database_url())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(&["jobs", "list", "--failed"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&id.to_string()) && out.contains("attempt 3 of 3 failed on purpose"), "{out}");
    let (code, out, _) = cli(&["jobs", "list", "--state", "done"]);
    assert_eq!((code, out.contains(&id.to_string())), (Some(0), false));
    let (code, _, err) = cli(&["jobs", "retry", &id.to_string()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(state_of(&app.pool, id).await.state, "queued");
    // The metrics' counts: an emptied state reads 0, not its last count.
    let counts = jobs::db::counts(&app.pool).await.unwrap();
    let of = |state: &str| counts.iter().find(|(k, s, _)| k == "test.flaky" && s == state).map(|c| c.2);
    assert_eq!((of("failed"), of("queued"), of("done")), (Some(0), Some(1), Some(0)), "{counts:?}");
    let (code, _, err) = cli(&["jobs", "retry", &id.to_string()]);
    assert_ne!(code, Some(0), "a queued job is not retried: {err}");
    let (code, _, err) = cli(&["jobs", "retry", "not-a-uuid"]);
    assert!(code != Some(0) && err.contains("not a job id"), "{err}");
    let (code, _, err) = cli(&["jobs", "cancel", &id.to_string()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(state_of(&app.pool, id).await.state, "cancelled");
}

#[tokio::test]
async fn a_failed_unique_job_with_a_queued_successor_is_not_queued_twice() {
    use carmenta::jobs::db;
    let app = TestApp::spawn().await;
    let mut conn = app.pool.acquire().await.unwrap();
    let payload = serde_json::json!({});
    let kinds = vec!["test.unique".to_string()];
    for give_back in [false, true] {
        let (first, _) = db::insert(&mut conn, "test.unique", &payload, None, 5, Some("k")).await.unwrap();
        let claimed = db::claim(&app.pool, "w", &kinds, 60.0).await.unwrap().expect("claimed");
        assert_eq!(claimed.id, first);
        // While it runs, the same work is asked for again: a queued successor.
        let (second, new) = db::insert(&mut conn, "test.unique", &payload, None, 5, Some("k")).await.unwrap();
        assert!(new);
        // Failing (or giving back) the running one must not collide with it.
        let done = if give_back {
            db::release(&app.pool, first, claimed.lease_token).await.unwrap()
        } else {
            db::fail(&app.pool, first, claimed.lease_token, "boom", 1.0, false).await.unwrap()
        };
        assert!(done);
        let states: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, state FROM jobs WHERE kind = 'test.unique' AND id IN ($1, $2) ORDER BY id")
                .bind(first)
                .bind(second)
                .fetch_all(&app.pool)
                .await
                .unwrap();
        assert_eq!(states, vec![(first, "cancelled".to_string()), (second, "queued".to_string())]);
        sqlx::query("DELETE FROM jobs WHERE kind = 'test.unique'").execute(&app.pool).await.unwrap();
    }
}
