//! Events for integrators: what happened to trips and where drivers went, as JSON.
//!
//! Each [`Event`] is published on `{p}.events.{category}.{action}` (built by
//! [`Subjects::event`](crate::Subjects::event)) and delivered to the webhooks whose filter
//! names its type. An event's `id` is unique: a receiver de-duplicates on it, since delivery
//! is at least once. Events of one driver (zone events) or one trip (trip events) are
//! delivered to an endpoint in the order they happened; [`Event::ordering_key`] names that
//! sequence.
//!
//! A webhook request carries the event as its body and three headers: [`ID_HEADER`],
//! [`TIMESTAMP_HEADER`] (Unix seconds when the request was signed) and [`SIGNATURE_HEADER`],
//! `v1=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"` under the endpoint's secret
//! ([`sign`]; receivers check it with [`verify`]).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::time::UnixMillis;
use crate::trip::{Actor, TripState};
use crate::zone::ZoneKind;
use crate::{Point, TripView};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// A driver's position fell inside a zone it was not in.
    #[serde(rename = "zone.enter")]
    ZoneEnter,
    /// A driver left a zone: its position fell outside, it went silent, or the zone went.
    #[serde(rename = "zone.exit")]
    ZoneExit,
    /// A driver has been inside a zone for the configured dwell time.
    #[serde(rename = "zone.dwell")]
    ZoneDwell,
    #[serde(rename = "trip.requested")]
    TripRequested,
    #[serde(rename = "trip.offered")]
    TripOffered,
    #[serde(rename = "trip.accepted")]
    TripAccepted,
    #[serde(rename = "trip.arrived")]
    TripArrived,
    #[serde(rename = "trip.started")]
    TripStarted,
    #[serde(rename = "trip.completed")]
    TripCompleted,
    #[serde(rename = "trip.cancelled")]
    TripCancelled,
    #[serde(rename = "trip.expired")]
    TripExpired,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        Self::ZoneEnter,
        Self::ZoneExit,
        Self::ZoneDwell,
        Self::TripRequested,
        Self::TripOffered,
        Self::TripAccepted,
        Self::TripArrived,
        Self::TripStarted,
        Self::TripCompleted,
        Self::TripCancelled,
        Self::TripExpired,
    ];

    /// The name on the wire, such as `zone.enter`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ZoneEnter => "zone.enter",
            Self::ZoneExit => "zone.exit",
            Self::ZoneDwell => "zone.dwell",
            Self::TripRequested => "trip.requested",
            Self::TripOffered => "trip.offered",
            Self::TripAccepted => "trip.accepted",
            Self::TripArrived => "trip.arrived",
            Self::TripStarted => "trip.started",
            Self::TripCompleted => "trip.completed",
            Self::TripCancelled => "trip.cancelled",
            Self::TripExpired => "trip.expired",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The event of a trip reaching `state`.
    pub fn of_trip(state: TripState) -> Self {
        match state {
            TripState::Requested => Self::TripRequested,
            TripState::Offered => Self::TripOffered,
            TripState::Accepted => Self::TripAccepted,
            TripState::Arrived => Self::TripArrived,
            TripState::InProgress => Self::TripStarted,
            TripState::Completed => Self::TripCompleted,
            TripState::Cancelled => Self::TripCancelled,
            TripState::Expired => Self::TripExpired,
        }
    }
}

/// Why a driver left a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// Its position fell outside the zone (also after the zone was redrawn).
    Left,
    /// It sent no position for the configured time, or left without coming back.
    Stale,
    /// The zone was deleted.
    ZoneDeleted,
    /// The driver went offline, which leaves a queue zone (its place in the queue is lost).
    Offline,
}

/// The zone an event is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneRef {
    pub zone_id: Uuid,
    pub name: String,
    pub kind: ZoneKind,
}

/// One event, as integrators receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique; a receiver de-duplicates on it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When it happened, milliseconds since the epoch (for a zone event, the driver's own
    /// timestamp of the position that showed it).
    pub at: UnixMillis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneRef>,
    /// Where the driver was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Point>,
    /// For `zone.exit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ExitReason>,
    /// For trip events: the trip after the transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trip: Option<TripView>,
    /// For trip events: the state it left (none for a new trip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<TripState>,
    /// For trip events: who acted, and their id (none for the platform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// For a driver's progress report: how far from the stage's place it was made, and
    /// whether that was flagged as too far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_m: Option<f64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flagged: bool,
}

impl Event {
    /// The sequence this event keeps its order in: its trip's, or its driver's.
    pub fn ordering_key(&self) -> String {
        match (&self.trip, &self.driver_id) {
            (Some(trip), _) => format!("trip:{}", trip.trip_id),
            (None, Some(driver)) => format!("driver:{driver}"),
            (None, None) => format!("event:{}", self.id),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialise")
    }
}

/// The request header carrying the event's id.
pub const ID_HEADER: &str = "dispatch-event-id";
/// The request header carrying the Unix second the request was signed.
pub const TIMESTAMP_HEADER: &str = "dispatch-timestamp";
/// The request header carrying the signature, `v1=<hex>`.
pub const SIGNATURE_HEADER: &str = "dispatch-signature";

/// The signature header's value for `body` sent at `timestamp_s` under `secret`.
pub fn sign(secret: &[u8], timestamp_s: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes keys of any length");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + digest.len() * 2);
    out.push_str("v1=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Why a webhook request did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature does not match the body and timestamp")]
    Mismatch,
    #[error("the timestamp is further than the tolerance from now (a replay?)")]
    Expired,
}

/// Checks a webhook request: the signature header `signature` over `body` and the timestamp
/// header `timestamp_s`, which must lie within `tolerance_s` of `now_s`.
pub fn verify(
    secret: &[u8],
    timestamp_s: i64,
    signature: &str,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), VerifyError> {
    let expected = sign(secret, timestamp_s, body);
    // Compared in time independent of where they differ.
    let same = expected.len() == signature.len()
        && expected
            .bytes()
            .zip(signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(VerifyError::Mismatch);
    }
    if (now_s - timestamp_s).abs() > tolerance_s {
        return Err(VerifyError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone_event() -> Event {
        Event {
            id: "0b5c8c1e-7d43-4c4e-9d0e-5e0f4a2b1c3d".into(),
            kind: EventType::ZoneEnter,
            at: 1_700_000_000_000,
            driver_id: Some("d-7".into()),
            zone: Some(ZoneRef {
                zone_id: Uuid::nil(),
                name: "Airport".into(),
                kind: ZoneKind::Queue,
            }),
            position: Some(Point::new(52.5, 13.4)),
            reason: None,
            trip: None,
            from: None,
            actor: None,
            actor_id: None,
            distance_m: None,
            flagged: false,
        }
    }

    #[test]
    fn events_are_plain_json_with_dotted_types() {
        let json: serde_json::Value = serde_json::from_str(&zone_event().to_json()).unwrap();
        assert_eq!(json["type"], "zone.enter");
        assert_eq!(json["zone"]["kind"], "queue");
        assert_eq!(json["driver_id"], "d-7");
        assert!(json.get("trip").is_none(), "absent fields are left out");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, zone_event());
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
            let quoted = serde_json::to_string(&kind).unwrap();
            assert_eq!(quoted, format!("\"{}\"", kind.as_str()));
        }
        assert_eq!(zone_event().ordering_key(), "driver:d-7");
    }

    #[test]
    fn a_signature_verifies_and_a_changed_body_or_old_timestamp_does_not() {
        let body = zone_event().to_json();
        let signature = sign(b"s3cret", 1_700_000_000, body.as_bytes());
        assert!(signature.starts_with("v1=") && signature.len() == 67);
        assert_eq!(
            verify(
                b"s3cret",
                1_700_000_000,
                &signature,
                body.as_bytes(),
                1_700_000_010,
                300
            ),
            Ok(())
        );
        let changed = body.replace("d-7", "d-8");
        assert_eq!(
            verify(
                b"s3cret",
                1_700_000_000,
                &signature,
                changed.as_bytes(),
                1_700_000_010,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                b"other",
                1_700_000_000,
                &signature,
                body.as_bytes(),
                1_700_000_010,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                b"s3cret",
                1_700_000_000,
                &signature,
                body.as_bytes(),
                1_700_009_000,
                300
            ),
            Err(VerifyError::Expired)
        );
    }
}
