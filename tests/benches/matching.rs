//! Greedy against batched matching on the same seeded city at high utilisation: the whole
//! system in one process (real nats-server and PostgreSQL), the simulator's clients over real
//! WebSockets, once per strategy with identical settings and seed.
//!
//! Run with `cargo xtask bench matching` (or `cargo bench -p tests --bench matching` with
//! `DISPATCH_TEST_DATABASE_URL` and `NATS_SERVER_BIN` set). Prints a table and writes
//! `target/bench/matching.json`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::time::Duration;

use matcher::assign::Strategy;
use protocol::{GeoConfig, Point};
use simulator::report::Report;
use simulator::{Scenario, Settings};
use tests::services::{
    TOKEN_SECRET, gateway_config, matcher_config, start_gateway, start_matcher, start_trips,
    trips_config, wait_ready,
};
use tests::{NatsServer, TestDb, unique_prefix};

const CENTER: Point = Point::new(52.52, 13.405);
const SEED: u64 = 7;

/// Demand for the fleet: `request_rate` of 1.5/s keeps about a third of 60 drivers busy,
/// 4.2/s nearly all of them, where the strategies' choices matter most.
fn settings(url: &str, request_rate: f64, drivers: usize) -> Settings {
    let mut settings = Settings::new(url, TOKEN_SECRET, CENTER);
    settings.seed = SEED;
    settings.drivers = drivers;
    settings.riders = 150;
    settings.city.radius_m = 4_000.0;
    settings.scenario = Scenario::Steady;
    settings.duration = Duration::from_secs(60);
    settings.drain = Duration::from_secs(120);
    settings.request_rate = request_rate;
    settings.speedup = 40.0;
    settings.accept_probability = 1.0;
    settings.answer_delay = Duration::from_millis(200);
    settings.cancel_probability = 0.0;
    settings.progress = false;
    settings.run_id = format!("matching-{SEED}");
    settings
}

async fn run(strategy: Strategy, request_rate: f64, drivers: usize) -> anyhow::Result<Report> {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let mut trips = trips_config(&db.url, &nats.url(), &prefix);
    trips.store.search_timeout = Duration::from_secs(45);
    let _trips = start_trips(trips).await;
    let regions = GeoConfig::default().regions_covering(CENTER, 12_000.0)?;
    let mut matcher = matcher_config(&nats.url(), &prefix, regions);
    matcher.settings.strategy = strategy;
    let matcher = start_matcher(matcher).await;
    wait_ready(matcher.http).await;
    let gateway = start_gateway(gateway_config(&nats.url(), &prefix)).await;
    wait_ready(gateway.running.http).await;
    simulator::run(settings(
        &format!("ws://{}/ws", gateway.ws),
        request_rate,
        drivers,
    ))
    .await
}

/// Demand levels: (name, requests per second, drivers). "ample" is the moderate demand with
/// five times the drivers, so that a request finds a free driver nearby at once: its offer
/// latency is the system's processing time, not a wait for a driver.
const LOADS: &[(&str, f64, usize)] = &[
    ("ample", 1.5, 300),
    ("moderate", 1.5, 60),
    ("high", 4.2, 60),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut results = Vec::new();
    for &(load, rate, drivers) in LOADS {
        for (name, strategy) in [("greedy", Strategy::Greedy), ("batched", Strategy::Batched)] {
            println!(
                "matching: {name}, {load} load ({rate} requests/s, {drivers} drivers), seed {SEED} ..."
            );
            let report = run(strategy, rate, drivers).await?;
            println!("{}", report.table());
            results.push((load, name, report));
        }
    }
    println!();
    println!(
        "{:<9} {:<8} {:>15} {:>15} {:>11} {:>15} {:>8} {:>5}",
        "load",
        "strategy",
        "offer p50 (ms)",
        "offer p99 (ms)",
        "pickup (s)",
        "pickup ETA (s)",
        "served",
        "lost"
    );
    for (load, name, r) in &results {
        println!(
            "{:<9} {:<8} {:>15.1} {:>15.1} {:>11.1} {:>15.1} {:>7.1}% {:>5}",
            load,
            name,
            r.match_latency_ms.p50,
            r.match_latency_ms.p99,
            r.mean_pickup_time_s,
            r.mean_pickup_eta_s,
            r.service_rate * 100.0,
            r.lost
        );
    }
    let find = |load: &str, name: &str| {
        &results
            .iter()
            .find(|(l, n, _)| *l == load && *n == name)
            .expect("every run is there")
            .2
    };
    let (greedy, batched) = (find("high", "greedy"), find("high", "batched"));
    let pickup_ratio = batched.mean_pickup_time_s / greedy.mean_pickup_time_s.max(1e-9);
    println!(
        "high load, batched / greedy mean pickup time: {pickup_ratio:.3} ({:+.1}%), service rate {:.1}% / {:.1}%",
        (pickup_ratio - 1.0) * 100.0,
        batched.service_rate * 100.0,
        greedy.service_rate * 100.0
    );
    let json = serde_json::json!({
        "seed": SEED,
        "runs": results.iter().map(|(load, name, r)| serde_json::json!({
            "load": load,
            "strategy": name,
            "match_latency_ms": r.match_latency_ms,
            "mean_pickup_time_s": r.mean_pickup_time_s,
            "mean_pickup_eta_s": r.mean_pickup_eta_s,
            "mean_pickup_distance_m": r.mean_pickup_distance_m,
            "service_rate": r.service_rate,
            "requests": r.requests,
            "completed": r.completed,
            "expired": r.expired,
            "lost": r.lost,
            "double_assigned": r.double_assigned,
        })).collect::<Vec<_>>(),
        "high_load": {
            "greedy": {"mean_pickup_time_s": greedy.mean_pickup_time_s, "service_rate": greedy.service_rate},
            "batched": {"mean_pickup_time_s": batched.mean_pickup_time_s, "service_rate": batched.service_rate},
            "batched_over_greedy_pickup_time": pickup_ratio,
        },
        "moderate_load_greedy_offer_p99_ms": find("moderate", "greedy").match_latency_ms.p99,
        "ample_supply_greedy_offer_p99_ms": find("ample", "greedy").match_latency_ms.p99,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("matching.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    anyhow::ensure!(
        results
            .iter()
            .all(|(_, _, r)| r.lost == 0 && r.double_assigned == 0),
        "a run lost or double-assigned requests"
    );
    Ok(())
}
