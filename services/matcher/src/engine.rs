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
    CellCount, CellCounts, DriverRecord, DriverStatus, Position, RideRequest, TripCommand,
    TripEvent, TripReply,
};
use protocol::client::VehicleStatus;
use protocol::time::now_ms;
use protocol::trip::TripState;
use protocol::{ErrorCode, GeoConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::assign::{self, Candidates, EtaModel, Strategy};
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
    /// Drivers holding a trip (offered or under way), and the reverse.
    busy: HashMap<String, Uuid>,
    holder: HashMap<Uuid, String>,
    waiting: HashMap<Uuid, Waiting>,
    /// Drivers this engine is claiming or has offered a trip to.
    reserved: HashSet<String>,
    /// Drivers whose last claim found them taken (by another replica, or offline): left alone
    /// until the instant given, by when the trip events have told who holds them.
    cooling: HashMap<String, Instant>,
    link: L,
    results: mpsc::Sender<Input>,
    last_round: Instant,
    last_evict: Instant,
    last_counts: Instant,
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
            busy: HashMap::new(),
            holder: HashMap::new(),
            waiting: HashMap::new(),
            reserved: HashSet::new(),
            cooling: HashMap::new(),
            link,
            results,
            last_round: now,
            last_evict: now,
            last_counts: now,
        }
    }

    pub fn index(&self) -> &Index {
        &self.index
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
                        self.busy.insert(driver.driver_id.clone(), trip);
                        self.holder.insert(trip, driver.driver_id);
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
        // Who is busy.
        if let Some(previous) = self.holder.remove(&trip.trip_id) {
            self.busy.remove(&previous);
        }
        if trip.state.holds_driver()
            && let Some(driver) = &trip.driver_id
        {
            self.busy.insert(driver.clone(), trip.trip_id);
            self.holder.insert(trip.trip_id, driver.clone());
            let status = if trip.state == TripState::Offered {
                VehicleStatus::Offered
            } else {
                VehicleStatus::OnTrip
            };
            self.index.set_status(driver, status);
        }
        // What becomes of a request this engine works on.
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
            tokio::spawn(async move {
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
            tokio::spawn(async move {
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
            && !self.busy.contains_key(&driver.id)
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
                self.index
                    .nearest(pickup, self.settings.candidates, radius, |d| {
                        self.eligible(d, waiting, now)
                    })
                    .into_iter()
                    .map(|(driver, _)| {
                        (
                            driver.id.clone(),
                            self.eta.pickup_eta_s(driver.point, pickup),
                        )
                    })
                    .collect()
            })
            .collect();
        tracing::debug!(
            searching = table.len(),
            with_candidates = table.iter().filter(|c| !c.is_empty()).count(),
            indexed = self.index.len(),
            busy = self.busy.len(),
            reserved = self.reserved.len(),
            "matching round"
        );
        let trips: Vec<Uuid> = searching.iter().map(|(id, _)| **id).collect();
        let assignment = assign::assign(self.settings.strategy, &table);
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
            tokio::spawn(async move {
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
        let mut per_region: HashMap<CellIndex, HashMap<CellIndex, CellCount>> = HashMap::new();
        let mut drivers = Vec::new();
        for driver in self.index.iter() {
            if driver.status == VehicleStatus::Offline {
                continue;
            }
            let Some(cell) = driver.cell.parent(self.geo.cell_res) else {
                continue;
            };
            let available =
                driver.status == VehicleStatus::Available && !self.busy.contains_key(&driver.id);
            drivers.push((cell, available));
        }
        let requests: Vec<CellIndex> = self
            .waiting
            .values()
            .filter_map(|w| self.geo.cell_of(w.request.trip.pickup).ok())
            .collect();
        for (cell, available) in drivers {
            if let Some(count) = count_of(&mut per_region, &self.geo, &self.regions, cell) {
                count.vehicles += 1;
                count.available += u32::from(available);
            }
        }
        for cell in requests {
            if let Some(count) = count_of(&mut per_region, &self.geo, &self.regions, cell) {
                count.open_requests += 1;
            }
        }
        for (region, cells) in per_region {
            let counts = CellCounts {
                region: region.into(),
                resolution: self.geo.cell_res.into(),
                cells: cells.into_values().collect(),
                at: now_ms(),
            };
            self.link.publish_counts(region, counts).await;
        }
    }
}

/// The count of `cell`, created empty, if the cell lies in a served region.
fn count_of<'a>(
    per_region: &'a mut HashMap<CellIndex, HashMap<CellIndex, CellCount>>,
    geo: &GeoConfig,
    regions: &HashSet<CellIndex>,
    cell: CellIndex,
) -> Option<&'a mut CellCount> {
    let region = geo.region_of_cell(cell);
    if !regions.contains(&region) {
        return None;
    }
    Some(
        per_region
            .entry(region)
            .or_default()
            .entry(cell)
            .or_insert(CellCount {
                cell: cell.into(),
                vehicles: 0,
                available: 0,
                open_requests: 0,
            }),
    )
}

fn strategy_label(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Greedy => "greedy",
        Strategy::Batched => "batched",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::bus::{CommandError, TripOutcome};
    use protocol::trip::TripView;
    use protocol::{Point, Subjects};
    use std::sync::Mutex;

    const BERLIN: Point = Point::new(52.52, 13.405);

    /// Answers every command as a trips service would for an always-free driver, and records it.
    #[derive(Debug, Clone, Default)]
    struct Fake {
        commands: Arc<Mutex<Vec<TripCommand>>>,
    }

    impl Link for Fake {
        async fn command(&self, command: TripCommand) -> TripReply {
            self.commands.lock().unwrap().push(command.clone());
            match command {
                TripCommand::Offer {
                    trip_id, driver_id, ..
                } => {
                    let mut trip = trip(trip_id);
                    trip.state = TripState::Offered;
                    trip.driver_id = Some(driver_id);
                    Ok(TripOutcome {
                        trip: Some(trip),
                        changed: true,
                    })
                }
                TripCommand::ExpireOffer { trip_id, .. } => Ok(TripOutcome {
                    trip: Some(trip(trip_id)),
                    changed: true,
                }),
                _ => Err(CommandError::new(ErrorCode::Internal, "unexpected")),
            }
        }
        async fn publish_counts(&self, _: CellIndex, _: CellCounts) {}
    }

    fn trip(trip_id: Uuid) -> TripView {
        TripView {
            trip_id,
            state: TripState::Requested,
            rider_id: "r".into(),
            driver_id: None,
            pickup: BERLIN,
            dropoff: Point::new(52.5, 13.45),
            vehicle_class: None,
            min_capacity: None,
            region: String::new(),
            created_at: 0,
            updated_at: 0,
            version: 1,
            ended_by: None,
            end_reason: None,
        }
    }

    fn driver_at(id: &str, point: Point) -> Position {
        Position {
            driver_id: id.into(),
            lat: point.lat,
            lng: point.lng,
            heading: None,
            speed: None,
            accuracy: None,
            ts: now_ms(),
            seq: 1,
            status: VehicleStatus::Available,
            vehicle_class: None,
            capacity: 4,
            trip_id: None,
            received_us: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_offer_is_expired_after_its_ttl() {
        let (tx, mut rx) = mpsc::channel(16);
        let fake = Fake::default();
        let settings = Settings {
            offer_ttl: Duration::from_secs(10),
            ..Default::default()
        };
        let geo = GeoConfig::default();
        let regions = [geo.region_of(BERLIN).unwrap()].into();
        let _ = Subjects::default();
        let mut engine = Engine::new(
            settings,
            geo,
            regions,
            h3o::Resolution::Eight,
            Arc::new(assign::StraightLine::default()),
            fake.clone(),
            tx,
        );
        engine.on_input(Input::Position(driver_at("d1", Point::new(52.521, 13.405))));
        let trip_id = Uuid::new_v4();
        engine.on_input(Input::Request(RideRequest {
            trip: trip(trip_id),
            excluded_drivers: vec![],
            deadline: now_ms() + 600_000,
            attempt: 1,
        }));
        // Greedy claims at once.
        let claimed = rx.recv().await.unwrap();
        assert!(matches!(&claimed, Input::Claimed { driver, .. } if driver == "d1"));
        engine.on_input(claimed);
        // The driver says nothing; nothing happens before the offer's time is up.
        tokio::time::advance(Duration::from_secs(9)).await;
        engine.on_tick().await;
        assert!(
            !fake
                .commands
                .lock()
                .unwrap()
                .iter()
                .any(|c| matches!(c, TripCommand::ExpireOffer { .. }))
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        engine.on_tick().await;
        let expired = rx.recv().await.unwrap();
        assert!(matches!(expired, Input::OfferExpired { .. }));
        assert!(
            fake.commands.lock().unwrap().iter().any(
                |c| matches!(c, TripCommand::ExpireOffer { driver_id, .. } if driver_id == "d1")
            )
        );
        engine.on_input(expired);
        assert_eq!(
            engine.waiting(),
            0,
            "the re-published request decides what comes next"
        );
        assert!(engine.reserved.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_search_without_drivers_expires_at_its_deadline() {
        let (tx, _rx) = mpsc::channel(16);
        let fake = Fake::default();
        let geo = GeoConfig::default();
        let mut engine = Engine::new(
            Settings::default(),
            geo,
            HashSet::new(),
            h3o::Resolution::Eight,
            Arc::new(assign::StraightLine::default()),
            fake.clone(),
            tx,
        );
        let trip_id = Uuid::new_v4();
        engine.on_input(Input::Request(RideRequest {
            trip: trip(trip_id),
            excluded_drivers: vec![],
            deadline: now_ms() - 1,
            attempt: 1,
        }));
        engine.on_tick().await;
        assert_eq!(engine.waiting(), 0);
        // The expiry is sent from a spawned task: let it run.
        for _ in 0..100 {
            if !fake.commands.lock().unwrap().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            fake.commands
                .lock()
                .unwrap()
                .iter()
                .any(|c| matches!(c, TripCommand::Expire { trip_id: t, .. } if *t == trip_id))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn excluded_busy_and_unfit_drivers_are_never_offered() {
        let (tx, mut rx) = mpsc::channel(16);
        let fake = Fake::default();
        let geo = GeoConfig::default();
        let mut engine = Engine::new(
            Settings::default(),
            geo,
            HashSet::new(),
            h3o::Resolution::Eight,
            Arc::new(assign::StraightLine::default()),
            fake,
            tx,
        );
        engine.on_input(Input::Position(driver_at(
            "near-excluded",
            Point::new(52.5201, 13.405),
        )));
        engine.on_input(Input::Position(driver_at(
            "near-busy",
            Point::new(52.5202, 13.405),
        )));
        let mut van = driver_at("near-small", Point::new(52.5203, 13.405));
        van.capacity = 2;
        engine.on_input(Input::Position(van));
        engine.on_input(Input::Position(driver_at("far", Point::new(52.54, 13.405))));
        engine.on_input(Input::Busy(vec![DriverRecord {
            driver_id: "near-busy".into(),
            online: true,
            vehicle_class: None,
            capacity: Some(4),
            active_trip: Some(Uuid::new_v4()),
        }]));
        let mut wanted = trip(Uuid::new_v4());
        wanted.min_capacity = Some(3);
        engine.on_input(Input::Request(RideRequest {
            trip: wanted,
            excluded_drivers: vec!["near-excluded".into()],
            deadline: now_ms() + 60_000,
            attempt: 2,
        }));
        let Input::Claimed { driver, .. } = rx.recv().await.unwrap() else {
            panic!()
        };
        assert_eq!(driver, "far");
    }
}
