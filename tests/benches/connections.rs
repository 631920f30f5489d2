//! Idle connections held by one gateway process and its memory per connection, against a bare
//! tokio-tungstenite server holding the same connections in the same run with the gateway's
//! socket settings (256-byte read buffer, no write buffer): the floor, a WebSocket and nothing
//! else. Beside memory, the CPU each server spends holding its idle connections for
//! `IDLE_WINDOW`.
//!
//! Every connection is a rider that has said hello and been welcomed (authenticated, its inbox
//! subscribed, its session state sent), then stays idle. Clients connect from several loopback
//! source addresses, as `dispatch-sim --source-ips` does, to get past ~28k ephemeral ports per
//! address. The gateway binary comes from `GATEWAY_BIN` (`cargo xtask bench` builds it) or
//! `target/release/dispatch-gateway`; `BENCH_CONNECTIONS` sets the count (default 100,000,
//! or as many as the open-file limit allows when that is lower).
//! Prints a table and writes `target/bench/connections.json`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol::client::Role;
use tests::process::{bare_ws_server, cpu_seconds, free_port, raise_fd_limit, settled_rss};
use tests::services::{start_trips, trips_config};
use tests::{NatsServer, TestDb, unique_prefix};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

const SOURCES: u8 = 8;
/// Connections opened at once.
const CONCURRENCY: usize = 256;
/// Connections one gateway should hold (the capacity aim in BENCHMARKS.md); fewer when the
/// open-file limit is lower.
const TARGET: usize = 100_000;
/// How long the CPU of a server holding idle connections is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// Opens `count` connections to `addr`, saying hello with `token_for(i)` when given and
/// waiting for an answer; returns the open sockets.
async fn open_many(
    addr: SocketAddr,
    count: usize,
    token_for: Option<&(dyn Fn(usize) -> String + Sync)>,
) -> Vec<tests::client::Ws> {
    let started = Instant::now();
    let mut open = Vec::with_capacity(count);
    let mut next = 0;
    while next < count {
        let batch: Vec<_> = (next..(next + CONCURRENCY).min(count))
            .map(|i| {
                let hello = token_for.map(|t| {
                    serde_json::json!({"type": "hello", "token": t(i), "versions": [1]}).to_string()
                });
                tokio::spawn(async move {
                    let source = IpAddr::from([127, 0, 0, 1 + (i % SOURCES as usize) as u8]);
                    let socket = TcpSocket::new_v4().ok()?;
                    socket.bind(SocketAddr::new(source, 0)).ok()?;
                    let stream = socket.connect(addr).await.ok()?;
                    let (mut ws, _) = tokio_tungstenite::client_async(
                        format!("ws://{addr}/ws"),
                        tokio_tungstenite::MaybeTlsStream::Plain(stream),
                    )
                    .await
                    .ok()?;
                    if let Some(hello) = hello {
                        ws.send(Message::text(hello)).await.ok()?;
                        // The welcome.
                        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                            Ok(Some(Ok(Message::Text(_)))) => {}
                            _ => return None,
                        }
                    }
                    Some(ws)
                })
            })
            .collect();
        next += batch.len();
        for task in batch {
            if let Ok(Some(ws)) = task.await {
                open.push(ws);
            }
        }
        if next % 10_000 < CONCURRENCY {
            println!(
                "  {} of {count} open ({:.0}/s)",
                open.len(),
                open.len() as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    open
}

/// The share of one core the process uses over `IDLE_WINDOW`, percent.
async fn idle_cpu_percent(pid: u32) -> f64 {
    let before = cpu_seconds(pid);
    tokio::time::sleep(IDLE_WINDOW).await;
    (cpu_seconds(pid) - before) / IDLE_WINDOW.as_secs_f64() * 100.0
}

struct Held {
    connections: usize,
    before_kib: u64,
    after_kib: u64,
    idle_cpu_percent: f64,
}

impl Held {
    fn bytes_per_connection(&self) -> f64 {
        (self.after_kib.saturating_sub(self.before_kib) as f64 * 1024.0)
            / self.connections.max(1) as f64
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Ok(port) = std::env::var("BENCH_BARE_SERVER") {
        bare_ws_server(port.parse()?).await;
        return Ok(());
    }
    let limit = raise_fd_limit();
    // Clients here and the server in its own process each need a descriptor per connection,
    // besides a thousand or so for everything else.
    let most = (limit.saturating_sub(2_000) / 1_000 * 1_000) as usize;
    anyhow::ensure!(
        most > 0,
        "the open-file limit here is {limit} (ulimit -Hn): too low to hold even 1,000 connections"
    );
    let count: usize = match std::env::var("BENCH_CONNECTIONS") {
        Ok(wanted) => {
            let count = wanted
                .parse()
                .map_err(|_| anyhow::anyhow!("BENCH_CONNECTIONS={wanted:?} is not a count"))?;
            anyhow::ensure!(
                count <= most,
                "{count} connections need more open files than this process may have \
                 ({limit}); set BENCH_CONNECTIONS to {most} or less, or raise the hard limit \
                 (ulimit -Hn)"
            );
            count
        }
        Err(_) if most < TARGET => {
            println!(
                "the open-file limit here is {limit} (ulimit -Hn), too low for {TARGET} \
                 connections: holding {most}"
            );
            most
        }
        Err(_) => TARGET,
    };

    // The floor: a bare WebSocket server in a process of its own.
    let bare_port = free_port();
    let bare = Command::new(std::env::current_exe()?)
        .env("BENCH_BARE_SERVER", bare_port.to_string())
        .stdin(Stdio::null())
        .spawn()?;
    let bare_addr: SocketAddr = format!("127.0.0.1:{bare_port}").parse()?;
    tests::eventually(
        "the bare server listening",
        Duration::from_secs(10),
        || async {
            tokio::net::TcpStream::connect(bare_addr)
                .await
                .ok()
                .map(drop)
        },
    )
    .await;
    let before = settled_rss(bare.id(), 256).await;
    println!("bare tokio-tungstenite server: opening {count} connections");
    let held = open_many(bare_addr, count, None).await;
    let bare_held = Held {
        connections: held.len(),
        before_kib: before,
        after_kib: settled_rss(bare.id(), 256).await,
        idle_cpu_percent: idle_cpu_percent(bare.id()).await,
    };
    drop(held);
    stop(bare);

    // The gateway, with NATS and the trips service behind it.
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let _trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    let (ws_port, http_port) = (free_port(), free_port());
    let gateway_addr: SocketAddr = format!("127.0.0.1:{ws_port}").parse()?;
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse()?;
    let gateway = tests::process::spawn_gateway(
        "connections",
        &tests::process::shared(&nats.url(), &prefix, None),
        &topology::Gateway {
            max_connections: Some(count + 1_000),
            ..topology::Gateway::at(gateway_addr, http)
        },
    )?;
    tests::services::wait_ready(http).await;
    let before = settled_rss(gateway.id(), 256).await;
    println!("gateway: opening {count} rider connections (hello, welcome, session state)");
    let token = |i: usize| tests::client::token(Role::Rider, &format!("idle-rider-{i}"));
    let held = open_many(gateway_addr, count, Some(&token)).await;
    let gateway_held = Held {
        connections: held.len(),
        before_kib: before,
        after_kib: settled_rss(gateway.id(), 256).await,
        idle_cpu_percent: idle_cpu_percent(gateway.id()).await,
    };
    // Still held and answering: one more rider gets through.
    let probe = open_many(gateway_addr, 1, Some(&|_| token(count + 1))).await;
    anyhow::ensure!(probe.len() == 1, "the gateway stopped answering");
    drop(held);
    stop(gateway);

    println!();
    println!(
        "{:<28} {:>12} {:>14} {:>14} {:>16} {:>14}",
        "server",
        "connections",
        "RSS before MiB",
        "RSS after MiB",
        "bytes/connection",
        "idle CPU %"
    );
    for (name, h) in [
        ("bare tokio-tungstenite", &bare_held),
        ("dispatch-gateway", &gateway_held),
    ] {
        println!(
            "{:<28} {:>12} {:>14.1} {:>14.1} {:>16.0} {:>14.1}",
            name,
            h.connections,
            h.before_kib as f64 / 1024.0,
            h.after_kib as f64 / 1024.0,
            h.bytes_per_connection(),
            h.idle_cpu_percent
        );
    }
    let ratio = gateway_held.bytes_per_connection() / bare_held.bytes_per_connection().max(1.0);
    println!("gateway / bare memory per connection: {ratio:.2}");
    let json = serde_json::json!({
        "connections_target": TARGET,
        "connections_opened": count,
        "open_file_limit": limit,
        "gateway": {
            "connections": gateway_held.connections,
            "rss_before_mib": gateway_held.before_kib as f64 / 1024.0,
            "rss_after_mib": gateway_held.after_kib as f64 / 1024.0,
            "bytes_per_connection": gateway_held.bytes_per_connection(),
            "idle_cpu_percent": gateway_held.idle_cpu_percent,
        },
        "bare_tungstenite": {
            "connections": bare_held.connections,
            "rss_before_mib": bare_held.before_kib as f64 / 1024.0,
            "rss_after_mib": bare_held.after_kib as f64 / 1024.0,
            "bytes_per_connection": bare_held.bytes_per_connection(),
            "idle_cpu_percent": bare_held.idle_cpu_percent,
        },
        "ratio": ratio,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("connections.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
