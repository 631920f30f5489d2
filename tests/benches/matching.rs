//! Greedy against batched matching on the same seeded city at high utilisation: the whole
//! system in one process (real nats-server and PostgreSQL), the simulator's clients over real
//! WebSockets, once per strategy with identical settings and seed.
//!
//! Run with `cargo xtask bench matching` (or `cargo bench -p tests --bench matching` with
//! `DISPATCH_TEST_DATABASE_URL` and `NATS_SERVER_BIN` set). At high load the batched
//! strategy's wait weight is swept too. Prints a table and writes `target/bench/matching.json`
//! and, with the sweep plotted, `target/bench/matching.html`. `MATCHING_LOADS=high` runs only
//! the named loads (comma-separated: ample, moderate, high, roads). The road scenario ranks
//! drivers by straight line and then by road ETA on central Helsinki's roads.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::sync::Arc;
use std::time::Duration;

use matcher::assign::{EtaModel, Fairness, Roads, Strategy};
use protocol::{GeoConfig, Point};
use roads::RoadNetwork;
use simulator::chart::{self, Chart, Series};
use simulator::report::Report;
use simulator::{Scenario, Settings};
use tests::services::{
    TOKEN_SECRET, gateway_config, matcher_config, start_gateway, start_matcher, start_trips,
    trips_config, wait_ready,
};
use tests::{NatsServer, TestDb, unique_prefix};

const CENTER: Point = Point::new(52.52, 13.405);
const SEED: u64 = 7;

/// What every run shares: the seed, steady demand, drivers that accept every offer quickly
/// and riders that never cancel.
fn common(url: &str, center: Point, run_id: String) -> Settings {
    let mut settings = Settings::new(url, TOKEN_SECRET, center);
    settings.seed = SEED;
    settings.scenario = Scenario::Steady;
    settings.drain = Duration::from_secs(120);
    settings.accept_probability = 1.0;
    settings.answer_delay = Duration::from_millis(200);
    settings.cancel_probability = 0.0;
    settings.progress = false;
    settings.run_id = run_id;
    settings
}

fn settings(url: &str, request_rate: f64, drivers: usize) -> Settings {
    let mut settings = common(url, CENTER, format!("matching-{SEED}"));
    settings.drivers = drivers;
    settings.riders = 150;
    settings.city.radius_m = 4_000.0;
    settings.duration = Duration::from_secs(60);
    settings.request_rate = request_rate;
    settings.speedup = 40.0;
    settings
}

/// The road scenario: central Helsinki's roads (`services/roads/data`, about 1.7 × 1.0 km),
/// vehicles driving them at road speeds, at a demand that leaves drivers to choose from. Run
/// twice with the greedy strategy, the matcher ranking candidates by straight-line ETA and
/// then by road ETA; same seed, so the same requests at the same times and places.
fn road_settings(url: &str, center: Point, network: Arc<RoadNetwork>) -> Settings {
    let mut settings = common(url, center, format!("matching-roads-{SEED}"));
    settings.drivers = 30;
    settings.riders = 100;
    settings.city.radius_m = 450.0;
    settings.duration = Duration::from_secs(120);
    settings.request_rate = 0.6;
    settings.speedup = 10.0;
    settings.report_every = Duration::from_millis(250);
    settings.roads = Some(network);
    settings
}

/// Demand levels: (name, requests per second, drivers). "ample" is the moderate demand with
/// five times the drivers, so that a request finds a free driver nearby at once: its offer
/// latency is the system's processing time, not a wait for a driver. A request rate of 1.5/s
/// keeps about a third of 60 drivers busy, 4.2/s nearly all of them, where the strategies'
/// choices matter most.
const LOADS: &[(&str, f64, usize)] = &[
    ("ample", 1.5, 300),
    ("moderate", 1.5, 60),
    ("high", 4.2, 60),
];

/// The batched strategy's wait weights swept at high load (with the default bound on waiting),
/// beside pickup ETA alone with no bound (the strategy before fairness).
const WEIGHTS: &[f64] = &[0.0, 0.5, 1.0, 2.0, 4.0];

/// The bounds on waiting swept at high load (with the default weight).
const BOUNDS_S: &[f64] = &[8.0, 10.0, 15.0, 20.0];

/// One run's name: the strategy, and for the batched one its fairness.
fn label(strategy: Strategy, fairness: Fairness) -> String {
    match strategy {
        Strategy::Greedy => "greedy".into(),
        Strategy::Batched if fairness == Fairness::default() => "batched".into(),
        Strategy::Batched if fairness == Fairness::NONE => "batched, ETA alone".into(),
        Strategy::Batched if fairness.wait_weight == Fairness::default().wait_weight => {
            format!("batched, bound {} s", fairness.max_wait_s)
        }
        Strategy::Batched => format!("batched, weight {}", fairness.wait_weight),
    }
}

struct Run {
    load: &'static str,
    name: String,
    fairness: Option<Fairness>,
    report: Report,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `MATCHING_LOADS=high` runs only the named loads.
    let only = std::env::var("MATCHING_LOADS").ok();
    let wanted = |load: &str| {
        only.as_deref()
            .is_none_or(|names| names.split(',').any(|n| n.trim() == load))
    };
    let mut plan: Vec<(&'static str, f64, usize, Strategy, Fairness)> = Vec::new();
    for &(load, rate, drivers) in LOADS.iter().filter(|(load, ..)| wanted(load)) {
        plan.push((load, rate, drivers, Strategy::Greedy, Fairness::default()));
        plan.push((load, rate, drivers, Strategy::Batched, Fairness::default()));
        if load == "high" {
            plan.push((load, rate, drivers, Strategy::Batched, Fairness::NONE));
            let defaults = Fairness::default();
            let weights = WEIGHTS.iter().map(|&wait_weight| Fairness {
                wait_weight,
                ..defaults
            });
            let bounds = BOUNDS_S.iter().map(|&max_wait_s| Fairness {
                max_wait_s,
                ..defaults
            });
            for fairness in weights.chain(bounds).filter(|f| *f != defaults) {
                plan.push((load, rate, drivers, Strategy::Batched, fairness));
            }
        }
    }
    // `MATCHING_RUNS=bound` runs only the runs whose names contain one of these.
    if let Ok(names) = std::env::var("MATCHING_RUNS") {
        plan.retain(|&(_, _, _, strategy, fairness)| {
            let name = label(strategy, fairness);
            names.split(',').any(|n| name.contains(n.trim()))
        });
    }
    let mut results = Vec::new();
    for (step, &(load, rate, drivers, strategy, fairness)) in plan.iter().enumerate() {
        let name = label(strategy, fairness);
        println!(
            "matching [{}/{}]: {name}, {load} load ({rate} requests/s, {drivers} drivers), seed {SEED} ...",
            step + 1,
            plan.len()
        );
        let report = run(strategy, fairness, CENTER, None, |url| {
            settings(url, rate, drivers)
        })
        .await?;
        println!("{}", report.table());
        results.push(Run {
            load,
            name,
            fairness: (strategy == Strategy::Batched).then_some(fairness),
            report,
        });
    }
    if wanted("roads") {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../services/roads/data/helsinki.osm.pbf");
        let network = Arc::new(RoadNetwork::load(&path)?);
        let (sw, ne) = network.bounds();
        let center = Point::new((sw.lat + ne.lat) / 2.0, (sw.lng + ne.lng) / 2.0);
        let road_eta: Arc<dyn EtaModel> = Arc::new(Roads(network.clone()));
        for (name, eta) in [("straight-line ETA", None), ("road ETA", Some(road_eta))] {
            println!(
                "matching: roads of central Helsinki, greedy ranking by {name}, seed {SEED} ..."
            );
            let report = run(Strategy::Greedy, Fairness::default(), center, eta, |url| {
                road_settings(url, center, network.clone())
            })
            .await?;
            println!("{}", report.table());
            results.push(Run {
                load: "roads",
                name: name.into(),
                fairness: None,
                report,
            });
        }
    }
    println!();
    println!(
        "{:<9} {:<20} {:>15} {:>15} {:>11} {:>15} {:>8} {:>5}",
        "load",
        "strategy",
        "offer p50 (ms)",
        "offer p99 (ms)",
        "pickup (s)",
        "pickup ETA (s)",
        "served",
        "lost"
    );
    for Run {
        load,
        name,
        report: r,
        ..
    } in &results
    {
        println!(
            "{:<9} {:<20} {:>15.1} {:>15.1} {:>11.1} {:>15.1} {:>7.1}% {:>5}",
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
        results
            .iter()
            .find(|run| run.load == load && run.name == name)
            .map(|run| &run.report)
    };
    let mut json = serde_json::json!({
        "seed": SEED,
        "runs": results.iter().map(|Run { load, name, fairness, report: r }| serde_json::json!({
            "load": load,
            "strategy": name,
            "wait_weight": fairness.map(|f| f.wait_weight),
            "max_wait_s": fairness.and_then(|f| f.max_wait_s.is_finite().then_some(f.max_wait_s)),
            "match_latency_ms": r.match_latency_ms,
            "mean_pickup_time_s": r.mean_pickup_time_s,
            "mean_pickup_eta_s": r.mean_pickup_eta_s,
            "mean_pickup_distance_m": r.mean_pickup_distance_m,
            "mean_rider_eta_error_s": r.mean_rider_eta_error_s,
            "service_rate": r.service_rate,
            "requests": r.requests,
            "completed": r.completed,
            "expired": r.expired,
            "lost": r.lost,
            "double_assigned": r.double_assigned,
        })).collect::<Vec<_>>(),
        "moderate_load_greedy_offer_p99_ms": find("moderate", "greedy").map(|r| r.match_latency_ms.p99),
        "ample_supply_greedy_offer_p99_ms": find("ample", "greedy").map(|r| r.match_latency_ms.p99),
    });
    if let (Some(greedy), Some(batched)) = (find("high", "greedy"), find("high", "batched")) {
        let pickup_ratio = batched.mean_pickup_time_s / greedy.mean_pickup_time_s.max(1e-9);
        println!(
            "high load, batched / greedy mean pickup time: {pickup_ratio:.3} ({:+.1}%), service rate {:.1}% / {:.1}%, offer p99 {:.1} / {:.1} s",
            (pickup_ratio - 1.0) * 100.0,
            batched.service_rate * 100.0,
            greedy.service_rate * 100.0,
            batched.match_latency_ms.p99 / 1000.0,
            greedy.match_latency_ms.p99 / 1000.0,
        );
        json["high_load"] = serde_json::json!({
            "greedy": {"mean_pickup_time_s": greedy.mean_pickup_time_s, "service_rate": greedy.service_rate, "offer_p99_ms": greedy.match_latency_ms.p99},
            "batched": {"mean_pickup_time_s": batched.mean_pickup_time_s, "service_rate": batched.service_rate, "offer_p99_ms": batched.match_latency_ms.p99},
            "batched_over_greedy_pickup_time": pickup_ratio,
        });
    }
    if let (Some(straight), Some(road)) = (
        find("roads", "straight-line ETA"),
        find("roads", "road ETA"),
    ) {
        let ratio = road.mean_pickup_time_s / straight.mean_pickup_time_s.max(1e-9);
        println!(
            "roads, ranking by road ETA / by straight line, mean actual pickup time: {:.1} s / {:.1} s = {ratio:.3} ({:+.1}%)",
            road.mean_pickup_time_s,
            straight.mean_pickup_time_s,
            (ratio - 1.0) * 100.0
        );
        println!(
            "roads, the rider's first ETA to the pickup against the time the driver took, mean gap: {:.1} s by road ETA, {:.1} s by straight line",
            road.mean_rider_eta_error_s, straight.mean_rider_eta_error_s,
        );
        json["roads"] = serde_json::json!({
            "straight_line_mean_pickup_time_s": straight.mean_pickup_time_s,
            "road_eta_mean_pickup_time_s": road.mean_pickup_time_s,
            "road_over_straight_line_pickup_time": ratio,
            "straight_line_rider_eta_error_s": straight.mean_rider_eta_error_s,
            "road_eta_rider_eta_error_s": road.mean_rider_eta_error_s,
        });
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    if let Some(greedy) = find("high", "greedy") {
        let sweep: Vec<&Run> = results
            .iter()
            .filter(|run| {
                run.load == "high" && run.fairness.is_some_and(|f| f.max_wait_s.is_finite())
            })
            .collect();
        std::fs::write(
            dir.join("matching.html"),
            sweep_page(&sweep, greedy, find("high", "batched, ETA alone")),
        )?;
        println!("the fairness sweep is plotted in target/bench/matching.html");
    }
    std::fs::write(
        dir.join("matching.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    anyhow::ensure!(
        results
            .iter()
            .all(|run| run.report.lost == 0 && run.report.double_assigned == 0),
        "a run lost or double-assigned requests"
    );
    Ok(())
}

/// Mean pickup time and request-to-offer p99 against the wait weight (at the default bound)
/// and against the bound (at the default weight), greedy and ETA alone as dashed levels, so
/// an operator can choose.
fn sweep_page(sweep: &[&Run], greedy: &Report, eta_alone: Option<&Report>) -> String {
    let defaults = Fairness::default();
    let along = |x: &dyn Fn(Fairness) -> Option<f64>, value: &dyn Fn(&Report) -> f64| {
        let mut points: Vec<(f64, f64)> = sweep
            .iter()
            .filter_map(|run| Some((x(run.fairness?)?, value(&run.report))))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let by_weight = |f: Fairness| (f.max_wait_s == defaults.max_wait_s).then_some(f.wait_weight);
    let by_bound = |f: Fairness| (f.wait_weight == defaults.wait_weight).then_some(f.max_wait_s);
    let chart = |title: &str,
                 x_unit: &str,
                 unit: &str,
                 x: &dyn Fn(Fairness) -> Option<f64>,
                 value: &dyn Fn(&Report) -> f64| {
        let points = along(x, value);
        let (lo, hi) = (
            points.first().map_or(0.0, |p| p.0),
            points.last().map_or(1.0, |p| p.0),
        );
        let level = |v: f64| vec![(lo, v), (hi, v)];
        let mut chart = Chart::new(title, x_unit, unit)
            .with(Series::new("batched", "#1f77b4", points))
            .with(Series::new("greedy", "#d62728", level(value(greedy))).dashed());
        if let Some(alone) = eta_alone {
            chart = chart
                .with(Series::new("batched, ETA alone", "#7f7f7f", level(value(alone))).dashed());
        }
        chart.svg()
    };
    let pickup = |r: &Report| r.mean_pickup_time_s;
    let p99 = |r: &Report| r.match_latency_ms.p99 / 1000.0;
    let weight_unit = "wait weight (s of ETA per s waited)";
    let bound_unit = "bound on waiting (s)";
    let rows: Vec<Vec<String>> = sweep
        .iter()
        .map(|run| {
            let r = &run.report;
            vec![
                run.name.clone(),
                format!("{:.1}", r.mean_pickup_time_s),
                format!("{:.1}", r.match_latency_ms.p99 / 1000.0),
                format!("{:.1} %", r.service_rate * 100.0),
            ]
        })
        .collect();
    chart::page(
        &format!("Matching at high load: the batched strategy's fairness (seed {SEED})"),
        &[
            chart(
                "Mean pickup time against the wait weight",
                weight_unit,
                "s",
                &by_weight,
                &pickup,
            ),
            chart(
                "Request to offer p99 against the wait weight",
                weight_unit,
                "s",
                &by_weight,
                &p99,
            ),
            chart(
                "Mean pickup time against the bound on waiting",
                bound_unit,
                "s",
                &by_bound,
                &pickup,
            ),
            chart(
                "Request to offer p99 against the bound on waiting",
                bound_unit,
                "s",
                &by_bound,
                &p99,
            ),
            chart::table(&["run", "pickup (s)", "offer p99 (s)", "served"], &rows),
        ],
    )
}

/// One run on a fresh stack: the matcher with `strategy`, `fairness` and `eta` (none: straight
/// line), serving the regions around `center`; the simulator as `simulate` sets it up.
async fn run(
    strategy: Strategy,
    fairness: Fairness,
    center: Point,
    eta: Option<Arc<dyn EtaModel>>,
    simulate: impl FnOnce(&str) -> Settings,
) -> anyhow::Result<Report> {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let mut trips = trips_config(&db.url, &nats.url(), &prefix);
    trips.store.search_timeout = Duration::from_secs(45);
    let _trips = start_trips(trips).await;
    let regions = GeoConfig::default().regions_covering(center, 12_000.0)?;
    let mut matcher = matcher_config(&nats.url(), &prefix, regions);
    matcher.settings.strategy = strategy;
    matcher.settings.fairness = fairness;
    let mut gateway = gateway_config(&nats.url(), &prefix);
    if let Some(eta) = eta {
        // The gateway tells riders ETAs from the model the matcher ranks by, as deployed.
        matcher.eta = eta.clone();
        gateway.eta = eta;
    }
    let matcher = start_matcher(matcher).await;
    wait_ready(matcher.http).await;
    let gateway = start_gateway(gateway).await;
    wait_ready(gateway.running.http).await;
    simulator::run(simulate(&format!("ws://{}/ws", gateway.ws))).await
}
