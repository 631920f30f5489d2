//! Which driver holds which trip (offered or under way), kept both ways: a driver holds at
//! most one trip and a trip has at most one driver, as the trips service's unique index has it.

use std::collections::HashMap;

use uuid::Uuid;

/// Drivers and the trips they hold, looked up either way.
#[derive(Debug, Default)]
pub struct Holdings {
    trip_of: HashMap<String, Uuid>,
    driver_of: HashMap<Uuid, String>,
}

impl Holdings {
    /// `driver` now holds `trip`: whoever held `trip` before, and whatever `driver` held
    /// before, are let go.
    pub fn hold(&mut self, driver: String, trip: Uuid) {
        self.release_trip(&trip);
        if let Some(previous) = self.trip_of.remove(&driver) {
            self.driver_of.remove(&previous);
        }
        self.driver_of.insert(trip, driver.clone());
        self.trip_of.insert(driver, trip);
    }

    /// `trip` no longer holds a driver; returns the driver it held.
    pub fn release_trip(&mut self, trip: &Uuid) -> Option<String> {
        let driver = self.driver_of.remove(trip)?;
        self.trip_of.remove(&driver);
        Some(driver)
    }

    pub fn is_busy(&self, driver: &str) -> bool {
        self.trip_of.contains_key(driver)
    }

    /// Drivers holding a trip.
    pub fn len(&self) -> usize {
        self.trip_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trip_of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_stay_in_step() {
        let (t1, t2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut holdings = Holdings::default();
        holdings.hold("d1".into(), t1);
        assert!(holdings.is_busy("d1"));
        // Another driver takes the trip: the first is free.
        holdings.hold("d2".into(), t1);
        assert!(!holdings.is_busy("d1") && holdings.is_busy("d2"));
        // The driver moves on to another trip: the first trip holds no one.
        holdings.hold("d2".into(), t2);
        assert_eq!(holdings.release_trip(&t1), None);
        assert_eq!(holdings.len(), 1);
        assert_eq!(holdings.release_trip(&t2).as_deref(), Some("d2"));
        assert!(holdings.is_empty());
    }
}
