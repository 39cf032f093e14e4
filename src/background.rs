//! The server's background work, every piece of it a job on the durable queue
//! (`jobs/`): the job kinds of the areas' upkeep, their periodic schedules (each
//! runs once per period across all replicas), and starting the runner that serves
//! them. What stays outside the queue, and why: refreshing this process's copy of
//! the signing keys (`AppState::spawn_upkeep`), because every replica must do it
//! for its own memory, where a job runs on one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::jobs::{self, Job, JobError, Registry, Runner, RunnerConfig};
use crate::state::AppState;

/// Deletes rate-limit windows older than a day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneRateWindows {}

impl Job for PruneRateWindows {
    const KIND: &'static str = "auth.prune_rate_windows";
    const MAX_ATTEMPTS: i32 = 3;
}

/// Removes storage orphans (blobs without rows, abandoned uploads, staging files,
/// unreferenced variants) older than `min_age_secs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepStorage {
    /// Only orphans older than this are removed (a write in progress is younger).
    pub min_age_secs: u64,
}

impl Job for SweepStorage {
    const KIND: &'static str = "storage.sweep";
    const MAX_ATTEMPTS: i32 = 3;
}

/// Refreshes the tokens of idle connections that are due.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshIdleConnections {}

impl Job for RefreshIdleConnections {
    const KIND: &'static str = "connections.refresh_idle";
    const MAX_ATTEMPTS: i32 = 3;
}

/// Re-seals secrets not sealed with the primary key (after a key rotation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reencrypt {}

impl Job for Reencrypt {
    const KIND: &'static str = "crypto.reencrypt";
    const MAX_ATTEMPTS: i32 = 5;
}

/// Deletes finished jobs (done, cancelled) older than `older_than_secs`; failed
/// ones stay until retried or deleted by an operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneJobs {
    /// Age after which a finished job's row goes.
    pub older_than_secs: u64,
}

impl Job for PruneJobs {
    const KIND: &'static str = "jobs.prune";
    const MAX_ATTEMPTS: i32 = 3;
}

/// Every job kind the server runs, with the periodic schedules.
pub fn registry(config: &crate::config::Config) -> Registry<AppState> {
    let registry =
        Registry::default()
            .handle(|s: AppState, _: PruneRateWindows, _| async move {
                crate::auth::db::prune_windows(&s.pool).await?;
                crate::auth::mfa::db::prune_challenges(&s.pool).await?;
                crate::auth::social::db::prune_flows(&s.pool).await?;
                crate::auth::passkeys::db::prune_ceremonies(&s.pool).await?;
                Ok(())
            })
            .handle(|s: AppState, j: SweepStorage, _| async move {
                let r = crate::storage::sweep(&s.pool, &s.storage.blobs, Duration::from_secs(j.min_age_secs))
                    .await
                    .map_err(JobError::failed)?;
                if r != crate::storage::SweepReport::default() {
                    tracing::info!(
                        orphan_blobs = r.orphan_blobs,
                        uploads = r.uploads,
                        staging_files = r.staging_files,
                        variants = r.variants,
                        "storage sweep"
                    );
                }
                Ok(())
            })
            .handle(|s: AppState, _: RefreshIdleConnections, _| async move {
                crate::connections::upkeep::refresh_idle(&s.connections, Duration::from_secs(600)).await?;
                Ok(())
            })
            .handle(|s: AppState, _: Reencrypt, _| async move {
                let n = crate::db::shared::reencrypt_all(&s.pool, &s.keyring).await?;
                if n > 0 {
                    tracing::info!(rows = n, "re-encrypted secrets under the primary key");
                }
                Ok(())
            })
            .handle(|s: AppState, _: crate::connections::webhooks::Deliver, _| async move {
                crate::connections::webhooks::deliver_all_due(&s.connections).await
            })
            .handle(|s: AppState, j: PruneJobs, _| async move {
                jobs::db::prune(&s.pool, j.older_than_secs as f64).await?;
                Ok(())
            })
            .handle(|s: AppState, j: crate::knowledge::ingest::Ingest, a| async move {
                crate::knowledge::ingest::run(&s.knowledge, j, a).await
            })
            .handle(|s: AppState, j: crate::knowledge::ingest::Embed, _| async move {
                crate::knowledge::ingest::embed(&s.knowledge, j).await
            })
            .handle(|s: AppState, j: crate::memory::jobs::Extract, a| async move {
                crate::memory::jobs::run_extract(&s.memory, j, a).await
            })
            .handle(|s: AppState, j: crate::memory::jobs::Embed, _| async move {
                crate::memory::jobs::run_embed(&s.memory, j).await
            })
            .handle(|s: AppState, _: crate::memory::jobs::Scan, _| async move {
                crate::memory::jobs::run_scan(&s.memory).await
            })
            .every("auth.prune_rate_windows", Duration::from_secs(3600), &PruneRateWindows {})
            .every("storage.sweep", Duration::from_secs(600), &SweepStorage { min_age_secs: 3600 })
            .every("connections.refresh_idle", Duration::from_secs(300), &RefreshIdleConnections {})
            .every("crypto.reencrypt", Duration::from_secs(300), &Reencrypt {})
            // Deliveries are queued with each event; this catches up after an outage.
            .every("webhooks.deliver", Duration::from_secs(60), &crate::connections::webhooks::Deliver {})
            .every("jobs.prune", Duration::from_secs(3600), &PruneJobs { older_than_secs: 86_400 });
    // Without an extraction model there is nothing to scan for.
    match config.memory.llm {
        Some(_) => registry.every("memory.scan", config.memory.scan_interval, &crate::memory::jobs::Scan {}),
        None => registry,
    }
}

/// Starts the job runner for `state`: `job_workers` workers, the schedules, and a
/// re-encryption pass soon after start (a replica may have come up with a new key).
pub async fn start(state: &AppState) -> Result<Runner, sqlx::Error> {
    let config = RunnerConfig {
        concurrency: state.config.job_workers,
        lease: state.config.job_lease,
        ..RunnerConfig::default()
    };
    let runner = Runner::start(
        state.pool.clone(),
        state.clone(),
        registry(&state.config),
        config,
        state.config.shutdown_timeout,
    )
    .await?;
    let mut conn = state.pool.acquire().await?;
    let startup = jobs::Options { unique_key: Some("startup".into()), ..Default::default() };
    if let Err(e) = jobs::enqueue(&mut conn, &Reencrypt {}, startup).await {
        tracing::warn!(error = %e, "queueing the start-up re-encryption");
    }
    if let Err(e) = crate::knowledge::ingest::prepare(&state.knowledge).await {
        tracing::warn!(error = %e, "preparing the knowledge base's vector index");
    }
    if let Err(e) = crate::memory::jobs::prepare(&state.memory).await {
        tracing::warn!(error = %e, "preparing memory's vector index");
    }
    runner.notify();
    Ok(runner)
}
