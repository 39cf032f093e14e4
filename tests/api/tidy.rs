//! Tidy checks that keep ARCHITECTURE.md's invariants by construction: which files
//! may know axum, which may run SQL, which may seal and open secrets. Files that
//! break a rule today are listed as debts (issue #21); a new breach fails, and so
//! does a listed file that no longer breaches (so the lists only shrink).

use std::path::{Path, PathBuf};

/// Modules that are HTTP protocols of their own (TUS, image rendering with its
/// conditional requests, the streaming API proxy): handlers, like `routes.rs`.
const HTTP_PROTOCOLS: &[&str] = &["src/storage/tus.rs", "src/storage/render.rs", "src/connections/proxy.rs"];

/// Files outside `routes.rs`/`http.rs` files, the HTTP protocol modules, `router.rs`,
/// `middleware.rs` and `error.rs` that still import axum.
const AXUM_DEBTS: &[&str] = &[];

/// Files outside `db.rs` files, `db/` and `jobs/` that still run SQL.
const SQL_DEBTS: &[&str] = &[];

/// Files outside `crypto.rs` and `connections/vault.rs` that still seal or open.
const SEALING_DEBTS: &[&str] = &[];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The crate's source files (relative paths) whose code (comments skipped)
/// matches `uses`, minus those `allowed`.
fn breaches(uses: impl Fn(&str) -> bool, allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let mut found: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(f).unwrap();
            let code = text.lines().filter(|l| !l.trim_start().starts_with("//")).any(&uses);
            (code && !allowed(&rel)).then_some(rel)
        })
        .collect();
    found.sort();
    found
}

fn check(rule: &str, found: Vec<String>, debts: &[&str]) {
    let new: Vec<&String> = found.iter().filter(|f| !debts.contains(&f.as_str())).collect();
    assert!(new.is_empty(), "{rule}: broken in {new:?} (see ARCHITECTURE.md, Invariants)");
    let paid: Vec<&&str> = debts.iter().filter(|d| !found.iter().any(|f| f == *d)).collect();
    assert!(paid.is_empty(), "{rule}: {paid:?} no longer break it; remove them from the debt list");
}

#[test]
fn only_routes_router_middleware_and_errors_know_axum() {
    let found = breaches(
        |l| {
            // `axum::` as a path of its own (not the tail of `utoipa_axum::`).
            l.match_indices("axum::")
                .any(|(i, _)| !l[..i].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_'))
                || l.trim_start().starts_with("use axum")
        },
        |f| {
            f.ends_with("/routes.rs")
                || f.ends_with("/http.rs")
                || HTTP_PROTOCOLS.contains(&f)
                || ["src/app.rs", "src/router.rs", "src/middleware.rs", "src/error.rs"].contains(&f)
        },
    );
    check("axum outside routes/router/middleware/error", found, AXUM_DEBTS);
}

#[test]
fn sql_runs_only_in_db_files() {
    let found = breaches(
        |l| l.contains("sqlx::query"),
        |f| f.ends_with("/db.rs") || f.starts_with("src/db/") || f.starts_with("src/jobs/"),
    );
    check("SQL outside db.rs, db/ and jobs/", found, SQL_DEBTS);
}

#[test]
fn secrets_are_sealed_and_opened_only_in_the_vault_and_crypto() {
    let found = breaches(
        |l| l.contains(".encrypt(") || l.contains(".decrypt("),
        |f| ["src/crypto.rs", "src/connections/vault.rs"].contains(&f),
    );
    check("sealing outside crypto.rs and connections/vault.rs", found, SEALING_DEBTS);
}

#[test]
fn areas_take_their_own_state_not_the_app_state() {
    // The app state holds every area's state; an area that imported it would depend
    // on every other area (the import cycle issue #21 removed).
    let found = breaches(
        |l| l.contains("AppState"),
        |f| ["src/state.rs", "src/router.rs", "src/server.rs", "src/background.rs", "src/ops/routes.rs"].contains(&f),
    );
    check("AppState outside state/router/server/background/ops", found, &[]);
}
