//! Stopping on a signal: SIGINT (Ctrl-C) or SIGTERM cancels the service's token, and a drain
//! that outlasts its grace period ends the process.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
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

/// Cancels `shutdown` on the first signal; if the service has not finished `grace` later, warns
/// and exits with code 1. Call once from `main`, before running the service.
pub fn on_signal(shutdown: CancellationToken, grace: Duration) {
    tokio::spawn(async move {
        signal().await;
        shutdown.cancel();
        tokio::time::sleep(grace).await;
        tracing::warn!(grace_s = grace.as_secs(), "graceful shutdown took too long");
        std::process::exit(1);
    });
}
