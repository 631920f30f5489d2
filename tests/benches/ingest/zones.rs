//! The ingest benchmark's zones: putting 10,000 of them in force and taking them away, and
//! timing zone events from a client's send to a webhook receiver.

use std::collections::HashMap;

use tests::hooks::{Mode, Received, Receiver};
use tests::process::TripsProcess;

use super::*;

/// Puts `n` watch zones in force, written straight to the trips database with one change of
/// the generation (through the API, each create re-indexes every zone: a benchmark of its own).
pub(super) async fn put_zones(db: &TestDb, n: usize) -> anyhow::Result<()> {
    let client = db.client().await;
    let mut ids = Vec::with_capacity(n);
    let mut shapes = Vec::with_capacity(n);
    for k in 0..n {
        let lat = CENTER.lat + (k % 100) as f64 * ZONE_SPACING;
        let lng = CENTER.lng + (k / 100) as f64 * ZONE_SPACING;
        let (w, e, s, north) = (
            lng - ZONE_HALF,
            lng + ZONE_HALF,
            lat - ZONE_HALF,
            lat + ZONE_HALF,
        );
        ids.push(uuid::Uuid::new_v4());
        shapes.push(serde_json::json!({"type": "Polygon",
            "coordinates": [[[w, s], [e, s], [e, north], [w, north], [w, s]]]}));
    }
    client
        .execute(
            "INSERT INTO zones (zone_id, name, kind, geometry) \
             SELECT id, 'bench ' || n, 'watch', shape \
             FROM unnest($1::uuid[], $2::jsonb[]) WITH ORDINALITY AS x(id, shape, n)",
            &[&ids, &shapes],
        )
        .await?;
    changed(&client).await
}

pub(super) async fn clear_zones(db: &TestDb) -> anyhow::Result<()> {
    let client = db.client().await;
    client.execute("DELETE FROM zones", &[]).await?;
    changed(&client).await
}

/// Tells every trips process the zones changed, as the API does with each change.
async fn changed(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    client
        .execute(
            "UPDATE zone_generation SET generation = generation + 1",
            &[],
        )
        .await?;
    Ok(())
}

/// Waits until the gateway at `http` has `n` zones in force.
pub(super) async fn gateway_has_zones(http: std::net::SocketAddr, n: usize) {
    tests::eventually(
        "the gateway to load the zones",
        Duration::from_secs(120),
        || async move {
            let text = tests::services::metrics_text(http).await;
            let loaded = text
                .lines()
                .find_map(|line| line.strip_prefix("gateway_zones "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            (loaded == Some(n as f64)).then_some(())
        },
    )
    .await;
}

/// What the zone events' runs need besides the rig: the trips service that records and
/// delivers them, its database, and the bus they are published on.
pub(super) struct EventPath<'a> {
    pub db: &'a TestDb,
    pub trips: &'a TripsProcess,
    pub nats_url: &'a str,
    pub prefix: &'a str,
}

/// Zone events timed from the client's send to a webhook receiver's receipt, at `rate` with
/// one report in `cross_every` crossing an edge, `runs` times; and, beside it, from the send to
/// the event's publication on the bus by the trips service's outbox. The two paths part at the
/// recording's commit, which queues the webhook deliveries and the outbox row together.
pub(super) async fn event_latency(
    rig: &Rig,
    path: EventPath<'_>,
    mut clients: Vec<Ws>,
    (rate, cross_every, runs): (u64, u64, usize),
) -> anyhow::Result<(Vec<Ws>, serde_json::Value)> {
    let receiver = Receiver::start(Mode::Up).await;
    let registered: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/api/webhooks", path.trips.http))
        .bearer_auth(tests::client::token(Role::Dispatcher, "bench"))
        .json(
            &serde_json::json!({"url": receiver.url(), "event_types": ["zone.enter", "zone.exit"]}),
        )
        .send()
        .await?
        .json()
        .await?;
    let secret = registered["secret"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no webhook registered: {registered}"))?;
    receiver.set_secret(secret);
    let published = Published::watch(path.nats_url, path.prefix).await?;
    let mut spreads = Spreads::default();
    let mut lost = 0u64;
    // Run 0 warms up: the clients leave the zones they all stood in during the climbs, a burst
    // of half of them at once, which the runs after it do not measure.
    for run in 0..=runs {
        settle(&rig.last_arrival_us, rig.epoch).await;
        let before = receiver.accepted_count();
        let trips_cpu = cpu_seconds(path.trips.pid());
        let sampling = Queues::sample(path.db.client().await);
        let (back, result, _) = rig.step_crossing(clients, rate, cross_every).await;
        clients = back;
        lost += result.sent.saturating_sub(result.received);
        // Delivered once the count stops moving for a second.
        let mut last = (receiver.accepted_count(), Instant::now());
        tests::eventually("the deliveries to drain", Duration::from_secs(120), || {
            let now = receiver.accepted_count();
            if now != last.0 {
                last = (now, Instant::now());
            }
            let quiet = last.1.elapsed() >= Duration::from_secs(1);
            async move { quiet.then_some(()) }
        })
        .await;
        let queues = sampling.stop().await;
        let accepted = receiver.accepted();
        let events = accepted.len() - before;
        // The trips service's CPU for the run and its drain, per event delivered.
        let trips_cpu_us = (cpu_seconds(path.trips.pid()) - trips_cpu) * 1e6 / events.max(1) as f64;
        let times = Times::of(&accepted[before..], &published)?;
        println!(
            "zone events, run {run} (0 warms up): {events} delivered ({:.0}/s) at {rate} positions/s, send to webhook p50 {:.0} ms, p99 {:.0} ms, max {} ms",
            events as f64 / STEP.as_secs_f64(),
            times.total.value_at_quantile(0.5) as f64,
            times.total.value_at_quantile(0.99) as f64,
            times.total.max()
        );
        println!(
            "  send to published p50 {} ms, p99 {} ms ({} not seen published); trips service CPU {trips_cpu_us:.0} us per event",
            times.published.value_at_quantile(0.5),
            times.published.value_at_quantile(0.99),
            times.unseen
        );
        println!(
            "  largest queues during it: outbox {} rows, webhook deliveries {}",
            queues.outbox, queues.deliveries
        );
        if run == 0 {
            continue;
        }
        spreads.push(&times, events as f64 / STEP.as_secs_f64(), trips_cpu_us);
    }
    assert_eq!(
        receiver.forged(),
        0,
        "every delivery carried a good signature"
    );
    let s = &spreads;
    let json = serde_json::json!({
        "rate_per_sec": rate,
        "reports_per_crossing": cross_every,
        "positions_lost": lost,
        "events_per_sec": spread(&s.rates),
        "event_latency_ms": {"p50": spread(&s.p50s), "p99": spread(&s.p99s)},
        "send_to_published_ms": {"p50": spread(&s.published_p50s), "p99": spread(&s.published_p99s)},
        "trips_cpu_us_per_event": spread(&s.trips_cpu_us),
    });
    Ok((clients, json))
}

/// When each zone event was seen on the bus, by event id, milliseconds since the epoch.
struct Published(Arc<Mutex<HashMap<String, i64>>>);

impl Published {
    /// Subscribes on a connection of its own, so the positions' subscriber does not delay it.
    async fn watch(nats_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let nats = async_nats::connect(nats_url).await?;
        let mut events = nats.subscribe(format!("{prefix}.events.zone.>")).await?;
        nats.flush().await?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let into = seen.clone();
        tokio::spawn(async move {
            let _connection = nats;
            while let Some(message) = events.next().await {
                let at = protocol::time::now_ms();
                if let Ok(event) =
                    serde_json::from_slice::<protocol::events::Event>(&message.payload)
                {
                    into.lock().unwrap().insert(event.id, at);
                }
            }
        });
        Ok(Self(seen))
    }
}

/// One run's events' times: send to webhook, and send to publication.
struct Times {
    total: Histogram<u64>,
    published: Histogram<u64>,
    /// Delivered events never seen on the bus (the subscriber fell behind).
    unseen: usize,
}

impl Times {
    fn of(accepted: &[Received], published: &Published) -> anyhow::Result<Self> {
        let histogram = || Histogram::<u64>::new_with_bounds(1, 600_000, 3);
        let mut times = Self {
            total: histogram()?,
            published: histogram()?,
            unseen: 0,
        };
        let seen = published.0.lock().unwrap();
        for delivered in accepted {
            let ms = |from: i64, to: i64| (to - from).max(1) as u64;
            times
                .total
                .record(ms(delivered.event.at, delivered.received_ms))?;
            match seen.get(&delivered.event.id) {
                Some(&at) => times.published.record(ms(delivered.event.at, at))?,
                None => times.unseen += 1,
            }
        }
        Ok(times)
    }
}

/// The measured runs' figures, run by run.
#[derive(Default)]
struct Spreads {
    rates: Vec<f64>,
    p50s: Vec<f64>,
    p99s: Vec<f64>,
    published_p50s: Vec<f64>,
    published_p99s: Vec<f64>,
    trips_cpu_us: Vec<f64>,
}

impl Spreads {
    fn push(&mut self, times: &Times, rate: f64, trips_cpu_us: f64) {
        let quantiles = |h: &Histogram<u64>| {
            (
                h.value_at_quantile(0.5) as f64,
                h.value_at_quantile(0.99) as f64,
            )
        };
        let (p50, p99) = quantiles(&times.total);
        self.p50s.push(p50);
        self.p99s.push(p99);
        let (p50, p99) = quantiles(&times.published);
        self.published_p50s.push(p50);
        self.published_p99s.push(p99);
        self.rates.push(rate);
        self.trips_cpu_us.push(trips_cpu_us);
    }
}

/// The largest backlogs of the event path's two queues seen while a run went on.
#[derive(Debug, Default, Clone, Copy)]
struct Queues {
    outbox: i64,
    deliveries: i64,
}

struct Sampling {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Queues>,
}

impl Queues {
    /// Counts both queues every 100 ms until stopped.
    fn sample(client: tokio_postgres::Client) -> Sampling {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut largest = Queues::default();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = &mut stopped => return largest,
                    _ = tick.tick() => {}
                }
                if let Ok(row) = client
                    .query_one(
                        "SELECT (SELECT count(*) FROM outbox), \
                                (SELECT count(*) FROM webhook_deliveries)",
                        &[],
                    )
                    .await
                {
                    largest.outbox = largest.outbox.max(row.get(0));
                    largest.deliveries = largest.deliveries.max(row.get(1));
                }
            }
        });
        Sampling { stop, task }
    }
}

impl Sampling {
    async fn stop(self) -> Queues {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}
