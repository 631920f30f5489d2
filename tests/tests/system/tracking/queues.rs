//! Queue zones: the order drivers wait in, and requests offered to the head first.

use super::*;

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
