//! How much of all client-addressed traffic each gateway receives, with three gateways and
//! the simulator's clients spread evenly over them: the whole system in one process (real
//! nats-server and PostgreSQL), real WebSocket clients.
//!
//! The baseline is every client message published in the run, counted by a plain subscriber
//! to every client subject: what each gateway received when every gateway subscribed to every
//! client's subject. Aim: no gateway receives more than 40% of it.
//!
//! Run with `cargo xtask bench fanout` (or `cargo bench -p tests --bench fanout` with
//! `DISPATCH_TEST_DATABASE_URL` and `NATS_SERVER_BIN` set). Writes `target/bench/fanout.json`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use protocol::{GeoConfig, Point};
use simulator::{Scenario, Settings};
use tests::services::{
    TOKEN_SECRET, gateway_config, matcher_config, metrics_text, start_gateway, start_matcher,
    start_trips, trips_config, wait_ready,
};
use tests::{NatsServer, TestDb, unique_prefix};

const CENTER: Point = Point::new(52.52, 13.405);
const GATEWAYS: usize = 3;

/// Client messages gateway `id` received, from the process's metrics.
fn received(metrics: &str, id: &str) -> f64 {
    let label = format!("gateway=\"{id}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with("gateway_client_messages_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let _trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    let regions = GeoConfig::default().regions_covering(CENTER, 12_000.0)?;
    let matcher = start_matcher(matcher_config(&nats.url(), &prefix, regions)).await;
    wait_ready(matcher.http).await;
    let mut gateways = Vec::new();
    for _ in 0..GATEWAYS {
        let config = gateway_config(&nats.url(), &prefix);
        let id = config.id.clone();
        let gateway = start_gateway(config).await;
        wait_ready(gateway.running.http).await;
        gateways.push((id, gateway));
    }

    // Every client message, wherever addressed.
    let counter = async_nats::connect(nats.url()).await?;
    let total = Arc::new(AtomicU64::new(0));
    for subject in [format!("{prefix}.user.>"), format!("{prefix}.gw.*.>")] {
        let mut messages = counter.subscribe(subject).await?;
        let total = total.clone();
        tokio::spawn(async move {
            while messages.next().await.is_some() {
                total.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    counter.flush().await?;
    let metrics_at = gateways[0].1.running.http;
    let before: Vec<f64> = {
        let metrics = metrics_text(metrics_at).await;
        gateways
            .iter()
            .map(|(id, _)| received(&metrics, id))
            .collect()
    };

    let urls: Vec<String> = gateways
        .iter()
        .map(|(_, g)| format!("ws://{}/ws", g.ws))
        .collect();
    let mut settings = Settings::new(&urls.join(","), TOKEN_SECRET, CENTER);
    settings.seed = 11;
    settings.drivers = 300;
    settings.riders = 300;
    settings.city.radius_m = 4_000.0;
    settings.scenario = Scenario::Steady;
    settings.duration = Duration::from_secs(40);
    settings.drain = Duration::from_secs(60);
    settings.request_rate = 3.0;
    settings.speedup = 20.0;
    settings.progress = false;
    settings.run_id = format!("fanout-{prefix}");
    let report = simulator::run(settings).await?;
    anyhow::ensure!(
        report.is_correct(),
        "the run lost or double-assigned requests"
    );

    let published = total.load(Ordering::Relaxed) as f64;
    let metrics = metrics_text(metrics_at).await;
    let per_gateway: Vec<serde_json::Value> = gateways
        .iter()
        .zip(&before)
        .map(|((id, _), before)| {
            let got = received(&metrics, id) - before;
            serde_json::json!({"id": id, "received": got, "share": got / published.max(1.0)})
        })
        .collect();
    println!("client messages published: {published}");
    for gateway in &per_gateway {
        println!(
            "gateway {}: received {} ({:.1}% of all; every gateway received 100% before)",
            gateway["id"].as_str().unwrap_or_default(),
            gateway["received"],
            gateway["share"].as_f64().unwrap_or(f64::NAN) * 100.0
        );
    }
    let max_share = per_gateway
        .iter()
        .filter_map(|g| g["share"].as_f64())
        .fold(0.0f64, f64::max);
    let out = serde_json::json!({
        "gateways": GATEWAYS,
        "clients": 600,
        "published": published,
        "per_gateway": per_gateway,
        "max_share": max_share,
        "baseline_share": 1.0,
        "completed": report.completed,
        "lost": report.lost,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("fanout.json"), serde_json::to_string_pretty(&out)?)?;
    Ok(())
}
