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
    name: String,
    kind: ZoneKind,
    since: Instant,
    dwelt: bool,
}

/// One driver's zones.
#[derive(Debug, Default)]
pub struct DriverZones {
    inside: HashMap<Uuid, Stay>,
    last_seen: Option<Instant>,
    /// Where and when (the driver's clock) it last reported.
    last: Option<(Point, UnixMillis)>,
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
    /// Takes a position at `at` (the driver's clock `ts`, received at `now`) inside the zones
    /// `containing` (of `index`): the exits, then the enters, then the dwells it brings. A
    /// driver that is not `online` is in no queue zone.
    pub fn observe(
        &mut self,
        index: &ZoneIndex,
        containing: &[&Zone],
        online: bool,
        (at, ts): (Point, UnixMillis),
        now: Instant,
        dwell: Duration,
    ) -> Vec<Transition> {
        self.last_seen = Some(now);
        self.last = Some((at, ts));
        let counts = |zone: &Zone| online || zone.kind != ZoneKind::Queue;
        // Most positions leave a driver in the zones it was in: then only dwells can be due.
        let unchanged = self.inside.len() == containing.len()
            && containing
                .iter()
                .all(|zone| counts(zone) && self.inside.contains_key(&zone.zone_id));
        if unchanged {
            return self.dwells(now, dwell);
        }
        let mut out = Vec::new();
        self.inside.retain(|zone_id, stay| {
            let holds = containing.iter().find(|zone| zone.zone_id == *zone_id);
            if holds.is_some_and(|zone| counts(zone)) {
                return true;
            }
            let reason = if holds.is_some() {
                ExitReason::Offline
            } else if index.holds(*zone_id) {
                ExitReason::Left
            } else {
                ExitReason::ZoneDeleted
            };
            out.push(Transition {
                transition: ZoneTransition::Exit(reason),
                zone_id: *zone_id,
                name: stay.name.clone(),
                kind: stay.kind,
            });
            false
        });
        for zone in containing {
            if self.inside.contains_key(&zone.zone_id) || !counts(zone) {
                continue;
            }
            self.inside.insert(
                zone.zone_id,
                Stay {
                    name: zone.name.clone(),
                    kind: zone.kind,
                    since: now,
                    dwelt: false,
                },
            );
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
        for (zone_id, stay) in &mut self.inside {
            if !stay.dwelt && now.duration_since(stay.since) >= dwell {
                stay.dwelt = true;
                out.push(Transition {
                    transition: ZoneTransition::Dwell,
                    zone_id: *zone_id,
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
            .drain()
            .map(|(zone_id, stay)| Transition {
                transition: ZoneTransition::Exit(reason),
                zone_id,
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
    /// Drivers inside any zone, in shards so that sessions on different threads seldom wait
    /// for each other.
    drivers: Vec<Mutex<HashMap<String, DriverZones>>>,
    shards_hasher: std::collections::hash_map::RandomState,
    events: mpsc::Sender<ZoneEvent>,
}

/// Shards of [`Tracking`]'s map of drivers.
const SHARDS: usize = 16;

impl Tracking {
    /// The tracker, and the receiving end of its events for [`record`].
    pub fn new(settings: TrackingSettings) -> (Self, mpsc::Receiver<ZoneEvent>) {
        let (events, receiver) = mpsc::channel(settings.queue.max(1));
        let tracking = Self {
            settings,
            zones: RwLock::new((-1, Arc::default())),
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
    /// none.
    pub fn observe(
        &self,
        driver: &str,
        (at, cell): (Point, CellIndex),
        ts: UnixMillis,
        online: bool,
    ) {
        let transitions = {
            let zones = self.zones.read().expect("zones lock");
            let index = &zones.1;
            let containing: Vec<&Zone> = if index.is_empty() {
                Vec::new()
            } else {
                index.containing_in(Some(cell), at).collect()
            };
            let mut drivers = self.shard(driver).lock().expect("tracking lock");
            let known = drivers.get_mut(driver);
            if containing.is_empty() && known.is_none() {
                return;
            }
            let now = Instant::now();
            let dwell = self.settings.dwell;
            match known {
                Some(zones) => {
                    let transitions =
                        zones.observe(index, &containing, online, (at, ts), now, dwell);
                    if zones.is_empty() {
                        drivers.remove(driver);
                    }
                    transitions
                }
                None => {
                    let mut zones = DriverZones::default();
                    let transitions =
                        zones.observe(index, &containing, online, (at, ts), now, dwell);
                    if !zones.is_empty() {
                        drivers.insert(driver.to_owned(), zones);
                    }
                    transitions
                }
            }
        };
        for transition in transitions {
            self.send(driver, transition, ts, Some(at));
        }
    }

    /// The part of the drivers' map `driver` is in.
    fn shard(&self, driver: &str) -> &Mutex<HashMap<String, DriverZones>> {
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
            drivers.retain(|driver, zones| {
                let (at, ts) = zones
                    .last
                    .map_or((None, protocol::time::now_ms()), |(at, ts)| (Some(at), ts));
                if zones.is_stale(now, self.settings.stale_after) {
                    if !elsewhere(driver) {
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

    fn step(
        zones: &mut DriverZones,
        index: &ZoneIndex,
        at: Point,
        now: Instant,
        dwell: Duration,
    ) -> Vec<ZoneTransition> {
        let containing: Vec<&Zone> = index.containing(at).collect();
        zones
            .observe(index, &containing, true, (at, 0), now, dwell)
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
        let containing: Vec<&Zone> = index.containing(Point::new(52.5, 13.42)).collect();
        let moved = zones.observe(
            &index,
            &containing,
            true,
            (Point::new(52.5, 13.42), 0),
            t0,
            long,
        );
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
    fn going_offline_leaves_a_queue_zone_and_coming_back_joins_it_again() {
        let mut queue = square(1, 0.01);
        queue.kind = ZoneKind::Queue;
        let index = index(vec![queue, square(2, 0.02)]);
        let mut zones = DriverZones::default();
        let t0 = Instant::now();
        let long = Duration::from_secs(3600);
        let centre = Point::new(52.5, 13.4);
        let containing: Vec<&Zone> = index.containing(centre).collect();
        let mut step = |online: bool| -> Vec<(ZoneTransition, u128)> {
            zones
                .observe(&index, &containing, online, (centre, 0), t0, long)
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

    #[test]
    fn a_silent_driver_leaves_unless_another_gateway_has_it() {
        let settings = TrackingSettings {
            stale_after: Duration::from_secs(60),
            dwell: Duration::from_secs(3600),
            ..Default::default()
        };
        let (tracking, mut events) = Tracking::new(settings);
        tracking.replace(1, index(vec![square(1, 0.01)]));
        let at = Point::new(52.5, 13.4);
        let cell = h3o::LatLng::new(at.lat, at.lng)
            .unwrap()
            .to_cell(protocol::zone::INDEX_RESOLUTION);
        tracking.observe("here", (at, cell), 1, true);
        tracking.observe("moved", (at, cell), 1, true);
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
}
