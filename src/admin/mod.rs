//! The admin console under `/admin`: the Supabase Studio of Carmenta. Admins
//! (`admins` table, made by `carmenta admin create`) sign in with their own
//! short-lived session (separate cookie, idle timeout, CSRF token per session);
//! every other caller gets 404 on every `/admin` path. Pages are server-rendered
//! (askama, `templates/admin/`), assets come from the binary (`assets/admin/`),
//! and every action is an audit row with who, what, target, before and after.
//!
//! `service.rs` holds the rules (sessions, CSRF, user actions, impersonation),
//! `db.rs` the statements (admins, sessions, overview, users, audit, saved queries,
//! the SQL runner), `orgs/` the organizations pages, `table/` the table browser (introspection in `table/mod.rs`,
//! its statements in `table/db.rs`), `view.rs` the page model the templates render,
//! and `routes.rs` the handlers.

pub mod areas;
pub mod db;
pub mod orgs;
pub mod routes;
pub mod service;
pub mod table;
pub mod view;

use std::sync::Arc;

pub use routes::routes;

/// The admin session cookie (path `/admin`, HttpOnly, SameSite=Strict).
pub const COOKIE: &str = "carmenta_admin";

/// The admin area's state: the pool, the settings and the areas it manages.
pub struct Admin {
    /// The database pool.
    pub pool: sqlx::PgPool,
    /// The resolved configuration.
    pub config: Arc<crate::config::Config>,
    /// Auth: users, sessions, tokens, mail.
    pub auth: Arc<crate::auth::AuthState>,
    /// Storage: buckets and objects, the imaging engine.
    pub storage: Arc<crate::storage::Storage>,
    /// Connections and integrations.
    pub connections: Arc<crate::connections::Connections>,
    /// The knowledge base.
    pub knowledge: Arc<crate::knowledge::Knowledge>,
    /// Memory.
    pub memory: Arc<crate::memory::Memory>,
}
