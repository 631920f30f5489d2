//! Sends the queued webhook deliveries, one replica at a time.
//!
//! The replica holding a session advisory lock delivers; when its connection to PostgreSQL
//! goes (a failover, a partition), the lock goes with it and another replica takes over.
//! Each endpoint has a worker of its own, so a slow, failing or hanging endpoint only ever
//! holds up itself. A worker keeps up to [`DeliverySettings::concurrency`] requests in
//! flight, each for a different ordering key (a driver, a trip), and sends only the oldest
//! delivery of each key: one key's events arrive in order. A failed attempt is retried with
//! jittered exponential backoff; one still failing [`DeliverySettings::max_age`] after it was
//! queued is marked dead, and the key's later deliveries go on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use deadpool_postgres::tokio_postgres::types::ToSql;
use futures_util::StreamExt;
use protocol::Subjects;
use protocol::events::{self, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::policy::Destinations;
use crate::error::StoreError;
use crate::meters as m;

/// The advisory lock the delivering replica holds for as long as it delivers.
pub const DELIVERY_LOCK: i64 = 0x0068_6f6f_6b73;

/// How deliveries are sent and retried.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// How long one request may take, connecting included.
    pub timeout: Duration,
    /// How long a delivery is retried before it is dead.
    pub max_age: Duration,
    /// The first retry's delay, doubled each time up to `max_backoff` (each less up to half,
    /// at random).
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Requests in flight per endpoint.
    pub concurrency: usize,
    /// How often the queue is looked at without a nudge.
    pub poll: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(24 * 3600),
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            concurrency: 16,
            poll: Duration::from_millis(500),
        }
    }
}

impl DeliverySettings {
    /// The delay before the attempt after `attempts` failed ones.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let doubled = self
            .base_backoff
            .saturating_mul(1u32 << attempts.clamp(0, 20) as u32);
        let capped = doubled.min(self.max_backoff);
        capped.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// An endpoint as its worker needs it.
#[derive(Debug, Clone, PartialEq)]
struct Endpoint {
    id: Uuid,
    url: String,
    secret: String,
}

/// The oldest waiting delivery of one ordering key.
#[derive(Debug)]
struct Due {
    delivery_id: i64,
    event_id: String,
    key: String,
    body: String,
    event_at_ms: i64,
    /// Attempts made before this one.
    attempts: i32,
}

/// What became of one attempt.
#[derive(Debug)]
enum Outcome {
    Delivered,
    Failed(String),
}

/// Wakes this replica's delivery workers when deliveries were queued: through the bus
/// (`{p}.hooks.due`) when another replica queued them, directly when this one did and also
/// delivers, which spares a round trip through the NATS server.
#[derive(Debug, Clone)]
pub struct Nudges {
    due: Arc<watch::Sender<u64>>,
    leading: Arc<AtomicBool>,
}

impl Default for Nudges {
    fn default() -> Self {
        Self {
            due: Arc::new(watch::channel(0).0),
            leading: Arc::default(),
        }
    }
}

impl Nudges {
    /// Wakes the workers if this replica delivers; `false` when another one does (then the
    /// bus must tell it).
    pub fn here(&self) -> bool {
        if !self.leading.load(Ordering::Acquire) {
            return false;
        }
        self.wake();
        true
    }

    fn wake(&self) {
        self.due.send_modify(|n| *n += 1);
    }

    fn lead(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
        metrics::gauge!(m::WEBHOOK_LEADER).set(if leading { 1.0 } else { 0.0 });
    }
}

/// Delivers until `stop`, whenever this replica holds the delivery lock.
pub async fn run(
    pool: Pool,
    nats: async_nats::Client,
    subjects: Subjects,
    destinations: Destinations,
    settings: DeliverySettings,
    nudges: Nudges,
    stop: CancellationToken,
) {
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(destinations.resolver())
        .connect_timeout(settings.timeout)
        .user_agent(concat!("dispatch-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "no HTTP client for webhooks; they are not delivered");
            return;
        }
    };
    // Nudges from the outbox of every replica, counted so each worker sees them all.
    let due = nudges.due.subscribe();
    let subscription = match nats.subscribe(subjects.hooks_due()).await {
        Ok(subscription) => Some(subscription),
        Err(error) => {
            tracing::warn!(%error, "no webhook nudges; polling only");
            None
        }
    };
    if let Some(mut subscription) = subscription {
        let (stop, nudges) = (stop.clone(), nudges.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    message = subscription.next() => match message {
                        Some(_) => nudges.wake(),
                        None => break,
                    },
                }
            }
        });
    }
    let delivery = Delivery {
        pool,
        client,
        destinations,
        settings: Arc::new(settings),
        due,
        nudges,
    };
    loop {
        if stop.is_cancelled() {
            return;
        }
        if let Err(error) = delivery.lead(&stop).await {
            tracing::debug!(%error, "webhook delivery lock not held");
        }
        delivery.nudges.lead(false);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[derive(Debug, Clone)]
struct Delivery {
    pool: Pool,
    client: reqwest::Client,
    destinations: Destinations,
    settings: Arc<DeliverySettings>,
    due: watch::Receiver<u64>,
    nudges: Nudges,
}

impl Delivery {
    /// Takes the lock if it is free and delivers while it is held; returns at once when
    /// another replica holds it.
    async fn lead(&self, stop: &CancellationToken) -> Result<(), StoreError> {
        let holder = self.pool.get().await?;
        let got: bool = holder
            .query_one("SELECT pg_try_advisory_lock($1)", &[&DELIVERY_LOCK])
            .await?
            .get(0);
        if !got {
            return Ok(());
        }
        tracing::info!("this replica delivers webhooks");
        self.nudges.lead(true);
        let mut workers: HashMap<Uuid, (Endpoint, CancellationToken)> = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            // The lock lives as long as this connection: a failed check means it may be gone.
            let alive =
                tokio::time::timeout(Duration::from_secs(2), holder.simple_query("SELECT 1"))
                    .await
                    .is_ok_and(|answer| answer.is_ok());
            if !alive {
                tracing::warn!("lost the connection holding the webhook lock; stepping down");
                break;
            }
            let endpoints = match self.endpoints().await {
                Ok(endpoints) => endpoints,
                Err(error) => {
                    tracing::warn!(%error, "webhook endpoints not read");
                    continue;
                }
            };
            workers.retain(|id, (endpoint, cancel)| {
                let keep = endpoints.get(id) == Some(endpoint);
                if !keep {
                    cancel.cancel();
                }
                keep
            });
            for (id, endpoint) in endpoints {
                if workers.contains_key(&id) {
                    continue;
                }
                let cancel = stop.child_token();
                tasks.spawn(self.clone().work(endpoint.clone(), cancel.clone()));
                workers.insert(id, (endpoint, cancel));
            }
            self.measure().await;
        }
        for (_, cancel) in workers.values() {
            cancel.cancel();
        }
        while tasks.join_next().await.is_some() {}
        let _ = holder
            .query_one("SELECT pg_advisory_unlock($1)", &[&DELIVERY_LOCK])
            .await;
        Ok(())
    }

    async fn endpoints(&self) -> Result<HashMap<Uuid, Endpoint>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                "SELECT endpoint_id, url, secret FROM webhook_endpoints",
                &[],
            )
            .await?
            .iter()
            .map(|row| {
                let endpoint = Endpoint {
                    id: row.get(0),
                    url: row.get(1),
                    secret: row.get(2),
                };
                (endpoint.id, endpoint)
            })
            .collect())
    }

    /// Records how many deliveries wait and how many are dead.
    async fn measure(&self) {
        let Ok(client) = self.pool.get().await else {
            return;
        };
        if let Ok(row) = client
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT dead), count(*) FILTER (WHERE dead) \
                 FROM webhook_deliveries",
                &[],
            )
            .await
        {
            metrics::gauge!(m::WEBHOOK_BACKLOG).set(row.get::<_, i64>(0) as f64);
            metrics::gauge!(m::WEBHOOK_DEAD).set(row.get::<_, i64>(1) as f64);
        }
    }

    /// Delivers one endpoint's queue until `stop`.
    async fn work(self, endpoint: Endpoint, stop: CancellationToken) {
        let mut due = self.due.clone();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut attempts: JoinSet<(Due, Outcome)> = JoinSet::new();
        // Attempts done whose outcome is not written yet.
        let mut finished = Vec::new();
        let mut nudged = true;
        // After outcomes that could not be written, nothing is sent until then.
        let mut hold_until = tokio::time::Instant::now();
        loop {
            // Each wake-up (attempts done, a nudge, the poll) writes what finished and looks
            // for more to send.
            let fetch = in_flight.len() < self.settings.concurrency
                && tokio::time::Instant::now() >= hold_until;
            if fetch || !finished.is_empty() {
                let done = std::mem::take(&mut finished);
                match self.turn(endpoint.id, done, &in_flight, fetch).await {
                    Ok(ready) => {
                        for delivery in ready {
                            in_flight.insert(delivery.key.clone());
                            attempts.spawn(self.clone().attempt(endpoint.clone(), delivery));
                        }
                    }
                    Err(error) => {
                        // The rows stay as they were and are attempted again, after a pause.
                        tracing::warn!(%error, "webhook queue not updated or not read");
                        hold_until = tokio::time::Instant::now() + self.settings.poll;
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(done) = attempts.join_next(), if !attempts.is_empty() => {
                    // Every attempt finished by now is written in the same round trip, so
                    // the queue moves at the rate of requests, not of statements.
                    finished.extend(done);
                    while let Some(done) = attempts.try_join_next() {
                        finished.extend(done);
                    }
                    for (delivery, _) in &finished {
                        in_flight.remove(&delivery.key);
                    }
                }
                changed = due.changed(), if nudged => {
                    // When the nudges stop, polling goes on.
                    nudged = changed.is_ok();
                }
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        }
        // Attempts in flight are let go: their deliveries stay queued and are sent again by
        // whoever delivers next (a receiver de-duplicates on the event id).
        attempts.abort_all();
    }

    /// Writes what became of `finished` (a delivered row is deleted; a failed one gets its
    /// next attempt, or the dead letter) and, when `fetch`, reads the oldest ready delivery
    /// of each ordering key not in flight, oldest first. Both go to the server in one round
    /// trip on one connection, in that order, so the read sees the outcomes just written.
    async fn turn(
        &self,
        endpoint: Uuid,
        finished: Vec<(Due, Outcome)>,
        in_flight: &HashSet<String>,
        fetch: bool,
    ) -> Result<Vec<Due>, StoreError> {
        let outcomes = Outcomes::new(finished, &self.settings);
        let client = self.pool.get().await?;
        let record = client
            .prepare_cached(
                "WITH delivered AS \
                   (DELETE FROM webhook_deliveries WHERE delivery_id = ANY($1)) \
                 UPDATE webhook_deliveries d SET attempts = d.attempts + 1, \
                   last_error = x.reason, \
                   next_attempt_at = now() + x.wait * interval '1 millisecond', \
                   dead = now() - d.queued_at > $5::float8 * interval '1 millisecond' \
                 FROM unnest($2::int8[], $3::text[], $4::float8[]) AS x(id, reason, wait) \
                 WHERE d.delivery_id = x.id RETURNING d.dead",
            )
            .await?;
        let next = client
            .prepare_cached(
                "SELECT delivery_id, event_id, ordering_key, body, \
                   (extract(epoch from event_at) * 1000)::int8, attempts \
                 FROM (SELECT DISTINCT ON (ordering_key) * FROM webhook_deliveries \
                       WHERE endpoint_id = $1 AND NOT dead \
                       ORDER BY ordering_key, delivery_id) heads \
                 WHERE next_attempt_at <= now() AND NOT (ordering_key = ANY($2::text[])) \
                 ORDER BY delivery_id LIMIT $3",
            )
            .await?;
        let max_age_ms = self.settings.max_age.as_secs_f64() * 1000.0;
        let busy: Vec<&str> = in_flight.iter().map(String::as_str).collect();
        let room = self.settings.concurrency.saturating_sub(in_flight.len()) as i64;
        // tokio-postgres sends requests in the order their futures are first polled, and
        // `join!` polls the write first.
        let writing = async {
            if outcomes.is_empty() {
                return Ok(Vec::new());
            }
            let o = &outcomes;
            let parameters: [&(dyn ToSql + Sync); 5] = [
                &o.delivered,
                &o.failed,
                &o.reasons,
                &o.waits_ms,
                &max_age_ms,
            ];
            client.query(&record, &parameters).await
        };
        let reading = async {
            if !fetch {
                return Ok(Vec::new());
            }
            client.query(&next, &[&endpoint, &busy, &room]).await
        };
        let (written, read) = tokio::join!(writing, reading);
        let dead = written?.iter().filter(|row| row.get::<_, bool>(0)).count() as u64;
        outcomes.measure(dead);
        Ok(read?
            .iter()
            .map(|row| Due {
                delivery_id: row.get(0),
                event_id: row.get(1),
                key: row.get(2),
                body: row.get(3),
                event_at_ms: row.get(4),
                attempts: row.get(5),
            })
            .collect())
    }

    /// One request: the event signed with the endpoint's secret.
    async fn attempt(self, endpoint: Endpoint, delivery: Due) -> (Due, Outcome) {
        let started = std::time::Instant::now();
        // An address in the URL is checked here; a name, by the client's resolver.
        if let Err(refused) = self.destinations.check_form(&endpoint.url) {
            let outcome = Outcome::Failed(refused.to_string());
            metrics::histogram!(m::WEBHOOK_ATTEMPT_DURATION).record(started.elapsed());
            return (delivery, outcome);
        }
        let now_s = protocol::time::now_ms() / 1000;
        let signature = events::sign(endpoint.secret.as_bytes(), now_s, delivery.body.as_bytes());
        let sent = self
            .client
            .post(&endpoint.url)
            .timeout(self.settings.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, &delivery.event_id)
            .header(TIMESTAMP_HEADER, now_s.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(delivery.body.clone())
            .send()
            .await;
        let outcome = match sent {
            Ok(response) if response.status().is_success() => Outcome::Delivered,
            Ok(response) => Outcome::Failed(format!("answered {}", response.status().as_u16())),
            Err(error) if error.is_timeout() => Outcome::Failed("timed out".into()),
            Err(error) if error.is_connect() => Outcome::Failed("could not connect".into()),
            Err(error) => {
                tracing::debug!(%error, "webhook request failed");
                Outcome::Failed("the request failed".into())
            }
        };
        metrics::histogram!(m::WEBHOOK_ATTEMPT_DURATION).record(started.elapsed());
        (delivery, outcome)
    }
}

/// What became of a round of attempts, as the statement that writes it takes them.
#[derive(Debug, Default)]
struct Outcomes {
    delivered: Vec<i64>,
    /// The delivered ones' time from the event to now.
    lags_ms: Vec<i64>,
    failed: Vec<i64>,
    reasons: Vec<String>,
    /// The delay before each failed one's next attempt.
    waits_ms: Vec<f64>,
}

impl Outcomes {
    fn new(finished: Vec<(Due, Outcome)>, settings: &DeliverySettings) -> Self {
        let now_ms = protocol::time::now_ms();
        let mut outcomes = Self::default();
        for (delivery, outcome) in finished {
            match outcome {
                Outcome::Delivered => {
                    outcomes.delivered.push(delivery.delivery_id);
                    outcomes
                        .lags_ms
                        .push((now_ms - delivery.event_at_ms).max(0));
                }
                Outcome::Failed(reason) => {
                    outcomes.failed.push(delivery.delivery_id);
                    outcomes.reasons.push(reason);
                    let wait = settings.backoff(delivery.attempts);
                    outcomes.waits_ms.push(wait.as_secs_f64() * 1000.0);
                }
            }
        }
        outcomes
    }

    fn is_empty(&self) -> bool {
        self.delivered.is_empty() && self.failed.is_empty()
    }

    /// Records them, once written, `dead` of the failed ones now dead letters.
    fn measure(&self, dead: u64) {
        for lag_ms in &self.lags_ms {
            metrics::histogram!(m::WEBHOOK_LAG).record(*lag_ms as f64 / 1000.0);
        }
        let count = |outcome: &'static str, n: u64| {
            metrics::counter!(m::WEBHOOK_DELIVERIES, "outcome" => outcome).increment(n);
        };
        count("delivered", self.delivered.len() as u64);
        count("failed", self.failed.len() as u64 - dead);
        count("dead", dead);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudge_wakes_the_workers_here_only_while_this_replica_delivers() {
        let nudges = Nudges::default();
        let mut due = nudges.due.subscribe();
        assert!(
            !nudges.here(),
            "another replica delivers: the bus must tell it"
        );
        assert!(!due.has_changed().unwrap());
        nudges.lead(true);
        assert!(nudges.here());
        assert!(due.has_changed().unwrap(), "the workers are woken");
        due.mark_unchanged();
        nudges.lead(false);
        assert!(!nudges.here());
        assert!(!due.has_changed().unwrap());
    }
}
