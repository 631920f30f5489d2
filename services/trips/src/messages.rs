//! What a transition publishes, built as pure functions of the trip before and after: the
//! event for matchers and dashboards, the messages for the rider's and driver's inboxes, the
//! request again for matchers when the trip is back to searching, and the JSON event for
//! integrators. Each says what it is ([`Kind`]: for the bus, for a client, an event and its
//! webhook fields), and is written so to the outbox by the statement that writes the
//! transition ([`crate::outbox`]), to be published after commit.

use protocol::bus::{DriverStatus, RideRequest, TripEvent};
use protocol::client::{Role, ServerMessage};
use protocol::events::{Event, EventType};
use protocol::time::UnixMillis;
use protocol::trip::{Actor, TripState};
use protocol::{Subjects, codec};

use crate::machine::{Change, TripRecord};
use crate::progress::Checked;

/// A message to publish after commit: where it goes, what it is, and its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The subject it is published on; a client's message goes to its gateway's subject
    /// instead when the directory knows which gateway holds the client.
    pub subject: String,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// What a message is, as its outbox row records it.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// For the services on the bus: matchers, dashboards, gateways.
    Bus,
    /// For one client's inbox.
    Client { role: Role, id: String },
    /// For integrators: published, and queued for the webhooks by the statement that writes
    /// it.
    Event(Hook),
}

/// What a webhook delivery of an event needs besides its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Hook {
    pub id: String,
    pub kind: EventType,
    /// Events with the same key reach an endpoint in order ([`Event::ordering_key`]).
    pub ordering_key: String,
    pub at: UnixMillis,
}

impl Outgoing {
    /// A message for the services on the bus.
    pub fn bus(subject: String, payload: Vec<u8>) -> Self {
        Self {
            subject,
            kind: Kind::Bus,
            payload,
        }
    }
}

/// An event for integrators, as JSON on its subject.
pub fn public_event(subjects: &Subjects, event: &Event) -> Outgoing {
    Outgoing {
        subject: subjects.event(event.kind),
        kind: Kind::Event(Hook {
            id: event.id.clone(),
            kind: event.kind,
            ordering_key: event.ordering_key(),
            at: event.at,
        }),
        payload: event.to_json().into_bytes(),
    }
}

/// A server message for one client's inbox.
pub fn to_user(subjects: &Subjects, role: Role, id: &str, message: &ServerMessage) -> Outgoing {
    Outgoing {
        subject: subjects.user(role, id),
        kind: Kind::Client {
            role,
            id: id.to_owned(),
        },
        payload: message.to_json().into_bytes(),
    }
}

/// The request matchers receive for a trip waiting for a driver; `queue_head` is the driver
/// to offer it first (the head of the queue zone its pickup lies in).
pub fn ride_request(
    subjects: &Subjects,
    trip: &TripRecord,
    queue_head: Option<String>,
) -> Outgoing {
    Outgoing::bus(
        subjects.ride_requests(trip.view.region),
        codec::encode(&RideRequest {
            trip: trip.view.clone(),
            excluded_drivers: trip.excluded_drivers.clone(),
            deadline: trip.search_deadline,
            attempt: trip.dispatch_attempts.max(1) as u32,
            queue_head,
        }),
    )
}

/// The event for dashboards and matchers and the update for the rider. `actor_id` acted;
/// `checked` is what a driver's report said of its position.
pub fn event_messages(
    subjects: &Subjects,
    trip: &TripRecord,
    from: Option<TripState>,
    (actor, actor_id): (Actor, Option<&str>),
    checked: &Checked,
    event_id: i64,
) -> Vec<Outgoing> {
    let event = TripEvent {
        event_id,
        trip: trip.view.clone(),
        from,
        actor,
        actor_id: actor_id.map(str::to_owned),
        position: checked.position,
        distance_m: checked.distance_m,
        flagged: checked.flagged,
        at: trip.view.updated_at,
    };
    let public = Event {
        id: format!("trip-event-{event_id}"),
        kind: EventType::of_trip(trip.view.state),
        at: trip.view.updated_at,
        driver_id: trip.view.driver_id.clone(),
        zone: None,
        position: checked.position,
        reason: None,
        trip: Some(trip.view.clone()),
        from,
        actor: Some(actor),
        actor_id: actor_id.map(str::to_owned),
        distance_m: checked.distance_m,
        flagged: checked.flagged,
    };
    vec![
        Outgoing::bus(
            subjects.trip_events(trip.view.region),
            codec::encode(&event),
        ),
        public_event(subjects, &public),
        to_user(
            subjects,
            Role::Rider,
            &trip.view.rider_id,
            &ServerMessage::TripUpdate {
                trip: trip.view.clone(),
            },
        ),
    ]
}

/// A transition's messages: its event, the rider's update, the driver's offer or update,
/// an update for a driver who lost the trip, and the request again when it is back to
/// searching (with `queue_head`, see [`ride_request`]).
pub fn transition_messages(
    subjects: &Subjects,
    (before, after): (&TripRecord, &TripRecord),
    change: &Change,
    checked: &Checked,
    (event_id, queue_head): (i64, Option<String>),
) -> Vec<Outgoing> {
    let mut out = event_messages(
        subjects,
        after,
        Some(before.view.state),
        (change.actor, change.actor_id.as_deref()),
        checked,
        event_id,
    );
    let update = ServerMessage::TripUpdate {
        trip: after.view.clone(),
    };
    if let Some(driver_id) = &after.view.driver_id {
        let message = match &change.new_offer {
            Some((_, expires_at, eta)) => ServerMessage::Offer {
                trip: after.view.clone(),
                expires_at: *expires_at,
                pickup_eta_s: *eta,
            },
            None => update.clone(),
        };
        out.push(to_user(subjects, Role::Driver, driver_id, &message));
    }
    // A driver that lost the trip (declined, expired, superseded) hears of it too.
    if let Some(previous) = &before.view.driver_id
        && after.view.driver_id.as_ref() != Some(previous)
    {
        out.push(to_user(subjects, Role::Driver, previous, &update));
    }
    if after.view.state == TripState::Requested {
        out.push(ride_request(subjects, after, queue_head));
    }
    out
}

/// A driver's new status, for matchers.
pub fn driver_status(subjects: &Subjects, status: &DriverStatus) -> Outgoing {
    Outgoing::bus(subjects.driver_status(), codec::encode(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{self, Decision, DriverRecord};
    use protocol::Point;
    use protocol::bus::TripCommand;
    use protocol::trip::{TripView, VehicleClass};
    use uuid::Uuid;

    const NOW: i64 = 1_800_000_000_000;

    fn offered_to(driver: &str) -> TripRecord {
        let pickup = Point::new(52.52, 13.405);
        let region = protocol::GeoConfig::default().region_of(pickup).unwrap();
        TripRecord {
            view: TripView {
                trip_id: Uuid::from_u128(9),
                state: TripState::Offered,
                rider_id: "r1".into(),
                driver_id: Some(driver.into()),
                pickup,
                dropoff: Point::new(52.5, 13.45),
                vehicle_class: None,
                min_capacity: None,
                region,
                created_at: NOW,
                updated_at: NOW,
                version: 2,
                ended_by: None,
                end_reason: None,
            },
            excluded_drivers: vec![],
            search_deadline: NOW + 60_000,
            offer_expires_at: Some(NOW + 15_000),
            dispatch_attempts: 1,
        }
    }

    fn after(before: &TripRecord, command: &TripCommand) -> (TripRecord, Change) {
        let driver = DriverRecord {
            online: true,
            vehicle_class: Some(VehicleClass::Standard),
            capacity: Some(4),
        };
        let Decision::Apply(change) = machine::decide(before, command, Some(&driver), NOW) else {
            panic!("{command:?} applies");
        };
        let mut after = before.clone();
        machine::apply(&mut after, &change, NOW);
        (after, change)
    }

    fn subjects_of(out: &[Outgoing]) -> Vec<&str> {
        out.iter().map(|o| o.subject.as_str()).collect()
    }

    #[test]
    fn a_declined_offer_tells_the_rider_the_driver_and_the_matchers() {
        let subjects = Subjects::new("t").unwrap();
        let before = offered_to("d1");
        let decline = TripCommand::AnswerOffer {
            trip_id: before.view.trip_id,
            driver_id: "d1".into(),
            accept: false,
        };
        let (after, change) = after(&before, &decline);
        let out = transition_messages(
            &subjects,
            (&before, &after),
            &change,
            &Checked::default(),
            (41, Some("d2".into())),
        );
        let region = &before.view.region;
        assert_eq!(
            subjects_of(&out),
            [
                format!("t.evt.{region}").as_str(),
                "t.events.trip.requested",
                "t.user.rider.r1",
                "t.user.driver.d1",
                format!("t.req.{region}").as_str(),
            ]
        );
        let event: TripEvent = codec::decode(&out[0].payload).unwrap();
        assert_eq!((event.event_id, event.from), (41, Some(TripState::Offered)));
        let public: Event = serde_json::from_slice(&out[1].payload).unwrap();
        assert_eq!(public.id, "trip-event-41");
        assert_eq!(public.from, Some(TripState::Offered));
        assert_eq!(public.actor_id.as_deref(), Some("d1"));
        assert_eq!(
            public.ordering_key(),
            format!("trip:{}", before.view.trip_id)
        );
        let request: RideRequest = codec::decode(&out[4].payload).unwrap();
        assert_eq!(request.excluded_drivers, ["d1"]);
        assert_eq!(request.queue_head.as_deref(), Some("d2"));
    }

    #[test]
    fn an_accepted_offer_tells_the_driver_with_an_update_not_an_offer() {
        let subjects = Subjects::new("t").unwrap();
        let before = offered_to("d1");
        let accept = TripCommand::AnswerOffer {
            trip_id: before.view.trip_id,
            driver_id: "d1".into(),
            accept: true,
        };
        let (after, change) = after(&before, &accept);
        let out = transition_messages(
            &subjects,
            (&before, &after),
            &change,
            &Checked::default(),
            (42, None),
        );
        assert_eq!(out.len(), 4, "{:?}", subjects_of(&out));
        let to_driver: ServerMessage = serde_json::from_slice(&out[3].payload).unwrap();
        assert!(
            matches!(to_driver, ServerMessage::TripUpdate { trip } if trip.state == TripState::Accepted)
        );
    }
}
