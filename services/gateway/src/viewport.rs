//! Which H3 cells a dispatcher's viewport covers.

use std::collections::BTreeSet;

use h3o::{CellIndex, LatLng, Resolution};
use protocol::client::Viewport;

/// The cells at `resolution` that cover `viewport`, or `None` when there would be more than
/// `max` of them (the caller then shows aggregates instead).
pub fn cells(viewport: &Viewport, resolution: Resolution, max: usize) -> Option<Vec<CellIndex>> {
    // Sample at half an edge length so that every cell meeting the box is hit.
    let step_km = resolution.edge_length_km() / 2.0;
    let lat_step = step_km / 111.0;
    let mid_lat = ((viewport.south + viewport.north) / 2.0).to_radians();
    let lng_step = step_km / (111.0 * mid_lat.cos().max(0.01));
    let east = if viewport.east < viewport.west {
        viewport.east + 360.0
    } else {
        viewport.east
    };
    let rows = ((viewport.north - viewport.south) / lat_step).ceil() as usize + 1;
    let cols = ((east - viewport.west) / lng_step).ceil() as usize + 1;
    // Each cell is sampled a few times; refuse early when the area is clearly too big.
    if rows.saturating_mul(cols) > max.saturating_mul(16) {
        return None;
    }
    let mut cells = BTreeSet::new();
    for row in 0..rows {
        let lat = (viewport.south + row as f64 * lat_step).min(viewport.north);
        for col in 0..cols {
            let mut lng = (viewport.west + col as f64 * lng_step).min(east);
            if lng > 180.0 {
                lng -= 360.0;
            }
            if let Ok(point) = LatLng::new(lat, lng) {
                cells.insert(point.to_cell(resolution));
                if cells.len() > max {
                    return None;
                }
            }
        }
    }
    Some(cells.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_city_block_is_a_few_cells_and_a_continent_is_too_many() {
        let small = Viewport {
            south: 52.50,
            west: 13.38,
            north: 52.53,
            east: 13.43,
        };
        let cells = cells(&small, Resolution::Seven, 500).unwrap();
        assert!((2..60).contains(&cells.len()), "{}", cells.len());
        // Every corner's cell is included.
        for (lat, lng) in [
            (52.50, 13.38),
            (52.53, 13.43),
            (52.50, 13.43),
            (52.53, 13.38),
        ] {
            let corner = LatLng::new(lat, lng).unwrap().to_cell(Resolution::Seven);
            assert!(cells.contains(&corner));
        }
        let europe = Viewport {
            south: 35.0,
            west: -10.0,
            north: 60.0,
            east: 30.0,
        };
        assert!(super::cells(&europe, Resolution::Seven, 500).is_none());
        assert!(super::cells(&europe, Resolution::Two, 500).is_some());
    }
}
