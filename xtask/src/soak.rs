//! `cargo xtask soak`: the whole system at moderate load for a long time. Samples every
//! service's memory (resident set) and latency (from its own histograms) and fails when memory
//! keeps growing, a service dies, errors appear, or the simulator reports lost or
//! double-assigned requests. Writes `target/soak/report.json` and a plot in `report.html`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;

use crate::infra::{self, Infra, say};
use crate::process::{self, Service};
use simulator::chart::{self, Chart, Series};
use topology::{Deployment, Form, Serves};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to run (for example `30m`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    duration: Duration,
    /// Time between samples.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    sample_every: Duration,
    #[arg(long, default_value_t = 300)]
    drivers: usize,
    #[arg(long, default_value_t = 300)]
    riders: usize,
    /// Ride requests per second.
    #[arg(long, default_value_t = 3.0)]
    request_rate: f64,
    /// Memory growth between the second and the last quarter of the run that fails it, as a
    /// fraction of the second quarter's (it must also exceed 8 MiB).
    #[arg(long, default_value_t = 0.10)]
    max_growth: f64,
}

const SECRET: &str = "soak-secret-not-for-production";

/// Counters that must stay at zero: errors a healthy system does not make.
const ERROR_COUNTERS: &[&str] = &[
    "trips_outbox_failures_total",
    "trips_malformed_messages_total",
    "trips_breadcrumbs_dropped_total",
    "gateway_api_proxy_failures_total",
    "matcher_positions_dropped_total",
];

/// The latency each service is judged by: a histogram of its own.
const LATENCIES: &[(&str, &str)] = &[
    ("gateway", "gateway_command_duration_seconds"),
    ("matcher", "matcher_match_latency_seconds"),
    ("trips", "trips_command_duration_seconds"),
];

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The sum over all label sets of each metric in a Prometheus text exposition.
fn totals(text: &str) -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(value) = value.parse::<f64>() {
            *totals.entry(name.to_owned()).or_default() += value;
        }
    }
    totals
}

fn scrape(addr: &str) -> Option<BTreeMap<String, f64>> {
    process::http_get(addr, "/metrics").map(|body| totals(&body))
}

#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    t_s: f64,
    rss_mib: BTreeMap<String, f64>,
    /// Mean latency over the interval, milliseconds.
    latency_ms: BTreeMap<&'static str, f64>,
    errors: f64,
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    let bin_dir = process::build_services(&root, true)?;
    let bin = |name: &str| bin_dir.join(name);
    let infra = Infra::up(&root, infra::Profile::Test)?;
    let out = root.join("target/soak");
    std::fs::create_dir_all(&out)?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let prefix = format!("soak{}", std::process::id());
    let port =
        || -> Result<SocketAddr> { Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?) };
    let (lat, lng) = crate::demo::CITY;
    let deployment = Deployment {
        shared: topology::Shared {
            subject_prefix: Some(prefix),
            token_secret: Some(SECRET.to_owned()),
            log: Some("warn".to_owned()),
            ..crate::demo::city_shared(&infra.nats_url, &infra.database_url)
        },
        trips: vec![crate::demo::city_trips(port()?)],
        matchers: vec![topology::Matcher {
            strategy: None,
            ..crate::demo::city_matcher(
                Serves::Area {
                    lat,
                    lng,
                    radius_km: crate::demo::CITY_RADIUS_KM,
                },
                port()?,
            )
        }],
        gateways: vec![topology::Gateway::at(port()?, port()?)],
    };
    let mut services: Vec<Service> = Vec::new();
    let mut endpoints = Vec::new();
    for replica in deployment.replicas(Form::Flags) {
        services.push(process::start_command(
            &replica.name,
            &bin_dir,
            &replica.command,
            &logs,
        )?);
        endpoints.push((replica.service.as_str(), replica.http.to_string()));
    }
    let endpoints: Vec<(&str, &str)> = endpoints.iter().map(|(n, a)| (*n, a.as_str())).collect();
    let never = std::sync::atomic::AtomicBool::new(false);
    process::wait_ready(&mut services, &endpoints, &never)?;
    let report_json = out.join("simulator.json");
    let duration = format!("{}s", args.duration.as_secs());
    let gateway = format!("ws://{}/ws", deployment.gateways[0].ws);
    let mut sim_args = crate::demo::city_args(
        &gateway,
        (args.drivers, args.riders, args.request_rate),
        &duration,
        1,
    );
    sim_args.extend([
        "--report-json".to_owned(),
        report_json.display().to_string(),
    ]);
    let sim_args: Vec<&str> = sim_args.iter().map(String::as_str).collect();
    let common = deployment.shared.env();
    let common: Vec<(&str, &str)> = common.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let simulator = process::start("simulator", &bin("dispatch-sim"), &sim_args, &common, &logs)?;
    say(format!(
        "soaking for {:?}: {} drivers, {} riders, {} requests/s; samples every {:?}",
        args.duration, args.drivers, args.riders, args.request_rate, args.sample_every
    ));

    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut previous: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
    let mut failure = None;
    let mut simulator = Some(simulator);
    while started.elapsed() < args.duration {
        std::thread::sleep(
            args.sample_every
                .min(args.duration.saturating_sub(started.elapsed())),
        );
        if let Some(dead) = process::exited(&mut services) {
            failure = Some(format!("{} died; see {}", dead.name, dead.log.display()));
            break;
        }
        let mut sample = Sample {
            t_s: started.elapsed().as_secs_f64(),
            rss_mib: BTreeMap::new(),
            latency_ms: BTreeMap::new(),
            errors: 0.0,
        };
        for service in &services {
            if let Some(kib) = rss_kib(service.child.id()) {
                sample
                    .rss_mib
                    .insert(service.name.clone(), kib as f64 / 1024.0);
            }
        }
        for &(name, addr) in &endpoints {
            let Some(now) = scrape(addr) else {
                failure = Some(format!("{name} stopped answering /metrics"));
                break;
            };
            for counter in ERROR_COUNTERS {
                sample.errors += now.get(*counter).copied().unwrap_or(0.0);
            }
            if let Some((_, histogram)) = LATENCIES.iter().find(|(s, _)| *s == name) {
                let sum = format!("{histogram}_sum");
                let count = format!("{histogram}_count");
                let before = previous.get(name);
                let delta = |key: &str| {
                    now.get(key).copied().unwrap_or(0.0)
                        - before.and_then(|b| b.get(key)).copied().unwrap_or(0.0)
                };
                if delta(&count) > 0.0 {
                    sample
                        .latency_ms
                        .insert(name, delta(&sum) / delta(&count) * 1000.0);
                }
            }
            previous.insert(name, now);
        }
        say(format!(
            "{:>6.0}s  rss MiB {}  mean latency ms {}  errors {}",
            sample.t_s,
            fmt_map(&sample.rss_mib),
            fmt_map(&sample.latency_ms),
            sample.errors
        ));
        samples.push(sample);
        if failure.is_some() {
            break;
        }
    }

    // The simulator finishes its drain and writes its report.
    let sim_status = match simulator.take() {
        Some(mut sim) => {
            let deadline = Instant::now() + Duration::from_secs(150);
            loop {
                if let Some(status) = sim.child.try_wait()? {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    process::stop(sim);
                    break None;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        None => None,
    };
    for service in services.into_iter().rev() {
        process::stop(service);
    }
    drop(infra);

    let sim: serde_json::Value = std::fs::read_to_string(&report_json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let growth = memory_growth(&samples);
    let mut problems = Vec::new();
    if let Some(failure) = failure {
        problems.push(failure);
    }
    for (service, (early, late)) in &growth {
        if late - early > (early * args.max_growth).max(8.0) {
            problems.push(format!(
                "{service} memory kept growing: {early:.1} MiB in the second quarter, {late:.1} MiB in the last"
            ));
        }
    }
    if samples.last().is_some_and(|s| s.errors > 0.0) {
        problems.push(format!(
            "error counters rose to {}",
            samples.last().map_or(0.0, |s| s.errors)
        ));
    }
    if sim["lost"].as_u64() != Some(0) || sim["double_assigned"].as_u64() != Some(0) {
        problems.push(format!(
            "the simulator reported lost {} and double-assigned {} (exit {sim_status:?})",
            sim["lost"], sim["double_assigned"]
        ));
    }
    let report = json!({
        "duration_s": args.duration.as_secs(),
        "drivers": args.drivers,
        "riders": args.riders,
        "request_rate": args.request_rate,
        "memory_mib_second_quarter_vs_last": growth,
        "samples": samples,
        "simulator": sim,
        "problems": problems,
    });
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("report.html"), plot(&samples))?;
    say(format!(
        "report in {} (plot: {})",
        out.join("report.json").display(),
        out.join("report.html").display()
    ));
    if !problems.is_empty() {
        bail!("soak failed:\n  {}", problems.join("\n  "));
    }
    say("soak passed: memory flat, no errors, nothing lost");
    Ok(())
}

fn fmt_map<K: std::fmt::Display>(map: &BTreeMap<K, f64>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k} {v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Mean resident memory per service in the second and the last quarter of the samples (the
/// first quarter is warm-up).
fn memory_growth(samples: &[Sample]) -> BTreeMap<&'static str, (f64, f64)> {
    let quarter = samples.len() / 4;
    let mut out = BTreeMap::new();
    if quarter == 0 {
        return out;
    }
    let mean = |part: &[Sample], service: &str| {
        let values: Vec<f64> = part
            .iter()
            .filter_map(|s| s.rss_mib.get(service).copied())
            .collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    };
    for service in ["trips", "matcher", "gateway"] {
        let early = mean(&samples[quarter..2 * quarter], service);
        let late = mean(&samples[samples.len() - quarter..], service);
        out.insert(service, (early, late));
    }
    out
}

/// Memory and latency over time as two line charts in one page.
fn plot(samples: &[Sample]) -> String {
    let chart = |title: &str, unit: &str, pick: &dyn Fn(&Sample, &str) -> Option<f64>| {
        let mut chart = Chart::new(title, "s", unit);
        for (name, colour) in [
            ("trips", "#1b9e77"),
            ("matcher", "#d95f02"),
            ("gateway", "#7570b3"),
        ] {
            let points = samples
                .iter()
                .filter_map(|s| pick(s, name).map(|v| (s.t_s, v)))
                .collect();
            chart = chart.with(Series::new(name, colour, points));
        }
        chart.svg()
    };
    chart::page(
        "Soak run",
        &[
            chart("Resident memory", "MiB", &|s, n| s.rss_mib.get(n).copied()),
            chart("Mean latency per interval", "ms", &|s, n| {
                s.latency_ms.get(n).copied()
            }),
        ],
    )
}
