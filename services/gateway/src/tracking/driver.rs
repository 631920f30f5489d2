//! One driver's zones: which it is in and since when, and the transitions each position
//! brings (`enter` for each new one, `exit` for each it left, `dwell` once it has been inside
//! long enough), compared by zone across the indexes that replace each other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use h3o::CellIndex;
use protocol::Point;
use protocol::bus::ZoneTransition;
use protocol::events::ExitReason;
use protocol::time::UnixMillis;
use protocol::zone::{Zone, ZoneIndex, ZoneKind};
use uuid::Uuid;

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
    pub(super) last: Option<(Point, UnixMillis)>,
    /// Swept out of the tracker as stale: its session attaches afresh.
    pub(super) detached: bool,
    /// The zones its last position was taken against, kept until others are in force.
    pub(super) index: Option<Arc<ZoneIndex>>,
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::tracking::tests::{cell_of, index, square};

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
}
