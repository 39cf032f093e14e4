//! Account security pages: second factors and linked identities.

mod routes;

pub use routes::routes;
pub(crate) use routes::{act_to, failure, session_or_sign_in};
