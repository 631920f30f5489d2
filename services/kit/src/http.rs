//! Operator endpoints every service serves: `/metrics`, `/healthz` and `/readyz`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Named readiness conditions; the service is ready when all are true.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Readiness {
    /// Creates readiness with each named condition initially false.
    pub fn new(names: &[&'static str]) -> Self {
        let readiness = Self::default();
        for name in names {
            readiness.set(name, false);
        }
        readiness
    }

    pub fn set(&self, name: &'static str, ok: bool) {
        self.conditions
            .lock()
            .expect("readiness lock is never poisoned")
            .insert(name, ok);
    }

    pub fn is_ready(&self) -> bool {
        self.conditions
            .lock()
            .expect("readiness lock is never poisoned")
            .values()
            .all(|ok| *ok)
    }

    fn report(&self) -> String {
        let conditions = self
            .conditions
            .lock()
            .expect("readiness lock is never poisoned");
        conditions
            .iter()
            .map(|(name, ok)| format!("{name}: {}\n", if *ok { "ok" } else { "waiting" }))
            .collect()
    }
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, String) {
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, readiness.report())
}

/// `/metrics`, `/healthz` and `/readyz`, to merge into a service's own router.
pub fn operator_routes(readiness: Readiness) -> Router {
    let metrics = crate::telemetry::metrics_handle();
    Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

/// Serves `app` on `listener` until `stop`, letting requests in progress finish; a failure is
/// logged, since the service goes on without its HTTP endpoints rather than stopping.
pub async fn serve(listener: TcpListener, app: Router, stop: CancellationToken) {
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "http server failed");
    }
}
