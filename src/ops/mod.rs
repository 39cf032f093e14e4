//! Operational endpoints: liveness, readiness, Prometheus metrics.

mod routes;

pub use routes::routes;
