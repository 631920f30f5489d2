//! What finding the zones that hold a position costs: 10,000 watch zones laid out as in the
//! ingest benchmark (90 by 55 m, about 14 to an index cell, so every candidate needs the
//! exact test), asked about points inside a zone and points between zones; beside it, in the
//! same run, the index cell of the same points, which the gateway computes for every position
//! anyway.
//!
//! Run with `cargo bench -p protocol --bench zones`.

use criterion::{Criterion, criterion_group, criterion_main};
use h3o::LatLng;
use protocol::Point;
use protocol::zone::{INDEX_RESOLUTION, Zone, ZoneIndex, ZoneKind};
use std::hint::black_box;

const ZONES: usize = 10_000;
const POINTS: usize = 1_000;
const SPACING: f64 = 1e-3;
const HALF: f64 = 0.4e-3;
const CENTER: Point = Point::new(52.52, 13.405);

fn index() -> ZoneIndex {
    let zones = (0..ZONES)
        .map(|k| {
            let lat = CENTER.lat + (k % 100) as f64 * SPACING;
            let lng = CENTER.lng + (k / 100) as f64 * SPACING;
            let (w, e, s, n) = (lng - HALF, lng + HALF, lat - HALF, lat + HALF);
            Zone {
                zone_id: uuid::Uuid::new_v4(),
                name: format!("bench {k}"),
                kind: ZoneKind::Watch,
                geometry: serde_json::json!({"type": "Polygon",
                    "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}),
                metadata: serde_json::json!({}),
                version: 1,
                updated_at: 0,
            }
        })
        .collect();
    let (index, refused) = ZoneIndex::build(zones, 1_000);
    assert!(refused.is_empty());
    index
}

/// The ingest benchmark's clients' points: at a zone's centre, or `across` north of it.
fn points(across: f64) -> Vec<(Point, h3o::CellIndex)> {
    (0..POINTS)
        .map(|i| {
            let at = Point::new(
                CENTER.lat + (i % 100) as f64 * SPACING + across,
                CENTER.lng + (i / 100) as f64 * SPACING,
            );
            let cell = LatLng::new(at.lat, at.lng)
                .unwrap()
                .to_cell(INDEX_RESOLUTION);
            (at, cell)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let index = index();
    let inside = points(0.0);
    let between = points(SPACING / 2.0);
    assert!(
        inside
            .iter()
            .all(|&(at, cell)| index.containing_in(Some(cell), at).count() == 1)
    );
    assert!(
        between
            .iter()
            .all(|&(at, cell)| index.containing_in(Some(cell), at).count() == 0)
    );
    let mut group = c.benchmark_group("zones_holding_a_point");
    for (name, points) in [("inside", &inside), ("between", &between)] {
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let (at, cell) = points[next % POINTS];
                next += 1;
                black_box(index.containing_in(Some(cell), black_box(at)).count())
            })
        });
    }
    // The baseline: the index cell of a point, as the gateway computes for every position.
    let mut next = 0;
    group.bench_function("baseline_cell_of_a_point", |b| {
        b.iter(|| {
            let (at, _) = inside[next % POINTS];
            next += 1;
            black_box(
                LatLng::new(black_box(at.lat), at.lng)
                    .unwrap()
                    .to_cell(INDEX_RESOLUTION),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
