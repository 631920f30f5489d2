//! The service kit: what every service process does the same way.
//!
//! Telemetry (tracing and the Prometheus recorder), the operator HTTP endpoints (`/metrics`,
//! `/healthz`, `/readyz`), NATS connections with slow-consumer accounting, typed
//! request/reply over NATS with a deadline (and the trips service's commands and queries on
//! it), shared command-line options and their checks, token checking with a key set, retry with backoff, and stopping on a
//! signal with a grace period.

pub mod auth;
pub mod bus;
pub mod cli;
pub mod http;
pub mod meters;
pub mod presence;
pub mod ratelimit;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod zones;

pub use bus::{Bus, BusError};
pub use http::Readiness;
pub use retry::Backoff;

/// Exit code for a configuration error (EX_USAGE), returned before any port is bound.
pub const EXIT_BAD_CONFIG: i32 = 64;
