//! The matching engine: one task owning the index and the requests waiting for a driver.
//!
//! Inputs arrive on a channel (positions, requests, trip events, claim results); a tick runs
//! matching rounds, expires offers nobody answered and searches that ran out of time. Claims
//! go through the trips service, whose database settles races between replicas.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use h3o::CellIndex;
use protocol::bus::{
    CellCounts, DriverRecord, DriverStatus, Position, RideRequest, TripCommand, TripEvent,
    TripReply,
};
use protocol::client::VehicleStatus;
use protocol::time::now_ms;
use protocol::trip::TripState;
use protocol::{ErrorCode, GeoConfig, Point};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::assign::{self, Candidates, EtaModel, Fairness, Strategy};
use crate::counts;
use crate::holdings::Holdings;
use crate::index::{Driver, Index, Update};
use crate::meters as m;

/// What the engine talks to: the trips service and the bus.
pub trait Link: Clone + Send + Sync + 'static {
    fn command(&self, command: TripCommand) -> impl Future<Output = TripReply> + Send;
    fn publish_counts(
        &self,
        region: CellIndex,
        counts: CellCounts,
    ) -> impl Future<Output = ()> + Send;
}

/// Matching behaviour.
#[derive(Debug, Clone)]
pub struct Settings {
    pub strategy: Strategy,
    /// How the batched strategy weighs how long requests have waited.
    pub fairness: Fairness,
    /// How long the batched strategy gathers requests before solving.
    pub batch_window: Duration,
    /// How long a driver has to answer an offer.
    pub offer_ttl: Duration,
    /// Search radius at first, and its limit; it widens while a request waits.
    pub initial_radius_m: f64,
    pub max_radius_m: f64,
    pub radius_growth_m_per_s: f64,
    /// Nearest drivers considered per request per round.
    pub candidates: usize,
    /// Drivers silent for this long leave the index.
    pub evict_after: Duration,
    /// How often per-cell counts are published.
    pub counts_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Greedy,
            fairness: Fairness::default(),
            batch_window: Duration::from_millis(500),
            offer_ttl: Duration::from_secs(15),
            initial_radius_m: 3_000.0,
            max_radius_m: 10_000.0,
            radius_growth_m_per_s: 200.0,
            candidates: 8,
            evict_after: Duration::from_secs(30),
            counts_every: Duration::from_secs(2),
        }
    }
}

/// Everything that reaches the engine.
#[derive(Debug)]
pub enum Input {
    Position(Position),
    Request(RideRequest),
    Event(TripEvent),
    Status(DriverStatus),
    /// Drivers holding trips, from the trips service at startup.
    Busy(Vec<DriverRecord>),
    Claimed {
        trip_id: Uuid,
        driver: String,
        reply: TripReply,
    },
    OfferExpired {
        trip_id: Uuid,
        reply: TripReply,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Searching {
        not_before: Instant,
    },
    Claiming {
        driver: String,
    },
    /// `expires` is on the monotonic clock: the offer's TTL plus a grace period.
    Offered {
        driver: String,
        expires: Instant,
    },
    Expiring {
        driver: String,
    },
}

#[derive(Debug)]
struct Waiting {
    request: RideRequest,
    received: Instant,
    excluded: HashSet<String>,
    phase: Phase,
}

/// The engine's state.
#[derive(Debug)]
pub struct Engine<L: Link> {
    settings: Settings,
    geo: GeoConfig,
    regions: HashSet<CellIndex>,
    index: Index,
    eta: Arc<dyn EtaModel>,
    /// Drivers holding a trip (offered or under way).
    holdings: Holdings,
    waiting: HashMap<Uuid, Waiting>,
    /// Drivers this engine is claiming or has offered a trip to.
    reserved: HashSet<String>,
    /// Drivers whose last claim found them taken (by another replica, or offline): left alone
    /// until the instant given, by when the trip events have told who holds them.
    cooling: HashMap<String, Instant>,
    link: L,
    results: mpsc::Sender<Input>,
    /// The commands in flight (claims, expiries): the engine's stop waits for them.
    tasks: TaskTracker,
    last_round: Instant,
    last_evict: Instant,
    last_counts: Instant,
    /// Looked up once, when the engine is made (after the service registered its meters):
    /// every position records it.
    position_age: metrics::Histogram,
}

/// How long after an offer's expiry the engine expires it itself.
const EXPIRY_GRACE: Duration = Duration::from_millis(500);
/// Wait before retrying a request whose claim failed for a passing reason.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// How long a driver found taken is left alone.
const COOLING: Duration = Duration::from_secs(1);

impl<L: Link> Engine<L> {
    pub fn new(
        settings: Settings,
        geo: GeoConfig,
        regions: HashSet<CellIndex>,
        index_res: h3o::Resolution,
        eta: Arc<dyn EtaModel>,
        link: L,
        results: mpsc::Sender<Input>,
    ) -> Self {
        let now = Instant::now();
        Self {
            settings,
            geo,
            regions,
            index: Index::new(index_res),
            eta,
            holdings: Holdings::default(),
            waiting: HashMap::new(),
            reserved: HashSet::new(),
            cooling: HashMap::new(),
            link,
            results,
            tasks: TaskTracker::new(),
            last_round: now,
            last_evict: now,
            last_counts: now,
            position_age: metrics::histogram!(m::POSITION_AGE),
        }
    }

    /// Requests waiting for a driver.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Runs until `stop`, reading `inputs` and ticking every `tick`.
    pub async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        tick: Duration,
        stop: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                input = inputs.recv() => match input {
                    Some(input) => self.on_input(input),
                    None => break,
                },
                _ = ticker.tick() => self.on_tick().await,
            }
        }
        self.finish().await;
    }

    /// Waits for the commands in flight (their answers are no longer read).
    pub async fn finish(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub fn on_input(&mut self, input: Input) {
        match input {
            Input::Position(position) => {
                let outcome = self.index.update(&position, Instant::now().into_std());
                let label = match outcome {
                    Update::Inserted => "inserted",
                    Update::Moved => "moved",
                    Update::Updated => "updated",
                    Update::Stale => "stale",
                };
                metrics::counter!(m::POSITIONS, "outcome" => label).increment(1);
                if position.received_us > 0 {
                    let age_us = protocol::time::now_us().saturating_sub(position.received_us);
                    self.position_age.record(age_us.max(0) as f64 / 1e6);
                }
            }
            Input::Request(request) => self.on_request(request),
            Input::Event(event) => self.on_event(event),
            Input::Status(status) => {
                if !status.online {
                    self.index
                        .set_status(&status.driver_id, VehicleStatus::Offline);
                }
            }
            Input::Busy(drivers) => {
                for driver in drivers {
                    if let Some(trip) = driver.active_trip {
                        self.holdings.hold(driver.driver_id, trip);
                    }
                }
            }
            Input::Claimed {
                trip_id,
                driver,
                reply,
            } => self.on_claimed(trip_id, driver, reply),
            Input::OfferExpired { trip_id, reply } => {
                // The trip moved on either way (back to requested, or accepted meanwhile):
                // the re-published request or the event tells what comes next.
                if let Some(waiting) = self.waiting.remove(&trip_id) {
                    self.release(&waiting.phase);
                }
                if reply.is_ok() {
                    metrics::counter!(m::OFFERS_EXPIRED).increment(1);
                }
            }
        }
    }

    fn on_request(&mut self, request: RideRequest) {
        metrics::counter!(m::REQUESTS).increment(1);
        if request.attempt == 1 {
            let age_ms = now_ms().saturating_sub(request.trip.created_at).max(0);
            metrics::histogram!(m::REQUEST_AGE).record(age_ms as f64 / 1000.0);
        }
        if request.trip.state != TripState::Requested {
            return;
        }
        let trip_id = request.trip.trip_id;
        match self.waiting.get_mut(&trip_id) {
            // Already working on it: learn the exclusions, keep the phase.
            Some(waiting) => {
                waiting
                    .excluded
                    .extend(request.excluded_drivers.iter().cloned());
                waiting.request = request;
            }
            None => {
                let excluded = request.excluded_drivers.iter().cloned().collect();
                self.waiting.insert(
                    trip_id,
                    Waiting {
                        request,
                        received: Instant::now(),
                        excluded,
                        phase: Phase::Searching {
                            not_before: Instant::now(),
                        },
                    },
                );
            }
        }
        if self.settings.strategy == Strategy::Greedy {
            self.round(Instant::now());
        }
    }

    fn on_event(&mut self, event: TripEvent) {
        let trip = &event.trip;
        // Who is busy: every replica learns it from the events, whoever made the change.
        self.holdings.release_trip(&trip.trip_id);
        if trip.state.holds_driver()
            && let Some(driver) = &trip.driver_id
        {
            self.holdings.hold(driver.clone(), trip.trip_id);
            let status = if trip.state == TripState::Offered {
                VehicleStatus::Offered
            } else {
                VehicleStatus::OnTrip
            };
            self.index.set_status(driver, status);
        }
        // What becomes of a request this engine works on. Our own offer reaches us twice, by
        // the claim's reply and by this event, in either order: the reply moves the request
        // on (it is the only path that carries a failed claim), and the event, which every
        // replica needs for the line above, leaves a request of ours in its offer phase as it is.
        let Some(waiting) = self.waiting.get(&trip.trip_id) else {
            return;
        };
        let ours = match &waiting.phase {
            Phase::Claiming { driver }
            | Phase::Offered { driver, .. }
            | Phase::Expiring { driver } => trip.driver_id.as_ref() == Some(driver),
            Phase::Searching { .. } => false,
        };
        let done = match trip.state {
            // Our own offer being recorded: keep waiting for the answer. Someone else's: gone.
            TripState::Offered => !ours,
            // Declined or expired: the trips service re-publishes the request.
            TripState::Requested => !matches!(waiting.phase, Phase::Searching { .. }),
            _ => true,
        };
        if done && let Some(waiting) = self.waiting.remove(&trip.trip_id) {
            self.release(&waiting.phase);
        }
    }

    fn release(&mut self, phase: &Phase) {
        match phase {
            Phase::Claiming { driver }
            | Phase::Offered { driver, .. }
            | Phase::Expiring { driver } => {
                self.reserved.remove(driver);
            }
            Phase::Searching { .. } => {}
        }
    }

    fn on_claimed(&mut self, trip_id: Uuid, driver: String, reply: TripReply) {
        let Some(waiting) = self.waiting.get_mut(&trip_id) else {
            self.reserved.remove(&driver);
            return;
        };
        if waiting.phase
            != (Phase::Claiming {
                driver: driver.clone(),
            })
        {
            return;
        }
        match reply {
            Ok(outcome) => {
                let offered = outcome.trip.as_ref().filter(|t| {
                    t.state == TripState::Offered && t.driver_id.as_deref() == Some(&driver)
                });
                if offered.is_some() {
                    metrics::counter!(m::CLAIMS, "outcome" => "offered").increment(1);
                    let strategy = strategy_label(self.settings.strategy);
                    metrics::histogram!(m::MATCH_LATENCY, "strategy" => strategy)
                        .record(waiting.received.elapsed());
                    waiting.phase = Phase::Offered {
                        driver,
                        expires: Instant::now() + self.settings.offer_ttl + EXPIRY_GRACE,
                    };
                } else {
                    self.reserved.remove(&driver);
                    self.waiting.remove(&trip_id);
                }
            }
            Err(error) => {
                self.reserved.remove(&driver);
                match error.code {
                    ErrorCode::Conflict => {
                        // Taken by another replica's claim, offline, or unfit: try others.
                        metrics::counter!(m::CLAIMS, "outcome" => "conflict").increment(1);
                        self.cooling.insert(driver, Instant::now() + COOLING);
                        waiting.phase = Phase::Searching {
                            not_before: Instant::now(),
                        };
                    }
                    ErrorCode::InvalidTransition | ErrorCode::NotFound => {
                        // Taken elsewhere, cancelled or gone.
                        metrics::counter!(m::CLAIMS, "outcome" => "gone").increment(1);
                        self.waiting.remove(&trip_id);
                    }
                    _ => {
                        metrics::counter!(m::CLAIMS, "outcome" => "error").increment(1);
                        waiting.phase = Phase::Searching {
                            not_before: Instant::now() + RETRY_AFTER,
                        };
                    }
                }
            }
        }
    }

    /// Periodic work: matching rounds, offer and search expiry, eviction, counts.
    pub async fn on_tick(&mut self) {
        let now = Instant::now();
        let now_wall = now_ms();
        let batch_due = now.duration_since(self.last_round) >= self.settings.batch_window;
        if self.settings.strategy == Strategy::Greedy || batch_due {
            self.round(now);
        }
        // Offers nobody answered, and searches out of time.
        let mut expire_offers = Vec::new();
        let mut expire_searches = Vec::new();
        for (trip_id, waiting) in &mut self.waiting {
            match &waiting.phase {
                Phase::Offered { driver, expires } if now > *expires => {
                    expire_offers.push((*trip_id, driver.clone()));
                    waiting.phase = Phase::Expiring {
                        driver: driver.clone(),
                    };
                }
                Phase::Searching { .. } if now_wall > waiting.request.deadline => {
                    expire_searches.push(*trip_id);
                }
                _ => {}
            }
        }
        for (trip_id, driver_id) in expire_offers {
            let link = self.link.clone();
            let results = self.results.clone();
            self.tasks.spawn(async move {
                let reply = link
                    .command(TripCommand::ExpireOffer { trip_id, driver_id })
                    .await;
                let _ = results.send(Input::OfferExpired { trip_id, reply }).await;
            });
        }
        for trip_id in expire_searches {
            self.waiting.remove(&trip_id);
            metrics::counter!(m::SEARCHES_EXPIRED).increment(1);
            let link = self.link.clone();
            self.tasks.spawn(async move {
                let reason = "no driver found before the search deadline".to_owned();
                let _ = link.command(TripCommand::Expire { trip_id, reason }).await;
            });
        }
        if now.duration_since(self.last_evict) >= Duration::from_secs(1) {
            self.last_evict = now;
            self.cooling.retain(|_, until| *until > now);
            if let Some(cutoff) = now.checked_sub(self.settings.evict_after) {
                let evicted = self.index.evict_older_than(cutoff.into_std());
                metrics::counter!(m::EVICTED).increment(evicted as u64);
            }
            metrics::gauge!(m::INDEXED_DRIVERS).set(self.index.len() as f64);
            metrics::gauge!(m::WAITING).set(self.waiting.len() as f64);
        }
        if now.duration_since(self.last_counts) >= self.settings.counts_every {
            self.last_counts = now;
            self.publish_counts().await;
        }
    }

    fn eligible(&self, driver: &Driver, waiting: &Waiting, now: Instant) -> bool {
        let trip = &waiting.request.trip;
        driver.status == VehicleStatus::Available
            && !self.holdings.is_busy(&driver.id)
            && self
                .cooling
                .get(&driver.id)
                .is_none_or(|until| *until <= now)
            && !self.reserved.contains(&driver.id)
            && !waiting.excluded.contains(&driver.id)
            && trip
                .vehicle_class
                .is_none_or(|c| driver.vehicle_class == Some(c))
            && trip.min_capacity.is_none_or(|c| driver.capacity >= c)
    }

    /// One matching round over every request searching for a driver.
    fn round(&mut self, now: Instant) {
        self.last_round = now;
        let mut searching: Vec<(&Uuid, &Waiting)> = self
            .waiting
            .iter()
            .filter(
                |(_, w)| matches!(w.phase, Phase::Searching { not_before } if not_before <= now),
            )
            .collect();
        if searching.is_empty() {
            return;
        }
        let started = Instant::now();
        searching.sort_by_key(|(_, w)| w.received);
        let table: Vec<Candidates> = searching
            .iter()
            .map(|(_, waiting)| {
                let radius = (self.settings.initial_radius_m
                    + self.settings.radius_growth_m_per_s
                        * waiting.received.elapsed().as_secs_f64())
                .min(self.settings.max_radius_m);
                let pickup = waiting.request.trip.pickup;
                // A pickup in a queue zone goes to the head of its queue first, when it can
                // take it; otherwise (and once the head has declined) the usual search.
                let head = waiting
                    .request
                    .queue_head
                    .as_deref()
                    .and_then(|id| self.index.get(id))
                    .filter(|driver| self.eligible(driver, waiting, now));
                if let Some(head) = head {
                    let eta = self.eta.etas_to_s(&[head.point], pickup);
                    return vec![(head.id.clone(), eta[0])];
                }
                let nearest = self
                    .index
                    .nearest(pickup, self.settings.candidates, radius, |d| {
                        self.eligible(d, waiting, now)
                    });
                let points: Vec<Point> = nearest.iter().map(|(driver, _)| driver.point).collect();
                let etas = self.eta.etas_to_s(&points, pickup);
                nearest
                    .into_iter()
                    .zip(etas)
                    .map(|((driver, _), eta)| (driver.id.clone(), eta))
                    .collect()
            })
            .collect();
        tracing::debug!(
            searching = table.len(),
            with_candidates = table.iter().filter(|c| !c.is_empty()).count(),
            indexed = self.index.len(),
            busy = self.holdings.len(),
            reserved = self.reserved.len(),
            "matching round"
        );
        let trips: Vec<Uuid> = searching.iter().map(|(id, _)| **id).collect();
        let waited: Vec<f64> = searching
            .iter()
            .map(|(_, waiting)| {
                now.saturating_duration_since(waiting.received)
                    .as_secs_f64()
            })
            .collect();
        let assignment = assign::assign(
            self.settings.strategy,
            &table,
            &waited,
            self.settings.fairness,
        );
        let strategy = strategy_label(self.settings.strategy);
        metrics::histogram!(m::ROUND_DURATION, "strategy" => strategy).record(started.elapsed());
        let ttl = self.settings.offer_ttl.as_millis() as i64;
        for (trip_id, pair) in trips.into_iter().zip(assignment) {
            let Some((driver, eta)) = pair else { continue };
            metrics::histogram!(m::PICKUP_ETA, "strategy" => strategy).record(eta);
            self.reserved.insert(driver.clone());
            if let Some(waiting) = self.waiting.get_mut(&trip_id) {
                waiting.phase = Phase::Claiming {
                    driver: driver.clone(),
                };
            }
            let link = self.link.clone();
            let results = self.results.clone();
            self.tasks.spawn(async move {
                let command = TripCommand::Offer {
                    trip_id,
                    driver_id: driver.clone(),
                    expires_at: now_ms() + ttl,
                    pickup_eta_s: eta.round() as u32,
                };
                let reply = link.command(command).await;
                let _ = results
                    .send(Input::Claimed {
                        trip_id,
                        driver,
                        reply,
                    })
                    .await;
            });
        }
    }

    async fn publish_counts(&self) {
        let vehicles = self.index.iter().filter_map(|driver| {
            if driver.status == VehicleStatus::Offline {
                return None;
            }
            let cell = driver.cell.parent(self.geo.cell_res)?;
            let available =
                driver.status == VehicleStatus::Available && !self.holdings.is_busy(&driver.id);
            Some((cell, available))
        });
        let requests = self
            .waiting
            .values()
            .filter_map(|w| self.geo.cell_of(w.request.trip.pickup).ok());
        let per_region = counts::per_region(&self.geo, &self.regions, vehicles, requests);
        for (region, cells) in per_region {
            let counts = CellCounts {
                region: region.into(),
                resolution: self.geo.cell_res.into(),
                cells,
                at: now_ms(),
            };
            self.link.publish_counts(region, counts).await;
        }
    }
}

fn strategy_label(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Greedy => "greedy",
        Strategy::Batched => "batched",
    }
}

#[cfg(test)]
mod tests;
