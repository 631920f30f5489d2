//! `cargo xtask bench`: the benchmarks, on real servers brought up like the tests'.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::infra::{self, Infra, say};
use crate::targets;
use simulator::chart::{self, Chart, Series};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only the benchmarks whose names contain this (codec, eta, trips, geo, matching,
    /// ingest, connections, fanout, fleet, city).
    filter: Option<String>,
    /// Run nothing: gather what the last runs left in target/bench into the report and page.
    #[arg(long)]
    report_only: bool,
}

/// Port of the Redis xtask starts when `REDIS_URL` does not answer.
const OWN_REDIS_PORT: u16 = 16379;

/// A Redis for the geo comparison: `REDIS_URL` when it answers, else a local one.
struct Redis {
    url: String,
    own: Option<Child>,
}

impl Redis {
    fn up(dev: &Path) -> Result<Self> {
        if let Ok(url) = std::env::var("REDIS_URL")
            && infra::host_port(&url, 6379).is_some_and(|a| infra::answers(&a))
        {
            say(format!("using Redis at {url} (REDIS_URL)"));
            return Ok(Self { url, own: None });
        }
        let find = || {
            infra::which(
                "redis-server",
                &["/usr/bin/redis-server", "/usr/sbin/redis-server"],
            )
        };
        let bin = match find() {
            Some(bin) => bin,
            None => {
                infra::apt_install(&["redis-server"])?;
                find().context("redis-server is still missing after installing it")?
            }
        };
        let addr = format!("127.0.0.1:{OWN_REDIS_PORT}");
        if infra::answers(&addr) {
            bail!("port {OWN_REDIS_PORT} is taken; stop that process or set REDIS_URL");
        }
        let child = Command::new(&bin)
            .args(["--bind", "127.0.0.1", "--port", &OWN_REDIS_PORT.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dev)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        infra::wait_until("redis-server", Duration::from_secs(10), || {
            infra::answers(&addr)
        })?;
        let url = format!("redis://{addr}");
        say(format!("started redis-server at {url}"));
        Ok(Self {
            url,
            own: Some(child),
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.own.take() {
            let _ = child.kill();
            let _ = child.wait();
            say("stopped redis-server");
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    if args.report_only {
        return report(&root.join("target/bench"));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let infra = Infra::up(&root, infra::Profile::Test)?;
    let redis = Redis::up(&root.join("target/dev"))?;
    let wanted = |name: &str| args.filter.as_deref().is_none_or(|f| name.contains(f));
    let gateway_bin = infra::target_dir(&root)?.join("release/dispatch-gateway");
    let trips_bin = infra::target_dir(&root)?.join("release/dispatch-trips");
    if wanted("api") || wanted("ingest") {
        say("building the trips service (release) for the API and ingest benchmarks");
        let built = Command::new(&cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "-p",
                "trips",
                "--bin",
                "dispatch-trips",
            ])
            .status()?;
        if !built.success() {
            bail!("building the trips service failed");
        }
    }
    if wanted("connections") || wanted("fleet") || wanted("ingest") {
        say("building the gateway (release) for the ingest, connections and fleet benchmarks");
        let built = Command::new(&cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "-p",
                "gateway",
                "--bin",
                "dispatch-gateway",
            ])
            .status()?;
        if !built.success() {
            bail!("building the gateway failed");
        }
    }
    for (package, bench) in [
        ("protocol", "codec"),
        ("roads", "eta"),
        ("tests", "trips"),
        ("tests", "api"),
        ("tests", "geo"),
        ("tests", "matching"),
        ("tests", "ingest"),
        ("tests", "connections"),
        ("tests", "fanout"),
        ("tests", "fleet"),
    ] {
        if !wanted(bench) {
            continue;
        }
        say(format!("== cargo bench -p {package} --bench {bench}"));
        let status = Command::new(&cargo)
            .current_dir(&root)
            .args(["bench", "-p", package, "--bench", bench])
            .env("DISPATCH_TEST_DATABASE_URL", &infra.database_url)
            .env("NATS_SERVER_BIN", &infra.nats_server_bin)
            .env("REDIS_URL", &redis.url)
            .env("GATEWAY_BIN", &gateway_bin)
            .env("TRIPS_BIN", &trips_bin)
            .status()?;
        if !status.success() {
            bail!("benchmark {bench} failed");
        }
    }
    if wanted("city") {
        say("== the city: cargo xtask demo at the default size and at 10,000 drivers");
        let out = root.join("target/bench");
        std::fs::create_dir_all(&out)?;
        crate::city::run(&root, &out)?;
    }
    report(&root.join("target/bench"))
}

fn report(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "no benchmark results in {}: run `cargo xtask bench` first",
            dir.display()
        );
    }
    let table = assemble(dir)?;
    say(format!(
        "report in target/bench/report.json, with a page and plot in report.html \
         (criterion's in target/criterion/):\n{table}"
    ));
    Ok(())
}

/// One figure beside its baseline.
fn compared(value: f64, baseline: f64, unit: &str) -> serde_json::Value {
    serde_json::json!({
        "value": value,
        "baseline": baseline,
        "ratio": value / baseline.max(f64::MIN_POSITIVE),
        "unit": unit,
    })
}

/// Gathers every benchmark's JSON under `dir` into `report.json`, each figure beside its
/// baseline and their ratio; returns a printable table.
fn assemble(dir: &Path) -> Result<String> {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?).ok()
    };
    let number = |v: &serde_json::Value, path: &[&str]| -> f64 {
        path.iter()
            .fold(v, |v, key| &v[key])
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let mut report = serde_json::Map::new();
    let mut rows = Vec::new();
    let mut row = |name: &str, figure: serde_json::Value| {
        let number = |key: &str| figure[key].as_f64().unwrap_or(f64::NAN);
        rows.push(vec![
            name.to_owned(),
            format!("{:.1}", number("value")),
            format!("{:.1}", number("baseline")),
            format!("{:.3}", number("ratio")),
            figure["unit"].as_str().unwrap_or_default().to_owned(),
        ]);
        figure
    };
    let ingest = read("ingest");
    if let Some(ingest) = &ingest {
        report.insert(
            "ingest".into(),
            serde_json::json!({
                "lossless_updates": row(
                    "ingest: lossless updates/s vs bare async-nats",
                    compared(
                        number(ingest, &["lossless_updates_per_sec"]),
                        number(ingest, &["bare_nats_messages_per_sec"]),
                        "per second",
                    ),
                ),
                "latency_ms": ingest["latency"].clone(),
                "sends": ingest["sends"].clone(),
                "knee_per_sec": ingest["knee_per_sec"].clone(),
                "gateway_cpu_per_position": row(
                    "ingest: gateway CPU us/position vs bare server's per message",
                    compared(
                        number(ingest, &["gateway_cpu_us_per_position"]),
                        number(ingest, &["bare_ws_cpu_us_per_message"]),
                        "microseconds",
                    ),
                ),
                "cpu_us_per_position": ingest["cpu_us_per_position"].clone(),
                "bare_ws_clients_cpu_us_per_message": ingest["bare_ws_clients_cpu_us_per_message"].clone(),
                "spread": ingest["spread"].clone(),
                "zones": ingest["zones"].clone(),
            }),
        );
    }
    if let Some(connections) = read("connections") {
        report.insert(
            "connections".into(),
            serde_json::json!({
                "held": connections["gateway"]["connections"].clone(),
                "bytes_per_connection": row(
                    "connections: gateway bytes/conn vs bare",
                    compared(
                        number(&connections, &["gateway", "bytes_per_connection"]),
                        number(&connections, &["bare_tungstenite", "bytes_per_connection"]),
                        "bytes",
                    ),
                ),
                "idle_cpu_percent": {
                    "gateway": connections["gateway"]["idle_cpu_percent"].clone(),
                    "bare_tungstenite": connections["bare_tungstenite"]["idle_cpu_percent"].clone(),
                },
                "open_file_limit": connections["open_file_limit"].clone(),
            }),
        );
    }
    if let Some(matching) = read("matching") {
        let high = |strategy: &str, key: &str| number(&matching, &["high_load", strategy, key]);
        report.insert(
            "matching".into(),
            serde_json::json!({
                "runs": matching["runs"].clone(),
                "moderate_load_greedy_offer_p99_ms": matching["moderate_load_greedy_offer_p99_ms"].clone(),
                "ample_supply_greedy_offer_p99_ms": matching["ample_supply_greedy_offer_p99_ms"].clone(),
                "high_load_mean_pickup_time_s": row(
                    "matching, high load: pickup s, batched vs greedy",
                    compared(
                        high("batched", "mean_pickup_time_s"),
                        high("greedy", "mean_pickup_time_s"),
                        "s",
                    ),
                ),
                "high_load_service_rate": row(
                    "matching, high load: served, batched vs greedy",
                    compared(
                        high("batched", "service_rate"),
                        high("greedy", "service_rate"),
                        "fraction",
                    ),
                ),
                "high_load_offer_p99_ms": row(
                    "matching, high load: request to offer p99 ms, batched vs greedy",
                    compared(
                        high("batched", "offer_p99_ms"),
                        high("greedy", "offer_p99_ms"),
                        "ms",
                    ),
                ),
                "roads_mean_pickup_time_s": row(
                    "matching, roads: pickup s, road ETA vs straight line",
                    compared(
                        number(&matching, &["roads", "road_eta_mean_pickup_time_s"]),
                        number(&matching, &["roads", "straight_line_mean_pickup_time_s"]),
                        "s",
                    ),
                ),
                "roads_rider_eta_error_s": row(
                    "matching, roads: rider's ETA to pickup, mean gap s, road ETA vs straight line",
                    compared(
                        number(&matching, &["roads", "road_eta_rider_eta_error_s"]),
                        number(&matching, &["roads", "straight_line_rider_eta_error_s"]),
                        "s",
                    ),
                ),
            }),
        );
    }
    if let Some(city) = read("city") {
        let scenarios = city["scenarios"].clone();
        let at_10000 = scenarios
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["drivers"].as_u64() == Some(10_000))
            .map(|s| s["spread"].clone());
        report.insert(
            "city".into(),
            serde_json::json!({
                "scenarios": scenarios,
                "at_10000_drivers": at_10000,
                "simulator_alone": city["simulator_alone"].clone(),
            }),
        );
    }
    if let Some(fleet) = read("fleet") {
        report.insert(
            "fleet".into(),
            serde_json::json!({
                "gateways": fleet["gateways"].clone(),
                "held": fleet["held"].clone(),
                "held_after_moving": fleet["held_after_moving"].clone(),
                "connect_seconds": fleet["connect_seconds"].clone(),
                "moving": fleet["moving"].clone(),
                "positions_per_sec_delivered": row(
                    "fleet: positions/s delivered vs moving drivers",
                    compared(
                        number(&fleet, &["positions_per_sec_delivered"]),
                        number(&fleet, &["moving"]),
                        "per second",
                    ),
                ),
                "per_gateway": fleet["per_gateway"].clone(),
                "max_bytes_per_connection": fleet["max_bytes_per_connection"].clone(),
            }),
        );
    }
    if let Some(fanout) = read("fanout") {
        let published = number(&fanout, &["published"]);
        let busiest = fanout["per_gateway"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| g["received"].as_f64().unwrap_or(f64::NAN))
            .fold(0.0f64, f64::max);
        report.insert(
            "fanout".into(),
            serde_json::json!({
                "gateways": fanout["gateways"].clone(),
                "per_gateway": fanout["per_gateway"].clone(),
                "busiest_gateway": row(
                    "fanout: busiest of 3 gateways' client messages vs all",
                    compared(busiest, published, "messages"),
                ),
            }),
        );
    }
    if let Some(geo) = read("geo") {
        report.insert(
            "geo".into(),
            serde_json::json!({
                "updates": row(
                    "geo: index updates/s vs Redis GEOADD",
                    compared(
                        number(&geo, &["geo", "index_updates_per_sec"]),
                        number(&geo, &["geo", "redis_updates_per_sec"]),
                        "per second",
                    ),
                ),
                "queries": row(
                    "geo: nearest-10 queries/s vs Redis GEOSEARCH",
                    compared(
                        number(&geo, &["geo", "index_queries_per_sec"]),
                        number(&geo, &["geo", "redis_queries_per_sec"]),
                        "per second",
                    ),
                ),
            }),
        );
    }
    if let Some(trips) = read("trips") {
        report.insert(
            "trips".into(),
            serde_json::json!({
                "transitions": row(
                    "trips: transitions/s vs plain inserts",
                    compared(
                        number(&trips, &["trips", "transitions_per_sec"]),
                        number(&trips, &["trips", "plain_inserts_per_sec"]),
                        "per second",
                    ),
                ),
                "breadcrumbs": row(
                    "trips: breadcrumb rows/s vs plain inserts",
                    compared(
                        number(&trips, &["trips", "breadcrumb_rows_per_sec"]),
                        number(&trips, &["trips", "breadcrumb_plain_inserts_per_sec"]),
                        "per second",
                    ),
                ),
            }),
        );
    }
    if let Some(api) = read("api") {
        report.insert(
            "api".into(),
            serde_json::json!({
                "get_job_p99_ms": row(
                    "api: GET /v1/jobs/{id} p99 ms at 2,000/s vs /healthz, worst run",
                    compared(
                        number(&api, &["worst_get_job_p99_ms"]),
                        number(&api, &["worst_healthz_p99_ms"]),
                        "ms",
                    ),
                ),
                "creates_per_sec": row(
                    "api: POST /v1/jobs creates/s vs the store alone, lowest run",
                    compared(
                        number(&api, &["lowest_creates_per_sec"]),
                        number(&api, &["lowest_store_creates_per_sec"]),
                        "per second",
                    ),
                ),
                "most_creates_lost": api["most_creates_lost"].clone(),
                "runs": api["runs"].clone(),
            }),
        );
    }
    let mut report = serde_json::Value::Object(report);
    let verdicts = targets::judge_all(&report);
    report["targets"] = targets::to_json(&verdicts);
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let ingest_chart = ingest.as_ref().map(ingest_chart);
    if let Some(svg) = &ingest_chart {
        std::fs::write(dir.join("ingest.svg"), svg)?;
    }
    let header = format!(
        "{:<44} {:>14} {:>14} {:>8}",
        "figure", "value", "baseline", "ratio"
    );
    let verdict_rows: Vec<Vec<String>> = verdicts
        .iter()
        .map(|v| {
            let outcome = match &v.outcome {
                targets::Outcome::NotMeasured(why) => format!("not measured: {why}"),
                other => other.as_str().to_owned(),
            };
            vec![v.aim.to_owned(), v.measured.clone(), outcome]
        })
        .collect();
    let figures = std::iter::once(header)
        .chain(rows.iter().map(|r| {
            format!(
                "{:<44} {:>14} {:>14} {:>8} {}",
                r[0], r[1], r[2], r[3], r[4]
            )
        }))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        dir.join("report.html"),
        chart::page(
            "cargo xtask bench",
            &[
                "<h2>Aims</h2>".to_owned(),
                chart::table(&["aim", "measured", "outcome"], &verdict_rows),
                "<h2>Figures beside their baselines</h2>".to_owned(),
                chart::table(&["figure", "value", "baseline", "ratio", "unit"], &rows),
                ingest_chart.unwrap_or_default(),
            ],
        ),
    )?;
    let aims = verdict_rows
        .iter()
        .map(|r| format!("{:<72} {:<14} {}", r[0], r[1], r[2]))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(format!(
        "{figures}\n\n{:<72} {:<14} outcome\n{aims}",
        "aim", "measured"
    ))
}

/// The ingest ladder as a chart: latency quantiles by offered rate, the 10 ms aim beside them.
fn ingest_chart(ingest: &serde_json::Value) -> String {
    let steps = ingest["steps"].as_array().map_or(&[][..], Vec::as_slice);
    let quantile = |q: &str| {
        steps
            .iter()
            .filter_map(|s| Some((s["offered_per_sec"].as_f64()?, s["latency_ms"][q].as_f64()?)))
            .collect::<Vec<_>>()
    };
    let rates: Vec<f64> = steps
        .iter()
        .filter_map(|s| s["offered_per_sec"].as_f64())
        .collect();
    let span = rates
        .first()
        .zip(rates.last())
        .map(|(&a, &b)| vec![(a, 10.0), (b, 10.0)])
        .unwrap_or_default();
    let lost_from = steps
        .iter()
        .find(|s| s["lost"].as_u64().is_some_and(|lost| lost > 0))
        .and_then(|s| s["offered_per_sec"].as_f64());
    let title = match lost_from {
        Some(rate) => {
            format!("Position latency end to end by offered rate (updates lost from {rate:.0}/s)")
        }
        None => "Position latency end to end by offered rate".to_owned(),
    };
    Chart::new(title, "offered updates/s", "ms")
        .log_y()
        .with(Series::new("p50", "#1b9e77", quantile("p50")))
        .with(Series::new("p99", "#d95f02", quantile("p99")))
        .with(Series::new("p999", "#7570b3", quantile("p999")))
        .with(Series::new("p99 aim (10 ms)", "#999999", span).dashed())
        .svg()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_report_gathers_every_figure_judges_the_aims_and_plots_the_ingest_ladder() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, value: serde_json::Value| {
            std::fs::write(dir.join(format!("{name}.json")), value.to_string()).unwrap();
        };
        let step = |rate: f64, lost: u64, p99: f64| {
            json!({"offered_per_sec": rate, "lost": lost,
                   "latency_ms": {"p50": 1.0, "p99": p99, "p999": p99 * 2.0}})
        };
        write(
            "ingest",
            json!({
                "lossless_updates_per_sec": 100_287.0,
                "bare_nats_messages_per_sec": 1_252_999.0,
                "sends": "spread",
                "latency": {"at_50_percent": {"rate_per_sec": 50_143, "lost": 0,
                            "latency_ms": {"p50": 2.29, "p99": 3.73, "p999": 4.79}}},
                "steps": [step(5_014.0, 0, 3.0), step(100_287.0, 0, 8.1), step(120_378.0, 29_316, 31.1)],
                "zones": {"zones": 10_000, "ratio": {"min": 0.83, "max": 0.91},
                          "events": {"event_latency_ms": {"p99": {"min": 21.0, "max": 64.0}}}},
            }),
        );
        write(
            "connections",
            json!({
                "open_file_limit": 20_000,
                "gateway": {"connections": 18_000, "bytes_per_connection": 3_968.0, "idle_cpu_percent": 1.4},
                "bare_tungstenite": {"connections": 18_000, "bytes_per_connection": 2_977.0, "idle_cpu_percent": 0.0},
            }),
        );
        write(
            "fanout",
            json!({
                "gateways": 3,
                "published": 9_000.0,
                "per_gateway": [
                    {"id": "gw-a", "received": 3_100.0, "share": 0.344},
                    {"id": "gw-b", "received": 2_950.0, "share": 0.328},
                    {"id": "gw-c", "received": 2_990.0, "share": 0.332},
                ],
            }),
        );
        let city = |drivers: u64, match_p99: (f64, f64), location_p99: (f64, f64)| {
            json!({"drivers": drivers, "runs": [], "spread": {
                "match_p99_ms": {"min": match_p99.0, "max": match_p99.1},
                "location_p99_ms": {"min": location_p99.0, "max": location_p99.1},
                "lost": {"min": 0.0, "max": 0.0},
                "double_assigned": {"min": 0.0, "max": 0.0},
            }})
        };
        write(
            "city",
            json!({"scenarios": [city(200, (9.0, 12.0), (3.0, 4.0)), city(10_000, (80.0, 120.0), (20.0, 30.0))]}),
        );
        write(
            "api",
            json!({
                "runs": [],
                "worst_get_job_p99_ms": 6.1,
                "worst_healthz_p99_ms": 4.0,
                "lowest_creates_per_sec": 2_100.0,
                "lowest_store_creates_per_sec": 2_700.0,
                "most_creates_lost": 0.0,
            }),
        );
        let table = assemble(&dir).unwrap();
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(report["ingest"]["lossless_updates"]["value"], 100_287.0);
        assert_eq!(report["connections"]["open_file_limit"], 20_000);
        let outcomes: Vec<&str> = report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["outcome"].as_str().unwrap())
            .collect();
        // Ingest (2), the fan-out and memory met; the ingest spread (2), the fleet and
        // matching (5) not measured; the city of 10,000 drivers slower to offer than its aim
        // (its worst run), fast enough with positions, and losing nothing; ingest with zones
        // fast enough in every climb; the API's reads slower than their aim in the worst run,
        // its creates fast enough; and zone events slower than their aim in the worst run.
        assert_eq!(
            outcomes,
            [
                "met",
                "met",
                "not measured",
                "not measured",
                "not measured",
                "not measured",
                "met",
                "met",
                "missed",
                "met",
                "met",
                "not measured",
                "not measured",
                "not measured",
                "not measured",
                "met",
                "missed",
                "met",
                "missed",
            ]
        );
        assert_eq!(report["api"]["creates_per_sec"]["ratio"], 2_100.0 / 2_700.0);
        assert!(table.contains("api: GET /v1/jobs/{id} p99 ms at 2,000/s vs /healthz"));
        assert_eq!(
            report["city"]["at_10000_drivers"]["match_p99_ms"]["max"],
            120.0
        );
        assert_eq!(report["fanout"]["busiest_gateway"]["value"], 3_100.0);
        assert!(table.contains("ingest: lossless updates/s vs bare async-nats"));
        assert!(table.contains("fanout: busiest of 3 gateways"));
        let svg = std::fs::read_to_string(dir.join("ingest.svg")).unwrap();
        assert!(svg.contains("updates lost from 120378/s"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        let page = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert!(page.contains("<svg") && page.contains("at most 4 KiB of gateway memory"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
