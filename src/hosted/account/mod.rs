//! Account security pages: second factors and linked identities.

mod routes;

pub use routes::routes;
