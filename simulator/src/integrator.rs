//! An integrator's server beside the city: it creates jobs through the trips service's `/v1`
//! API at a steady rate, a share of them scheduled a little ahead, each with its own
//! idempotency key (a retry after a failed answer is the same job), and at the end reads back
//! where every job it created got to. The city's drivers serve them like riders' requests.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::time::now_ms;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Settings;

/// Where the API is and what to send it.
#[derive(Debug, Clone)]
pub struct Jobs {
    /// The trips service's base URL, `http://host:port`.
    pub api: String,
    /// An API key with the `jobs:write` scope.
    pub key: String,
    pub per_sec: f64,
    /// The share of jobs given a pickup time ahead.
    pub scheduled_share: f64,
    /// How far ahead scheduled pickups are: evenly between a third of this and all of it.
    pub ahead: Duration,
    /// A scheduled job's pickup window.
    pub window: Duration,
}

/// Where the jobs got to. Field names are stable.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct JobsReport {
    pub created: u64,
    pub scheduled: u64,
    /// Creates the API refused (a problem document); none are expected.
    pub refused: u64,
    /// Creates with no answer after every retry.
    pub failed: u64,
    /// Each job's state when the run ended, by state.
    pub by_state: BTreeMap<String, u64>,
}

/// Sends a create, retrying a failed exchange with the same idempotency key.
async fn create(client: &reqwest::Client, jobs: &Jobs, body: &Value, key: &str) -> Option<Value> {
    for attempt in 0..3u64 {
        let sent = client
            .post(format!("{}/v1/jobs", jobs.api))
            .bearer_auth(&jobs.key)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        // An answer below 500 is final: the job, or a refusal to report.
        if let Ok(response) = sent
            && response.status().as_u16() < 500
        {
            return Some(response.json().await.unwrap_or(Value::Null));
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    None
}

/// Creates jobs until `stop`, then, once `read` is cancelled (open trips had their time to
/// end), reads where each got to.
pub async fn run(
    settings: std::sync::Arc<Settings>,
    jobs: Jobs,
    stop: CancellationToken,
    read: CancellationToken,
) -> JobsReport {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client builds");
    let mut rng = StdRng::seed_from_u64(settings.seed ^ 0x6a6f6273);
    let mut report = JobsReport::default();
    let mut ids = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / jobs.per_sec.max(1e-3)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        n += 1;
        let pickup = settings.city.random_point(&mut rng);
        let dropoff = settings.city.random_point(&mut rng);
        let mut body = json!({
            "pickup": pickup,
            "dropoff": dropoff,
            "customer_id": format!("sim-customer-{}", n % 50),
            "external_ref": format!("sim-{}-{n}", settings.run_id),
        });
        let scheduled = rng.random_bool(jobs.scheduled_share.clamp(0.0, 1.0));
        if scheduled {
            let ahead_ms = jobs.ahead.as_millis() as i64;
            let pickup_at = now_ms() + rng.random_range(ahead_ms / 3..=ahead_ms.max(1));
            body["pickup_at"] = json!(pickup_at);
            body["window_s"] = json!(jobs.window.as_secs().clamp(5, 86_400));
        }
        let key = format!("sim-{}-{n}", settings.run_id);
        match create(&client, &jobs, &body, &key).await {
            Some(answer) => match answer["trip_id"].as_str() {
                Some(id) => {
                    report.created += 1;
                    report.scheduled += u64::from(scheduled);
                    ids.push(id.to_owned());
                }
                None => {
                    tracing::warn!(%answer, "a job was refused");
                    report.refused += 1;
                }
            },
            None => report.failed += 1,
        }
    }
    read.cancelled().await;
    for id in ids {
        let state = async {
            let answer: Value = client
                .get(format!("{}/v1/jobs/{id}", jobs.api))
                .bearer_auth(&jobs.key)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            answer["state"].as_str().map(str::to_owned)
        }
        .await
        .unwrap_or_else(|| "unknown".into());
        *report.by_state.entry(state).or_default() += 1;
    }
    report
}
