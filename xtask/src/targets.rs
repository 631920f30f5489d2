//! The capacity aims of BENCHMARKS.md, judged on the report `cargo xtask bench` assembles: each
//! met, missed, or not measured (and why), so a run says plainly where the system stands.

use serde_json::Value;

/// How one aim came out.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Met,
    Missed,
    /// Not measured in this run: its benchmark was not run, or this machine cannot run it.
    NotMeasured(String),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "missed",
            Self::NotMeasured(_) => "not measured",
        }
    }
}

/// One aim and what the run measured for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub aim: &'static str,
    /// The measured figure, or empty when there is none.
    pub measured: String,
    pub outcome: Outcome,
}

/// The number at `path` in `report`, if the run produced it.
fn at(report: &Value, path: &[&str]) -> Option<f64> {
    path.iter()
        .try_fold(report, |v, key| v.get(key))?
        .as_f64()
        .filter(|v| v.is_finite())
}

/// Met when `ok(value)`; not measured when the benchmark left no figure.
fn judge(
    aim: &'static str,
    value: Option<f64>,
    show: impl Fn(f64) -> String,
    ok: impl Fn(f64) -> bool,
) -> Verdict {
    match value {
        Some(v) => Verdict {
            aim,
            measured: show(v),
            outcome: if ok(v) { Outcome::Met } else { Outcome::Missed },
        },
        None => Verdict {
            aim,
            measured: String::new(),
            outcome: Outcome::NotMeasured("its benchmark was not run".into()),
        },
    }
}

/// Connections the gateways of a deployment should hold together.
pub const CONNECTIONS: f64 = 100_000.0;

/// Every aim, judged on an assembled report (the shape of `target/bench/report.json`).
pub fn judge_all(report: &Value) -> Vec<Verdict> {
    let lossless = at(report, &["ingest", "lossless_updates", "value"]);
    let p99_half = at(
        report,
        &["ingest", "latency_ms", "at_50_percent", "latency_ms", "p99"],
    );
    let offer_p99 = at(report, &["matching", "ample_supply_greedy_offer_p99_ms"]);
    // Over every climb of the ladder: the worst, so one lucky climb does not meet an aim.
    let knee = at(report, &["ingest", "spread", "knee_per_sec", "min"]);
    let ratio = at(report, &["ingest", "spread", "ratio", "min"]);
    let busiest_share = at(report, &["fanout", "busiest_gateway", "ratio"]);
    let bytes = at(report, &["connections", "bytes_per_connection", "value"]);
    // A matching figure over its baseline from the same run.
    let matching_ratio = |figure: &str| {
        let side = |key: &str| at(report, &["matching", figure, key]);
        side("value")
            .zip(side("baseline"))
            .map(|(value, baseline)| value / baseline.max(1e-9))
    };
    let served = |key: &str| at(report, &["matching", "high_load_service_rate", key]);
    let pickup_ratio = matching_ratio("high_load_mean_pickup_time_s");
    let offer_p99_ratio = matching_ratio("high_load_offer_p99_ms");
    let road_ratio = matching_ratio("roads_mean_pickup_time_s");
    // Tracking: ingest with 10,000 zones over ingest without, climb by climb, and zone events
    // from a client's send to the webhook: the worst of each.
    let zones_ratio = at(report, &["ingest", "zones", "ratio", "min"]);
    let event_p99 = at(
        report,
        &[
            "ingest",
            "zones",
            "events",
            "event_latency_ms",
            "p99",
            "max",
        ],
    );
    // The integrator API: the worst of three runs each.
    let get_job_p99 = at(report, &["api", "get_job_p99_ms", "value"]);
    let creates = at(report, &["api", "creates_per_sec", "value"]);
    let creates_lost = at(report, &["api", "most_creates_lost"]);
    let served_difference = served("value")
        .zip(served("baseline"))
        .map(|(batched, greedy)| batched - greedy);

    // The city at 10,000 drivers: the worst of its runs.
    let city = |key: &str| at(report, &["city", "at_10000_drivers", key, "max"]);
    let city_failures = city("lost")
        .zip(city("double_assigned"))
        .map(|(l, d)| l + d);
    let fleet_held = at(report, &["fleet", "held"]);
    let fleet_gateways = at(report, &["fleet", "gateways"]);
    let connections = judge(
        "at least 100,000 concurrent connections across 6 or more gateways",
        fleet_held.zip(fleet_gateways).map(|(held, _)| held),
        |v| {
            format!(
                "{v:.0} held by {:.0} gateways",
                fleet_gateways.unwrap_or(f64::NAN)
            )
        },
        |v| v >= CONNECTIONS && fleet_gateways.is_some_and(|g| g >= 6.0),
    );
    vec![
        judge(
            "at least 100,000 position updates/s end to end, none lost",
            lossless,
            |v| format!("{v:.0}/s"),
            |v| v >= 100_000.0,
        ),
        judge(
            "position latency p99 at most 10 ms at half the lossless rate",
            p99_half,
            |v| format!("{v:.2} ms"),
            |v| v <= 10.0,
        ),
        judge(
            "knee (highest rate with position p99 at most 10 ms) at least 80,000/s, every climb",
            knee,
            |v| format!("{v:.0}/s at the lowest"),
            |v| v >= 80_000.0,
        ),
        judge(
            "lossless ingest at least 0.10 of bare async-nats, every climb",
            ratio,
            |v| format!("{v:.3} at the lowest"),
            |v| v >= 0.10,
        ),
        judge(
            "request to offer p99 at most 25 ms with the greedy strategy",
            offer_p99,
            |v| format!("{v:.2} ms"),
            |v| v <= 25.0,
        ),
        connections,
        judge(
            "of 3 gateways, none receives more than 40% of all client messages",
            busiest_share,
            |v| format!("{:.1}% at the busiest", v * 100.0),
            |v| v <= 0.40,
        ),
        judge(
            "at most 4 KiB of gateway memory per idle connection",
            bytes,
            |v| format!("{v:.0} bytes"),
            |v| v <= 4_096.0,
        ),
        judge(
            "city of 10,000 drivers, 20 requests/s: request to offer p99 at most 25 ms, every run",
            city("match_p99_ms"),
            |v| format!("{v:.1} ms at the worst"),
            |v| v <= 25.0,
        ),
        judge(
            "city of 10,000 drivers: location p99 at most 50 ms, every run",
            city("location_p99_ms"),
            |v| format!("{v:.1} ms at the worst"),
            |v| v <= 50.0,
        ),
        judge(
            "city of 10,000 drivers: no request lost or double-assigned, every run",
            city_failures,
            |v| format!("{v:.0} at the worst"),
            |v| v == 0.0,
        ),
        judge(
            "batched matching lowers mean pickup time by at least 25% at high load",
            pickup_ratio,
            |v| format!("{:.1}% lower", (1.0 - v) * 100.0),
            |v| v <= 0.75,
        ),
        judge(
            "batched matching's request-to-offer p99 is no worse than greedy's at high load",
            offer_p99_ratio,
            |v| format!("{v:.2} × greedy's"),
            |v| v <= 1.0,
        ),
        judge(
            "ranking by road ETA lowers mean pickup time on the road scenario",
            road_ratio,
            |v| format!("{:+.1}%", (v - 1.0) * 100.0),
            |v| v < 1.0,
        ),
        judge(
            "batched matching serves no smaller share of requests at high load",
            served_difference,
            |v| format!("{:+.1} points", v * 100.0),
            |v| v >= 0.0,
        ),
        judge(
            "ingest with 10,000 zones at least 0.8 of ingest with none, every climb",
            zones_ratio,
            |v| format!("{v:.3} at the lowest"),
            |v| v >= 0.8,
        ),
        judge(
            "GET /v1/jobs/{id} p99 at most 5 ms at 2,000 requests/s, every run",
            get_job_p99,
            |v| format!("{v:.2} ms at the worst"),
            |v| v <= 5.0,
        ),
        judge(
            "POST /v1/jobs at least 2,000 creates/s with none lost, every run",
            creates
                .zip(creates_lost)
                .map(|(rate, lost)| if lost > 0.0 { 0.0 } else { rate }),
            |v| format!("{v:.0}/s at the lowest"),
            |v| v >= 2_000.0,
        ),
        judge(
            "zone event, position sent to webhook received, p99 at most 50 ms at half the lossless rate, every run",
            event_p99,
            |v| format!("{v:.0} ms at the worst"),
            |v| v <= 50.0,
        ),
    ]
}

/// The verdicts as report.json carries them.
pub fn to_json(verdicts: &[Verdict]) -> Value {
    verdicts
        .iter()
        .map(|v| {
            let why = match &v.outcome {
                Outcome::NotMeasured(why) => Value::String(why.clone()),
                _ => Value::Null,
            };
            serde_json::json!({
                "aim": v.aim,
                "measured": v.measured,
                "outcome": v.outcome.as_str(),
                "why": why,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn report(lossless: f64, p99: f64, held: f64, limit: f64, pickup: (f64, f64)) -> Value {
        json!({
            "fleet": {"held": held, "gateways": 6.0, "open_file_limit": limit},
            "ingest": {
                "lossless_updates": {"value": lossless, "baseline": 1.2e6},
                "latency_ms": {"at_50_percent": {"latency_ms": {"p50": 2.0, "p99": p99}}},
                "spread": {"knee_per_sec": {"min": 85_000.0}, "ratio": {"min": 0.11}},
                "zones": {"ratio": {"min": 0.84}, "events": {"event_latency_ms": {"p99": {"max": 31.0}}}},
            },
            "connections": {
                "held": held,
                "open_file_limit": limit,
                "bytes_per_connection": {"value": 3_968.0, "baseline": 2_977.0},
            },
            "fanout": {"busiest_gateway": {"value": 3_400.0, "baseline": 10_000.0, "ratio": 0.34}},
            "city": {"at_10000_drivers": {
                "match_p99_ms": {"min": 12.0, "max": 20.0},
                "location_p99_ms": {"min": 30.0, "max": 45.0},
                "lost": {"min": 0.0, "max": 0.0},
                "double_assigned": {"min": 0.0, "max": 0.0},
            }},
            "matching": {
                "ample_supply_greedy_offer_p99_ms": 9.6,
                "high_load_mean_pickup_time_s": {"value": pickup.0, "baseline": pickup.1},
                "high_load_service_rate": {"value": 1.0, "baseline": 1.0},
                "high_load_offer_p99_ms": {"value": 11_000.0, "baseline": 12_000.0},
                "roads_mean_pickup_time_s": {"value": 50.0, "baseline": 55.0},
            },
            "api": {
                "get_job_p99_ms": {"value": 3.1, "baseline": 1.2},
                "creates_per_sec": {"value": 2_400.0, "baseline": 3_000.0},
                "most_creates_lost": 0.0,
            },
        })
    }

    fn verdict<'a>(verdicts: &'a [Verdict], aim_starts: &str) -> &'a Verdict {
        verdicts
            .iter()
            .find(|v| v.aim.starts_with(aim_starts))
            .unwrap_or_else(|| panic!("no aim starting {aim_starts:?}"))
    }

    fn outcome(verdicts: &[Verdict], aim_starts: &str) -> Outcome {
        verdict(verdicts, aim_starts).outcome.clone()
    }

    #[test]
    fn figures_on_the_right_side_of_every_aim_are_met() {
        let verdicts = judge_all(&report(100_287.0, 3.73, 100_000.0, 1e6, (134.4, 221.7)));
        assert_eq!(verdicts.len(), 19);
        for v in &verdicts {
            assert_eq!(v.outcome, Outcome::Met, "{}: {}", v.aim, v.measured);
        }
        assert_eq!(verdicts[0].measured, "100287/s");
        assert_eq!(outcome(&verdicts, "batched matching lowers"), Outcome::Met);
        assert!(
            verdict(&verdicts, "batched matching lowers")
                .measured
                .starts_with("39.4% lower")
        );
        assert_eq!(
            verdict(&verdicts, "of 3 gateways").measured,
            "34.0% at the busiest"
        );
        assert_eq!(verdict(&verdicts, "knee").measured, "85000/s at the lowest");
    }

    #[test]
    fn figures_on_the_wrong_side_are_missed() {
        let verdicts = judge_all(&report(99_961.0, 10.5, 100_000.0, 1e6, (200.0, 210.0)));
        assert_eq!(outcome(&verdicts, "at least 100,000"), Outcome::Missed);
        assert_eq!(outcome(&verdicts, "position latency"), Outcome::Missed);
        assert_eq!(
            outcome(&verdicts, "batched matching lowers"),
            Outcome::Missed
        );
        assert_eq!(outcome(&verdicts, "request to offer"), Outcome::Met);
        let mut slower = report(99_961.0, 10.5, 100_000.0, 1e6, (100.0, 210.0));
        slower["matching"]["high_load_offer_p99_ms"] =
            json!({"value": 20_800.0, "baseline": 12_400.0});
        slower["matching"]["roads_mean_pickup_time_s"] = json!({"value": 61.0, "baseline": 61.0});
        let verdicts = judge_all(&slower);
        assert_eq!(outcome(&verdicts, "batched matching lowers"), Outcome::Met);
        assert_eq!(
            outcome(&verdicts, "batched matching's request-to-offer p99"),
            Outcome::Missed
        );
        assert_eq!(
            verdict(&verdicts, "batched matching's request-to-offer p99").measured,
            "1.68 × greedy's"
        );
        assert_eq!(outcome(&verdicts, "ranking by road ETA"), Outcome::Missed);
        let mut zones = report(100_287.0, 3.73, 102_000.0, 1e6, (1.0, 2.0));
        zones["ingest"]["zones"] =
            json!({"ratio": {"min": 0.79}, "events": {"event_latency_ms": {"p99": {"max": 51.0}}}});
        let verdicts = judge_all(&zones);
        assert_eq!(
            outcome(&verdicts, "ingest with 10,000 zones"),
            Outcome::Missed
        );
        assert_eq!(outcome(&verdicts, "zone event"), Outcome::Missed);
        // The API: slow reads, and fast creates that lost one.
        let mut api = report(100_287.0, 3.73, 102_000.0, 1e6, (1.0, 2.0));
        api["api"]["get_job_p99_ms"]["value"] = json!(5.4);
        api["api"]["most_creates_lost"] = json!(1.0);
        let verdicts = judge_all(&api);
        assert_eq!(outcome(&verdicts, "GET /v1/jobs"), Outcome::Missed);
        assert_eq!(outcome(&verdicts, "POST /v1/jobs"), Outcome::Missed);
    }

    #[test]
    fn a_city_run_slower_than_an_aim_or_losing_a_request_misses_it() {
        let mut city = report(100_287.0, 3.73, 102_000.0, 1e6, (1.0, 2.0));
        city["city"]["at_10000_drivers"]["match_p99_ms"]["max"] = json!(31.0);
        city["city"]["at_10000_drivers"]["lost"]["max"] = json!(1.0);
        let verdicts = judge_all(&city);
        assert_eq!(
            outcome(&verdicts, "city of 10,000 drivers, 20"),
            Outcome::Missed
        );
        assert_eq!(
            verdict(&verdicts, "city of 10,000 drivers, 20").measured,
            "31.0 ms at the worst"
        );
        assert_eq!(
            outcome(&verdicts, "city of 10,000 drivers: location"),
            Outcome::Met
        );
        assert_eq!(
            outcome(&verdicts, "city of 10,000 drivers: no request"),
            Outcome::Missed
        );
    }

    #[test]
    fn a_fleet_short_of_100000_or_on_fewer_than_6_gateways_is_missed() {
        let verdicts = judge_all(&report(100_287.0, 3.73, 102_000.0, 20_000.0, (1.0, 2.0)));
        assert_eq!(
            outcome(&verdicts, "at least 100,000 concurrent"),
            Outcome::Met
        );
        assert_eq!(
            verdict(&verdicts, "at least 100,000 concurrent").measured,
            "102000 held by 6 gateways"
        );
        let verdicts = judge_all(&report(100_287.0, 3.73, 98_000.0, 20_000.0, (1.0, 2.0)));
        assert_eq!(
            outcome(&verdicts, "at least 100,000 concurrent"),
            Outcome::Missed
        );
        let mut few = report(100_287.0, 3.73, 102_000.0, 20_000.0, (1.0, 2.0));
        few["fleet"]["gateways"] = json!(5.0);
        let verdicts = judge_all(&few);
        assert_eq!(
            outcome(&verdicts, "at least 100,000 concurrent"),
            Outcome::Missed
        );
    }

    #[test]
    fn a_benchmark_that_did_not_run_is_not_measured() {
        let verdicts = judge_all(&json!({"geo": {}}));
        assert!(
            verdicts
                .iter()
                .all(|v| matches!(v.outcome, Outcome::NotMeasured(_)) && v.measured.is_empty())
        );
        let json = to_json(&verdicts);
        assert_eq!(json[0]["outcome"], "not measured");
        assert_eq!(json[0]["why"], "its benchmark was not run");
    }
}
