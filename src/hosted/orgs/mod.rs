//! Organization pages: list, create and switch organizations; members and
//! invitations of one; the page behind an invitation's mailed link (accept,
//! decline, or sign up with the invited email and join at once).

mod routes;

pub use routes::routes;
