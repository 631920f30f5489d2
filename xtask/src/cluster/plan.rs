//! The topology as data: what runs on which host, the ports, and how the city's regions are
//! split between matchers.

use super::*;

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
pub(super) const NATS_PORT: u16 = 4222;
pub(super) const NATS_ROUTE_PORT: u16 = 6222;
pub(super) const NATS_MONITOR_PORT: u16 = 8222;
/// The first of the latency proxies' ports on this machine, one per NATS node.
pub(super) const LATENCY_PORT: u16 = 14221;
pub(super) const PG_MONITOR_PORT: u16 = 25430;
pub(super) const PG_PORT: u16 = 25431;
pub(super) const TRIPS_HTTP_PORT: u16 = 8082;
pub(super) const MATCHER_HTTP_PORT: u16 = 8083;
pub(super) const GATEWAY_WS_PORT: u16 = 8080;
pub(super) const GATEWAY_HTTP_PORT: u16 = 8081;

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
pub(super) fn city_regions() -> Result<Vec<String>> {
    let (lat, lng) = demo::CITY;
    let regions = protocol::GeoConfig::default()
        .regions_covering(
            protocol::Point::new(lat, lng),
            demo::CITY_RADIUS_KM * 1000.0,
        )
        .context("the city's regions")?;
    Ok(regions.iter().map(ToString::to_string).collect())
}
