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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::demo;
use crate::infra::{self, say};
use crate::netns::{Host, Net};
use crate::process::{self, Service, Supervisor};

mod bring_up;
mod drive;
mod faults;
mod hosts;
mod latency;
mod packages;
mod plan;
use bring_up::bring_up;
use drive::drive;
use faults::{Fault, Injection, audit};
use hosts::{Cluster, make_postgres_dir, routed, wait_for};
use packages::ensure_packages;
use plan::*;
pub use plan::{Placement, Role, plan};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    city: demo::City,
    /// The hosts' subnet, its first three octets (the hosts are `A.B.C.11` and up, this
    /// machine is `A.B.C.1`).
    #[arg(long, default_value = "10.241.0", value_parser = parse_subnet)]
    subnet: [u8; 3],
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

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    let stop_requested = process::stop_on_ctrl_c()?;

    let placements = plan(&city_regions()?)?;
    // Checked before the long build: root, namespaces, the subnet.
    let mut net = Net::create(args.subnet)?;
    let pg_bin = ensure_packages()?;
    let bin_dir = process::build_services(&root, !args.city.debug)?;
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
