//! The live index of drivers: latest position, cell, status and vehicle of each, bucketed by
//! H3 cell so that the nearest drivers to a point are found ring by ring.

use std::collections::HashMap;
use std::time::Instant;

use h3o::{CellIndex, LatLng, Resolution};
use protocol::Point;
use protocol::bus::Position;
use protocol::client::VehicleStatus;
use protocol::time::UnixMillis;
use protocol::trip::VehicleClass;

/// One driver as the index knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Driver {
    pub id: String,
    pub point: Point,
    pub cell: CellIndex,
    pub heading: Option<f32>,
    pub status: VehicleStatus,
    pub vehicle_class: Option<VehicleClass>,
    pub capacity: u16,
    /// The device time and sequence of the latest accepted update.
    pub ts: UnixMillis,
    pub seq: u64,
    pub seen: Instant,
}

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    Inserted,
    Moved,
    Updated,
    /// Older than what the index has: dropped.
    Stale,
}

/// Distance in metres on a local planar approximation (equirectangular around `a`): within
/// 0.1% of the great-circle distance over the few kilometres matching looks at, and ten
/// times cheaper. The index ranks and filters with it.
pub fn local_distance_m(a: Point, b: Point) -> f64 {
    const METRES_PER_RADIAN: f64 = 6_371_008.8;
    let dy = (b.lat - a.lat).to_radians();
    let dx = (b.lng - a.lng).to_radians() * a.lat.to_radians().cos();
    METRES_PER_RADIAN * (dx * dx + dy * dy).sqrt()
}

/// Drivers in slots, slots bucketed by cell.
#[derive(Debug)]
pub struct Index {
    resolution: Resolution,
    slots: Vec<Option<Driver>>,
    free: Vec<u32>,
    by_id: HashMap<String, u32>,
    /// Slots per cell, and each driver's position in its cell's list (for O(1) removal).
    cells: HashMap<CellIndex, Vec<u32>>,
    position_in_cell: Vec<u32>,
    /// Conservative lower bound of the distance to any point of ring k is
    /// `ring_step_m * k - ring_slack_m`.
    ring_step_m: f64,
    ring_slack_m: f64,
    /// No point of a cell lies farther than this from the cell's centre.
    cell_radius_m: f64,
}

impl Index {
    pub fn new(resolution: Resolution) -> Self {
        let edge = resolution.edge_length_m();
        Self {
            resolution,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            cells: HashMap::new(),
            position_in_cell: Vec::new(),
            // Ring k's cell centres lie at least 1.5·k·edge from the origin's centre on a
            // regular grid; H3 cells vary in size, so take 70% of that, and allow for points
            // lying up to 1.3 edges from their cell's centre on both ends.
            ring_step_m: 1.5 * 0.7 * edge,
            ring_slack_m: 2.0 * 1.3 * edge,
            // A hexagon's circumradius is its edge; H3 cells vary in size, so allow 30% more.
            cell_radius_m: 1.3 * edge,
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    pub fn get(&self, id: &str) -> Option<&Driver> {
        self.by_id
            .get(id)
            .and_then(|&slot| self.slots[slot as usize].as_ref())
    }

    /// Drivers in slot order, for counting and brute-force checks.
    pub fn iter(&self) -> impl Iterator<Item = &Driver> {
        self.slots.iter().flatten()
    }

    pub fn cell_of(&self, point: Point) -> Option<CellIndex> {
        LatLng::new(point.lat, point.lng)
            .ok()
            .map(|ll| ll.to_cell(self.resolution))
    }

    /// Applies a position report; stale ones (`ReportStamp::supersedes`) are dropped.
    pub fn update(&mut self, position: &Position, now: Instant) -> Update {
        let Some(cell) = self.cell_of(position.point()) else {
            return Update::Stale;
        };
        if let Some(&slot) = self.by_id.get(&position.driver_id) {
            let driver = self.slots[slot as usize]
                .as_mut()
                .expect("indexed slots are full");
            let stamp = |seq, ts| protocol::client::ReportStamp { seq, ts };
            if !stamp(position.seq, position.ts).supersedes(stamp(driver.seq, driver.ts)) {
                return Update::Stale;
            }
            driver.point = position.point();
            driver.heading = position.heading;
            driver.status = position.status;
            driver.vehicle_class = position.vehicle_class;
            driver.capacity = position.capacity;
            driver.ts = position.ts;
            driver.seq = position.seq;
            driver.seen = now;
            if driver.cell == cell {
                return Update::Updated;
            }
            let old = std::mem::replace(&mut driver.cell, cell);
            self.unlink(slot, old);
            self.link(slot, cell);
            return Update::Moved;
        }
        let driver = Driver {
            id: position.driver_id.clone(),
            point: position.point(),
            cell,
            heading: position.heading,
            status: position.status,
            vehicle_class: position.vehicle_class,
            capacity: position.capacity,
            ts: position.ts,
            seq: position.seq,
            seen: now,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(driver);
                slot
            }
            None => {
                self.slots.push(Some(driver));
                self.position_in_cell.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(position.driver_id.clone(), slot);
        self.link(slot, cell);
        Update::Inserted
    }

    fn link(&mut self, slot: u32, cell: CellIndex) {
        let list = self.cells.entry(cell).or_default();
        self.position_in_cell[slot as usize] = list.len() as u32;
        list.push(slot);
    }

    fn unlink(&mut self, slot: u32, cell: CellIndex) {
        let list = self
            .cells
            .get_mut(&cell)
            .expect("a linked slot's cell has a list");
        let at = self.position_in_cell[slot as usize] as usize;
        list.swap_remove(at);
        if let Some(&moved) = list.get(at) {
            self.position_in_cell[moved as usize] = at as u32;
        }
        if list.is_empty() {
            self.cells.remove(&cell);
        }
    }

    /// Removes a driver; returns whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(slot) = self.by_id.remove(id) else {
            return false;
        };
        let driver = self.slots[slot as usize]
            .take()
            .expect("indexed slots are full");
        self.unlink(slot, driver.cell);
        self.free.push(slot);
        true
    }

    /// Sets a driver's status without a position (from trip events and status changes).
    pub fn set_status(&mut self, id: &str, status: VehicleStatus) {
        if let Some(&slot) = self.by_id.get(id)
            && let Some(driver) = self.slots[slot as usize].as_mut()
        {
            driver.status = status;
        }
    }

    /// Removes drivers not heard from since `cutoff`; returns how many.
    pub fn evict_older_than(&mut self, cutoff: Instant) -> usize {
        let stale: Vec<String> = self
            .iter()
            .filter(|d| d.seen < cutoff)
            .map(|d| d.id.clone())
            .collect();
        for id in &stale {
            self.remove(id);
        }
        stale.len()
    }

    /// Up to `k` drivers nearest to `point` within `max_m` metres (by [`local_distance_m`])
    /// that `eligible` accepts, nearest first, searched in expanding rings of cells.
    pub fn nearest(
        &self,
        point: Point,
        k: usize,
        max_m: f64,
        mut eligible: impl FnMut(&Driver) -> bool,
    ) -> Vec<(&Driver, f64)> {
        let Some(origin) = self.cell_of(point) else {
            return Vec::new();
        };
        let mut best: Vec<(&Driver, f64)> = Vec::with_capacity(k + 1);
        if k == 0 {
            return best;
        }
        for ring in 0u32.. {
            let bound = (self.ring_step_m * f64::from(ring) - self.ring_slack_m).max(0.0);
            if bound > max_m || (best.len() == k && bound > best[k - 1].1) {
                break;
            }
            let cells: Vec<CellIndex> =
                match origin.grid_ring_fast(ring).collect::<Option<Vec<_>>>() {
                    Some(cells) => cells,
                    // Near a pentagon: the slower, exact way.
                    None => origin
                        .grid_disk_distances::<Vec<_>>(ring)
                        .into_iter()
                        .filter(|&(_, d)| d == ring)
                        .map(|(c, _)| c)
                        .collect(),
                };
            let mut ring_reachable = false;
            for cell in cells {
                // Skip cells whose nearest possible point is beyond what we look for.
                let centre = LatLng::from(cell);
                let to_centre = local_distance_m(point, Point::new(centre.lat(), centre.lng()));
                let cell_bound = (to_centre - self.cell_radius_m).max(0.0);
                if cell_bound > max_m || (best.len() == k && cell_bound >= best[k - 1].1) {
                    continue;
                }
                ring_reachable = true;
                let Some(slots) = self.cells.get(&cell) else {
                    continue;
                };
                for &slot in slots {
                    let driver = self.slots[slot as usize]
                        .as_ref()
                        .expect("linked slots are full");
                    let distance = local_distance_m(point, driver.point);
                    if distance > max_m || (best.len() == k && distance >= best[k - 1].1) {
                        continue;
                    }
                    if !eligible(driver) {
                        continue;
                    }
                    let at = best.partition_point(|(_, d)| *d <= distance);
                    best.insert(at, (driver, distance));
                    best.truncate(k);
                }
            }
            // A ring none of whose cells could hold a closer driver (or any within `max_m`)
            // ends the search: the next rings only lie farther out.
            if !ring_reachable && ring >= 1 {
                break;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BERLIN: Point = Point::new(52.52, 13.405);

    fn position(id: &str, point: Point, seq: u64) -> Position {
        Position {
            driver_id: id.into(),
            lat: point.lat,
            lng: point.lng,
            heading: None,
            speed: None,
            accuracy: None,
            ts: seq as i64,
            seq,
            status: VehicleStatus::Available,
            vehicle_class: Some(VehicleClass::Standard),
            capacity: 4,
            trip_id: None,
            received_us: 0,
        }
    }

    #[test]
    fn insert_move_update_stale_remove() {
        let mut index = Index::new(Resolution::Eight);
        let now = Instant::now();
        assert_eq!(
            index.update(&position("a", BERLIN, 1), now),
            Update::Inserted
        );
        assert_eq!(
            index.update(&position("a", BERLIN, 2), now),
            Update::Updated
        );
        assert_eq!(index.update(&position("a", BERLIN, 2), now), Update::Stale);
        assert_eq!(index.update(&position("a", BERLIN, 1), now), Update::Stale);
        let far = Point::new(52.60, 13.50);
        assert_eq!(index.update(&position("a", far, 3), now), Update::Moved);
        assert_eq!(index.get("a").unwrap().cell, index.cell_of(far).unwrap());
        assert_eq!(index.nearest(far, 1, 1_000.0, |_| true).len(), 1);
        assert!(index.nearest(BERLIN, 1, 1_000.0, |_| true).is_empty());
        assert!(index.remove("a"));
        assert!(!index.remove("a"));
        assert!(index.is_empty());
        assert!(index.cells.is_empty());
    }

    #[test]
    fn silent_drivers_are_evicted() {
        let mut index = Index::new(Resolution::Eight);
        let start = Instant::now();
        index.update(&position("old", BERLIN, 1), start);
        let later = start + std::time::Duration::from_secs(60);
        index.update(&position("new", BERLIN, 1), later);
        assert_eq!(
            index.evict_older_than(later - std::time::Duration::from_secs(30)),
            1
        );
        assert!(index.get("old").is_none());
        assert!(index.get("new").is_some());
        // Freed slots are reused and cell lists stay consistent.
        index.update(&position("again", BERLIN, 1), later);
        assert_eq!(index.nearest(BERLIN, 5, 100.0, |_| true).len(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]
        #[test]
        fn ring_search_finds_what_brute_force_finds(
            drivers in proptest::collection::vec((-0.05..0.05f64, -0.08..0.08f64, any::<bool>()), 0..300),
            moves in proptest::collection::vec((0..300usize, -0.05..0.05f64, -0.08..0.08f64), 0..100),
            removals in proptest::collection::vec(0..300usize, 0..30),
            pickup in (-0.05..0.05f64, -0.08..0.08f64),
            k in 1..8usize,
            max_m in 200.0..8_000.0f64,
        ) {
            let mut index = Index::new(Resolution::Eight);
            let now = Instant::now();
            let mut available = HashMap::new();
            for (i, (dlat, dlng, free)) in drivers.iter().enumerate() {
                let id = format!("d{i}");
                index.update(&position(&id, Point::new(BERLIN.lat + dlat, BERLIN.lng + dlng), 1), now);
                available.insert(id, *free);
            }
            for (i, dlat, dlng) in moves {
                if i < drivers.len() {
                    index.update(&position(&format!("d{i}"), Point::new(BERLIN.lat + dlat, BERLIN.lng + dlng), 2), now);
                }
            }
            for i in removals {
                index.remove(&format!("d{i}"));
            }
            let pickup = Point::new(BERLIN.lat + pickup.0, BERLIN.lng + pickup.1);
            let eligible = |d: &Driver| available[&d.id];
            let found: Vec<f64> = index.nearest(pickup, k, max_m, eligible).iter().map(|(_, d)| *d).collect();
            let mut brute: Vec<f64> = index
                .iter()
                .filter(|d| eligible(d))
                .map(|d| local_distance_m(pickup, d.point))
                .filter(|d| *d <= max_m)
                .collect();
            brute.sort_by(f64::total_cmp);
            brute.truncate(k);
            prop_assert_eq!(found, brute);
        }
    }
}
