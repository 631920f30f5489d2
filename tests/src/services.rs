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

/// Settings of a test trips service.
pub fn trips_config(database_url: &str, nats_url: &str, prefix: &str) -> trips::Config {
    let mut config = trips::Config::new(
        database_url,
        nats_url,
        Subjects::new(prefix).expect("test prefixes are valid"),
        TOKEN_SECRET,
    );
    config.migrate = false;
    config
}

/// Starts the trips service.
pub async fn start_trips(config: trips::Config) -> Running {
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
    gateway::Config {
        nats_url: nats_url.into(),
        subjects: Subjects::new(prefix).expect("test prefixes are valid"),
        geo: Default::default(),
        token_secret: TOKEN_SECRET.to_vec(),
        limits: Default::default(),
    }
}

/// Starts a gateway on ephemeral ports.
pub async fn start_gateway(config: gateway::Config) -> Gateway {
    let ws = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding ws");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
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
