//! The embedded PostgreSQL manager: first start, socket-only listening, stop,
//! restart with data intact, a cluster left running, a stale pid file, the data
//! directory lock, and running as an unprivileged account under root.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use carmenta::db::embedded::{self, DataDirLock, EmbeddedOptions, EmbeddedPg, LockError};
use sqlx::{ConnectOptions, Connection};

fn opts(dir: &Path) -> EmbeddedOptions {
    let mut o = EmbeddedOptions::new(dir);
    o.ephemeral = true;
    o
}

async fn start(o: &EmbeddedOptions) -> EmbeddedPg {
    let o = o.clone();
    tokio::task::spawn_blocking(move || EmbeddedPg::start(&o)).await.unwrap().unwrap_or_else(|e| panic!("start: {e}"))
}

async fn stop(mut pg: EmbeddedPg) {
    tokio::task::spawn_blocking(move || pg.stop()).await.unwrap();
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

#[tokio::test]
async fn lifecycle_and_recovery() {
    let dir = crate::harness::temp_dir("carmenta-emb-");
    let o = opts(&dir);

    // First start runs initdb.
    let pg = start(&o).await;
    assert!(dir.join("postgres/PG_VERSION").is_file());
    let mode = std::fs::metadata(pg.socket_dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "socket directory is private");
    let pgdata_mode = std::fs::metadata(pg.pgdata()).unwrap().permissions().mode() & 0o777;
    assert_eq!(pgdata_mode, 0o700);

    // Root handling: the cluster never runs as root.
    let uid = embedded::uid_of_pid(pg.pid()).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        assert_ne!(uid, 0, "postmaster must not run as root");
    } else {
        assert_eq!(uid, nix::unistd::Uid::effective().as_raw());
    }

    // Unix socket only: no TCP listener.
    let mut conn = pg.connect_options("postgres").connect().await.unwrap();
    let listen: String = sqlx::query_scalar("SHOW listen_addresses").fetch_one(&mut conn).await.unwrap();
    assert_eq!(listen, "");
    sqlx::query("CREATE TABLE kept (v text)").execute(&mut conn).await.unwrap();
    sqlx::query("INSERT INTO kept VALUES ('survives restarts')").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();

    // Stop and restart: data intact, process gone.
    let pid1 = pg.pid();
    stop(pg).await;
    assert!(!alive(pid1), "postmaster {pid1} still running after stop");
    let pg = start(&o).await;
    let mut conn = pg.connect_options("postgres").connect().await.unwrap();
    let v: String = sqlx::query_scalar("SELECT v FROM kept").fetch_one(&mut conn).await.unwrap();
    assert_eq!(v, "survives restarts");
    conn.close().await.unwrap();

    // A cluster left running by a crashed process is recovered.
    let pid2 = pg.pid();
    pg.abandon();
    assert!(alive(pid2));
    let pg = start(&o).await;
    assert_ne!(pg.pid(), pid2);
    assert!(!alive(pid2), "the abandoned postmaster was stopped");
    let mut conn = pg.connect_options("postgres").connect().await.unwrap();
    let v: String = sqlx::query_scalar("SELECT v FROM kept").fetch_one(&mut conn).await.unwrap();
    assert_eq!(v, "survives restarts");
    conn.close().await.unwrap();
    stop(pg).await;

    // A stale postmaster.pid naming a live process that is not PostgreSQL.
    let stale = format!("{}\n{}\n0\n5432\n\n\n\nready\n", std::process::id(), dir.join("postgres").display());
    std::fs::write(dir.join("postgres/postmaster.pid"), stale).unwrap();
    let pg = start(&o).await;
    assert_ne!(pg.pid() as u32, std::process::id());
    stop(pg).await;

    // A stale pid file naming a process that no longer exists.
    std::fs::write(dir.join("postgres/postmaster.pid"), "999999\n/nowhere\n").unwrap();
    let pg = start(&o).await;
    stop(pg).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn data_directory_lock_refuses_a_second_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = DataDirLock::acquire(dir.path()).unwrap();
    match DataDirLock::acquire(dir.path()) {
        Err(e @ LockError::Held { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        }
        other => panic!("expected Held, got {other:?}"),
    }
    drop(first);
    DataDirLock::acquire(dir.path()).expect("released on drop");
}

#[test]
fn missing_binaries_say_how_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.pg_bin = Some("/nonexistent/bin".into());
    let e = EmbeddedPg::start(&o).unwrap_err().to_string();
    assert!(e.contains("CARMENTA_PG_BIN") && e.contains("bootstrap"), "{e}");
}

#[tokio::test]
async fn as_root_a_data_directory_the_account_cannot_reach_still_works() {
    if !nix::unistd::Uid::effective().is_root() {
        return; // Only root hands the cluster to another account.
    }
    // A root-only parent (like /root): the `postgres` account cannot traverse it.
    let private = tempfile::Builder::new().prefix("carmenta-private-").tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let o = opts(&private.path().join("data"));
    let pg = start(&o).await;
    let mut conn = pg.connect_options("postgres").connect().await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await.unwrap();
    assert_eq!(one, 1);
    conn.close().await.unwrap();
    // PostgreSQL runs in its own user namespace (it refuses to run as root).
    let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/ns/user", pg.pid())).unwrap();
    assert_ne!(ours, theirs);
    let pid = pg.pid();
    stop(pg).await;
    assert!(!alive(pid));
}
