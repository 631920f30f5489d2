//! Where a step's lost positions went: the gateway's own counts of what it read, published,
//! dropped and refused during the step, and the slow-consumer events of the subscriber that
//! counts what arrived. A lossy step prints them, so a climb that ends on a handful of lost
//! positions says whether the gateway dropped them, NATS did, or they were still on their way
//! when the step's two seconds of grace ran out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The gateway's series that account for positions.
const SERIES: &[&str] = &[
    "gateway_messages_total{kind=\"location\"}",
    "gateway_positions_published_total",
    "gateway_positions_dropped_total",
    "gateway_rejects_total",
    "gateway_closes_total",
];

/// The gateway's position counters at one moment, by series (labels included).
#[derive(Debug, Default)]
pub struct Counts(BTreeMap<String, f64>);

impl Counts {
    /// Reads the gateway's `/metrics`; empty when it cannot be read (the report says so).
    pub async fn read(gateway_http: SocketAddr) -> Self {
        let Ok(answer) = reqwest::get(format!("http://{gateway_http}/metrics")).await else {
            return Self::default();
        };
        let Ok(text) = answer.text().await else {
            return Self::default();
        };
        Self(
            text.lines()
                .filter(|line| SERIES.iter().any(|s| line.starts_with(s)))
                .filter_map(|line| {
                    let (series, value) = line.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// What moved since `before`, series by series.
    pub fn since(&self, before: &Counts) -> Vec<(String, f64)> {
        self.0
            .iter()
            .map(|(series, value)| {
                let was = before.0.get(series).copied().unwrap_or(0.0);
                (series.clone(), value - was)
            })
            .filter(|(_, moved)| *moved != 0.0)
            .collect()
    }
}

/// Slow-consumer events of a NATS connection: each one is a message the client dropped.
pub fn slow_consumer_counter() -> (Arc<AtomicU64>, async_nats::ConnectOptions) {
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    let options = async_nats::ConnectOptions::new().event_callback(move |event| {
        let seen = seen.clone();
        async move {
            if matches!(event, async_nats::Event::SlowConsumer(_)) {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (count, options)
}

/// One line on what a lossy step's positions did.
pub fn report(lost: u64, moved: &[(String, f64)], slow_consumer: u64) -> String {
    let moved = match moved {
        [] => "nothing (or its metrics could not be read)".to_owned(),
        _ => moved
            .iter()
            .map(|(series, n)| format!("{series} +{n}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    format!(
        "    lost {lost}: the gateway counted {moved}; the subscriber's slow-consumer events: {slow_consumer}"
    )
}
