//! The checks decoding applies to every client message, one typed error per reason.

use crate::error::ErrorCode;
use crate::time::UnixMillis;

/// Longest accepted id (driver, rider, dispatcher, idempotency key), in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest accepted free text (a cancel reason, a display name), in bytes.
pub const MAX_TEXT_LEN: usize = 280;
/// How far into the future a client timestamp may lie (clock skew allowance).
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;
/// How far into the past a client timestamp may lie.
pub const MAX_PAST_AGE_MS: i64 = 24 * 60 * 60 * 1000;
/// Fastest plausible vehicle speed, metres per second (about 300 km/h).
pub const MAX_SPEED_MPS: f32 = 83.0;
/// Worst accepted GPS accuracy radius, metres.
pub const MAX_ACCURACY_M: f32 = 10_000.0;
/// Largest vehicle capacity, seats or parcels.
pub const MAX_CAPACITY: u16 = 64;

/// Why a decoded message was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("{field} is not a finite number")]
    NotFinite { field: &'static str },
    #[error("{field} must be between -90 and 90, got {value}")]
    LatitudeOutOfRange { field: &'static str, value: f64 },
    #[error("{field} must be between -180 and 180, got {value}")]
    LongitudeOutOfRange { field: &'static str, value: f64 },
    #[error("heading must be in [0, 360), got {0}")]
    HeadingOutOfRange(f32),
    #[error("speed must be between 0 and {MAX_SPEED_MPS} m/s, got {0}")]
    SpeedOutOfRange(f32),
    #[error("accuracy must be between 0 and {MAX_ACCURACY_M} m, got {0}")]
    AccuracyOutOfRange(f32),
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is longer than {max} bytes")]
    TooLong { field: &'static str, max: usize },
    #[error("{field} may only contain letters, digits and _ : -")]
    BadCharacters { field: &'static str },
    #[error("{field} is not a plausible time: {value} ms is too far from now ({now} ms)")]
    TimestampOutOfRange {
        field: &'static str,
        value: UnixMillis,
        now: UnixMillis,
    },
    #[error("capacity must be between 1 and {MAX_CAPACITY}, got {0}")]
    CapacityOutOfRange(u16),
    #[error("viewport is invalid: {0}")]
    BadViewport(&'static str),
    #[error("pickup and dropoff are the same point")]
    SamePickupAndDropoff,
    #[error("too many items in {field}: at most {max}")]
    TooMany { field: &'static str, max: usize },
}

impl ValidationError {
    /// The error code a client sees for this reason.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFinite { .. }
            | Self::LatitudeOutOfRange { .. }
            | Self::LongitudeOutOfRange { .. } => ErrorCode::InvalidCoordinates,
            _ => ErrorCode::InvalidField,
        }
    }
}

/// Checks a latitude: finite and within [-90, 90].
pub fn latitude(field: &'static str, value: f64) -> Result<(), ValidationError> {
    if !value.is_finite() {
        return Err(ValidationError::NotFinite { field });
    }
    if !(-90.0..=90.0).contains(&value) {
        return Err(ValidationError::LatitudeOutOfRange { field, value });
    }
    Ok(())
}

/// Checks a longitude: finite and within [-180, 180].
pub fn longitude(field: &'static str, value: f64) -> Result<(), ValidationError> {
    if !value.is_finite() {
        return Err(ValidationError::NotFinite { field });
    }
    if !(-180.0..=180.0).contains(&value) {
        return Err(ValidationError::LongitudeOutOfRange { field, value });
    }
    Ok(())
}

/// Checks an identifier: 1 to [`MAX_ID_LEN`] bytes of `[A-Za-z0-9_:-]`. Ids become NATS
/// subject tokens, so dots, spaces and wildcards are refused.
pub fn id(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    if value.len() > MAX_ID_LEN {
        return Err(ValidationError::TooLong {
            field,
            max: MAX_ID_LEN,
        });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
    {
        return Err(ValidationError::BadCharacters { field });
    }
    Ok(())
}

/// Checks free text: at most [`MAX_TEXT_LEN`] bytes. Any characters are allowed; receivers
/// must treat it as text, never as markup or SQL.
pub fn text(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.len() > MAX_TEXT_LEN {
        return Err(ValidationError::TooLong {
            field,
            max: MAX_TEXT_LEN,
        });
    }
    Ok(())
}

/// Checks that a client timestamp lies within the accepted window around `now`.
pub fn timestamp(
    field: &'static str,
    value: UnixMillis,
    now: UnixMillis,
) -> Result<(), ValidationError> {
    if value > now.saturating_add(MAX_FUTURE_SKEW_MS) || value < now.saturating_sub(MAX_PAST_AGE_MS)
    {
        return Err(ValidationError::TimestampOutOfRange { field, value, now });
    }
    Ok(())
}

pub(crate) fn optional_f32(
    value: Option<f32>,
    field: &'static str,
    ok: impl Fn(f32) -> bool,
    err: impl Fn(f32) -> ValidationError,
) -> Result<(), ValidationError> {
    match value {
        Some(v) if !v.is_finite() => Err(ValidationError::NotFinite { field }),
        Some(v) if !ok(v) => Err(err(v)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(id("driver_id", "drv-42:b_c").is_ok());
        assert!(matches!(
            id("x", "a.b"),
            Err(ValidationError::BadCharacters { .. })
        ));
        assert!(matches!(
            id("x", "a>"),
            Err(ValidationError::BadCharacters { .. })
        ));
        assert_eq!(
            id("driver_id", ""),
            Err(ValidationError::Empty { field: "driver_id" })
        );
        assert!(matches!(
            id("x", &"a".repeat(65)),
            Err(ValidationError::TooLong { .. })
        ));
        assert!(matches!(
            id("x", "a b"),
            Err(ValidationError::BadCharacters { .. })
        ));
        assert!(matches!(
            id("x", "<script>"),
            Err(ValidationError::BadCharacters { .. })
        ));
        assert!(matches!(
            id("x", "'; drop table trips; --"),
            Err(ValidationError::BadCharacters { .. })
        ));
    }

    #[test]
    fn timestamps() {
        let now = 1_800_000_000_000;
        assert!(timestamp("ts", now, now).is_ok());
        assert!(timestamp("ts", now + MAX_FUTURE_SKEW_MS, now).is_ok());
        assert!(timestamp("ts", now + MAX_FUTURE_SKEW_MS + 1, now).is_err());
        assert!(timestamp("ts", now - MAX_PAST_AGE_MS - 1, now).is_err());
        assert!(timestamp("ts", i64::MIN, now).is_err());
        assert!(timestamp("ts", i64::MAX, now).is_err());
    }
}
