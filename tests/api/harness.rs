//! The test harness: one throwaway PostgreSQL cluster per test binary (started by the
//! same embedded manager the server uses, or `CARMENTA_TEST_DATABASE_URL`), a
//! migrated template database, a fresh database per test created from it, and
//! `TestApp`, which runs the real router on port 0 over real HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use carmenta::config::{Config, Secret};
use carmenta::crypto::{self, Keyring};
use carmenta::db::embedded::{EmbeddedOptions, EmbeddedPg};
use carmenta::db::{self, quote_ident};
use carmenta::router as app;
use carmenta::state::AppState;
use serde_json::Value;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool};
use tokio::sync::oneshot;

/// The cluster shared by every test in this binary.
pub struct Cluster {
    /// Options reaching the server as a superuser, database `postgres`.
    pub admin: PgConnectOptions,
    /// The migrated template database.
    pub template: String,
    /// A `postgres://` URL of the server with `{db}` where the database name goes.
    pub url_pattern: String,
    /// The embedded cluster, when the harness started one. Never dropped: its
    /// watchdog stops it and removes its directory when the test binary exits.
    pub embedded: Option<EmbeddedPg>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The shared cluster, started (and its template migrated) on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        // Its own thread and runtime: the caller may be inside a test's runtime.
        std::thread::spawn(init_cluster).join().unwrap_or_else(|_| panic!("starting the test cluster panicked"))
    })
}

fn init_cluster() -> Cluster {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
    let (admin, embedded, url_pattern) = match std::env::var("CARMENTA_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => {
            let opts = PgConnectOptions::from_str(&url).unwrap_or_else(|e| panic!("CARMENTA_TEST_DATABASE_URL: {e}"));
            let mut u = url::Url::parse(&url).expect("CARMENTA_TEST_DATABASE_URL");
            u.set_path("/{db}");
            (opts, None, u.to_string().replace("%7Bdb%7D", "{db}"))
        }
        _ => {
            let dir = tempfile::Builder::new().prefix("carmenta-test-").tempdir().expect("tempdir").keep();
            let mut opts = EmbeddedOptions::new(&dir);
            opts.ephemeral = true;
            opts.stop_with_process = true;
            opts.remove_on_exit = true;
            let pg = EmbeddedPg::start(&opts).unwrap_or_else(|e| panic!("starting the test cluster: {e}"));
            let pattern = format!(
                "postgres://{}@localhost/{{db}}?host={}",
                carmenta::db::embedded::SUPERUSER,
                pg.socket_dir().display()
            );
            (pg.connect_options("postgres"), Some(pg), pattern)
        }
    };
    let template = unique("carmenta_tpl");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        db::ensure_database(admin.clone(), &template).await.expect("creating template");
        let pool =
            db::pool_options(2).connect_with(admin.clone().database(&template)).await.expect("connecting to template");
        db::prepare(&pool).await.expect("migrating template");
        pool.close().await;
    });
    Cluster { admin, template, url_pattern, embedded }
}

/// Creates a fresh, migrated database for one test and returns its options.
pub async fn fresh_database() -> PgConnectOptions {
    let c = cluster();
    let name = unique("t");
    let mut conn = c.admin.clone().connect().await.expect("admin connection");
    let sql = format!("CREATE DATABASE {} TEMPLATE {}", quote_ident(&name), quote_ident(&c.template));
    // A template in use by a concurrent CREATE can briefly refuse; retry.
    let mut tries = 0;
    loop {
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut conn).await {
            Ok(_) => break,
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("creating test database: {e}"),
        }
    }
    c.admin.clone().database(&name)
}

/// Builds a `TestApp`.
pub struct TestAppBuilder {
    config: Config,
    database: Option<String>,
    extra: Router<AppState>,
    _data_dir: tempfile::TempDir,
}

impl TestAppBuilder {
    /// Changes the configuration before the app starts.
    pub fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Uses another app's database, as a second replica would.
    pub fn same_database_as(mut self, other: &TestApp) -> Self {
        self.database = Some(other.database.clone());
        self
    }

    /// Adds routes behind the real middleware stack.
    pub fn routes(mut self, extra: Router<AppState>) -> Self {
        self.extra = self.extra.merge(extra);
        self
    }

    /// Starts the app on 127.0.0.1:0 over real HTTP against a fresh database.
    pub async fn spawn(self) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = self.config;
        if config.public_url.as_str() == "http://127.0.0.1:0/" {
            config.public_url = format!("http://{addr}").parse().expect("url");
        }
        // A domain name as the public URL (WebAuthn needs one): `localhost` on the bound port.
        if config.public_url.as_str() == "http://localhost:0/" {
            config.public_url = format!("http://localhost:{}", addr.port()).parse().expect("url");
        }
        let options = match &self.database {
            Some(name) => cluster().admin.clone().database(name),
            None => fresh_database().await,
        };
        let pool = db::pool_options(config.db_max_connections).connect_with(options.clone()).await.expect("test pool");
        let keyring = Keyring::from_base64(&config.encryption_keys).expect("keyring");
        let state = AppState::build(config.clone(), pool.clone(), keyring).await.expect("app state");
        state.spawn_cache_listener();
        let router = app::router_with(state.clone(), self.extra);
        let (tx, rx) = oneshot::channel::<()>();
        let serving = app::Serving::from_config(&config);
        let server = tokio::spawn(app::serve(
            listener,
            router.clone(),
            async move {
                let _ = rx.await;
            },
            serving,
        ));
        TestApp {
            addr,
            base: format!("http://{addr}"),
            client: client(),
            pool,
            state,
            router,
            database: options.get_database().unwrap_or_default().to_string(),
            shutdown: Some(tx),
            server: Some(server),
            _data_dir: self._data_dir,
        }
    }
}

/// A running app: the real router served over HTTP, and a pool on its database.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub base: String,
    /// An HTTP client (no redirects followed).
    pub client: reqwest::Client,
    /// A pool on the app's database.
    pub pool: PgPool,
    /// The app state.
    pub state: AppState,
    /// The router, for in-process calls.
    pub router: Router,
    /// The name of this test's database.
    pub database: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _data_dir: tempfile::TempDir,
}

impl TestApp {
    /// A builder with the default test configuration.
    pub fn builder() -> TestAppBuilder {
        let data_dir = tempfile::Builder::new().prefix("carmenta-app-").tempdir().expect("tempdir");
        let mut config = Config::for_data_dir(data_dir.path());
        config.encryption_keys = vec![Secret::new(crypto::generate_key())];
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.public_url = "http://127.0.0.1:0/".parse().expect("url");
        // Text extraction runs in the real binary's sandboxed child process.
        config.knowledge.extractor = Some(PathBuf::from(env!("CARGO_BIN_EXE_carmenta")));
        TestAppBuilder { config, database: None, extra: Router::new(), _data_dir: data_dir }
    }

    /// Starts an app with the default test configuration.
    pub async fn spawn() -> TestApp {
        Self::builder().spawn().await
    }

    /// A `postgres://` URL of this app's database (for the CLI under test).
    pub fn database_url(&self) -> String {
        cluster().url_pattern.replace("{db}", &self.database)
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request")
    }

    /// Another replica of this app: the same database, encryption key and public
    /// URL (so the same issuer).
    pub async fn replica(&self) -> TestApp {
        let (keys, public_url) = (self.state.config.encryption_keys.clone(), self.state.config.public_url.clone());
        TestApp::builder()
            .same_database_as(self)
            .config(|c| {
                c.encryption_keys = keys;
                c.public_url = public_url;
            })
            .spawn()
            .await
    }

    /// A request to `path`, anonymous until [`Call::by`] names who sends it.
    pub fn call(&self, method: reqwest::Method, path: &str) -> Call {
        Call(self.client.request(method, self.url(path)))
    }

    /// GET `path` as `token` (a session, access token or service key): status and JSON.
    pub async fn get_as(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path).by(token).reply().await
    }

    /// POST `body` to `path` as `token`: status and JSON.
    pub async fn post_as(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path).by(token).json(body).reply().await
    }

    /// PATCH `path` with `body` as `token`: status and JSON.
    pub async fn patch_as(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::PATCH, path).by(token).json(body).reply().await
    }

    /// DELETE `path` as `token`: status and JSON (`null` for an empty body).
    pub async fn delete_as(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path).by(token).reply().await
    }

    /// Asks the server to shut down and waits for `serve` to return.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(h) => h.await.expect("server task"),
            None => Ok(()),
        }
    }

    /// Triggers shutdown without waiting; returns the server task.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.take().expect("server already shut down")
    }
}

/// Whether `check` comes true within `within` (polled every 20 ms).
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A request body sent as `head` at once, then `bytes` single bytes, each after
/// `every` (a client trickling its upload).
pub fn trickled(head: Vec<u8>, bytes: u32, every: Duration) -> reqwest::Body {
    let head = futures::stream::once(async move { Ok::<_, std::io::Error>(head) });
    let tail = futures::stream::unfold(0u32, move |n| async move {
        if n >= bytes {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((Ok::<_, std::io::Error>(vec![b'y']), n + 1))
    });
    reqwest::Body::wrap_stream(futures::StreamExt::chain(head, tail))
}

/// A request body fed by hand: each chunk sent on the returned sender goes out;
/// dropping the sender ends the body.
pub fn fed_body() -> (tokio::sync::mpsc::Sender<Vec<u8>>, reqwest::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx)) });
    (tx, reqwest::Body::wrap_stream(stream))
}

/// A request being built by a test (see [`TestApp::call`]).
pub struct Call(reqwest::RequestBuilder);

impl Call {
    /// Sent with `Authorization: Bearer <token>`.
    pub fn by(self, token: impl std::fmt::Display) -> Call {
        Call(self.0.bearer_auth(token))
    }

    /// Sent by a service key acting for `user` (`X-Carmenta-User-Id`).
    pub fn acting_for(self, key: impl std::fmt::Display, user: uuid::Uuid) -> Call {
        Call(self.0.bearer_auth(key).header("x-carmenta-user-id", user.to_string()))
    }

    /// With a header.
    pub fn header<K, V>(self, key: K, value: V) -> Call
    where
        reqwest::header::HeaderName: TryFrom<K>,
        <reqwest::header::HeaderName as TryFrom<K>>::Error: Into<axum::http::Error>,
        reqwest::header::HeaderValue: TryFrom<V>,
        <reqwest::header::HeaderValue as TryFrom<V>>::Error: Into<axum::http::Error>,
    {
        Call(self.0.header(key, value))
    }

    /// With a JSON body.
    pub fn json<T: serde::Serialize + ?Sized>(self, body: &T) -> Call {
        Call(self.0.json(body))
    }

    /// With a multipart form body.
    pub fn multipart(self, form: reqwest::multipart::Form) -> Call {
        Call(self.0.multipart(form))
    }

    /// With a raw body.
    pub fn body(self, body: impl Into<reqwest::Body>) -> Call {
        Call(self.0.body(body))
    }

    /// Sends it; the response as it came.
    pub async fn send(self) -> reqwest::Response {
        self.0.send().await.expect("request")
    }

    /// Sends it; the status and the JSON body (`null` when the body is empty or not JSON).
    pub async fn reply(self) -> (u16, Value) {
        let res = self.send().await;
        let status = res.status().as_u16();
        let bytes = res.bytes().await.expect("response body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Sends it; the JSON body, whatever the status.
    pub async fn value(self) -> Value {
        self.reply().await.1
    }
}

/// A signed-up user: id, session token and access token.
pub struct User {
    /// The user id.
    pub id: uuid::Uuid,
    /// The session token.
    pub session: String,
    /// An access token (JWT).
    pub jwt: String,
}

/// The password every test account uses.
pub const PASSWORD: &str = "correct horse battery staple";

/// Signs up `email` (password [`PASSWORD`]) and returns the new user.
pub async fn sign_up(app: &TestApp, email: &str) -> User {
    let (status, b) = app
        .call(reqwest::Method::POST, "/v1/auth/sign-up")
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .reply()
        .await;
    assert_eq!(status, 201, "signing up {email}: {b}");
    User {
        id: b["user"]["id"].as_str().expect("user id").parse().expect("uuid"),
        session: b["session_token"].as_str().expect("session token").into(),
        jwt: b["access_token"].as_str().expect("access token").into(),
    }
}

/// Parses an error envelope and returns (code, message, request_id).
pub async fn envelope(res: reqwest::Response) -> (u16, String, String, String) {
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.expect("JSON error body");
    let e = &body["error"];
    (
        status,
        e["code"].as_str().unwrap_or_else(|| panic!("no code in {body}")).to_string(),
        e["message"].as_str().unwrap_or_default().to_string(),
        e["request_id"].as_str().unwrap_or_default().to_string(),
    )
}

/// A temporary directory for a test, kept until dropped.
pub fn temp_dir(prefix: &str) -> PathBuf {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir").keep()
}

/// A request body shape for the diagnostic echo route.
#[derive(serde::Deserialize, serde::Serialize)]
pub struct EchoBody {
    /// Any name.
    pub name: String,
    /// Any count.
    pub count: u32,
}

/// Diagnostic routes mounted behind the real middleware stack: a JSON echo, a
/// handler that panics, and one that sleeps for `?ms=`.
pub fn test_routes() -> Router<AppState> {
    use axum::extract::Query;
    use axum::routing::{get, post};
    use carmenta::error::ApiJson;
    #[derive(serde::Deserialize)]
    struct Sleep {
        ms: u64,
    }
    Router::new()
        .route("/test/echo", post(|ApiJson(b): ApiJson<EchoBody>| async move { ApiJson(b) }))
        .route(
            "/test/panic",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("deliberate test panic");
                }
                "unreachable"
            }),
        )
        .route(
            "/test/whoami",
            get(|carmenta::auth::Caller(p): carmenta::auth::Caller| async move {
                ApiJson(serde_json::json!({"user_id": p.user_id(), "service": p.is_service()}))
            }),
        )
        .route(
            "/test/slow",
            get(|Query(s): Query<Sleep>| async move {
                tokio::time::sleep(Duration::from_millis(s.ms)).await;
                "done"
            }),
        )
}

/// An HTTP client for tests (no redirects followed), with the TLS provider installed.
pub fn client() -> reqwest::Client {
    carmenta::install_tls_provider();
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// The S3-compatible server shared by this test binary: `moto_server` (installed by
/// `scripts/bootstrap` under `.tools/`) on a loopback port, stopped by a watchdog
/// when the test binary exits.
pub struct S3Server {
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
    /// The watchdog shell (reaped when the test binary exits).
    _watchdog: std::sync::Mutex<std::process::Child>,
}

static S3: OnceLock<S3Server> = OnceLock::new();

fn moto_binary() -> PathBuf {
    if let Ok(p) = std::env::var("CARMENTA_TEST_MOTO") {
        return PathBuf::from(p);
    }
    let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&tools)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin/moto_server")).filter(|p| p.exists()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| panic!("moto_server not found under {}: run scripts/bootstrap", tools.display()))
}

/// The shared S3 server, started on first use.
pub fn s3_server() -> &'static S3Server {
    S3.get_or_init(|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let moto = moto_binary();
        // A watchdog shell: moto runs while this test process lives.
        let script = format!(
            "\"$1\" -H 127.0.0.1 -p {port} >/dev/null 2>&1 & child=$!; \
             while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill $child",
            parent = std::process::id()
        );
        let watchdog = std::process::Command::new("sh")
            .args(["-c", &script, "sh"])
            .arg(&moto)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server { endpoint: format!("http://127.0.0.1:{port}"), _watchdog: std::sync::Mutex::new(watchdog) }
    })
}

/// Which object store a storage test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The local filesystem.
    Fs,
    /// The shared S3 server, a fresh bucket per test.
    S3,
}

impl TestAppBuilder {
    /// Stores objects in `backend` (for S3: a new bucket on the shared server).
    pub async fn backend(mut self, backend: Backend) -> Self {
        if backend == Backend::S3 {
            let server = s3_server();
            let bucket = format!("t-{}", uuid::Uuid::new_v4().simple());
            let r = client().put(format!("{}/{bucket}", server.endpoint)).send().await.expect("creating S3 bucket");
            assert!(r.status().is_success(), "creating S3 bucket: {}", r.status());
            self.config.storage = carmenta::config::StorageBackend::S3(carmenta::config::S3Config {
                endpoint: Some(server.endpoint.parse().expect("endpoint")),
                region: "us-east-1".into(),
                bucket,
                access_key_id: Some("test".into()),
                secret_access_key: Some(Secret::new("test")),
                path_style: true,
            });
        }
        self
    }
}

/// An organization with a member of every kind, and a stranger.
pub struct Team {
    /// The organization's id.
    pub org_id: String,
    /// Its creator (`org:owner`).
    pub owner: User,
    /// `org:admin`: every data permission.
    pub admin: User,
    /// `org:member`: reads what the organization shares.
    pub member: User,
    /// The custom role `org:guest`, which holds no permission.
    pub guest: User,
    /// Not a member.
    pub stranger: User,
}

/// Signs up five users (`{prefix}-owner@example.com`, …) and makes the first an
/// organization with the next three as members (see [`Team`]).
pub async fn team(app: &TestApp, prefix: &str) -> Team {
    let user = |kind: &str| format!("{prefix}-{kind}@example.com");
    let owner = sign_up(app, &user("owner")).await;
    let (s, org) = app.post_as("/v1/orgs", &owner.jwt, &serde_json::json!({"name": format!("{prefix} team")})).await;
    assert_eq!(s, 201, "{org}");
    let org_id = org["id"].as_str().expect("org id").to_string();
    let (s, role) = app
        .post_as(
            &format!("/v1/orgs/{org_id}/roles"),
            &owner.jwt,
            &serde_json::json!({"key": "org:guest", "name": "Guest", "permissions": []}),
        )
        .await;
    assert_eq!(s, 201, "{role}");
    let admin = sign_up(app, &user("admin")).await;
    let member = sign_up(app, &user("member")).await;
    let guest = sign_up(app, &user("guest")).await;
    for (u, role) in [(&admin, "org:admin"), (&member, "org:member"), (&guest, "org:guest")] {
        sqlx::query("INSERT INTO org_members (org_id, user_id, role) VALUES ($1::uuid, $2, $3)")
            .bind(&org_id)
            .bind(u.id)
            .bind(role)
            .execute(&app.pool)
            .await
            .expect("adding a member");
    }
    let stranger = sign_up(app, &user("stranger")).await;
    Team { org_id, owner, admin, member, guest, stranger }
}

/// Gives `user` the role `role` in organization `org_id` (straight in the database).
pub async fn set_org_role(pool: &sqlx::PgPool, org_id: &str, user: uuid::Uuid, role: &str) {
    sqlx::query("UPDATE org_members SET role = $3 WHERE org_id = $1::uuid AND user_id = $2")
        .bind(org_id)
        .bind(user)
        .bind(role)
        .execute(pool)
        .await
        .expect("changing a role");
}
