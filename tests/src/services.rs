//! Services started in-process on port 0, stopped on drop.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::Subjects;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The secret tests sign tokens with.
pub const TOKEN_SECRET: &[u8] = b"test-secret-0123456789";

/// A service running in this process.
#[derive(Debug)]
pub struct Running {
    pub http: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Stops the service gracefully and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.halt().await
    }

    /// Stops the service gracefully and waits for it, in place.
    pub async fn halt(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .map_err(|_| anyhow::anyhow!("service did not stop in time"))??,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What the service at `http` exports on `/metrics` (every service in a test process shares
/// one recorder, so this is the whole process's metrics).
pub async fn metrics_text(http: SocketAddr) -> String {
    reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("the metrics endpoint answers")
        .text()
        .await
        .expect("the metrics are text")
}

/// Waits until the service at `http` answers `/readyz` with 200.
pub async fn wait_ready(http: SocketAddr) {
    crate::eventually("service ready", Duration::from_secs(20), || async {
        let ready = reqwest::get(format!("http://{http}/readyz")).await.ok()?;
        (ready.status() == 200).then_some(())
    })
    .await;
}

/// Waits until the service at `http` answers `/readyz` with 503: it has noticed that
/// something it depends on is gone.
pub async fn wait_unready(http: SocketAddr) {
    crate::eventually("service unready", Duration::from_secs(20), || async {
        let ready = reqwest::get(format!("http://{http}/readyz")).await.ok()?;
        (ready.status() == 503).then_some(())
    })
    .await;
}

/// Settings of a test trips service.
pub fn trips_config(database_url: &str, nats_url: &str, prefix: &str) -> trips::Config {
    let mut config = trips::Config::new(
        database_url,
        nats_url,
        Subjects::new(prefix).expect("test prefixes are valid"),
        protocol::token::Verifier::hs256(TOKEN_SECRET),
    );
    config.migrate = false;
    config
}

/// Starts the trips service and waits until it is ready.
pub async fn start_trips(config: trips::Config) -> Running {
    let running = launch_trips(config).await;
    wait_ready(running.http).await;
    running
}

/// Starts the trips service without waiting for it to be ready (its database may be away).
pub async fn launch_trips(config: trips::Config) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the http port");
    let http = listener.local_addr().expect("local address");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(trips::run(config, listener, shutdown.clone()));
    Running {
        http,
        shutdown,
        task: Some(task),
    }
}

/// A gateway running in this process.
#[derive(Debug)]
pub struct Gateway {
    pub ws: SocketAddr,
    pub running: Running,
}

/// Settings of a test gateway.
pub fn gateway_config(nats_url: &str, prefix: &str) -> gateway::Config {
    gateway::Config::new(
        nats_url,
        Subjects::new(prefix).expect("test prefixes are valid"),
        protocol::token::Verifier::hs256(TOKEN_SECRET),
    )
}

/// Starts a gateway on ephemeral ports.
pub async fn start_gateway(config: gateway::Config) -> Gateway {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    start_gateway_at(config, any, any).await
}

/// Starts a gateway on the given addresses (to restart one where its clients expect it).
pub async fn start_gateway_at(
    config: gateway::Config,
    ws: SocketAddr,
    http: SocketAddr,
) -> Gateway {
    let ws = tokio::net::TcpListener::bind(ws).await.expect("binding ws");
    let http = tokio::net::TcpListener::bind(http)
        .await
        .expect("binding http");
    let ws_addr = ws.local_addr().expect("local address");
    let http_addr = http.local_addr().expect("local address");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(gateway::run(config, ws, http, shutdown.clone()));
    Gateway {
        ws: ws_addr,
        running: Running {
            http: http_addr,
            shutdown,
            task: Some(task),
        },
    }
}

/// Settings of a test matcher serving `regions`.
pub fn matcher_config(
    nats_url: &str,
    prefix: &str,
    regions: Vec<h3o::CellIndex>,
) -> matcher::Config {
    let mut config = matcher::Config::new(
        nats_url,
        Subjects::new(prefix).expect("test prefixes are valid"),
        regions,
    );
    config.settings.counts_every = Duration::from_millis(500);
    config
}

/// Starts a matcher in this process's runtime.
pub async fn start_matcher(config: matcher::Config) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding http");
    let http = listener.local_addr().expect("local address");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(matcher::run(config, listener, shutdown.clone()));
    Running {
        http,
        shutdown,
        task: Some(task),
    }
}

/// A service in a runtime of its own, so that it can be killed as abruptly as a process:
/// every task stops where it is and every socket closes, with no goodbye.
#[derive(Debug)]
pub struct Isolated {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Isolated {
    pub fn start_matcher(config: matcher::Config) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("building a runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding http");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let _ = matcher::run(config, listener, CancellationToken::new()).await;
        });
        Self {
            runtime: Some(runtime),
        }
    }

    /// A gateway in a runtime of its own; returns it and its WebSocket address.
    pub fn start_gateway(config: gateway::Config) -> (Self, SocketAddr) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("building a runtime");
        let bind = || {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
            listener
                .set_nonblocking(true)
                .expect("non-blocking listener");
            listener
        };
        let (ws, http) = (bind(), bind());
        let ws_addr = ws.local_addr().expect("local address");
        runtime.spawn(async move {
            let ws = tokio::net::TcpListener::from_std(ws).expect("tokio listener");
            let http = tokio::net::TcpListener::from_std(http).expect("tokio listener");
            let _ = gateway::run(config, ws, http, CancellationToken::new()).await;
        });
        (
            Self {
                runtime: Some(runtime),
            },
            ws_addr,
        )
    }

    /// Kills everything running in it.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        self.kill();
    }
}
