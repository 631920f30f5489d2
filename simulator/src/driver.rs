//! A simulated driver: goes online, reports its position, answers offers, drives to the pickup
//! and the dropoff and reports each stage, reconnecting with backoff when the link drops.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use protocol::Point;
use protocol::client::ServerMessage;
use protocol::time::now_ms;
use protocol::trip::{TripState, TripView};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Settings;
use crate::city;
use crate::client::{self, Backoff, Ws};
use crate::stats::{Stats, bump};

#[derive(Debug, Clone, PartialEq)]
enum Task {
    Roaming {
        to: Point,
    },
    /// An offer to answer at `at`.
    Answering {
        trip: TripView,
        at: Instant,
        accept: bool,
    },
    ToPickup {
        trip: TripView,
        accepted: Instant,
    },
    Boarding {
        trip: TripView,
        until: Instant,
    },
    ToDropoff {
        trip: TripView,
    },
}

impl Task {
    fn trip_id(&self) -> Option<Uuid> {
        match self {
            Task::Roaming { .. } => None,
            Task::Answering { trip, .. }
            | Task::ToPickup { trip, .. }
            | Task::Boarding { trip, .. }
            | Task::ToDropoff { trip } => Some(trip.trip_id),
        }
    }

    /// Whether the server has this driver on a trip (not merely offered one).
    fn on_trip(&self) -> bool {
        matches!(
            self,
            Task::ToPickup { .. } | Task::Boarding { .. } | Task::ToDropoff { .. }
        )
    }
}

/// Something the server must hear, in order and exactly as meant: an answer to an offer or a
/// trip stage. Sent one at a time; retried while the server says to retry (repeats are
/// idempotent on the server).
#[derive(Debug, Clone)]
struct Report {
    kind: &'static str,
    trip_id: Uuid,
    stage: Option<&'static str>,
}

/// Wait before re-sending a report the server could not take.
const REPORT_RETRY: Duration = Duration::from_millis(500);

struct Driver {
    id: String,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    rng: StdRng,
    at: Point,
    task: Task,
    seq: u64,
    next_id: u64,
    reports: VecDeque<Report>,
    /// The message id of the report awaiting its answer.
    in_flight: Option<u64>,
    retry_at: Option<Instant>,
}

/// Runs one driver until `stop`.
pub async fn run(
    index: usize,
    token: String,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut rng =
        StdRng::seed_from_u64(settings.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let city = settings.city;
    let at = city.random_point(&mut rng);
    let to = city.random_point(&mut rng);
    let mut driver = Driver {
        id: format!("sim-driver-{index}"),
        settings,
        stats,
        rng,
        at,
        task: Task::Roaming { to },
        seq: 0,
        next_id: 1,
        reports: VecDeque::new(),
        in_flight: None,
        retry_at: None,
    };
    let mut backoff = Backoff::default();
    let mut first = true;
    let mut attempt = 0;
    while !stop.is_cancelled() {
        if !first {
            attempt += 1;
            bump(&driver.stats.reconnects);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = backoff.wait() => {}
            }
        }
        first = false;
        let ws = tokio::select! {
            _ = stop.cancelled() => break,
            ws = client::connect(driver.settings.url_for(index, attempt), &token, driver.settings.source(index), driver.settings.liveness) => ws,
        };
        let Ok(mut ws) = ws else { continue };
        backoff.reset();
        if driver.session(&mut ws, &stop).await.is_ok() {
            break;
        }
    }
    let _ = driver.id;
}

impl Driver {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// One connection; `Ok` when told to stop, `Err` when the link failed.
    async fn session(&mut self, ws: &mut Ws, stop: &CancellationToken) -> anyhow::Result<()> {
        // A report in flight when the link dropped may never have arrived: send it again.
        self.in_flight = None;
        self.retry_at = None;
        let id = self.id();
        let class = self.settings.vehicle_class;
        client::send(
            ws,
            json!({"type": "go_online", "id": id, "vehicle_class": class, "capacity": 4}),
        )
        .await?;
        let period = self.settings.report_every;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_move = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = client::send(ws, json!({"type": "go_offline", "id": self.id()})).await;
                    return Ok(());
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let dt = now.duration_since(last_move);
                    last_move = now;
                    self.advance(ws, dt).await?;
                }
                message = client::next(ws) => match message? {
                    Some(message) => self.on_message(ws, message).await?,
                    None => anyhow::bail!("connection closed"),
                },
            }
        }
    }

    /// Moves, reports the position, and takes the next step of the current task.
    async fn advance(&mut self, ws: &mut Ws, dt: Duration) -> anyhow::Result<()> {
        let step = self.settings.speed_mps * self.settings.speedup * dt.as_secs_f64();
        let target = match &self.task {
            Task::Roaming { to } => Some(*to),
            Task::ToPickup { trip, .. } => Some(trip.pickup),
            Task::ToDropoff { trip } => Some(trip.dropoff),
            Task::Answering { .. } | Task::Boarding { .. } => None,
        };
        let mut heading = None;
        let mut arrived = false;
        if let Some(target) = target {
            heading = Some(city::heading(self.at, target));
            (self.at, arrived) = city::step_towards(self.at, target, step);
        }
        self.seq += 1;
        client::send(ws, json!({"type": "location", "lat": self.at.lat, "lng": self.at.lng,
            "heading": heading, "speed": self.settings.speed_mps.min(80.0), "accuracy": 5.0, "ts": now_ms(), "seq": self.seq})).await?;
        bump(&self.stats.updates_sent);

        let now = Instant::now();
        match self.task.clone() {
            Task::Roaming { .. } if arrived => {
                let to = self.settings.city.random_point(&mut self.rng);
                self.task = Task::Roaming { to };
            }
            Task::Answering { trip, at, accept } if now >= at => {
                let kind = if accept {
                    "accept_offer"
                } else {
                    "decline_offer"
                };
                self.reports.push_back(Report {
                    kind,
                    trip_id: trip.trip_id,
                    stage: None,
                });
                if accept {
                    self.stats
                        .pickup_distance_m
                        .record(self.at.distance_m(&trip.pickup) as u64);
                    self.task = Task::ToPickup {
                        trip,
                        accepted: now,
                    };
                } else {
                    bump(&self.stats.declined);
                    self.roam();
                }
            }
            Task::ToPickup { trip, accepted } if arrived => {
                let simulated = now.duration_since(accepted).as_secs_f64() * self.settings.speedup;
                self.stats
                    .pickup_time_ms
                    .record((simulated * 1000.0) as u64);
                self.progress(ws, &trip, "arrived").await?;
                let boarding = Duration::from_secs_f64(30.0 / self.settings.speedup);
                self.task = Task::Boarding {
                    trip,
                    until: now + boarding,
                };
            }
            Task::Boarding { trip, until } if now >= until => {
                self.progress(ws, &trip, "started").await?;
                self.task = Task::ToDropoff { trip };
            }
            Task::ToDropoff { trip } if arrived => {
                self.progress(ws, &trip, "completed").await?;
                self.roam();
            }
            _ => {}
        }
        self.flush_reports(ws).await
    }

    /// Sends the next report when none awaits an answer.
    async fn flush_reports(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        if self.in_flight.is_some() || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        let Some(report) = self.reports.front().cloned() else {
            return Ok(());
        };
        let id = self.id();
        let mut message = json!({"type": report.kind, "id": id, "trip_id": report.trip_id});
        if let Some(stage) = report.stage {
            message["stage"] = json!(stage);
        }
        client::send(ws, message).await?;
        self.in_flight = Some(id);
        self.retry_at = None;
        Ok(())
    }

    fn roam(&mut self) {
        let to = self.settings.city.random_point(&mut self.rng);
        self.task = Task::Roaming { to };
    }

    async fn progress(
        &mut self,
        ws: &mut Ws,
        trip: &TripView,
        stage: &'static str,
    ) -> anyhow::Result<()> {
        self.reports.push_back(Report {
            kind: "trip_progress",
            trip_id: trip.trip_id,
            stage: Some(stage),
        });
        self.flush_reports(ws).await
    }

    async fn on_message(&mut self, ws: &mut Ws, message: ServerMessage) -> anyhow::Result<()> {
        match message {
            ServerMessage::Offer {
                trip, pickup_eta_s, ..
            } => {
                bump(&self.stats.offers);
                self.stats.pickup_eta_s.record(u64::from(pickup_eta_s));
                if self.task.on_trip() && self.task.trip_id() != Some(trip.trip_id) {
                    // The server offered a driver that is carrying out another trip.
                    bump(&self.stats.double_assigned);
                    let id = self.id();
                    client::send(
                        ws,
                        json!({"type": "decline_offer", "id": id, "trip_id": trip.trip_id}),
                    )
                    .await?;
                    return Ok(());
                }
                if matches!(self.task, Task::Roaming { .. }) {
                    let accept = self.rng.random::<f64>() < self.settings.accept_probability;
                    let delay = self
                        .rng
                        .random_range(0.0..=self.settings.answer_delay.as_secs_f64());
                    self.task = Task::Answering {
                        trip,
                        at: Instant::now() + Duration::from_secs_f64(delay),
                        accept,
                    };
                }
            }
            ServerMessage::TripUpdate { trip } => self.on_trip(trip),
            ServerMessage::SessionState { trips, .. } => {
                // Resumed after a reconnect: carry on with the trip the server says is ours.
                match trips.into_iter().find(|t| t.state.holds_driver()) {
                    Some(trip) => self.resume(trip),
                    None if self.task.trip_id().is_some() => self.roam(),
                    None => {}
                }
            }
            ServerMessage::Ack { id, .. } if Some(id) == self.in_flight => {
                self.reports.pop_front();
                self.in_flight = None;
                self.flush_reports(ws).await?;
            }
            ServerMessage::Error {
                code, id: Some(id), ..
            } => {
                bump(&self.stats.errors);
                if Some(id) != self.in_flight {
                    return Ok(());
                }
                self.in_flight = None;
                if code.is_retryable() {
                    self.retry_at = Some(Instant::now() + REPORT_RETRY);
                    return Ok(());
                }
                let report = self.reports.pop_front();
                if report.is_some_and(|r| r.kind == "accept_offer")
                    && matches!(self.task, Task::ToPickup { .. })
                {
                    // The accept failed (offer gone): back to roaming.
                    self.roam();
                }
                self.flush_reports(ws).await?;
            }
            _ => {}
        }
        Ok(())
    }

    fn on_trip(&mut self, trip: TripView) {
        if self.task.trip_id() != Some(trip.trip_id) {
            return;
        }
        let mine = trip.driver_id.as_deref() == Some(self.id.as_str());
        if trip.state.is_terminal() || !mine || trip.state == TripState::Requested {
            self.roam();
        }
    }

    fn resume(&mut self, trip: TripView) {
        if self.task.trip_id() == Some(trip.trip_id) {
            return;
        }
        self.task = match trip.state {
            TripState::Offered => Task::Answering {
                trip,
                at: Instant::now(),
                accept: true,
            },
            TripState::Accepted => Task::ToPickup {
                trip,
                accepted: Instant::now(),
            },
            TripState::Arrived => Task::Boarding {
                trip,
                until: Instant::now(),
            },
            _ => Task::ToDropoff { trip },
        };
    }
}
