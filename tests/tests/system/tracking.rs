//! Tracking: zone events detected by the gateway from real drivers' positions, recorded by the
//! trips service, published on NATS and delivered to webhooks (signed, in order, retried,
//! dead-lettered and redelivered), and webhook URLs checked when registered.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use protocol::client::{Role, ServerMessage};
use protocol::events::{self, Event, EventType, ExitReason};
use protocol::time::now_ms;
use protocol::{GeoConfig, Point, Subjects};
use serde_json::{Value, json};
use simulator::{Scenario, Settings};
use tests::client::{Client, token};
use tests::hooks::{Mode, Receiver};
use tests::services::{
    Running, TOKEN_SECRET, gateway_config, matcher_config, start_gateway, start_matcher,
    start_trips, trips_config, wait_ready,
};
use tests::{NatsServer, Patience, TestDb, eventually, unique_prefix};
use tokio::sync::watch;
use trips::webhooks::policy::Destinations;

const CENTER: Point = Point::new(52.52, 13.405);
const PATIENCE: Duration = Duration::from_secs(20);

/// A square of `half` degrees either side of `at`.
fn square(at: Point, half: f64) -> Value {
    let (w, e, s, n) = (at.lng - half, at.lng + half, at.lat - half, at.lat + half);
    json!({"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]})
}

fn dispatcher() -> String {
    token(Role::Dispatcher, "ops")
}

/// Sends `request` and returns the status and the JSON body (null when there is none).
async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// A trips service that delivers to loopback receivers and retries quickly.
fn trips_for_hooks(db: &TestDb, nats: &NatsServer, prefix: &str) -> trips::Config {
    let mut config = trips_config(&db.url, &nats.url(), prefix);
    config.webhook_destinations = Destinations::parse("127.0.0.1/32").unwrap();
    config.webhook_delivery.base_backoff = Duration::from_millis(50);
    config.webhook_delivery.max_backoff = Duration::from_millis(500);
    config.webhook_delivery.timeout = Duration::from_secs(3);
    config.webhook_delivery.poll = Duration::from_millis(100);
    config
}

/// Registers `receiver` for `types` through the API and tells it the secret; returns the id
/// and the secret.
async fn register(trips: &Running, receiver: &Receiver, types: &[&str]) -> (String, String) {
    let (status, hook) = call(
        reqwest::Client::new()
            .post(format!("http://{}/api/webhooks", trips.http))
            .bearer_auth(dispatcher())
            .json(&json!({"url": receiver.url(), "event_types": types, "description": "test"})),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 32, "{hook}");
    receiver.set_secret(&secret);
    (hook["endpoint_id"].as_str().unwrap().to_owned(), secret)
}

/// Every event published on `{p}.events.>`, in the order received.
async fn collect_events(nats: &NatsServer, subjects: &Subjects) -> watch::Receiver<Vec<Event>> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut subscription = client.subscribe(subjects.events_all()).await.unwrap();
    client.flush().await.unwrap();
    let (sender, receiver) = watch::channel(Vec::new());
    tokio::spawn(async move {
        let _client = client;
        while let Some(message) = subscription.next().await {
            let event: Event = serde_json::from_slice(&message.payload).unwrap();
            sender.send_modify(|events| events.push(event));
        }
    });
    receiver
}

/// Waits until `events` holds at least `n`, or `patience` passes.
async fn at_least(events: &mut watch::Receiver<Vec<Event>>, n: usize, patience: Duration) -> bool {
    tokio::time::timeout(patience, events.wait_for(|e| e.len() >= n))
        .await
        .is_ok()
}

/// One driver's zone events, as (type, exit reason, zone id).
fn zone_steps(events: &[Event], driver: &str) -> Vec<(EventType, Option<ExitReason>, String)> {
    events
        .iter()
        .filter(|e| e.driver_id.as_deref() == Some(driver) && e.zone.is_some())
        .map(|e| {
            (
                e.kind,
                e.reason,
                e.zone.as_ref().unwrap().zone_id.to_string(),
            )
        })
        .collect()
}

struct Driver {
    client: Client,
    seq: u64,
}

impl Driver {
    /// Reports `at` and waits for the gateway's ack.
    async fn at(&mut self, at: Point) {
        self.seq += 1;
        let id = 1000 + self.seq;
        self.client
            .send_json(
                &json!({"type": "location", "id": id, "lat": at.lat, "lng": at.lng,
                               "ts": now_ms(), "seq": self.seq + 1}),
            )
            .await;
        self.client.ack_for(id).await;
    }

    /// Reports `at` until `events` holds `n`, as it does once the gateway has the zones that
    /// make `at` an event.
    async fn until(
        &mut self,
        at: Point,
        events: &mut watch::Receiver<Vec<Event>>,
        n: usize,
        what: &'static str,
    ) {
        let patience = Patience::new(what, PATIENCE);
        loop {
            self.at(at).await;
            if at_least(events, n, Duration::from_millis(250)).await {
                return;
            }
            patience.check();
        }
    }
}

#[tokio::test]
async fn zone_events_reach_nats_and_webhooks_once_per_crossing() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let subjects = Subjects::new(&prefix).unwrap();
    let trips = start_trips(trips_for_hooks(&db, &nats, &prefix)).await;
    let mut config = gateway_config(&nats.url(), &prefix);
    config.tracking.dwell = Duration::from_secs(3);
    config.tracking.stale_after = Duration::from_secs(2);
    config.tracking.reload_every = Duration::from_millis(200);
    let gateway = start_gateway(config).await;
    wait_ready(gateway.running.http).await;
    let receiver = Receiver::start(Mode::Up).await;
    let (hook, secret) = register(
        &trips,
        &receiver,
        &["zone.enter", "zone.exit", "zone.dwell"],
    )
    .await;
    let mut events = collect_events(&nats, &subjects).await;
    let http = reqwest::Client::new();
    let api = format!("http://{}/api/zones", trips.http);

    let half = 0.002;
    let (status, zone) =
        call(http.post(&api).bearer_auth(dispatcher()).json(
            &json!({"name": "Forecourt", "kind": "watch", "geometry": square(CENTER, half)}),
        ))
        .await;
    assert_eq!(status, 201, "{zone}");
    let zone_a = zone["zone_id"].as_str().unwrap().to_owned();

    let outside = Point::new(CENTER.lat, CENTER.lng + 0.01);
    let edge = CENTER.lng + half;
    // Within a metre either side of the east edge.
    let (in_edge, out_edge) = (
        Point::new(CENTER.lat, edge - 0.000_01),
        Point::new(CENTER.lat, edge + 0.000_01),
    );
    let mut driver = Driver {
        client: Client::driver_online_at(gateway.ws, &token(Role::Driver, "d1"), outside).await,
        seq: 1,
    };
    driver
        .until(CENTER, &mut events, 1, "the first enter")
        .await;
    // Zig-zagging on the edge: every crossing is one event.
    for _ in 0..6 {
        driver.at(out_edge).await;
        driver.at(in_edge).await;
    }
    assert!(
        at_least(&mut events, 13, PATIENCE).await,
        "{:?}",
        events.borrow()
    );
    // Staying inside, reporting as drivers do: one dwell.
    driver.until(in_edge, &mut events, 14, "the dwell").await;

    // Redrawn elsewhere while the driver is inside: it has left; drawn back, it is in again.
    let zone_url = format!("{api}/{zone_a}");
    let moved = json!({"name": "Forecourt", "kind": "watch",
                       "geometry": square(Point::new(CENTER.lat + 0.05, CENTER.lng), half)});
    let (status, _) = call(http.put(&zone_url).bearer_auth(dispatcher()).json(&moved)).await;
    assert_eq!(status, 200);
    driver
        .until(in_edge, &mut events, 15, "the exit from the redrawn zone")
        .await;
    let back = json!({"name": "Forecourt", "kind": "watch", "geometry": square(CENTER, half)});
    let (status, _) = call(http.put(&zone_url).bearer_auth(dispatcher()).json(&back)).await;
    assert_eq!(status, 200);
    driver
        .until(
            in_edge,
            &mut events,
            16,
            "the enter into the zone drawn back",
        )
        .await;

    // Deleted while the driver is inside: one exit, from the deletion.
    let (status, _) = call(http.delete(&zone_url).bearer_auth(dispatcher())).await;
    assert_eq!(status, 204);
    assert!(
        at_least(&mut events, 17, PATIENCE).await,
        "{:?}",
        events.borrow()
    );
    // Into another zone: its enter comes after whatever the gateway sent of the deleted one.
    let east = Point::new(CENTER.lat, CENTER.lng + 0.02);
    let (status, zone) = call(
        http.post(&api)
            .bearer_auth(dispatcher())
            .json(&json!({"name": "Rank", "kind": "queue", "geometry": square(east, half)})),
    )
    .await;
    assert_eq!(status, 201, "{zone}");
    let zone_b = zone["zone_id"].as_str().unwrap().to_owned();
    driver
        .until(east, &mut events, 18, "the enter into the second zone")
        .await;

    // Gone silent inside it (here: disconnected): it leaves once stale.
    drop(driver);
    assert!(
        at_least(&mut events, 19, PATIENCE).await,
        "{:?}",
        events.borrow()
    );

    use EventType::{ZoneDwell as Dwell, ZoneEnter as Enter, ZoneExit as Exit};
    let a = || zone_a.clone();
    let mut expected = vec![(Enter, None, a())];
    for _ in 0..6 {
        expected.push((Exit, Some(ExitReason::Left), a()));
        expected.push((Enter, None, a()));
    }
    expected.extend([
        (Dwell, None, a()),
        (Exit, Some(ExitReason::Left), a()),
        (Enter, None, a()),
        (Exit, Some(ExitReason::ZoneDeleted), a()),
        (Enter, None, zone_b.clone()),
        (Exit, Some(ExitReason::Stale), zone_b.clone()),
    ]);
    let published = events.borrow().clone();
    assert_eq!(zone_steps(&published, "d1"), expected);
    let b = published
        .iter()
        .find(|e| e.zone.as_ref().unwrap().zone_id.to_string() == zone_b)
        .unwrap();
    assert_eq!(b.zone.as_ref().unwrap().name, "Rank");
    assert!(b.position.is_some_and(|p| (p.lng - east.lng).abs() < 1e-9));

    // The webhook got the same events, in the same order, each signed.
    let wanted = published.len();
    let delivered = eventually("every zone event delivered", PATIENCE, || {
        let accepted = receiver.accepted();
        async move { (accepted.len() >= wanted).then_some(accepted) }
    })
    .await;
    let ids: Vec<&str> = delivered.iter().map(|r| r.id.as_str()).collect();
    let sent: Vec<&str> = published.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, sent);
    assert_eq!(receiver.forged(), 0);
    let (_, hooks) = call(
        http.get(format!("http://{}/api/webhooks", trips.http))
            .bearer_auth(dispatcher()),
    )
    .await;
    assert!(
        hooks[0].get("secret").is_none(),
        "the secret is shown once: {hooks}"
    );
    assert_eq!(hooks[0]["endpoint_id"], hook.as_str());
    assert_eq!(
        (hooks[0]["pending"].as_i64(), hooks[0]["dead"].as_i64()),
        (Some(0), Some(0)),
        "{hooks}"
    );
    // A receiver's check of the signature fails for a body changed on the way.
    let first = &delivered[0];
    let mut tampered = first.body.clone();
    let at = tampered.iter().position(|b| *b == b'd').unwrap();
    tampered[at] = b'D';
    assert_eq!(
        events::verify(
            secret.as_bytes(),
            first.timestamp,
            &first.signature,
            &tampered,
            first.timestamp,
            300
        ),
        Err(events::VerifyError::Mismatch)
    );
}

#[tokio::test]
async fn webhooks_are_checked_when_registered_and_dead_letters_can_be_redelivered() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let mut config = trips_for_hooks(&db, &nats, &prefix);
    // Given up on quickly, so the dead letter comes within the test.
    config.webhook_delivery.max_age = Duration::from_secs(1);
    let trips = start_trips(config).await;
    let http = reqwest::Client::new();
    let api = format!("http://{}/api/webhooks", trips.http);

    // Who may register: dispatchers only.
    let body = json!({"url": "http://127.0.0.1:9/hook"});
    let (status, _) = call(http.post(&api).json(&body)).await;
    assert_eq!(status, 401);
    for role in [Role::Rider, Role::Driver] {
        let (status, refused) =
            call(http.post(&api).bearer_auth(token(role, "x")).json(&body)).await;
        assert_eq!((status, refused["code"].as_str()), (403, Some("forbidden")));
    }
    // What may be registered: each refusal says what to fix, and nothing is stored.
    for (body, says) in [
        (json!({"url": "http://10.0.0.1/hook"}), "allow-list"),
        (
            json!({"url": "http://169.254.169.254/latest/meta-data"}),
            "allow-list",
        ),
        (json!({"url": "http://[::1]:9/hook"}), "allow-list"),
        (json!({"url": "ftp://127.0.0.1/hook"}), "http and https"),
        (json!({"url": "http://user:pw@127.0.0.1/hook"}), "user name"),
        (json!({"url": "not a url"}), "does not parse"),
        (
            json!({"url": "http://127.0.0.1:9/", "event_types": ["zone.teleport"]}),
            "unknown event type",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "secret": "short"}),
            "16 to 256",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "headers": {"x": 1}}),
            "unknown field",
        ),
        (json!({"url": 7}), "invalid type"),
    ] {
        let (status, refused) = call(http.post(&api).bearer_auth(dispatcher()).json(&body)).await;
        assert_eq!(status, 400, "{body}: {refused}");
        assert!(
            refused["message"].as_str().unwrap().contains(says),
            "{body}: {refused}"
        );
        assert!(
            !refused["message"].as_str().unwrap().contains("tokio"),
            "{refused}"
        );
    }
    let (status, refused) = call(
        http.post(&api)
            .bearer_auth(dispatcher())
            .header("content-type", "application/json")
            .body("{\"url\": "),
    )
    .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (400, Some("invalid_message"))
    );
    let (status, listed) = call(http.get(&api).bearer_auth(dispatcher())).await;
    assert_eq!((status, listed), (200, json!([])));
    for path in ["not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
        let (status, _) = call(http.get(format!("{api}/{path}")).bearer_auth(dispatcher())).await;
        assert!(status == 400 || status == 404, "{path}: {status}");
    }

    // A receiver that keeps failing: the delivery is retried, then dead.
    let receiver = Receiver::start(Mode::Failing).await;
    let (hook, _) = register(&trips, &receiver, &["trip.requested"]).await;
    let bus = kit::Bus::new(
        async_nats::connect(nats.url()).await.unwrap(),
        Subjects::new(&prefix).unwrap(),
    );
    let create = protocol::bus::TripCommand::CreateTrip {
        rider_id: "r1".into(),
        idempotency_key: "k1".into(),
        pickup: CENTER,
        dropoff: Point::new(52.5, 13.45),
        vehicle_class: None,
        min_capacity: None,
    };
    let trip = bus.command(&create, PATIENCE).await.unwrap().trip.unwrap();
    let dead_url = format!("{api}/{hook}/dead");
    let dead = eventually("the delivery given up", PATIENCE, || {
        let request = http.get(&dead_url).bearer_auth(dispatcher());
        async move {
            let (_, dead) = call(request).await;
            (dead.as_array().is_some_and(|d| d.len() == 1)).then_some(dead)
        }
    })
    .await;
    let letter = &dead[0];
    assert_eq!(letter["event_type"], "trip.requested");
    assert_eq!(letter["last_error"], "answered 503");
    assert!(letter["attempts"].as_i64().unwrap() >= 2, "{letter}");
    assert_eq!(letter["event"]["trip"]["trip_id"], trip.trip_id.to_string());
    assert!(receiver.attempts() >= 2);
    assert!(receiver.accepted().is_empty());

    // Redelivered once the receiver is back: delivered, and no longer dead.
    receiver.set_mode(Mode::Up);
    let (status, requeued) = call(
        http.post(format!("{api}/{hook}/redeliver"))
            .bearer_auth(dispatcher()),
    )
    .await;
    assert_eq!(
        (status, requeued["requeued"].as_u64()),
        (200, Some(1)),
        "{requeued}"
    );
    let delivered = eventually("the redelivery", PATIENCE, || {
        let accepted = receiver.accepted();
        async move { (!accepted.is_empty()).then_some(accepted) }
    })
    .await;
    assert_eq!(delivered[0].id, letter["event_id"].as_str().unwrap());
    assert_eq!(
        delivered[0].event.trip.as_ref().unwrap().trip_id,
        trip.trip_id
    );
    let (_, dead) = call(http.get(&dead_url).bearer_auth(dispatcher())).await;
    assert_eq!(dead, json!([]));
    let (status, requeued) = call(
        http.post(format!("{api}/{hook}/redeliver"))
            .bearer_auth(dispatcher())
            .json(&json!({"delivery_ids": [letter["delivery_id"]]})),
    )
    .await;
    assert_eq!((status, requeued["requeued"].as_u64()), (200, Some(0)));

    let (status, _) = call(
        http.delete(format!("{api}/{hook}"))
            .bearer_auth(dispatcher()),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(http.get(format!("{api}/{hook}")).bearer_auth(dispatcher())).await;
    assert_eq!(status, 404);
}

/// Each id's first arrival, in order, grouped by ordering key.
fn first_arrivals<'a>(events: impl Iterator<Item = &'a Event>) -> HashMap<String, Vec<String>> {
    let mut seen = HashSet::new();
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for event in events {
        if seen.insert(event.id.clone()) {
            by_key
                .entry(event.ordering_key())
                .or_default()
                .push(event.id.clone());
        }
    }
    by_key
}

#[tokio::test]
async fn a_receiver_down_for_60_s_under_load_gets_every_event_in_order_and_a_hanging_one_delays_no_other()
 {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let subjects = Subjects::new(&prefix).unwrap();
    let mut config = trips_for_hooks(&db, &nats, &prefix);
    config.webhook_delivery.timeout = Duration::from_secs(2);
    config.webhook_delivery.max_backoff = Duration::from_secs(2);
    let trips_config = config.clone();
    let mut trips = start_trips(config).await;
    let regions = GeoConfig::default()
        .regions_covering(CENTER, 3_000.0)
        .unwrap();
    let mut matcher = matcher_config(&nats.url(), &prefix, regions);
    matcher.settings.offer_ttl = Duration::from_secs(3);
    let matcher = start_matcher(matcher).await;
    wait_ready(matcher.http).await;
    let mut gateway = gateway_config(&nats.url(), &prefix);
    gateway.tracking.dwell = Duration::from_secs(2);
    gateway.tracking.stale_after = Duration::from_secs(3);
    gateway.tracking.reload_every = Duration::from_millis(200);
    let gateway = start_gateway(gateway).await;
    wait_ready(gateway.running.http).await;

    // A is down (connections refused), B hangs, C answers.
    let (a, b, c) = (
        Receiver::start(Mode::Up).await,
        Receiver::start(Mode::Hanging).await,
        Receiver::start(Mode::Up).await,
    );
    for receiver in [&a, &b, &c] {
        register(&trips, receiver, &[]).await;
    }
    a.stop();
    let a_down_at = tokio::time::Instant::now();
    let events = collect_events(&nats, &subjects).await;
    // The northern half of the city is watched, so drivers cross its edge.
    let north = json!({"type": "Polygon", "coordinates": [[
        [13.37, 52.52], [13.44, 52.52], [13.44, 52.54], [13.37, 52.54], [13.37, 52.52]]]});
    let (status, zone) = call(
        reqwest::Client::new()
            .post(format!("http://{}/api/zones", trips.http))
            .bearer_auth(dispatcher())
            .json(&json!({"name": "North", "kind": "watch", "geometry": north})),
    )
    .await;
    assert_eq!(status, 201, "{zone}");

    let mut settings = Settings::new(&format!("ws://{}/ws", gateway.ws), TOKEN_SECRET, CENTER);
    settings.drivers = 20;
    settings.riders = 20;
    settings.city.radius_m = 2_000.0;
    settings.scenario = Scenario::Steady;
    settings.duration = Duration::from_secs(20);
    settings.drain = Duration::from_secs(40);
    settings.request_rate = 2.0;
    settings.report_every = Duration::from_millis(200);
    settings.speedup = 20.0;
    settings.answer_delay = Duration::from_millis(200);
    settings.accept_probability = 0.9;
    settings.cancel_probability = 0.1;
    let city = tokio::spawn(simulator::run(settings));

    // The delivering service is restarted in the middle of it.
    eventually("C receiving", PATIENCE, || {
        let n = c.accepted().len();
        async move { (n >= 20).then_some(()) }
    })
    .await;
    trips.halt().await.unwrap();
    let trips = start_trips(trips_config).await;
    let report = city.await.unwrap().unwrap();
    assert_eq!(report.lost, 0, "{}", report.table());
    assert!(report.completed > 0, "{}", report.table());

    // The drivers have gone: once stale, each has left the zone.
    eventually("every driver out of the zone", PATIENCE, || {
        let mut inside: HashMap<String, bool> = HashMap::new();
        for event in events.borrow().iter().filter(|e| e.zone.is_some()) {
            let driver = event.driver_id.clone().unwrap();
            match event.kind {
                EventType::ZoneEnter => inside.insert(driver, true),
                EventType::ZoneExit => inside.insert(driver, false),
                _ => None,
            };
        }
        let all_out = !inside.is_empty() && inside.values().all(|i| !i);
        async move { all_out.then_some(()) }
    })
    .await;
    // Every event of the run, by its ids: trip events from PostgreSQL, zone events as
    // published.
    let pg = db.client().await;
    let trip_events: HashSet<String> = pg
        .query("SELECT event_id FROM trip_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| format!("trip-event-{}", row.get::<_, i64>(0)))
        .collect();
    let published = events.borrow().clone();
    let zone_events: HashSet<String> = published
        .iter()
        .filter(|e| e.zone.is_some())
        .map(|e| e.id.clone())
        .collect();
    assert!(
        zone_events.len() >= 10,
        "drivers crossed the zone's edge: {}",
        zone_events.len()
    );
    let all: HashSet<String> = trip_events.union(&zone_events).cloned().collect();
    let published_ids: HashSet<String> = published.iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        published_ids, all,
        "what was published is what was recorded"
    );

    // C has had them all while A is still down and B still hangs.
    let ids = |r: &Receiver| {
        r.accepted()
            .iter()
            .map(|x| x.id.clone())
            .collect::<HashSet<_>>()
    };
    eventually("every event at C", PATIENCE, || {
        let got = ids(&c);
        let done = got.is_superset(&all);
        async move { done.then_some(()) }
    })
    .await;
    assert!(
        tokio::time::Instant::now() < a_down_at + Duration::from_secs(60),
        "the run took longer than A's outage"
    );
    assert!(b.accepted().is_empty());
    assert!(b.attempts() > 0);

    // A comes back after 60 s down and gets every event.
    tokio::time::sleep_until(a_down_at + Duration::from_secs(60)).await;
    a.restart().await;
    eventually("every event at A", Duration::from_secs(60), || {
        let got = ids(&a);
        let done = got.is_superset(&all);
        async move { done.then_some(()) }
    })
    .await;
    for receiver in [&a, &c] {
        let accepted = receiver.accepted();
        // Nothing that was not an event, and a repeat only ever the same event again.
        let mut bodies: HashMap<&str, &[u8]> = HashMap::new();
        for r in &accepted {
            assert!(all.contains(&r.id), "{}", r.id);
            let first = bodies.entry(&r.id).or_insert(&r.body);
            assert_eq!(*first, &r.body[..], "two bodies for {}", r.id);
        }
        // In order per driver and per trip: as published.
        let got = first_arrivals(accepted.iter().map(|r| &r.event));
        let sent = first_arrivals(published.iter());
        assert_eq!(got, sent);
        for sequence in got.values() {
            let versions: Vec<i64> = sequence
                .iter()
                .filter_map(|id| accepted.iter().find(|r| &r.id == id))
                .filter_map(|r| r.event.trip.as_ref().map(|t| t.version))
                .collect();
            assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        }
    }
    assert_eq!(a.forged() + c.forged(), 0);
    drop(trips);
}

/// The queue of zone `zone` through the API: its drivers in order.
async fn queue_of(trips: &Running, zone: &str) -> Vec<String> {
    let (status, queue) = call(
        reqwest::Client::new()
            .get(format!("http://{}/api/zones/{zone}/queue", trips.http))
            .bearer_auth(dispatcher()),
    )
    .await;
    assert_eq!(status, 200, "{queue}");
    queue["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["place"].as_u64(), Some(i as u64 + 1), "{queue}");
            d["driver_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The next `queue_place` a driver is told.
async fn place_told(driver: &mut Client) -> (u32, u32) {
    match driver
        .recv_until(|m| matches!(m, ServerMessage::QueuePlace { .. }))
        .await
    {
        ServerMessage::QueuePlace { place, length, .. } => (place, length),
        _ => unreachable!("matched above"),
    }
}

/// The next offer a driver gets.
async fn offered(driver: &mut Client) -> uuid::Uuid {
    match driver
        .recv_until(|m| matches!(m, ServerMessage::Offer { .. }))
        .await
    {
        ServerMessage::Offer { trip, .. } => trip.trip_id,
        _ => unreachable!("matched above"),
    }
}

#[tokio::test]
async fn a_queue_zone_offers_to_its_head_first_and_drivers_wait_in_the_order_they_came() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let subjects = Subjects::new(&prefix).unwrap();
    let trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    let regions = GeoConfig::default()
        .regions_covering(CENTER, 3_000.0)
        .unwrap();
    let mut matcher = matcher_config(&nats.url(), &prefix, regions);
    matcher.settings.offer_ttl = Duration::from_secs(10);
    let matcher = start_matcher(matcher).await;
    wait_ready(matcher.http).await;
    let mut config = gateway_config(&nats.url(), &prefix);
    config.tracking.reload_every = Duration::from_millis(100);
    let gateway = start_gateway(config).await;
    wait_ready(gateway.running.http).await;
    let mut events = collect_events(&nats, &subjects).await;

    // The rank: about 440 m across, east of the pickup; a free driver waits just outside it,
    // nearer the pickup than anyone in the queue.
    let rank_at = Point::new(CENTER.lat, CENTER.lng + 0.003);
    let (status, zone) = call(
        reqwest::Client::new()
            .post(format!("http://{}/api/zones", trips.http))
            .bearer_auth(dispatcher())
            .json(&json!({"name": "Rank", "kind": "queue", "geometry": square(rank_at, 0.002)})),
    )
    .await;
    assert_eq!(status, 201, "{zone}");
    let rank = zone["zone_id"].as_str().unwrap().to_owned();
    let pickup = Point::new(CENTER.lat, CENTER.lng + 0.0012);
    let outside_near = Point::new(CENTER.lat, CENTER.lng + 0.0008);
    let deep = |i: u32| Point::new(CENTER.lat + 0.0003 * f64::from(i), CENTER.lng + 0.004);
    let mut free = Driver {
        client: Client::driver_online_at(gateway.ws, &token(Role::Driver, "free"), outside_near)
            .await,
        seq: 1,
    };
    free.at(outside_near).await;
    // Three drivers arrive at once: they queue in the order their entries were recorded.
    let mut queued = Vec::new();
    for i in 1..=3 {
        let id = format!("q{i}");
        queued.push(Driver {
            client: Client::driver_online_at(gateway.ws, &token(Role::Driver, &id), outside_near)
                .await,
            seq: 1,
        });
    }
    // Reporting from inside until the gateway has the zone and each has entered.
    let patience = Patience::new("three drivers in the queue", PATIENCE);
    loop {
        futures_util::future::join_all(
            queued
                .iter_mut()
                .enumerate()
                .map(|(i, d)| d.at(deep(i as u32 + 1))),
        )
        .await;
        if at_least(&mut events, 3, Duration::from_millis(250)).await {
            break;
        }
        patience.check();
    }
    let entered: Vec<String> = events
        .borrow()
        .iter()
        .filter(|e| e.kind == EventType::ZoneEnter)
        .map(|e| e.driver_id.clone().unwrap())
        .collect();
    assert_eq!(entered.len(), 3, "{entered:?}");
    assert_eq!(queue_of(&trips, &rank).await, entered);
    // Each was told its place; the last telling is the queue as it stands.
    for (i, driver) in queued.iter_mut().enumerate() {
        let id = format!("q{}", i + 1);
        let place = entered.iter().position(|d| *d == id).unwrap() as u32 + 1;
        let mut last = place_told(&mut driver.client).await;
        while last != (place, 3) {
            assert!(last.1 < 3, "told {last:?}, expected ({place}, 3)");
            last = place_told(&mut driver.client).await;
        }
    }
    let by_id = |id: &str| -> usize { id[1..].parse::<usize>().unwrap() - 1 };

    // A request from inside the rank goes to the head, not to the nearer free driver; the
    // head declines, and the next in the queue gets it.
    let mut rider = Client::connect(gateway.ws, Role::Rider, "r1").await;
    rider
        .send_json(
            &json!({"type": "request_ride", "id": 1, "idempotency_key": "k1",
            "pickup": {"lat": pickup.lat, "lng": pickup.lng},
            "dropoff": {"lat": 52.5, "lng": 13.45}}),
        )
        .await;
    let trip = rider.ack_trip(1).await;
    let head = by_id(&entered[0]);
    assert_eq!(offered(&mut queued[head].client).await, trip.trip_id);
    queued[head]
        .client
        .send_json(&json!({"type": "decline_offer", "id": 50, "trip_id": trip.trip_id}))
        .await;
    queued[head].client.ack_for(50).await;
    let second = by_id(&entered[1]);
    assert_eq!(offered(&mut queued[second].client).await, trip.trip_id);
    queued[second]
        .client
        .send_json(&json!({"type": "accept_offer", "id": 51, "trip_id": trip.trip_id}))
        .await;
    queued[second].client.ack_for(51).await;
    // On a trip, a driver waits in no queue.
    assert_eq!(
        queue_of(&trips, &rank).await,
        [entered[0].clone(), entered[2].clone()]
    );

    // The head goes offline: it leaves the queue, and coming back it joins at the end.
    let at = deep(head as u32 + 1);
    let d = &mut queued[head];
    d.client
        .send_json(&json!({"type": "go_offline", "id": 60}))
        .await;
    d.client.ack_for(60).await;
    d.at(at).await;
    assert_eq!(place_told(&mut d.client).await.0, 0);
    eventually("the offline driver out of the queue", PATIENCE, || async {
        (queue_of(&trips, &rank).await == [entered[2].clone()]).then_some(())
    })
    .await;
    d.client
        .send_json(
            &json!({"type": "go_online", "id": 61, "vehicle_class": "standard", "capacity": 4}),
        )
        .await;
    d.client.ack_for(61).await;
    d.at(at).await;
    eventually(
        "the driver back at the end of the queue",
        PATIENCE,
        || async {
            (queue_of(&trips, &rank).await == [entered[2].clone(), entered[0].clone()])
                .then_some(())
        },
    )
    .await;
    let exit = events
        .borrow()
        .iter()
        .find(|e| e.kind == EventType::ZoneExit)
        .cloned()
        .unwrap();
    assert_eq!(exit.reason, Some(ExitReason::Offline));
    let (status, refused) = call(
        reqwest::Client::new()
            .get(format!(
                "http://{}/api/zones/{}/queue",
                trips.http,
                uuid::Uuid::nil()
            ))
            .bearer_auth(dispatcher()),
    )
    .await;
    assert_eq!(status, 404, "{refused}");
    drop(free);
}
