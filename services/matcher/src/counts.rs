//! Per-cell supply and demand counts of the regions a matcher serves, as published for the
//! zoomed-out dispatcher views: vehicles, available vehicles and open requests per cell.

use std::collections::{HashMap, HashSet};

use h3o::CellIndex;
use protocol::GeoConfig;
use protocol::bus::CellCount;

/// Counts per region: the cells of each served region that have anything in them.
pub fn per_region(
    geo: &GeoConfig,
    regions: &HashSet<CellIndex>,
    vehicles: impl IntoIterator<Item = (CellIndex, bool)>,
    requests: impl IntoIterator<Item = CellIndex>,
) -> HashMap<CellIndex, Vec<CellCount>> {
    let mut per_region: HashMap<CellIndex, HashMap<CellIndex, CellCount>> = HashMap::new();
    for (cell, available) in vehicles {
        if let Some(count) = count_of(&mut per_region, geo, regions, cell) {
            count.vehicles += 1;
            count.available += u32::from(available);
        }
    }
    for cell in requests {
        if let Some(count) = count_of(&mut per_region, geo, regions, cell) {
            count.open_requests += 1;
        }
    }
    per_region
        .into_iter()
        .map(|(region, cells)| {
            let mut cells: Vec<CellCount> = cells.into_values().collect();
            cells.sort_by_key(|c| c.cell);
            (region, cells)
        })
        .collect()
}

/// The count of `cell`, created empty, if the cell lies in a served region.
fn count_of<'a>(
    per_region: &'a mut HashMap<CellIndex, HashMap<CellIndex, CellCount>>,
    geo: &GeoConfig,
    regions: &HashSet<CellIndex>,
    cell: CellIndex,
) -> Option<&'a mut CellCount> {
    let region = geo.region_of_cell(cell);
    if !regions.contains(&region) {
        return None;
    }
    Some(
        per_region
            .entry(region)
            .or_default()
            .entry(cell)
            .or_insert(CellCount {
                cell: cell.into(),
                vehicles: 0,
                available: 0,
                open_requests: 0,
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Point;

    #[test]
    fn counts_cells_of_served_regions_only() {
        let geo = GeoConfig::default();
        let here = geo.cell_of(Point::new(52.52, 13.405)).unwrap();
        let far = geo.cell_of(Point::new(48.85, 2.35)).unwrap();
        let served: HashSet<CellIndex> = [geo.region_of_cell(here)].into();
        let counts = per_region(
            &geo,
            &served,
            [(here, true), (here, false), (far, true)],
            [here, far],
        );
        assert_eq!(counts.len(), 1);
        let cells = &counts[&geo.region_of_cell(here)];
        assert_eq!(cells.len(), 1);
        let c = &cells[0];
        assert_eq!(
            (c.cell, c.vehicles, c.available, c.open_requests),
            (u64::from(here), 2, 1, 1)
        );
    }
}
