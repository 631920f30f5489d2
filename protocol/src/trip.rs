//! Trips as every party sees them: states, the state machine's edges, actors and vehicle classes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::geo::Point;
use crate::time::UnixMillis;

/// Where a trip stands.
///
/// ```text
/// requested -> offered -> accepted -> arrived -> in_progress -> completed
/// offered -> requested            (declined or offer expired; that driver is excluded)
/// requested -> expired            (search deadline passed, no driver found)
/// any non-terminal -> cancelled   (rider, driver, dispatcher or system, with a reason)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TripState {
    Requested,
    Offered,
    Accepted,
    Arrived,
    InProgress,
    Completed,
    Cancelled,
    Expired,
}

impl TripState {
    pub const ALL: [TripState; 8] = [
        Self::Requested,
        Self::Offered,
        Self::Accepted,
        Self::Arrived,
        Self::InProgress,
        Self::Completed,
        Self::Cancelled,
        Self::Expired,
    ];

    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Cancelled | Self::Expired)
    }

    /// Whether a driver is bound to the trip in this state (it counts as the driver's one trip).
    pub fn holds_driver(self) -> bool {
        matches!(
            self,
            Self::Offered | Self::Accepted | Self::Arrived | Self::InProgress
        )
    }

    /// Whether the state machine has an edge from `self` to `next`.
    pub fn can_become(self, next: TripState) -> bool {
        use TripState::*;
        match (self, next) {
            (from, Cancelled) => !from.is_terminal(),
            (Requested, Offered | Expired | Accepted) => true,
            (Offered, Accepted | Requested) => true,
            (Accepted, Arrived) | (Arrived, InProgress) | (InProgress, Completed) => true,
            _ => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Offered => "offered",
            Self::Accepted => "accepted",
            Self::Arrived => "arrived",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

impl std::fmt::Display for TripState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who caused a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    Rider,
    Driver,
    Dispatcher,
    /// The platform itself: matchers, the sweeper.
    System,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rider => "rider",
            Self::Driver => "driver",
            Self::Dispatcher => "dispatcher",
            Self::System => "system",
        }
    }
}

/// The kind of vehicle a driver has and a job may require.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VehicleClass {
    Standard,
    Comfort,
    Xl,
    Van,
    Bike,
}

impl VehicleClass {
    pub const ALL: [VehicleClass; 5] = [
        Self::Standard,
        Self::Comfort,
        Self::Xl,
        Self::Van,
        Self::Bike,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Comfort => "comfort",
            Self::Xl => "xl",
            Self::Van => "van",
            Self::Bike => "bike",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|class| class.as_str() == s)
    }
}

/// A stage a driver reports while carrying out a trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TripStage {
    /// At the pickup point.
    Arrived,
    /// Rider on board (or parcel collected).
    Started,
    /// At the dropoff point, job done.
    Completed,
}

impl TripStage {
    /// The state a trip enters when the driver reports this stage.
    pub fn target_state(self) -> TripState {
        match self {
            Self::Arrived => TripState::Arrived,
            Self::Started => TripState::InProgress,
            Self::Completed => TripState::Completed,
        }
    }
}

/// A trip as shown to its rider, its driver and dispatchers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TripView {
    pub trip_id: Uuid,
    pub state: TripState,
    pub rider_id: String,
    /// The driver offered or assigned, if any.
    pub driver_id: Option<String>,
    pub pickup: Point,
    pub dropoff: Point,
    pub vehicle_class: Option<VehicleClass>,
    pub min_capacity: Option<u16>,
    /// The region (H3 cell, hexadecimal) the pickup lies in.
    #[serde(with = "crate::geo::cell_hex")]
    #[schemars(with = "String")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub region: h3o::CellIndex,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// Incremented by every transition.
    pub version: i64,
    /// Who ended the trip and why, once cancelled or expired.
    pub ended_by: Option<Actor>,
    pub end_reason: Option<String>,
}
