//! The ingest benchmark's zones: putting 10,000 of them in force and taking them away, and
//! timing zone events from a client's send to a webhook receiver.

use tests::hooks::{Mode, Receiver};

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

/// Zone events timed from the client's send to a webhook receiver's receipt, at `rate` with
/// one report in `cross_every` crossing an edge, `runs` times.
pub(super) async fn event_latency(
    rig: &Rig,
    db: &TestDb,
    mut clients: Vec<Ws>,
    trips_http: std::net::SocketAddr,
    (rate, cross_every, runs): (u64, u64, usize),
) -> anyhow::Result<(Vec<Ws>, serde_json::Value)> {
    let receiver = Receiver::start(Mode::Up).await;
    let registered: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{trips_http}/api/webhooks"))
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
    let (mut p50s, mut p99s, mut rates, mut lost) = (Vec::new(), Vec::new(), Vec::new(), 0u64);
    // Run 0 warms up: the clients leave the zones they all stood in during the climbs, a burst
    // of half of them at once, which the runs after it do not measure.
    for run in 0..=runs {
        settle(&rig.last_arrival_us, rig.epoch).await;
        let before = receiver.accepted().len();
        let sampling = Queues::sample(db.client().await);
        let (back, result, _) = rig.step_crossing(clients, rate, cross_every).await;
        clients = back;
        lost += result.sent.saturating_sub(result.received);
        // Delivered once the count stops moving for a second.
        let mut last = (receiver.accepted().len(), Instant::now());
        tests::eventually("the deliveries to drain", Duration::from_secs(120), || {
            let now = receiver.accepted().len();
            if now != last.0 {
                last = (now, Instant::now());
            }
            let quiet = last.1.elapsed() >= Duration::from_secs(1);
            async move { quiet.then_some(()) }
        })
        .await;
        let queues = sampling.stop().await;
        let accepted = receiver.accepted();
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
        for delivered in &accepted[before..] {
            let ms = (delivered.received_ms - delivered.event.at).max(1) as u64;
            histogram.record(ms)?;
        }
        let events = accepted.len() - before;
        let (p50, p99) = (
            histogram.value_at_quantile(0.5) as f64,
            histogram.value_at_quantile(0.99) as f64,
        );
        println!(
            "zone events, run {run} (0 warms up): {events} delivered ({:.0}/s) at {rate} positions/s, send to webhook p50 {p50:.0} ms, p99 {p99:.0} ms, max {} ms",
            events as f64 / STEP.as_secs_f64(),
            histogram.max()
        );
        println!(
            "  largest queues during it: outbox {} rows, webhook deliveries {}",
            queues.outbox, queues.deliveries
        );
        if run == 0 {
            continue;
        }
        p50s.push(p50);
        p99s.push(p99);
        rates.push(events as f64 / STEP.as_secs_f64());
    }
    assert_eq!(
        receiver.forged(),
        0,
        "every delivery carried a good signature"
    );
    let json = serde_json::json!({
        "rate_per_sec": rate,
        "reports_per_crossing": cross_every,
        "positions_lost": lost,
        "events_per_sec": spread(&rates),
        "event_latency_ms": {"p50": spread(&p50s), "p99": spread(&p99s)},
    });
    Ok((clients, json))
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
