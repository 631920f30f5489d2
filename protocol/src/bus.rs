//! Payloads services exchange on NATS, encoded with [`crate::codec`].
//!
//! These types avoid serde features that need a self-describing format (internally tagged
//! enums, `skip_serializing_if`, `flatten`), because the codec is positional.
//! Messages for one client (`{p}.user.{role}.{id}`) are the exception: they carry the JSON text
//! of a [`crate::client::ServerMessage`], which the gateway forwards to the socket unchanged.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::{DriverState, Role, VehicleStatus};
use crate::error::ErrorCode;
use crate::events::ExitReason;
use crate::geo::Point;
use crate::time::UnixMillis;
use crate::trip::{Actor, TripStage, TripState, TripView, VehicleClass};
use crate::zone::ZoneKind;

/// A driver's position, published by the gateway on `{p}.loc.{region}.{cell}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub driver_id: String,
    pub lat: f64,
    pub lng: f64,
    pub heading: Option<f32>,
    pub speed: Option<f32>,
    pub accuracy: Option<f32>,
    /// The device's timestamp.
    pub ts: UnixMillis,
    pub seq: u64,
    /// What the gateway knows of the driver: available, offered or on a trip.
    pub status: VehicleStatus,
    pub vehicle_class: Option<VehicleClass>,
    pub capacity: u16,
    /// The driver's active trip, if any.
    pub trip_id: Option<Uuid>,
    /// When the gateway received the report, microseconds since the epoch.
    pub received_us: i64,
}

impl Position {
    pub fn point(&self) -> Point {
        Point::new(self.lat, self.lng)
    }
}

/// A trip waiting for a driver, published on `{p}.req.{region}` when created, when an offer is
/// declined or expires, and by the sweeper when a request has gone quiet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RideRequest {
    pub trip: TripView,
    /// Drivers already offered this trip; never offered it again.
    pub excluded_drivers: Vec<String>,
    /// When the search gives up and the trip expires.
    pub deadline: UnixMillis,
    /// How many times the request has been published (1 on creation).
    pub attempt: u32,
    /// For a pickup in a queue zone: the driver at the head of its queue (not excluded), to
    /// be offered the trip before any other.
    pub queue_head: Option<String>,
}

/// A command to the trips service on `{p}.trips.cmd`; the reply is a [`TripReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TripCommand {
    /// A rider asks for a ride. Idempotent on `(rider_id, idempotency_key)`.
    CreateTrip {
        rider_id: String,
        idempotency_key: String,
        pickup: Point,
        dropoff: Point,
        vehicle_class: Option<VehicleClass>,
        min_capacity: Option<u16>,
    },
    /// A driver goes online or offline.
    SetDriverStatus {
        driver_id: String,
        online: bool,
        vehicle_class: Option<VehicleClass>,
        capacity: Option<u16>,
        /// Display name from the driver's token.
        name: Option<String>,
    },
    /// A matcher claims a driver for a requested trip and offers it (`requested -> offered`).
    Offer {
        trip_id: Uuid,
        driver_id: String,
        expires_at: UnixMillis,
        pickup_eta_s: u32,
    },
    /// The offered driver answers.
    AnswerOffer {
        trip_id: Uuid,
        driver_id: String,
        accept: bool,
    },
    /// An offer ran out without an answer (`offered -> requested`).
    ExpireOffer { trip_id: Uuid, driver_id: String },
    /// The assigned driver reports a stage. `position` is the driver's latest position the
    /// gateway took, when it has one: the trips service checks the report against it.
    Progress {
        trip_id: Uuid,
        driver_id: String,
        stage: TripStage,
        position: Option<Point>,
    },
    /// Someone cancels a trip.
    Cancel {
        trip_id: Uuid,
        actor: Actor,
        actor_id: String,
        reason: Option<String>,
    },
    /// A dispatcher gives a requested trip straight to a driver (`requested -> accepted`).
    Assign {
        trip_id: Uuid,
        driver_id: String,
        dispatcher_id: String,
    },
    /// The search for a driver gave up (`requested -> expired`).
    Expire { trip_id: Uuid, reason: String },
}

impl TripCommand {
    /// The command's name, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CreateTrip { .. } => "create_trip",
            Self::SetDriverStatus { .. } => "set_driver_status",
            Self::Offer { .. } => "offer",
            Self::AnswerOffer { .. } => "answer_offer",
            Self::ExpireOffer { .. } => "expire_offer",
            Self::Progress { .. } => "progress",
            Self::Cancel { .. } => "cancel",
            Self::Assign { .. } => "assign",
            Self::Expire { .. } => "expire",
        }
    }
}

/// A failed command or query, as told to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: String,
}

impl CommandError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for CommandError {}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripOutcome {
    /// The trip after the command (absent for driver status changes).
    pub trip: Option<TripView>,
    /// False when the command had already been carried out: a repeat has no second effect.
    pub changed: bool,
}

/// The reply to a [`TripCommand`].
pub type TripReply = Result<TripOutcome, CommandError>;

/// A question to the trips service on `{p}.trips.query`; the reply is a [`QueryReply`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TripQuery {
    /// What a (re)connecting client needs to resume.
    SessionState { role: Role, id: String },
    /// One trip.
    Trip { trip_id: Uuid },
    /// Drivers holding a non-terminal trip in these regions, and online drivers, so a fresh
    /// matcher knows who is busy.
    Drivers { regions: Vec<String> },
    /// The zones in force, for gateways that evaluate them: nothing new when this replica's
    /// zones are still at `known` generation; otherwise a page of them from after `after`
    /// (by id), answered with [`QueryReply::Zones`].
    Zones { known: i64, after: Option<Uuid> },
}

/// A driver as the trips service knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverRecord {
    pub driver_id: String,
    pub online: bool,
    pub vehicle_class: Option<VehicleClass>,
    pub capacity: Option<u16>,
    /// The driver's non-terminal trip, if any.
    pub active_trip: Option<Uuid>,
}

/// The reply to a [`TripQuery`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueryReply {
    SessionState {
        driver: Option<DriverState>,
        trips: Vec<TripView>,
    },
    Trip(Option<TripView>),
    Drivers(Vec<DriverRecord>),
    Error(CommandError),
    /// A page of the zones at `generation` (see [`TripQuery::Zones`]); `zones` is empty and
    /// `more` false when they are still at the generation asked about.
    Zones {
        generation: i64,
        zones: Vec<ZoneRecord>,
        more: bool,
    },
}

/// The zones changed and now stand at `generation` (on `{p}.zones.changed`): a process holding
/// an older one reloads them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZonesChanged {
    pub generation: i64,
}

/// A zone as gateways need it to evaluate positions, its geometry as GeoJSON text (the codec
/// cannot carry free-form JSON values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneRecord {
    pub zone_id: Uuid,
    pub name: String,
    pub kind: ZoneKind,
    pub geometry: String,
    pub version: i64,
}

/// What a driver did with respect to a zone, as a gateway saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZoneTransition {
    Enter,
    Exit(ExitReason),
    Dwell,
}

/// One zone event a gateway detected, sent to the trips service on `{p}.tracking.record` to
/// be stored and published (reply: [`RecordReply`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ZoneEvent {
    pub id: Uuid,
    pub transition: ZoneTransition,
    pub driver_id: String,
    pub zone_id: Uuid,
    pub zone_name: String,
    pub zone_kind: ZoneKind,
    /// The driver's timestamp of the position that showed it.
    pub at: UnixMillis,
    pub position: Option<Point>,
}

/// The reply to a batch of [`ZoneEvent`]s: how many were new (the others repeated what was
/// already recorded: an enter for a zone the driver is in, an exit from one it is not in).
pub type RecordReply = Result<u32, CommandError>;

/// A committed transition, published on `{p}.evt.{region}` (at least once, in commit order
/// per trip).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripEvent {
    /// The event's position in the trips service's log; increasing.
    pub event_id: i64,
    pub trip: TripView,
    pub from: Option<TripState>,
    pub actor: Actor,
    /// Who acted: the rider's, driver's or dispatcher's id; none for the system.
    pub actor_id: Option<String>,
    /// For a driver's progress report: where the driver was, how far from the stage's place
    /// (the pickup, or the dropoff for a completion), and whether it was flagged as far.
    pub position: Option<Point>,
    pub distance_m: Option<f64>,
    pub flagged: bool,
    pub at: UnixMillis,
}

/// A driver went online or offline, published on `{p}.drivers.status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverStatus {
    pub driver_id: String,
    pub online: bool,
    pub vehicle_class: Option<VehicleClass>,
    pub capacity: Option<u16>,
    pub at: UnixMillis,
}

/// Supply and demand of one cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellCount {
    /// H3 cell index.
    pub cell: u64,
    pub vehicles: u32,
    pub available: u32,
    pub open_requests: u32,
}

/// Per-cell counts of one region, published periodically by matchers on `{p}.agg.{region}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellCounts {
    pub region: u64,
    pub resolution: u8,
    pub cells: Vec<CellCount>,
    pub at: UnixMillis,
}

/// A change in which clients a gateway holds: `joined` (its first session here opened at
/// `since`) or left (its last session here closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChange {
    pub role: Role,
    pub id: String,
    pub joined: bool,
    /// When the client's session here opened, milliseconds since the epoch: of two gateways
    /// claiming a client, the one it connected to last holds it.
    pub since: UnixMillis,
}

/// Which clients a gateway holds, published by the gateway on `{p}.presence`: its changes as
/// they happen, at least every heartbeat (an empty list says the gateway is alive), all its
/// clients now and then and when asked on `{p}.presence.sync` (`snapshot`), and its going
/// away (`stopping`). Publishers of client messages read it to address a client's gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The gateway's id, as in its subject `{p}.gw.{gateway}.>`.
    pub gateway: String,
    pub changes: Vec<PresenceChange>,
    /// The changes are (part of) every client the gateway holds.
    pub snapshot: bool,
    /// The gateway is stopping: forget every client it held.
    pub stopping: bool,
    /// How long the gateway's word holds without a heartbeat, milliseconds.
    pub valid_for_ms: u32,
}
