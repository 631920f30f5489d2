//! Real `nats-server` processes for tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary: `NATS_SERVER_BIN`, the PATH, or Debian's location.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| p.is_file())
        .expect(
            "nats-server not found: install it (apt-get install nats-server), set NATS_SERVER_BIN, \
             or run the suite with `cargo xtask test`, which does both",
        )
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

fn wait_for_port(port: u16, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answers = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if answers == up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nats-server on port {port} did not {}",
            if up { "start" } else { "stop" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One nats-server on a free port; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    pub port: u16,
    cluster_port: Option<u16>,
    routes: Vec<u16>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a standalone server.
    pub fn start() -> Self {
        Self::start_with(free_port(), None, vec![])
    }

    fn start_with(port: u16, cluster_port: Option<u16>, routes: Vec<u16>) -> Self {
        let mut server = Self {
            port,
            cluster_port,
            routes,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut command = Command::new(nats_server_bin());
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(cluster_port) = self.cluster_port {
            command
                .args(["--cluster_name", "test", "--cluster"])
                .arg(format!("nats://127.0.0.1:{cluster_port}"));
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            if !routes.is_empty() {
                command.arg("--routes").arg(routes.join(","));
            }
        }
        self.child = Some(command.spawn().expect("starting nats-server"));
        wait_for_port(self.port, true);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits until its port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            wait_for_port(self.port, false);
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's process id while it runs (for its CPU time in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of nats-servers routed to each other on loopback ports.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start(size: usize) -> Self {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let cluster_ports: Vec<u16> = ports.iter().map(|p| p.1).collect();
        let nodes = ports
            .iter()
            .map(|&(port, cluster)| {
                let routes = cluster_ports
                    .iter()
                    .copied()
                    .filter(|p| *p != cluster)
                    .collect();
                NatsServer::start_with(port, Some(cluster), routes)
            })
            .collect();
        Self { nodes }
    }

    /// Waits until every node delivers what is published on every other node: the routes have
    /// formed.
    pub async fn wait_routed(&self) {
        use futures_util::StreamExt as _;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut clients = Vec::new();
        for node in &self.nodes {
            clients.push(
                async_nats::connect(node.url())
                    .await
                    .expect("connecting to a node"),
            );
        }
        for (i, receiver) in clients.iter().enumerate() {
            let subject = format!("harness.routed.{i}");
            let mut sub = receiver
                .subscribe(subject.clone())
                .await
                .expect("subscribing");
            receiver.flush().await.expect("flushing");
            for (j, sender) in clients.iter().enumerate().filter(|(j, _)| *j != i) {
                loop {
                    assert!(
                        Instant::now() < deadline,
                        "node {j} does not route to node {i}"
                    );
                    sender
                        .publish(subject.clone(), j.to_string().into())
                        .await
                        .expect("publishing");
                    sender.flush().await.expect("flushing");
                    let got = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
                    if matches!(got, Ok(Some(m)) if m.payload == j.to_string().as_bytes()) {
                        break;
                    }
                }
            }
        }
    }

    /// Every node's client URL, comma-separated, as services take them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
