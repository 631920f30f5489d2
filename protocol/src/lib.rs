//! Every message that crosses a process boundary, and the rules for building and checking them.
//!
//! - [`client`]: the JSON protocol spoken over WebSocket by drivers, riders and dispatchers.
//! - [`bus`]: the payloads services exchange on NATS, encoded with [`codec`].
//! - [`subjects`]: every NATS subject, built from typed parts under a configurable prefix.
//! - [`geo`]: points and the H3 partitioning (region and cell of a point, halo cells).
//! - [`rights`]: what each role may send, and what its commands become on the bus.
//! - [`token`]: the signed tokens clients present at connect.
//! - [`validate`]: the checks that decoding applies, each failure a typed [`ValidationError`].
//! - [`events`]: the JSON events integrators receive on NATS and by webhook, and their signing.
//! - [`zone`]: zones (named polygons with a kind), their validation and a point index.
//!
//! This crate depends on no service: services depend on it.

pub mod area;
pub mod bus;
pub mod client;
pub mod codec;
pub mod error;
pub mod events;
pub mod geo;
pub mod rights;
pub mod subjects;
pub mod time;
pub mod token;
pub mod trip;
pub mod validate;
pub mod zone;

pub use error::ErrorCode;
pub use geo::{GeoConfig, Point};
pub use subjects::Subjects;
pub use trip::{Actor, TripState, TripView, VehicleClass};
pub use validate::ValidationError;

/// Versions of the client protocol this build speaks, newest last.
pub const SUPPORTED_VERSIONS: &[u16] = &[1];

/// The version a server picks from those a client offers: the newest both speak.
pub fn negotiate_version(offered: &[u16]) -> Option<u16> {
    SUPPORTED_VERSIONS
        .iter()
        .rev()
        .find(|v| offered.contains(v))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_newest_common_version() {
        assert_eq!(negotiate_version(&[1]), Some(1));
        assert_eq!(negotiate_version(&[0, 1, 7]), Some(1));
        assert_eq!(negotiate_version(&[2, 3]), None);
        assert_eq!(negotiate_version(&[]), None);
    }
}
