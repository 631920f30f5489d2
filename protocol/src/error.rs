//! The closed set of error codes a client can receive, with whether retrying can help.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a request failed. Clients branch on this; the accompanying message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No token, a forged or an expired one.
    Unauthorized,
    /// The token is fine but its role or subject may not do this.
    Forbidden,
    /// None of the offered protocol versions is spoken by the server.
    UnsupportedVersion,
    /// The frame is not a valid message (bad JSON, unknown type, wrong field types, binary).
    InvalidMessage,
    /// A coordinate is not finite or out of range.
    InvalidCoordinates,
    /// A field other than a coordinate failed validation.
    InvalidField,
    /// A frame or message exceeds the size limit.
    TooLarge,
    /// The client sends faster than its rate limit allows.
    RateLimited,
    /// A location update older than one already accepted.
    StaleUpdate,
    /// The trip, driver or offer does not exist (or is not visible to this client).
    NotFound,
    /// The trip is not in a state that allows this command.
    InvalidTransition,
    /// Another actor got there first (the driver is busy, the offer was taken).
    Conflict,
    /// The point lies outside the service area.
    OutsideServiceArea,
    /// A dependency is down; retry later with the same idempotency key.
    Unavailable,
    /// The command was not answered in time; retry later with the same idempotency key.
    Timeout,
    /// A bug on our side.
    Internal,
    // Later codes go last: the bus encodes variants by position.
    /// The driver reported arriving while its latest position is too far from the pickup.
    NotAtPickup,
    /// The pickup lies in a zone where pickups are not allowed.
    PickupNotAllowed,
}

impl ErrorCode {
    /// Whether sending the same command again later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Unavailable | Self::Timeout | Self::RateLimited | Self::Internal
        )
    }

    /// The code as it appears on the wire, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::UnsupportedVersion => "unsupported_version",
            Self::InvalidMessage => "invalid_message",
            Self::InvalidCoordinates => "invalid_coordinates",
            Self::InvalidField => "invalid_field",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::StaleUpdate => "stale_update",
            Self::NotFound => "not_found",
            Self::InvalidTransition => "invalid_transition",
            Self::Conflict => "conflict",
            Self::OutsideServiceArea => "outside_service_area",
            Self::NotAtPickup => "not_at_pickup",
            Self::PickupNotAllowed => "pickup_not_allowed",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde() {
        for code in [
            ErrorCode::Unauthorized,
            ErrorCode::OutsideServiceArea,
            ErrorCode::NotAtPickup,
            ErrorCode::PickupNotAllowed,
            ErrorCode::InvalidTransition,
            ErrorCode::Unavailable,
        ] {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }
}
