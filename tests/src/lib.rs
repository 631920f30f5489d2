//! The harness every system test uses: real `nats-server` processes on free ports (killed on
//! drop, restartable, able to form a cluster), a fresh PostgreSQL database per test with the
//! migrations applied (dropped afterwards), a unique subject prefix per test, the services
//! started in-process, a webhook receiver ([`hooks`]), and waiting for conditions with a
//! deadline.
//!
//! Where the servers come from: `NATS_SERVER_BIN` (or `nats-server` on the PATH, or
//! `/usr/sbin/nats-server`) and `DISPATCH_TEST_DATABASE_URL` (or `DATABASE_URL`, or
//! `postgres://postgres@127.0.0.1:5432/postgres`). `cargo xtask test` sets both. A missing
//! server fails the test loudly; nothing is skipped.

pub mod client;
pub mod hooks;
pub mod nats;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod sandbox;
pub mod services;
pub mod web;

use std::future::Future;
use std::time::{Duration, Instant};

pub use nats::{NatsCluster, NatsServer};
pub use pg::TestDb;

/// A subject prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// Waits until `check` returns `Some`, polling every 20 ms, failing after `patience` with
/// `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A deadline for a polling loop that needs `&mut` access (where [`eventually`] cannot lend it).
#[derive(Debug)]
pub struct Patience {
    what: &'static str,
    patience: Duration,
    until: Instant,
}

impl Patience {
    pub fn new(what: &'static str, patience: Duration) -> Self {
        Self {
            what,
            patience,
            until: Instant::now() + patience,
        }
    }

    /// Fails the test once the deadline has passed.
    pub fn check(&self) {
        assert!(
            Instant::now() < self.until,
            "timed out after {:?} waiting for {}",
            self.patience,
            self.what
        );
    }
}

/// Logs of the services under test go to stderr when `RUST_LOG` is set.
/// The command that brings `driver` online with a standard four-seat vehicle.
pub fn driver_online(driver: &str) -> protocol::bus::TripCommand {
    protocol::bus::TripCommand::SetDriverStatus {
        driver_id: driver.into(),
        online: true,
        vehicle_class: Some(protocol::trip::VehicleClass::Standard),
        capacity: Some(4),
        name: None,
    }
}

/// An available driver's position at `point`, as a gateway publishes it (reported now).
pub fn position(driver_id: &str, point: protocol::Point, seq: u64) -> protocol::bus::Position {
    protocol::bus::Position {
        driver_id: driver_id.to_owned(),
        lat: point.lat,
        lng: point.lng,
        heading: None,
        speed: None,
        accuracy: None,
        ts: protocol::time::now_ms(),
        seq,
        status: protocol::client::VehicleStatus::Available,
        vehicle_class: None,
        capacity: 4,
        trip_id: None,
        received_us: 0,
    }
}

pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        kit::telemetry::init_tracing();
    }
}
