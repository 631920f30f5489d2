//! A fleet of 102,000 connected drivers across six gateway processes: how long they take to
//! connect, what each gateway holds per idle connection, and how many positions per second
//! reach NATS subscribers end to end with a tenth of them moving.
//!
//! One process may hold at most 20,000 open files here, so no process holds more than 17,000
//! connections: the clients run in worker processes (this same binary), each spreading its
//! drivers over every gateway in turn, as a load balancer would; each gateway runs as its own
//! process. NATS and the trips service run as in the other benchmarks.
//!
//! The gateway binary comes from `GATEWAY_BIN` (`cargo xtask bench fleet` builds it).
//! `BENCH_FLEET_CONNECTIONS` and `BENCH_FLEET_GATEWAYS` change the size (102,000 and 6).
//! Prints a table and writes `target/bench/fleet.json`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol::client::Role;
use tests::process::{free_port, raise_fd_limit, settled_rss};
use tests::services::{start_trips, trips_config, wait_ready};
use tests::{NatsServer, TestDb, unique_prefix};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Connections one process holds at most (the open-file limit is 20,000).
const PER_PROCESS: usize = 17_000;
/// Connections opened at once by one worker.
const CONCURRENCY: usize = 128;
/// Every this many drivers, one moves.
const MOVING_EVERY: usize = 10;
/// How long positions are counted.
const MOVING_WINDOW: Duration = Duration::from_secs(20);
const SOURCES: usize = 8;
const CENTER: (f64, f64) = (52.52, 13.405);

/// One driver: connects, says hello, then keeps reading (answering pings) and, when it is
/// one of the moving ones and `moving` says so, reports a position every second.
async fn driver(
    gateway: SocketAddr,
    index: usize,
    moves: bool,
    mut moving: watch::Receiver<bool>,
    opened: Arc<AtomicUsize>,
) {
    let source = IpAddr::from([127, 0, 0, 1 + (index % SOURCES) as u8]);
    let open = async {
        let socket = TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::new(source, 0)).ok()?;
        let stream = socket.connect(gateway).await.ok()?;
        let config = WebSocketConfig::default()
            .read_buffer_size(1024)
            .write_buffer_size(0);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            format!("ws://{gateway}/ws"),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await
        .ok()?;
        let token = tests::client::token(Role::Driver, &format!("fleet-{index}"));
        let hello = serde_json::json!({"type": "hello", "token": token, "versions": [1]});
        ws.send(Message::text(hello.to_string())).await.ok()?;
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => Some(ws),
            _ => None,
        }
    };
    let Some(ws) = open.await else {
        return;
    };
    opened.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    // A tick only once moving, one a second: no burst for the seconds spent waiting.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(_)) => {}
                _ => break,
            },
            _ = tick.tick(), if moves && *moving.borrow() => {
                seq += 1;
                let offset = (index % 1000) as f64 * 1e-4;
                let location = serde_json::json!({"type": "location",
                    "lat": CENTER.0 + offset, "lng": CENTER.1 + offset,
                    "ts": protocol::time::now_ms(), "seq": seq});
                if sink.send(Message::text(location.to_string())).await.is_err() {
                    break;
                }
            }
            changed = moving.changed() => {
                if changed.is_err() {
                    break;
                }
                tick.reset();
            }
        }
    }
    opened.fetch_sub(1, Ordering::Relaxed);
}

/// A worker process: drivers `first..first + count`, spread over `gateways`; says how many
/// are open, starts moving on `move`, and ends on `stop` or when its input closes.
async fn worker(gateways: Vec<SocketAddr>, first: usize, count: usize) -> anyhow::Result<()> {
    raise_fd_limit();
    let opened = Arc::new(AtomicUsize::new(0));
    let (moving, moving_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(count);
    for batch in (first..first + count)
        .collect::<Vec<_>>()
        .chunks(CONCURRENCY)
    {
        let before = opened.load(Ordering::Relaxed);
        for &index in batch {
            let gateway = gateways[index % gateways.len()];
            tasks.push(tokio::spawn(driver(
                gateway,
                index,
                index % MOVING_EVERY == 0,
                moving_rx.clone(),
                opened.clone(),
            )));
        }
        // Wait for this batch's hellos before the next: a bounded number in flight.
        let deadline = Instant::now() + Duration::from_secs(60);
        while opened.load(Ordering::Relaxed) < before + batch.len() * 9 / 10
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let settle = Instant::now() + Duration::from_secs(30);
    while opened.load(Ordering::Relaxed) < count && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("held {}", opened.load(Ordering::Relaxed));
    // Commands on standard input, read by a thread of their own.
    let (commands, mut incoming) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if commands.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = incoming.recv().await {
        match line.trim() {
            "move" => {
                let _ = moving.send(true);
            }
            "count" => println!("held {}", opened.load(Ordering::Relaxed)),
            _ => break,
        }
    }
    drop(moving);
    for task in tasks {
        task.abort();
    }
    Ok(())
}

struct Worker {
    child: Child,
    input: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Worker {
    fn spawn(gateways: &[SocketAddr], first: usize, count: usize) -> anyhow::Result<Self> {
        let list: Vec<String> = gateways.iter().map(SocketAddr::to_string).collect();
        let mut child = Command::new(std::env::current_exe()?)
            .env("BENCH_FLEET_WORKER", format!("{first},{count}"))
            .env("BENCH_FLEET_TARGETS", list.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let input = child.stdin.take().expect("piped");
        let output = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            input,
            lines,
        })
    }

    /// The worker's next "held N", within `patience`.
    fn held(&self, patience: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left)?;
            if let Some(n) = line.strip_prefix("held ") {
                return Ok(n.trim().parse()?);
            }
        }
    }

    fn say(&mut self, what: &str) -> anyhow::Result<()> {
        writeln!(self.input, "{what}")?;
        Ok(())
    }
}

/// Connections gateway `http` holds, from its metrics.
async fn connections_at(http: SocketAddr) -> f64 {
    tests::services::metrics_text(http)
        .await
        .lines()
        .filter(|l| l.starts_with("gateway_connections{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn env_count(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a count")),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Ok(range) = std::env::var("BENCH_FLEET_WORKER") {
        let (first, count) = range
            .split_once(',')
            .ok_or_else(|| anyhow::anyhow!("BENCH_FLEET_WORKER takes FIRST,COUNT"))?;
        let gateways = std::env::var("BENCH_FLEET_TARGETS")?
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        return worker(gateways, first.parse()?, count.parse()?).await;
    }
    let total = env_count("BENCH_FLEET_CONNECTIONS", 102_000)?;
    let gateway_count = env_count("BENCH_FLEET_GATEWAYS", 6)?;
    anyhow::ensure!(gateway_count > 0, "BENCH_FLEET_GATEWAYS must be at least 1");
    let per_gateway = total.div_ceil(gateway_count);
    anyhow::ensure!(
        per_gateway <= PER_PROCESS,
        "{per_gateway} connections per gateway is more than one process may hold here \
         ({PER_PROCESS}); add gateways (BENCH_FLEET_GATEWAYS)"
    );
    let limit = raise_fd_limit();
    println!("open-file limit per process: {limit}");

    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let _trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    let shared = tests::process::shared(&nats.url(), &prefix, None);
    let mut gateways = Vec::new();
    for i in 0..gateway_count {
        let ws: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let gateway = topology::Gateway {
            id: Some(format!("fleet-{i}")),
            max_connections: Some(per_gateway + 500),
            ..topology::Gateway::at(ws, http)
        };
        let child = tests::process::spawn_gateway("fleet", &shared, &gateway)?;
        gateways.push((child, ws, http));
    }
    for (_, _, http) in &gateways {
        wait_ready(*http).await;
    }
    let mut before = Vec::new();
    for (child, _, _) in &gateways {
        before.push(settled_rss(child.id(), 512).await);
    }

    // Positions reaching a NATS subscriber.
    let counter = async_nats::connect(nats.url()).await?;
    let positions = Arc::new(AtomicU64::new(0));
    let mut subscription = counter.subscribe(format!("{prefix}.loc.>")).await?;
    let seen = positions.clone();
    tokio::spawn(async move {
        while subscription.next().await.is_some() {
            seen.fetch_add(1, Ordering::Relaxed);
        }
    });
    counter.flush().await?;

    let addrs: Vec<SocketAddr> = gateways.iter().map(|(_, ws, _)| *ws).collect();
    let started = Instant::now();
    let mut workers = Vec::new();
    let mut first = 0;
    while first < total {
        let count = PER_PROCESS.min(total - first);
        workers.push(Worker::spawn(&addrs, first, count)?);
        first += count;
    }
    println!(
        "connecting {total} drivers through {} worker processes to {gateway_count} gateways",
        workers.len()
    );
    let mut held = 0;
    for worker in &workers {
        held += worker.held(Duration::from_secs(600))?;
        println!(
            "  {held} held after {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let connect_s = started.elapsed().as_secs_f64();

    let mut per_gateway_rows = Vec::new();
    for ((child, _, http), before) in gateways.iter().zip(&before) {
        let after = settled_rss(child.id(), 512).await;
        let connections = connections_at(*http).await;
        let bytes = after.saturating_sub(*before) as f64 * 1024.0 / connections.max(1.0);
        per_gateway_rows.push((connections, *before, after, bytes));
    }

    for worker in &mut workers {
        worker.say("move")?;
    }
    // The first second brings the moving drivers up to speed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counted_from = positions.load(Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(MOVING_WINDOW).await;
    let delivered =
        (positions.load(Ordering::Relaxed) - counted_from) as f64 / window.elapsed().as_secs_f64();
    let mut still = 0;
    for worker in &mut workers {
        worker.say("count")?;
        still += worker.held(Duration::from_secs(30))?;
    }
    for mut worker in workers {
        let _ = worker.say("stop");
        let _ = worker.child.wait();
    }
    for (mut child, _, _) in gateways {
        let _ = child.kill();
        let _ = child.wait();
    }

    println!();
    println!(
        "{:<10} {:>12} {:>14} {:>14} {:>16}",
        "gateway", "connections", "RSS before MiB", "RSS after MiB", "bytes/connection"
    );
    for (i, (connections, before, after, bytes)) in per_gateway_rows.iter().enumerate() {
        println!(
            "{:<10} {:>12.0} {:>14.1} {:>14.1} {:>16.0}",
            format!("fleet-{i}"),
            connections,
            *before as f64 / 1024.0,
            *after as f64 / 1024.0,
            bytes
        );
    }
    let moving = total.div_ceil(MOVING_EVERY);
    println!(
        "held {held} of {total} in {connect_s:.0} s; {still} still held after moving; \
         {delivered:.0} positions/s delivered with {moving} moving"
    );
    let json = serde_json::json!({
        "connections_target": total,
        "gateways": gateway_count,
        "held": held,
        "held_after_moving": still,
        "connect_seconds": connect_s,
        "moving": moving,
        "positions_per_sec_delivered": delivered,
        "open_file_limit": limit,
        "per_gateway": per_gateway_rows.iter().enumerate().map(|(i, (c, b, a, bytes))| serde_json::json!({
            "id": format!("fleet-{i}"),
            "connections": c,
            "rss_before_mib": *b as f64 / 1024.0,
            "rss_after_mib": *a as f64 / 1024.0,
            "bytes_per_connection": bytes,
        })).collect::<Vec<_>>(),
        "max_bytes_per_connection": per_gateway_rows.iter().map(|r| r.3).fold(0.0f64, f64::max),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("fleet.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}
