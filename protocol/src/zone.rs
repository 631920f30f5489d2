//! Zones: named GeoJSON polygons (holes allowed) with a kind and metadata, which dispatchers
//! draw and the services evaluate positions and requests against.
//!
//! [`ZoneSpec::validate`] is the one check every zone passes before it is stored: a Polygon or
//! MultiPolygon with closed rings of positions in range, no self-intersection or crossing
//! rings, and at most a configured number of vertices. [`ZoneIndex`] answers "which zones hold
//! this point" with a coarse H3 cover as the fast path: a point in a cell wholly inside a zone
//! is in it, a point in no covering cell is not, and only a point in a cell on a zone's edge is
//! tested exactly against its polygons.

use std::collections::HashMap;

use geo::{BoundingRect, Contains, Polygon, Validation};
use h3o::geom::{ContainmentMode, TilerBuilder};
use h3o::{CellIndex, LatLng, Resolution};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::geo::Point;
use crate::time::UnixMillis;

/// What a zone is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ZoneKind {
    /// Where trips may start and end: when any exist, a pickup or dropoff outside all of them
    /// is refused.
    ServiceArea,
    /// Requests with a pickup inside are refused.
    NoPickup,
    /// An airport or station rank where drivers wait in order.
    Queue,
    /// Events only.
    Watch,
}

impl ZoneKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceArea => "service_area",
            Self::NoPickup => "no_pickup",
            Self::Queue => "queue",
            Self::Watch => "watch",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::ServiceArea, Self::NoPickup, Self::Queue, Self::Watch]
            .into_iter()
            .find(|kind| kind.as_str() == s)
    }
}

/// A zone as a dispatcher writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    pub name: String,
    pub kind: ZoneKind,
    /// A GeoJSON Polygon or MultiPolygon, `[lng, lat]` positions.
    pub geometry: Value,
    /// Free-form JSON object kept with the zone.
    #[serde(default = "empty_object")]
    pub metadata: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A stored zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Zone {
    pub zone_id: Uuid,
    pub name: String,
    pub kind: ZoneKind,
    pub geometry: Value,
    pub metadata: Value,
    /// Incremented by every change.
    pub version: i64,
    pub updated_at: UnixMillis,
}

/// Longest zone name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Largest metadata object, bytes of JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Most vertices a zone may have unless configured otherwise.
pub const DEFAULT_MAX_VERTICES: usize = 10_000;

/// Why a zone was refused; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    #[error("name must be 1 to {MAX_NAME_CHARS} characters with no control characters")]
    Name,
    #[error("metadata must be a JSON object of at most {MAX_METADATA_BYTES} bytes")]
    Metadata,
    #[error("geometry: {0}")]
    Geometry(String),
    #[error("geometry has {count} vertices; at most {max} are allowed")]
    TooManyVertices { count: usize, max: usize },
}

impl ZoneSpec {
    /// Checks the zone and returns its polygons.
    pub fn validate(&self, max_vertices: usize) -> Result<Vec<Polygon>, ZoneError> {
        let name = self.name.trim();
        if name.is_empty()
            || self.name.chars().count() > MAX_NAME_CHARS
            || self.name.chars().any(char::is_control)
        {
            return Err(ZoneError::Name);
        }
        let metadata_ok = self.metadata.is_object()
            && serde_json::to_vec(&self.metadata).map_or(0, |v| v.len()) <= MAX_METADATA_BYTES;
        if !metadata_ok {
            return Err(ZoneError::Metadata);
        }
        shape(&self.geometry, max_vertices)
    }
}

/// The polygons of a zone's geometry, checked.
fn shape(geometry: &Value, max_vertices: usize) -> Result<Vec<Polygon>, ZoneError> {
    match geometry.get("type").and_then(Value::as_str) {
        Some("Polygon" | "MultiPolygon") => {}
        _ => {
            return Err(ZoneError::Geometry(
                "must be a GeoJSON object of type Polygon or MultiPolygon".into(),
            ));
        }
    }
    let mut polygons = Vec::new();
    crate::area::polygons(geometry, &mut polygons)
        .map_err(|error| ZoneError::Geometry(error.to_string()))?;
    let count: usize = polygons
        .iter()
        .map(|p| p.exterior().0.len() + p.interiors().iter().map(|r| r.0.len()).sum::<usize>())
        .sum();
    if count > max_vertices {
        return Err(ZoneError::TooManyVertices {
            count,
            max: max_vertices,
        });
    }
    for (i, polygon) in polygons.iter().enumerate() {
        polygon
            .check_validation()
            .map_err(|error| ZoneError::Geometry(format!("polygon {}: {error}", i + 1)))?;
    }
    Ok(polygons)
}

/// Resolution of the cells that cover zones: about 0.1 km² each, so that only points within a
/// cell's width of an edge need the exact test.
pub const INDEX_RESOLUTION: Resolution = Resolution::Nine;

/// One zone's place in a covering cell.
#[derive(Debug, Clone, Copy)]
struct Cover {
    /// The zone's place in [`ZoneIndex::zones`].
    zone: u32,
    /// Its polygons' places in [`ZoneIndex::polygons`].
    polygons: (u32, u32),
    /// The cell lies wholly inside the zone.
    inside: bool,
    /// The zone's bounding box, kept beside it in the cell's list: a point outside it needs
    /// neither the exact test nor a read of the zone's polygons, which lie elsewhere in memory.
    bounds: Bounds,
}

/// A bounding box in degrees, edges included.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    min: geo::Coord,
    max: geo::Coord,
}

impl Bounds {
    /// The box around every polygon (none for no polygon: it holds nothing).
    fn around(polygons: &[Polygon]) -> Option<Self> {
        polygons
            .iter()
            .filter_map(|p| p.bounding_rect())
            .map(|r| Self {
                min: r.min(),
                max: r.max(),
            })
            .reduce(|a, b| Self {
                min: geo::coord! { x: a.min.x.min(b.min.x), y: a.min.y.min(b.min.y) },
                max: geo::coord! { x: a.max.x.max(b.max.x), y: a.max.y.max(b.max.y) },
            })
    }

    #[inline]
    fn holds(&self, at: geo::Coord) -> bool {
        (self.min.x..=self.max.x).contains(&at.x) && (self.min.y..=self.max.y).contains(&at.y)
    }
}

/// Zones indexed for the question "which zones hold this point".
///
/// What that question reads is laid out for few cache misses, since a gateway asks it for
/// every position among everything else it does: a cell's covers lie side by side in one
/// array, each with its zone's bounding box; every zone's polygons lie in one array too, so
/// the exact test reads a polygon and its ring. The zones themselves (names, metadata) are
/// read only for the answer, and [`Self::holding_in`] answers with places in the index
/// ([`Self::zone`]) so that a caller comparing with the answer before can skip them.
#[derive(Debug)]
pub struct ZoneIndex {
    /// Tells this index apart from every other built in this process: places in one mean
    /// nothing in another.
    id: u64,
    zones: Vec<Zone>,
    polygons: Vec<Polygon>,
    covers: Vec<Cover>,
    /// Each covering cell's covers in [`Self::covers`].
    cells: HashMap<CellIndex, (u32, u32)>,
}

impl Default for ZoneIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl ZoneIndex {
    fn new() -> Self {
        static BUILT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            id: BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            zones: Vec::new(),
            polygons: Vec::new(),
            covers: Vec::new(),
            cells: HashMap::new(),
        }
    }

    /// Indexes `zones`; one whose geometry does not pass (stored before a stricter check) is
    /// left out and returned by id with the reason.
    pub fn build(zones: Vec<Zone>, max_vertices: usize) -> (Self, Vec<(Uuid, ZoneError)>) {
        let mut index = Self::new();
        let mut refused = Vec::new();
        let mut cells: HashMap<CellIndex, Vec<Cover>> = HashMap::new();
        for zone in zones {
            let polygons = match shape(&zone.geometry, max_vertices) {
                Ok(polygons) => polygons,
                Err(error) => {
                    refused.push((zone.zone_id, error));
                    continue;
                }
            };
            let Some(bounds) = Bounds::around(&polygons) else {
                refused.push((zone.zone_id, ZoneError::Geometry("no polygon".into())));
                continue;
            };
            let cover = |mode| {
                let mut tiler = TilerBuilder::new(INDEX_RESOLUTION)
                    .containment_mode(mode)
                    .build();
                for polygon in &polygons {
                    // Checked valid above; a polygon the tiler still refuses covers nothing.
                    let _ = tiler.add(polygon.clone());
                }
                tiler.into_coverage().collect::<Vec<_>>()
            };
            let inside: std::collections::HashSet<CellIndex> =
                cover(ContainmentMode::ContainsBoundary)
                    .into_iter()
                    .collect();
            let n = index.zones.len() as u32;
            let first = index.polygons.len() as u32;
            let placed = (first, first + polygons.len() as u32);
            for cell in cover(ContainmentMode::Covers) {
                cells.entry(cell).or_default().push(Cover {
                    zone: n,
                    polygons: placed,
                    inside: inside.contains(&cell),
                    bounds,
                });
            }
            index.polygons.extend(polygons);
            index.zones.push(zone);
        }
        index.cells.reserve(cells.len());
        for (cell, covers) in cells {
            let from = index.covers.len() as u32;
            index.covers.extend(covers);
            index.cells.insert(cell, (from, index.covers.len() as u32));
        }
        (index, refused)
    }

    /// The zones that hold `point`.
    pub fn containing(&self, point: Point) -> impl Iterator<Item = &Zone> {
        self.holding(point).map(|n| &self.zones[n])
    }

    /// The zones that hold `point`, whose cell at [`INDEX_RESOLUTION`] the caller has already
    /// computed (none for a point off the globe).
    pub fn containing_in(
        &self,
        cell: Option<CellIndex>,
        point: Point,
    ) -> impl Iterator<Item = &Zone> {
        self.holding_in(cell, point).map(|n| &self.zones[n])
    }

    /// The places ([`Self::zone`]) of the zones that hold `point`.
    pub fn holding(&self, point: Point) -> impl Iterator<Item = usize> {
        let cell = LatLng::new(point.lat, point.lng)
            .ok()
            .map(|ll| ll.to_cell(INDEX_RESOLUTION));
        self.holding_in(cell, point)
    }

    /// The places ([`Self::zone`]) of the zones that hold `point`, whose cell at
    /// [`INDEX_RESOLUTION`] the caller has already computed.
    pub fn holding_in(&self, cell: Option<CellIndex>, point: Point) -> impl Iterator<Item = usize> {
        let covers = cell
            .and_then(|cell| self.cells.get(&cell))
            .map_or(&[][..], |&(from, to)| {
                &self.covers[from as usize..to as usize]
            });
        let at = geo::coord! { x: point.lng, y: point.lat };
        covers.iter().filter_map(move |cover| {
            let holds = cover.inside
                || (cover.bounds.holds(at)
                    && self.polygons[cover.polygons.0 as usize..cover.polygons.1 as usize]
                        .iter()
                        .any(|p| p.contains(&at)));
            holds.then_some(cover.zone as usize)
        })
    }

    /// The zone at `place`, from [`Self::holding_in`].
    pub fn zone(&self, place: usize) -> &Zone {
        &self.zones[place]
    }

    /// What tells this index apart from every other built in this process: places
    /// ([`Self::holding_in`]) taken from an index with another id mean nothing in this one.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Every zone indexed, in the order given to [`Self::build`].
    pub fn zones(&self) -> impl Iterator<Item = &Zone> {
        self.zones.iter()
    }

    /// Whether a zone with this id is indexed.
    pub fn holds(&self, zone_id: Uuid) -> bool {
        self.zones.iter().any(|zone| zone.zone_id == zone_id)
    }

    /// Whether any zone is of `kind`.
    pub fn has(&self, kind: ZoneKind) -> bool {
        self.zones.iter().any(|zone| zone.kind == kind)
    }

    pub fn len(&self) -> usize {
        self.zones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }
}

/// The zones in force in one process and the generation they were loaded at: read by every
/// request or position that is checked against them, replaced whole when a newer generation
/// is loaded (never by an older one, so loads that finish out of order do no harm). Before the
/// first load the generation is -1 and there are no zones.
#[derive(Debug)]
pub struct ZoneSet {
    current: std::sync::RwLock<(i64, std::sync::Arc<ZoneIndex>)>,
    /// [`ZoneIndex::id`] of the zones in force, to check a copy against without the lock.
    in_force: std::sync::atomic::AtomicU64,
}

impl Default for ZoneSet {
    fn default() -> Self {
        let index = ZoneIndex::default();
        Self {
            in_force: std::sync::atomic::AtomicU64::new(index.id()),
            current: std::sync::RwLock::new((-1, std::sync::Arc::new(index))),
        }
    }
}

impl ZoneSet {
    /// The zones in force.
    pub fn index(&self) -> std::sync::Arc<ZoneIndex> {
        self.current.read().expect("zone set lock").1.clone()
    }

    /// The generation in force, -1 before the first load.
    pub fn generation(&self) -> i64 {
        self.current.read().expect("zone set lock").0
    }

    /// The generation and the zones in force, read together.
    pub fn current(&self) -> (i64, std::sync::Arc<ZoneIndex>) {
        self.current.read().expect("zone set lock").clone()
    }

    /// The [`ZoneIndex::id`] of the zones in force, read without the lock: whether a copy
    /// taken earlier is still the one in force.
    pub fn in_force(&self) -> u64 {
        self.in_force.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Puts `index` in force as `generation` if that is newer than the one in force; whether
    /// it did.
    pub fn replace(&self, generation: i64, index: ZoneIndex) -> bool {
        let mut current = self.current.write().expect("zone set lock");
        if generation <= current.0 {
            return false;
        }
        self.in_force
            .store(index.id(), std::sync::atomic::Ordering::Release);
        *current = (generation, std::sync::Arc::new(index));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zone_set_only_moves_forward() {
        let set = ZoneSet::default();
        assert_eq!(set.generation(), -1);
        assert!(set.index().is_empty());
        let first = ZoneIndex::default();
        let first_id = first.id();
        assert!(set.replace(3, first));
        assert_eq!((set.generation(), set.in_force()), (3, first_id));
        // A load that finishes late, of an older generation, changes nothing.
        assert!(!set.replace(2, ZoneIndex::default()));
        assert!(!set.replace(3, ZoneIndex::default()));
        assert_eq!((set.generation(), set.in_force()), (3, first_id));
        let newer = ZoneIndex::default();
        let newer_id = newer.id();
        assert!(set.replace(4, newer));
        assert_eq!(set.current().0, 4);
        assert_eq!(set.current().1.id(), newer_id);
        assert_eq!(set.in_force(), newer_id);
    }
    use serde_json::json;

    fn spec(geometry: Value) -> ZoneSpec {
        ZoneSpec {
            name: "Hauptbahnhof".into(),
            kind: ZoneKind::NoPickup,
            geometry,
            metadata: json!({"owner": "ops"}),
        }
    }

    /// A square 0.02° a side with a square hole in its middle.
    fn holed() -> Value {
        json!({"type": "Polygon", "coordinates": [
            [[13.39, 52.51], [13.41, 52.51], [13.41, 52.53], [13.39, 52.53], [13.39, 52.51]],
            [[13.398, 52.518], [13.398, 52.522], [13.402, 52.522], [13.402, 52.518], [13.398, 52.518]]
        ]})
    }

    fn zone(geometry: Value) -> Zone {
        let s = spec(geometry);
        Zone {
            zone_id: Uuid::new_v4(),
            name: s.name,
            kind: s.kind,
            geometry: s.geometry,
            metadata: s.metadata,
            version: 1,
            updated_at: 0,
        }
    }

    #[test]
    fn invalid_zones_are_refused_with_what_to_fix() {
        let cases = [
            (
                json!({"type": "Polygon", "coordinates": [[[13.39, 52.51], [13.41, 52.53], [13.41, 52.51], [13.39, 52.53], [13.39, 52.51]]]}),
                "self-intersection",
            ),
            (
                json!({"type": "Polygon", "coordinates": [[[13.39, 52.51], [13.41, 52.51], [13.41, 52.53], [13.39, 52.53]]]}),
                "not closed",
            ),
            (
                json!({"type": "Polygon", "coordinates": [[[13.39, 52.51], [213.41, 52.51], [13.41, 52.53], [13.39, 52.51]]]}),
                "in range",
            ),
            (
                json!({"type": "Point", "coordinates": [13.4, 52.5]}),
                "Polygon or MultiPolygon",
            ),
            (json!("nope"), "Polygon or MultiPolygon"),
        ];
        for (geometry, says) in cases {
            let error = spec(geometry.clone()).validate(100).unwrap_err();
            assert!(error.to_string().contains(says), "{geometry}: {error}");
        }
        assert_eq!(
            spec(holed()).validate(9).unwrap_err(),
            ZoneError::TooManyVertices { count: 10, max: 9 }
        );
        let mut unnamed = spec(holed());
        unnamed.name = " ".into();
        assert_eq!(unnamed.validate(100).unwrap_err(), ZoneError::Name);
        let mut list = spec(holed());
        list.metadata = json!([1, 2]);
        assert_eq!(list.validate(100).unwrap_err(), ZoneError::Metadata);
        assert_eq!(spec(holed()).validate(10).unwrap().len(), 1);
    }

    #[test]
    fn points_are_placed_exactly_at_the_boundary_and_holes_are_outside() {
        let (index, refused) = ZoneIndex::build(vec![zone(holed())], 100);
        assert!(refused.is_empty());
        let inside = |lat, lng| index.containing(Point::new(lat, lng)).count() == 1;
        // Well inside, in the hole, outside.
        assert!(inside(52.515, 13.395));
        assert!(!inside(52.52, 13.40));
        assert!(!inside(52.50, 13.40));
        // A hair either side of the eastern edge (13.41): about 7 cm apart.
        assert!(inside(52.52, 13.409_999));
        assert!(!inside(52.52, 13.410_001));
        // Either side of the hole's western edge.
        assert!(inside(52.52, 13.397_999));
        assert!(!inside(52.52, 13.398_001));
        assert!(index.has(ZoneKind::NoPickup) && !index.has(ZoneKind::ServiceArea));
    }

    #[test]
    fn a_point_between_the_parts_of_a_multipolygon_is_in_neither() {
        // Two squares 0.01° a side, 0.02° apart: their common bounding box holds the gap.
        let square = |w: f64| {
            json!([[
                [w, 52.51],
                [w + 0.01, 52.51],
                [w + 0.01, 52.52],
                [w, 52.52],
                [w, 52.51]
            ]])
        };
        let (index, refused) = ZoneIndex::build(
            vec![zone(
                json!({"type": "MultiPolygon", "coordinates": [square(13.38), square(13.41)]}),
            )],
            100,
        );
        assert!(refused.is_empty());
        let inside = |lat, lng| index.containing(Point::new(lat, lng)).count() == 1;
        assert!(inside(52.515, 13.385));
        assert!(inside(52.515, 13.415));
        assert!(!inside(52.515, 13.40));
        assert!(!inside(52.525, 13.385));
    }

    #[test]
    fn a_stored_zone_that_no_longer_passes_is_left_out_of_the_index() {
        let bad = zone(json!({"type": "Point", "coordinates": [13.4, 52.5]}));
        let id = bad.zone_id;
        let (index, refused) = ZoneIndex::build(vec![bad, zone(holed())], 100);
        assert_eq!(index.len(), 1);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, id);
    }
}
