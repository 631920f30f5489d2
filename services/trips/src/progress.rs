//! Plausible progress: a driver's `arrived` and `completed` checked against the driver's
//! position when it made the report, which the gateway adds to it.
//!
//! `arrived` far from the pickup is refused (the rider would be told the driver is there when
//! it is not); `completed` far from the dropoff is taken, since the rider may have got out
//! early, but its distance is recorded on the event and flagged for dispatchers. A report with
//! no position (the driver's session had none yet, after a reconnect) is taken unchecked.

use protocol::bus::CommandError;
use protocol::trip::{TripStage, TripView};
use protocol::{ErrorCode, Point};

use crate::meters as m;

/// How far from where it happens a driver's progress may be reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plausibility {
    /// `arrived` is refused when the driver is farther than this from the pickup, metres.
    pub arrival_radius_m: f64,
    /// `completed` farther than this from the dropoff is flagged, metres.
    pub dropoff_radius_m: f64,
}

impl Default for Plausibility {
    fn default() -> Self {
        Self {
            arrival_radius_m: 250.0,
            dropoff_radius_m: 500.0,
        }
    }
}

/// What a report's position says about it, recorded on its event.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Checked {
    /// Where the driver was, when the gateway knew.
    pub position: Option<Point>,
    /// Metres from the stage's place (the pickup for arrived and started, the dropoff for
    /// completed); unknown without a position.
    pub distance_m: Option<f64>,
    /// A completion beyond the dropoff radius, shown to dispatchers.
    pub flagged: bool,
}

impl Plausibility {
    /// Checks a report of `stage` on `trip` made at `position`.
    pub fn check(
        &self,
        trip: &TripView,
        stage: TripStage,
        position: Option<Point>,
    ) -> Result<Checked, CommandError> {
        let (place, stage_name) = match stage {
            TripStage::Arrived => (trip.pickup, "arrived"),
            TripStage::Started => (trip.pickup, "started"),
            TripStage::Completed => (trip.dropoff, "completed"),
        };
        let Some(at) = position else {
            metrics::counter!(m::PROGRESS_CHECKS, "stage" => stage_name, "outcome" => "unchecked")
                .increment(1);
            return Ok(Checked::default());
        };
        let distance_m = at.distance_m(&place);
        let checked = Checked {
            position: Some(at),
            distance_m: Some(distance_m),
            flagged: stage == TripStage::Completed && distance_m > self.dropoff_radius_m,
        };
        let outcome = if stage == TripStage::Arrived && distance_m > self.arrival_radius_m {
            "refused"
        } else if checked.flagged {
            "flagged"
        } else {
            "near"
        };
        metrics::counter!(m::PROGRESS_CHECKS, "stage" => stage_name, "outcome" => outcome)
            .increment(1);
        if outcome == "refused" {
            return Err(CommandError::new(
                ErrorCode::NotAtPickup,
                format!(
                    "your latest position is {:.0} m from the pickup; arrive within {:.0} m \
                     (report your position, then arrived again)",
                    distance_m, self.arrival_radius_m
                ),
            ));
        }
        Ok(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::trip::TripState;
    use uuid::Uuid;

    const PICKUP: Point = Point::new(52.52, 13.405);
    const DROPOFF: Point = Point::new(52.53, 13.405);

    fn trip() -> TripView {
        TripView {
            trip_id: Uuid::nil(),
            state: TripState::Accepted,
            rider_id: "r1".into(),
            driver_id: Some("d1".into()),
            pickup: PICKUP,
            dropoff: DROPOFF,
            vehicle_class: None,
            min_capacity: None,
            region: protocol::GeoConfig::default().region_of(PICKUP).unwrap(),
            created_at: 0,
            updated_at: 0,
            version: 3,
            ended_by: None,
            end_reason: None,
        }
    }

    /// `metres` north of `from`.
    fn north(from: Point, metres: f64) -> Point {
        Point::new(from.lat + metres / 111_195.0, from.lng)
    }

    #[test]
    fn arrived_is_refused_beyond_the_radius_and_taken_within_it() {
        let rules = Plausibility::default();
        let near = rules
            .check(&trip(), TripStage::Arrived, Some(north(PICKUP, -200.0)))
            .unwrap();
        assert!((near.distance_m.unwrap() - 200.0).abs() < 1.0, "{near:?}");
        assert!(!near.flagged);
        let error = rules
            .check(&trip(), TripStage::Arrived, Some(north(PICKUP, -300.0)))
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::NotAtPickup);
        assert!(error.message.contains("300 m from the pickup"), "{error}");
    }

    #[test]
    fn a_far_completion_is_taken_and_flagged_with_its_distance() {
        let rules = Plausibility::default();
        let far = rules
            .check(&trip(), TripStage::Completed, Some(north(DROPOFF, 2_000.0)))
            .unwrap();
        assert!(far.flagged);
        assert!((far.distance_m.unwrap() - 2_000.0).abs() < 2.0, "{far:?}");
        let near = rules
            .check(&trip(), TripStage::Completed, Some(north(DROPOFF, 100.0)))
            .unwrap();
        assert!(!near.flagged);
        // Started far from the pickup is recorded, neither refused nor flagged.
        let started = rules
            .check(&trip(), TripStage::Started, Some(DROPOFF))
            .unwrap();
        assert!(!started.flagged && started.distance_m.unwrap() > 1_000.0);
    }

    #[test]
    fn a_report_without_a_position_is_taken_unchecked() {
        let rules = Plausibility {
            arrival_radius_m: 1.0,
            dropoff_radius_m: 1.0,
        };
        for stage in [TripStage::Arrived, TripStage::Started, TripStage::Completed] {
            assert_eq!(
                rules.check(&trip(), stage, None).unwrap(),
                Checked::default()
            );
        }
    }
}
