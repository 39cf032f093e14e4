//! Carmenta's integration tests: one binary, real PostgreSQL, real HTTP.
//! Run a focused group with e.g. `cargo test --test api ops::`.

mod harness;

mod admin;
mod admin_browser;
mod auth;
mod chat;
mod cli;
mod config;
mod connections;
mod email;
mod embedded;
mod errors;
mod external;
mod hardening;
mod hosted;
mod imaging;
mod jobs;
mod knowledge;
mod memory;
mod mfa;
mod ops;
mod orgs;
mod orgs_browser;
mod passkeys;
mod passkeys_browser;
mod shutdown;
mod social;
mod storage;
mod storage_process;
mod tidy;
