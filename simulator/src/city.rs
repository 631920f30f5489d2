//! The simulated city: where points are drawn from and how vehicles move.

use protocol::Point;
use rand::Rng;

/// A disk around a centre.
#[derive(Debug, Clone, Copy)]
pub struct City {
    pub center: Point,
    pub radius_m: f64,
}

const METRES_PER_DEGREE: f64 = 111_320.0;

impl City {
    /// A point drawn uniformly from the disk.
    pub fn random_point(&self, rng: &mut impl Rng) -> Point {
        let r = self.radius_m * rng.random::<f64>().sqrt();
        let angle = rng.random::<f64>() * std::f64::consts::TAU;
        self.offset(self.center, r * angle.cos(), r * angle.sin())
    }

    /// A point `north_m` and `east_m` metres from `from`.
    pub fn offset(&self, from: Point, north_m: f64, east_m: f64) -> Point {
        let lat = from.lat + north_m / METRES_PER_DEGREE;
        let lng = from.lng + east_m / (METRES_PER_DEGREE * from.lat.to_radians().cos());
        Point::new(lat, lng)
    }

    /// A point drawn within `spread_m` of `anchor` along each axis (the border scenario's
    /// pickups, around a point on a region boundary).
    pub fn point_near(&self, anchor: Point, spread_m: f64, rng: &mut impl Rng) -> Point {
        let north = (rng.random::<f64>() - 0.5) * 2.0 * spread_m;
        let east = (rng.random::<f64>() - 0.5) * 2.0 * spread_m;
        self.offset(anchor, north, east)
    }
}

/// Moves `from` towards `to` by at most `step_m`; returns the new point and whether it arrived.
pub fn step_towards(from: Point, to: Point, step_m: f64) -> (Point, bool) {
    let distance = from.distance_m(&to);
    if distance <= step_m || distance < 1.0 {
        return (to, true);
    }
    let f = step_m / distance;
    (
        Point::new(
            from.lat + (to.lat - from.lat) * f,
            from.lng + (to.lng - from.lng) * f,
        ),
        false,
    )
}

/// Compass heading from `from` to `to`, degrees in [0, 360).
pub fn heading(from: Point, to: Point) -> f32 {
    let dy = to.lat - from.lat;
    let dx = (to.lng - from.lng) * from.lat.to_radians().cos();
    let degrees = dx.atan2(dy).to_degrees();
    (degrees.rem_euclid(360.0) as f32).min(359.99)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn points_stay_in_the_city_and_runs_repeat() {
        let city = City {
            center: Point::new(52.52, 13.405),
            radius_m: 5_000.0,
        };
        let mut a = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..1_000 {
            let p = city.random_point(&mut a);
            assert!(city.center.distance_m(&p) <= 5_001.0);
            assert_eq!(p, city.random_point(&mut b));
        }
    }

    #[test]
    fn stepping_arrives() {
        let from = Point::new(52.52, 13.405);
        let to = Point::new(52.53, 13.405);
        let (mid, arrived) = step_towards(from, to, 500.0);
        assert!(!arrived);
        assert!((from.distance_m(&mid) - 500.0).abs() < 1.0);
        assert!(step_towards(mid, to, 10_000.0).1);
        assert!((heading(from, to) - 0.0).abs() < 0.1);
        assert!((heading(to, from) - 180.0).abs() < 0.1);
    }
}
