//! Zone events, detected where positions arrive: the gateway holds the zones and, for each
//! of its drivers inside any, which ones and since when.
//!
//! Every accepted position is looked up in a [`ZoneIndex`] (an H3 cover; the exact
//! point-in-polygon test only in cells on an edge) and compared with the zones the driver was
//! in: `enter` for each new one, `exit` for each it left, `dwell` once it has been inside for
//! [`TrackingSettings::dwell`]. A sweep every second sends the dwells of drivers that stand
//! still, and the exits (`stale`) of drivers silent for [`TrackingSettings::stale_after`],
//! unless they are connected to another gateway now, which takes them over.
//!
//! The events go to the trips service on `{p}.tracking.record` in batches, in order, retried
//! until it has stored them ([`record`]); it publishes them and queues their webhooks. The
//! zones come from the trips service too ([`follow`]): its generation is asked for every
//! [`TrackingSettings::reload_every`] and the zones are fetched again when it moved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use h3o::CellIndex;
use kit::Bus;
use protocol::Point;
use protocol::bus::{QueryReply, RecordReply, TripQuery, ZoneEvent, ZoneTransition};
use protocol::events::ExitReason;
use protocol::time::UnixMillis;
use protocol::zone::{Zone, ZoneIndex, ZoneKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::meters as m;

/// How zone events are detected and sent.
#[derive(Debug, Clone)]
pub struct TrackingSettings {
    /// Time inside a zone after which `dwell` is sent, once per stay.
    pub dwell: Duration,
    /// A driver silent this long leaves the zones it was in (`exit`, reason `stale`).
    pub stale_after: Duration,
    /// How often the zones' generation is asked for.
    pub reload_every: Duration,
    /// Events held while the trips service cannot take them; more are dropped and counted.
    pub queue: usize,
}

impl Default for TrackingSettings {
    fn default() -> Self {
        Self {
            dwell: Duration::from_secs(300),
            stale_after: Duration::from_secs(60),
            reload_every: Duration::from_millis(500),
            queue: 100_000,
        }
    }
}

/// What is known of one zone a driver is in.
#[derive(Debug, Clone)]
struct Stay {
    zone_id: Uuid,
    /// The zone's place in the index [`DriverZones::places_in`].
    place: usize,
    name: String,
    kind: ZoneKind,
    since: Instant,
    dwelt: bool,
}

/// One driver's zones.
#[derive(Debug, Default)]
pub struct DriverZones {
    /// A driver is in few zones at once: a list is searched faster than a map.
    inside: Vec<Stay>,
    /// The [`ZoneIndex::id`] of the index the stays' places are in.
    places_in: Option<u64>,
    /// The places of the zones that hold the latest position, kept to spare an allocation
    /// per position.
    holding: Vec<usize>,
    last_seen: Option<Instant>,
    /// Where and when (the driver's clock) it last reported.
    last: Option<(Point, UnixMillis)>,
    /// Swept out of the tracker as stale: its session attaches afresh.
    detached: bool,
    /// The zones its last position was taken against, kept until others are in force.
    index: Option<Arc<ZoneIndex>>,
}

/// A transition of one driver in one zone, before it is addressed.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub transition: ZoneTransition,
    pub zone_id: Uuid,
    pub name: String,
    pub kind: ZoneKind,
}

impl DriverZones {
    /// Takes a position at `at` (in the index cell `cell`; the driver's clock `ts`, received
    /// at `now`) against the zones of `index`: the exits, then the enters, then the dwells it
    /// brings. A driver that is not `online` is in no queue zone.
    pub fn observe(
        &mut self,
        index: &ZoneIndex,
        (at, cell, ts): (Point, Option<CellIndex>, UnixMillis),
        online: bool,
        now: Instant,
        dwell: Duration,
    ) -> Vec<Transition> {
        self.last_seen = Some(now);
        self.last = Some((at, ts));
        let mut holding = std::mem::take(&mut self.holding);
        holding.clear();
        if !index.is_empty() {
            holding.extend(index.holding_in(cell, at));
        }
        let out = self.now_in(index, &holding, online, now, dwell);
        self.holding = holding;
        out
    }

    /// The transitions of being in the zones at `holding` (places in `index`).
    fn now_in(
        &mut self,
        index: &ZoneIndex,
        holding: &[usize],
        online: bool,
        now: Instant,
        dwell: Duration,
    ) -> Vec<Transition> {
        let counts = |kind: ZoneKind| online || kind != ZoneKind::Queue;
        // Most positions leave a driver in the zones it was in: then only dwells can be due.
        // Within one index, places are zones, so this needs no read of the zones themselves.
        let unchanged = self.places_in == Some(index.id())
            && self.inside.len() == holding.len()
            && holding.iter().all(|&place| {
                self.inside
                    .iter()
                    .any(|stay| stay.place == place && counts(stay.kind))
            });
        if unchanged {
            return self.dwells(now, dwell);
        }
        self.places_in = Some(index.id());
        let zones: Vec<(usize, &Zone)> = holding.iter().map(|&p| (p, index.zone(p))).collect();
        let mut out = Vec::new();
        self.inside.retain_mut(|stay| {
            let holds = zones.iter().find(|(_, zone)| zone.zone_id == stay.zone_id);
            let reason = match holds {
                Some(&(place, zone)) if counts(zone.kind) => {
                    stay.place = place;
                    return true;
                }
                Some(_) => ExitReason::Offline,
                None if index.holds(stay.zone_id) => ExitReason::Left,
                None => ExitReason::ZoneDeleted,
            };
            out.push(Transition {
                transition: ZoneTransition::Exit(reason),
                zone_id: stay.zone_id,
                name: stay.name.clone(),
                kind: stay.kind,
            });
            false
        });
        for (place, zone) in zones {
            if !counts(zone.kind) || self.inside.iter().any(|s| s.zone_id == zone.zone_id) {
                continue;
            }
            self.inside.push(Stay {
                zone_id: zone.zone_id,
                place,
                name: zone.name.clone(),
                kind: zone.kind,
                since: now,
                dwelt: false,
            });
            out.push(Transition {
                transition: ZoneTransition::Enter,
                zone_id: zone.zone_id,
                name: zone.name.clone(),
                kind: zone.kind,
            });
        }
        out.extend(self.dwells(now, dwell));
        out
    }

    /// The dwells due at `now`.
    pub fn dwells(&mut self, now: Instant, dwell: Duration) -> Vec<Transition> {
        let mut out = Vec::new();
        for stay in &mut self.inside {
            if !stay.dwelt && now.duration_since(stay.since) >= dwell {
                stay.dwelt = true;
                out.push(Transition {
                    transition: ZoneTransition::Dwell,
                    zone_id: stay.zone_id,
                    name: stay.name.clone(),
                    kind: stay.kind,
                });
            }
        }
        out
    }

    /// Leaves every zone, for `reason`.
    pub fn leave_all(&mut self, reason: ExitReason) -> Vec<Transition> {
        self.inside
            .drain(..)
            .map(|stay| Transition {
                transition: ZoneTransition::Exit(reason),
                zone_id: stay.zone_id,
                name: stay.name,
                kind: stay.kind,
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.inside.is_empty()
    }

    /// Whether it has been silent for `stale_after` at `now`.
    pub fn is_stale(&self, now: Instant, stale_after: Duration) -> bool {
        self.last_seen
            .is_none_or(|seen| now.duration_since(seen) >= stale_after)
    }
}

/// The zones in force here and every driver's place in them.
#[derive(Debug)]
pub struct Tracking {
    settings: TrackingSettings,
    zones: RwLock<(i64, Arc<ZoneIndex>)>,
    /// The [`ZoneIndex::id`] of the zones in force: what a session checks its driver's copy
    /// of them against, with a read that (unlike taking the lock) writes nothing that the
    /// other threads' sessions read too.
    in_force: AtomicU64,
    /// Every driver that reported here in the last [`TrackingSettings::stale_after`], for the
    /// sweep: in shards so that sessions attaching on different threads seldom wait for each
    /// other. A session keeps its driver's entry ([`Tracked`]) and updates it directly.
    drivers: Vec<Mutex<HashMap<String, Tracked>>>,
    shards_hasher: std::collections::hash_map::RandomState,
    events: mpsc::Sender<ZoneEvent>,
}

/// A driver's zones, shared by its session, which updates them with every position, and the
/// tracker's sweep.
pub type Tracked = Arc<Mutex<DriverZones>>;

/// Shards of [`Tracking`]'s map of drivers.
const SHARDS: usize = 16;

impl Tracking {
    /// The tracker, and the receiving end of its events for [`record`].
    pub fn new(settings: TrackingSettings) -> (Self, mpsc::Receiver<ZoneEvent>) {
        let (events, receiver) = mpsc::channel(settings.queue.max(1));
        let index = Arc::new(ZoneIndex::default());
        let tracking = Self {
            settings,
            in_force: AtomicU64::new(index.id()),
            zones: RwLock::new((-1, index)),
            drivers: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shards_hasher: Default::default(),
            events,
        };
        (tracking, receiver)
    }

    pub fn settings(&self) -> &TrackingSettings {
        &self.settings
    }

    /// The zones in force here.
    pub fn index(&self) -> Arc<ZoneIndex> {
        self.zones.read().expect("zones lock").1.clone()
    }

    fn generation(&self) -> i64 {
        self.zones.read().expect("zones lock").0
    }

    /// Takes `driver`'s accepted position, `at` in the index cell `cell` (from the gateway's
    /// own location of it); a driver that is not `online` leaves its queue zones and enters
    /// none. `held` is the session's hold on the driver's zones: taken at its first position
    /// here, and again after the sweep dropped it as stale.
    pub fn observe(
        &self,
        held: &mut Option<Tracked>,
        driver: &str,
        (at, cell): (Point, CellIndex),
        ts: UnixMillis,
        online: bool,
    ) {
        let in_force = self.in_force.load(Ordering::Acquire);
        let transitions = loop {
            let tracked = held.get_or_insert_with(|| self.attach(driver));
            let mut state = tracked.lock().expect("tracking lock");
            if state.detached {
                drop(state);
                *held = None;
                continue;
            }
            let index = match state.index.take() {
                Some(index) if index.id() == in_force => index,
                _ => self.index(),
            };
            let position = (at, Some(cell), ts);
            let now = Instant::now();
            let transitions = state.observe(&index, position, online, now, self.settings.dwell);
            state.index = Some(index);
            break transitions;
        };
        for transition in transitions {
            self.send(driver, transition, ts, Some(at));
        }
    }

    /// `driver`'s zones, in the tracker's map from now until the sweep finds it stale.
    fn attach(&self, driver: &str) -> Tracked {
        let mut drivers = self.shard(driver).lock().expect("tracking lock");
        drivers.entry(driver.to_owned()).or_default().clone()
    }

    /// The part of the drivers' map `driver` is in.
    fn shard(&self, driver: &str) -> &Mutex<HashMap<String, Tracked>> {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = self.shards_hasher.build_hasher();
        hasher.write(driver.as_bytes());
        &self.drivers[hasher.finish() as usize % self.drivers.len()]
    }

    /// The dwells of drivers that stand still, and the exits of drivers silent for
    /// `stale_after`; `elsewhere` tells whether a driver is connected to another gateway now
    /// (which then takes it over, and nothing is sent).
    pub fn sweep(&self, now: Instant, elsewhere: impl Fn(&str) -> bool) {
        let mut out = Vec::new();
        for shard in &self.drivers {
            let mut drivers = shard.lock().expect("tracking lock");
            drivers.retain(|driver, tracked| {
                let mut zones = tracked.lock().expect("tracking lock");
                let (at, ts) = zones
                    .last
                    .map_or((None, protocol::time::now_ms()), |(at, ts)| (Some(at), ts));
                if zones.is_stale(now, self.settings.stale_after) {
                    zones.detached = true;
                    if !zones.is_empty() && !elsewhere(driver) {
                        for transition in zones.leave_all(ExitReason::Stale) {
                            out.push((driver.clone(), transition, protocol::time::now_ms(), at));
                        }
                    }
                    return false;
                }
                for transition in zones.dwells(now, self.settings.dwell) {
                    out.push((driver.clone(), transition, ts, at));
                }
                true
            });
        }
        for (driver, transition, ts, at) in out {
            self.send(&driver, transition, ts, at);
        }
    }

    fn send(&self, driver: &str, transition: Transition, at: UnixMillis, position: Option<Point>) {
        let kind = match transition.transition {
            ZoneTransition::Enter => "zone.enter",
            ZoneTransition::Exit(_) => "zone.exit",
            ZoneTransition::Dwell => "zone.dwell",
        };
        let event = ZoneEvent {
            id: Uuid::new_v4(),
            transition: transition.transition,
            driver_id: driver.to_owned(),
            zone_id: transition.zone_id,
            zone_name: transition.name,
            zone_kind: transition.kind,
            at,
            position,
        };
        if self.events.try_send(event).is_ok() {
            metrics::counter!(m::ZONE_EVENTS, "type" => kind).increment(1);
        } else {
            metrics::counter!(m::ZONE_EVENTS_DROPPED).increment(1);
            tracing::warn!(
                driver,
                kind,
                "zone event dropped: the queue to the trips service is full"
            );
        }
    }

    /// Puts `zones` at `generation` in force.
    pub fn replace(&self, generation: i64, index: ZoneIndex) {
        let mut zones = self.zones.write().expect("zones lock");
        if generation > zones.0 {
            metrics::gauge!(m::ZONES).set(index.len() as f64);
            self.in_force.store(index.id(), Ordering::Release);
            *zones = (generation, Arc::new(index));
        }
    }
}

/// Sweeps every second until `stop`.
pub async fn sweep(
    tracking: Arc<Tracking>,
    directory: Arc<kit::presence::Directory>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        tracking.sweep(now, |driver| {
            directory
                .gateway_of(protocol::client::Role::Driver, driver, now)
                .is_some()
        });
    }
}

/// Sends the tracker's events to the trips service until `stop`, in order, each batch retried
/// until it is stored; at the stop, what is queued gets a few seconds more.
pub async fn record(bus: Bus, mut events: mpsc::Receiver<ZoneEvent>, stop: CancellationToken) {
    const BATCH: usize = 500;
    const TIMEOUT: Duration = Duration::from_secs(5);
    let fresh = || kit::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut backoff = fresh();
    let mut batch: Vec<ZoneEvent> = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if batch.is_empty() {
            let first = tokio::select! {
                _ = stop.cancelled(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                    continue;
                }
                event = events.recv() => event,
                _ = tokio::time::sleep(Duration::from_millis(100)), if deadline.is_some() => None,
            };
            let Some(first) = first else {
                return;
            };
            batch.push(first);
            while batch.len() < BATCH {
                match events.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            tracing::warn!(
                events = batch.len() + events.len(),
                "zone events not recorded before the stop"
            );
            return;
        }
        let reply: Result<RecordReply, _> = bus
            .request(bus.subjects.tracking_record(), &batch, TIMEOUT)
            .await;
        match reply {
            Ok(Ok(_)) => {
                batch.clear();
                backoff = fresh();
            }
            Ok(Err(error)) => {
                metrics::counter!(m::ZONE_RECORD_FAILURES).increment(1);
                tracing::warn!(
                    code = error.code.as_str(),
                    message = error.message,
                    "zone events not recorded; retrying"
                );
                backoff.wait().await;
            }
            Err(error) => {
                metrics::counter!(m::ZONE_RECORD_FAILURES).increment(1);
                tracing::warn!(%error, "zone events not recorded; retrying");
                backoff.wait().await;
            }
        }
    }
}

/// Keeps the zones current until `stop`.
pub async fn follow(bus: Bus, tracking: Arc<Tracking>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(tracking.settings.reload_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match fetch(&bus, tracking.generation()).await {
            Ok(Some((generation, zones))) => {
                let (index, refused) =
                    tokio::task::spawn_blocking(move || ZoneIndex::build(zones, usize::MAX))
                        .await
                        .expect("indexing zones does not panic");
                for (zone_id, error) in refused {
                    tracing::warn!(%zone_id, %error, "a zone does not pass its checks; left out");
                }
                tracing::info!(generation, zones = index.len(), "zones reloaded");
                tracking.replace(generation, index);
            }
            Ok(None) => {}
            Err(error) => tracing::debug!(error, "zones not reloaded; keeping the last ones"),
        }
    }
}

/// The zones, when their generation is newer than `known`.
async fn fetch(bus: &Bus, known: i64) -> Result<Option<(i64, Vec<Zone>)>, String> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let mut zones = Vec::new();
    let mut after = None;
    let mut at = None;
    loop {
        let reply = bus.query(&TripQuery::Zones { known, after }, TIMEOUT).await;
        let (generation, page, more) = match reply {
            QueryReply::Zones {
                generation,
                zones,
                more,
            } => (generation, zones, more),
            QueryReply::Error(error) => return Err(error.message),
            _ => return Err("an unexpected reply to the zones query".into()),
        };
        // A replica that has not loaded the newest zones yet is not listened to.
        if generation <= known {
            return Ok(None);
        }
        // Pages of different generations (from different replicas) do not mix.
        if at.is_some_and(|at| at != generation) {
            return Err("the zones changed while they were read".into());
        }
        at = Some(generation);
        after = page.last().map(|zone| zone.zone_id);
        for record in page {
            let geometry = serde_json::from_str(&record.geometry)
                .map_err(|e| format!("zone {} geometry: {e}", record.zone_id))?;
            zones.push(Zone {
                zone_id: record.zone_id,
                name: record.name,
                kind: record.kind,
                geometry,
                metadata: serde_json::Value::Null,
                version: record.version,
                updated_at: 0,
            });
        }
        if !more {
            return Ok(Some((generation, zones)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A square of `half` degrees around (52.5, 13.4).
    fn square(id: u128, half: f64) -> Zone {
        let (lat, lng) = (52.5, 13.4);
        Zone {
            zone_id: Uuid::from_u128(id),
            name: format!("zone {id}"),
            kind: ZoneKind::Watch,
            geometry: json!({"type": "Polygon", "coordinates": [[
                [lng - half, lat - half], [lng + half, lat - half],
                [lng + half, lat + half], [lng - half, lat + half], [lng - half, lat - half]
            ]]}),
            metadata: json!({}),
            version: 1,
            updated_at: 0,
        }
    }

    fn index(zones: Vec<Zone>) -> ZoneIndex {
        let (index, refused) = ZoneIndex::build(zones, 100);
        assert!(refused.is_empty());
        index
    }

    fn cell_of(at: Point) -> Option<CellIndex> {
        h3o::LatLng::new(at.lat, at.lng)
            .ok()
            .map(|ll| ll.to_cell(protocol::zone::INDEX_RESOLUTION))
    }

    fn step(
        zones: &mut DriverZones,
        index: &ZoneIndex,
        at: Point,
        now: Instant,
        dwell: Duration,
    ) -> Vec<ZoneTransition> {
        zones
            .observe(index, (at, cell_of(at), 0), true, now, dwell)
            .into_iter()
            .map(|t| t.transition)
            .collect()
    }

    #[test]
    fn each_crossing_is_one_event_even_zig_zagging_on_the_edge() {
        let index = index(vec![square(1, 0.01)]);
        let edge_lng = 13.41;
        let (inside, outside) = (
            Point::new(52.5, edge_lng - 1e-6),
            Point::new(52.5, edge_lng + 1e-6),
        );
        let mut zones = DriverZones::default();
        let t0 = Instant::now();
        let long = Duration::from_secs(3600);
        assert!(step(&mut zones, &index, outside, t0, long).is_empty());
        let mut seen = Vec::new();
        for i in 0..10 {
            let at = if i % 2 == 0 { inside } else { outside };
            seen.extend(step(&mut zones, &index, at, t0, long));
            // The same side again says nothing.
            assert!(step(&mut zones, &index, at, t0, long).is_empty());
        }
        let expected: Vec<ZoneTransition> = (0..10)
            .map(|i| {
                if i % 2 == 0 {
                    ZoneTransition::Enter
                } else {
                    ZoneTransition::Exit(ExitReason::Left)
                }
            })
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn dwell_once_per_stay_and_a_redrawn_or_deleted_zone_is_left() {
        let dwell = Duration::from_secs(60);
        let before = index(vec![square(1, 0.01)]);
        let mut zones = DriverZones::default();
        let t0 = Instant::now();
        let centre = Point::new(52.5, 13.4);
        assert_eq!(
            step(&mut zones, &before, centre, t0, dwell),
            [ZoneTransition::Enter]
        );
        assert!(
            step(
                &mut zones,
                &before,
                centre,
                t0 + Duration::from_secs(59),
                dwell
            )
            .is_empty()
        );
        assert_eq!(
            step(
                &mut zones,
                &before,
                centre,
                t0 + Duration::from_secs(60),
                dwell
            ),
            [ZoneTransition::Dwell]
        );
        assert!(
            step(
                &mut zones,
                &before,
                centre,
                t0 + Duration::from_secs(600),
                dwell
            )
            .is_empty()
        );
        // Redrawn smaller, the driver now outside it: it has left.
        let near = Point::new(52.5, 13.405);
        assert!(step(&mut zones, &before, near, t0, dwell).is_empty());
        let redrawn = index(vec![square(1, 0.001)]);
        assert_eq!(
            step(&mut zones, &redrawn, near, t0, dwell),
            [ZoneTransition::Exit(ExitReason::Left)]
        );
        // Back in, then the zone is deleted.
        assert_eq!(
            step(&mut zones, &redrawn, centre, t0, dwell),
            [ZoneTransition::Enter]
        );
        let none = index(vec![]);
        assert_eq!(
            step(&mut zones, &none, centre, t0, dwell),
            [ZoneTransition::Exit(ExitReason::ZoneDeleted)]
        );
        assert!(zones.is_empty());
    }

    #[test]
    fn moving_between_zones_exits_before_it_enters() {
        let west = square(1, 0.01);
        let mut east = square(2, 0.01);
        east.geometry = json!({"type": "Polygon", "coordinates": [[
            [13.41, 52.49], [13.43, 52.49], [13.43, 52.51], [13.41, 52.51], [13.41, 52.49]
        ]]});
        let index = index(vec![west, east]);
        let mut zones = DriverZones::default();
        let t0 = Instant::now();
        let long = Duration::from_secs(3600);
        step(&mut zones, &index, Point::new(52.5, 13.405), t0, long);
        let east_side = Point::new(52.5, 13.42);
        let moved = zones.observe(&index, (east_side, cell_of(east_side), 0), true, t0, long);
        assert_eq!(moved.len(), 2);
        assert_eq!(
            (moved[0].transition, moved[0].zone_id),
            (ZoneTransition::Exit(ExitReason::Left), Uuid::from_u128(1))
        );
        assert_eq!(
            (moved[1].transition, moved[1].zone_id),
            (ZoneTransition::Enter, Uuid::from_u128(2))
        );
    }

    #[test]
    fn a_new_index_with_zones_in_other_places_is_compared_by_zone() {
        // The same two zones, listed the other way round: the driver moves from the first
        // zone to the second, which takes the first one's place in the new index.
        let west = square(1, 0.01);
        let mut east = square(2, 0.01);
        east.geometry = json!({"type": "Polygon", "coordinates": [[
            [13.41, 52.49], [13.43, 52.49], [13.43, 52.51], [13.41, 52.51], [13.41, 52.49]
        ]]});
        let before = index(vec![west.clone(), east.clone()]);
        let after = index(vec![east, west]);
        let mut zones = DriverZones::default();
        let t0 = Instant::now();
        let long = Duration::from_secs(3600);
        assert_eq!(
            step(&mut zones, &before, Point::new(52.5, 13.405), t0, long),
            [ZoneTransition::Enter]
        );
        assert_eq!(
            step(&mut zones, &after, Point::new(52.5, 13.42), t0, long),
            [
                ZoneTransition::Exit(ExitReason::Left),
                ZoneTransition::Enter
            ]
        );
        assert_eq!(zones.inside.len(), 1);
        assert_eq!(zones.inside[0].zone_id, Uuid::from_u128(2));
        // And staying there says nothing more.
        assert!(step(&mut zones, &after, Point::new(52.5, 13.42), t0, long).is_empty());
    }

    #[test]
    fn going_offline_leaves_a_queue_zone_and_coming_back_joins_it_again() {
        let mut queue = square(1, 0.01);
        queue.kind = ZoneKind::Queue;
        let index = index(vec![queue, square(2, 0.02)]);
        let mut zones = DriverZones::default();
        let t0 = Instant::now();
        let long = Duration::from_secs(3600);
        let centre = Point::new(52.5, 13.4);
        let mut step = |online: bool| -> Vec<(ZoneTransition, u128)> {
            zones
                .observe(&index, (centre, cell_of(centre), 0), online, t0, long)
                .into_iter()
                .map(|t| (t.transition, t.zone_id.as_u128()))
                .collect()
        };
        let mut entered = step(true);
        entered.sort_by_key(|(_, zone)| *zone);
        assert_eq!(
            entered,
            [(ZoneTransition::Enter, 1), (ZoneTransition::Enter, 2)]
        );
        // Offline: out of the queue, still in the watched zone.
        assert_eq!(
            step(false),
            [(ZoneTransition::Exit(ExitReason::Offline), 1)]
        );
        assert!(step(false).is_empty());
        assert_eq!(step(true), [(ZoneTransition::Enter, 1)]);
    }

    /// A tracker with one zone, a stale time of 60 s and no dwell within a test.
    fn one_zone_tracker() -> (Tracking, mpsc::Receiver<ZoneEvent>) {
        let settings = TrackingSettings {
            stale_after: Duration::from_secs(60),
            dwell: Duration::from_secs(3600),
            ..Default::default()
        };
        let (tracking, events) = Tracking::new(settings);
        tracking.replace(1, index(vec![square(1, 0.01)]));
        (tracking, events)
    }

    #[test]
    fn a_silent_driver_leaves_unless_another_gateway_has_it() {
        let (tracking, mut events) = one_zone_tracker();
        let at = Point::new(52.5, 13.4);
        let cell = cell_of(at).unwrap();
        tracking.observe(&mut None, "here", (at, cell), 1, true);
        tracking.observe(&mut None, "moved", (at, cell), 1, true);
        let first: Vec<ZoneEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|e| e.transition == ZoneTransition::Enter));
        let later = Instant::now() + Duration::from_secs(61);
        tracking.sweep(later, |driver| driver == "moved");
        let swept: Vec<ZoneEvent> = std::iter::from_fn(|| events.try_recv().ok()).collect();
        assert_eq!(swept.len(), 1, "{swept:?}");
        assert_eq!(swept[0].driver_id, "here");
        assert_eq!(swept[0].transition, ZoneTransition::Exit(ExitReason::Stale));
        assert!(
            tracking
                .drivers
                .iter()
                .all(|s| s.lock().unwrap().is_empty())
        );
    }

    #[test]
    fn a_session_swept_out_as_stale_enters_again_when_it_reports() {
        let (tracking, mut events) = one_zone_tracker();
        let at = Point::new(52.5, 13.4);
        let cell = cell_of(at).unwrap();
        let mut held = None;
        let mut drain = || -> Vec<ZoneTransition> {
            std::iter::from_fn(|| events.try_recv().ok())
                .map(|e| e.transition)
                .collect()
        };
        tracking.observe(&mut held, "quiet", (at, cell), 1, true);
        tracking.observe(&mut held, "quiet", (at, cell), 2, true);
        assert_eq!(drain(), [ZoneTransition::Enter]);
        let first = held.clone().expect("the session holds its zones");
        tracking.sweep(Instant::now() + Duration::from_secs(61), |_| false);
        assert_eq!(drain(), [ZoneTransition::Exit(ExitReason::Stale)]);
        assert!(first.lock().unwrap().detached);
        // Its next position attaches afresh and enters again.
        tracking.observe(&mut held, "quiet", (at, cell), 3, true);
        assert_eq!(drain(), [ZoneTransition::Enter]);
        let again = held.expect("attached again");
        assert!(!Arc::ptr_eq(&first, &again));
        let shard = tracking.shard("quiet").lock().unwrap();
        assert!(Arc::ptr_eq(&shard["quiet"], &again));
    }
}
