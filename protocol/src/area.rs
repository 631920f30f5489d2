//! The service area: where pickups and dropoffs are accepted, given as a GeoJSON polygon and
//! held as the set of H3 cells that cover it.

use std::collections::HashSet;

use geo::{LineString, Polygon};
use h3o::geom::{ContainmentMode, TilerBuilder};
use h3o::{CellIndex, LatLng, Resolution};
use serde_json::Value;

use crate::geo::{GeoConfig, Point};

/// Why a service area could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AreaError {
    #[error("service area is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "service area must be a GeoJSON Polygon, MultiPolygon, Feature or FeatureCollection: {0}"
    )]
    Shape(&'static str),
    #[error("service area polygon is invalid: {0}")]
    Invalid(String),
    #[error("service area is empty")]
    Empty,
}

/// The cells, at one resolution, that cover the service area.
#[derive(Debug, Clone)]
pub struct ServiceArea {
    resolution: Resolution,
    cells: HashSet<CellIndex>,
}

fn ring(value: &Value) -> Result<LineString, AreaError> {
    let points = value
        .as_array()
        .ok_or(AreaError::Shape("a ring is not an array"))?;
    let coords = points
        .iter()
        .map(|p| {
            let lng = p.get(0).and_then(Value::as_f64);
            let lat = p.get(1).and_then(Value::as_f64);
            match (lng, lat) {
                (Some(lng), Some(lat))
                    if (-180.0..=180.0).contains(&lng) && (-90.0..=90.0).contains(&lat) =>
                {
                    Ok((lng, lat))
                }
                _ => Err(AreaError::Shape("a position is not [lng, lat] in range")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if coords.len() < 4 {
        return Err(AreaError::Shape("a ring needs at least four positions"));
    }
    if coords.first() != coords.last() {
        return Err(AreaError::Shape(
            "a ring is not closed: its last position must repeat its first",
        ));
    }
    Ok(LineString::from(coords))
}

fn polygon(coordinates: &Value) -> Result<Polygon, AreaError> {
    let rings = coordinates
        .as_array()
        .ok_or(AreaError::Shape("polygon coordinates are not an array"))?;
    let (exterior, interiors) = rings
        .split_first()
        .ok_or(AreaError::Shape("polygon has no ring"))?;
    Ok(Polygon::new(
        ring(exterior)?,
        interiors.iter().map(ring).collect::<Result<_, _>>()?,
    ))
}

/// The polygons of a GeoJSON Polygon, MultiPolygon, Feature or FeatureCollection, each ring
/// checked for range and closure.
pub(crate) fn polygons(value: &Value, out: &mut Vec<Polygon>) -> Result<(), AreaError> {
    match value.get("type").and_then(Value::as_str) {
        Some("Polygon") => out.push(polygon(&value["coordinates"])?),
        Some("MultiPolygon") => {
            let parts = value["coordinates"].as_array().ok_or(AreaError::Shape(
                "multipolygon coordinates are not an array",
            ))?;
            for part in parts {
                out.push(polygon(part)?);
            }
        }
        Some("Feature") => polygons(&value["geometry"], out)?,
        Some("FeatureCollection") => {
            let features = value["features"]
                .as_array()
                .ok_or(AreaError::Shape("features is not an array"))?;
            for feature in features {
                polygons(feature, out)?;
            }
        }
        _ => return Err(AreaError::Shape("unsupported or missing type")),
    }
    Ok(())
}

/// The polygons of a GeoJSON file (a Polygon, MultiPolygon, Feature or FeatureCollection of
/// them) as one MultiPolygon geometry, as a zone holds it.
pub fn multipolygon(text: &str) -> Result<Value, AreaError> {
    let value: Value = serde_json::from_str(text)?;
    let mut shapes = Vec::new();
    polygons(&value, &mut shapes)?;
    let ring = |line: &LineString| -> Value {
        Value::Array(
            line.coords()
                .map(|c| Value::Array(vec![c.x.into(), c.y.into()]))
                .collect(),
        )
    };
    let coordinates: Vec<Value> = shapes
        .iter()
        .map(|shape| {
            let mut rings = vec![ring(shape.exterior())];
            rings.extend(shape.interiors().iter().map(ring));
            Value::Array(rings)
        })
        .collect();
    Ok(serde_json::json!({"type": "MultiPolygon", "coordinates": coordinates}))
}

impl ServiceArea {
    /// Reads a GeoJSON polygon (or several) and covers it with cells at `resolution`.
    pub fn from_geojson(text: &str, resolution: Resolution) -> Result<Self, AreaError> {
        let value: Value = serde_json::from_str(text)?;
        let mut shapes = Vec::new();
        polygons(&value, &mut shapes)?;
        let mut tiler = TilerBuilder::new(resolution)
            .containment_mode(ContainmentMode::Covers)
            .build();
        for shape in shapes {
            tiler
                .add(shape)
                .map_err(|e| AreaError::Invalid(e.to_string()))?;
        }
        let cells: HashSet<CellIndex> = tiler.into_coverage().collect();
        if cells.is_empty() {
            return Err(AreaError::Empty);
        }
        Ok(Self { resolution, cells })
    }

    /// Whether `point` lies in the area.
    pub fn contains(&self, point: Point) -> bool {
        LatLng::new(point.lat, point.lng)
            .map(|ll| self.cells.contains(&ll.to_cell(self.resolution)))
            .unwrap_or(false)
    }

    /// The regions the area touches, sorted.
    pub fn regions(&self, geo: &GeoConfig) -> Vec<CellIndex> {
        let mut regions: Vec<CellIndex> = self
            .cells
            .iter()
            .filter_map(|c| c.parent(geo.region_res))
            .collect();
        regions.sort_unstable();
        regions.dedup();
        regions
    }

    pub fn cell_count(&self) -> usize {
        self.cells.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box around central Berlin.
    const BERLIN_BOX: &str = r#"{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
        "coordinates": [[[13.30, 52.45], [13.50, 52.45], [13.50, 52.58], [13.30, 52.58], [13.30, 52.45]]]}}"#;

    #[test]
    fn inside_and_outside() {
        let area = ServiceArea::from_geojson(BERLIN_BOX, Resolution::Eight).unwrap();
        assert!(area.contains(Point::new(52.52, 13.405)));
        assert!(!area.contains(Point::new(48.85, 2.35)));
        assert!(!area.contains(Point::new(52.52, 13.80)));
        assert!(area.cell_count() > 100);
        assert!(!area.regions(&GeoConfig::default()).is_empty());
    }

    #[test]
    fn bad_areas_are_refused_with_a_reason() {
        for bad in [
            "not json",
            r#"{"type": "Point", "coordinates": [13.4, 52.5]}"#,
            r#"{"type": "Polygon", "coordinates": [[[13.3, 52.4], [13.5, 52.4]]]}"#,
            r#"{"type": "Polygon", "coordinates": [[[13.3, 952.4], [13.5, 52.4], [13.5, 52.5], [13.3, 952.4]]]}"#,
            r#"{"type": "Polygon", "coordinates": "nope"}"#,
            r#"{"type": "Polygon", "coordinates": [[[13.3, 52.4], [13.5, 52.4], [13.5, 52.5], [13.3, 52.5]]]}"#,
        ] {
            assert!(
                ServiceArea::from_geojson(bad, Resolution::Eight).is_err(),
                "{bad}"
            );
        }
    }
}
