//! Hosted pages: server-rendered HTML for browsers (the auth pages under `/auth/`).

mod routes;

pub use routes::{html_page, routes};
