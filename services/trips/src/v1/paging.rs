//! Opaque cursors: where the previous page ended, base64url-encoded JSON. Clients pass them
//! back unchanged; anything else is refused as an invalid field.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Problem;

/// Longest cursor accepted, bytes.
const MAX_CURSOR_LEN: usize = 512;

pub fn encode<T: Serialize>(position: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(position).expect("cursor positions serialise"))
}

pub fn decode<T: DeserializeOwned>(cursor: &str) -> Result<T, Problem> {
    let invalid = || Problem::invalid("cursor is not one this API returned");
    if cursor.len() > MAX_CURSOR_LEN {
        return Err(invalid());
    }
    let json = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    serde_json::from_slice(&json).map_err(|_| invalid())
}

/// A page size from `limit`: 50 unless given, 1 to 500.
pub fn limit(limit: Option<i64>) -> Result<i64, Problem> {
    let limit = limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::invalid("limit must be between 1 and 500"));
    }
    Ok(limit)
}

/// Where a page of trips ended: the last trip's request time (microseconds) and id.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TripPosition {
    pub t: i64,
    pub id: uuid::Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let position = TripPosition {
            t: 1_764_800_000_123_456,
            id: uuid::Uuid::new_v4(),
        };
        assert_eq!(
            decode::<TripPosition>(&encode(&position)).unwrap(),
            position
        );
        for bad in ["", "!!", "eyJ0IjoxfQ", "' OR 1=1 --", &"a".repeat(600)] {
            assert!(decode::<TripPosition>(bad).is_err(), "{bad}");
        }
        assert!(limit(Some(0)).is_err());
        assert_eq!(limit(None).unwrap(), 50);
    }
}
