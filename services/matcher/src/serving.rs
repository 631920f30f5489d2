//! Which regions a matcher serves, from its configuration: H3 region cells, a circle
//! (`LAT,LNG,RADIUS_KM`), a GeoJSON service area, or any mix of them.

use h3o::CellIndex;
use protocol::area::ServiceArea;
use protocol::{GeoConfig, Point};

/// The regions named by `cells` (hexadecimal H3 cells at the region resolution), those within
/// the circle `area` (`LAT,LNG,RADIUS_KM`) and those `service_area` touches, sorted and without
/// repeats. At least one region is required.
pub fn regions(
    cells: &[String],
    area: Option<&str>,
    service_area: Option<&ServiceArea>,
    geo: &GeoConfig,
) -> anyhow::Result<Vec<CellIndex>> {
    let mut regions = Vec::new();
    for hex in cells.iter().filter(|s| !s.is_empty()) {
        let cell: CellIndex = hex
            .parse()
            .map_err(|_| anyhow::anyhow!("{hex:?} is not an H3 cell"))?;
        anyhow::ensure!(
            cell.resolution() == geo.region_res,
            "{hex} is not at the region resolution"
        );
        regions.push(cell);
    }
    if let Some(area) = area {
        let parts: Vec<f64> = area
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--area takes LAT,LNG,RADIUS_KM"))?;
        let [lat, lng, radius_km] = parts[..] else {
            anyhow::bail!("--area takes LAT,LNG,RADIUS_KM");
        };
        anyhow::ensure!(
            radius_km > 0.0 && radius_km <= 500.0,
            "area radius must be between 0 and 500 km"
        );
        regions.extend(geo.regions_covering(Point::new(lat, lng), radius_km * 1000.0)?);
    }
    if let Some(service_area) = service_area {
        regions.extend(service_area.regions(geo));
    }
    anyhow::ensure!(
        !regions.is_empty(),
        "no regions to serve: give --regions, --area or --service-area"
    );
    regions.sort();
    regions.dedup();
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUARE: &str = r#"{"type":"Polygon","coordinates":[[[13.35,52.49],[13.45,52.49],[13.45,52.55],[13.35,52.55],[13.35,52.49]]]}"#;

    #[test]
    fn a_service_area_alone_names_the_regions_it_touches() {
        let geo = GeoConfig::default();
        let area = ServiceArea::from_geojson(SQUARE, h3o::Resolution::Eight).unwrap();
        let served = regions(&[], None, Some(&area), &geo).unwrap();
        let center = geo.region_of(Point::new(52.52, 13.40)).unwrap();
        assert!(served.contains(&center), "{served:?}");
        assert!(served.iter().all(|r| r.resolution() == geo.region_res));
    }

    #[test]
    fn every_source_adds_up_without_repeats() {
        let geo = GeoConfig::default();
        let center = geo.region_of(Point::new(52.52, 13.40)).unwrap();
        let area = ServiceArea::from_geojson(SQUARE, h3o::Resolution::Eight).unwrap();
        let served = regions(
            &[center.to_string(), String::new()],
            Some("52.52,13.40,1"),
            Some(&area),
            &geo,
        )
        .unwrap();
        assert_eq!(served.iter().filter(|r| **r == center).count(), 1);
    }

    #[test]
    fn nothing_to_serve_or_bad_parts_are_refused() {
        let geo = GeoConfig::default();
        assert!(regions(&[], None, None, &geo).is_err());
        assert!(regions(&["zz".into()], None, None, &geo).is_err());
        let cell = geo.cell_of(Point::new(52.52, 13.40)).unwrap();
        assert!(regions(&[cell.to_string()], None, None, &geo).is_err());
        assert!(regions(&[], Some("52.5,13.4"), None, &geo).is_err());
        assert!(regions(&[], Some("52.5,13.4,900"), None, &geo).is_err());
    }
}
