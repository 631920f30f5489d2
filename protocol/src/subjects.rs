//! Every NATS subject and queue group, built here from typed parts under one prefix.
//!
//! | subject | payload | who publishes | who subscribes |
//! |---|---|---|---|
//! | `{p}.loc.{region}.{cell}` | [`bus::Position`] | gateway | matchers (region + halo), dispatcher viewports |
//! | `{p}.req.{region}` | [`bus::RideRequest`] | trips (outbox, sweeper) | matchers of the region, queue group |
//! | `{p}.trips.cmd` | [`bus::TripCommand`] | gateway, matchers | trips, queue group; replies [`bus::TripReply`] |
//! | `{p}.trips.query` | [`bus::TripQuery`] | gateway, matchers | trips, queue group; replies [`bus::QueryReply`] |
//! | `{p}.evt.{region}` | [`bus::TripEvent`] | trips (outbox) | matchers, gateways (dispatcher feed) |
//! | `{p}.drivers.status` | [`bus::DriverStatus`] | trips (outbox) | matchers |
//! | `{p}.gw.{gateway}.{role}.{id}` | JSON text of a [`client::ServerMessage`] | trips (outbox), gateways (a rider's view of its driver), when they know the client's gateway | that gateway |
//! | `{p}.user.{role}.{id}` | the same | the same, when they do not; a gateway for a client that left it | every gateway |
//! | `{p}.presence` | [`bus::Presence`] | gateways | trips, gateways (where clients are) |
//! | `{p}.presence.sync` | empty | trips, gateways, on (re)connecting | gateways (announce all their clients) |
//! | `{p}.agg.{region}` | [`bus::CellCounts`] | matchers | gateways (zoomed-out dispatcher views) |
//! | `{p}.crumbs` | [`bus::Position`] | gateway, for drivers on a trip | trips (route breadcrumbs) |
//! | `{p}.tracking.record` | [`bus::ZoneEvent`]s | gateways (zone events they detect) | trips, queue group; replies [`bus::RecordReply`] |
//! | `{p}.events.{category}.{action}` | JSON text of an [`events::Event`], such as `zone.enter` on `{p}.events.zone.enter` | trips (outbox) | integrators; the webhook queue is filled in the same transaction |
//! | `{p}.hooks.due` | empty | trips (outbox), after queueing webhook deliveries | trips, the replica delivering webhooks |
//! | `{p}.zones.changed` | [`bus::ZonesChanged`] | trips, after a zone change commits | trips, gateways (reload the zones now) |
//!
//! [`bus::Position`]: crate::bus::Position
//! [`bus::ZonesChanged`]: crate::bus::ZonesChanged
//! [`bus::RideRequest`]: crate::bus::RideRequest
//! [`bus::TripCommand`]: crate::bus::TripCommand
//! [`bus::TripReply`]: crate::bus::TripReply
//! [`bus::TripQuery`]: crate::bus::TripQuery
//! [`bus::QueryReply`]: crate::bus::QueryReply
//! [`bus::TripEvent`]: crate::bus::TripEvent
//! [`bus::DriverStatus`]: crate::bus::DriverStatus
//! [`client::ServerMessage`]: crate::client::ServerMessage
//! [`bus::CellCounts`]: crate::bus::CellCounts
//! [`bus::Presence`]: crate::bus::Presence
//! [`bus::ZoneEvent`]: crate::bus::ZoneEvent
//! [`bus::RecordReply`]: crate::bus::RecordReply
//! [`events::Event`]: crate::events::Event

use h3o::CellIndex;

use crate::client::Role;
use crate::events::EventType;

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subject prefix {0:?} must be dot-separated tokens of letters, digits, _ and -")]
pub struct BadPrefix(pub String);

/// Builds subjects under one prefix, so tests and tenants can share a NATS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: "dispatch".into(),
        }
    }
}

impl Subjects {
    /// A builder for `prefix`, which must be one or more dot-separated tokens of
    /// `[A-Za-z0-9_-]`.
    pub fn new(prefix: &str) -> Result<Self, BadPrefix> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix.split('.').all(|token| {
                !token.is_empty()
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if ok {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(BadPrefix(prefix.to_owned()))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Positions reported in `cell`, which lies in `region`.
    pub fn location(&self, region: CellIndex, cell: CellIndex) -> String {
        format!("{}.loc.{region}.{cell}", self.prefix)
    }

    /// Every position reported in `region`.
    pub fn location_region(&self, region: CellIndex) -> String {
        format!("{}.loc.{region}.>", self.prefix)
    }

    /// Every position everywhere.
    pub fn location_all(&self) -> String {
        format!("{}.loc.>", self.prefix)
    }

    /// Ride requests to be matched in `region`.
    pub fn ride_requests(&self, region: CellIndex) -> String {
        format!("{}.req.{region}", self.prefix)
    }

    /// The queue group in which a region's matcher replicas share its requests.
    pub fn matcher_queue(&self, region: CellIndex) -> String {
        format!("{}.matcher.{region}", self.prefix)
    }

    /// Commands to the trips service (request/reply).
    pub fn trip_commands(&self) -> String {
        format!("{}.trips.cmd", self.prefix)
    }

    /// Queries to the trips service (request/reply).
    pub fn trip_queries(&self) -> String {
        format!("{}.trips.query", self.prefix)
    }

    /// The queue group of the trips service replicas.
    pub fn trips_queue(&self) -> String {
        format!("{}.trips", self.prefix)
    }

    /// Committed trip transitions in `region`.
    pub fn trip_events(&self, region: CellIndex) -> String {
        format!("{}.evt.{region}", self.prefix)
    }

    /// Committed trip transitions everywhere.
    pub fn trip_events_all(&self) -> String {
        format!("{}.evt.*", self.prefix)
    }

    /// Drivers going online or offline.
    pub fn driver_status(&self) -> String {
        format!("{}.drivers.status", self.prefix)
    }

    /// Messages for one connected client, wherever it is connected. `id` must be a validated
    /// id (no dots or wildcards).
    pub fn user(&self, role: Role, id: &str) -> String {
        format!("{}.user.{}.{id}", self.prefix, role.as_str())
    }

    /// Messages for every connected client; a gateway routes them to its sessions.
    pub fn users_all(&self) -> String {
        format!("{}.user.>", self.prefix)
    }

    /// Messages for one client, addressed to the gateway holding it. `gateway` must be a
    /// validated id.
    pub fn gateway_user(&self, gateway: &str, role: Role, id: &str) -> String {
        format!("{}.gw.{gateway}.{}.{id}", self.prefix, role.as_str())
    }

    /// Messages for every client of one gateway.
    pub fn gateway_users(&self, gateway: &str) -> String {
        format!("{}.gw.{gateway}.>", self.prefix)
    }

    /// The client a [`Self::gateway_user`] subject of `gateway` is for.
    pub fn parse_gateway_user<'a>(
        &self,
        gateway: &str,
        subject: &'a str,
    ) -> Option<(Role, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".gw.")?
            .strip_prefix(gateway)?
            .strip_prefix('.')?;
        parse_client(rest)
    }

    /// Which clients each gateway holds ([`crate::bus::Presence`]).
    pub fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    /// A request to every gateway to announce all its clients again.
    pub fn presence_sync(&self) -> String {
        format!("{}.presence.sync", self.prefix)
    }

    /// The client a [`Self::user`] subject is for.
    pub fn parse_user<'a>(&self, subject: &'a str) -> Option<(Role, &'a str)> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".user.")?;
        parse_client(rest)
    }

    /// Per-cell supply and demand counts of `region`.
    pub fn cell_counts(&self, region: CellIndex) -> String {
        format!("{}.agg.{region}", self.prefix)
    }

    /// Positions of drivers on a trip, recorded as the trip's route.
    pub fn breadcrumbs(&self) -> String {
        format!("{}.crumbs", self.prefix)
    }

    /// Zone events detected by gateways, to be recorded (request/reply).
    pub fn tracking_record(&self) -> String {
        format!("{}.tracking.record", self.prefix)
    }

    /// Integrators' events of type `kind`: `zone.enter` on `{p}.events.zone.enter`.
    pub fn event(&self, kind: EventType) -> String {
        format!("{}.events.{}", self.prefix, kind.as_str())
    }

    /// Every integrators' event.
    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// Whether `subject` is one of [`Self::event`]'s.
    pub fn is_event(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with(".events."))
    }

    /// Webhook deliveries were queued: the delivering replica looks now rather than at its
    /// next poll.
    pub fn hooks_due(&self) -> String {
        format!("{}.hooks.due", self.prefix)
    }

    /// The zones changed: every process holding them reloads now rather than at its next poll.
    pub fn zones_changed(&self) -> String {
        format!("{}.zones.changed", self.prefix)
    }
}

/// `{role}.{id}` of a driver or rider.
fn parse_client(rest: &str) -> Option<(Role, &str)> {
    let (role, id) = rest.split_once('.')?;
    let role = [Role::Driver, Role::Rider]
        .into_iter()
        .find(|r| r.as_str() == role)?;
    (!id.is_empty() && !id.contains('.')).then_some((role, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::{GeoConfig, Point};

    #[test]
    fn prefixes() {
        assert!(Subjects::new("dispatch").is_ok());
        assert!(Subjects::new("test_1.tenant-a").is_ok());
        for bad in ["", ".", "a..b", "a.*", "a.>", "a b", "a.", &"x".repeat(65)] {
            assert!(Subjects::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn snapshot_of_every_subject() {
        let s = Subjects::new("t1").unwrap();
        let (region, cell) = GeoConfig::default()
            .locate(Point::new(52.520_008, 13.404_954))
            .unwrap();
        let all = [
            s.location(region, cell),
            s.location_region(region),
            s.location_all(),
            s.ride_requests(region),
            s.matcher_queue(region),
            s.trip_commands(),
            s.trip_queries(),
            s.trips_queue(),
            s.trip_events(region),
            s.trip_events_all(),
            s.driver_status(),
            s.user(Role::Driver, "driver-7"),
            s.user(Role::Rider, "rider-7"),
            s.users_all(),
            s.gateway_user("gw-1", Role::Rider, "rider-7"),
            s.gateway_users("gw-1"),
            s.presence(),
            s.presence_sync(),
            s.cell_counts(region),
            s.breadcrumbs(),
            s.tracking_record(),
            s.event(EventType::ZoneEnter),
            s.event(EventType::TripCompleted),
            s.events_all(),
            s.hooks_due(),
            s.zones_changed(),
        ];
        insta::assert_snapshot!(all.join("\n"));
        assert!(s.is_event(&s.event(EventType::ZoneDwell)));
        assert!(!s.is_event(&s.trip_events(region)));
        assert!(!s.is_event("t10.events.zone.enter"));
        assert_eq!(
            s.parse_user(&s.user(Role::Rider, "rider-7")),
            Some((Role::Rider, "rider-7"))
        );
        assert_eq!(
            s.parse_gateway_user("gw-1", &s.gateway_user("gw-1", Role::Driver, "d-7")),
            Some((Role::Driver, "d-7"))
        );
        assert_eq!(
            s.parse_gateway_user("gw-2", &s.gateway_user("gw-1", Role::Driver, "d-7")),
            None
        );
        assert_eq!(s.parse_gateway_user("gw", "t1.gw.gw-1.driver.d"), None);
        for bad in [
            "t1.user.rider",
            "t1.user.dispatcher.d",
            "t1.user.rider.a.b",
            "t2.user.rider.r",
        ] {
            assert_eq!(s.parse_user(bad), None, "{bad}");
        }
    }
}
