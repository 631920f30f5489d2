//! End-to-end position ingest: WebSocket clients -> gateway -> NATS -> matcher index, all on
//! this machine (clients included), against the bus ceiling measured in the same run: the same
//! payloads published and received with async-nats alone.
//!
//! Offered rates rise step by step until an update is lost at the same rate twice running (or
//! the clients cannot offer more): a step that loses is run once more, since a stall of the
//! shared machine loses positions at any rate near the top. The highest rate run without loss
//! is the result, with latency percentiles at 50% and 90% of it.
//! Latency is client send to a NATS subscriber receiving the gateway's publication (the
//! matcher's input), measured on one clock: each report's `seq` is its send time.
//!
//! The gateway runs as its own process (`GATEWAY_BIN`, built by `cargo xtask bench`), so its
//! CPU time per position comes from its own process accounting; beside it, a bare
//! tokio-tungstenite server's per message for the same frames at the same rate. The ladder is
//! climbed `BENCH_INGEST_RUNS` times (3) for the spread of the lossless rate and of the knee,
//! the highest offered rate whose p99 is at most 10 ms.
//!
//! Run with `cargo xtask bench ingest` (or `cargo bench -p tests --bench ingest` with
//! `NATS_SERVER_BIN` set). Prints a table and writes `target/bench/ingest.json`.
//!
//! Each client sends one position at a time, every 1,000/rate seconds (10 ms at 100,000/s).
//! By default the clients' sends are spread over that period, as independent drivers' are;
//! `BENCH_INGEST_SENDS=aligned` makes all of them send in the same millisecond, which lets the
//! gateway and NATS batch more per wakeup (more throughput) and measures bursts (a longer
//! latency tail). Every step reports the CPU time per position of the gateway, of the
//! nats-server and of this process (the clients, the subscriber and the matcher), so what the
//! system costs is told apart from what the load costs. The trips service, which records and
//! delivers the zone events, runs as its own process too (`TRIPS_BIN`).
//!
//! Zones (issue: tracking): each climb is followed by one with `BENCH_INGEST_ZONES` watch
//! zones (10,000; 0 leaves them out) in force in the same gateway, one around every point the
//! clients report from and the rest beside them, each smaller than an index cell so every
//! position takes the exact point-in-polygon test: the lossless rate with zones over the one
//! without, climb by climb. Then, with the zones, at half the first climb's lossless rate,
//! every client steps out of its zone and back every `BENCH_INGEST_CROSS_EVERY` (100) reports,
//! so 1% of the reports cross an edge, and a webhook receiver on loopback times each zone event
//! from the client's send to its delivery.

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
use tests::process::{TripsProcess, bare_ws_server, cpu_seconds, free_port};
use tests::services::{matcher_config, start_matcher, wait_ready};
use tests::{NatsServer, TestDb, unique_prefix};
use tokio_tungstenite::tungstenite::Message;
use zones::{EventPath, clear_zones, event_latency, gateway_has_zones, put_zones};

// Beside the benchmark rather than in `benches/`, where cargo would take it for one.
#[path = "ingest/losses.rs"]
mod losses;
#[path = "ingest/zones.rs"]
mod zones;

const CONNECTIONS: usize = 1_000;
const STEP: Duration = Duration::from_secs(4);
/// Finer near the top, where climbs end: a rung of 5,000/s is about 5% of the result.
const RATES: &[u64] = &[
    5_000, 20_000, 40_000, 60_000, 70_000, 80_000, 85_000, 90_000, 95_000, 100_000, 105_000,
    110_000, 115_000, 120_000, 130_000, 140_000, 150_000, 160_000,
];
/// The ladder's offered rates, or `BENCH_INGEST_RATES` (comma-separated) to hold chosen ones,
/// for example to profile one rate.
fn rates() -> Vec<u64> {
    match std::env::var("BENCH_INGEST_RATES") {
        Ok(list) => list
            .split(',')
            .map(|r| {
                r.trim()
                    .parse()
                    .expect("BENCH_INGEST_RATES: rates per second")
            })
            .collect(),
        Err(_) => RATES.to_vec(),
    }
}

const BASELINE_MESSAGES: u64 = 1_000_000;
/// Degrees between the clients' points, and between zones.
const ZONE_SPACING: f64 = 1e-3;
/// Half a zone's side, degrees: about 90 by 55 m, smaller than an index cell.
const ZONE_HALF: f64 = 0.4e-3;
const CENTER: Point = Point::new(52.52, 13.405);

/// Microseconds since the benchmark started: the clock every latency is measured on.
fn micros(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// The wall clock's reading at `epoch`, in milliseconds, taken once for the whole run.
fn wall_ms_at(epoch: Instant) -> i64 {
    static AT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *AT.get_or_init(|| protocol::time::now_ms() - epoch.elapsed().as_millis() as i64)
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
    /// The gateway's position counters that moved during the step (see [`losses`]).
    gateway_moved: Vec<(String, f64)>,
}

/// Whether every client sends in the same millisecond (`BENCH_INGEST_SENDS=aligned`).
fn aligned_sends() -> bool {
    std::env::var("BENCH_INGEST_SENDS").is_ok_and(|v| v == "aligned")
}

/// Offers `rate` updates per second over the clients for `STEP` and counts what arrives.
/// Where client `i` reports from at `now_us` (the benchmark's clock): a grid of 100 by 10
/// points about 100 m apart. With `cross_every` (n), each client steps between its point and
/// the gap north of it once every n of its reports (`period_us` apart), each at its own moment
/// of that cycle, so one report in n crosses a zone's edge and the crossings are spread evenly
/// over time and clients. `now_us` is the crossing clock: it runs only while clients cross
/// (see [`Rig::crossed_us`]).
fn client_point(
    i: usize,
    clients: usize,
    now_us: u64,
    (cross_every, period_us): (u64, u64),
) -> Point {
    let slot_us = (cross_every * period_us).max(1);
    let phase = slot_us * i as u64 / clients.max(1) as u64;
    let outside = cross_every > 0 && ((now_us + phase) / slot_us) % 2 == 1;
    let across = if outside { ZONE_SPACING / 2.0 } else { 0.0 };
    Point::new(
        CENTER.lat + (i % 100) as f64 * ZONE_SPACING + across,
        CENTER.lng + (i / 100) as f64 * ZONE_SPACING,
    )
}

async fn step(
    clients: Vec<Ws>,
    received: &Arc<AtomicU64>,
    latency: &Arc<Mutex<Histogram<u64>>>,
    epoch: Instant,
    (rate, cross_every, clock_from_us): (u64, u64, u64),
) -> (Vec<Ws>, Step) {
    let before = received.load(Ordering::SeqCst);
    latency.lock().unwrap().reset();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    // Each client sends one position every `period`, as a driver's app does, at its own phase
    // within the period unless the sends are aligned. A client wakes only to send.
    let clients_n = clients.len().max(1);
    let period = Duration::from_nanos((clients_n as u64 * 1_000_000_000) / rate.max(1));
    let start = tokio::time::Instant::now();
    let wall_ms_at_epoch = wall_ms_at(epoch);
    let mut tasks = Vec::new();
    for (i, mut ws) in clients.into_iter().enumerate() {
        let (stop, sent) = (stop.clone(), sent.clone());
        let phase = match aligned_sends() {
            true => Duration::ZERO,
            false => period.mul_f64(i as f64 / clients_n as f64),
        };
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start + phase, period);
            let crossing = (cross_every, period.as_micros() as u64);
            let mut last_sent_us = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let clock_us = clock_from_us + start.elapsed().as_micros() as u64;
                let at = client_point(i, clients_n, clock_us, crossing);
                // The report's time from a clock that never steps back, as a phone's
                // positioning does: the machine's wall clock can, and the gateway refuses a
                // report older than one it took.
                // Two sends in one microsecond (a client behind its ticks catches up in a
                // burst) would carry the same `seq`, and the gateway refuses the second as
                // stale: the clock is nudged on by one.
                let sent_us = micros(epoch).max(last_sent_us + 1);
                last_sent_us = sent_us;
                let text = format!(
                    r#"{{"type":"location","lat":{},"lng":{},"ts":{},"seq":{}}}"#,
                    at.lat,
                    at.lng,
                    wall_ms_at_epoch + (sent_us / 1000) as i64,
                    sent_us
                );
                if ws.send(Message::text(text)).await.is_err() {
                    return ws;
                }
                sent.fetch_add(1, Ordering::Relaxed);
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
        gateway_moved: Vec::new(),
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

/// One climb of the ladder and the steps at half and nine tenths of its lossless rate.
struct Climb {
    lossless: f64,
    /// Highest offered rate with nothing lost and p99 at most 10 ms.
    knee: f64,
    steps: Vec<serde_json::Value>,
    at: serde_json::Map<String, serde_json::Value>,
    /// Every process's CPU per position at half the lossless rate.
    cpu_at_half: Option<Cpu>,
}

struct Rig {
    received: Arc<AtomicU64>,
    last_arrival_us: Arc<AtomicU64>,
    latency: Arc<Mutex<Histogram<u64>>>,
    epoch: Instant,
    gateway_pid: u32,
    nats_pid: u32,
    /// How long clients have crossed zones' edges so far: each crossing step goes on from
    /// where the one before stopped, so every client's first report of a step is where its
    /// last one left it (continuing the clock through the pauses between steps would move
    /// half of them across an edge at once, a burst of events at each step's start).
    crossed_us: AtomicU64,
    /// The gateway's metrics endpoint.
    gateway_http: std::net::SocketAddr,
    /// Slow-consumer events of the subscriber that counts arrivals, so far.
    slow_consumer: Arc<AtomicU64>,
}

/// CPU time per position received during a step, microseconds, by process.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    gateway: f64,
    nats_server: f64,
    /// This process: the 1,000 clients, the subscriber that times the positions and the
    /// matcher.
    bench: f64,
}

impl Cpu {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "gateway": self.gateway,
            "nats_server": self.nats_server,
            "bench_process": self.bench,
            "total": self.gateway + self.nats_server + self.bench,
        })
    }
}

impl Rig {
    /// A step, with each process's CPU per position received.
    async fn step(&self, clients: Vec<Ws>, rate: u64) -> (Vec<Ws>, Step, Cpu) {
        self.step_crossing(clients, rate, 0).await
    }

    async fn step_crossing(
        &self,
        clients: Vec<Ws>,
        rate: u64,
        cross_every: u64,
    ) -> (Vec<Ws>, Step, Cpu) {
        let pids = [self.gateway_pid, self.nats_pid, std::process::id()];
        let counted = losses::Counts::read(self.gateway_http).await;
        let before = pids.map(cpu_seconds);
        let clock_from_us = match cross_every {
            0 => 0,
            _ => self
                .crossed_us
                .fetch_add(STEP.as_micros() as u64, Ordering::Relaxed),
        };
        let (clients, mut result) = step(
            clients,
            &self.received,
            &self.latency,
            self.epoch,
            (rate.max(1), cross_every, clock_from_us),
        )
        .await;
        let after = pids.map(cpu_seconds);
        result.gateway_moved = losses::Counts::read(self.gateway_http)
            .await
            .since(&counted);
        let per = |i: usize| (after[i] - before[i]) * 1e6 / result.received.max(1) as f64;
        let cpu = Cpu {
            gateway: per(0),
            nats_server: per(1),
            bench: per(2),
        };
        (clients, result, cpu)
    }

    async fn climb(&self, mut clients: Vec<Ws>) -> (Vec<Ws>, Climb) {
        println!(
            "{:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>24}",
            "target/s",
            "offered/s",
            "received",
            "lost",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "CPU us/pos gw/nats/rest"
        );
        let mut best: Option<f64> = None;
        let mut knee = 0.0f64;
        let mut steps = Vec::new();
        let mut retried = false;
        let mut ladder = rates().into_iter().peekable();
        while let Some(&rate) = ladder.peek() {
            settle(&self.last_arrival_us, self.epoch).await;
            let (back, result, cpu) = self.step(clients, rate).await;
            clients = back;
            let lost = result.sent.saturating_sub(result.received);
            let p99 = result.latency.value_at_quantile(0.99) as f64 / 1000.0;
            println!(
                "{:>10} {:>10.0} {:>10} {:>8} {:>10.2} {:>10.2} {:>10.2} {:>24}",
                rate,
                result.offered,
                result.received,
                lost,
                result.latency.value_at_quantile(0.5) as f64 / 1000.0,
                p99,
                result.latency.value_at_quantile(0.999) as f64 / 1000.0,
                format!("{:.2}/{:.2}/{:.2}", cpu.gateway, cpu.nats_server, cpu.bench),
            );
            steps.push(serde_json::json!({
                "target_per_sec": rate,
                "offered_per_sec": result.offered,
                "sent": result.sent,
                "received": result.received,
                "lost": lost,
                "retry": retried,
                "latency_ms": quantiles_ms(&result.latency),
                "gateway_cpu_us_per_position": cpu.gateway,
                "cpu_us_per_position": cpu.json(),
                "gateway_counted": result.gateway_moved.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            }));
            if lost > 0 {
                println!(
                    "{}",
                    losses::report(
                        lost,
                        &result.gateway_moved,
                        self.slow_consumer.load(Ordering::Relaxed)
                    )
                );
                // A stall of this shared machine fills the gateway's queue at any rate near
                // the top: a rung loses only if it loses twice running.
                if retried {
                    break;
                }
                retried = true;
                println!("running {rate}/s once more");
                continue;
            }
            retried = false;
            ladder.next();
            if p99 <= 10.0 {
                knee = knee.max(result.offered);
            }
            best = Some(result.offered);
            if result.offered < rate as f64 * 0.9 {
                println!("the clients could not offer more on this machine");
                break;
            }
        }
        let lossless = best.unwrap_or(0.0);
        let mut at = serde_json::Map::new();
        let mut cpu_at_half = None;
        for fraction in [0.5, 0.9] {
            let rate = (lossless * fraction) as u64;
            settle(&self.last_arrival_us, self.epoch).await;
            let (back, result, cpu) = self.step(clients, rate).await;
            clients = back;
            if fraction == 0.5 {
                cpu_at_half = Some(cpu);
            }
            println!(
                "at {:.0}% ({rate}/s): lost {}, latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, CPU per position: gateway {:.2} us, nats-server {:.2} us, the rest {:.2} us",
                fraction * 100.0,
                result.sent.saturating_sub(result.received),
                result.latency.value_at_quantile(0.5) as f64 / 1000.0,
                result.latency.value_at_quantile(0.99) as f64 / 1000.0,
                result.latency.value_at_quantile(0.999) as f64 / 1000.0,
                cpu.gateway,
                cpu.nats_server,
                cpu.bench,
            );
            at.insert(
                format!("at_{}_percent", (fraction * 100.0) as u32),
                serde_json::json!({
                    "rate_per_sec": rate,
                    "lost": result.sent.saturating_sub(result.received),
                    "latency_ms": quantiles_ms(&result.latency),
                    "gateway_cpu_us_per_position": cpu.gateway,
                    "cpu_us_per_position": cpu.json(),
                }),
            );
        }
        (
            clients,
            Climb {
                lossless,
                knee,
                steps,
                at,
                cpu_at_half,
            },
        )
    }
}

/// Each climb's figure, with `decimals` places, for the summary lines.
/// A whole number from the environment, or `default`.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn listed(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn spread(values: &[f64]) -> serde_json::Value {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    serde_json::json!({"min": min, "max": max, "runs": values})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Ok(port) = std::env::var("BENCH_INGEST_BARE_SERVER") {
        bare_ws_server(port.parse()?).await;
        return Ok(());
    }
    let runs: usize = std::env::var("BENCH_INGEST_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let nats = NatsServer::start();
    let bare = bare_nats(&nats.url()).await?;
    println!("bare async-nats, one publisher to one subscriber: {bare:.0} messages/s");

    let prefix = unique_prefix();
    // The trips service answers the drivers' session state at hello.
    let db = TestDb::create().await;
    // In a process of its own, as it is deployed: in this one, its deliveries would wait
    // behind the clients' and the subscriber's tasks. The event latency's webhook receiver is
    // on loopback.
    let trips = TripsProcess::start(
        "ingest",
        (&db.url, &nats.url(), &prefix),
        &[],
        &[("TRIPS_WEBHOOK_ALLOW", "127.0.0.1/32")],
    )
    .await?;
    let zones = env_count("BENCH_INGEST_ZONES", 10_000);
    let cross_every = env_count("BENCH_INGEST_CROSS_EVERY", 100) as u64;
    let regions = GeoConfig::default().regions_covering(CENTER, 20_000.0)?;
    let matcher = start_matcher(matcher_config(&nats.url(), &prefix, regions)).await;
    wait_ready(matcher.http).await;
    // The gateway in a process of its own, so that its CPU time is its own.
    let binary = tests::process::gateway_binary("ingest")?;
    let (ws_port, http_port) = (free_port(), free_port());
    let mut gateway = std::process::Command::new(&binary)
        .args(["serve", "--ws", &format!("127.0.0.1:{ws_port}")])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(["--max-connections", &(CONNECTIONS * 2).to_string()])
        .args(["--messages-per-sec", "100000"])
        .env("NATS_URL", nats.url())
        .env("SUBJECT_PREFIX", &prefix)
        .env(
            "TOKEN_SECRET",
            std::str::from_utf8(tests::services::TOKEN_SECRET)?,
        )
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()?;
    let gateway_ws: std::net::SocketAddr = format!("127.0.0.1:{ws_port}").parse()?;
    wait_ready(format!("127.0.0.1:{http_port}").parse()?).await;

    // What the matchers receive, timed on the benchmark's clock.
    let (slow_consumer, listener_options) = losses::slow_consumer_counter();
    let epoch = Instant::now();
    let rig = Rig {
        received: Arc::new(AtomicU64::new(0)),
        last_arrival_us: Arc::new(AtomicU64::new(0)),
        latency: Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
            1, 60_000_000, 3,
        )?)),
        epoch,
        gateway_pid: gateway.id(),
        nats_pid: nats.pid().expect("nats-server runs"),
        crossed_us: AtomicU64::new(0),
        gateway_http: format!("127.0.0.1:{http_port}").parse()?,
        slow_consumer,
    };
    let listener = listener_options.connect(nats.url()).await?;
    let mut positions = listener.subscribe(format!("{prefix}.loc.>")).await?;
    listener.flush().await?;
    {
        let (received, latency, last_arrival_us) = (
            rig.received.clone(),
            rig.latency.clone(),
            rig.last_arrival_us.clone(),
        );
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
        let client = Client::connect(gateway_ws, Role::Driver, &format!("bench-driver-{i}")).await;
        clients.push(client.ws);
    }
    let gateway_http: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse()?;
    let mut climbs = Vec::new();
    let mut zoned = Vec::new();
    for run in 1..=runs {
        println!("climb {run} of {runs}");
        let (back, climb) = rig.climb(clients).await;
        clients = back;
        climbs.push(climb);
        if zones > 0 {
            put_zones(&db, zones).await?;
            gateway_has_zones(gateway_http, zones).await;
            println!("climb {run} of {runs} with {zones} zones");
            let (back, climb) = rig.climb(clients).await;
            clients = back;
            zoned.push(climb);
            if run < runs {
                clear_zones(&db).await?;
                gateway_has_zones(gateway_http, 0).await;
            }
        }
    }
    let mut tracking = serde_json::Value::Null;
    if zones > 0 {
        let half = (climbs[0].lossless * 0.5) as u64;
        let (back, events) = event_latency(
            &rig,
            EventPath {
                db: &db,
                trips: &trips,
                nats_url: &nats.url(),
                prefix: &prefix,
            },
            clients,
            (half, cross_every, runs),
        )
        .await?;
        clients = back;
        let with: Vec<f64> = zoned.iter().map(|c| c.lossless).collect();
        let ratios: Vec<f64> = zoned
            .iter()
            .zip(&climbs)
            .map(|(z, c)| z.lossless / c.lossless.max(1.0))
            .collect();
        let cpu_with: Vec<f64> = zoned
            .iter()
            .map(|c| c.cpu_at_half.map_or(f64::NAN, |cpu| cpu.gateway))
            .collect();
        println!(
            "with {zones} zones: lossless {} /s, {} of the climb before each; gateway CPU per position at half: {} us",
            listed(&with, 0),
            listed(&ratios, 3),
            listed(&cpu_with, 2)
        );
        tracking = serde_json::json!({
            "zones": zones,
            "lossless_updates_per_sec": spread(&with),
            "ratio": spread(&ratios),
            "gateway_cpu_us_per_position": spread(&cpu_with),
            "events": events,
        });
    }
    drop(clients);
    let _ = gateway.kill();
    let _ = gateway.wait();

    // The floor: the same frames at the first climb's half rate to a bare server.
    let half = (climbs[0].lossless * 0.5) as u64;
    let bare_port = free_port();
    let mut bare_ws = std::process::Command::new(std::env::current_exe()?)
        .env("BENCH_INGEST_BARE_SERVER", bare_port.to_string())
        .stdin(std::process::Stdio::null())
        .spawn()?;
    let bare_addr = format!("ws://127.0.0.1:{bare_port}/ws");
    let mut bare_clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let connected = tests::eventually(
            "the bare server accepting",
            Duration::from_secs(10),
            || async {
                tokio_tungstenite::connect_async(bare_addr.as_str())
                    .await
                    .ok()
            },
        )
        .await;
        bare_clients.push(connected.0);
    }
    let cpu = cpu_seconds(bare_ws.id());
    let clients_cpu = cpu_seconds(std::process::id());
    let (bare_clients, bare_step) = step(
        bare_clients,
        &Arc::new(AtomicU64::new(u64::MAX / 2)),
        &rig.latency,
        epoch,
        (half.max(1), 0, 0),
    )
    .await;
    let bare_cpu_us = (cpu_seconds(bare_ws.id()) - cpu) * 1e6 / bare_step.sent.max(1) as f64;
    // What the clients cost with nothing behind the server: this process's CPU per message
    // (the idle matcher included).
    let bare_clients_cpu_us =
        (cpu_seconds(std::process::id()) - clients_cpu) * 1e6 / bare_step.sent.max(1) as f64;
    drop(bare_clients);
    let _ = bare_ws.kill();
    let _ = bare_ws.wait();

    let first = &climbs[0];
    let lossless: Vec<f64> = climbs.iter().map(|c| c.lossless).collect();
    let knees: Vec<f64> = climbs.iter().map(|c| c.knee).collect();
    let cpu_us: Vec<f64> = climbs
        .iter()
        .map(|c| c.cpu_at_half.map_or(f64::NAN, |cpu| cpu.gateway))
        .collect();
    let ratios: Vec<f64> = lossless.iter().map(|l| l / bare).collect();
    println!(
        "highest lossless rate end to end: {} /s; bare async-nats: {bare:.0}/s; ratio {}",
        listed(&lossless, 0),
        listed(&ratios, 3),
    );
    println!(
        "knee (highest rate with p99 <= 10 ms): {} /s",
        listed(&knees, 0)
    );
    println!(
        "gateway CPU per position at half the lossless rate: {} us; bare tokio-tungstenite server per message: {bare_cpu_us:.2} us (its clients: {bare_clients_cpu_us:.2} us)",
        listed(&cpu_us, 2)
    );
    let json = serde_json::json!({
        "connections": CONNECTIONS,
        "sends": if aligned_sends() { "aligned" } else { "spread" },
        "lossless_updates_per_sec": first.lossless,
        "bare_nats_messages_per_sec": bare,
        "ratio": first.lossless / bare,
        "latency": first.at,
        "steps": first.steps,
        "knee_per_sec": first.knee,
        "gateway_cpu_us_per_position": cpu_us[0],
        "cpu_us_per_position": first.cpu_at_half.map(|c| c.json()),
        "bare_ws_clients_cpu_us_per_message": bare_clients_cpu_us,
        "bare_ws_cpu_us_per_message": bare_cpu_us,
        "spread": {
            "lossless_updates_per_sec": spread(&lossless),
            "ratio": spread(&ratios),
            "knee_per_sec": spread(&knees),
            "gateway_cpu_us_per_position": spread(&cpu_us),
        },
        "zones": tracking,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("ingest.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
