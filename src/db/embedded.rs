//! The embedded PostgreSQL manager: finds the server binaries, runs `initdb` on
//! first start, starts a private cluster that listens only on a Unix socket inside
//! the data directory, recovers from a stale `postmaster.pid` or a cluster left
//! running, runs the cluster under an unprivileged account when Carmenta runs as
//! root, and stops it. Synchronous (std processes), so the test harness can use it
//! outside any async runtime.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid, User};

/// The superuser role created by `initdb` in the embedded cluster.
pub const SUPERUSER: &str = "carmenta";
/// The port number, which only names the socket file (no TCP listener).
pub const PORT: u16 = 5432;

/// Errors from the embedded manager; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, postgres) not found{0}; install them with `scripts/bootstrap` \
         (Debian/Ubuntu: apt-get install postgresql postgresql-contrib), or set CARMENTA_PG_BIN to their directory"
    )]
    NoBinaries(String),
    /// The PostgreSQL version is too old.
    #[error("PostgreSQL {0} in {1} is too old: Carmenta needs 15 or newer (set CARMENTA_PG_BIN)")]
    TooOld(u32, PathBuf),
    /// The unprivileged account could not be found.
    #[error(
        "running as root, and PostgreSQL refuses to: the cluster must run as an unprivileged account, \
         but user {0:?} does not exist (create it with `useradd --system {0}` or set CARMENTA_PG_USER)"
    )]
    NoUser(String),
    /// The unprivileged account cannot reach the data directory.
    #[error(
        "the cluster runs as user {user:?} (Carmenta runs as root), which cannot reach {dir}: make its parent \
         directories traversable (chmod o+x) or set CARMENTA_DATA_DIR to a path such as /var/lib/carmenta"
    )]
    Unreachable {
        /// The account.
        user: String,
        /// The directory.
        dir: PathBuf,
    },
    /// The socket path would exceed the Unix socket path limit.
    #[error("the socket path {0} is too long for a Unix socket (max 107 bytes): use a shorter CARMENTA_DATA_DIR")]
    SocketPathTooLong(PathBuf),
    /// A command failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// Which step.
        what: String,
        /// Its output or error.
        detail: String,
    },
    /// The cluster did not become ready in time.
    #[error("PostgreSQL did not become ready within {0:?}; see {1}")]
    Timeout(Duration, PathBuf),
    /// File system error.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

fn io(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let ctx = ctx.into();
    move |e| EmbeddedError::Io(ctx, e)
}

/// How to start an embedded cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The Carmenta data directory; the cluster lives in `postgres/`, its socket in `run/`.
    pub root: PathBuf,
    /// Directory with `initdb` and `postgres`; found automatically when `None`.
    pub pg_bin: Option<PathBuf>,
    /// Account to run the cluster as when we are root (default `postgres`, else `nobody`).
    pub pg_user: Option<String>,
    /// Trade durability for speed (fsync off): for throwaway test clusters only.
    pub ephemeral: bool,
    /// Stop the cluster when this process dies, even by SIGKILL (a watchdog process).
    pub stop_with_process: bool,
    /// Also delete `root` when the watchdog stops the cluster (throwaway clusters).
    pub remove_on_exit: bool,
}

impl EmbeddedOptions {
    /// Options for a durable cluster under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            root: root.into(),
            pg_bin: None,
            pg_user: None,
            ephemeral: false,
            stop_with_process: true,
            remove_on_exit: false,
        }
    }
}

/// A running embedded cluster owned by this process. Dropping it stops the cluster.
#[derive(Debug)]
pub struct EmbeddedPg {
    root: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    pid: i32,
    watchdog: Option<(Child, ChildStdin)>,
    version: u32,
}

/// Finds the directory holding `initdb` and `postgres`.
pub fn find_bin_dir(configured: Option<&Path>) -> Result<PathBuf, EmbeddedError> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = configured {
        return if has(d) {
            Ok(d.to_path_buf())
        } else {
            Err(EmbeddedError::NoBinaries(format!(" in CARMENTA_PG_BIN={}", d.display())))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has(&d) {
            return Ok(d);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = Vec::new();
    for base in ["/usr/lib/postgresql", "/usr/local/lib/postgresql"] {
        if let Ok(rd) = fs::read_dir(base) {
            for e in rd.flatten() {
                if let Ok(v) = e.file_name().to_string_lossy().parse::<u32>() {
                    candidates.push((v, e.path().join("bin")));
                }
            }
        }
    }
    candidates.sort();
    for (_, d) in candidates.iter().rev() {
        if has(d) {
            return Ok(d.clone());
        }
    }
    for d in ["/usr/local/pgsql/bin", "/usr/local/bin", "/opt/homebrew/bin", "/usr/bin"] {
        let d = Path::new(d);
        if has(d) {
            return Ok(d.to_path_buf());
        }
    }
    Err(EmbeddedError::NoBinaries(String::new()))
}

/// The major version of the server in `bin`.
pub fn server_version(bin: &Path) -> Result<u32, EmbeddedError> {
    let out = Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .map_err(io(format!("running {}/postgres --version", bin.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.18 (Debian …)"
    text.split_whitespace()
        .find_map(|w| w.split('.').next().and_then(|m| m.parse::<u32>().ok()))
        .ok_or_else(|| EmbeddedError::Command { what: "postgres --version".into(), detail: text.into_owned() })
}

/// How the cluster's processes are run.
#[derive(Debug, Clone)]
enum RunAs {
    /// As this process's user (we are not root).
    Me,
    /// As an unprivileged account (we are root; PostgreSQL refuses root).
    User(User),
    /// We are root and the account cannot reach the data directory (say it is under
    /// `/root`): in a user namespace where our uid appears as the account's, so
    /// PostgreSQL does not see root and the files stay ours.
    UserNs(User),
}

impl RunAs {
    fn user(&self) -> Option<&User> {
        match self {
            RunAs::Me => None,
            RunAs::User(u) | RunAs::UserNs(u) => Some(u),
        }
    }
}

/// The unprivileged account to use when we are root: `None` when we are not root.
fn resolve_account(configured: Option<&str>) -> Result<Option<User>, EmbeddedError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let names: Vec<&str> = match configured {
        Some(n) => vec![n],
        None => vec!["postgres", "nobody"],
    };
    for n in &names {
        if let Ok(Some(u)) = User::from_name(n)
            && !u.uid.is_root()
        {
            return Ok(Some(u));
        }
    }
    Err(EmbeddedError::NoUser(names[0].to_string()))
}

/// Whether `user` can enter `dir`.
fn can_enter(user: &User, dir: &Path) -> bool {
    Command::new("/bin/sh")
        .args(["-c", "test -x \"$1\"", "sh"])
        .arg(dir)
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether user namespaces can map us to `user` here (`unshare` from util-linux).
fn userns_works(user: &User) -> bool {
    Command::new("unshare")
        .args(["-U", &format!("--map-user={}", user.uid), &format!("--map-group={}", user.gid), "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn chown(path: &Path, run_as: &RunAs) -> Result<(), EmbeddedError> {
    if let RunAs::User(u) = run_as {
        nix::unistd::chown(path, Some(u.uid), Some(u.gid))
            .map_err(|e| EmbeddedError::Io(format!("chown {}", path.display()), e.into()))?;
    }
    Ok(())
}

fn make_dir(path: &Path, mode: u32) -> Result<(), EmbeddedError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io(format!("creating {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(format!("chmod {}", path.display())))
}

fn command_as(program: &Path, run_as: &RunAs) -> Command {
    let mut c = match run_as {
        RunAs::UserNs(u) => {
            let mut c = Command::new("unshare");
            c.args(["-U", &format!("--map-user={}", u.uid), &format!("--map-group={}", u.gid), "--"]).arg(program);
            c
        }
        _ => Command::new(program),
    };
    if let RunAs::User(u) = run_as {
        c.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    if let Some(u) = run_as.user() {
        c.env("HOME", &u.dir).env("USER", &u.name).env("LOGNAME", &u.name);
    }
    // Own process group: a Ctrl-C in the terminal goes to Carmenta, which then
    // drains requests and stops the cluster itself.
    c.process_group(0);
    c.env_remove("PGDATA").env_remove("PGHOST").env_remove("PGPORT").env("LC_ALL", "C");
    c
}

fn pid_alive(pid: i32) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

fn is_postgres(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().starts_with("postgres") || c.trim().starts_with("postmaster"))
        .unwrap_or(false)
}

/// Reads `postmaster.pid`: (pid, status line), if present.
fn read_pid_file(pgdata: &Path) -> Option<(i32, String)> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse::<i32>().ok()?;
    let status = text.lines().nth(7).unwrap_or("").trim().to_string();
    Some((pid, status))
}

fn tail_of(path: &Path, bytes: u64) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

/// Sends `sig` to `pid` and waits for it to exit, escalating to SIGQUIT and SIGKILL.
fn stop_pid(pid: i32, child: Option<&mut Child>, wait: Duration) {
    let mut child = child;
    let exited = |child: &mut Option<&mut Child>| -> bool {
        match child {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))) || !pid_alive(pid),
            None => !pid_alive(pid),
        }
    };
    for (sig, limit) in
        [(Signal::SIGINT, wait), (Signal::SIGQUIT, Duration::from_secs(5)), (Signal::SIGKILL, Duration::from_secs(5))]
    {
        if exited(&mut child) {
            return;
        }
        let _ = kill(Pid::from_raw(pid), sig);
        let start = Instant::now();
        while start.elapsed() < limit {
            if exited(&mut child) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl EmbeddedPg {
    /// Starts (initialising on first use) the cluster described by `opts` and waits
    /// until it accepts connections.
    pub fn start(opts: &EmbeddedOptions) -> Result<EmbeddedPg, EmbeddedError> {
        let bin = find_bin_dir(opts.pg_bin.as_deref())?;
        let version = server_version(&bin)?;
        if version < 15 {
            return Err(EmbeddedError::TooOld(version, bin));
        }
        let account = resolve_account(opts.pg_user.as_deref())?;
        let root = if opts.root.is_absolute() {
            opts.root.clone()
        } else {
            std::env::current_dir().map_err(io("current directory"))?.join(&opts.root)
        };
        // The data directory is private; as root it must stay traversable (not
        // listable) for the cluster's account.
        make_dir(&root, if account.is_some() { 0o711 } else { 0o700 })?;
        let run_as = match account {
            None => RunAs::Me,
            Some(u) if can_enter(&u, &root) => RunAs::User(u),
            Some(u) if userns_works(&u) => {
                tracing::warn!(
                    user = %u.name, dir = %root.display(),
                    "the cluster's account cannot reach the data directory; running PostgreSQL in a user namespace instead"
                );
                make_dir(&root, 0o700)?;
                RunAs::UserNs(u)
            }
            Some(u) => return Err(EmbeddedError::Unreachable { user: u.name.clone(), dir: root.clone() }),
        };
        let pgdata = root.join("postgres");
        let socket_dir = root.join("run");
        let socket_path = socket_dir.join(format!(".s.PGSQL.{PORT}"));
        if socket_path.as_os_str().len() > 107 {
            return Err(EmbeddedError::SocketPathTooLong(socket_path));
        }
        make_dir(&socket_dir, 0o700)?;
        chown(&socket_dir, &run_as)?;

        if !pgdata.join("PG_VERSION").is_file() {
            // A directory without PG_VERSION is an interrupted initdb: start over.
            if pgdata.exists() {
                fs::remove_dir_all(&pgdata).map_err(io(format!("removing incomplete {}", pgdata.display())))?;
            }
            make_dir(&pgdata, 0o700)?;
            chown(&pgdata, &run_as)?;
            let mut cmd = command_as(&bin.join("initdb"), &run_as);
            cmd.arg("-D").arg(&pgdata).args([
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
            ]);
            if opts.ephemeral {
                cmd.arg("--no-sync");
            }
            let out = cmd.stdin(Stdio::null()).output().map_err(io("running initdb"))?;
            if !out.status.success() {
                let _ = fs::remove_dir_all(&pgdata);
                return Err(EmbeddedError::Command {
                    what: "initdb".into(),
                    detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            tracing::info!(dir = %pgdata.display(), "initialised PostgreSQL {version} cluster");
        }

        // A previous run may have left the cluster running (we were SIGKILLed and
        // the watchdog too) or left a stale postmaster.pid behind.
        if let Some((pid, _)) = read_pid_file(&pgdata) {
            if pid_alive(pid) && is_postgres(pid) {
                tracing::warn!(pid, "stopping a PostgreSQL cluster left running by a previous run");
                stop_pid(pid, None, Duration::from_secs(30));
            } else {
                tracing::warn!(pid, "removing stale postmaster.pid");
                let _ = fs::remove_file(pgdata.join("postmaster.pid"));
            }
        }
        // Socket lock files point at a dead postmaster by now.
        if let Ok(rd) = fs::read_dir(&socket_dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".s.PGSQL.") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }

        let log_path = root.join("postgres.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        chown(&log_path, &run_as)?;
        let log_err = log.try_clone().map_err(io("log file"))?;
        let mut cmd = command_as(&bin.join("postgres"), &run_as);
        cmd.arg("-D").arg(&pgdata).arg("-k").arg(&socket_dir);
        cmd.args(["-p", &PORT.to_string(), "-c", "listen_addresses=", "-c", "unix_socket_permissions=0700"]);
        let buffers = if opts.ephemeral { 128 } else { shared_buffers_mb() };
        cmd.args(["-c", "max_connections=200", "-c", &format!("shared_buffers={buffers}MB")]);
        if opts.ephemeral {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let start_offset = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let mut child = cmd.spawn().map_err(io("starting postgres"))?;
        let pid = child.id() as i32;

        let deadline = Duration::from_secs(60);
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let new = tail_of(
                    &log_path,
                    fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0).saturating_sub(start_offset).min(4000),
                );
                return Err(EmbeddedError::Command {
                    what: format!("postgres (exit {status})"),
                    detail: new.trim().to_string(),
                });
            }
            if let Some((p, status)) = read_pid_file(&pgdata)
                && p == pid
                && status == "ready"
                && socket_path.exists()
            {
                break;
            }
            if started.elapsed() > deadline {
                stop_pid(pid, Some(&mut child), Duration::from_secs(5));
                return Err(EmbeddedError::Timeout(deadline, log_path));
            }
            std::thread::sleep(Duration::from_millis(10));
        }

        let watchdog = if opts.stop_with_process {
            spawn_watchdog(pid, opts.remove_on_exit.then_some(root.as_path()))
        } else {
            None
        };
        tracing::info!(pid, socket = %socket_dir.display(), "PostgreSQL {version} ready");
        Ok(EmbeddedPg { root, pgdata, socket_dir, bin, child: Some(child), pid, watchdog, version })
    }

    /// The directory containing the cluster's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The cluster's data directory (`PGDATA`).
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// The Carmenta data directory the cluster lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The server binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The server's major version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Connection options for `database` as the cluster's superuser.
    pub fn connect_options(&self, database: &str) -> sqlx::postgres::PgConnectOptions {
        socket_connect_options(&self.socket_dir, database)
    }

    /// Stops the cluster (fast shutdown: running transactions are rolled back,
    /// committed ones are durable) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_pid(self.pid, Some(&mut child), Duration::from_secs(30));
            let _ = child.wait();
            tracing::info!(pid = self.pid, "PostgreSQL stopped");
        }
        if let Some((mut wd, stdin)) = self.watchdog.take() {
            let _ = wd.kill();
            drop(stdin);
            let _ = wd.wait();
        }
    }

    /// Leaves the cluster running and forgets it, as a crashed process would
    /// (for tests of crash recovery).
    pub fn abandon(mut self) {
        if let Some((mut wd, stdin)) = self.watchdog.take() {
            let _ = wd.kill();
            let _ = wd.wait();
            drop(stdin);
        }
        self.child.take();
    }
}

impl Drop for EmbeddedPg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The embedded cluster's buffer cache: an eighth of the machine's memory, between
/// 128 MB and 1 GB (PostgreSQL's own 128 MB default leaves the vector indexes of a
/// user with 100k chunks and 100k memories outside it, and every search pays for it).
fn shared_buffers_mb() -> u64 {
    let total_kb = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    (total_kb / 1024 / 8).clamp(128, 1024)
}

/// Connection options for a cluster whose socket is in `socket_dir`.
pub fn socket_connect_options(socket_dir: &Path, database: &str) -> sqlx::postgres::PgConnectOptions {
    sqlx::postgres::PgConnectOptions::new()
        .socket(socket_dir)
        .port(PORT)
        .username(SUPERUSER)
        .database(database)
        .application_name("carmenta")
}

/// A small shell process that waits for our end of a pipe to close (we exited,
/// however) and then stops the postmaster, optionally removing `remove`.
fn spawn_watchdog(pid: i32, remove: Option<&Path>) -> Option<(Child, ChildStdin)> {
    let mut script = format!(
        "read _ ; if [ \"$(cat /proc/{pid}/comm 2>/dev/null)\" = postgres ]; then kill -INT {pid}; \
         i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; kill -KILL {pid} 2>/dev/null; fi"
    );
    if let Some(dir) = remove {
        script.push_str("; rm -rf -- \"$1\"");
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(&script).arg("carmenta-watchdog").arg(dir);
        return spawn_wd(c);
    }
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(&script);
    spawn_wd(c)
}

fn spawn_wd(mut c: Command) -> Option<(Child, ChildStdin)> {
    c.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
    match c.spawn() {
        Ok(mut child) => {
            let stdin = child.stdin.take()?;
            Some((child, stdin))
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not start the PostgreSQL watchdog");
            None
        }
    }
}

/// An exclusive lock on a data directory, held by the process that serves it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: nix::fcntl::Flock<fs::File>,
}

/// Why a data directory lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "another carmenta process (pid {pid}) is serving the data directory {dir}; stop it first or use another CARMENTA_DATA_DIR"
    )]
    Held {
        /// The holder's pid as it recorded it.
        pid: String,
        /// The data directory.
        dir: PathBuf,
    },
    /// I/O error.
    #[error("locking {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl DataDirLock {
    /// Takes the lock on `dir` (created if missing) without waiting.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = dir.join("carmenta.lock");
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| LockError::Io(path.clone(), e))?;
        }
        let f = fs::OpenOptions::new()
            .mode(0o600)
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| LockError::Io(path.clone(), e))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let _ = lock.set_len(0);
                let _ = lock.seek(SeekFrom::Start(0));
                let _ = write!(lock, "{}", std::process::id());
                let _ = lock.sync_all();
                Ok(DataDirLock { _file: lock })
            }
            Err((_, _)) => {
                let pid = fs::read_to_string(&path).unwrap_or_default().trim().to_string();
                Err(LockError::Held {
                    pid: if pid.is_empty() { "unknown".into() } else { pid },
                    dir: dir.to_path_buf(),
                })
            }
        }
    }
}

/// The real uid of a process, read from `/proc` (for checks and tests).
pub fn uid_of_pid(pid: i32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|s| s.parse().ok())
}
