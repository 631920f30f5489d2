//! The service kit: what every service process does the same way.
//!
//! Telemetry (tracing and the Prometheus recorder), the operator HTTP endpoints (`/metrics`,
//! `/healthz`, `/readyz`), NATS connections with slow-consumer accounting, typed
//! request/reply over NATS with a deadline, shared command-line options and shutdown signals.

pub mod bus;
pub mod cli;
pub mod http;
pub mod meters;
pub mod telemetry;

pub use bus::{Bus, BusError};
pub use http::Readiness;

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}

/// Exit code for a configuration error (EX_USAGE), returned before any port is bound.
pub const EXIT_BAD_CONFIG: i32 = 64;
