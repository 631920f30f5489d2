//! The client protocol: JSON text frames over WebSocket between the gateway and the apps of
//! drivers, riders and dispatchers.
//!
//! A session starts with the client's [`ClientMessage::Hello`] carrying its token and the
//! protocol versions it speaks; the server answers [`ServerMessage::Welcome`] with the version
//! chosen, or an error and a close frame. Every later client message may carry an `id`; the
//! server's [`ServerMessage::Ack`] or [`ServerMessage::Error`] for it echoes that id.
//!
//! Decoding is validation: [`decode`] returns a message only when every field is in range.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ErrorCode;
use crate::geo::Point;
use crate::time::UnixMillis;
use crate::trip::{TripStage, TripView, VehicleClass};
use crate::validate::{self, MAX_ACCURACY_M, MAX_CAPACITY, MAX_SPEED_MPS, ValidationError};

/// Correlates a client message with the server's answer to it.
pub type MessageId = u64;

/// Which kind of client a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Driver,
    Rider,
    Dispatcher,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Rider => "rider",
            Self::Dispatcher => "dispatcher",
        }
    }

    /// The role [`Self::as_str`] names.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Driver, Self::Rider, Self::Dispatcher]
            .into_iter()
            .find(|role| role.as_str() == name)
    }
}

/// Where a driver's position report stands among its others: its count and its device time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportStamp {
    pub seq: u64,
    pub ts: UnixMillis,
}

impl ReportStamp {
    /// Whether a report stamped `self` supersedes the last one taken, stamped `last`: the one
    /// rule the gateway (within a connection) and the matchers (across a driver's connections
    /// and gateways) both apply. A report is stale only when neither its count nor its time
    /// moved past the last one's, so a repeated or replayed report is dropped, while an app
    /// that restarted its count (its `seq` went back, its clock did not) or whose clock was set
    /// back (its `ts` went back, its count did not) goes on being tracked.
    pub fn supersedes(self, last: ReportStamp) -> bool {
        self.seq > last.seq || self.ts > last.ts
    }
}

/// A driver's position report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Set only when the driver wants an ack for this report.
    #[serde(default)]
    pub id: Option<MessageId>,
    #[schemars(range(min = -90.0, max = 90.0))]
    pub lat: f64,
    #[schemars(range(min = -180.0, max = 180.0))]
    pub lng: f64,
    /// Degrees clockwise from north, [0, 360).
    #[serde(default)]
    pub heading: Option<f32>,
    /// Metres per second.
    #[serde(default)]
    pub speed: Option<f32>,
    /// Radius of the position's uncertainty, metres.
    #[serde(default)]
    pub accuracy: Option<f32>,
    /// When the device took the fix, milliseconds since the Unix epoch.
    pub ts: UnixMillis,
    /// Increases with every report of one driver; older or repeated ones are dropped.
    pub seq: u64,
}

impl Location {
    pub fn stamp(&self) -> ReportStamp {
        ReportStamp {
            seq: self.seq,
            ts: self.ts,
        }
    }

    pub fn point(&self) -> Point {
        Point::new(self.lat, self.lng)
    }
}

/// The corners of a map viewport.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Viewport {
    pub south: f64,
    pub west: f64,
    pub north: f64,
    pub east: f64,
}

/// Everything a client may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message of every session.
    Hello {
        /// A signed token naming the client's role and id.
        token: String,
        /// Protocol versions the client speaks.
        versions: Vec<u16>,
    },
    /// Driver: a position report. Not acknowledged unless it carries an `id`.
    Location(Location),
    /// Driver: ready for jobs with this vehicle.
    GoOnline {
        id: MessageId,
        vehicle_class: VehicleClass,
        /// Seats (or parcel slots) available.
        capacity: u16,
    },
    /// Driver: no more jobs.
    GoOffline { id: MessageId },
    /// Driver: take the offered trip.
    AcceptOffer { id: MessageId, trip_id: Uuid },
    /// Driver: refuse the offered trip.
    DeclineOffer { id: MessageId, trip_id: Uuid },
    /// Driver: report progress on the assigned trip.
    TripProgress {
        id: MessageId,
        trip_id: Uuid,
        stage: TripStage,
        /// When the driver reached the stage, by the clock of its `location` reports: a
        /// report sent late (queued while the app had no signal, or retried) is checked
        /// against where the driver was then. When absent, against its latest position.
        #[serde(default)]
        ts: Option<UnixMillis>,
    },
    /// Rider: ask for a ride (or any job from pickup to dropoff).
    RequestRide {
        id: MessageId,
        pickup: Point,
        dropoff: Point,
        #[serde(default)]
        vehicle_class: Option<VehicleClass>,
        #[serde(default)]
        min_capacity: Option<u16>,
        /// Chosen by the client; a retried request with the same key yields the same trip.
        idempotency_key: String,
    },
    /// Rider, driver or dispatcher: cancel a trip that has not ended.
    CancelTrip {
        id: MessageId,
        trip_id: Uuid,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Dispatcher: watch an area. Replaces any earlier viewport.
    SubscribeViewport {
        id: MessageId,
        viewport: Viewport,
        /// Map zoom level; below the server's threshold the feed is per-cell aggregates.
        zoom: f32,
    },
    /// Dispatcher: give a requested trip to a driver.
    AssignDriver {
        id: MessageId,
        trip_id: Uuid,
        driver_id: String,
    },
    /// Any role: where a trip stands now, answered by an ack carrying it. Riders and drivers
    /// see only trips they take part in; for others the answer is `not_found`.
    GetTrip { id: MessageId, trip_id: Uuid },
}

impl ClientMessage {
    /// The id the client gave this message, for correlating the answer.
    pub fn id(&self) -> Option<MessageId> {
        match self {
            Self::Hello { .. } => None,
            Self::Location(location) => location.id,
            Self::GoOnline { id, .. }
            | Self::GoOffline { id }
            | Self::AcceptOffer { id, .. }
            | Self::DeclineOffer { id, .. }
            | Self::TripProgress { id, .. }
            | Self::RequestRide { id, .. }
            | Self::CancelTrip { id, .. }
            | Self::SubscribeViewport { id, .. }
            | Self::AssignDriver { id, .. }
            | Self::GetTrip { id, .. } => Some(*id),
        }
    }

    /// The message's `type` tag, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Location(_) => "location",
            Self::GoOnline { .. } => "go_online",
            Self::GoOffline { .. } => "go_offline",
            Self::AcceptOffer { .. } => "accept_offer",
            Self::DeclineOffer { .. } => "decline_offer",
            Self::TripProgress { .. } => "trip_progress",
            Self::RequestRide { .. } => "request_ride",
            Self::CancelTrip { .. } => "cancel_trip",
            Self::SubscribeViewport { .. } => "subscribe_viewport",
            Self::AssignDriver { .. } => "assign_driver",
            Self::GetTrip { .. } => "get_trip",
        }
    }

    /// Checks every field; `now` bounds client timestamps.
    pub fn validate(&self, now: UnixMillis) -> Result<(), ValidationError> {
        match self {
            Self::Hello { token, versions } => {
                if token.is_empty() {
                    return Err(ValidationError::Empty { field: "token" });
                }
                if token.len() > crate::token::MAX_TOKEN_LEN {
                    return Err(ValidationError::TooLong {
                        field: "token",
                        max: crate::token::MAX_TOKEN_LEN,
                    });
                }
                if versions.len() > 16 {
                    return Err(ValidationError::TooMany {
                        field: "versions",
                        max: 16,
                    });
                }
                Ok(())
            }
            Self::Location(location) => {
                validate::latitude("lat", location.lat)?;
                validate::longitude("lng", location.lng)?;
                validate::optional_f32(
                    location.heading,
                    "heading",
                    |h| (0.0..360.0).contains(&h),
                    ValidationError::HeadingOutOfRange,
                )?;
                validate::optional_f32(
                    location.speed,
                    "speed",
                    |s| (0.0..=MAX_SPEED_MPS).contains(&s),
                    ValidationError::SpeedOutOfRange,
                )?;
                validate::optional_f32(
                    location.accuracy,
                    "accuracy",
                    |a| (0.0..=MAX_ACCURACY_M).contains(&a),
                    ValidationError::AccuracyOutOfRange,
                )?;
                validate::timestamp("ts", location.ts, now)
            }
            Self::GoOnline { capacity, .. } => {
                if *capacity == 0 || *capacity > MAX_CAPACITY {
                    return Err(ValidationError::CapacityOutOfRange(*capacity));
                }
                Ok(())
            }
            Self::TripProgress { ts: Some(ts), .. } => validate::timestamp("ts", *ts, now),
            Self::GoOffline { .. }
            | Self::AcceptOffer { .. }
            | Self::DeclineOffer { .. }
            | Self::TripProgress { ts: None, .. } => Ok(()),
            Self::RequestRide {
                pickup,
                dropoff,
                min_capacity,
                idempotency_key,
                ..
            } => {
                pickup.validate("pickup")?;
                dropoff.validate("dropoff")?;
                if pickup == dropoff {
                    return Err(ValidationError::SamePickupAndDropoff);
                }
                if let Some(capacity) = min_capacity
                    && (*capacity == 0 || *capacity > MAX_CAPACITY)
                {
                    return Err(ValidationError::CapacityOutOfRange(*capacity));
                }
                validate::id("idempotency_key", idempotency_key)
            }
            Self::CancelTrip { reason, .. } => match reason {
                Some(reason) => validate::text("reason", reason),
                None => Ok(()),
            },
            Self::SubscribeViewport { viewport, zoom, .. } => {
                validate::latitude("viewport.south", viewport.south)?;
                validate::latitude("viewport.north", viewport.north)?;
                validate::longitude("viewport.west", viewport.west)?;
                validate::longitude("viewport.east", viewport.east)?;
                if viewport.south > viewport.north {
                    return Err(ValidationError::BadViewport("south is north of north"));
                }
                if !zoom.is_finite() || !(0.0..=24.0).contains(zoom) {
                    return Err(ValidationError::BadViewport(
                        "zoom must be between 0 and 24",
                    ));
                }
                Ok(())
            }
            Self::AssignDriver { driver_id, .. } => validate::id("driver_id", driver_id),
            Self::GetTrip { .. } => Ok(()),
        }
    }
}

/// Why a client frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Malformed(_) => ErrorCode::InvalidMessage,
            Self::Invalid(err) => err.code(),
        }
    }

    /// What the client is told: written for people, without the JSON parser's own text
    /// (which [`Display`](std::fmt::Display) keeps, for logs).
    pub fn client_message(&self) -> String {
        match self {
            Self::Malformed(error) => match error.classify() {
                serde_json::error::Category::Data => "not a message this server knows: check \
                     its type and that every field is present and of the right kind (see the \
                     protocol's JSON Schema)"
                    .to_owned(),
                _ => "not valid JSON".to_owned(),
            },
            Self::Invalid(error) => error.to_string(),
        }
    }
}

/// Decodes and validates one text frame from a client.
///
/// Positions are nearly every frame a gateway reads, so a `location` frame is read straight
/// into a [`Location`]: serde reads an internally tagged enum such as [`ClientMessage`] into a
/// buffer of every field before it knows the variant, which costs a position more than the
/// rest of its decoding. Any frame that is not a well-formed location (another type, or a
/// location with a fault) goes through the enum, so what a client is told of a bad frame
/// is the same either way.
pub fn decode(text: &str, now: UnixMillis) -> Result<ClientMessage, DecodeError> {
    let message = match serde_json::from_str::<LocationFrame>(text) {
        Ok(frame) => ClientMessage::Location(frame.into()),
        Err(_) => serde_json::from_str(text)?,
    };
    message.validate(now)?;
    Ok(message)
}

/// A `location` frame, with its type tag: the fields of [`Location`] and `"type":"location"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationFrame {
    #[serde(rename = "type")]
    _type: LocationTag,
    #[serde(default)]
    id: Option<MessageId>,
    lat: f64,
    lng: f64,
    #[serde(default)]
    heading: Option<f32>,
    #[serde(default)]
    speed: Option<f32>,
    #[serde(default)]
    accuracy: Option<f32>,
    ts: UnixMillis,
    seq: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum LocationTag {
    Location,
}

impl From<LocationFrame> for Location {
    fn from(frame: LocationFrame) -> Self {
        let LocationFrame {
            _type: LocationTag::Location,
            id,
            lat,
            lng,
            heading,
            speed,
            accuracy,
            ts,
            seq,
        } = frame;
        Self {
            id,
            lat,
            lng,
            heading,
            speed,
            accuracy,
            ts,
            seq,
        }
    }
}

/// Limits the server applies to a session, told to the client at welcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionLimits {
    /// Largest frame the server accepts, bytes.
    pub max_message_bytes: u32,
    /// Sustained messages per second the server accepts from this client.
    pub messages_per_sec: u32,
}

/// How a vehicle appears on the dispatcher's map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VehicleStatus {
    Available,
    Offered,
    OnTrip,
    /// Online but no position for a while.
    Stale,
    Offline,
}

impl VehicleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Offered => "offered",
            Self::OnTrip => "on_trip",
            Self::Stale => "stale",
            Self::Offline => "offline",
        }
    }
}

/// One vehicle in a dispatcher's viewport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VehicleView {
    pub driver_id: String,
    pub lat: f64,
    pub lng: f64,
    pub heading: Option<f32>,
    pub status: VehicleStatus,
    pub ts: UnixMillis,
}

/// Supply and demand in one H3 cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CellAggregate {
    /// H3 cell, hexadecimal.
    pub cell: String,
    pub vehicles: u32,
    pub available: u32,
    pub open_requests: u32,
}

/// A driver's status as the server knows it, sent on (re)connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DriverState {
    pub online: bool,
    pub vehicle_class: Option<VehicleClass>,
    pub capacity: Option<u16>,
}

/// Where a rider's driver is heading next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EtaTo {
    Pickup,
    Dropoff,
}

/// A driver's estimated time to where it is heading, from the ETA model the matcher ranks
/// drivers by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Eta {
    pub to: EtaTo,
    /// Seconds from the position it comes with.
    pub seconds: u32,
}

/// Everything the server may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The session is open.
    Welcome {
        version: u16,
        role: Role,
        /// The authenticated id of the client.
        subject: String,
        limits: SessionLimits,
    },
    /// Where things stand for this client, sent after welcome so a reconnecting app resumes:
    /// a driver's status and its non-terminal trips, a rider's non-terminal trips.
    SessionState {
        driver: Option<DriverState>,
        trips: Vec<TripView>,
    },
    /// The message with this id was carried out. `trip` is the trip it concerned, if any.
    Ack {
        id: MessageId,
        trip: Option<TripView>,
        /// False when the command had already been carried out (an idempotent repeat).
        changed: bool,
    },
    /// The message with this id (if known) failed.
    Error {
        id: Option<MessageId>,
        code: ErrorCode,
        message: String,
    },
    /// Driver: a job is offered; answer before `expires_at`.
    Offer {
        trip: TripView,
        expires_at: UnixMillis,
        /// Estimated time to reach the pickup, seconds.
        pickup_eta_s: u32,
    },
    /// A trip this client takes part in (or, for dispatchers, any trip) changed.
    TripUpdate { trip: TripView },
    /// Rider: the assigned driver's live position.
    DriverPosition {
        trip_id: Uuid,
        driver_id: String,
        lat: f64,
        lng: f64,
        heading: Option<f32>,
        ts: UnixMillis,
        /// When the driver should reach the pickup (while it approaches) or the dropoff (on
        /// board); absent while it waits at the pickup.
        #[serde(default)]
        eta: Option<Eta>,
    },
    /// Dispatcher: vehicles in the viewport that moved or changed status.
    Vehicles { vehicles: Vec<VehicleView> },
    /// Dispatcher, zoomed out: supply and demand per cell in the viewport.
    CellAggregates {
        /// H3 resolution of the cells.
        resolution: u8,
        cells: Vec<CellAggregate>,
    },
    /// Driver: its place in a queue zone (an airport or station rank), sent whenever the
    /// queue changes; `place` 0 means it is no longer in the queue.
    QueuePlace {
        zone_id: Uuid,
        zone_name: String,
        /// 1 for the head of the queue.
        place: u32,
        /// Drivers waiting in the queue.
        length: u32,
    },
}

impl ServerMessage {
    /// The error answer to a message with this id.
    pub fn error(id: Option<MessageId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            id,
            code,
            message: message.into(),
        }
    }

    /// The message's `type` tag, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::SessionState { .. } => "session_state",
            Self::Ack { .. } => "ack",
            Self::Error { .. } => "error",
            Self::Offer { .. } => "offer",
            Self::TripUpdate { .. } => "trip_update",
            Self::DriverPosition { .. } => "driver_position",
            Self::Vehicles { .. } => "vehicles",
            Self::CellAggregates { .. } => "cell_aggregates",
            Self::QueuePlace { .. } => "queue_place",
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialise")
    }
}

/// WebSocket close codes the server uses (4000-4999 is the application range).
pub mod close_code {
    /// Token missing, forged or expired.
    pub const UNAUTHORIZED: u16 = 4001;
    /// No common protocol version.
    pub const UNSUPPORTED_VERSION: u16 = 4002;
    /// The client did not say hello in time.
    pub const HELLO_TIMEOUT: u16 = 4003;
    /// The client could not keep up with control messages.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client kept exceeding its rate limit.
    pub const RATE_LIMITED: u16 = 4029;
    /// The same subject connected again elsewhere.
    pub const REPLACED: u16 = 4009;
    /// A message or frame larger than the server takes (WebSocket's own code).
    pub const TOO_BIG: u16 = 1009;
}

/// The JSON Schema of both directions of the client protocol.
pub fn json_schema() -> serde_json::Value {
    #[derive(JsonSchema)]
    #[allow(dead_code)] // only its schema is used
    struct ClientProtocol {
        client_to_server: ClientMessage,
        server_to_client: ServerMessage,
    }
    let mut schema =
        serde_json::to_value(schemars::schema_for!(ClientProtocol)).expect("schema serialises");
    schema["title"] = "Client protocol (WebSocket, JSON text frames)".into();
    schema["description"] = format!(
        "Protocol versions {:?}. Each frame is one object with a \"type\" tag.",
        crate::SUPPORTED_VERSIONS
    )
    .into();
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: UnixMillis = 1_700_000_000_000;

    #[test]
    fn a_report_is_stale_only_when_neither_its_count_nor_its_time_moved_on() {
        let last = ReportStamp { seq: 5, ts: NOW };
        let at = |seq, ts| ReportStamp { seq, ts };
        assert!(at(6, NOW + 1000).supersedes(last), "the next report");
        assert!(!at(5, NOW).supersedes(last), "the same report again");
        assert!(
            !at(4, NOW - 1000).supersedes(last),
            "an older report replayed"
        );
        assert!(
            at(1, NOW + 1000).supersedes(last),
            "an app that restarted its count"
        );
        assert!(at(6, NOW - 1000).supersedes(last), "a clock set back");
        assert!(at(6, NOW).supersedes(last) && at(5, NOW + 1).supersedes(last));
    }

    /// What the enum alone makes of a frame: what [`decode`] must agree with.
    fn through_the_enum(text: &str) -> Result<ClientMessage, String> {
        let message: ClientMessage =
            serde_json::from_str(text).map_err(|e| DecodeError::from(e).client_message())?;
        message
            .validate(NOW)
            .map_err(|e| DecodeError::from(e).client_message())?;
        Ok(message)
    }

    fn decoded(text: &str) -> Result<ClientMessage, String> {
        decode(text, NOW).map_err(|e| e.client_message())
    }

    #[test]
    fn location_frames_read_directly_decode_as_through_the_enum() {
        let frames = [
            r#"{"type":"location","lat":52.5,"lng":13.4,"ts":1700000000000,"seq":1}"#,
            r#"{"type":"location","lat":52,"lng":13,"ts":1700000000000,"seq":1}"#,
            r#"{"lat":52.5,"lng":13.4,"ts":1700000000000,"seq":7,"type":"location"}"#,
            r#"{"type":"location","id":4,"lat":1,"lng":2,"heading":90.5,"speed":3,"accuracy":5,"ts":1700000000000,"seq":2}"#,
            r#"{"type":"location","id":null,"heading":null,"lat":1,"lng":2,"ts":1700000000000,"seq":2}"#,
            r#"{"type":"loc\u0061tion","l\u0061t":1,"lng":2,"ts":1700000000000,"seq":2}"#,
            // Faults: each must be refused, and with the enum's words.
            r#"{"type":"location","lat":1,"lat":2,"lng":2,"ts":1700000000000,"seq":2}"#,
            r#"{"type":"location","type":"location","lat":1,"lng":2,"ts":1700000000000,"seq":2}"#,
            r#"{"type":"location","lat":1,"lng":2,"ts":1700000000000,"seq":2,"extra":0}"#,
            r#"{"type":"Location","lat":1,"lng":2,"ts":1700000000000,"seq":2}"#,
            r#"{"lat":1,"lng":2,"ts":1700000000000,"seq":2}"#,
            r#"{"type":"location","lat":1,"lng":2,"ts":1700000000000}"#,
            r#"{"type":"location","lat":1,"lng":2,"ts":1700000000000,"seq":-1}"#,
            r#"{"type":"location","lat":1,"lng":2,"ts":1.5,"seq":1}"#,
            r#"{"type":"location","lat":91,"lng":2,"ts":1700000000000,"seq":1}"#,
            r#"{"type":"location","lat":"1","lng":2,"ts":1700000000000,"seq":1}"#,
            r#"{"type":"location","lat":1,"lng":2,"ts":1700000000000,"seq":1"#,
            r#"[{"type":"location"}]"#,
            // Other types take the enum's path.
            r#"{"type":"go_offline","id":3}"#,
            r#"{"type":"hello","token":"t","versions":[1]}"#,
        ];
        for frame in frames {
            assert_eq!(decoded(frame), through_the_enum(frame), "{frame}");
        }
        assert!(decoded(frames[0]).is_ok());
        assert!(decoded(frames[6]).is_err(), "a repeated field is refused");
    }

    /// Pieces of location frames, right and wrong, put together at random.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(r#""type":"location""#.to_owned()),
            Just(r#""type":"go_offline""#.to_owned()),
            (-100.0..100.0f64).prop_map(|v| format!(r#""lat":{v}"#)),
            (-200.0..200.0f64).prop_map(|v| format!(r#""lng":{v}"#)),
            any::<i64>().prop_map(|v| format!(r#""ts":{v}"#)),
            Just(r#""ts":1700000000000"#.to_owned()),
            any::<i64>().prop_map(|v| format!(r#""seq":{v}"#)),
            proptest::option::of(any::<u32>())
                .prop_map(|v| format!(r#""id":{}"#, v.map_or("null".into(), |v| v.to_string()))),
            (-10.0..400.0f32).prop_map(|v| format!(r#""heading":{v}"#)),
            Just(r#""speed":null"#.to_owned()),
            Just(r#""accuracy":"5""#.to_owned()),
            Just(r#""other":1"#.to_owned()),
        ]
    }

    proptest! {
        #[test]
        fn any_assembled_frame_decodes_as_through_the_enum(
            fields in proptest::collection::vec(field(), 0..10)
        ) {
            let frame = format!("{{{}}}", fields.join(","));
            prop_assert_eq!(decoded(&frame), through_the_enum(&frame), "{}", frame);
        }
    }
}
