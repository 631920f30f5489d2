//! Points on the Earth and the H3 partitioning of the world into regions and cells.
//!
//! A *region* is a point's H3 cell at a coarse resolution (a metro area); a *cell* is its H3
//! cell at a mid resolution (a few km²). Locations are published on subjects naming both, and
//! a cell's region is always its `parent()` at the region resolution: routing never depends on
//! geometry.

use std::collections::BTreeSet;

use h3o::{CellIndex, LatLng, Resolution};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::{self, ValidationError};

/// A WGS84 position in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Point {
    /// Latitude in degrees, -90 to 90.
    #[schemars(range(min = -90.0, max = 90.0))]
    #[cfg_attr(feature = "openapi", schema(minimum = -90.0, maximum = 90.0))]
    pub lat: f64,
    /// Longitude in degrees, -180 to 180.
    #[schemars(range(min = -180.0, max = 180.0))]
    #[cfg_attr(feature = "openapi", schema(minimum = -180.0, maximum = 180.0))]
    pub lng: f64,
}

impl Point {
    pub const fn new(lat: f64, lng: f64) -> Self {
        Self { lat, lng }
    }

    /// Checks that both coordinates are finite and in range, naming `field` in the error.
    pub fn validate(&self, field: &'static str) -> Result<(), ValidationError> {
        validate::latitude(field, self.lat)?;
        validate::longitude(field, self.lng)
    }

    /// Great-circle distance in metres (haversine).
    pub fn distance_m(&self, other: &Point) -> f64 {
        const EARTH_RADIUS_M: f64 = 6_371_008.8;
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlng = (other.lng - self.lng).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * a.sqrt().asin()
    }

    fn to_latlng(self) -> Result<LatLng, ValidationError> {
        self.validate("point")?;
        LatLng::new(self.lat, self.lng).map_err(|_| ValidationError::NotFinite { field: "point" })
    }
}

/// The resolutions that partition the world, shared by every service of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeoConfig {
    /// Resolution of regions: the unit a matcher serves and a subject's first geo token.
    pub region_res: Resolution,
    /// Resolution of cells: the unit a dashboard subscribes to and a subject's second geo token.
    pub cell_res: Resolution,
}

impl Default for GeoConfig {
    fn default() -> Self {
        Self {
            region_res: Resolution::Five,
            cell_res: Resolution::Seven,
        }
    }
}

/// Why a [`GeoConfig`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeoConfigError {
    #[error("resolution {0} is not an H3 resolution (0 to 15)")]
    BadResolution(u8),
    #[error("region resolution {region} must be coarser than cell resolution {cell}")]
    NotNested { region: u8, cell: u8 },
}

impl GeoConfig {
    /// Builds a configuration from raw resolutions; the region must be strictly coarser.
    pub fn new(region_res: u8, cell_res: u8) -> Result<Self, GeoConfigError> {
        let region = Resolution::try_from(region_res)
            .map_err(|_| GeoConfigError::BadResolution(region_res))?;
        let cell =
            Resolution::try_from(cell_res).map_err(|_| GeoConfigError::BadResolution(cell_res))?;
        if region >= cell {
            return Err(GeoConfigError::NotNested {
                region: region_res,
                cell: cell_res,
            });
        }
        Ok(Self {
            region_res: region,
            cell_res: cell,
        })
    }

    /// The cell of a point at the cell resolution.
    pub fn cell_of(&self, point: Point) -> Result<CellIndex, ValidationError> {
        Ok(point.to_latlng()?.to_cell(self.cell_res))
    }

    /// The region containing a cell (its parent at the region resolution).
    pub fn region_of_cell(&self, cell: CellIndex) -> CellIndex {
        cell.parent(self.region_res)
            .expect("cell resolution is finer than region resolution")
    }

    /// The region and cell of a point.
    pub fn locate(&self, point: Point) -> Result<(CellIndex, CellIndex), ValidationError> {
        let cell = self.cell_of(point)?;
        Ok((self.region_of_cell(cell), cell))
    }

    /// The region and cell of a point, and its cell at `fine` as well (for a finer index, such
    /// as the zones'), from one conversion of the point: the coarser cells are its parents.
    pub fn locate_with(
        &self,
        point: Point,
        fine: Resolution,
    ) -> Result<(CellIndex, CellIndex, CellIndex), ValidationError> {
        let finest = point.to_latlng()?.to_cell(fine.max(self.cell_res));
        let cell = finest.parent(self.cell_res).unwrap_or(finest);
        let at_fine = finest.parent(fine).unwrap_or(finest);
        Ok((self.region_of_cell(cell), cell, at_fine))
    }

    /// The region of a point.
    pub fn region_of(&self, point: Point) -> Result<CellIndex, ValidationError> {
        Ok(point.to_latlng()?.to_cell(self.region_res))
    }

    /// Every cell of a region at the cell resolution.
    pub fn cells_of_region(&self, region: CellIndex) -> Vec<CellIndex> {
        region.children(self.cell_res).collect()
    }

    /// The cells outside `region` within `rings` grid steps of its border, at the cell
    /// resolution: what a matcher of `region` subscribes to besides the region itself, so that
    /// a pickup near the border sees drivers across it. Sorted, without duplicates.
    pub fn halo_cells(&self, region: CellIndex, rings: u32) -> Vec<CellIndex> {
        let mut halo = BTreeSet::new();
        for cell in region.children(self.cell_res) {
            for neighbour in cell.grid_disk::<Vec<_>>(rings) {
                if self.region_of_cell(neighbour) != region {
                    halo.insert(neighbour);
                }
            }
        }
        halo.into_iter().collect()
    }
}

impl GeoConfig {
    /// The regions that cover a disk of `radius_m` metres around `center` (every region any
    /// part of the disk may fall in).
    pub fn regions_covering(
        &self,
        center: Point,
        radius_m: f64,
    ) -> Result<Vec<CellIndex>, ValidationError> {
        let origin = self.region_of(center)?;
        let edge = self.region_res.edge_length_m();
        let rings = (radius_m / (1.5 * 0.7 * edge)).ceil() as u32 + 1;
        let reach = radius_m + 2.0 * 1.3 * edge;
        Ok(origin
            .grid_disk::<Vec<_>>(rings)
            .into_iter()
            .filter(|cell| {
                let c = LatLng::from(*cell);
                center.distance_m(&Point::new(c.lat(), c.lng())) <= reach
            })
            .collect())
    }
}

/// Parses a cell index from its hexadecimal form (as in subjects).
pub fn parse_cell(s: &str) -> Option<CellIndex> {
    s.parse().ok()
}

/// A cell written as its hexadecimal index, as it crosses JSON, the bus and the database
/// (`#[serde(with = "protocol::geo::cell_hex")]`): the same text as a `String` field holding
/// it, so the wire does not change, but a value that is not a cell is refused where it is
/// read instead of wherever it is used.
pub mod cell_hex {
    use h3o::CellIndex;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(cell: &CellIndex, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(cell)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<CellIndex, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        text.parse()
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not an H3 cell")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERLIN: Point = Point::new(52.520_008, 13.404_954);

    #[test]
    fn region_is_parent_of_cell() {
        let geo = GeoConfig::default();
        let (region, cell) = geo.locate(BERLIN).unwrap();
        assert_eq!(region.resolution(), Resolution::Five);
        assert_eq!(cell.resolution(), Resolution::Seven);
        assert_eq!(cell.parent(Resolution::Five), Some(region));
        assert_eq!(geo.region_of(BERLIN).unwrap(), region);
    }

    #[test]
    fn halo_lies_outside_and_touches_region() {
        let geo = GeoConfig::default();
        let region = geo.region_of(BERLIN).unwrap();
        let inside: BTreeSet<_> = geo.cells_of_region(region).into_iter().collect();
        assert_eq!(inside.len(), 49);
        let halo = geo.halo_cells(region, 1);
        assert!(!halo.is_empty());
        for cell in &halo {
            assert_ne!(geo.region_of_cell(*cell), region);
            assert!(!inside.contains(cell));
            let near = cell
                .grid_disk::<Vec<_>>(1)
                .into_iter()
                .any(|n| inside.contains(&n));
            assert!(near, "halo cell {cell} does not touch the region");
        }
        assert!(geo.halo_cells(region, 2).len() > halo.len());
    }

    #[test]
    fn rejects_bad_points_and_configs() {
        let geo = GeoConfig::default();
        assert!(geo.cell_of(Point::new(f64::NAN, 0.0)).is_err());
        assert!(geo.cell_of(Point::new(91.0, 0.0)).is_err());
        assert_eq!(
            GeoConfig::new(7, 5),
            Err(GeoConfigError::NotNested { region: 7, cell: 5 })
        );
        assert_eq!(
            GeoConfig::new(5, 16),
            Err(GeoConfigError::BadResolution(16))
        );
    }

    #[test]
    fn regions_cover_a_disk() {
        let geo = GeoConfig::default();
        let regions: BTreeSet<_> = geo
            .regions_covering(BERLIN, 20_000.0)
            .unwrap()
            .into_iter()
            .collect();
        // Every point of the disk (sampled) lies in a listed region.
        for i in 0..64 {
            let angle = f64::from(i) / 64.0 * std::f64::consts::TAU;
            for r in [0.0, 10_000.0, 19_900.0] {
                let p = Point::new(
                    BERLIN.lat + r * angle.cos() / 111_000.0,
                    BERLIN.lng + r * angle.sin() / (111_000.0 * BERLIN.lat.to_radians().cos()),
                );
                assert!(regions.contains(&geo.region_of(p).unwrap()), "{p:?}");
            }
        }
        assert!(regions.len() < 40, "{}", regions.len());
    }

    #[test]
    fn distance() {
        let paris = Point::new(48.8566, 2.3522);
        let d = BERLIN.distance_m(&paris);
        assert!((870_000.0..885_000.0).contains(&d), "{d}");
        assert_eq!(BERLIN.distance_m(&BERLIN), 0.0);
    }
}
