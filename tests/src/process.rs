//! What the benchmarks read of processes and need of the machine: resident memory, CPU time,
//! free ports, the open-file limit, and a bare WebSocket server to measure against.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use topology::Form;

pub use crate::nats::free_port;

/// Resident memory of process `pid`, KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until the process's memory changes by less than `tolerance_kib` in half a second
/// (for 15 s at most), and returns it.
pub async fn settled_rss(pid: u32, tolerance_kib: u64) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid);
        if now.abs_diff(last) < tolerance_kib {
            return now;
        }
        last = now;
    }
    last
}

/// CPU time process `pid` has used, seconds: utime and stime, the 14th and 15th fields of
/// `/proc/PID/stat`, in ticks of 1/100 s (after the command name, which is in parentheses and
/// may hold spaces).
pub fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks: u64 =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// Lifts this process's open-file limit as far as allowed (children inherit it); returns it.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    let wanted = 1_048_576u64;
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return wanted;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    hard
}

/// A bare WebSocket server with the gateway's socket settings (256-byte read buffer, no write
/// buffer, 16 KiB frames) that accepts connections and reads every message, doing nothing
/// with it: the floor a server's memory and CPU are measured against. Run it in a process of
/// its own, so that what it uses is its own.
pub async fn bare_ws_server(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("binding the bare server");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let config = WebSocketConfig::default()
                .read_buffer_size(256)
                .write_buffer_size(0)
                .max_message_size(Some(16 * 1024))
                .max_frame_size(Some(16 * 1024));
            if let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            {
                while let Some(Ok(_)) = ws.next().await {}
            }
        });
    }
}

/// Where the workspace's binaries were built for the system tests: `DISPATCH_BIN_DIR` (`cargo
/// xtask test` builds them there), else beside the running test's executable.
pub fn built_binaries() -> std::path::PathBuf {
    std::env::var_os("DISPATCH_BIN_DIR").map_or_else(
        || {
            // target/<profile>/deps/system-<hash>: the binaries are two levels up.
            let exe = std::env::current_exe().expect("the test's executable");
            exe.parent()
                .and_then(std::path::Path::parent)
                .expect("a target directory")
                .to_path_buf()
        },
        std::path::PathBuf::from,
    )
}

/// The release gateway binary a benchmark runs: `GATEWAY_BIN` (`cargo xtask bench` sets it to
/// the one it builds), else the workspace's `target/release/dispatch-gateway`.
pub fn gateway_binary(bench: &str) -> anyhow::Result<std::path::PathBuf> {
    release_binary("GATEWAY_BIN", "dispatch-gateway", bench)
}

/// The release trips binary a benchmark runs: `TRIPS_BIN` (`cargo xtask bench` sets it to the
/// one it builds), else the workspace's `target/release/dispatch-trips`.
pub fn trips_binary(bench: &str) -> anyhow::Result<std::path::PathBuf> {
    release_binary("TRIPS_BIN", "dispatch-trips", bench)
}

fn release_binary(variable: &str, name: &str, bench: &str) -> anyhow::Result<std::path::PathBuf> {
    let binary = std::env::var_os(variable).map_or_else(
        || {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/release")
                .join(name)
        },
        std::path::PathBuf::from,
    );
    anyhow::ensure!(
        binary.is_file(),
        "{} is missing: run `cargo xtask bench {bench}`, which builds it",
        binary.display()
    );
    Ok(binary)
}

/// What the service processes of a test or bench share: `nats_url`, the subject `prefix`, the
/// tests' token secret, warnings only in the logs, and for the trips service `database_url`.
pub fn shared(nats_url: &str, prefix: &str, database_url: Option<&str>) -> topology::Shared {
    topology::Shared {
        nats_url: nats_url.to_owned(),
        database_url: database_url.map(str::to_owned),
        token_secret: Some(
            std::str::from_utf8(crate::services::TOKEN_SECRET)
                .expect("the tests' secret is text")
                .to_owned(),
        ),
        subject_prefix: Some(prefix.to_owned()),
        log: Some("warn".to_owned()),
    }
}

/// `gateway` of `bench`'s release binary over `shared`, started; the caller waits until it
/// is ready.
pub fn spawn_gateway(
    bench: &str,
    shared: &topology::Shared,
    gateway: &topology::Gateway,
) -> anyhow::Result<std::process::Child> {
    let command = gateway.command(shared, Form::Flags);
    Ok(std::process::Command::new(gateway_binary(bench)?)
        .args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .spawn()?)
}

/// A release trips service (`trips_binary`) in a process of its own, so that its CPU time and
/// its scheduling are its own; stopped when dropped.
#[derive(Debug)]
pub struct TripsProcess {
    process: std::process::Child,
    pub http: std::net::SocketAddr,
}

impl TripsProcess {
    /// Starts it for `bench` against the migrated database at `database_url`, with the
    /// benchmarks' token secret and `args` and `env` besides, and waits until it is ready.
    pub async fn start(
        bench: &str,
        (database_url, nats_url, prefix): (&str, &str, &str),
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let binary = trips_binary(bench)?;
        let http: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let trips = topology::Trips {
            migrate: false,
            ..topology::Trips::at(http)
        };
        let command = trips.command(&shared(nats_url, prefix, Some(database_url)), Form::Flags);
        let process = std::process::Command::new(&binary)
            .args(&command.args)
            .args(args)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .spawn()?;
        let started = Self { process, http };
        crate::services::wait_ready(http).await;
        Ok(started)
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }
}

impl Drop for TripsProcess {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
