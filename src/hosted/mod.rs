//! Hosted pages: server-rendered HTML for browsers (the auth pages under `/auth/`,
//! the account-security pages under `/auth/account`).

mod account;
mod routes;

pub use routes::{html_page, routes};
