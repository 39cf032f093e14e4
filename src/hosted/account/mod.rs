//! Account security pages: second factors and linked identities.

mod routes;

pub use routes::routes;
pub(crate) use routes::{failure, posted_to, session_or_sign_in};
