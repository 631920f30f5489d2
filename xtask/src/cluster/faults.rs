//! Faults across the network for `cargo xtask cluster --fault`: a host cut off (its link
//! down) or killed with everything on it, the time the system takes to recover, and the audit
//! of PostgreSQL after the city.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::{Cluster, GATEWAY_HTTP_PORT, MATCHER_HTTP_PORT, Role, TRIPS_HTTP_PORT, Urls};
use crate::infra::say;
use crate::netns::Host;
use crate::process;

/// Faults across the network, each on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL every process on the PostgreSQL primary's host, which stays down for 90 s: the
    /// standby takes over, the trips replicas reconnect to it, and the old primary rejoins
    /// as a standby once its host is back.
    KillPostgresPrimary,
    /// Cut the PostgreSQL primary's host off for 10 s.
    PartitionPostgresPrimary,
    /// Cut the first matcher's host off for 15 s: the other matcher of its regions serves them.
    PartitionMatcher,
    /// Cut the first NATS node's host off for 15 s: its clients move to the other two.
    PartitionNats,
    /// Cut the first gateway's host off for 15 s: its clients reconnect to another gateway and
    /// resume their trips.
    PartitionGateway,
    /// SIGKILL the first matcher's process: the other matcher of its regions serves them
    /// until the supervisor has restarted it.
    KillMatcher,
    /// SIGKILL the first trips replica's process: the other replica takes its commands and
    /// the outbox.
    KillTrips,
    /// SIGKILL the first gateway's process: its clients reconnect to another gateway and
    /// resume their trips.
    KillGateway,
    /// SIGKILL the first NATS node's process: its clients move to the other two, and the
    /// restarted node joins the cluster again.
    KillNats,
}

impl Fault {
    /// How long the host is cut off (nothing is cut off when a process is killed).
    pub(super) fn down_for(self) -> Duration {
        match self {
            // Longer than pg_auto_failover takes to fail over with its default timeouts (about
            // a minute: 20 s to call the primary unhealthy, 30 s for it to demote itself), so
            // the standby must take over while the host is away.
            Fault::KillPostgresPrimary => Duration::from_secs(90),
            Fault::PartitionPostgresPrimary => Duration::from_secs(10),
            Fault::PartitionMatcher | Fault::PartitionNats | Fault::PartitionGateway => {
                Duration::from_secs(15)
            }
            Fault::KillMatcher | Fault::KillTrips | Fault::KillGateway | Fault::KillNats => {
                Duration::ZERO
            }
        }
    }

    /// Whether the host's processes are killed (its recovery is timed from the kill, not from
    /// the moment its host is back).
    pub(super) fn kills(self) -> bool {
        self == Fault::KillPostgresPrimary
    }

    /// The host and the program whose process is killed, when the fault kills one process.
    fn process(self) -> Option<(&'static str, &'static str)> {
        match self {
            Fault::KillMatcher => Some(("matcher-1", "dispatch-matcher")),
            Fault::KillTrips => Some(("trips-1", "dispatch-trips")),
            Fault::KillGateway => Some(("gateway-1", "dispatch-gateway")),
            Fault::KillNats => Some(("nats-1", "nats-server")),
            _ => None,
        }
    }
}

/// A fault under way: where, since when, and how long the system took to recover.
pub(super) struct Injection {
    pub(super) fault: Fault,
    pub(super) host: Host,
    began: Instant,
    /// The process killed, when the fault kills one.
    killed: Option<i32>,
    pub(super) healed: Option<Instant>,
    pub(super) recovered: Option<Duration>,
    /// Whether it recovered while the host was still away (as a failover must).
    pub(super) recovered_while_away: bool,
}

impl Cluster {
    fn host_named(&self, name: &str) -> &Host {
        &self
            .hosts
            .iter()
            .find(|(p, _)| p.host == name)
            .expect("the host is placed")
            .1
    }

    /// The PostgreSQL node that is read-write as the monitor sees it, settled.
    fn primary(&self) -> Option<String> {
        self.pg_states()
            .into_iter()
            .find(|(_, reported, assigned)| {
                reported == assigned
                    && ["single", "primary", "wait_primary"].contains(&reported.as_str())
            })
            .map(|(name, _, _)| name)
    }

    pub(super) fn inject(&self, fault: Fault) -> Result<Injection> {
        let host = match fault {
            Fault::KillPostgresPrimary | Fault::PartitionPostgresPrimary => {
                let primary = self.primary().context("no PostgreSQL primary to fault")?;
                self.host_named(&primary).clone()
            }
            Fault::PartitionMatcher => self.host_named("matcher-1").clone(),
            Fault::PartitionNats => self.host_named("nats-1").clone(),
            Fault::PartitionGateway => self.host_named("gateway-1").clone(),
            Fault::KillMatcher | Fault::KillTrips | Fault::KillGateway | Fault::KillNats => {
                let (host, program) = fault.process().expect("a process fault");
                let host = self.host_named(host).clone();
                let pid = self.net.kill_process(&host, program)?;
                say(format!(
                    "fault: SIGKILL to {program} (pid {pid}) on {}",
                    host.name
                ));
                let began = Instant::now();
                return Ok(Injection {
                    fault,
                    host,
                    began,
                    killed: Some(pid),
                    // Nothing to heal: the supervisor restarts the process.
                    healed: Some(began),
                    recovered: None,
                    recovered_while_away: false,
                });
            }
        };
        self.net.set_connected(&host, false)?;
        if fault.kills() {
            let killed = self.net.kill_everything(&host)?;
            say(format!(
                "fault: killed every process on {} ({killed}); the host is down for {:?}",
                host.name,
                fault.down_for()
            ));
        } else {
            say(format!(
                "fault: cut {} off for {:?}",
                host.name,
                fault.down_for()
            ));
        }
        Ok(Injection {
            fault,
            host,
            began: Instant::now(),
            killed: None,
            healed: None,
            recovered: None,
            recovered_while_away: false,
        })
    }

    /// Whether what `injection` broke works again.
    fn recovered(&self, injection: &Injection, urls: &Urls) -> bool {
        let service_ready = |role: fn(&Role) -> bool, port: u16, path: &str| {
            self.addrs(role)
                .iter()
                .all(|addr| process::http_ok(&format!("{addr}:{port}"), path))
        };
        // A killed process must have been started again, not only answer.
        if let (Some(killed), Some((_, program))) = (injection.killed, injection.fault.process())
            && self
                .net
                .process_id(&injection.host, program)
                .ok()
                .is_none_or(|pid| pid == killed)
        {
            return false;
        }
        match injection.fault {
            Fault::KillPostgresPrimary | Fault::PartitionPostgresPrimary => {
                self.primary().is_some()
                    && writable(&self.pg_bin, &urls.database)
                    && service_ready(|r| matches!(r, Role::Trips(_)), TRIPS_HTTP_PORT, "/readyz")
            }
            Fault::PartitionMatcher | Fault::KillMatcher => process::http_ok(
                &format!("{}:{MATCHER_HTTP_PORT}", injection.host.addr),
                "/readyz",
            ),
            Fault::PartitionNats | Fault::KillNats => super::routed(&injection.host.addr),
            Fault::PartitionGateway | Fault::KillGateway => process::http_ok(
                &format!("{}:{GATEWAY_HTTP_PORT}", injection.host.addr),
                "/readyz",
            ),
            Fault::KillTrips => process::http_ok(
                &format!("{}:{TRIPS_HTTP_PORT}", injection.host.addr),
                "/readyz",
            ),
        }
    }

    /// Moves a fault along: heals the host once it has been away long enough (or at once,
    /// when `now`), notes the recovery.
    pub(super) fn follow(&self, injection: &mut Injection, urls: &Urls, now: bool) -> Result<()> {
        if injection.healed.is_none()
            && (now || injection.began.elapsed() >= injection.fault.down_for())
        {
            self.net.set_connected(&injection.host, true)?;
            injection.healed = Some(Instant::now());
            say(format!(
                "fault: {} is back on the network",
                injection.host.name
            ));
        }
        let since = if injection.fault.kills() {
            Some(injection.began)
        } else {
            injection.healed
        };
        if let Some(since) = since
            && injection.recovered.is_none()
            && self.recovered(injection, urls)
        {
            let took = since.elapsed();
            injection.recovered = Some(took);
            injection.recovered_while_away = injection.healed.is_none();
            say(format!(
                "fault: recovered {:.1} s after the {}{}",
                took.as_secs_f64(),
                if injection.fault.kills() || injection.fault.process().is_some() {
                    "kill"
                } else {
                    "partition healed"
                },
                self.primary()
                    .filter(|_| injection.fault.kills())
                    .map(|p| format!("; the primary is now {p}"))
                    .unwrap_or_default()
            ));
        }
        Ok(())
    }
}

/// Whether a read-write PostgreSQL answers at `url` (within 3 s).
fn writable(pg_bin: &Path, url: &str) -> bool {
    psql(pg_bin, url, "SELECT NOT pg_is_in_recovery()").is_ok_and(|out| out == "t")
}

/// One query's result through psql, unaligned, at `url` (any host in it that is read-write).
fn psql(pg_bin: &Path, url: &str, sql: &str) -> Result<String> {
    let output = Command::new(pg_bin.join("psql"))
        .arg(format!("{url}&connect_timeout=3"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("running psql")?;
    ensure!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// After the city: no trip left open, each trip's state is its last event, each event starts
/// where the one before it ended. Returns what is wrong, if anything.
pub(super) fn audit(pg_bin: &Path, url: &str) -> Result<Vec<String>> {
    let count = |sql: &str| -> Result<i64> {
        psql(pg_bin, url, sql)?
            .parse()
            .context("psql answered something other than a count")
    };
    let mut wrong = Vec::new();
    let open = count(
        "SELECT count(*) FROM trips WHERE state NOT IN ('completed', 'cancelled', 'expired')",
    )?;
    if open > 0 {
        wrong.push(format!("{open} trips left open"));
    }
    let disagreeing = count(
        "SELECT count(*) FROM trips t WHERE t.state IS DISTINCT FROM \
         (SELECT to_state FROM trip_events e WHERE e.trip_id = t.trip_id \
          ORDER BY version DESC LIMIT 1)",
    )?;
    if disagreeing > 0 {
        wrong.push(format!(
            "{disagreeing} trips whose state is not their last event"
        ));
    }
    let broken = count(
        "SELECT count(*) FROM (SELECT from_state, lag(to_state) OVER \
         (PARTITION BY trip_id ORDER BY version) AS previous FROM trip_events) e \
         WHERE e.previous IS DISTINCT FROM e.from_state",
    )?;
    if broken > 0 {
        wrong.push(format!(
            "{broken} events that do not start where the last one ended"
        ));
    }
    let trips = count("SELECT count(*) FROM trips")?;
    say(format!(
        "audit: {trips} trips in PostgreSQL, {} problems",
        wrong.len()
    ));
    if trips == 0 {
        wrong.push("no trip reached PostgreSQL".to_owned());
    }
    Ok(wrong)
}

/// For each trip the simulator's report at `report` counts as lost: the last state its rider
/// heard of, and the trip's events in PostgreSQL.
pub(super) fn explain_lost(pg_bin: &Path, url: &str, report: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(report) else {
        return vec![format!("no simulator report at {}", report.display())];
    };
    let Ok(report) = serde_json::from_str::<serde_json::Value>(&text) else {
        return vec![format!(
            "the simulator report at {} is not JSON",
            report.display()
        )];
    };
    let lost = report["lost_trips"].as_array().cloned().unwrap_or_default();
    let mut lines = Vec::new();
    for trip in lost {
        let (Some(id), heard) = (trip[0].as_str(), trip[1].as_str().unwrap_or("?")) else {
            continue;
        };
        // Only a UUID goes into the query (it is the simulator's, but checked all the same).
        let Ok(id) = uuid::Uuid::parse_str(id) else {
            continue;
        };
        let events = psql(
            pg_bin,
            url,
            &format!(
                "SELECT string_agg(format('%s %s->%s', to_char(at, 'HH24:MI:SS.MS'), \
                 from_state, to_state), ', ' ORDER BY version) FROM trip_events \
                 WHERE trip_id = '{id}'"
            ),
        )
        .unwrap_or_else(|error| format!("(not read: {error})"));
        lines.push(format!(
            "lost trip {id}: its rider last heard {heard}; in PostgreSQL: {events}"
        ));
    }
    lines
}

/// The simulator's end-to-end figures from its report at `report`, in one line.
pub(super) fn latencies(report: &Path) -> Option<String> {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).ok()?).ok()?;
    let p99 = |key: &str| report[key]["p99"].as_f64().unwrap_or(f64::NAN);
    Some(format!(
        "simulator: {} requests acknowledged, {} completed, {} lost; p99 location {:.1} ms, \
         request to offer {:.1} ms, request to accept {:.1} ms",
        report["acknowledged"],
        report["completed"],
        report["lost"],
        p99("location_latency_ms"),
        p99("match_latency_ms"),
        p99("accept_latency_ms"),
    ))
}
