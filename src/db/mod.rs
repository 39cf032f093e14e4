//! Database access: opening the pool (on `DATABASE_URL` or the embedded cluster),
//! the required extensions with a clear error when one is missing, and migrations.

pub mod embedded;
pub mod shared;

use std::path::Path;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;

use crate::config::Config;
use embedded::{DataDirLock, EmbeddedError, EmbeddedOptions, EmbeddedPg, LockError};

/// The extensions the schema needs, with how to install each.
pub const REQUIRED_EXTENSIONS: &[(&str, &str)] = &[
    ("ltree", "install PostgreSQL's contrib modules (Debian/Ubuntu: apt-get install postgresql-contrib)"),
    (
        "vector",
        "install pgvector >= 0.8: run scripts/bootstrap (Debian/Ubuntu), apt-get install postgresql-NN-pgvector, \
         brew install pgvector, or enable the `vector` extension in your provider's dashboard",
    ),
];

/// The name of the database Carmenta uses inside the embedded cluster.
pub const EMBEDDED_DATABASE: &str = "carmenta";

/// Errors opening the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The embedded manager failed.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// The data directory is in use by another server.
    #[error(transparent)]
    Locked(#[from] LockError),
    /// A required extension is not installed on the server.
    #[error("PostgreSQL extension `{name}` is not available on the database server: {fix}")]
    MissingExtension {
        /// Extension name.
        name: &'static str,
        /// How to install it.
        fix: &'static str,
    },
    /// A SQL error.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// How the process intends to use the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// `carmenta serve`: owns the data directory; a second server is refused.
    Serve,
    /// A CLI command: uses the running server's cluster if there is one,
    /// otherwise starts the cluster for the duration of the command.
    Client,
}

/// An open database: the pool, plus what keeps the embedded cluster alive.
#[derive(Debug)]
pub struct Database {
    /// The connection pool.
    pub pool: PgPool,
    /// The embedded cluster this process started, if any.
    pub embedded: Option<EmbeddedPg>,
    /// The data directory lock, held for the process lifetime when serving.
    pub lock: Option<DataDirLock>,
}

impl Database {
    /// Closes the pool and stops the embedded cluster if this process started it.
    pub async fn close(mut self) {
        self.pool.close().await;
        if let Some(mut pg) = self.embedded.take() {
            let _ = tokio::task::spawn_blocking(move || pg.stop()).await;
        }
        drop(self.lock.take());
    }
}

/// Pool options shared by the server and the test harness.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
}

/// Opens the database described by `config`, creates extensions and runs migrations.
pub async fn open(config: &Config, mode: OpenMode) -> Result<Database, DbError> {
    let (options, embedded, lock) = match &config.database_url {
        Some(url) => {
            let opts = PgConnectOptions::from_str(url.expose())?;
            let lock = if mode == OpenMode::Serve && !config.data_dir.as_os_str().is_empty() {
                // Local files (keys, storage) still live in the data directory.
                Some(DataDirLock::acquire(&config.data_dir)?)
            } else {
                None
            };
            (opts, None, lock)
        }
        None => match DataDirLock::acquire(&config.data_dir) {
            Ok(lock) => {
                let mut eo = EmbeddedOptions::new(&config.data_dir);
                eo.pg_bin = config.pg_bin.clone();
                eo.pg_user = config.pg_user.clone();
                let pg = tokio::task::spawn_blocking(move || EmbeddedPg::start(&eo))
                    .await
                    .map_err(|e| DbError::Other(format!("embedded manager panicked: {e}")))??;
                ensure_database(pg.connect_options("postgres"), EMBEDDED_DATABASE).await?;
                let opts = pg.connect_options(EMBEDDED_DATABASE);
                (opts, Some(pg), Some(lock))
            }
            Err(e @ LockError::Held { .. }) if mode == OpenMode::Serve => return Err(e.into()),
            Err(LockError::Held { .. }) => {
                let dir = absolute(&config.data_dir).join("run");
                (embedded::socket_connect_options(&dir, EMBEDDED_DATABASE), None, None)
            }
            Err(e) => return Err(e.into()),
        },
    };
    let options = options.log_statements(tracing::log::LevelFilter::Trace);
    let pool = pool_options(config.db_max_connections).connect_with(options).await?;
    prepare(&pool).await?;
    Ok(Database { pool, embedded, lock })
}

fn absolute(p: &Path) -> std::path::PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Creates `name` on the server reached by `admin` if it does not exist.
pub async fn ensure_database(admin: PgConnectOptions, name: &str) -> Result<(), DbError> {
    let mut conn = admin.connect().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let sql = format!("CREATE DATABASE {}", quote_ident(name));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
            // A concurrent creator may have won the race.
            let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
            if code.as_deref() != Some("42P04") {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates the required extensions (with a clear error when one is unavailable)
/// and applies pending migrations.
pub async fn prepare(pool: &PgPool) -> Result<(), DbError> {
    ensure_extensions(pool).await?;
    migrate(pool).await
}

/// Checks that the required extensions are available and creates them.
pub async fn ensure_extensions(pool: &PgPool) -> Result<(), DbError> {
    for (name, fix) in REQUIRED_EXTENSIONS {
        let available: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = $1)")
                .bind(name)
                .fetch_one(pool)
                .await?;
        if !available {
            return Err(DbError::MissingExtension { name, fix });
        }
        let sql = format!("CREATE EXTENSION IF NOT EXISTS {}", quote_ident(name));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(pool).await {
            // Two replicas starting at once can race on CREATE EXTENSION.
            let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
            if !matches!(code.as_deref(), Some("23505") | Some("42710")) {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies pending migrations (concurrent replicas serialise on an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// `NOTIFY channel, payload` (through `pg_notify`, so both are bound parameters).
pub async fn notify(pool: &PgPool, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(pool).await.map(|_| ())
}
