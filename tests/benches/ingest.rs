//! End-to-end position ingest: WebSocket clients -> gateway -> NATS -> matcher index, all on
//! this machine (clients included), against the bus ceiling measured in the same run: the same
//! payloads published and received with async-nats alone.
//!
//! Offered rates rise step by step until an update is lost (or the clients cannot offer more);
//! the highest lossless rate is the result, with latency percentiles at 50% and 90% of it.
//! Latency is client send to a NATS subscriber receiving the gateway's publication (the
//! matcher's input), measured on one clock: each report's `seq` is its send time.
//!
//! Run with `cargo xtask bench ingest` (or `cargo bench -p tests --bench ingest` with
//! `NATS_SERVER_BIN` set). Prints a table and writes `target/bench/ingest.json`.
//!
//! Each client sends every 10 ms. By default the clients' sends are spread over those 10 ms,
//! as independent drivers' are; `BENCH_INGEST_SENDS=aligned` makes all of them send in the
//! same millisecond, which lets the gateway and NATS batch more per wakeup (more throughput)
//! and measures bursts (a longer latency tail).

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use protocol::bus::Position;
use protocol::client::{Role, VehicleStatus};
use protocol::{GeoConfig, Point, codec};
use tests::client::{Client, Ws};
use tests::services::{
    gateway_config, matcher_config, start_gateway, start_matcher, start_trips, trips_config,
    wait_ready,
};
use tests::{NatsServer, TestDb, unique_prefix};
use tokio_tungstenite::tungstenite::Message;

const CONNECTIONS: usize = 1_000;
const STEP: Duration = Duration::from_secs(4);
const RATES: &[u64] = &[
    5_000, 10_000, 20_000, 30_000, 40_000, 60_000, 80_000, 90_000, 100_000, 110_000, 120_000,
    160_000,
];
const BASELINE_MESSAGES: u64 = 1_000_000;
const CENTER: Point = Point::new(52.52, 13.405);

/// Microseconds since the benchmark started: the clock every latency is measured on.
fn micros(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// The bus ceiling: one publisher, one subscriber, the gateway's own payload.
async fn bare_nats(url: &str) -> anyhow::Result<f64> {
    let publisher = async_nats::connect(url).await?;
    let subscriber = async_nats::connect(url).await?;
    let mut sub = subscriber.subscribe("bench.bare").await?;
    subscriber.flush().await?;
    let payload = bytes::Bytes::from(codec::encode(&Position {
        driver_id: "driver-123".into(),
        lat: CENTER.lat,
        lng: CENTER.lng,
        heading: Some(90.0),
        speed: Some(8.0),
        accuracy: Some(5.0),
        ts: protocol::time::now_ms(),
        seq: 1,
        status: VehicleStatus::Available,
        vehicle_class: None,
        capacity: 4,
        trip_id: None,
        received_us: 0,
    }));
    println!("baseline payload: {} bytes", payload.len());
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        for _ in 0..BASELINE_MESSAGES {
            publisher.publish("bench.bare", payload.clone()).await?;
        }
        publisher.flush().await?;
        anyhow::Ok(())
    });
    let mut received = 0u64;
    while received < BASELINE_MESSAGES {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(_)) => received += 1,
            _ => break,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    sending.await??;
    Ok(received as f64 / elapsed)
}

struct Step {
    offered: f64,
    sent: u64,
    received: u64,
    latency: Histogram<u64>,
}

/// Whether every client sends in the same millisecond (`BENCH_INGEST_SENDS=aligned`).
fn aligned_sends() -> bool {
    std::env::var("BENCH_INGEST_SENDS").is_ok_and(|v| v == "aligned")
}

/// Offers `rate` updates per second over the clients for `STEP` and counts what arrives.
async fn step(
    clients: Vec<Ws>,
    received: &Arc<AtomicU64>,
    latency: &Arc<Mutex<Histogram<u64>>>,
    epoch: Instant,
    rate: u64,
) -> (Vec<Ws>, Step) {
    let before = received.load(Ordering::SeqCst);
    latency.lock().unwrap().reset();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let per_client = rate as f64 / clients.len() as f64;
    let mut tasks = Vec::new();
    // Each client sends its share every 10 ms, in one flush, at its own phase within the
    // 10 ms unless the sends are aligned.
    let clients_n = clients.len().max(1);
    let start = tokio::time::Instant::now();
    for (i, mut ws) in clients.into_iter().enumerate() {
        let (stop, sent) = (stop.clone(), sent.clone());
        let phase = match aligned_sends() {
            true => Duration::ZERO,
            false => Duration::from_micros((i * 10_000 / clients_n) as u64),
        };
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start + phase, Duration::from_millis(10));
            let mut owed = (i as f64 * 0.37) % 1.0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                owed += per_client / 100.0;
                let mut queued = 0u64;
                while owed >= 1.0 {
                    owed -= 1.0;
                    let text = format!(
                        r#"{{"type":"location","lat":{},"lng":{},"ts":{},"seq":{}}}"#,
                        CENTER.lat + (i % 100) as f64 * 1e-3,
                        CENTER.lng + (i / 100) as f64 * 1e-3,
                        protocol::time::now_ms(),
                        micros(epoch)
                    );
                    if ws.feed(Message::text(text)).await.is_err() {
                        return ws;
                    }
                    queued += 1;
                }
                if queued > 0 {
                    if ws.flush().await.is_err() {
                        return ws;
                    }
                    sent.fetch_add(queued, Ordering::Relaxed);
                }
            }
            ws
        }));
    }
    tokio::time::sleep(STEP).await;
    stop.store(true, Ordering::SeqCst);
    let mut clients = Vec::with_capacity(tasks.len());
    for task in tasks {
        clients.push(task.await.expect("sender task"));
    }
    let sent = sent.load(Ordering::SeqCst);
    // Everything sent arrives within two seconds, or it is lost.
    let deadline = Instant::now() + Duration::from_secs(2);
    while received.load(Ordering::SeqCst) - before < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let step = Step {
        offered: sent as f64 / STEP.as_secs_f64(),
        sent,
        received: received.load(Ordering::SeqCst) - before,
        latency: latency.lock().unwrap().clone(),
    };
    (clients, step)
}

/// Waits until nothing has arrived for a second (what an overloaded step left queued in
/// sockets and buffers has drained), so the next step starts on an idle system.
async fn settle(last_arrival_us: &AtomicU64, epoch: Instant) {
    tests::eventually(
        "the last step's updates to drain",
        Duration::from_secs(60),
        || async {
            let quiet = micros(epoch).saturating_sub(last_arrival_us.load(Ordering::SeqCst));
            (quiet >= 1_000_000).then_some(())
        },
    )
    .await;
}

fn quantiles_ms(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "p50": h.value_at_quantile(0.5) as f64 / 1000.0,
        "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
        "p999": h.value_at_quantile(0.999) as f64 / 1000.0,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let bare = bare_nats(&nats.url()).await?;
    println!("bare async-nats, one publisher to one subscriber: {bare:.0} messages/s");

    let prefix = unique_prefix();
    // The trips service answers the drivers' session state at hello.
    let db = TestDb::create().await;
    let _trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    let regions = GeoConfig::default().regions_covering(CENTER, 20_000.0)?;
    let matcher = start_matcher(matcher_config(&nats.url(), &prefix, regions)).await;
    wait_ready(matcher.http).await;
    let mut config = gateway_config(&nats.url(), &prefix);
    config.limits.messages_per_sec = 100_000;
    config.limits.burst = 100_000;
    config.limits.max_connections = CONNECTIONS * 2;
    let gateway = start_gateway(config).await;
    wait_ready(gateway.running.http).await;

    // What the matchers receive, timed on the benchmark's clock.
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let last_arrival_us = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let listener = async_nats::connect(nats.url()).await?;
    let mut positions = listener.subscribe(format!("{prefix}.loc.>")).await?;
    listener.flush().await?;
    {
        let (received, latency, last_arrival_us) =
            (received.clone(), latency.clone(), last_arrival_us.clone());
        tokio::spawn(async move {
            while let Some(message) = positions.next().await {
                let now = micros(epoch);
                if let Ok(p) = codec::decode::<Position>(&message.payload) {
                    let _ = latency
                        .lock()
                        .unwrap()
                        .record(now.saturating_sub(p.seq).max(1));
                }
                received.fetch_add(1, Ordering::Relaxed);
                last_arrival_us.store(now, Ordering::Relaxed);
            }
        });
    }

    println!("opening {CONNECTIONS} driver connections");
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let client = Client::connect(gateway.ws, Role::Driver, &format!("bench-driver-{i}")).await;
        clients.push(client.ws);
    }

    println!(
        "{:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10}",
        "target/s", "offered/s", "received", "lost", "p50 ms", "p99 ms", "p999 ms"
    );
    let mut best: Option<f64> = None;
    let mut steps = Vec::new();
    for &rate in RATES {
        let (back, result) = step(clients, &received, &latency, epoch, rate).await;
        clients = back;
        let lost = result.sent.saturating_sub(result.received);
        println!(
            "{:>10} {:>10.0} {:>10} {:>8} {:>10.2} {:>10.2} {:>10.2}",
            rate,
            result.offered,
            result.received,
            lost,
            result.latency.value_at_quantile(0.5) as f64 / 1000.0,
            result.latency.value_at_quantile(0.99) as f64 / 1000.0,
            result.latency.value_at_quantile(0.999) as f64 / 1000.0,
        );
        steps.push(serde_json::json!({
            "target_per_sec": rate,
            "offered_per_sec": result.offered,
            "sent": result.sent,
            "received": result.received,
            "lost": lost,
            "latency_ms": quantiles_ms(&result.latency),
        }));
        if lost > 0 {
            break;
        }
        best = Some(result.offered);
        if result.offered < rate as f64 * 0.9 {
            println!("the clients could not offer more on this machine");
            break;
        }
    }
    let best = best.unwrap_or(0.0);
    let mut at = serde_json::Map::new();
    for fraction in [0.5, 0.9] {
        let rate = (best * fraction) as u64;
        settle(&last_arrival_us, epoch).await;
        let (back, result) = step(clients, &received, &latency, epoch, rate.max(1)).await;
        clients = back;
        println!(
            "at {:.0}% ({rate}/s): lost {}, latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms",
            fraction * 100.0,
            result.sent.saturating_sub(result.received),
            result.latency.value_at_quantile(0.5) as f64 / 1000.0,
            result.latency.value_at_quantile(0.99) as f64 / 1000.0,
            result.latency.value_at_quantile(0.999) as f64 / 1000.0,
        );
        at.insert(
            format!("at_{}_percent", (fraction * 100.0) as u32),
            serde_json::json!({
                "rate_per_sec": rate,
                "lost": result.sent.saturating_sub(result.received),
                "latency_ms": quantiles_ms(&result.latency),
            }),
        );
    }
    drop(clients);
    println!(
        "highest lossless rate end to end: {best:.0}/s; bare async-nats: {bare:.0}/s; ratio {:.3}",
        best / bare
    );
    let json = serde_json::json!({
        "connections": CONNECTIONS,
        "sends": if aligned_sends() { "aligned" } else { "spread" },
        "lossless_updates_per_sec": best,
        "bare_nats_messages_per_sec": bare,
        "ratio": best / bare,
        "latency": at,
        "steps": steps,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("ingest.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
