//! The report of a run: stable JSON fields (documented in the README), a summary table, and an
//! HTML page with plots.

use std::time::Duration;

use serde::Serialize;

use crate::chart::{self, Chart, Series};
use crate::stats::{Recorder, Sample, Stats, get};
use crate::{Scenario, Settings};

/// Three quantiles of a latency, milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

fn quantiles_ms(recorder: &Recorder) -> Quantiles {
    let ms = |q| recorder.quantile(q) as f64 / 1000.0;
    Quantiles {
        p50: ms(0.5),
        p99: ms(0.99),
        p999: ms(0.999),
    }
}

/// What a run measured. Field names are stable: scripts and CI read them.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub seed: u64,
    pub drivers: usize,
    pub riders: usize,
    pub duration_s: f64,
    /// Position reports sent per second, averaged over the run.
    pub updates_per_sec: f64,
    /// Driver's report to a rider or dispatcher receiving it.
    pub location_latency_ms: Quantiles,
    pub location_samples: u64,
    /// Ride request sent to the trip being offered.
    pub match_latency_ms: Quantiles,
    /// Ride request sent to the trip being accepted by a driver.
    pub accept_latency_ms: Quantiles,
    pub requests: u64,
    /// Requests the system stored (acknowledged).
    pub acknowledged: u64,
    /// Requests refused with a non-retryable error (outside the service area, invalid).
    pub refused: u64,
    pub completed: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Acknowledged requests that did not reach a terminal state by the end of the drain, in
    /// a run that ended by itself.
    pub lost: u64,
    /// Whether the run was stopped (Ctrl-C, SIGTERM) before its duration and drain ended.
    pub stopped_early: bool,
    /// In a run stopped early: acknowledged requests still under way at the stop. They are not
    /// lost (the server holds them and carries them on); only a run that ends by itself can
    /// tell lost trips from trips cut off by its own end.
    pub cut_off: u64,
    /// The lost trips, each with the last state the rider heard of (at most 100).
    pub lost_trips: Vec<(uuid::Uuid, protocol::trip::TripState)>,
    /// Offers received by a driver while carrying out another trip.
    pub double_assigned: u64,
    /// Completed over acknowledged requests that were not cancelled.
    pub service_rate: f64,
    /// Mean of the matcher's estimated pickup time over offers accepted, seconds.
    pub mean_pickup_eta_s: f64,
    /// Mean simulated time from acceptance to arrival at the pickup, seconds.
    pub mean_pickup_time_s: f64,
    /// Mean straight-line distance from driver to pickup at acceptance, metres.
    pub mean_pickup_distance_m: f64,
    /// Mean gap between the first ETA to the pickup a rider was told (with its driver's
    /// position) and the time the driver took, simulated seconds.
    pub mean_rider_eta_error_s: f64,
    /// Trips that ETA gap was measured on.
    pub rider_eta_samples: u64,
    pub offers: u64,
    pub declined: u64,
    pub reconnects: u64,
    pub errors: u64,
    /// Driver reports sent again after no answer came in time.
    pub reports_resent: u64,
    /// Trips drivers took up because the server said they held them.
    pub trips_taken_up: u64,
    pub series: Vec<Sample>,
    /// Jobs created through the integrator API, when the run made any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs: Option<crate::integrator::JobsReport>,
    #[serde(skip)]
    pub location_distribution_us: Vec<(u64, u64)>,
}

impl Report {
    /// The report of a run whose acknowledged requests in `open` had not ended when it did;
    /// `stopped_early` when a stop cut it short, so those were cut off rather than lost.
    pub fn build(
        settings: &Settings,
        stats: &Stats,
        open: Vec<(uuid::Uuid, protocol::trip::TripState)>,
        stopped_early: bool,
        elapsed: Duration,
    ) -> Self {
        let (lost_trips, cut_off) = if stopped_early {
            (Vec::new(), open.len() as u64)
        } else {
            (open, 0)
        };
        let lost = lost_trips.len() as u64;
        let lost_trips = lost_trips.into_iter().take(100).collect();
        let acknowledged = get(&stats.acked);
        let cancelled = get(&stats.cancelled);
        let completed = get(&stats.completed);
        let served_base = acknowledged.saturating_sub(cancelled).max(1);
        let mean = |r: &Recorder| if r.is_empty() { 0.0 } else { r.mean() };
        Self {
            scenario: settings.scenario,
            seed: settings.seed,
            drivers: settings.drivers,
            riders: settings.riders,
            duration_s: elapsed.as_secs_f64(),
            updates_per_sec: get(&stats.updates_sent) as f64 / elapsed.as_secs_f64().max(1e-3),
            location_latency_ms: quantiles_ms(&stats.location_latency_us),
            location_samples: stats.location_latency_us.len(),
            match_latency_ms: quantiles_ms(&stats.match_latency_us),
            accept_latency_ms: quantiles_ms(&stats.accept_latency_us),
            requests: get(&stats.requests),
            acknowledged,
            refused: get(&stats.refused),
            completed,
            cancelled,
            expired: get(&stats.expired),
            lost,
            stopped_early,
            cut_off,
            lost_trips,
            double_assigned: get(&stats.double_assigned),
            service_rate: completed as f64 / served_base as f64,
            mean_pickup_eta_s: mean(&stats.pickup_eta_s),
            mean_pickup_time_s: mean(&stats.pickup_time_ms) / 1000.0,
            mean_pickup_distance_m: mean(&stats.pickup_distance_m),
            mean_rider_eta_error_s: mean(&stats.rider_eta_error_ms) / 1000.0,
            rider_eta_samples: stats.rider_eta_error_ms.len(),
            offers: get(&stats.offers),
            declined: get(&stats.declined),
            reconnects: get(&stats.reconnects),
            errors: get(&stats.errors),
            reports_resent: get(&stats.reports_resent),
            trips_taken_up: get(&stats.trips_taken_up),
            series: stats.series.lock().expect("series lock").clone(),
            jobs: None,
            location_distribution_us: stats.location_latency_us.distribution(),
        }
    }

    /// Whether the run kept the correctness promises: nothing lost, nobody double-assigned.
    pub fn is_correct(&self) -> bool {
        self.lost == 0 && self.double_assigned == 0
    }

    /// A plain-text summary table.
    pub fn table(&self) -> String {
        let q = |q: &Quantiles| format!("{:.1} / {:.1} / {:.1}", q.p50, q.p99, q.p999);
        let rows = [
            (
                "scenario",
                format!("{:?} (seed {})", self.scenario, self.seed),
            ),
            (
                "drivers / riders",
                format!("{} / {}", self.drivers, self.riders),
            ),
            ("duration", format!("{:.1} s", self.duration_s)),
            ("position updates/s", format!("{:.0}", self.updates_per_sec)),
            (
                "location latency p50/p99/p999",
                format!(
                    "{} ms ({} samples)",
                    q(&self.location_latency_ms),
                    self.location_samples
                ),
            ),
            (
                "request to offer p50/p99/p999",
                format!("{} ms", q(&self.match_latency_ms)),
            ),
            (
                "request to accept p50/p99/p999",
                format!("{} ms", q(&self.accept_latency_ms)),
            ),
            (
                "requests / acknowledged / refused",
                format!(
                    "{} / {} / {}",
                    self.requests, self.acknowledged, self.refused
                ),
            ),
            (
                "completed / cancelled / expired",
                format!("{} / {} / {}", self.completed, self.cancelled, self.expired),
            ),
            (
                "service rate",
                format!("{:.1} %", self.service_rate * 100.0),
            ),
            (
                "mean pickup time / distance",
                format!(
                    "{:.0} s / {:.0} m",
                    self.mean_pickup_time_s, self.mean_pickup_distance_m
                ),
            ),
            (
                "rider's ETA to pickup, mean error",
                format!(
                    "{:.1} s ({} trips)",
                    self.mean_rider_eta_error_s, self.rider_eta_samples
                ),
            ),
            (
                "offers / declined",
                format!("{} / {}", self.offers, self.declined),
            ),
            (
                "reconnects / errors",
                format!("{} / {}", self.reconnects, self.errors),
            ),
            (
                "reports resent / trips taken up",
                format!("{} / {}", self.reports_resent, self.trips_taken_up),
            ),
            ("LOST", self.lost.to_string()),
            ("DOUBLE-ASSIGNED", self.double_assigned.to_string()),
        ];
        let mut table: String = rows.iter().map(|(k, v)| format!("{k:<34} {v}\n")).collect();
        if self.stopped_early {
            table.push_str(&format!(
                "{:<34} {} (not lost: the server still holds them; only a run that ends by \
                 itself checks that every trip ends)\n",
                "under way when stopped", self.cut_off
            ));
        }
        if let Some(jobs) = &self.jobs {
            let states: Vec<String> = jobs
                .by_state
                .iter()
                .map(|(state, n)| format!("{state} {n}"))
                .collect();
            table.push_str(&format!(
                "{:<34} {} / {} / {} / {} ({})\n",
                "jobs created / scheduled / refused / failed",
                jobs.created,
                jobs.scheduled,
                jobs.refused,
                jobs.failed,
                states.join(", ")
            ));
        }
        table
    }
}

/// A self-contained HTML page (no scripts, no network) with the summary and plots.
pub fn html(report: &Report) -> String {
    let throughput: Vec<(f64, f64)> = report
        .series
        .iter()
        .map(|s| (s.t_s, s.updates_per_sec))
        .collect();
    let open: Vec<(f64, f64)> = report
        .series
        .iter()
        .map(|s| (s.t_s, s.open_trips as f64))
        .collect();
    let completed: Vec<(f64, f64)> = report
        .series
        .iter()
        .map(|s| (s.t_s, s.completed as f64))
        .collect();
    let distribution: Vec<(String, f64)> = report
        .location_distribution_us
        .iter()
        .map(|(upper_us, count)| (format!("{:.2}", *upper_us as f64 / 1000.0), *count as f64))
        .collect();
    let line = |title: &str, y_unit: &str, points: Vec<(f64, f64)>| {
        Chart::new(title, "seconds since the start", y_unit)
            .with(Series::new(y_unit, "#2a6df4", points))
            .svg()
    };
    chart::page(
        "Simulation report",
        &[
            format!("<pre>{}</pre>", chart::escape(&report.table())),
            chart::bars(
                "Location latency distribution",
                "bucket upper bound, ms",
                "position reports",
                &distribution,
            ),
            line("Position updates per second", "updates/s", throughput),
            line("Open trips", "trips", open),
            line("Completed trips (cumulative)", "trips", completed),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_under_way_at_a_stop_are_cut_off_not_lost() {
        let settings = Settings::new(
            "ws://a/ws",
            b"0123456789abcdef",
            protocol::Point::new(52.5, 13.4),
        );
        let stats = Stats::default();
        let open = vec![
            (uuid::Uuid::new_v4(), protocol::trip::TripState::Offered),
            (uuid::Uuid::new_v4(), protocol::trip::TripState::InProgress),
        ];
        let ended = Report::build(
            &settings,
            &stats,
            open.clone(),
            false,
            Duration::from_secs(60),
        );
        assert_eq!((ended.lost, ended.cut_off), (2, 0));
        assert_eq!(ended.lost_trips.len(), 2);
        assert!(!ended.is_correct());
        assert!(!ended.table().contains("under way when stopped"));

        let stopped = Report::build(&settings, &stats, open, true, Duration::from_secs(60));
        assert_eq!((stopped.lost, stopped.cut_off), (0, 2));
        assert!(stopped.lost_trips.is_empty());
        assert!(stopped.is_correct());
        let table = stopped.table();
        let line = table
            .lines()
            .find(|l| l.starts_with("under way when stopped"));
        assert!(line.is_some_and(|l| l.contains(" 2 (not lost")), "{table}");
    }
}
