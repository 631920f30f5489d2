//! Road ETAs on the Helsinki extract: one query through the contraction hierarchy, and a
//! 100 × 100 matrix (drivers × pickups) computed both ways, a backward search per pickup and a
//! hierarchy query per pair, so the matcher's choice is measured.
//!
//! Run with `cargo bench -p roads --bench eta` (or `cargo xtask bench eta`).
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use protocol::Point;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roads::RoadNetwork;

fn network() -> RoadNetwork {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/helsinki.osm.pbf");
    RoadNetwork::load(&path).expect("the Helsinki extract loads")
}

fn points(network: &RoadNetwork, count: usize, rng: &mut StdRng) -> Vec<Point> {
    let (sw, ne) = network.bounds();
    (0..count)
        .map(|_| {
            Point::new(
                rng.random_range(sw.lat..ne.lat),
                rng.random_range(sw.lng..ne.lng),
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let started = std::time::Instant::now();
    let network = network();
    let summary = network.summary();
    println!(
        "Helsinki: {} ways, {} nodes, {} edges, {} nodes dropped, loaded and prepared in {} ms",
        summary.ways,
        summary.nodes,
        summary.edges,
        summary.dropped_nodes,
        started.elapsed().as_millis()
    );
    let mut rng = StdRng::seed_from_u64(7);
    let pairs: Vec<(Point, Point)> = points(&network, 1_000, &mut rng)
        .chunks(2)
        .map(|p| (p[0], p[1]))
        .collect();
    let drivers = points(&network, 100, &mut rng);
    let pickups = points(&network, 100, &mut rng);

    let mut group = c.benchmark_group("road eta");
    let mut i = 0;
    group.bench_function("one query (hierarchy)", |b| {
        b.iter(|| {
            let (from, to) = pairs[i % pairs.len()];
            i += 1;
            black_box(network.travel_time_s(from, to))
        })
    });
    group.bench_function(
        "100 x 100 matrix, snapped once, a backward search per pickup",
        |b| b.iter(|| black_box(network.matrix(&drivers, &pickups))),
    );
    group.bench_function("100 x 100 matrix, a backward search per pickup", |b| {
        b.iter(|| {
            for pickup in &pickups {
                black_box(network.travel_times_to(&drivers, *pickup));
            }
        })
    });
    group.bench_function("100 x 100 matrix, a hierarchy query per pair", |b| {
        b.iter(|| {
            for pickup in &pickups {
                for driver in &drivers {
                    black_box(network.travel_time_s(*driver, *pickup));
                }
            }
        })
    });
    group.bench_function("route (hierarchy, unpacked to legs)", |b| {
        b.iter(|| {
            let (from, to) = pairs[i % pairs.len()];
            i += 1;
            black_box(network.route(from, to).len())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
