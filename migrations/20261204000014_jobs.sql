-- The durable job queue (src/jobs): one table of jobs claimed with FOR UPDATE SKIP
-- LOCKED, and periodic schedules that one replica at a time turns into jobs.
CREATE TABLE jobs (
    id uuid PRIMARY KEY,
    kind text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    state text NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    run_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 10 CHECK (max_attempts >= 1),
    last_error text,
    -- The same pending job is not queued twice: (kind, unique_key) is unique among
    -- queued jobs (a running one may have one queued successor).
    unique_key text,
    -- The claim: who holds it (a fresh token per claim) and until when; a job whose
    -- lease ran out (its worker died) is claimed again.
    lease_token uuid,
    lease_until timestamptz,
    worker text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz
);

CREATE UNIQUE INDEX jobs_unique_queued ON jobs (kind, unique_key)
    WHERE unique_key IS NOT NULL AND state = 'queued';
CREATE INDEX jobs_queued_run_at ON jobs (run_at) WHERE state = 'queued';
CREATE INDEX jobs_running_lease ON jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('done', 'cancelled');
CREATE INDEX jobs_failed ON jobs (finished_at DESC) WHERE state = 'failed';

CREATE TABLE job_schedules (
    name text PRIMARY KEY,
    kind text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    every_secs double precision NOT NULL CHECK (every_secs > 0),
    next_run_at timestamptz NOT NULL DEFAULT now()
);
