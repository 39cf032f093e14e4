//! Hosted pages: server-rendered HTML for browsers (the auth pages under `/auth/`,
//! the account-security pages under `/auth/account`, the organization pages under
//! `/auth/orgs` and `/auth/invitation`).

mod account;
mod orgs;
mod routes;

pub use routes::{html_page, routes};
