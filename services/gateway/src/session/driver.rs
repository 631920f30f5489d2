//! A driver's part of a session: what the gateway knows of the driver's situation, and its
//! positions, checked, labelled and handed to the [`Publisher`] for its cell's subject (and,
//! on a trip, for the route's breadcrumbs and the rider's view of its driver).

use std::collections::VecDeque;

use bytes::Bytes;
use h3o::CellIndex;
use protocol::Point;
use protocol::bus::Position;
use protocol::client::{Eta, EtaTo, Location, ReportStamp, Role, ServerMessage, VehicleStatus};
use protocol::time::{UnixMillis, now_us};
use protocol::trip::{TripState, TripView, VehicleClass};
use protocol::{ErrorCode, Subjects, codec};
use roads::eta::EtaModel;
use uuid::Uuid;

use super::{Session, ack_text, error_text};
use crate::meters as m;
use crate::publisher::Publisher;

/// What the gateway knows of a driver's situation, to label its positions and route them.
#[derive(Debug, Default)]
pub(super) struct DriverSession {
    pub online: bool,
    pub vehicle_class: Option<VehicleClass>,
    pub capacity: u16,
    /// The trip the driver is offered or carrying out, and the version last seen of it.
    pub trip: Option<HeldTrip>,
    pub trip_version: i64,
    /// The last position taken's stamp.
    last: Option<ReportStamp>,
    /// The latest positions taken from the driver with their `ts`, oldest first, which its
    /// progress reports are checked against (see [`DriverSession::position_at`]).
    recent: VecDeque<(UnixMillis, Point)>,
    /// The driver's zones, which every position taken updates.
    zones: Option<crate::tracking::Tracked>,
}

/// Positions kept per driver for checking progress reports: a minute at one a second.
const RECENT_POSITIONS: usize = 64;

/// What a driver's session keeps of the trip it holds.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HeldTrip {
    pub id: Uuid,
    pub rider: String,
    pub state: TripState,
    pub pickup: Point,
    pub dropoff: Point,
}

impl HeldTrip {
    /// Where the driver heads next and when it should be there, from `at`: the pickup while
    /// it approaches, the dropoff on board; nothing while offered or waiting at the pickup.
    pub fn eta(&self, model: &dyn EtaModel, at: Point) -> Option<Eta> {
        let (to, target) = match self.state {
            TripState::Accepted => (EtaTo::Pickup, self.pickup),
            TripState::InProgress => (EtaTo::Dropoff, self.dropoff),
            _ => return None,
        };
        let seconds = model
            .eta_s(at, target)
            .round()
            .clamp(0.0, f64::from(u32::MAX));
        Some(Eta {
            to,
            seconds: seconds as u32,
        })
    }
}

impl DriverSession {
    /// Where the driver was at `ts` (its clock): the latest position taken at or before it.
    /// `None` when every position this session took is later (the report predates the
    /// session, made before a reconnect), so it cannot be checked. Without `ts`, the latest.
    pub fn position_at(&self, ts: Option<UnixMillis>) -> Option<Point> {
        match ts {
            None => self.recent.back().map(|(_, at)| *at),
            Some(ts) => self
                .recent
                .iter()
                .rev()
                .find(|(taken, _)| *taken <= ts)
                .map(|(_, at)| *at),
        }
    }

    fn remember(&mut self, ts: UnixMillis, at: Point) {
        if self.recent.len() == RECENT_POSITIONS {
            self.recent.pop_front();
        }
        self.recent.push_back((ts, at));
    }

    fn status(&self) -> VehicleStatus {
        match (&self.trip, self.online) {
            (
                Some(HeldTrip {
                    state: TripState::Offered,
                    ..
                }),
                _,
            ) => VehicleStatus::Offered,
            (Some(_), _) => VehicleStatus::OnTrip,
            (None, true) => VehicleStatus::Available,
            (None, false) => VehicleStatus::Offline,
        }
    }

    /// Follows a trip this driver takes part in.
    pub fn observe(&mut self, trip: &TripView, me: &str) {
        let current = self
            .trip
            .as_ref()
            .is_some_and(|held| held.id == trip.trip_id);
        if current && trip.version < self.trip_version {
            // Updates reach us by several paths (command replies, the inbox): older ones lose.
            return;
        }
        let mine = trip.driver_id.as_deref() == Some(me);
        if mine && trip.state.holds_driver() {
            self.trip = Some(HeldTrip {
                id: trip.trip_id,
                rider: trip.rider_id.clone(),
                state: trip.state,
                pickup: trip.pickup,
                dropoff: trip.dropoff,
            });
            self.trip_version = trip.version;
        } else if current {
            self.trip = None;
        }
    }
}

/// What became of one position's publications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Published {
    /// On its cell's subject, for matchers and dispatchers: what the position is for.
    pub location: bool,
    /// On a trip: for the route's breadcrumbs, and for the rider. `None` off a trip.
    pub breadcrumb: Option<bool>,
    pub rider: Option<bool>,
}

/// Hands `position` to `publisher`: on the subject of its cell (`located`: its region and
/// cell), and on a trip (`rider`: the subject of the trip's rider, and the driver's ETA) as a
/// breadcrumb and as the rider's view of its driver.
pub(super) fn publish_position(
    publisher: &Publisher,
    subjects: &Subjects,
    (region, cell): (CellIndex, CellIndex),
    position: &Position,
    rider: Option<(String, Option<Eta>)>,
) -> Published {
    let payload: Bytes = codec::encode(position).into();
    let location = publisher.publish(subjects.location(region, cell), payload.clone());
    let Some((rider, eta)) = rider else {
        return Published {
            location,
            breadcrumb: None,
            rider: None,
        };
    };
    let breadcrumb = publisher.publish(subjects.breadcrumbs(), payload);
    let for_rider = ServerMessage::DriverPosition {
        trip_id: position.trip_id.expect("a position on a trip names it"),
        driver_id: position.driver_id.clone(),
        lat: position.lat,
        lng: position.lng,
        heading: position.heading,
        ts: position.ts,
        eta,
    };
    let rider = publisher.publish(rider, for_rider.to_json().into());
    Published {
        location,
        breadcrumb: Some(breadcrumb),
        rider: Some(rider),
    }
}

impl Session {
    /// Where a message for `rider` goes: this gateway when the rider is here, its gateway when
    /// the directory knows it, every gateway otherwise.
    fn rider_subject(&self, rider: &str) -> String {
        let shared = &self.shared;
        if shared.inboxes.holds(Role::Rider, rider) {
            return shared
                .config
                .subjects
                .gateway_user(&shared.config.id, Role::Rider, rider);
        }
        shared
            .directory
            .subject(Role::Rider, rider, std::time::Instant::now())
    }

    /// A driver's position report: dropped if older than the last one taken, or while NATS is
    /// away; otherwise published, and acknowledged when the driver asked for an ack.
    pub(super) fn location(&self, location: Location) {
        let shared = &self.shared;
        let (located, zone_cell) = match shared
            .config
            .geo
            .locate_with(location.point(), protocol::zone::INDEX_RESOLUTION)
        {
            Ok((region, cell, zone_cell)) => ((region, cell), zone_cell),
            Err(error) => {
                let told = error_text(location.id, error.code(), error.to_string());
                self.out.control(told);
                return;
            }
        };
        let (status, class, capacity, trip) = {
            let mut held = self.driver.lock().expect("driver lock");
            let state = &mut *held;
            let stale = state
                .last
                .is_some_and(|last| !location.stamp().supersedes(last));
            if stale {
                drop(held);
                metrics::counter!(m::POSITIONS_DROPPED, "reason" => "stale").increment(1);
                if location.id.is_some() {
                    self.out.control(error_text(
                        location.id,
                        ErrorCode::StaleUpdate,
                        "older than an update already accepted",
                    ));
                }
                return;
            }
            state.last = Some(location.stamp());
            state.remember(location.ts, location.point());
            let status = state.status();
            // Zones are evaluated for every position taken, whether or not NATS takes it now:
            // their events are queued and recorded once the trips service answers.
            shared.tracking.observe(
                &mut state.zones,
                &self.sender.id,
                (location.point(), zone_cell),
                location.ts,
                status != VehicleStatus::Offline,
            );
            (
                status,
                state.vehicle_class,
                state.capacity,
                state.trip.clone(),
            )
        };
        if shared.nats.connection_state() != async_nats::connection::State::Connected {
            metrics::counter!(m::POSITIONS_DROPPED, "reason" => "nats_down").increment(1);
            if location.id.is_some() {
                self.out.control(error_text(
                    location.id,
                    ErrorCode::Unavailable,
                    "bus unavailable; positions are dropped until it returns",
                ));
            }
            return;
        }
        // Offered is not yet on the trip: the rider sees its driver once it accepts.
        let on_trip = trip.filter(|held| held.state != TripState::Offered);
        let position = Position {
            driver_id: self.sender.id.clone(),
            lat: location.lat,
            lng: location.lng,
            heading: location.heading,
            speed: location.speed,
            accuracy: location.accuracy,
            ts: location.ts,
            seq: location.seq,
            status,
            vehicle_class: class,
            capacity,
            trip_id: on_trip.as_ref().map(|held| held.id),
            received_us: now_us(),
        };
        let rider = on_trip.as_ref().map(|held| {
            let eta = held.eta(shared.config.eta.as_ref(), location.point());
            (self.rider_subject(&held.rider), eta)
        });
        let published = publish_position(
            &shared.publisher,
            &shared.config.subjects,
            located,
            &position,
            rider,
        );
        for (what, taken) in [
            ("breadcrumb", published.breadcrumb),
            ("rider", published.rider),
        ] {
            if taken == Some(false) {
                metrics::counter!(m::FOLLOW_UPS_DROPPED, "what" => what).increment(1);
            }
        }
        // The answer is about the position itself, which the matchers and dashboards got or
        // not; a lost breadcrumb or rider's view is counted above and replaced by the next one.
        if published.location {
            shared.hot.positions_published.increment(1);
            if let Some(id) = location.id {
                self.out.control(ack_text(id));
            }
        } else {
            metrics::counter!(m::POSITIONS_DROPPED, "reason" => "backlog").increment(1);
            if location.id.is_some() {
                self.out.control(error_text(
                    location.id,
                    ErrorCode::Unavailable,
                    "the gateway is behind with publishing; this position was dropped",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Point;

    fn located() -> (CellIndex, CellIndex) {
        protocol::GeoConfig::default()
            .locate(Point::new(52.52, 13.405))
            .unwrap()
    }

    fn position(trip_id: Option<Uuid>) -> Position {
        let at = Point::new(52.52, 13.405);
        Position {
            driver_id: "d1".into(),
            lat: at.lat,
            lng: at.lng,
            heading: None,
            speed: None,
            accuracy: None,
            ts: 1,
            seq: 1,
            status: VehicleStatus::OnTrip,
            vehicle_class: None,
            capacity: 4,
            trip_id,
            received_us: 0,
        }
    }

    #[test]
    fn a_position_that_reached_its_cell_is_published_though_its_follow_ups_were_not() {
        // Room for one publication: the position takes it, breadcrumb and rider find it full.
        let publisher = Publisher::new(1);
        let subjects = Subjects::new("t").unwrap();
        let published = publish_position(
            &publisher,
            &subjects,
            located(),
            &position(Some(Uuid::from_u128(1))),
            Some((subjects.user(Role::Rider, "r1"), None)),
        );
        assert_eq!(
            published,
            Published {
                location: true,
                breadcrumb: Some(false),
                rider: Some(false),
            }
        );
    }

    fn held(state: TripState) -> HeldTrip {
        HeldTrip {
            id: Uuid::from_u128(1),
            rider: "r1".into(),
            state,
            pickup: Point::new(52.52, 13.405),
            dropoff: Point::new(52.53, 13.405),
        }
    }

    #[test]
    fn the_rider_is_told_the_eta_to_the_pickup_then_to_the_dropoff() {
        let model = roads::eta::StraightLine::default();
        let at = Point::new(52.51, 13.405);
        let to_pickup = held(TripState::Accepted).eta(&model, at).unwrap();
        assert_eq!(to_pickup.to, EtaTo::Pickup);
        let expected = model.eta_s(at, Point::new(52.52, 13.405)).round() as u32;
        assert_eq!(to_pickup.seconds, expected);
        let to_dropoff = held(TripState::InProgress).eta(&model, at).unwrap();
        assert_eq!(to_dropoff.to, EtaTo::Dropoff);
        assert!(
            to_dropoff.seconds > to_pickup.seconds,
            "the dropoff lies beyond the pickup"
        );
        for waiting in [TripState::Offered, TripState::Arrived] {
            assert_eq!(held(waiting).eta(&model, at), None, "{waiting}");
        }
    }

    #[test]
    fn the_eta_comes_from_the_configured_model() {
        // One slow road (2 m/s) from the driver to the pickup: far longer than the crow flies.
        let at = Point::new(52.51, 13.405);
        let pickup = Point::new(52.52, 13.405);
        let network = roads::from_segments(vec![at, pickup], &[(0, 1, 2.0), (1, 0, 2.0)]).unwrap();
        let over_roads = roads::eta::Roads(std::sync::Arc::new(network));
        let eta = held(TripState::Accepted).eta(&over_roads, at).unwrap();
        let metres = at.distance_m(&pickup);
        assert!(
            (f64::from(eta.seconds) - metres / 2.0).abs() <= 1.0,
            "{eta:?}"
        );
        let straight = held(TripState::Accepted)
            .eta(&roads::eta::StraightLine::default(), at)
            .unwrap();
        assert!(
            eta.seconds > 2 * straight.seconds,
            "{eta:?} vs {straight:?}"
        );
    }

    #[test]
    fn a_late_report_is_checked_against_where_the_driver_was_when_it_was_made() {
        let mut driver = DriverSession::default();
        assert_eq!(driver.position_at(None), None);
        let at = |i: u32| Point::new(52.52 + f64::from(i) * 0.001, 13.405);
        for i in 0..100u32 {
            driver.remember(1_000 + i64::from(i) * 1_000, at(i));
        }
        // Only the last 64 are kept: positions 36 to 99, taken at 37,000 to 100,000.
        assert_eq!(driver.position_at(None), Some(at(99)));
        assert_eq!(driver.position_at(Some(80_500)), Some(at(79)));
        assert_eq!(driver.position_at(Some(80_000)), Some(at(79)));
        assert_eq!(driver.position_at(Some(1_000_000)), Some(at(99)));
        assert_eq!(driver.position_at(Some(37_000)), Some(at(36)));
        // Made before the oldest position kept (or before this session): not checkable.
        assert_eq!(driver.position_at(Some(36_999)), None);
    }

    #[test]
    fn off_a_trip_only_the_cell_subject_is_published() {
        let publisher = Publisher::new(8);
        let subjects = Subjects::new("t").unwrap();
        let published = publish_position(&publisher, &subjects, located(), &position(None), None);
        assert_eq!(
            published,
            Published {
                location: true,
                breadcrumb: None,
                rider: None,
            }
        );
        let full = Publisher::new(0);
        let dropped = publish_position(&full, &subjects, located(), &position(None), None);
        assert!(!dropped.location);
    }
}
