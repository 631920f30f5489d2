//! Reading rows: the columns every trip query selects and the record they make, and the one
//! reader of a driver's columns that every query of drivers shares.

use protocol::Point;
use protocol::bus::DriverRecord as BusDriver;
use protocol::client::DriverState;
use protocol::trip::{Actor, TripState, TripView, VehicleClass};
use tokio_postgres::Row;

use crate::machine::{DriverRecord, TripRecord};

/// The columns every trip query selects, in the order [`trip_from_row`] reads them.
pub const TRIP_COLUMNS: &str = "trip_id, state, rider_id, driver_id, pickup_lat, pickup_lng, \
     dropoff_lat, dropoff_lng, vehicle_class, min_capacity, region, \
     (extract(epoch from requested_at) * 1000)::int8, (extract(epoch from updated_at) * 1000)::int8, \
     version, ended_by, end_reason, excluded_drivers, \
     (extract(epoch from search_deadline) * 1000)::int8, \
     (extract(epoch from offer_expires_at) * 1000)::int8, dispatch_attempts";

/// The driver columns every driver query selects, in the order [`DriverColumns::read`] reads
/// them (from the column given).
pub const DRIVER_COLUMNS: &str = "online, vehicle_class, capacity";

/// A driver's row, as [`DRIVER_COLUMNS`] selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverColumns {
    pub online: bool,
    pub vehicle_class: Option<VehicleClass>,
    pub capacity: Option<u16>,
}

impl DriverColumns {
    /// Reads [`DRIVER_COLUMNS`] starting at column `first`.
    pub fn read(row: &Row, first: usize) -> Self {
        Self {
            online: row.get(first),
            vehicle_class: row
                .get::<_, Option<&str>>(first + 1)
                .and_then(VehicleClass::parse),
            capacity: row.get::<_, Option<i16>>(first + 2).map(|c| c as u16),
        }
    }

    /// What the state machine needs of the driver.
    pub fn record(self) -> DriverRecord {
        DriverRecord {
            online: self.online,
            vehicle_class: self.vehicle_class,
            capacity: self.capacity,
        }
    }

    /// What a reconnecting driver is told of itself.
    pub fn state(self) -> DriverState {
        DriverState {
            online: self.online,
            vehicle_class: self.vehicle_class,
            capacity: self.capacity,
        }
    }

    /// What a matcher loads of a busy driver.
    pub fn bus(self, driver_id: String, active_trip: Option<uuid::Uuid>) -> BusDriver {
        BusDriver {
            driver_id,
            online: self.online,
            vehicle_class: self.vehicle_class,
            capacity: self.capacity,
            active_trip,
        }
    }
}

fn actor_from(s: &str) -> Option<Actor> {
    [
        Actor::Rider,
        Actor::Driver,
        Actor::Dispatcher,
        Actor::System,
    ]
    .into_iter()
    .find(|a| a.as_str() == s)
}

/// Reads a trip selected with [`TRIP_COLUMNS`].
pub fn trip_from_row(row: &Row) -> TripRecord {
    let state: &str = row.get(1);
    let class: Option<&str> = row.get(8);
    let min_capacity: Option<i16> = row.get(9);
    let ended_by: Option<&str> = row.get(14);
    TripRecord {
        view: TripView {
            trip_id: row.get(0),
            state: TripState::parse(state).expect("the schema restricts states"),
            rider_id: row.get(2),
            driver_id: row.get(3),
            pickup: Point::new(row.get(4), row.get(5)),
            dropoff: Point::new(row.get(6), row.get(7)),
            vehicle_class: class.and_then(VehicleClass::parse),
            min_capacity: min_capacity.map(|c| c as u16),
            region: protocol::geo::parse_cell(row.get(10))
                .expect("the schema restricts regions to cells"),
            created_at: row.get(11),
            updated_at: row.get(12),
            version: row.get(13),
            ended_by: ended_by.and_then(actor_from),
            end_reason: row.get(15),
        },
        excluded_drivers: row.get(16),
        search_deadline: row.get(17),
        offer_expires_at: row.get(18),
        dispatch_attempts: row.get(19),
    }
}
