//! Zone events, detected where positions arrive: the gateway holds the zones and, for each
//! of its drivers inside any, which ones and since when.
//!
//! Every accepted position is looked up in a [`ZoneIndex`] (an H3 cover; the exact
//! point-in-polygon test only in cells on an edge) and compared with the zones the driver was
//! in ([`driver`]: `enter` for each new one, `exit` for each it left, `dwell` once it has been
//! inside for [`TrackingSettings::dwell`]). The [`Tracking`] registry keeps every driver that
//! reported here lately, in shards; a sweep every second sends the dwells of drivers that stand
//! still, and the exits (`stale`) of drivers silent for [`TrackingSettings::stale_after`],
//! unless they are connected to another gateway now, which takes them over.
//!
//! The events go to the trips service on `{p}.tracking.record` ([`record`]), which publishes
//! them and queues their webhooks. The zones come from the trips service too ([`zones`]),
//! followed as every process follows them (`kit::zones`).

mod driver;
mod record;
mod zones;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use h3o::CellIndex;
use protocol::Point;
use protocol::bus::{ZoneEvent, ZoneTransition};
use protocol::events::ExitReason;
use protocol::time::UnixMillis;
use protocol::zone::{ZoneIndex, ZoneSet};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use driver::{DriverZones, Transition};
pub use record::record;
pub use zones::follow;

pub use crate::config::TrackingSettings;
use crate::meters as m;

/// The zones in force here and every driver's place in them.
#[derive(Debug)]
pub struct Tracking {
    settings: TrackingSettings,
    /// The zones in force. A session checks its driver's copy against their
    /// [`ZoneSet::in_force`] id, a read that (unlike taking the lock) writes nothing that the
    /// other threads' sessions read too.
    zones: Arc<ZoneSet>,
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
        let tracking = Self {
            settings,
            zones: Arc::default(),
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
        self.zones.index()
    }

    /// The zones in force here, to follow.
    pub fn zones(&self) -> &Arc<ZoneSet> {
        &self.zones
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
        let in_force = self.zones.in_force();
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

    /// Puts `index` at `generation` in force (the tests' way; the gateway follows the zones).
    #[cfg(test)]
    pub fn replace(&self, generation: i64, index: ZoneIndex) {
        self.zones.replace(generation, index);
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

#[cfg(test)]
pub(crate) mod tests {
    use protocol::zone::{Zone, ZoneKind};

    use super::*;
    use serde_json::json;

    /// A square of `half` degrees around (52.5, 13.4).
    pub(crate) fn square(id: u128, half: f64) -> Zone {
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

    pub(crate) fn index(zones: Vec<Zone>) -> ZoneIndex {
        let (index, refused) = ZoneIndex::build(zones, 100);
        assert!(refused.is_empty());
        index
    }

    pub(crate) fn cell_of(at: Point) -> Option<CellIndex> {
        h3o::LatLng::new(at.lat, at.lng)
            .ok()
            .map(|ll| ll.to_cell(protocol::zone::INDEX_RESOLUTION))
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
