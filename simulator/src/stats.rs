//! What a run measures: latency histograms, counters, and a time series for plots.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// A histogram of values in one unit, safe to record into from many tasks.
#[derive(Debug)]
pub struct Recorder {
    histogram: Mutex<Histogram<u64>>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            histogram: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
        }
    }

    pub fn record(&self, value: u64) {
        let _ = self
            .histogram
            .lock()
            .expect("histogram lock")
            .record(value.max(1));
    }

    pub fn quantile(&self, q: f64) -> u64 {
        self.histogram
            .lock()
            .expect("histogram lock")
            .value_at_quantile(q)
    }

    pub fn mean(&self) -> f64 {
        self.histogram.lock().expect("histogram lock").mean()
    }

    pub fn len(&self) -> u64 {
        self.histogram.lock().expect("histogram lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (value, count) pairs of the distribution, for plotting.
    pub fn distribution(&self) -> Vec<(u64, u64)> {
        let h = self.histogram.lock().expect("histogram lock");
        h.iter_log(1, 2.0)
            .filter(|v| v.count_since_last_iteration() > 0)
            .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
            .collect()
    }
}

/// Counters and histograms of a run.
#[derive(Debug)]
pub struct Stats {
    /// Driver position to a watching rider or dispatcher, microseconds.
    pub location_latency_us: Recorder,
    /// Ride request sent to the trip being offered to a driver, microseconds.
    pub match_latency_us: Recorder,
    /// Ride request sent to the trip being accepted, microseconds.
    pub accept_latency_us: Recorder,
    /// Estimated pickup time of offers, seconds.
    pub pickup_eta_s: Recorder,
    /// Accepted to arrived at the pickup, milliseconds of simulated time.
    pub pickup_time_ms: Recorder,
    /// Straight-line distance from driver to pickup when accepted, metres.
    pub pickup_distance_m: Recorder,
    /// How far the first ETA to the pickup a rider was told was from the time its driver
    /// took, milliseconds of simulated time.
    pub rider_eta_error_ms: Recorder,
    pub updates_sent: AtomicU64,
    pub requests: AtomicU64,
    pub acked: AtomicU64,
    pub refused: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub expired: AtomicU64,
    pub offers: AtomicU64,
    pub declined: AtomicU64,
    pub double_assigned: AtomicU64,
    pub reconnects: AtomicU64,
    pub errors: AtomicU64,
    /// Driver reports sent again after no answer came.
    pub reports_resent: AtomicU64,
    /// Trips a driver took up on the server's word, not having accepted them on this link.
    pub trips_taken_up: AtomicU64,
    pub open_trips: AtomicU64,
    pub series: Mutex<Vec<Sample>>,
}

/// One second of the run, for the throughput plot.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub updates_per_sec: f64,
    pub open_trips: u64,
    pub completed: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            location_latency_us: Recorder::new(),
            match_latency_us: Recorder::new(),
            accept_latency_us: Recorder::new(),
            pickup_eta_s: Recorder::new(),
            pickup_time_ms: Recorder::new(),
            rider_eta_error_ms: Recorder::new(),
            pickup_distance_m: Recorder::new(),
            updates_sent: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            offers: AtomicU64::new(0),
            declined: AtomicU64::new(0),
            double_assigned: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reports_resent: AtomicU64::new(0),
            trips_taken_up: AtomicU64::new(0),
            open_trips: AtomicU64::new(0),
            series: Mutex::new(Vec::new()),
        }
    }
}

/// Reads an atomic counter.
pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Adds one to an atomic counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
