//! The `carmenta` command line: `serve`, `migrate`, `doctor`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use carmenta::config::Config;

/// Carmenta: the self-hosted backend beneath an AI assistant's chat UI.
///
/// Configuration comes from CARMENTA_* environment variables and an optional
/// carmenta.toml (the environment wins); see the README.
#[derive(Debug, Parser)]
#[command(name = "carmenta", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the HTTP server (embedded PostgreSQL unless DATABASE_URL is set).
    ///
    /// Starts the private PostgreSQL cluster under the data directory (running
    /// initdb on first start), applies migrations, and serves until SIGINT or
    /// SIGTERM, then drains in-flight requests and stops the cluster.
    Serve,
    /// Apply pending database migrations and exit.
    ///
    /// Works while a server is running on the same data directory.
    Migrate,
    /// Check the environment and print the resolved configuration (secrets redacted).
    ///
    /// Checks PostgreSQL binaries, the ltree and vector extensions, libvips, the
    /// data directory and the encryption key; each failure says how to fix it.
    /// Exits non-zero if any check fails.
    Doctor,
    /// Show mail written to the outbox (the embedded default has no SMTP).
    Mail {
        /// Only mail to this address.
        #[arg(long)]
        to: Option<String>,
        /// How many messages, newest first.
        #[arg(long, default_value_t = 10)]
        limit: i64,
    },
    /// Manage service keys and access-token signing keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Inspect and steer background jobs (works while the server runs).
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Manage admins of the console at /admin.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Extract a file's text (stdin) as JSON (stdout): the sandboxed child process
    /// the knowledge base's ingestion runs; not needed by hand.
    #[command(hide = true)]
    Extract {
        /// pdf, docx, html, markdown or text.
        #[arg(long)]
        format: String,
        /// Most PDF pages read.
        #[arg(long, default_value_t = 2000)]
        max_pages: u32,
        /// Most bytes of text.
        #[arg(long, default_value_t = 5 * 1024 * 1024)]
        max_text_bytes: u64,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCmd {
    /// Make the account with this email an admin (creating it if there is none)
    /// and print a one-time sign-in link to the console (valid 30 minutes).
    Create {
        /// The admin's email.
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
enum JobsCmd {
    /// List jobs, newest first: id, kind, state, attempts, due time, last error.
    List {
        /// Only failed jobs (with their last error).
        #[arg(long, conflicts_with = "state")]
        failed: bool,
        /// Only jobs in this state: queued, running, done, failed, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue a failed or cancelled job again, with fresh attempts.
    Retry {
        /// The job's id.
        id: String,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// The job's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCmd {
    /// Create a service key and print it (alone, once) on standard output.
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// Allow only reads (GET/HEAD); the default is full access.
        #[arg(long)]
        read_only: bool,
    },
    /// List service keys (never the secrets).
    List,
    /// Revoke a service key by id or name.
    Revoke {
        /// The key's id or name.
        key: String,
    },
    /// Rotate the access-token signing key; the old one stays published until its
    /// last token expires.
    Rotate,
}

/// Rust's allocations go to mimalloc; C libraries (libvips, libjpeg-turbo) keep
/// glibc's malloc. On the request path buffers are allocated on one tokio thread
/// and freed on another, and glibc's arena locks made that a futex call in one
/// sample of eight (ARCHITECTURE.md, "mimalloc for Rust's allocations").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    carmenta::tune_allocators();
    carmenta::config::raise_fd_limit();
    let cli = Cli::parse();
    if let Cmd::Extract { format, max_pages, max_text_bytes } = &cli.command {
        let limits = carmenta::knowledge::extract::Limits { max_pages: *max_pages, max_text_bytes: *max_text_bytes };
        let code = carmenta::knowledge::extract::isolated::child_main(format, limits);
        return ExitCode::from(code as u8);
    }
    carmenta::install_tls_provider();
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("carmenta: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    carmenta::telemetry::init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("carmenta: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Cmd::Serve => match carmenta::server::serve(config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("carmenta: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Cmd::Migrate => match carmenta::server::migrate(config).await {
                Ok(versions) => {
                    println!("migrations applied: {}", versions.len());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("carmenta: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Cmd::Doctor => doctor(config).await,
            Cmd::Mail { to, limit } => match mail(config, to, limit).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("carmenta: {e:#}");
                    ExitCode::FAILURE
                }
            },
            // Handled before the configuration is read.
            Cmd::Extract { .. } => ExitCode::SUCCESS,
            Cmd::Jobs(cmd) => match jobs(config, cmd).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("carmenta: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Cmd::Admin(cmd) => match admin(config, cmd).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("carmenta admin: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Cmd::Key(cmd) => match key(config, cmd).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("carmenta: {e:#}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

async fn admin(config: Config, cmd: AdminCmd) -> anyhow::Result<()> {
    let database = carmenta::db::open(&config, carmenta::db::OpenMode::Client).await?;
    let pool = database.pool.clone();
    let result = async {
        match cmd {
            AdminCmd::Create { email } => {
                let created = carmenta::admin::service::create_admin(&pool, config.public_url.as_str(), &email)
                    .await
                    .map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.code))?;
                let what = match (created.new_account, created.already_admin) {
                    (true, _) => "created the account and made it an admin",
                    (false, false) => "made the existing account an admin",
                    (false, true) => "the account is already an admin",
                };
                eprintln!("{what} ({}); a one-time sign-in link, valid 30 minutes:", created.user_id);
                println!("{}", created.link);
            }
        }
        Ok(())
    }
    .await;
    database.close().await;
    result
}

async fn key(config: Config, cmd: KeyCmd) -> anyhow::Result<()> {
    use carmenta::auth::{db, service, tokens};
    let keyring = carmenta::server::resolve_keyring(&config)?;
    let database = carmenta::db::open(&config, carmenta::db::OpenMode::Client).await?;
    let pool = database.pool.clone();
    let result = async {
        match cmd {
            KeyCmd::Create { name, read_only } => {
                let name = name.trim();
                anyhow::ensure!(!name.is_empty() && name.len() <= 100, "--name must be 1 to 100 characters");
                let (secret, row) = service::create_service_key(&pool, name, !read_only).await?;
                eprintln!("created service key {} ({}, {}); it is shown once:", row.id, row.name, row.scope);
                println!("{secret}");
            }
            KeyCmd::List => {
                for k in db::list_service_keys(&pool).await? {
                    let used = k.last_used_at.map_or("never".to_string(), |t| t.to_string());
                    println!("{}  {:<24} {:<5} {}…  last used {used}", k.id, k.name, k.scope, k.prefix);
                }
            }
            KeyCmd::Revoke { key } => {
                let n = db::revoke_service_key(&pool, &key).await?;
                anyhow::ensure!(n > 0, "no live service key with id or name {key:?}");
                eprintln!("revoked {n} key(s)");
            }
            KeyCmd::Rotate => {
                let kid = tokens::rotate(&pool, &keyring).await?;
                eprintln!("new signing key {kid}; running servers pick it up within a minute");
                println!("{kid}");
            }
        }
        Ok(())
    }
    .await;
    database.close().await;
    result
}

async fn jobs(config: Config, cmd: JobsCmd) -> anyhow::Result<()> {
    use carmenta::jobs;
    let parse_id = |id: &str| uuid::Uuid::parse_str(id.trim()).map_err(|_| anyhow::anyhow!("`{id}` is not a job id"));
    // Checked before the database is opened: a typo costs nothing.
    let id = match &cmd {
        JobsCmd::Retry { id } | JobsCmd::Cancel { id } => Some(parse_id(id)?),
        JobsCmd::List { state: Some(s), .. }
            if !["queued", "running", "done", "failed", "cancelled"].contains(&s.as_str()) =>
        {
            anyhow::bail!("--state must be queued, running, done, failed or cancelled")
        }
        JobsCmd::List { .. } => None,
    };
    let database = carmenta::db::open(&config, carmenta::db::OpenMode::Client).await?;
    let pool = database.pool.clone();
    let result = async {
        match (cmd, id) {
            (JobsCmd::List { failed, state, limit, json }, _) => {
                let state = if failed { Some("failed".to_string()) } else { state };
                let rows = jobs::db::list(&pool, state.as_deref(), limit.clamp(1, 10_000)).await?;
                if rows.is_empty() {
                    eprintln!("no jobs");
                }
                for r in rows {
                    if json {
                        println!("{}", serde_json::to_string(&r)?);
                    } else {
                        let error = r.last_error.as_deref().unwrap_or("").replace('\n', " ");
                        println!(
                            "{}  {:<26} {:<9} {}/{}  {}  {}",
                            r.id, r.kind, r.state, r.attempts, r.max_attempts, r.run_at, error
                        );
                    }
                }
                Ok(())
            }
            (JobsCmd::Retry { .. }, Some(id)) => {
                anyhow::ensure!(
                    jobs::retry(&pool, id).await?,
                    "job {id} is not failed or cancelled (or does not exist, or the same job is queued already)"
                );
                eprintln!("job {id} queued again");
                Ok(())
            }
            (JobsCmd::Cancel { .. }, Some(id)) => {
                anyhow::ensure!(
                    jobs::cancel(&pool, id).await?,
                    "job {id} is not queued or running (or does not exist)"
                );
                eprintln!("job {id} cancelled");
                Ok(())
            }
            _ => Ok(()),
        }
    }
    .await;
    database.close().await;
    result
}

async fn mail(config: Config, to: Option<String>, limit: i64) -> anyhow::Result<()> {
    let database = carmenta::db::open(&config, carmenta::db::OpenMode::Client).await?;
    let result = carmenta::mail::outbox(&database.pool, to.as_deref(), limit.clamp(1, 1000)).await;
    database.close().await;
    let mails = result?;
    if mails.is_empty() {
        eprintln!("the outbox is empty");
    }
    for m in mails.iter().rev() {
        println!("--- #{} {} to {}\nSubject: {}\n\n{}", m.id, m.created_at, m.to_addr, m.subject, m.body);
    }
    Ok(())
}

async fn doctor(config: Config) -> ExitCode {
    println!("configuration:");
    for (k, v) in config.redacted() {
        println!("  {k:<20} {v}");
    }
    println!("checks:");
    let checks = carmenta::doctor::run(&config).await;
    let mut failed = 0;
    for c in &checks {
        println!("  [{}] {:<20} {}", if c.ok { " ok " } else { "FAIL" }, c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("         fix: {fix}");
            failed += 1;
        }
    }
    if failed == 0 {
        println!("all {} checks passed", checks.len());
        ExitCode::SUCCESS
    } else {
        println!("{failed} of {} checks failed", checks.len());
        ExitCode::FAILURE
    }
}
