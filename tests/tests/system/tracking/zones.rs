//! Zone events once per crossing, on NATS and by webhook.

use super::*;

#[tokio::test]
async fn zone_events_reach_nats_and_webhooks_once_per_crossing() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let subjects = Subjects::new(&prefix).unwrap();
    let mut hooks_config = trips_for_hooks(&db, &nats, &prefix);
    // Every delivery here follows a wake-up from what queued it: the poll would be too late.
    hooks_config.webhook_delivery.poll = Duration::from_secs(3600);
    let trips = start_trips(hooks_config).await;
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
    // Delivered on the deletion's own wake-up, before anything else is recorded.
    let deleted = events
        .borrow()
        .iter()
        .find(|e| e.reason == Some(ExitReason::ZoneDeleted))
        .map(|e| e.id.clone())
        .unwrap();
    eventually("the deletion's exit delivered", PATIENCE, || {
        let delivered = receiver.accepted().iter().any(|r| r.id == deleted);
        async move { delivered.then_some(()) }
    })
    .await;
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

/// A zone change is in force everywhere in one step, with every poll an hour away: the trips
/// replica that made it announces it on `{p}.zones.changed`, the gateway reloads on that notice
/// (its driver enters the new zone), and so does another trips replica (it answers the zones
/// query with the change once the first is gone).
#[tokio::test]
async fn a_zone_change_is_announced_and_in_force_everywhere_without_a_poll() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let subjects = Subjects::new(&prefix).unwrap();
    let hour = Duration::from_secs(3600);
    let replica = || {
        let mut config = trips_config(&db.url, &nats.url(), &prefix);
        config.zone_poll = hour;
        start_trips(config)
    };
    let first = replica().await;
    let mut second = replica().await;
    let mut config = gateway_config(&nats.url(), &prefix);
    config.tracking.reload_every = hour;
    let gateway = start_gateway(config).await;
    wait_ready(gateway.running.http).await;
    let mut events = collect_events(&nats, &subjects).await;
    let bus = kit::Bus::new(
        async_nats::connect(nats.url()).await.unwrap(),
        subjects.clone(),
    );
    let mut notices = bus
        .client
        .subscribe(subjects.zones_changed())
        .await
        .unwrap();
    bus.client.flush().await.unwrap();
    // The driver stands where the zone will be, before it is drawn: no event.
    let mut driver = Driver {
        client: Client::driver_online_at(gateway.ws, &token(Role::Driver, "d1"), CENTER).await,
        seq: 1,
    };
    driver.at(CENTER).await;

    let (status, zone) = call(
        reqwest::Client::new()
            .post(format!("http://{}/api/zones", first.http))
            .bearer_auth(dispatcher())
            .json(&json!({"name": "Rank", "kind": "watch", "geometry": square(CENTER, 0.002)})),
    )
    .await;
    assert_eq!(status, 201, "{zone}");
    let notice = tokio::time::timeout(PATIENCE, notices.next())
        .await
        .expect("the change is announced")
        .unwrap();
    let changed: protocol::bus::ZonesChanged = protocol::codec::decode(&notice.payload).unwrap();
    assert!(changed.generation > 0, "{changed:?}");

    // The gateway has it: the driver's next positions enter it.
    driver.until(CENTER, &mut events, 1, "the enter").await;
    assert_eq!(events.borrow()[0].kind, EventType::ZoneEnter);

    // The other replica has it too: with the first gone, the zones query reaches it alone.
    first.stop().await.unwrap();
    let zone_id: uuid::Uuid = zone["zone_id"].as_str().unwrap().parse().unwrap();
    let holds = eventually("the other replica to load the change", PATIENCE, || async {
        let reply = bus
            .query(
                &protocol::bus::TripQuery::Zones {
                    known: -1,
                    after: None,
                },
                Duration::from_secs(5),
            )
            .await;
        match reply {
            protocol::bus::QueryReply::Zones {
                generation, zones, ..
            } if generation >= changed.generation => {
                Some(zones.iter().any(|z| z.zone_id == zone_id))
            }
            _ => None,
        }
    })
    .await;
    assert!(holds, "the other replica's zones lack the new one");
    second.halt().await.unwrap();
}
