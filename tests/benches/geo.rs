//! The matcher's index against Redis GEOADD/GEOSEARCH on identical data: 100,000 drivers,
//! 1,000,000 position updates, 100,000 nearest-10 queries within 3 km, one core each side.
//!
//! Run with `cargo xtask bench` (which brings up a Redis), or `cargo bench -p tests --bench geo`
//! with `REDIS_URL` pointing at one. Prints a table and writes `target/bench/geo.json`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::time::Instant;

use matcher::index::Index;
use protocol::Point;
use protocol::bus::Position;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DRIVERS: usize = 100_000;
const UPDATES: usize = 1_000_000;
const QUERIES: usize = 100_000;
const K: usize = 10;
const RADIUS_M: f64 = 3_000.0;
const PIPELINE: usize = 1_000;
const CENTER: Point = Point::new(52.52, 13.405);

fn random_point(rng: &mut StdRng) -> Point {
    // Within about 20 km of the centre.
    Point::new(
        CENTER.lat + rng.random_range(-0.18..0.18),
        CENTER.lng + rng.random_range(-0.3..0.3),
    )
}

fn position(id: &str, point: Point, seq: u64) -> Position {
    Position {
        ts: seq as i64,
        ..tests::position(id, point, seq)
    }
}

fn main() -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(42);
    let ids: Vec<String> = (0..DRIVERS).map(|i| format!("driver-{i}")).collect();
    let initial: Vec<Point> = (0..DRIVERS).map(|_| random_point(&mut rng)).collect();
    // Each update moves a random driver up to ~150 m, as a second of driving would.
    let updates: Vec<(usize, Point)> = (0..UPDATES)
        .map(|_| {
            let i = rng.random_range(0..DRIVERS);
            let p = initial[i];
            (
                i,
                Point::new(
                    p.lat + rng.random_range(-0.001..0.001),
                    p.lng + rng.random_range(-0.0015..0.0015),
                ),
            )
        })
        .collect();
    let queries: Vec<Point> = (0..QUERIES).map(|_| random_point(&mut rng)).collect();

    // The matcher's index, in process, one thread.
    let mut index = Index::new(h3o::Resolution::Eight);
    let now = Instant::now();
    for (i, point) in initial.iter().enumerate() {
        index.update(&position(&ids[i], *point, 1), now);
    }
    // Positions are built outside the timed loop, as the engine receives them decoded.
    let prepared: Vec<Position> = updates
        .iter()
        .enumerate()
        .map(|(n, (i, p))| position(&ids[*i], *p, 2 + n as u64))
        .collect();
    let started = Instant::now();
    for p in &prepared {
        index.update(p, now);
    }
    let index_updates = UPDATES as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut found = 0usize;
    for q in &queries {
        found += index.nearest(*q, K, RADIUS_M, |_| true).len();
    }
    let index_queries = QUERIES as f64 / started.elapsed().as_secs_f64();

    // Redis GEOADD / GEOSEARCH, pipelined, over loopback.
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut redis = redis::Client::open(url.as_str())?.get_connection()?;
    let key = format!("bench:drivers:{}", std::process::id());
    redis::cmd("DEL").arg(&key).exec(&mut redis)?;
    for chunk in (0..DRIVERS).collect::<Vec<_>>().chunks(PIPELINE) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            pipe.cmd("GEOADD")
                .arg(&key)
                .arg(initial[i].lng)
                .arg(initial[i].lat)
                .arg(&ids[i])
                .ignore();
        }
        pipe.exec(&mut redis)?;
    }
    let started = Instant::now();
    for chunk in updates.chunks(PIPELINE) {
        let mut pipe = redis::pipe();
        for (i, p) in chunk {
            pipe.cmd("GEOADD")
                .arg(&key)
                .arg(p.lng)
                .arg(p.lat)
                .arg(&ids[*i])
                .ignore();
        }
        pipe.exec(&mut redis)?;
    }
    let redis_updates = UPDATES as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut redis_found = 0usize;
    for chunk in queries.chunks(PIPELINE) {
        let mut pipe = redis::pipe();
        for q in chunk {
            pipe.cmd("GEOSEARCH")
                .arg(&key)
                .arg("FROMLONLAT")
                .arg(q.lng)
                .arg(q.lat)
                .arg("BYRADIUS")
                .arg(RADIUS_M)
                .arg("m")
                .arg("ASC")
                .arg("COUNT")
                .arg(K);
        }
        let results: Vec<Vec<String>> = pipe.query(&mut redis)?;
        redis_found += results.iter().map(Vec::len).sum::<usize>();
    }
    let redis_queries = QUERIES as f64 / started.elapsed().as_secs_f64();
    redis::cmd("DEL").arg(&key).exec(&mut redis)?;

    println!("| figure ({DRIVERS} drivers) | matcher index | Redis GEO (pipelined) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| position updates/s | {index_updates:.0} | {redis_updates:.0} | {:.1} |",
        index_updates / redis_updates
    );
    println!(
        "| nearest-{K} queries/s within {RADIUS_M} m | {index_queries:.0} | {redis_queries:.0} | {:.1} |",
        index_queries / redis_queries
    );
    println!(
        "| drivers found per query | {:.2} | {:.2} | |",
        found as f64 / QUERIES as f64,
        redis_found as f64 / QUERIES as f64
    );
    let report = serde_json::json!({"geo": {
        "drivers": DRIVERS,
        "index_updates_per_sec": index_updates, "redis_updates_per_sec": redis_updates,
        "index_queries_per_sec": index_queries, "redis_queries_per_sec": redis_queries,
        "updates_ratio": index_updates / redis_updates, "queries_ratio": index_queries / redis_queries,
    }});
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        format!("{dir}/geo.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(())
}
