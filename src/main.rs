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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("carmenta: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    carmenta::telemetry::init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        }
    })
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
        println!(
            "  [{}] {:<20} {}",
            if c.ok { " ok " } else { "FAIL" },
            c.name,
            c.detail
        );
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
