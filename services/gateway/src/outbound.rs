//! One connection's outbound queue: control messages in order, bounded; positions and other
//! state coalesced to the latest per key, so a slow client gets fresh state instead of a
//! backlog, and never holds up anyone else.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use protocol::client::VehicleView;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

use crate::meters as m;

/// What a coalesced message replaces when a newer one arrives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A driver's position for its rider.
    DriverPosition(String),
    /// A trip in a dispatcher's feed.
    Trip(Uuid),
    /// Per-cell counts of a region for a dispatcher.
    Aggregates(u64),
}

/// Why the server closes a connection: a closed set, each with its close code, the reason
/// the client reads and the label `gateway_closes_total` counts it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The session ended normally (the client closed, or the server did after it).
    Normal,
    /// The client went without a close frame (its socket closed or reset).
    Gone,
    TooBig,
    ProtocolError,
    Binary,
    RateLimited,
    GoingAway,
    Idle,
    WriteFailed,
    SlowConsumer,
}

impl Close {
    pub const ALL: [Close; 10] = [
        Self::Normal,
        Self::Gone,
        Self::TooBig,
        Self::ProtocolError,
        Self::Binary,
        Self::RateLimited,
        Self::GoingAway,
        Self::Idle,
        Self::WriteFailed,
        Self::SlowConsumer,
    ];

    pub fn code(self) -> u16 {
        use protocol::client::close_code;
        match self {
            Self::Normal | Self::Gone => 1000,
            Self::TooBig => close_code::TOO_BIG,
            Self::ProtocolError => 1002,
            Self::Binary => 1003,
            Self::RateLimited => close_code::RATE_LIMITED,
            Self::GoingAway | Self::Idle => 1001,
            Self::WriteFailed => 1011,
            Self::SlowConsumer => close_code::SLOW_CONSUMER,
        }
    }

    /// What the client reads in the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Normal | Self::Gone => "bye",
            Self::TooBig => "message too big",
            Self::ProtocolError => "protocol error",
            Self::Binary => "binary frames are not accepted",
            Self::RateLimited => "rate limit exceeded",
            Self::GoingAway => "server going away",
            Self::Idle => "idle timeout",
            Self::WriteFailed => "write failed",
            Self::SlowConsumer => "too slow to receive messages",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Gone => "gone",
            Self::TooBig => "too_big",
            Self::ProtocolError => "protocol_error",
            Self::Binary => "binary",
            Self::RateLimited => "rate_limited",
            Self::GoingAway => "going_away",
            Self::Idle => "idle",
            Self::WriteFailed => "write_failed",
            Self::SlowConsumer => "slow_consumer",
        }
    }
}

/// The connection closes for `why`, unless it is closing already: each connection's close
/// is counted once, for the first reason.
fn decide_close(inner: &mut Inner, why: Close) {
    if inner.close.is_none() {
        inner.close = Some(why);
        metrics::counter!(m::CLOSES, "reason" => why.label()).increment(1);
    }
}

/// What the writer sends next.
#[derive(Debug, Default)]
pub struct Batch {
    pub control: Vec<Utf8Bytes>,
    pub latest: Vec<Utf8Bytes>,
    pub vehicles: Vec<VehicleView>,
    pub ping: bool,
    pub close: Option<Close>,
}

#[derive(Debug, Default)]
struct Inner {
    control: VecDeque<Utf8Bytes>,
    /// When the oldest queued control message was queued.
    control_since: Option<std::time::Instant>,
    latest: HashMap<Key, Utf8Bytes>,
    vehicles: HashMap<String, VehicleView>,
    ping: bool,
    close: Option<Close>,
}

/// The queue; shared by the session (producer) and its writer (consumer).
#[derive(Debug)]
pub struct Outbound {
    inner: Mutex<Inner>,
    ready: Notify,
    control_capacity: usize,
    coalesced_capacity: usize,
}

impl Outbound {
    pub fn new(control_capacity: usize, coalesced_capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            ready: Notify::new(),
            control_capacity,
            coalesced_capacity,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let result = f(&mut self.inner.lock().expect("outbound lock is never poisoned"));
        self.ready.notify_one();
        result
    }

    /// Queues a control message (ack, error, offer, trip update). A client that lets
    /// `control_capacity` of them pile up is closed as a slow consumer.
    pub fn control(&self, text: impl Into<Utf8Bytes>) {
        let text = text.into();
        let capacity = self.control_capacity;
        self.with(|inner| {
            if inner.close.is_some() {
                return;
            }
            if inner.control.len() >= capacity {
                decide_close(inner, Close::SlowConsumer);
                metrics::counter!(m::QUEUE_DROPS, "kind" => "control").increment(1);
                return;
            }
            inner.control.push_back(text);
            inner
                .control_since
                .get_or_insert_with(std::time::Instant::now);
        });
    }

    /// Queues state that supersedes earlier state under the same key.
    pub fn latest(&self, key: Key, text: impl Into<Utf8Bytes>) {
        let text = text.into();
        let capacity = self.coalesced_capacity;
        self.with(|inner| {
            let len = inner.latest.len();
            match inner.latest.entry(key) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.insert(text);
                    metrics::counter!(m::QUEUE_DROPS, "kind" => "coalesced").increment(1);
                }
                std::collections::hash_map::Entry::Vacant(e) if len < capacity => {
                    e.insert(text);
                }
                std::collections::hash_map::Entry::Vacant(_) => {
                    metrics::counter!(m::QUEUE_DROPS, "kind" => "dropped").increment(1);
                }
            }
        });
    }

    /// Queues a vehicle for a dispatcher's map, replacing its previous position.
    pub fn vehicle(&self, vehicle: VehicleView) {
        let capacity = self.coalesced_capacity;
        self.with(|inner| {
            let len = inner.vehicles.len();
            match inner.vehicles.entry(vehicle.driver_id.clone()) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    e.insert(vehicle);
                    metrics::counter!(m::QUEUE_DROPS, "kind" => "coalesced").increment(1);
                }
                std::collections::hash_map::Entry::Vacant(e) if len < capacity => {
                    e.insert(vehicle);
                }
                std::collections::hash_map::Entry::Vacant(_) => {
                    metrics::counter!(m::QUEUE_DROPS, "kind" => "dropped").increment(1);
                }
            }
        });
    }

    pub fn ping(&self) {
        self.with(|inner| inner.ping = true);
    }

    /// Asks the writer to close the connection after what is queued.
    pub fn close(&self, why: Close) {
        self.with(|inner| decide_close(inner, why));
    }

    /// How long the oldest unsent control message has waited. The writer takes everything
    /// queued at once, so this grows only while the writer is stuck on the socket.
    pub fn oldest_control_age(&self) -> Option<std::time::Duration> {
        let inner = self.inner.lock().expect("outbound lock is never poisoned");
        inner.control_since.map(|since| since.elapsed())
    }

    pub fn is_closing(&self) -> bool {
        self.inner
            .lock()
            .expect("outbound lock is never poisoned")
            .close
            .is_some()
    }

    /// Waits for something to send, then takes all of it.
    pub async fn next_batch(&self) -> Batch {
        loop {
            {
                let mut inner = self.inner.lock().expect("outbound lock is never poisoned");
                if !inner.control.is_empty()
                    || !inner.latest.is_empty()
                    || !inner.vehicles.is_empty()
                    || inner.ping
                    || inner.close.is_some()
                {
                    inner.control_since = None;
                    // Taken whole, not drained: an idle connection's queue then holds no
                    // buffer from its last burst.
                    return Batch {
                        control: std::mem::take(&mut inner.control).into(),
                        latest: std::mem::take(&mut inner.latest).into_values().collect(),
                        vehicles: std::mem::take(&mut inner.vehicles).into_values().collect(),
                        ping: std::mem::take(&mut inner.ping),
                        close: inner.close.take(),
                    };
                }
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::client::VehicleStatus;

    fn vehicle(id: &str, lat: f64) -> VehicleView {
        VehicleView {
            driver_id: id.into(),
            lat,
            lng: 0.0,
            heading: None,
            status: VehicleStatus::Available,
            ts: 0,
        }
    }

    #[tokio::test]
    async fn positions_coalesce_to_the_latest() {
        let out = Outbound::new(4, 2);
        out.vehicle(vehicle("a", 1.0));
        out.vehicle(vehicle("a", 2.0));
        out.vehicle(vehicle("b", 1.0));
        out.vehicle(vehicle("c", 1.0)); // over capacity: dropped
        out.latest(Key::DriverPosition("a".into()), "old");
        out.latest(Key::DriverPosition("a".into()), "new");
        let batch = out.next_batch().await;
        assert_eq!(batch.vehicles.len(), 2);
        assert!(
            batch
                .vehicles
                .iter()
                .any(|v| v.driver_id == "a" && v.lat == 2.0)
        );
        assert_eq!(batch.latest, vec![Utf8Bytes::from("new")]);
        assert!(batch.close.is_none());
    }

    #[test]
    fn a_connection_closes_for_its_first_reason_from_a_closed_set_of_labels() {
        let out = Outbound::new(4, 4);
        out.close(Close::Idle);
        out.close(Close::Normal);
        assert!(out.is_closing());
        let close = out.with(|inner| inner.close);
        assert_eq!(close, Some(Close::Idle));
        assert_eq!(
            (Close::Idle.code(), Close::Idle.reason()),
            (1001, "idle timeout")
        );
        let mut labels: Vec<&str> = Close::ALL.iter().map(|c| c.label()).collect();
        assert!(
            labels
                .iter()
                .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Close::ALL.len());
    }

    #[tokio::test]
    async fn too_many_control_messages_close_the_connection() {
        let out = Outbound::new(2, 2);
        out.control("1");
        out.control("2");
        assert!(!out.is_closing());
        out.control("3");
        assert!(out.is_closing());
        let batch = out.next_batch().await;
        assert_eq!(batch.control.len(), 2);
        assert_eq!(
            batch.close.unwrap().code(),
            protocol::client::close_code::SLOW_CONSUMER
        );
    }
}
