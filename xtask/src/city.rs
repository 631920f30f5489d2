//! `cargo xtask bench city`: the demo's city, run as a user runs it (`cargo xtask demo`, every
//! service a release process, the simulator beside them on the same machine), at the demo's
//! default size and at 10,000 drivers, each `BENCH_CITY_RUNS` times (3) for the spread.
//!
//! Each run reports what the simulator measured (position updates/s, location latency from a
//! driver's report to its rider or dispatcher, request-to-offer latency, lost and
//! double-assigned requests), each program's CPU while the city ran, so what the system
//! costs is told apart from what the simulator costs, and each hop's latency from the
//! services' histograms. `BENCH_CITY_SECONDS` (120) sets each
//! run's demand; `BENCH_CITY_FLEETS` (for example `1000,3000`) adds fleets between the two,
//! with riders and requests in the city's proportions. Writes `target/bench/city.json`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cpu::Snapshot;
use crate::infra::say;

/// One size of city.
struct Scenario {
    name: String,
    drivers: usize,
    riders: usize,
    request_rate: f64,
}

impl Scenario {
    /// A fleet of `drivers` with riders and requests in the 10,000-driver city's proportions.
    fn proportional(drivers: usize) -> Self {
        Self {
            name: format!("{drivers} drivers"),
            drivers,
            riders: drivers / 5,
            request_rate: drivers as f64 / 500.0,
        }
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

pub fn run(root: &Path, out: &Path) -> Result<()> {
    let runs: u64 = env_number("BENCH_CITY_RUNS", 3)?;
    let seconds: u64 = env_number("BENCH_CITY_SECONDS", 120)?;
    let mut scenarios = vec![Scenario {
        name: "demo default".into(),
        drivers: 200,
        riders: 200,
        request_rate: 2.0,
    }];
    if let Ok(list) = std::env::var("BENCH_CITY_FLEETS") {
        for size in list.split(',').filter(|s| !s.trim().is_empty()) {
            let drivers = size
                .trim()
                .parse()
                .with_context(|| format!("BENCH_CITY_FLEETS: {size} is not a number"))?;
            scenarios.push(Scenario::proportional(drivers));
        }
    }
    scenarios.push(Scenario::proportional(10_000));

    let xtask = std::env::current_exe().context("finding the xtask binary")?;
    let mut results = Vec::new();
    for scenario in &scenarios {
        let mut rows = Vec::new();
        for run in 1..=runs {
            say(format!(
                "city: {} ({} riders, {}/s requests), run {run} of {runs}, {seconds} s",
                scenario.name, scenario.riders, scenario.request_rate
            ));
            let tag = format!("city-{}-{run}", scenario.drivers);
            let report_path = out.join(format!("{tag}.json"));
            let costs_path = out.join(format!("{tag}-costs.json"));
            let status = Command::new(&xtask)
                .arg("demo")
                .args(["--duration", &format!("{seconds}s")])
                .args(["--drivers", &scenario.drivers.to_string()])
                .args(["--riders", &scenario.riders.to_string()])
                .args(["--request-rate", &scenario.request_rate.to_string()])
                .args(["--seed", &run.to_string()])
                .arg("--report-json")
                .arg(&report_path)
                .arg("--costs-json")
                .arg(&costs_path)
                .status()
                .context("running the demo")?;
            if !status.success() {
                bail!(
                    "the demo at {} failed ({status}); its report, if any, is in {}",
                    scenario.name,
                    report_path.display()
                );
            }
            let read = |path: &Path| -> Result<serde_json::Value> {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok(serde_json::from_str(&text)?)
            };
            let report = read(&report_path)?;
            let costs = read(&costs_path)?;
            let row = serde_json::json!({
                "seed": run,
                "updates_per_sec": report["updates_per_sec"],
                "location_latency_ms": report["location_latency_ms"],
                "match_latency_ms": report["match_latency_ms"],
                "requests": report["requests"],
                "completed": report["completed"],
                "lost": report["lost"],
                "double_assigned": report["double_assigned"],
                "cpu_share_of_a_core": costs["cpu_share_of_a_core"],
                "hops": costs["hops"],
            });
            say(format!(
                "city: {} run {run}: {:.0} updates/s, location p50/p99 {}/{} ms, request to offer p50/p99 {}/{} ms, lost {}",
                scenario.name,
                row["updates_per_sec"].as_f64().unwrap_or(f64::NAN),
                row["location_latency_ms"]["p50"],
                row["location_latency_ms"]["p99"],
                row["match_latency_ms"]["p50"],
                row["match_latency_ms"]["p99"],
                row["lost"],
            ));
            rows.push(row);
        }
        let spread = |path: &[&str]| {
            let values: Vec<f64> = rows
                .iter()
                .filter_map(|r| path.iter().fold(r, |v, k| &v[k]).as_f64())
                .collect();
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            serde_json::json!({"min": min, "max": max})
        };
        results.push(serde_json::json!({
            "name": scenario.name,
            "drivers": scenario.drivers,
            "riders": scenario.riders,
            "request_rate": scenario.request_rate,
            "seconds": seconds,
            "runs": rows,
            "spread": {
                "location_p99_ms": spread(&["location_latency_ms", "p99"]),
                "match_p99_ms": spread(&["match_latency_ms", "p99"]),
                "lost": spread(&["lost"]),
                "double_assigned": spread(&["double_assigned"]),
            },
        }));
    }
    // The simulator's own cost, at the largest city, against a gateway that does nothing.
    let largest = scenarios
        .last()
        .expect("the 10,000-driver city is always run");
    let bin_dir = crate::process::build_services(root, true)?;
    let mut alone = Vec::new();
    for run in 1..=runs {
        say(format!(
            "city: the simulator alone at {} against a bare gateway, run {run} of {runs}, {} s",
            largest.name,
            seconds.min(ALONE_SECONDS)
        ));
        alone.push(simulator_alone(
            &bin_dir,
            out,
            largest,
            seconds.min(ALONE_SECONDS),
            run,
        )?);
    }
    std::fs::write(
        out.join("city.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "scenarios": results, "simulator_alone": alone }),
        )?,
    )?;
    Ok(())
}

/// How long the simulator runs alone: its CPU is a rate, steady well within a minute.
const ALONE_SECONDS: u64 = 60;

/// Runs the simulator at `scenario` against `dispatch-sim-bare-gateway`, a stand-in that
/// welcomes, acknowledges, refuses ride requests and drops positions unread, and measures what
/// the simulator (and the stand-in) cost per position.
fn simulator_alone(
    bin_dir: &Path,
    out: &Path,
    scenario: &Scenario,
    seconds: u64,
    seed: u64,
) -> Result<serde_json::Value> {
    let port = crate::infra::free_port()?;
    let mut bare = Command::new(bin_dir.join("dispatch-sim-bare-gateway"))
        .arg(port.to_string())
        .spawn()
        .context("starting the bare gateway")?;
    let result = (|| {
        let addr = format!("127.0.0.1:{port}");
        crate::infra::wait_until("the bare gateway", Duration::from_secs(10), || {
            crate::infra::answers(&addr)
        })?;
        let report_path = out.join(format!("city-alone-{}-{seed}.json", scenario.drivers));
        let mut args = crate::demo::city_args(
            &format!("ws://{addr}/ws"),
            (scenario.drivers, scenario.riders, scenario.request_rate),
            &format!("{seconds}s"),
            seed,
        );
        args.extend([
            "--report-json".to_owned(),
            report_path.display().to_string(),
        ]);
        // Every refused request is a warning: the log holds them, not the terminal.
        let log = std::fs::File::create(out.join(format!("city-alone-{seed}.log")))?;
        let before = Snapshot::take(&[]);
        let mut sim = Command::new(bin_dir.join("dispatch-sim"))
            .args(&args)
            .env("TOKEN_SECRET", "a-bare-gateway-reads-no-token")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the simulator")?;
        // The last snapshot taken while the simulator still ran holds its CPU.
        let mut last = Snapshot::take(&[]);
        let status = loop {
            if let Some(status) = sim.try_wait()? {
                break status;
            }
            last = Snapshot::take(&[]);
            std::thread::sleep(Duration::from_secs(1));
        };
        if !status.success() {
            bail!("the simulator against the bare gateway failed ({status})");
        }
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report_path)?)?;
        let shares = last.shares_since(&before);
        let share = |program: &str| shares.get(program).copied().unwrap_or(0.0);
        let updates = report["updates_per_sec"].as_f64().unwrap_or(0.0);
        let row = serde_json::json!({
            "seed": seed,
            "updates_per_sec": updates,
            "simulator_share_of_a_core": share("dispatch-sim"),
            "bare_gateway_share_of_a_core": share("dispatch-sim-bare-gateway"),
            "simulator_cpu_us_per_update": share("dispatch-sim") * 1e6 / updates.max(1.0),
        });
        say(format!(
            "city: the simulator alone: {updates:.0} updates/s, {:.2} of a core ({:.1} us per update); the bare gateway {:.2} of a core",
            share("dispatch-sim"),
            row["simulator_cpu_us_per_update"]
                .as_f64()
                .unwrap_or(f64::NAN),
            share("dispatch-sim-bare-gateway"),
        ));
        Ok(row)
    })();
    let _ = bare.kill();
    let _ = bare.wait();
    result
}
