//! Webhooks: registration refused with reasons, dead letters redelivered, and every event
//! delivered in order to a receiver that was down for a minute under load.

use super::*;

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
