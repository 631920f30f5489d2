//! `cargo xtask cluster`: the system spread over hosts made of network namespaces, each
//! process a real OS process on its own host, the simulator driving a city through every
//! gateway, until Ctrl-C (or `--duration`).
//!
//! - a 3-node NATS cluster joined by routes, one node per host; every service is given all
//!   three URLs and moves to another node when its own goes;
//! - PostgreSQL as a primary and a synchronous standby under pg_auto_failover, its monitor on
//!   a third host; the trips replicas connect to whichever node is read-write;
//! - 2 trips replicas, 4 matchers (the city's regions in two halves, each half served by two
//!   matchers on different hosts), 3 gateways each serving the dashboard, and the simulator on
//!   a host of its own.
//!
//! Every process is supervised: one that exits is started again with backoff and the event is
//! printed. At the end (or when anything fails) every process is stopped and every namespace
//! and link this made is removed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::demo;
use crate::infra::{self, say};
use crate::netns::{Host, Net};
use crate::process::{self, Service, Supervisor};

mod faults;
mod latency;
use faults::{Fault, Injection, audit};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop after this long (for example `60s`, `5m`); without it, run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Build and run the debug profile instead of release.
    #[arg(long)]
    debug: bool,
    /// The hosts' subnet, its first three octets (the hosts are `A.B.C.11` and up, this
    /// machine is `A.B.C.1`).
    #[arg(long, default_value = "10.241.0", value_parser = parse_subnet)]
    subnet: [u8; 3],
    /// Simulated drivers and riders, and ride requests per second.
    #[arg(long, default_value_t = 200)]
    drivers: usize,
    #[arg(long, default_value_t = 200)]
    riders: usize,
    #[arg(long, default_value_t = 2.0)]
    request_rate: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the simulator's report as JSON here (the run fails if any request was lost or
    /// double-assigned).
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// A fault to inject a third of the way through `--duration` (which it needs); the run
    /// prints how long the system took to recover and fails if anything was lost. Given more
    /// than once, the faults come one after another, each 5 s after the system recovered
    /// from the one before.
    #[arg(long, value_enum, requires = "duration")]
    fault: Vec<Fault>,
    /// Latency to add each way between the gateways and NATS (for example `100ms`), through a
    /// userspace proxy on this machine (the kernel has no `netem`).
    #[arg(long, value_parser = humantime::parse_duration)]
    latency: Option<Duration>,
}

fn parse_subnet(text: &str) -> Result<[u8; 3], String> {
    let octets: Vec<u8> = text
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{text:?} is not three octets such as 10.241.0"))?;
    <[u8; 3]>::try_from(octets)
        .map_err(|_| format!("{text:?} is not three octets such as 10.241.0"))
}

/// What runs on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Nats(usize),
    PgMonitor,
    Postgres(usize),
    Trips(usize),
    /// A matcher and the regions it serves (hexadecimal H3 cells).
    Matcher(usize, Vec<String>),
    Gateway(usize),
    Simulator,
}

/// A host of the topology: its name, the last octet of its address, what runs there.
#[derive(Debug, Clone)]
pub struct Placement {
    pub host: String,
    pub octet: u8,
    pub role: Role,
}

pub const NATS_NODES: usize = 3;
pub const POSTGRES_NODES: usize = 2;
pub const TRIPS_REPLICAS: usize = 2;
pub const MATCHERS: usize = 4;
pub const GATEWAYS: usize = 3;

/// Ports, the same on every host (each host has its own network). PostgreSQL's differ from
/// node to node all the same: the nodes share this machine's socket directory.
const NATS_PORT: u16 = 4222;
const NATS_ROUTE_PORT: u16 = 6222;
const NATS_MONITOR_PORT: u16 = 8222;
/// The first of the latency proxies' ports on this machine, one per NATS node.
const LATENCY_PORT: u16 = 14221;
const PG_MONITOR_PORT: u16 = 25430;
const PG_PORT: u16 = 25431;
const TRIPS_HTTP_PORT: u16 = 8082;
const MATCHER_HTTP_PORT: u16 = 8083;
const GATEWAY_WS_PORT: u16 = 8080;
const GATEWAY_HTTP_PORT: u16 = 8081;

/// The topology: one host per process, the city's `regions` split in two halves, each half
/// served by two matchers on different hosts.
pub fn plan(regions: &[String]) -> Result<Vec<Placement>> {
    ensure!(
        regions.len() >= 4,
        "the city has {} regions; the cluster splits at least 4 between its matchers",
        regions.len()
    );
    let mut sorted = regions.to_vec();
    sorted.sort();
    let (first, second) = sorted.split_at(sorted.len() / 2);
    let halves = [first.to_vec(), second.to_vec()];
    let mut hosts = Vec::new();
    let mut place = |host: String, octet: u8, role: Role| {
        hosts.push(Placement { host, octet, role });
    };
    for i in 0..NATS_NODES {
        place(format!("nats-{}", i + 1), 11 + i as u8, Role::Nats(i));
    }
    place("pg-monitor".into(), 20, Role::PgMonitor);
    for i in 0..POSTGRES_NODES {
        place(format!("pg-{}", i + 1), 21 + i as u8, Role::Postgres(i));
    }
    for i in 0..TRIPS_REPLICAS {
        place(format!("trips-{}", i + 1), 31 + i as u8, Role::Trips(i));
    }
    for i in 0..MATCHERS {
        place(
            format!("matcher-{}", i + 1),
            41 + i as u8,
            Role::Matcher(i, halves[i % 2].clone()),
        );
    }
    for i in 0..GATEWAYS {
        place(format!("gateway-{}", i + 1), 51 + i as u8, Role::Gateway(i));
    }
    place("sim".into(), 60, Role::Simulator);
    Ok(hosts)
}

/// The demo's city, as H3 regions.
fn city_regions() -> Result<Vec<String>> {
    let (lat, lng) = demo::CITY;
    let regions = protocol::GeoConfig::default()
        .regions_covering(
            protocol::Point::new(lat, lng),
            demo::CITY_RADIUS_KM * 1000.0,
        )
        .context("the city's regions")?;
    Ok(regions.iter().map(ToString::to_string).collect())
}

/// What a run holds: the hosts and what runs on each, its directory, PostgreSQL's binaries.
/// Dropping it removes the hosts (the processes on them are stopped first, by `run`).
struct Cluster {
    net: Net,
    hosts: Vec<(Placement, Host)>,
    dir: PathBuf,
    pg_bin: PathBuf,
}

impl Cluster {
    fn host(&self, role: &Role) -> &Host {
        &self
            .hosts
            .iter()
            .find(|(p, _)| &p.role == role)
            .expect("every role is placed")
            .1
    }

    fn addrs(&self, matches: impl Fn(&Role) -> bool) -> Vec<Ipv4Addr> {
        self.hosts
            .iter()
            .filter(|(p, _)| matches(&p.role))
            .map(|(_, h)| h.addr)
            .collect()
    }

    /// `program args...` run inside `host`, as argv for `ip`.
    fn inside(&self, host: &Host, program: &Path, args: &[String]) -> Vec<String> {
        let mut argv = vec![
            "netns".to_owned(),
            "exec".into(),
            host.namespace.clone(),
            program.display().to_string(),
        ];
        argv.extend_from_slice(args);
        argv
    }

    /// `pg_autoctl args...` run inside `host` as the postgres user, with its configuration
    /// and state under `node`'s directory.
    fn pg_autoctl(&self, host: &Host, node: &Path, args: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = ["-u", "postgres", "--", "env"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        argv.push(format!("XDG_CONFIG_HOME={}", node.join("config").display()));
        argv.push(format!("XDG_DATA_HOME={}", node.join("data").display()));
        argv.push(format!("PATH={}:/usr/bin:/bin", self.pg_bin.display()));
        argv.push("pg_autoctl".into());
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        self.inside(host, Path::new("runuser"), &argv)
    }

    fn start(&self, name: &str, argv: &[String], env: &[(&str, &str)]) -> Result<Service> {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        process::start(name, self.net.ip(), &argv, env, &self.dir.join("logs"))
    }

    /// Runs `argv` (for `ip`) to the end, its output appended to `log`.
    fn run_to_end(&self, what: &str, argv: &[String], log: &str) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(log))?;
        let status = Command::new(self.net.ip())
            .args(argv)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .with_context(|| format!("running {what}"))?;
        ensure!(
            status.success(),
            "{what} failed ({status}); see {}",
            self.dir.join("logs").join(log).display()
        );
        Ok(())
    }

    /// The state of every PostgreSQL node as the monitor sees it: (name, reported, assigned).
    fn pg_states(&self) -> Vec<(String, String, String)> {
        let host = self.host(&Role::PgMonitor);
        let node = self.dir.join("pg-monitor");
        let pgdata = node.join("pgdata").display().to_string();
        let argv = self.pg_autoctl(
            host,
            &node,
            &["show", "state", "--json", "--pgdata", &pgdata],
        );
        let Ok(output) = Command::new(self.net.ip())
            .args(&argv)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            return Vec::new();
        };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
            return Vec::new();
        };
        json.as_array()
            .into_iter()
            .flatten()
            .filter_map(|node| {
                Some((
                    node["nodename"].as_str()?.to_owned(),
                    node["current_group_state"].as_str()?.to_owned(),
                    node["assigned_group_state"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }
}

fn wait_for(
    what: &str,
    deadline: Duration,
    stop: &AtomicBool,
    services: &mut [Service],
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        if stop.load(Ordering::SeqCst) {
            bail!("stopped before {what}");
        }
        if let Some(dead) = process::exited(services) {
            bail!(
                "{} exited while waiting for {what}; see {}",
                dead.name,
                dead.log.display()
            );
        }
        if start.elapsed() > deadline {
            bail!("{what} did not happen within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    say(format!("{what} ({:.1} s)", start.elapsed().as_secs_f64()));
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    let stop_requested = Arc::new(AtomicBool::new(false));
    let flag = stop_requested.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    let placements = plan(&city_regions()?)?;
    // Checked before the long build: root, namespaces, the subnet.
    let mut net = Net::create(args.subnet)?;
    let pg_bin = ensure_packages()?;
    let bin_dir = process::build_services(&root, !args.debug)?;
    let bin = |name: &str| bin_dir.join(name);
    let dashboard = crate::web::build_dashboard(&root)?;

    let dir = root.join("target/dev/cluster");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the last run's {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let mut hosts = Vec::new();
    for placement in placements {
        let [a, b, c] = args.subnet;
        let host = net.add_host(&placement.host, Ipv4Addr::new(a, b, c, placement.octet))?;
        hosts.push((placement, host));
    }
    let cluster = Cluster {
        net,
        hosts,
        dir,
        pg_bin,
    };
    let mut services: Vec<Service> = Vec::new();
    let result = bring_up(
        &cluster,
        &mut services,
        &stop_requested,
        &bin,
        &dashboard,
        args.latency,
    );
    let outcome = match result {
        Ok(urls) => drive(&cluster, &mut services, &stop_requested, &bin, &args, &urls),
        Err(error) => Err(error),
    };
    say("stopping");
    let supervisor = Supervisor::new(services.into_iter().map(|s| (s, true)).collect());
    supervisor.stop_all();
    drop(cluster);
    outcome
}

/// The URLs services are given: every NATS node, and PostgreSQL's nodes with the read-write
/// one chosen at connect time.
struct Urls {
    nats: String,
    database: String,
}

fn bring_up(
    cluster: &Cluster,
    services: &mut Vec<Service>,
    stop: &AtomicBool,
    bin: &dyn Fn(&str) -> PathBuf,
    dashboard: &Path,
    latency: Option<Duration>,
) -> Result<Urls> {
    // NATS: three nodes, each routing to the other two.
    let nats_bin = infra::nats_server_bin().context("nats-server is missing")?;
    let nats_addrs = cluster.addrs(|r| matches!(r, Role::Nats(_)));
    for (i, addr) in nats_addrs.iter().enumerate() {
        let routes: Vec<String> = nats_addrs
            .iter()
            .filter(|other| *other != addr)
            .map(|other| format!("nats://{other}:{NATS_ROUTE_PORT}"))
            .collect();
        // Pings every 5 s, so a client cut off by a partition is dropped (and its
        // subscriptions with it) within 15 s rather than minutes. Clients are given every
        // node and learn no other addresses (`no_advertise`), so the gateways stay behind
        // their latency proxies when there are some.
        let config = cluster.dir.join(format!("nats-{}.conf", i + 1));
        std::fs::write(
            &config,
            format!(
                "server_name: nats-{n}\nlisten: \"{addr}:{NATS_PORT}\"\nhttp: \"{addr}:{NATS_MONITOR_PORT}\"\n\
                 ping_interval: \"5s\"\nping_max: 3\n\
                 cluster {{\n  name: dispatch\n  listen: \"{addr}:{NATS_ROUTE_PORT}\"\n  routes: [{routes}]\n  no_advertise: true\n}}\n",
                n = i + 1,
                routes = routes
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        )?;
        let args = vec!["-c".to_owned(), config.display().to_string()];
        let host = cluster.host(&Role::Nats(i));
        services.push(cluster.start(
            &format!("nats-{}", i + 1),
            &cluster.inside(host, &nats_bin, &args),
            &[],
        )?);
    }
    for addr in &nats_addrs {
        wait_for(
            &format!("NATS at {addr} routes to the other two"),
            Duration::from_secs(30),
            stop,
            services,
            || routed(addr),
        )?;
    }
    let nats = nats_addrs
        .iter()
        .map(|a| format!("nats://{a}:{NATS_PORT}"))
        .collect::<Vec<_>>()
        .join(",");
    // The gateways reach NATS through proxies that add the latency, when asked for.
    let gateways_nats = match latency {
        None => nats.clone(),
        Some(delay) => {
            let mut proxied = Vec::new();
            for (i, addr) in nats_addrs.iter().enumerate() {
                let listen = SocketAddr::from((cluster.net.addr(), LATENCY_PORT + i as u16));
                latency::start(listen, SocketAddr::from((*addr, NATS_PORT)), delay)?;
                proxied.push(format!("nats://{listen}"));
            }
            say(format!(
                "gateways reach NATS through {} ({delay:?} each way)",
                proxied.join(", ")
            ));
            proxied.join(",")
        }
    };

    // PostgreSQL under pg_auto_failover: the monitor, then the first node (the primary), then
    // the second (its synchronous standby, cloned from the primary).
    let pg_ctl = cluster.pg_bin.join("pg_ctl").display().to_string();
    let monitor_host = cluster.host(&Role::PgMonitor).clone();
    let monitor_node = cluster.dir.join("pg-monitor");
    make_postgres_dir(&monitor_node)?;
    let monitor_pgdata = monitor_node.join("pgdata").display().to_string();
    let monitor_addr = monitor_host.addr.to_string();
    let monitor_port = PG_MONITOR_PORT.to_string();
    cluster.run_to_end(
        "pg_autoctl create monitor",
        &cluster.pg_autoctl(
            &monitor_host,
            &monitor_node,
            &[
                "create",
                "monitor",
                "--pgdata",
                &monitor_pgdata,
                "--pgport",
                &monitor_port,
                "--hostname",
                &monitor_addr,
                "--auth",
                "trust",
                "--no-ssl",
                "--pgctl",
                &pg_ctl,
            ],
        ),
        "pg-monitor.log",
    )?;
    services.push(cluster.start(
        "pg-monitor",
        &cluster.pg_autoctl(
            &monitor_host,
            &monitor_node,
            &["run", "--pgdata", &monitor_pgdata],
        ),
        &[],
    )?);
    let monitor_tcp = format!("{monitor_addr}:{PG_MONITOR_PORT}");
    wait_for(
        "the pg_auto_failover monitor answers",
        Duration::from_secs(60),
        stop,
        services,
        || infra::answers(&monitor_tcp),
    )?;
    let monitor_url = format!(
        "postgres://autoctl_node@{monitor_addr}:{PG_MONITOR_PORT}/pg_auto_failover?sslmode=disable"
    );
    let mut pg_hosts = Vec::new();
    for i in 0..POSTGRES_NODES {
        let host = cluster.host(&Role::Postgres(i)).clone();
        let name = format!("pg-{}", i + 1);
        let node = cluster.dir.join(&name);
        make_postgres_dir(&node)?;
        let pgdata = node.join("pgdata").display().to_string();
        let port = (PG_PORT + i as u16).to_string();
        let addr = host.addr.to_string();
        // `create ... --run` creates the node once, and on a restart finds it made and runs it;
        // `--pg-hba-lan` lets the trips hosts in (by default only the node itself may connect).
        services.push(cluster.start(
            &name,
            &cluster.pg_autoctl(
                &host,
                &node,
                &[
                    "create",
                    "postgres",
                    "--pgdata",
                    &pgdata,
                    "--pgport",
                    &port,
                    "--hostname",
                    &addr,
                    "--name",
                    &name,
                    "--auth",
                    "trust",
                    "--no-ssl",
                    "--pgctl",
                    &pg_ctl,
                    "--pg-hba-lan",
                    "--monitor",
                    &monitor_url,
                    "--run",
                ],
            ),
            &[],
        )?);
        let wanted: &[&str] = if i == 0 {
            &["single"]
        } else {
            &["primary", "secondary"]
        };
        wait_for(
            &format!("PostgreSQL {name} is {}", wanted.join(" or ")),
            Duration::from_secs(120),
            stop,
            services,
            || {
                cluster
                    .pg_states()
                    .iter()
                    .any(|(node, reported, assigned)| {
                        node == &name && reported == assigned && wanted.contains(&reported.as_str())
                    })
            },
        )?;
        pg_hosts.push(format!("{addr}:{port}"));
    }
    let database = format!(
        "postgres://postgres@{}/postgres?target_session_attrs=read-write",
        pg_hosts.join(",")
    );

    let common = [
        ("NATS_URL", nats.as_str()),
        ("DATABASE_URL", database.as_str()),
        ("TOKEN_SECRET", demo::DEMO_SECRET),
        ("SUBJECT_PREFIX", demo::SUBJECT_PREFIX),
        ("RUST_LOG", "info"),
    ];
    let mut endpoints = Vec::new();
    // A service on `host`, whose health endpoints are at `http`.
    let mut launch = |name: String, host: &Host, binary: &str, args: &[String], http: String| {
        services.push(cluster.start(&name, &cluster.inside(host, &bin(binary), args), &common)?);
        endpoints.push((name, http));
        anyhow::Ok(())
    };
    for i in 0..TRIPS_REPLICAS {
        let host = cluster.host(&Role::Trips(i));
        let http = format!("{}:{TRIPS_HTTP_PORT}", host.addr);
        let args = [
            "--http".to_owned(),
            http.clone(),
            "--search-timeout-s".into(),
            "30".into(),
        ];
        launch(
            format!("trips-{}", i + 1),
            host,
            "dispatch-trips",
            &args,
            http,
        )?;
    }
    for i in 0..MATCHERS {
        let (host, regions) = cluster
            .hosts
            .iter()
            .find_map(|(p, h)| match &p.role {
                Role::Matcher(m, regions) if *m == i => Some((h, regions)),
                _ => None,
            })
            .expect("every matcher is placed");
        let http = format!("{}:{MATCHER_HTTP_PORT}", host.addr);
        let args = [
            "--regions".to_owned(),
            regions.join(","),
            "--http".into(),
            http.clone(),
            "--strategy".into(),
            "greedy".into(),
        ];
        launch(
            format!("matcher-{}", i + 1),
            host,
            "dispatch-matcher",
            &args,
            http,
        )?;
    }
    let trips_apis = cluster.addrs(|r| matches!(r, Role::Trips(_)));
    for i in 0..GATEWAYS {
        let host = cluster.host(&Role::Gateway(i));
        let http = format!("{}:{GATEWAY_HTTP_PORT}", host.addr);
        let args = [
            "serve".to_owned(),
            "--id".into(),
            format!("cluster-gateway-{}", i + 1),
            "--ws".into(),
            format!("{}:{GATEWAY_WS_PORT}", host.addr),
            "--http".into(),
            http.clone(),
            "--dashboard-dir".into(),
            dashboard.display().to_string(),
            "--trips-api".into(),
            format!(
                "http://{}:{TRIPS_HTTP_PORT}",
                trips_apis[i % trips_apis.len()]
            ),
            "--map-center".into(),
            format!("{},{}", demo::CITY.0, demo::CITY.1),
            "--map-zoom".into(),
            "12.5".into(),
            // Over the environment's NATS_URL: through the latency, when asked for.
            "--nats-url".into(),
            gateways_nats.clone(),
        ];
        launch(
            format!("gateway-{}", i + 1),
            host,
            "dispatch-gateway",
            &args,
            http,
        )?;
    }
    let endpoints: Vec<(&str, &str)> = endpoints
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str()))
        .collect();
    process::wait_ready(services, &endpoints, stop)?;
    Ok(Urls { nats, database })
}

/// Whether the NATS node at `addr` has its routes to the other nodes.
fn routed(addr: &Ipv4Addr) -> bool {
    process::http_get(&format!("{addr}:{NATS_MONITOR_PORT}"), "/routez")
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|routes| routes["num_routes"].as_u64())
        .is_some_and(|n| n >= (NATS_NODES - 1) as u64)
}

/// A directory the postgres user owns, for one node's data, configuration and state.
fn make_postgres_dir(node: &Path) -> Result<()> {
    std::fs::create_dir_all(node)?;
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(node)
        .status()?;
    ensure!(
        status.success(),
        "cannot hand {} to the postgres user",
        node.display()
    );
    Ok(())
}

/// nats-server, PostgreSQL, pg_auto_failover: installed through apt when missing. Returns
/// PostgreSQL's binary directory.
fn ensure_packages() -> Result<PathBuf> {
    let mut missing = Vec::new();
    if infra::nats_server_bin().is_none() {
        missing.push("nats-server");
    }
    if infra::postgres_bin_dir().is_none() {
        missing.push("postgresql");
    }
    if infra::which("pg_autoctl", &["/usr/bin/pg_autoctl"]).is_none() {
        missing.push("pg-auto-failover-cli");
    }
    let has_extension = |dir: &Path| {
        dir.parent()
            .and_then(|version| version.file_name())
            .is_some_and(|version| {
                Path::new("/usr/share/postgresql")
                    .join(version)
                    .join("extension/pgautofailover.control")
                    .is_file()
            })
    };
    let extension_package = infra::postgres_bin_dir().and_then(|dir| {
        let version = dir.parent()?.file_name()?.to_string_lossy().into_owned();
        (!has_extension(&dir)).then(|| format!("postgresql-{version}-auto-failover"))
    });
    let mut wanted: Vec<&str> = missing.clone();
    if let Some(package) = &extension_package {
        wanted.push(package);
    }
    if !wanted.is_empty() {
        infra::apt_install(&wanted)?;
    }
    let dir =
        infra::postgres_bin_dir().context("PostgreSQL is still missing after installing it")?;
    if !has_extension(&dir) {
        let version = dir
            .parent()
            .and_then(|v| v.file_name())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        infra::apt_install(&[&format!("postgresql-{version}-auto-failover")])?;
    }
    ensure!(
        infra::which("pg_autoctl", &["/usr/bin/pg_autoctl"]).is_some(),
        "pg_autoctl is still missing after installing pg-auto-failover-cli"
    );
    Ok(dir)
}

fn drive(
    cluster: &Cluster,
    services: &mut Vec<Service>,
    stop: &AtomicBool,
    bin: &dyn Fn(&str) -> PathBuf,
    args: &Args,
    urls: &Urls,
) -> Result<()> {
    let gateways = cluster.addrs(|r| matches!(r, Role::Gateway(_)));
    let gateway_urls: Vec<String> = gateways
        .iter()
        .map(|a| format!("ws://{a}:{GATEWAY_WS_PORT}/ws"))
        .collect();
    let duration = args
        .duration
        .map_or("365d".to_owned(), |d| format!("{}s", d.as_secs()));
    let mut sim_args = demo::city_args(
        &gateway_urls.join(","),
        (args.drivers, args.riders, args.request_rate),
        &duration,
        args.seed,
    );
    // A gateway cut off by the network closes nothing: the clients take one silent for 9 s
    // for dead and reconnect to the next, as phone apps do.
    sim_args.extend(["--liveness".to_owned(), "9s".to_owned()]);
    // Always written: a failed run explains its lost trips from it.
    let report = args
        .report_json
        .clone()
        .unwrap_or_else(|| cluster.dir.join("simulator.json"));
    sim_args.extend(["--report-json".to_owned(), report.display().to_string()]);
    let sim_host = cluster.host(&Role::Simulator);
    let env = [
        ("TOKEN_SECRET", demo::DEMO_SECRET),
        ("SUBJECT_PREFIX", demo::SUBJECT_PREFIX),
        ("RUST_LOG", "info"),
    ];
    let simulator = cluster.start(
        "simulator",
        &cluster.inside(sim_host, &bin("dispatch-sim"), &sim_args),
        &env,
    )?;

    print_topology(cluster, urls);
    let token = crate::credentials::dispatcher_token(&bin("dispatch-gateway"))?;
    for addr in &gateways {
        say(format!(
            "  dashboard              http://{addr}:{GATEWAY_HTTP_PORT}/#token={token}"
        ));
    }
    say(format!(
        "  logs                   {}",
        cluster.dir.join("logs").display()
    ));
    say("a process that exits is restarted with backoff; the cluster goes on");
    match args.duration {
        Some(d) => say(format!("running for {d:?}; Ctrl-C stops earlier")),
        None => say("Ctrl-C stops everything and removes the hosts"),
    }

    let mut supervisor = Supervisor::new(
        std::mem::take(services)
            .into_iter()
            .map(|s| (s, true))
            .collect(),
    );
    let mut simulator = Some(simulator);
    let mut sim_status = None;
    let began = Instant::now();
    let mut next_fault_at = args.duration.map(|d| began + d / 3);
    let mut pending: std::collections::VecDeque<Fault> = args.fault.iter().copied().collect();
    let mut injection: Option<Injection> = None;
    let mut done: Vec<Injection> = Vec::new();
    let mut outcome = Ok(());
    while !stop.load(Ordering::SeqCst) {
        if injection.is_none()
            && next_fault_at.is_some_and(|at| Instant::now() >= at)
            && let Some(fault) = pending.pop_front()
        {
            match cluster.inject(fault) {
                Ok(started) => injection = Some(started),
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
        if let Some(current) = injection.as_mut() {
            if let Err(error) = cluster.follow(current, urls, false) {
                outcome = Err(error);
                break;
            }
            if current.healed.is_some() && current.recovered.is_some() {
                done.extend(injection.take());
                next_fault_at = Some(Instant::now() + Duration::from_secs(5));
            }
        }
        if let Some(status) = simulator.as_mut().and_then(demo::finished) {
            simulator = None;
            sim_status = Some(status);
            break;
        }
        if let Some(why) = supervisor.watch() {
            say(&why);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let finished = simulator.is_none() && outcome.is_ok();
    if let Some(sim) = simulator {
        sim_status = process::stop(sim);
    }
    // The city may end before the host is due back: it comes back now, and the recovery is
    // awaited for up to a minute more.
    if let Some(injection) = injection.as_mut()
        && outcome.is_ok()
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        while injection.recovered.is_none() && Instant::now() < deadline {
            if let Err(error) = cluster.follow(injection, urls, true) {
                outcome = Err(error);
                break;
            }
            if let Some(why) = supervisor.watch() {
                say(&why);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    *services = supervisor.into_services();
    outcome?;
    done.extend(injection);
    if let Some(status) = sim_status
        && !status.success()
    {
        // Stopped by Ctrl-C, the simulator does not count the trips still under way as lost;
        // if it ended without a verdict (killed before its report), there is nothing to say.
        if !finished && !demo::reported_violation(status) {
            demo::say_cut_short(status);
            return Ok(());
        }
        // What PostgreSQL says of them, to tell a trip stuck in the system from an ending
        // that did not reach its rider.
        for line in faults::explain_lost(&cluster.pg_bin, &urls.database, &report) {
            say(line);
        }
        if let Ok(wrong) = audit(&cluster.pg_bin, &urls.database) {
            for problem in wrong {
                say(format!("audit: {problem}"));
            }
        }
        bail!("the simulation reported lost or double-assigned requests, or failed ({status})");
    }
    ensure!(
        pending.is_empty() || !finished,
        "the city ended before every fault was injected ({} left): give it a longer --duration",
        pending.len()
    );
    for injection in &done {
        let Some(took) = injection.recovered else {
            bail!(
                "the system had not recovered from {:?} on {} when the city ended",
                injection.fault,
                injection.host.name
            );
        };
        // A kill is survived by failing over: writes must work again before the dead host is
        // back.
        ensure!(
            !injection.fault.kills() || injection.recovered_while_away,
            "writes came back only once {} was back, {:.1} s after the kill: the standby did \
             not take over",
            injection.host.name,
            took.as_secs_f64()
        );
        say(format!(
            "fault {:?} on {}: recovered in {:.1} s",
            injection.fault,
            injection.host.name,
            took.as_secs_f64()
        ));
    }
    if finished {
        if let Some(line) = faults::latencies(&report) {
            say(line);
        }
        let wrong = audit(&cluster.pg_bin, &urls.database)?;
        ensure!(wrong.is_empty(), "the audit found: {}", wrong.join("; "));
    }
    Ok(())
}

/// Prints each host, its address and what runs there.
fn print_topology(cluster: &Cluster, urls: &Urls) {
    say("the cluster is up:");
    say(format!("  {:<12} {:<14} runs", "host", "address"));
    for (placement, host) in &cluster.hosts {
        let what = match &placement.role {
            Role::Nats(_) => {
                format!("nats-server, clients :{NATS_PORT}, routes :{NATS_ROUTE_PORT}")
            }
            Role::PgMonitor => format!("pg_auto_failover monitor :{PG_MONITOR_PORT}"),
            Role::Postgres(i) => format!(
                "PostgreSQL under pg_autoctl :{} ({})",
                PG_PORT + *i as u16,
                if *i == 0 {
                    "first primary"
                } else {
                    "first standby"
                }
            ),
            Role::Trips(_) => format!("dispatch-trips, API and metrics :{TRIPS_HTTP_PORT}"),
            Role::Matcher(_, regions) => format!(
                "dispatch-matcher, {} regions, metrics :{MATCHER_HTTP_PORT}",
                regions.len()
            ),
            Role::Gateway(_) => format!(
                "dispatch-gateway, ws :{GATEWAY_WS_PORT}, dashboard and metrics :{GATEWAY_HTTP_PORT}"
            ),
            Role::Simulator => "dispatch-sim, clients spread over every gateway".to_owned(),
        };
        say(format!("  {:<12} {:<14} {what}", host.name, host.addr));
    }
    say(format!("  NATS_URL               {}", urls.nats));
    say(format!("  DATABASE_URL           {}", urls.database));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_city_is_split_between_matchers_on_different_hosts() {
        let regions = city_regions().unwrap();
        let hosts = plan(&regions).unwrap();
        let names: std::collections::HashSet<&str> =
            hosts.iter().map(|p| p.host.as_str()).collect();
        assert_eq!(names.len(), hosts.len(), "one process per host");
        let octets: std::collections::HashSet<u8> = hosts.iter().map(|p| p.octet).collect();
        assert_eq!(octets.len(), hosts.len(), "one address per host");
        assert!(!octets.contains(&1), "the machine itself is .1");
        assert!(regions.len() >= 4, "{regions:?}");
        for region in &regions {
            let serving: Vec<&str> = hosts
                .iter()
                .filter(|p| matches!(&p.role, Role::Matcher(_, r) if r.contains(region)))
                .map(|p| p.host.as_str())
                .collect();
            assert_eq!(serving.len(), 2, "{region} is served by {serving:?}");
        }
        for placement in &hosts {
            if let Role::Matcher(_, served) = &placement.role {
                assert!(
                    !served.is_empty() && served.len() < regions.len(),
                    "{served:?}"
                );
            }
        }
        let count = |f: fn(&Role) -> bool| hosts.iter().filter(|p| f(&p.role)).count();
        assert_eq!(count(|r| matches!(r, Role::Nats(_))), 3);
        assert_eq!(count(|r| matches!(r, Role::Postgres(_))), 2);
        assert_eq!(count(|r| matches!(r, Role::PgMonitor)), 1);
        assert_eq!(count(|r| matches!(r, Role::Trips(_))), 2);
        assert_eq!(count(|r| matches!(r, Role::Gateway(_))), 3);
        assert_eq!(count(|r| matches!(r, Role::Simulator)), 1);
    }

    #[test]
    fn a_city_of_fewer_than_four_regions_is_refused() {
        let three: Vec<String> = (0..3).map(|i| format!("r{i}")).collect();
        let error = plan(&three).unwrap_err().to_string();
        assert!(error.contains("at least 4"), "{error}");
    }

    #[test]
    fn subnets_are_three_octets() {
        assert_eq!(parse_subnet("10.241.0"), Ok([10, 241, 0]));
        assert!(parse_subnet("10.241").is_err());
        assert!(parse_subnet("10.241.0.0").is_err());
        assert!(parse_subnet("10.300.0").is_err());
    }
}
