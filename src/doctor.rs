//! `carmenta doctor`: checks the environment (PostgreSQL binaries and version, the
//! `ltree` and `vector` extensions, libvips, the data directory, the encryption key)
//! and says, for every failure, the command that fixes it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use sqlx::ConnectOptions;

use crate::config::Config;
use crate::db::embedded;

/// The result of one check.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// The command or step that fixes a failure.
    pub fix: Option<String>,
}

fn pass(name: &str, detail: impl Into<String>) -> Check {
    Check { name: name.into(), ok: true, detail: detail.into(), fix: None }
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name: name.into(), ok: false, detail: detail.into(), fix: Some(fix.into()) }
}

/// The extension directory of the server whose binaries are in `bin`.
fn extension_dir(bin: &Path) -> Option<PathBuf> {
    let pg_config = if bin.join("pg_config").is_file() { bin.join("pg_config") } else { PathBuf::from("pg_config") };
    let out = Command::new(pg_config).arg("--sharedir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("extension");
    if dir.is_dir() {
        return Some(dir);
    }
    // Debian: /usr/lib/postgresql/NN/bin -> /usr/share/postgresql/NN/extension
    let major = bin.parent()?.file_name()?.to_string_lossy().into_owned();
    let d = PathBuf::from(format!("/usr/share/postgresql/{major}/extension"));
    d.is_dir().then_some(d)
}

fn control_version(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("default_version")
            .map(|r| r.trim_start_matches([' ', '=']).trim().trim_matches('\'').to_string())
    })
}

fn version_at_least(v: &str, min: (u32, u32)) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = it.next().unwrap_or(0);
    let minor = it.next().unwrap_or(0);
    (major, minor) >= min
}

/// Runs every check for `config`.
pub async fn run(config: &Config) -> Vec<Check> {
    let mut checks = Vec::new();
    let bootstrap = "run scripts/bootstrap (Debian/Ubuntu)";

    if config.embedded_db() {
        match embedded::find_bin_dir(config.pg_bin.as_deref()) {
            Ok(bin) => {
                match embedded::server_version(&bin) {
                    Ok(v) if v >= 15 => {
                        checks.push(pass("postgresql binaries", format!("PostgreSQL {v} in {}", bin.display())))
                    }
                    Ok(v) => checks.push(fail(
                        "postgresql binaries",
                        format!("PostgreSQL {v} in {} is older than 15", bin.display()),
                        "apt-get install postgresql-15 (or newer), then set CARMENTA_PG_BIN=/usr/lib/postgresql/15/bin",
                    )),
                    Err(e) => checks.push(fail("postgresql binaries", e.to_string(), bootstrap)),
                }
                match extension_dir(&bin) {
                    Some(dir) => {
                        let ltree = dir.join("ltree.control");
                        checks.push(if ltree.is_file() {
                            pass("extension ltree", format!("{}", ltree.display()))
                        } else {
                            fail("extension ltree", "ltree.control not found", "apt-get install postgresql-contrib")
                        });
                        let vector = dir.join("vector.control");
                        checks.push(match control_version(&vector) {
                            Some(v) if version_at_least(&v, (0, 8)) => {
                                pass("extension vector", format!("pgvector {v}"))
                            }
                            Some(v) => fail("extension vector", format!("pgvector {v} is older than 0.8"), bootstrap),
                            None => fail("extension vector", "pgvector is not installed", bootstrap),
                        });
                    }
                    None => checks.push(fail("extensions", "cannot locate the extension directory", bootstrap)),
                }
            }
            Err(e) => checks.push(fail("postgresql binaries", e.to_string(), bootstrap)),
        }
    } else if let Some(url) = &config.database_url {
        match sqlx::postgres::PgConnectOptions::from_str(url.expose()) {
            Ok(opts) => match tokio::time::timeout(std::time::Duration::from_secs(5), opts.connect()).await {
                Ok(Ok(mut conn)) => {
                    checks.push(pass("database", "connected"));
                    for (name, fix) in crate::db::REQUIRED_EXTENSIONS {
                        let v = crate::db::shared::available_extension(&mut conn, name).await.ok().flatten();
                        checks.push(match v {
                            Some(v) => pass(&format!("extension {name}"), format!("available ({v})")),
                            None => fail(&format!("extension {name}"), "not available on the server", *fix),
                        });
                    }
                }
                Ok(Err(e)) => {
                    checks.push(fail("database", e.to_string(), "check DATABASE_URL and that the server is reachable"))
                }
                Err(_) => checks.push(fail(
                    "database",
                    "no answer within 5s",
                    "check DATABASE_URL and that the server is reachable",
                )),
            },
            Err(e) => {
                checks.push(fail("database", e.to_string(), "fix DATABASE_URL (postgres://user:pass@host:5432/db)"))
            }
        }
    }

    // libvips (the imaging engine), found through the dynamic linker's cache.
    let vips = Command::new("pkg-config").args(["--modversion", "vips"]).output();
    checks.push(match vips {
        Ok(o) if o.status.success() => {
            pass("libvips", format!("libvips {}", String::from_utf8_lossy(&o.stdout).trim()))
        }
        _ => fail("libvips", "libvips (with pkg-config metadata) not found", "apt-get install libvips-dev pkg-config"),
    });

    checks.push(check_data_dir(&config.data_dir));

    if config.encryption_keys.is_empty() && !config.embedded_db() {
        checks.push(fail(
            "encryption key",
            "CARMENTA_ENCRYPTION_KEY is not set and DATABASE_URL is",
            "export CARMENTA_ENCRYPTION_KEY=$(openssl rand -base64 32)  # the same on every replica",
        ));
    } else if config.encryption_keys.is_empty() {
        let key = config.data_dir.join(crate::server::KEY_FILE);
        checks.push(match std::fs::metadata(&key) {
            Ok(m) if m.mode() & 0o077 == 0 => pass("encryption key", format!("{} (mode 0600)", key.display())),
            Ok(m) => fail(
                "encryption key",
                format!("{} has mode {:o}", key.display(), m.mode() & 0o777),
                format!("chmod 600 {}", key.display()),
            ),
            Err(_) => pass("encryption key", "will be generated into the data directory on first start"),
        });
    } else {
        checks.push(pass(
            "encryption key",
            format!("{} key(s) from CARMENTA_ENCRYPTION_KEY", config.encryption_keys.len()),
        ));
    }
    checks
}

fn check_data_dir(dir: &Path) -> Check {
    let name = "data directory";
    match std::fs::metadata(dir) {
        Err(_) => {
            // It will be created; its parent must be writable.
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            match std::fs::metadata(parent) {
                Ok(m) if m.is_dir() && nix::unistd::access(parent, nix::unistd::AccessFlags::W_OK).is_ok() => {
                    pass(name, format!("{} will be created on first start", dir.display()))
                }
                _ => fail(
                    name,
                    format!("cannot create {}", dir.display()),
                    format!("mkdir -p {} && chmod 700 {}", dir.display(), dir.display()),
                ),
            }
        }
        Ok(m) if !m.is_dir() => {
            fail(name, format!("{} is not a directory", dir.display()), "set CARMENTA_DATA_DIR to a directory")
        }
        Ok(m) => {
            let mode = m.mode() & 0o777;
            let me = nix::unistd::Uid::effective().as_raw();
            if m.uid() != me {
                fail(
                    name,
                    format!("{} is owned by uid {}, not by this user ({me})", dir.display(), m.uid()),
                    format!("chown -R $(id -u) {}", dir.display()),
                )
            } else if mode & 0o066 != 0 {
                fail(
                    name,
                    format!("{} has mode {mode:o}: readable or writable by others", dir.display()),
                    format!("chmod 700 {}", dir.display()),
                )
            } else if nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err() {
                fail(name, format!("{} is not writable", dir.display()), format!("chmod u+rwx {}", dir.display()))
            } else {
                pass(name, format!("{} (mode {mode:o})", dir.display()))
            }
        }
    }
}
