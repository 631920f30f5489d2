//! Where a ride request's and a position's time went, hop by hop: the quantiles of the
//! services' per-hop histograms (ARCHITECTURE.md lists them), read from their `/metrics`.

use std::collections::BTreeMap;

/// Label names and values a series must carry.
type Labels = &'static [(&'static str, &'static str)];

/// Each hop: its name in the report, the histogram, and the labels its series must carry.
const HOPS: &[(&str, &str, Labels)] = &[
    (
        "request: gateway to trips and back (create)",
        "gateway_command_duration_seconds",
        &[("kind", "request_ride")],
    ),
    (
        "request: create in the trips service",
        "trips_command_duration_seconds",
        &[("command", "create_trip")],
    ),
    (
        "request: commit to matcher (outbox, NATS)",
        "matcher_request_age_seconds",
        &[],
    ),
    (
        "request: matcher, received to offer stored",
        "matcher_match_latency_seconds",
        &[],
    ),
    (
        "request: matcher round",
        "matcher_round_duration_seconds",
        &[],
    ),
    (
        "request: offer written in the trips service",
        "trips_command_duration_seconds",
        &[("command", "offer")],
    ),
    (
        "request: offer commit to driver's gateway (outbox, NATS)",
        "gateway_trip_delivery_age_seconds",
        &[("kind", "offer")],
    ),
    (
        "position: gateway to matcher (publisher, NATS)",
        "matcher_position_age_seconds",
        &[],
    ),
];

/// Every hop's count and p50 and p99 in milliseconds, over the `/metrics` texts of every
/// service (replicas' histograms add up).
pub fn breakdown(texts: &[String]) -> BTreeMap<&'static str, serde_json::Value> {
    let mut hops = BTreeMap::new();
    for (hop, metric, labels) in HOPS {
        let buckets = buckets(texts, metric, labels);
        let Some(&(_, total)) = buckets.last() else {
            continue;
        };
        if total <= 0.0 {
            continue;
        }
        let ms = |q: f64| quantile(&buckets, q).map(|s| s * 1000.0);
        hops.insert(
            *hop,
            serde_json::json!({"metric": metric, "count": total, "p50_ms": ms(0.5), "p99_ms": ms(0.99)}),
        );
    }
    hops
}

/// The cumulative buckets (upper bound, count) of `metric`'s series carrying `labels`, summed
/// over every text, in order of bound.
fn buckets(texts: &[String], metric: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let mut sums: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    let prefix = format!("{metric}_bucket{{");
    for line in texts.iter().flat_map(|t| t.lines()) {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        if !labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        let Some(le) = rest.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(b) => b,
                Err(_) => continue,
            }
        };
        let Some(count) = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok()) else {
            continue;
        };
        // Keyed by the bound's bits: non-negative floats order as their bits do.
        sums.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += count;
    }
    sums.into_values().collect()
}

/// The `q` quantile, interpolated within its bucket as Prometheus's `histogram_quantile` does;
/// in the open last bucket, that bucket's lower bound.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let share = (rank - below) / (count - below).max(f64::MIN_POSITIVE);
            return Some(lower + (bound - lower) * share);
        }
        (lower, below) = (bound, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_add_up_and_quantiles_interpolate_within_their_bucket() {
        let replica = |a: u32, b: u32, c: u32| {
            format!(
                "matcher_request_age_seconds_bucket{{le=\"0.001\"}} {a}\n\
                 matcher_request_age_seconds_bucket{{le=\"0.01\"}} {b}\n\
                 matcher_request_age_seconds_bucket{{le=\"+Inf\"}} {c}\n\
                 gateway_command_duration_seconds_bucket{{kind=\"go_online\",le=\"0.001\"}} 5\n"
            )
        };
        // 100 in all: 50 under 1 ms, 98 under 10 ms.
        let hops = breakdown(&[replica(30, 60, 60), replica(20, 38, 40)]);
        let age = &hops["request: commit to matcher (outbox, NATS)"];
        assert_eq!(age["count"], 100.0);
        assert!((age["p50_ms"].as_f64().unwrap() - 1.0).abs() < 1e-9);
        // The 99th is in the open bucket: its lower bound.
        assert!((age["p99_ms"].as_f64().unwrap() - 10.0).abs() < 1e-9);
        // A hop with no series of its labels is left out.
        assert!(!hops.contains_key("request: gateway to trips and back (create)"));
    }
}
