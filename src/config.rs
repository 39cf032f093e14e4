//! Typed configuration: defaults, an optional `carmenta.toml`, and `CARMENTA_*`
//! environment variables (the environment wins). Owns parsing, validation and the
//! redacted rendering that `carmenta doctor` prints.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// A configuration error; its message names the offending key or variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has an unknown key.
    #[error("invalid configuration file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A value (from the file or the environment) is invalid.
    #[error("invalid value for {key}: {message}")]
    Value {
        /// The variable or file key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A string that must never be printed: `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret value itself; only for code that needs it to do its job.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Human,
    /// One JSON object per line.
    Json,
}

/// The resolved configuration of a Carmenta process.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP server listens on (`CARMENTA_LISTEN`, default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Base of every absolute URL the server makes (`CARMENTA_PUBLIC_URL`).
    pub public_url: Url,
    /// Directory for the embedded cluster, local files, keys (`CARMENTA_DATA_DIR`).
    pub data_dir: PathBuf,
    /// External PostgreSQL (`DATABASE_URL` or `CARMENTA_DATABASE_URL`); `None` = embedded.
    pub database_url: Option<Secret>,
    /// Directory holding `initdb`/`postgres` (`CARMENTA_PG_BIN`).
    pub pg_bin: Option<PathBuf>,
    /// Account that runs the embedded cluster when Carmenta runs as root (`CARMENTA_PG_USER`).
    pub pg_user: Option<String>,
    /// Encryption keys, base64 of 32 bytes each; the first encrypts (`CARMENTA_ENCRYPTION_KEY`).
    pub encryption_keys: Vec<Secret>,
    /// Log format (`CARMENTA_LOG_FORMAT` = `human` | `json`).
    pub log_format: LogFormat,
    /// Log filter in `tracing` syntax (`CARMENTA_LOG`, default `info`).
    pub log_filter: String,
    /// Largest request body accepted by default (`CARMENTA_BODY_LIMIT`, e.g. `10MB`).
    pub body_limit: u64,
    /// Time limit for one request (`CARMENTA_REQUEST_TIMEOUT`, seconds).
    pub request_timeout: Duration,
    /// How long shutdown waits for in-flight requests (`CARMENTA_SHUTDOWN_TIMEOUT`, seconds).
    pub shutdown_timeout: Duration,
    /// HTTP connections open at once (`CARMENTA_MAX_CONNECTIONS`; default: the
    /// file-descriptor limit less 512, at most 20,000).
    pub max_connections: usize,
    /// Time for a request's head to arrive, and for an idle keep-alive connection
    /// (`CARMENTA_HEADER_TIMEOUT`, seconds, default 10).
    pub header_timeout: Duration,
    /// Slowest request body accepted, bytes per second averaged over 10 s
    /// (`CARMENTA_MIN_BODY_RATE`, default 1024; 0 turns the check off).
    pub min_body_rate: u64,
    /// Maximum connections in the database pool (`CARMENTA_DB_MAX_CONNECTIONS`).
    pub db_max_connections: u32,
    /// Background jobs this process runs at once (`CARMENTA_JOB_WORKERS`, default 2).
    pub job_workers: usize,
    /// Whether outgoing requests to user- or app-supplied URLs may reach link-local
    /// and cloud-metadata addresses (`CARMENTA_ALLOW_LINK_LOCAL_URLS`, default false).
    pub allow_link_local_urls: bool,
    /// How long a job's claim holds without a heartbeat; a crashed worker's job is
    /// run again after it (`CARMENTA_JOB_LEASE`, seconds, default 60).
    pub job_lease: Duration,
    /// Access token (JWT) lifetime (`CARMENTA_ACCESS_TOKEN_TTL`, seconds, default 300).
    pub access_token_ttl: Duration,
    /// `aud` of access tokens (`CARMENTA_JWT_AUDIENCE`, default `carmenta`).
    pub jwt_audience: String,
    /// Absolute session lifetime (`CARMENTA_SESSION_TTL`, seconds, default 7 days).
    pub session_ttl: Duration,
    /// Idle session lifetime (`CARMENTA_SESSION_IDLE_TTL`, seconds; unset = none).
    pub session_idle_ttl: Option<Duration>,
    /// Minimum password length (`CARMENTA_PASSWORD_MIN_LENGTH`, default 8).
    pub password_min_length: usize,
    /// Failed sign-ins before an account is locked (`CARMENTA_LOCKOUT_THRESHOLD`, default 10).
    pub lockout_threshold: u32,
    /// How long a locked account stays locked (`CARMENTA_LOCKOUT_SECONDS`, default 3600).
    pub lockout_duration: Duration,
    /// Sign-in and sign-up attempts allowed per IP per 10 minutes (`CARMENTA_SIGNIN_IP_LIMIT`, default 50).
    pub signin_ip_limit: u32,
    /// Origins (besides the public URL's) trusted for cookie-authenticated writes
    /// and as redirect targets (`CARMENTA_ALLOWED_ORIGINS`, comma-separated).
    pub allowed_origins: Vec<String>,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` is believed
    /// (`CARMENTA_TRUSTED_PROXIES`); from any other peer the header is ignored.
    pub trusted_proxies: Vec<IpNet>,
    /// Social sign-in providers from the environment (`CARMENTA_SOCIAL_<ID>_CLIENT_ID`,
    /// `_CLIENT_SECRET`, `_DISCOVERY_URL`, `_SCOPES`, `_NAME`) or `[social.<id>]`
    /// tables of the file; more can be added through the API.
    pub social: Vec<SocialProviderConfig>,
    /// SMTP server for outgoing mail (`CARMENTA_SMTP_URL`, e.g.
    /// `smtps://user:pass@smtp.example.com` or `smtp://127.0.0.1:2525`); unset = outbox.
    pub smtp_url: Option<Secret>,
    /// Sender of outgoing mail (`CARMENTA_MAIL_FROM`).
    pub mail_from: String,
    /// Lifetime of emailed tokens (`CARMENTA_EMAIL_TOKEN_TTL`, seconds, default 900).
    pub email_token_ttl: Duration,
    /// External issuer whose tokens are trusted (`CARMENTA_EXTERNAL_ISSUER`, e.g.
    /// Clerk's Frontend API URL `https://clerk.example.com`).
    pub external_issuer: Option<String>,
    /// Its JWKS (`CARMENTA_EXTERNAL_JWKS_URL`; default `<issuer>/.well-known/jwks.json`).
    pub external_jwks_url: Option<Url>,
    /// A pinned public key PEM instead of the JWKS (`CARMENTA_EXTERNAL_JWT_KEY`).
    pub external_jwt_key: Option<String>,
    /// Allowed `azp` values (`CARMENTA_EXTERNAL_AZP`, comma-separated); empty = not checked.
    pub external_azp: Vec<String>,
    /// Required `aud`, if any (`CARMENTA_EXTERNAL_AUDIENCE`).
    pub external_audience: Option<String>,
    /// Clerk webhook signing secrets `whsec_…` (`CARMENTA_CLERK_WEBHOOK_SECRET`,
    /// comma-separated while rotating).
    pub clerk_webhook_secrets: Vec<Secret>,
    /// Largest message (`parts` + `metadata`, serialised) accepted
    /// (`CARMENTA_CHAT_MAX_MESSAGE_BYTES`, default 1 MiB).
    pub chat_max_message_bytes: usize,
    /// Where object bytes live.
    pub storage: StorageBackend,
    /// The largest object accepted, whatever a bucket allows (`CARMENTA_STORAGE_MAX_FILE_SIZE`).
    pub storage_max_file_size: u64,
    /// How long a signed upload URL stays valid (`CARMENTA_STORAGE_UPLOAD_URL_TTL`, seconds).
    pub storage_upload_url_ttl: Duration,
    /// A separate, cookie-less origin that serves storage (`CARMENTA_STORAGE_PUBLIC_URL`):
    /// requests arriving on its host may show HTML and SVG objects inline (still
    /// sandboxed); on any other host they download as attachments.
    pub storage_public_url: Option<Url>,
    /// Image transforms run at once (`CARMENTA_IMAGING_WORKERS`, default 2 × cores).
    pub imaging_workers: usize,
    /// Transforms that may wait for a worker before new ones get 503
    /// (`CARMENTA_IMAGING_QUEUE`, default 4 × workers).
    pub imaging_queue: usize,
    /// Longest a transform may take (`CARMENTA_IMAGING_TIMEOUT`, seconds, default 30).
    pub imaging_timeout: Duration,
    /// The CPU scheduling class of the imaging workers (`CARMENTA_IMAGING_PRIORITY`,
    /// `idle` by default: they yield the CPU to request handling and the database).
    pub imaging_priority: crate::imaging::Priority,
    /// A JSON file of provider entries added to or overriding the built-in catalog.
    pub providers_file: Option<PathBuf>,
    /// Where connection events are POSTed (Standard Webhooks), if anywhere.
    pub webhook_url: Option<Url>,
    /// The `whsec_…` secret signing them.
    pub webhook_secret: Option<Secret>,
    /// The knowledge base: embeddings, chunking, ingestion limits.
    pub knowledge: KnowledgeConfig,
    /// Memory: the extraction model and when extraction runs.
    pub memory: MemoryConfig,
    /// Admin console settings.
    pub admin: AdminConfig,
    /// The configuration file that was read, if any.
    pub config_file: Option<PathBuf>,
}

/// Where embeddings come from.
#[derive(Debug, Clone)]
pub enum EmbedderConfig {
    /// The built-in static model (potion-base-8M) read from a directory holding
    /// `model.safetensors`, `tokenizer.json` and `config.json`
    /// (`CARMENTA_EMBED_MODEL_DIR`; `scripts/bootstrap` fetches it).
    Builtin {
        /// The model's directory.
        dir: PathBuf,
    },
    /// Any OpenAI-compatible `/v1/embeddings` endpoint (OpenAI, Ollama, vLLM, TEI).
    OpenAi {
        /// Base URL, e.g. `http://localhost:11434/v1` (`CARMENTA_EMBED_URL`).
        url: Url,
        /// Model name sent with each request (`CARMENTA_EMBED_MODEL`).
        model: String,
        /// Bearer key, if the endpoint wants one (`CARMENTA_EMBED_API_KEY`).
        key: Option<Secret>,
        /// The vectors' dimension (`CARMENTA_EMBED_DIMENSIONS`).
        dimensions: usize,
    },
}

/// Knowledge-base settings.
#[derive(Debug, Clone)]
pub struct KnowledgeConfig {
    /// The embedder (`CARMENTA_EMBEDDINGS` = `builtin` | `openai`).
    pub embedder: EmbedderConfig,
    /// Target chunk size in tokens, cl100k (`CARMENTA_CHUNK_TOKENS`, default 128:
    /// the best evidence recall at a fixed context budget in `benches/knowledge`).
    pub chunk_tokens: usize,
    /// Tokens a chunk repeats from the one before it (`CARMENTA_CHUNK_OVERLAP`, default 16).
    pub chunk_overlap: usize,
    /// Largest file ingested (`CARMENTA_KNOWLEDGE_MAX_FILE_SIZE`, default 25 MB).
    pub max_file_size: u64,
    /// Most PDF pages ingested (`CARMENTA_KNOWLEDGE_MAX_PAGES`, default 2000).
    pub max_pages: u32,
    /// Longest one file's text extraction may take (`CARMENTA_EXTRACT_TIMEOUT`, seconds, default 120).
    pub extract_timeout: Duration,
    /// The program run to extract text in a separate process (`CARMENTA_EXTRACTOR`;
    /// default: this executable's `extract` command).
    pub extractor: Option<PathBuf>,
}

/// An OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM, llama.cpp).
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Base URL, e.g. `http://localhost:11434/v1` (`CARMENTA_LLM_URL`); the client
    /// POSTs to `{url}/chat/completions`.
    pub url: Url,
    /// Model name (`CARMENTA_LLM_MODEL`).
    pub model: String,
    /// Bearer key, if the endpoint wants one (`CARMENTA_LLM_API_KEY`).
    pub key: Option<Secret>,
    /// Longest one call may take (`CARMENTA_LLM_TIMEOUT`, seconds, default 60).
    pub timeout: Duration,
}

/// Memory settings.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// The model that extracts memories from conversations; `None`: extraction is off.
    pub llm: Option<LlmConfig>,
    /// New messages in a conversation that start an extraction
    /// (`CARMENTA_MEMORY_EXTRACT_AFTER`, default 10).
    pub extract_after: u32,
    /// Quiet time after which a conversation's remaining new messages are extracted
    /// (`CARMENTA_MEMORY_IDLE`, seconds, default 300).
    pub idle: Duration,
    /// How often a replica looks for conversations due for extraction
    /// (`CARMENTA_MEMORY_SCAN_INTERVAL`, seconds, default 30).
    pub scan_interval: Duration,
}

/// Admin console settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// An admin session ends after this long without a request
    /// (`CARMENTA_ADMIN_IDLE_TIMEOUT`, seconds, default 1800).
    pub idle_timeout: Duration,
    /// An admin session ends this long after sign-in at the latest
    /// (`CARMENTA_ADMIN_SESSION_TTL`, seconds, default 28800).
    pub session_ttl: Duration,
    /// Statement timeout of the SQL runner and of table-browser queries
    /// (`CARMENTA_ADMIN_SQL_TIMEOUT`, seconds, default 10).
    pub sql_timeout: Duration,
    /// Most rows the SQL runner shows (`CARMENTA_ADMIN_SQL_ROW_CAP`, default 1000).
    pub sql_row_cap: u32,
}

/// The shape of `carmenta.toml`; every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    public_url: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    pg_bin: Option<PathBuf>,
    pg_user: Option<String>,
    encryption_key: Option<String>,
    log_format: Option<String>,
    log: Option<String>,
    body_limit: Option<toml::Value>,
    request_timeout: Option<u64>,
    max_connections: Option<u64>,
    header_timeout: Option<u64>,
    min_body_rate: Option<u64>,
    shutdown_timeout: Option<u64>,
    db_max_connections: Option<u32>,
    job_workers: Option<u64>,
    allow_link_local_urls: Option<bool>,
    job_lease: Option<u64>,
    access_token_ttl: Option<u64>,
    jwt_audience: Option<String>,
    session_ttl: Option<u64>,
    session_idle_ttl: Option<u64>,
    password_min_length: Option<u64>,
    lockout_threshold: Option<u64>,
    lockout_seconds: Option<u64>,
    signin_ip_limit: Option<u64>,
    allowed_origins: Option<Vec<String>>,
    trusted_proxies: Option<Vec<String>>,
    social: Option<BTreeMap<String, SocialFileEntry>>,
    smtp_url: Option<String>,
    mail_from: Option<String>,
    email_token_ttl: Option<u64>,
    external_issuer: Option<String>,
    external_jwks_url: Option<String>,
    external_jwt_key: Option<String>,
    external_azp: Option<Vec<String>>,
    external_audience: Option<String>,
    clerk_webhook_secret: Option<String>,
    chat_max_message_bytes: Option<toml::Value>,
    storage_backend: Option<String>,
    storage_dir: Option<PathBuf>,
    storage_max_file_size: Option<toml::Value>,
    storage_upload_url_ttl: Option<u64>,
    storage_public_url: Option<String>,
    imaging_workers: Option<u64>,
    imaging_queue: Option<u64>,
    imaging_timeout: Option<u64>,
    imaging_priority: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_bucket: Option<String>,
    s3_access_key_id: Option<String>,
    s3_secret_access_key: Option<String>,
    s3_path_style: Option<bool>,
    providers_file: Option<PathBuf>,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    embeddings: Option<String>,
    embed_model_dir: Option<PathBuf>,
    embed_url: Option<String>,
    embed_model: Option<String>,
    embed_api_key: Option<String>,
    embed_dimensions: Option<u64>,
    chunk_tokens: Option<u64>,
    chunk_overlap: Option<u64>,
    knowledge_max_file_size: Option<toml::Value>,
    knowledge_max_pages: Option<u64>,
    extract_timeout: Option<u64>,
    extractor: Option<PathBuf>,
    llm_url: Option<String>,
    llm_model: Option<String>,
    llm_api_key: Option<String>,
    llm_timeout: Option<u64>,
    memory_extract_after: Option<u64>,
    memory_idle: Option<u64>,
    memory_scan_interval: Option<u64>,
    admin_idle_timeout: Option<u64>,
    admin_session_ttl: Option<u64>,
    admin_sql_timeout: Option<u64>,
    admin_sql_row_cap: Option<u64>,
}

/// A `[social.<id>]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocialFileEntry {
    client_id: Option<String>,
    client_secret: Option<String>,
    discovery_url: Option<String>,
    base_url: Option<String>,
    scopes: Option<Vec<String>>,
    name: Option<String>,
}

/// A social sign-in provider from the configuration.
#[derive(Debug, Clone)]
pub struct SocialProviderConfig {
    /// Its id (`google`, `github`, … for the built-in ones; any other id is an
    /// OpenID Connect provider found by `discovery_url`).
    pub id: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: Secret,
    /// OpenID Connect discovery URL (required for ids that are not built in;
    /// replaces a built-in OpenID provider's).
    pub discovery_url: Option<Url>,
    /// The provider's own server in place of the public one (GitHub Enterprise
    /// Server: `https://github.example.com`; built-in `github` only).
    pub base_url: Option<Url>,
    /// Scopes in place of the provider's defaults.
    pub scopes: Option<Vec<String>>,
    /// The name on buttons.
    pub name: Option<String>,
}

/// Social providers from `CARMENTA_SOCIAL_<ID>_<FIELD>` variables and `[social.<id>]` tables.
fn social_providers(
    env: &BTreeMap<String, String>,
    file: Option<BTreeMap<String, SocialFileEntry>>,
) -> Result<Vec<SocialProviderConfig>, ConfigError> {
    const FIELDS: &[&str] = &["CLIENT_ID", "CLIENT_SECRET", "DISCOVERY_URL", "BASE_URL", "SCOPES", "NAME"];
    let mut entries = file.unwrap_or_default();
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("CARMENTA_SOCIAL_") else { continue };
        let Some((id, field)) =
            FIELDS.iter().find_map(|f| rest.strip_suffix(f).and_then(|i| i.strip_suffix('_')).map(|i| (i, *f)))
        else {
            return Err(ConfigError::Value {
                key: k.clone(),
                message: format!("expected CARMENTA_SOCIAL_<ID>_<FIELD> with FIELD one of {}", FIELDS.join(", ")),
            });
        };
        let e = entries.entry(id.to_ascii_lowercase().replace('_', "-")).or_default();
        let v = Some(v.clone());
        match field {
            "CLIENT_ID" => e.client_id = v,
            "CLIENT_SECRET" => e.client_secret = v,
            "DISCOVERY_URL" => e.discovery_url = v,
            "BASE_URL" => e.base_url = v,
            "SCOPES" => {
                e.scopes = v.map(|s| s.split([' ', ',']).filter(|x| !x.is_empty()).map(str::to_string).collect())
            }
            _ => e.name = v,
        }
    }
    let mut out = Vec::new();
    for (id, e) in entries {
        let key = format!("social.{id}");
        let bad = |message: String| ConfigError::Value { key: key.clone(), message };
        if id.is_empty()
            || id.len() > 40
            || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("provider ids are 1-40 lowercase letters, digits and dashes".into()));
        }
        let client_id = e.client_id.filter(|c| !c.is_empty()).ok_or_else(|| bad("client_id is required".into()))?;
        let client_secret =
            e.client_secret.filter(|c| !c.is_empty()).ok_or_else(|| bad("client_secret is required".into()))?;
        let url_of = |field: &str, v: Option<String>| -> Result<Option<Url>, ConfigError> {
            match v.filter(|d| !d.is_empty()) {
                Some(d) => {
                    let u = Url::parse(&d).map_err(|_| bad(format!("{field} {d:?} is not a URL")))?;
                    if !matches!(u.scheme(), "http" | "https") {
                        return Err(bad(format!("{field} must be an http(s) URL")));
                    }
                    Ok(Some(u))
                }
                None => Ok(None),
            }
        };
        let discovery_url = url_of("discovery_url", e.discovery_url)?;
        let base_url = url_of("base_url", e.base_url)?;
        if base_url.is_some() && id != "github" {
            return Err(bad("base_url is for the github provider (GitHub Enterprise Server)".into()));
        }
        out.push(SocialProviderConfig {
            id,
            client_id,
            client_secret: Secret::new(client_secret),
            discovery_url,
            base_url,
            scopes: e.scopes,
            name: e.name,
        });
    }
    Ok(out)
}

/// The object store behind storage.
#[derive(Debug, Clone)]
pub enum StorageBackend {
    /// A directory on the local filesystem (default: `<data_dir>/storage`).
    Fs {
        /// The directory.
        root: PathBuf,
    },
    /// An S3-compatible service.
    S3(S3Config),
}

/// Settings of an S3-compatible object store.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Endpoint URL for non-AWS services (MinIO, R2, Supabase S3…); AWS when absent.
    pub endpoint: Option<Url>,
    /// Region (default `us-east-1`).
    pub region: String,
    /// The bucket holding every object.
    pub bucket: String,
    /// Access key id; the environment's AWS credentials chain when absent.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<Secret>,
    /// Path-style addressing (`endpoint/bucket/key`); the default when an endpoint is set.
    pub path_style: bool,
}

/// Where a raw value came from, for error messages.
struct Raw {
    key: String,
    value: String,
}

/// Picks the environment variable if set, else the file key.
/// A true/false environment variable (`true`/`1`, `false`/`0`), if set.
fn flag(env: &BTreeMap<String, String>, var: &str) -> Result<Option<bool>, ConfigError> {
    match env.get(var).map(|v| v.trim()) {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(_) => Err(ConfigError::Value { key: var.into(), message: "expected true or false".into() }),
    }
}

fn pick(env: &BTreeMap<String, String>, vars: &[&str], file_key: &str, file: Option<String>) -> Option<Raw> {
    for var in vars {
        if let Some(v) = env.get(*var) {
            return Some(Raw { key: (*var).to_string(), value: v.clone() });
        }
    }
    file.map(|value| Raw { key: format!("{file_key} (carmenta.toml)"), value })
}

fn invalid(raw: &Raw, message: impl Into<String>) -> ConfigError {
    ConfigError::Value { key: raw.key.clone(), message: message.into() }
}

/// Where `scripts/bootstrap` puts the built-in embedding model: `.tools/models/` of
/// the source tree this binary was built from.
fn default_model_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/models/potion-base-8M"))
}

/// The default connection cap: the process's file-descriptor limit (after
/// [`raise_fd_limit`]) less 512 for the pool, files and the embedded cluster, at
/// most 20,000 and at least 64.
fn default_max_connections() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur } else { 1024 };
    (soft.saturating_sub(512) as usize).clamp(64, 20_000)
}

/// Raises the soft file-descriptor limit to the hard one (where the system lets
/// a process), so the connection cap can sit well above the default 1024.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Why a size was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number with an optional unit.
    #[error("{0:?} is not a size (examples: 1048576, 100MB, 1.5GiB)")]
    NotASize(String),
    /// An unknown unit.
    #[error("unknown size unit {unit:?} in {input:?}")]
    UnknownUnit {
        /// The unit.
        unit: String,
        /// The whole input.
        input: String,
    },
    /// Negative or beyond 2⁶⁴ bytes.
    #[error("{0:?} is out of range")]
    OutOfRange(String),
}

/// Parses a byte size: a plain number of bytes or a number with a unit
/// (`B`, `KB`, `MB`, `GB`, `TB`, binary `KiB`… too; case-insensitive; KB = 1000).
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| SizeError::NotASize(input.to_string()))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => return Err(SizeError::UnknownUnit { unit: other.to_string(), input: input.to_string() }),
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(SizeError::OutOfRange(input.to_string()));
    }
    Ok(bytes.round() as u64)
}

impl Config {
    /// Loads the configuration from the process environment and, if present,
    /// `$CARMENTA_CONFIG` or `./carmenta.toml`.
    pub fn load() -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_sources(&env, None)
    }

    /// Builds a configuration from explicit variables and an optional file path
    /// (when `file` is `None`, `CARMENTA_CONFIG` or `./carmenta.toml` if it exists).
    pub fn from_sources(env: &BTreeMap<String, String>, file: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match file {
            Some(p) => Some(p.to_path_buf()),
            None => match env.get("CARMENTA_CONFIG") {
                Some(p) => Some(PathBuf::from(p)),
                None => {
                    let p = PathBuf::from("carmenta.toml");
                    p.exists().then_some(p)
                }
            },
        };
        let fc = match &path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::File { path: p.clone(), message: e.to_string().trim().to_string() })?
            }
            None => FileConfig::default(),
        };

        let listen = match pick(env, &["CARMENTA_LISTEN"], "listen", fc.listen) {
            Some(r) => r
                .value
                .parse::<SocketAddr>()
                .map_err(|e| invalid(&r, format!("{e} (expected host:port, e.g. 127.0.0.1:8080)")))?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let public_url = match pick(env, &["CARMENTA_PUBLIC_URL"], "public_url", fc.public_url) {
            Some(r) => {
                let u = Url::parse(&r.value).map_err(|e| invalid(&r, format!("{e} (expected an absolute URL)")))?;
                if !matches!(u.scheme(), "http" | "https") {
                    return Err(invalid(&r, "must be an http or https URL"));
                }
                u
            }
            None => Url::parse(&format!("http://{listen}"))
                .map_err(|e| ConfigError::Value { key: "CARMENTA_LISTEN".into(), message: e.to_string() })?,
        };
        let data_dir = match pick(
            env,
            &["CARMENTA_DATA_DIR"],
            "data_dir",
            fc.data_dir.map(|p| p.to_string_lossy().into_owned()),
        ) {
            Some(r) if r.value.trim().is_empty() => return Err(invalid(&r, "must not be empty")),
            Some(r) => PathBuf::from(r.value),
            None => PathBuf::from("carmenta-data"),
        };
        let database_url = match pick(env, &["DATABASE_URL", "CARMENTA_DATABASE_URL"], "database_url", fc.database_url)
        {
            Some(r) if r.value.is_empty() => None,
            Some(r) => {
                let u = Url::parse(&r.value)
                    .map_err(|_| invalid(&r, "not a URL (expected postgres://user:pass@host/db)"))?;
                if !matches!(u.scheme(), "postgres" | "postgresql") {
                    return Err(invalid(&r, "must be a postgres:// URL"));
                }
                Some(Secret::new(r.value))
            }
            None => None,
        };
        let pg_bin = pick(env, &["CARMENTA_PG_BIN"], "pg_bin", fc.pg_bin.map(|p| p.to_string_lossy().into_owned()))
            .map(|r| PathBuf::from(r.value));
        let pg_user = pick(env, &["CARMENTA_PG_USER"], "pg_user", fc.pg_user).map(|r| r.value);
        let encryption_keys = match pick(env, &["CARMENTA_ENCRYPTION_KEY"], "encryption_key", fc.encryption_key) {
            Some(r) => {
                let keys: Vec<Secret> =
                    r.value.split(',').map(|k| k.trim()).filter(|k| !k.is_empty()).map(Secret::new).collect();
                for (i, k) in keys.iter().enumerate() {
                    crate::crypto::decode_key(k.expose()).map_err(|m| invalid(&r, format!("key #{}: {m}", i + 1)))?;
                }
                keys
            }
            None => Vec::new(),
        };
        let log_format = match pick(env, &["CARMENTA_LOG_FORMAT"], "log_format", fc.log_format) {
            Some(r) => match r.value.as_str() {
                "human" | "text" | "pretty" => LogFormat::Human,
                "json" => LogFormat::Json,
                _ => return Err(invalid(&r, "expected `human` or `json`")),
            },
            None => LogFormat::Human,
        };
        let log_filter = match pick(env, &["CARMENTA_LOG", "RUST_LOG"], "log", fc.log) {
            Some(r) => {
                tracing_subscriber::EnvFilter::try_new(&r.value).map_err(|e| invalid(&r, e.to_string()))?;
                r.value
            }
            None => "info,sqlx=warn".to_string(),
        };
        let body_limit_raw = fc.body_limit.map(|v| match v {
            toml::Value::String(s) => s,
            other => other.to_string(),
        });
        let body_limit = match pick(env, &["CARMENTA_BODY_LIMIT"], "body_limit", body_limit_raw) {
            Some(r) => parse_size(&r.value).map_err(|m| invalid(&r, m.to_string()))?,
            None => 10 * 1024 * 1024,
        };
        let num =
            |vars: &[&str], key: &str, file: Option<u64>, min: u64, max: u64| -> Result<Option<u64>, ConfigError> {
                match pick(env, vars, key, file.map(|v| v.to_string())) {
                    Some(r) => match r.value.trim().parse::<u64>() {
                        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                        _ => Err(invalid(&r, format!("expected a whole number between {min} and {max}"))),
                    },
                    None => Ok(None),
                }
            };
        let secs = |vars: &[&str], key: &str, file: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(num(vars, key, file, 1, 86_400)?.unwrap_or(default)))
        };
        let request_timeout = secs(&["CARMENTA_REQUEST_TIMEOUT"], "request_timeout", fc.request_timeout, 30)?;
        let shutdown_timeout = secs(&["CARMENTA_SHUTDOWN_TIMEOUT"], "shutdown_timeout", fc.shutdown_timeout, 10)?;
        let header_timeout = secs(&["CARMENTA_HEADER_TIMEOUT"], "header_timeout", fc.header_timeout, 10)?;
        let max_connections =
            match num(&["CARMENTA_MAX_CONNECTIONS"], "max_connections", fc.max_connections, 1, 1_000_000)? {
                Some(n) => n as usize,
                None => default_max_connections(),
            };
        let min_body_rate =
            num(&["CARMENTA_MIN_BODY_RATE"], "min_body_rate", fc.min_body_rate, 0, 1 << 30)?.unwrap_or(1024);
        let allow_link_local_urls =
            flag(env, "CARMENTA_ALLOW_LINK_LOCAL_URLS")?.or(fc.allow_link_local_urls).unwrap_or(false);
        let job_workers = num(&["CARMENTA_JOB_WORKERS"], "job_workers", fc.job_workers, 1, 64)?.unwrap_or(2) as usize;
        let job_lease =
            Duration::from_secs(num(&["CARMENTA_JOB_LEASE"], "job_lease", fc.job_lease, 2, 3600)?.unwrap_or(60));
        let year = 366 * 86_400;
        let access_token_ttl = Duration::from_secs(
            num(&["CARMENTA_ACCESS_TOKEN_TTL"], "access_token_ttl", fc.access_token_ttl, 10, 86_400)?.unwrap_or(300),
        );
        let session_ttl = Duration::from_secs(
            num(&["CARMENTA_SESSION_TTL"], "session_ttl", fc.session_ttl, 60, year)?.unwrap_or(7 * 86_400),
        );
        let session_idle_ttl = num(&["CARMENTA_SESSION_IDLE_TTL"], "session_idle_ttl", fc.session_idle_ttl, 60, year)?
            .map(Duration::from_secs);
        let password_min_length =
            num(&["CARMENTA_PASSWORD_MIN_LENGTH"], "password_min_length", fc.password_min_length, 6, 128)?.unwrap_or(8)
                as usize;
        let lockout_threshold =
            num(&["CARMENTA_LOCKOUT_THRESHOLD"], "lockout_threshold", fc.lockout_threshold, 1, 1000)?.unwrap_or(10)
                as u32;
        let lockout_duration = Duration::from_secs(
            num(&["CARMENTA_LOCKOUT_SECONDS"], "lockout_seconds", fc.lockout_seconds, 1, year)?.unwrap_or(3600),
        );
        let signin_ip_limit = num(&["CARMENTA_SIGNIN_IP_LIMIT"], "signin_ip_limit", fc.signin_ip_limit, 1, 1_000_000)?
            .unwrap_or(50) as u32;
        let jwt_audience = pick(env, &["CARMENTA_JWT_AUDIENCE"], "jwt_audience", fc.jwt_audience)
            .map_or("carmenta".to_string(), |r| r.value);
        let smtp_url = match pick(env, &["CARMENTA_SMTP_URL"], "smtp_url", fc.smtp_url) {
            Some(r) if r.value.is_empty() => None,
            Some(r) => {
                let u = Url::parse(&r.value)
                    .map_err(|_| invalid(&r, "not a URL (expected smtp://host:port or smtps://user:pass@host)"))?;
                if !matches!(u.scheme(), "smtp" | "smtps") {
                    return Err(invalid(&r, "must be an smtp:// or smtps:// URL"));
                }
                Some(Secret::new(r.value))
            }
            None => None,
        };
        let mail_from = match pick(env, &["CARMENTA_MAIL_FROM"], "mail_from", fc.mail_from) {
            Some(r) => {
                r.value.parse::<lettre::message::Mailbox>().map_err(|e| invalid(&r, e.to_string()))?;
                r.value
            }
            None => "Carmenta <no-reply@localhost>".to_string(),
        };
        let email_token_ttl = Duration::from_secs(
            num(&["CARMENTA_EMAIL_TOKEN_TTL"], "email_token_ttl", fc.email_token_ttl, 60, 7 * 86_400)?.unwrap_or(900),
        );
        let external_issuer = match pick(env, &["CARMENTA_EXTERNAL_ISSUER"], "external_issuer", fc.external_issuer) {
            Some(r) if r.value.is_empty() => None,
            Some(r) => {
                let u = Url::parse(&r.value)
                    .map_err(|_| invalid(&r, "expected the issuer URL, e.g. https://clerk.example.com"))?;
                if !matches!(u.scheme(), "http" | "https") {
                    return Err(invalid(&r, "must be an http(s) URL"));
                }
                Some(r.value.trim_end_matches('/').to_string())
            }
            None => None,
        };
        let external_jwks_url =
            match pick(env, &["CARMENTA_EXTERNAL_JWKS_URL"], "external_jwks_url", fc.external_jwks_url) {
                Some(r) => Some(Url::parse(&r.value).map_err(|_| invalid(&r, "not a URL"))?),
                None => None,
            };
        let external_jwt_key =
            pick(env, &["CARMENTA_EXTERNAL_JWT_KEY"], "external_jwt_key", fc.external_jwt_key).map(|r| r.value);
        let external_azp = pick(env, &["CARMENTA_EXTERNAL_AZP"], "external_azp", fc.external_azp.map(|v| v.join(",")))
            .map(|r| {
                r.value
                    .split(',')
                    .map(|s| s.trim().trim_end_matches('/').to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let external_audience =
            pick(env, &["CARMENTA_EXTERNAL_AUDIENCE"], "external_audience", fc.external_audience).map(|r| r.value);
        let clerk_webhook_secrets =
            match pick(env, &["CARMENTA_CLERK_WEBHOOK_SECRET"], "clerk_webhook_secret", fc.clerk_webhook_secret) {
                Some(r) => {
                    let v: Vec<Secret> =
                        r.value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Secret::new).collect();
                    for s in &v {
                        if !s.expose().starts_with("whsec_") {
                            return Err(invalid(
                                &r,
                                "each secret must start with whsec_ (copy it from the Clerk dashboard)",
                            ));
                        }
                    }
                    v
                }
                None => Vec::new(),
            };
        if (external_jwks_url.is_some() || external_jwt_key.is_some()) && external_issuer.is_none() {
            return Err(ConfigError::Value {
                key: "CARMENTA_EXTERNAL_ISSUER".into(),
                message: "must be set when CARMENTA_EXTERNAL_JWKS_URL or CARMENTA_EXTERNAL_JWT_KEY is".into(),
            });
        }
        let chat_raw = fc.chat_max_message_bytes.map(|v| match v {
            toml::Value::String(s) => s,
            other => other.to_string(),
        });
        let chat_max_message_bytes =
            match pick(env, &["CARMENTA_CHAT_MAX_MESSAGE_BYTES"], "chat_max_message_bytes", chat_raw) {
                Some(r) => {
                    usize::try_from(parse_size(&r.value).map_err(|m| invalid(&r, m.to_string()))?).unwrap_or(usize::MAX)
                }
                None => 1024 * 1024,
            };
        let size_raw = fc.storage_max_file_size.map(|v| match v {
            toml::Value::String(s) => s,
            other => other.to_string(),
        });
        let storage_max_file_size =
            match pick(env, &["CARMENTA_STORAGE_MAX_FILE_SIZE"], "storage_max_file_size", size_raw) {
                Some(r) => parse_size(&r.value).map_err(|m| invalid(&r, m.to_string()))?,
                None => 50 * 1024 * 1024,
            };
        let storage_upload_url_ttl = Duration::from_secs(
            num(
                &["CARMENTA_STORAGE_UPLOAD_URL_TTL"],
                "storage_upload_url_ttl",
                fc.storage_upload_url_ttl,
                10,
                7 * 86_400,
            )?
            .unwrap_or(7200),
        );
        let storage_public_url =
            match pick(env, &["CARMENTA_STORAGE_PUBLIC_URL"], "storage_public_url", fc.storage_public_url) {
                Some(r) => match Url::parse(r.value.trim()) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
                    _ => return Err(invalid(&r, "expected an http(s) URL")),
                },
                None => None,
            };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let imaging_workers = num(&["CARMENTA_IMAGING_WORKERS"], "imaging_workers", fc.imaging_workers, 1, 1024)?
            .map_or(2 * cores, |n| n as usize);
        let imaging_queue = num(&["CARMENTA_IMAGING_QUEUE"], "imaging_queue", fc.imaging_queue, 0, 100_000)?
            .map_or(4 * imaging_workers, |n| n as usize);
        let imaging_timeout = Duration::from_secs(
            num(&["CARMENTA_IMAGING_TIMEOUT"], "imaging_timeout", fc.imaging_timeout, 1, 3600)?.unwrap_or(30),
        );
        let imaging_priority = match pick(env, &["CARMENTA_IMAGING_PRIORITY"], "imaging_priority", fc.imaging_priority)
        {
            None => crate::imaging::Priority::Idle,
            Some(r) => crate::imaging::Priority::from_name(r.value.trim())
                .ok_or_else(|| invalid(&r, "expected idle or normal"))?,
        };
        let storage = match pick(env, &["CARMENTA_STORAGE_BACKEND"], "storage_backend", fc.storage_backend) {
            Some(r) if r.value.trim() == "s3" => {
                let endpoint = match pick(env, &["CARMENTA_S3_ENDPOINT"], "s3_endpoint", fc.s3_endpoint) {
                    Some(e) => Some(Url::parse(e.value.trim()).map_err(|err| invalid(&e, err.to_string()))?),
                    None => None,
                };
                let bucket = pick(env, &["CARMENTA_S3_BUCKET"], "s3_bucket", fc.s3_bucket)
                    .map(|b| b.value.trim().to_string())
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| ConfigError::Value {
                        key: "CARMENTA_S3_BUCKET".into(),
                        message: "must be set when CARMENTA_STORAGE_BACKEND=s3".into(),
                    })?;
                let path_style =
                    flag(env, "CARMENTA_S3_PATH_STYLE")?.or(fc.s3_path_style).unwrap_or(endpoint.is_some());
                StorageBackend::S3(S3Config {
                    endpoint,
                    region: pick(env, &["CARMENTA_S3_REGION", "AWS_REGION"], "s3_region", fc.s3_region)
                        .map_or_else(|| "us-east-1".to_string(), |r| r.value),
                    bucket,
                    access_key_id: pick(env, &["CARMENTA_S3_ACCESS_KEY_ID"], "s3_access_key_id", fc.s3_access_key_id)
                        .map(|r| r.value),
                    secret_access_key: pick(
                        env,
                        &["CARMENTA_S3_SECRET_ACCESS_KEY"],
                        "s3_secret_access_key",
                        fc.s3_secret_access_key,
                    )
                    .map(|r| Secret::new(r.value)),
                    path_style,
                })
            }
            Some(r) if r.value.trim() != "fs" => return Err(invalid(&r, "expected fs or s3")),
            _ => StorageBackend::Fs {
                root: pick(
                    env,
                    &["CARMENTA_STORAGE_DIR"],
                    "storage_dir",
                    fc.storage_dir.map(|p| p.to_string_lossy().into_owned()),
                )
                .map_or_else(|| data_dir.join("storage"), |r| PathBuf::from(r.value)),
            },
        };
        let providers_file = pick(
            env,
            &["CARMENTA_PROVIDERS_FILE"],
            "providers_file",
            fc.providers_file.map(|p| p.to_string_lossy().into_owned()),
        )
        .map(|r| PathBuf::from(r.value));
        let webhook_url = match pick(env, &["CARMENTA_WEBHOOK_URL"], "webhook_url", fc.webhook_url) {
            Some(r) => match Url::parse(r.value.trim()) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
                _ => return Err(invalid(&r, "expected an http(s) URL")),
            },
            None => None,
        };
        let webhook_secret = match pick(env, &["CARMENTA_WEBHOOK_SECRET"], "webhook_secret", fc.webhook_secret) {
            Some(r) => {
                let ok = r.value.strip_prefix("whsec_").is_some_and(|b| {
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).is_ok_and(|k| k.len() >= 16)
                });
                if !ok {
                    return Err(invalid(&r, "expected whsec_ followed by base64 of at least 16 bytes"));
                }
                Some(Secret::new(r.value))
            }
            None => None,
        };
        if webhook_url.is_some() != webhook_secret.is_some() {
            return Err(ConfigError::Value {
                key: "CARMENTA_WEBHOOK_SECRET".into(),
                message: "CARMENTA_WEBHOOK_URL and CARMENTA_WEBHOOK_SECRET go together".into(),
            });
        }
        let embedder = match pick(env, &["CARMENTA_EMBEDDINGS"], "embeddings", fc.embeddings) {
            None => None,
            Some(r) if r.value.trim() == "builtin" => None,
            Some(r) if r.value.trim() == "openai" => Some(r),
            Some(r) => return Err(invalid(&r, "expected builtin or openai")),
        };
        let embedder = match embedder {
            None => EmbedderConfig::Builtin {
                dir: pick(
                    env,
                    &["CARMENTA_EMBED_MODEL_DIR"],
                    "embed_model_dir",
                    fc.embed_model_dir.map(|p| p.to_string_lossy().into_owned()),
                )
                .map_or_else(default_model_dir, |r| PathBuf::from(r.value)),
            },
            Some(which) => {
                let url = pick(env, &["CARMENTA_EMBED_URL"], "embed_url", fc.embed_url)
                    .ok_or_else(|| invalid(&which, "CARMENTA_EMBED_URL must be set too"))?;
                let url = match Url::parse(url.value.trim()) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => u,
                    _ => return Err(invalid(&url, "expected an http(s) URL like http://localhost:11434/v1")),
                };
                let model = pick(env, &["CARMENTA_EMBED_MODEL"], "embed_model", fc.embed_model)
                    .map(|r| r.value.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| invalid(&which, "CARMENTA_EMBED_MODEL must be set too"))?;
                let dimensions = num(&["CARMENTA_EMBED_DIMENSIONS"], "embed_dimensions", fc.embed_dimensions, 1, 2000)?
                    .ok_or_else(|| invalid(&which, "CARMENTA_EMBED_DIMENSIONS must be set too (1 to 2000)"))?
                    as usize;
                let key = pick(env, &["CARMENTA_EMBED_API_KEY"], "embed_api_key", fc.embed_api_key)
                    .map(|r| Secret::new(r.value.trim().to_string()))
                    .filter(|k| !k.expose().is_empty());
                EmbedderConfig::OpenAi { url, model, key, dimensions }
            }
        };
        let chunk_tokens =
            num(&["CARMENTA_CHUNK_TOKENS"], "chunk_tokens", fc.chunk_tokens, 16, 8192)?.unwrap_or(128) as usize;
        let chunk_overlap =
            num(&["CARMENTA_CHUNK_OVERLAP"], "chunk_overlap", fc.chunk_overlap, 0, 4096)?.unwrap_or(16) as usize;
        if chunk_overlap * 2 > chunk_tokens {
            return Err(ConfigError::Value {
                key: "CARMENTA_CHUNK_OVERLAP".into(),
                message: format!("must be at most half of the chunk size ({chunk_tokens})"),
            });
        }
        let kb_size_raw = fc.knowledge_max_file_size.map(|v| match v {
            toml::Value::String(s) => s,
            other => other.to_string(),
        });
        let max_file_size =
            match pick(env, &["CARMENTA_KNOWLEDGE_MAX_FILE_SIZE"], "knowledge_max_file_size", kb_size_raw) {
                Some(r) => parse_size(&r.value).map_err(|m| invalid(&r, m.to_string()))?,
                None => 25 * 1024 * 1024,
            };
        let knowledge = KnowledgeConfig {
            embedder,
            chunk_tokens,
            chunk_overlap,
            max_file_size,
            max_pages: num(
                &["CARMENTA_KNOWLEDGE_MAX_PAGES"],
                "knowledge_max_pages",
                fc.knowledge_max_pages,
                1,
                100_000,
            )?
            .unwrap_or(2000) as u32,
            extract_timeout: secs(&["CARMENTA_EXTRACT_TIMEOUT"], "extract_timeout", fc.extract_timeout, 120)?,
            extractor: pick(
                env,
                &["CARMENTA_EXTRACTOR"],
                "extractor",
                fc.extractor.map(|p| p.to_string_lossy().into_owned()),
            )
            .map(|r| PathBuf::from(r.value)),
        };
        let llm = match pick(env, &["CARMENTA_LLM_URL"], "llm_url", fc.llm_url).filter(|r| !r.value.trim().is_empty()) {
            None => None,
            Some(r) => {
                let url = match Url::parse(r.value.trim()) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => u,
                    _ => return Err(invalid(&r, "expected an http(s) URL like http://localhost:11434/v1")),
                };
                let model = pick(env, &["CARMENTA_LLM_MODEL"], "llm_model", fc.llm_model)
                    .map(|m| m.value.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| invalid(&r, "CARMENTA_LLM_MODEL must be set too"))?;
                let key = pick(env, &["CARMENTA_LLM_API_KEY"], "llm_api_key", fc.llm_api_key)
                    .map(|k| Secret::new(k.value.trim().to_string()))
                    .filter(|k| !k.expose().is_empty());
                let timeout = secs(&["CARMENTA_LLM_TIMEOUT"], "llm_timeout", fc.llm_timeout, 60)?;
                Some(LlmConfig { url, model, key, timeout })
            }
        };
        let memory = MemoryConfig {
            llm,
            extract_after: num(
                &["CARMENTA_MEMORY_EXTRACT_AFTER"],
                "memory_extract_after",
                fc.memory_extract_after,
                1,
                10_000,
            )?
            .unwrap_or(10) as u32,
            idle: secs(&["CARMENTA_MEMORY_IDLE"], "memory_idle", fc.memory_idle, 300)?,
            scan_interval: secs(
                &["CARMENTA_MEMORY_SCAN_INTERVAL"],
                "memory_scan_interval",
                fc.memory_scan_interval,
                30,
            )?,
        };
        let admin = AdminConfig {
            idle_timeout: secs(&["CARMENTA_ADMIN_IDLE_TIMEOUT"], "admin_idle_timeout", fc.admin_idle_timeout, 1800)?,
            session_ttl: secs(&["CARMENTA_ADMIN_SESSION_TTL"], "admin_session_ttl", fc.admin_session_ttl, 28_800)?,
            sql_timeout: secs(&["CARMENTA_ADMIN_SQL_TIMEOUT"], "admin_sql_timeout", fc.admin_sql_timeout, 10)?,
            sql_row_cap: num(&["CARMENTA_ADMIN_SQL_ROW_CAP"], "admin_sql_row_cap", fc.admin_sql_row_cap, 1, 100_000)?
                .unwrap_or(1000) as u32,
        };
        let allowed_origins = match pick(
            env,
            &["CARMENTA_ALLOWED_ORIGINS"],
            "allowed_origins",
            fc.allowed_origins.map(|v| v.join(",")),
        ) {
            Some(r) => {
                let mut out = Vec::new();
                for o in r.value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                    let u = Url::parse(o)
                        .map_err(|_| invalid(&r, format!("{o:?} is not an origin like https://app.example.com")))?;
                    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                        return Err(invalid(&r, format!("{o:?} is not an http(s) origin")));
                    }
                    out.push(u.origin().ascii_serialization());
                }
                out
            }
            None => Vec::new(),
        };
        let trusted_proxies = match pick(
            env,
            &["CARMENTA_TRUSTED_PROXIES"],
            "trusted_proxies",
            fc.trusted_proxies.map(|v| v.join(",")),
        ) {
            Some(r) => {
                let mut out = Vec::new();
                for n in r.value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    out.push(IpNet::parse(n).ok_or_else(|| {
                        invalid(&r, format!("{n:?} is not an IP address or CIDR range like 10.0.0.0/8"))
                    })?);
                }
                out
            }
            None => Vec::new(),
        };
        let social = social_providers(env, fc.social)?;
        let db_max_connections = match pick(
            env,
            &["CARMENTA_DB_MAX_CONNECTIONS"],
            "db_max_connections",
            fc.db_max_connections.map(|v| v.to_string()),
        ) {
            Some(r) => match r.value.trim().parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => return Err(invalid(&r, "expected a number between 1 and 1000")),
            },
            None => 10,
        };

        Ok(Config {
            listen,
            public_url,
            data_dir,
            database_url,
            pg_bin,
            pg_user,
            encryption_keys,
            log_format,
            log_filter,
            body_limit,
            request_timeout,
            max_connections,
            header_timeout,
            min_body_rate,
            shutdown_timeout,
            db_max_connections,
            job_workers,
            allow_link_local_urls,
            job_lease,
            access_token_ttl,
            jwt_audience,
            session_ttl,
            session_idle_ttl,
            password_min_length,
            lockout_threshold,
            lockout_duration,
            signin_ip_limit,
            allowed_origins,
            trusted_proxies,
            social,
            smtp_url,
            mail_from,
            email_token_ttl,
            external_issuer,
            external_jwks_url,
            external_jwt_key,
            external_azp,
            external_audience,
            clerk_webhook_secrets,
            chat_max_message_bytes,
            storage,
            storage_max_file_size,
            storage_upload_url_ttl,
            storage_public_url,
            imaging_workers,
            imaging_queue,
            imaging_timeout,
            imaging_priority,
            providers_file,
            webhook_url,
            webhook_secret,
            knowledge,
            memory,
            admin,
            config_file: path,
        })
    }

    /// A default configuration rooted at `data_dir`, used by tests and tools.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        let env = BTreeMap::from([("CARMENTA_DATA_DIR".to_string(), data_dir.into().to_string_lossy().into_owned())]);
        // The defaults and one path cannot fail to parse.
        Self::from_sources(&env, Some(Path::new("/dev/null"))).unwrap_or_else(|e| panic!("default config: {e}"))
    }

    /// The issuer (`iss`) of access tokens: the public URL without a trailing slash.
    pub fn issuer(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_string()
    }

    /// Whether `origin` (scheme://host[:port]) is the public URL's or an allowed one.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        self.public_url.origin().ascii_serialization() == origin || self.allowed_origins.iter().any(|o| o == origin)
    }

    /// Whether the embedded PostgreSQL cluster is used (no `DATABASE_URL`).
    pub fn embedded_db(&self) -> bool {
        self.database_url.is_none()
    }

    /// The configuration as `key = value` lines with secrets redacted.
    pub fn redacted(&self) -> Vec<(String, String)> {
        let db = match &self.database_url {
            Some(s) => redact_url(s.expose()),
            None => format!("(embedded cluster in {})", self.data_dir.join("postgres").display()),
        };
        let keys = if self.encryption_keys.is_empty() {
            "(none set)".to_string()
        } else {
            format!("{} key(s) [redacted]", self.encryption_keys.len())
        };
        vec![
            ("config_file".into(), self.config_file.as_ref().map_or("(none)".into(), |p| p.display().to_string())),
            ("listen".into(), self.listen.to_string()),
            ("public_url".into(), self.public_url.to_string()),
            ("data_dir".into(), self.data_dir.display().to_string()),
            ("database_url".into(), db),
            ("pg_bin".into(), self.pg_bin.as_ref().map_or("(auto)".into(), |p| p.display().to_string())),
            ("pg_user".into(), self.pg_user.clone().unwrap_or_else(|| "(auto)".into())),
            ("encryption_key".into(), keys),
            ("log_format".into(), format!("{:?}", self.log_format).to_lowercase()),
            ("log".into(), self.log_filter.clone()),
            ("body_limit".into(), self.body_limit.to_string()),
            ("request_timeout".into(), format!("{}s", self.request_timeout.as_secs())),
            ("max_connections".into(), self.max_connections.to_string()),
            ("header_timeout".into(), format!("{}s", self.header_timeout.as_secs())),
            ("min_body_rate".into(), format!("{} B/s", self.min_body_rate)),
            ("shutdown_timeout".into(), format!("{}s", self.shutdown_timeout.as_secs())),
            ("db_max_connections".into(), self.db_max_connections.to_string()),
            ("job_workers".into(), self.job_workers.to_string()),
            ("allow_link_local_urls".into(), self.allow_link_local_urls.to_string()),
            ("job_lease".into(), format!("{}s", self.job_lease.as_secs())),
            ("access_token_ttl".into(), format!("{}s", self.access_token_ttl.as_secs())),
            ("jwt_audience".into(), self.jwt_audience.clone()),
            ("session_ttl".into(), format!("{}s", self.session_ttl.as_secs())),
            ("session_idle_ttl".into(), self.session_idle_ttl.map_or("(none)".into(), |d| format!("{}s", d.as_secs()))),
            ("password_min_length".into(), self.password_min_length.to_string()),
            ("lockout".into(), format!("{} failures, {}s", self.lockout_threshold, self.lockout_duration.as_secs())),
            ("signin_ip_limit".into(), format!("{} per 10 min", self.signin_ip_limit)),
            (
                "allowed_origins".into(),
                if self.allowed_origins.is_empty() {
                    "(public_url only)".into()
                } else {
                    self.allowed_origins.join(", ")
                },
            ),
            (
                "trusted_proxies".into(),
                if self.trusted_proxies.is_empty() {
                    "(none: X-Forwarded-For ignored)".into()
                } else {
                    self.trusted_proxies.iter().map(IpNet::to_string).collect::<Vec<_>>().join(", ")
                },
            ),
            ("smtp_url".into(), self.smtp_url.as_ref().map_or("(none: outbox)".into(), |u| redact_url(u.expose()))),
            ("mail_from".into(), self.mail_from.clone()),
            ("email_token_ttl".into(), format!("{}s", self.email_token_ttl.as_secs())),
            ("external_issuer".into(), self.external_issuer.clone().unwrap_or_else(|| "(none)".into())),
            ("external_jwks_url".into(), self.external_jwks_url.as_ref().map_or("(default)".into(), |u| u.to_string())),
            (
                "external_jwt_key".into(),
                if self.external_jwt_key.is_some() { "(pinned PEM)".into() } else { "(none)".into() },
            ),
            ("external_azp".into(), self.external_azp.join(", ")),
            ("chat_max_message_bytes".into(), self.chat_max_message_bytes.to_string()),
            (
                "storage".into(),
                match &self.storage {
                    StorageBackend::Fs { root } => format!("fs {}", root.display()),
                    StorageBackend::S3(s) => format!(
                        "s3 bucket {} at {} (region {}, {}){}",
                        s.bucket,
                        s.endpoint.as_ref().map_or("AWS".to_string(), |u| u.to_string()),
                        s.region,
                        if s.path_style { "path-style" } else { "virtual-hosted" },
                        if s.secret_access_key.is_some() { ", secret [redacted]" } else { "" }
                    ),
                },
            ),
            (
                "social".into(),
                if self.social.is_empty() {
                    "(none configured; see the API)".into()
                } else {
                    self.social.iter().map(|p| format!("{} (secret [redacted])", p.id)).collect::<Vec<_>>().join(", ")
                },
            ),
            (
                "providers_file".into(),
                self.providers_file.as_ref().map_or("(built-in catalog only)".into(), |p| p.display().to_string()),
            ),
            ("webhook_url".into(), self.webhook_url.as_ref().map_or("(none)".into(), |u| u.to_string())),
            (
                "webhook_secret".into(),
                if self.webhook_secret.is_some() { "[redacted]".into() } else { "(none)".into() },
            ),
            ("storage_max_file_size".into(), self.storage_max_file_size.to_string()),
            ("storage_upload_url_ttl".into(), format!("{}s", self.storage_upload_url_ttl.as_secs())),
            ("storage_public_url".into(), self.storage_public_url.as_ref().map_or("(none)".into(), |u| u.to_string())),
            ("imaging_workers".into(), self.imaging_workers.to_string()),
            ("imaging_queue".into(), self.imaging_queue.to_string()),
            ("imaging_timeout".into(), format!("{}s", self.imaging_timeout.as_secs())),
            ("imaging_priority".into(), self.imaging_priority.as_str().into()),
            ("clerk_webhook_secret".into(), format!("{} secret(s) [redacted]", self.clerk_webhook_secrets.len())),
            (
                "embeddings".into(),
                match &self.knowledge.embedder {
                    EmbedderConfig::Builtin { dir } => format!("builtin potion-base-8M from {}", dir.display()),
                    EmbedderConfig::OpenAi { url, model, key, dimensions } => format!(
                        "openai-compatible {url} model {model} ({dimensions} dimensions){}",
                        if key.is_some() { ", key [redacted]" } else { "" }
                    ),
                },
            ),
            (
                "chunking".into(),
                format!("{} tokens, {} overlap", self.knowledge.chunk_tokens, self.knowledge.chunk_overlap),
            ),
            (
                "knowledge_limits".into(),
                format!(
                    "{} bytes, {} pages, {}s extraction",
                    self.knowledge.max_file_size,
                    self.knowledge.max_pages,
                    self.knowledge.extract_timeout.as_secs()
                ),
            ),
        ]
    }
}

/// Replaces the password in a URL with `[redacted]`.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("[redacted]"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("password") { "[redacted]".to_string() } else { v.into_owned() };
                    (k.into_owned(), v)
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "[unparseable, redacted]".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("1.5 GiB").unwrap(), 1_610_612_736);
        assert_eq!(parse_size("10kb").unwrap(), 10_000);
        assert!(parse_size("MB").is_err());
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn imaging_priority() {
        let with = |v: Option<&str>| {
            let env: BTreeMap<String, String> =
                v.map(|v| ("CARMENTA_IMAGING_PRIORITY".to_string(), v.to_string())).into_iter().collect();
            Config::from_sources(&env, None)
        };
        assert_eq!(with(None).unwrap().imaging_priority, crate::imaging::Priority::Idle);
        assert_eq!(with(Some("normal")).unwrap().imaging_priority, crate::imaging::Priority::Normal);
        assert_eq!(with(Some(" idle ")).unwrap().imaging_priority, crate::imaging::Priority::Idle);
        let e = with(Some("realtime")).unwrap_err().to_string();
        assert!(e.contains("CARMENTA_IMAGING_PRIORITY") && e.contains("idle or normal"), "{e}");
    }

    #[test]
    fn redacts_passwords() {
        let r = redact_url("postgres://u:hunter2@db/x?password=hunter3");
        assert!(!r.contains("hunter"), "{r}");
        assert!(r.contains("u:"));
    }
}

/// An IP address range (`10.0.0.0/8`, `::1/128`; a bare address is its own range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Option<IpNet> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(IpNet { addr, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let p = u32::from(self.prefix);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = u32::MAX.checked_shl(32 - p).unwrap_or(0);
                u32::from(n) & m == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = u128::MAX.checked_shl(128 - p).unwrap_or(0);
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The client's address for a request from `peer`: the peer itself unless it is
/// a trusted proxy; then `X-Forwarded-For` read from the right, skipping trusted
/// proxies, and the first other address is the client (a client's own spoofed
/// entries sit to the left of it and are never reached).
pub fn client_addr(peer: SocketAddr, headers: &http::HeaderMap, trusted: &[IpNet]) -> SocketAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return peer;
    }
    let mut client = peer.ip();
    let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    for hop in hops.rsplit(',').map(str::trim) {
        let Ok(ip) = hop.parse::<std::net::IpAddr>() else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    SocketAddr::new(client, 0)
}

#[cfg(test)]
mod net_tests {
    use super::*;

    #[test]
    fn ranges_and_forwarded_chains() {
        let n = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(IpNet::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_none());
        assert!(IpNet::parse("proxy").is_none());
        let trusted = [IpNet::parse("127.0.0.1").unwrap(), IpNet::parse("10.0.0.0/8").unwrap()];
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.2".parse().unwrap());
        let via_proxy = client_addr("127.0.0.1:5000".parse().unwrap(), &h, &trusted);
        assert_eq!(via_proxy.ip().to_string(), "203.0.113.7");
        let direct = client_addr("198.51.100.1:5000".parse().unwrap(), &h, &trusted);
        assert_eq!(direct.ip().to_string(), "198.51.100.1");
        let none = client_addr("127.0.0.1:5000".parse().unwrap(), &h, &[]);
        assert_eq!(none.ip().to_string(), "127.0.0.1");
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        let bad = client_addr("127.0.0.1:5000".parse().unwrap(), &h, &trusted);
        assert_eq!(bad.ip().to_string(), "127.0.0.1");
    }
}
