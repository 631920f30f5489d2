//! What committed is published: after a crash, by the sweeper, and quick refusals while the database is away.

use std::sync::Arc;

use super::*;
use tests::proxy::TcpProxy;

/// A trip created through a store that runs no publisher: its messages wait in the outbox.
async fn created_without_publisher(
    db: &TestDb,
    config: &trips::Config,
) -> (deadpool_postgres::Pool, TripView) {
    let pool = trips::db::pool(&db.url, &config.pool).unwrap();
    let store = trips::Store::new(
        pool.clone(),
        config.geo,
        config.subjects.clone(),
        config.store.clone(),
    );
    let trip = store
        .execute(create("rider-1", "k"))
        .await
        .unwrap()
        .trip
        .unwrap();
    (pool, trip)
}

/// How many transitions' messages wait in the outbox.
async fn outbox_rows(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0)
}

/// A publisher through `receipts`' client, as a replica's outbox has.
fn publisher(receipts: kit::bus::Receipts, subjects: &Subjects) -> trips::outbox::Publisher {
    let directory = kit::presence::Directory::new(subjects.clone(), &[Role::Driver, Role::Rider]);
    trips::outbox::Publisher::new(
        receipts,
        Arc::new(directory),
        Arc::default(),
        trips::webhooks::deliver::Nudges::default(),
    )
}

#[tokio::test]
async fn a_crash_between_commit_and_publish_still_publishes() {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let config = trips_config(&db.url, &nats.url(), &prefix);
    // A store with no publisher: the command commits, then the "process" is gone.
    let (pool, trip) = created_without_publisher(&db, &config).await;
    pool.close();
    let waiting: i64 = db
        .client()
        .await
        .query_one(
            "SELECT coalesce(sum(cardinality(subjects)), 0)::int8 FROM outbox",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        waiting >= 3,
        "event, rider update and ride request wait in the outbox"
    );

    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut events = client
        .subscribe(config.subjects.trip_events_all())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let _trips = start_trips(config).await;
    let event: TripEvent = next(&mut events).await;
    assert_eq!(event.trip.trip_id, trip.trip_id);
    assert_eq!(event.trip.state, TripState::Requested);
    eventually("outbox emptied", PATIENCE, || async {
        let n: i64 = db
            .client()
            .await
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .ok()?
            .get(0);
        (n == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn only_the_replica_holding_the_outbox_lock_publishes() {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let config = trips_config(&db.url, &nats.url(), &prefix);
    let (pool, trip) = created_without_publisher(&db, &config).await;
    let waiting = || outbox_rows(&db);
    assert_eq!(waiting().await, 1, "the create's messages wait in one row");

    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut events = client
        .subscribe(config.subjects.trip_events_all())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let receipts = kit::bus::Receipts::start(client).await.unwrap();
    let publisher = publisher(receipts, &config.subjects);
    // Another replica is publishing: it holds the lock in its open transaction.
    let mut other = db.client().await;
    let holding = other.transaction().await.unwrap();
    holding
        .execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&trips::outbox::OUTBOX_LOCK],
        )
        .await
        .unwrap();
    let published = trips::outbox::publish_batch(&pool, &publisher)
        .await
        .unwrap();
    assert_eq!(published, 0, "a replica without the lock reads no row");
    assert_eq!(waiting().await, 1, "and leaves the row where it is");

    holding.commit().await.unwrap();
    let published = trips::outbox::publish_batch(&pool, &publisher)
        .await
        .unwrap();
    assert_eq!(published, 1, "once the lock is free the row is published");
    let event: TripEvent = next(&mut events).await;
    assert_eq!(event.trip.trip_id, trip.trip_id);
    assert_eq!(waiting().await, 0, "and deleted");
}

/// A NATS connection that goes through a proxy the test can stall (a server gone silent).
async fn through_proxy(nats: &NatsServer) -> (TcpProxy, async_nats::Client) {
    let addr = nats
        .url()
        .trim_start_matches("nats://")
        .parse()
        .expect("a test server's address");
    let proxy = TcpProxy::start(addr).await;
    let client = async_nats::connect(format!("nats://{}", proxy.addr))
        .await
        .unwrap();
    (proxy, client)
}

#[tokio::test]
async fn the_outbox_deletes_nothing_a_silent_server_did_not_read() {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let config = trips_config(&db.url, &nats.url(), &prefix);
    let (pool, trip) = created_without_publisher(&db, &config).await;
    let waiting = || outbox_rows(&db);
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut events = watcher
        .subscribe(config.subjects.trip_events_all())
        .await
        .unwrap();
    watcher.flush().await.unwrap();
    let (proxy, client) = through_proxy(&nats).await;
    let receipts = kit::bus::Receipts::start(client).await.unwrap();
    receipts
        .confirm(receipts.mark(), Duration::from_secs(5))
        .await
        .expect("a receipt from a server that answers");
    let publisher = publisher(receipts, &config.subjects);

    // The path goes silent: the publish and its flush succeed into the kernel's buffers, but
    // no receipt comes back.
    proxy.stall();
    let published = trips::outbox::publish_batch(&pool, &publisher)
        .await
        .unwrap();
    assert_eq!(
        published, 0,
        "without a receipt nothing counts as published"
    );
    assert_eq!(
        waiting().await,
        1,
        "and the row waits to be published again"
    );

    proxy.restore();
    let published = trips::outbox::publish_batch(&pool, &publisher)
        .await
        .unwrap();
    assert_eq!(published, 1, "with the path back, the row is published");
    assert_eq!(waiting().await, 0, "and deleted");
    let event: TripEvent = next(&mut events).await;
    assert_eq!(event.trip.trip_id, trip.trip_id);
}

#[tokio::test]
async fn a_receipt_does_not_vouch_across_a_reconnect() {
    let nats = NatsServer::start();
    let (proxy, client) = through_proxy(&nats).await;
    let receipts = kit::bus::Receipts::start(client.clone()).await.unwrap();
    let before = receipts.mark();
    let connects = kit::bus::connects(&client);
    // What went out before this may have died with the old connection.
    proxy.cut();
    proxy.restore();
    eventually("the client reconnected", PATIENCE, || async {
        (kit::bus::connects(&client) > connects).then_some(())
    })
    .await;
    let across = receipts.confirm(before, Duration::from_secs(5)).await;
    assert!(across.is_err(), "a receipt across a reconnect: {across:?}");
    receipts
        .confirm(receipts.mark(), Duration::from_secs(5))
        .await
        .expect("a receipt on the new connection");
}

#[tokio::test]
async fn the_sweeper_reverts_expired_offers_and_expires_searches() {
    let f = Fixture::start_with(|c| {
        c.store.search_timeout = Duration::from_secs(3);
        c.sweep.interval = Duration::from_millis(100);
        c.sweep.offer_grace = Duration::from_millis(100);
        c.sweep.quiet_after = Duration::from_millis(500);
    })
    .await;
    let region = protocol::GeoConfig::default().region_of(PICKUP).unwrap();
    let mut requests = f
        .bus
        .client
        .subscribe(f.subjects().ride_requests(region))
        .await
        .unwrap();
    f.bus.client.flush().await.unwrap();
    f.driver_online("driver-1").await;
    let id = f.create("rider-1", "k").await.trip_id;
    f.offer(id, "driver-1", 200).await.unwrap();

    // Nobody answers: the offer reverts and the driver is excluded.
    eventually("offer reverted", PATIENCE, || async {
        let trip = f.trip(id).await;
        (trip.state == TripState::Requested && trip.version > 2).then_some(())
    })
    .await;
    // The quiet request is re-published with the exclusion, more than once.
    let mut attempts = Vec::new();
    while attempts.len() < 3 {
        let request: RideRequest = next(&mut requests).await;
        attempts.push((request.attempt, request.excluded_drivers.clone()));
    }
    assert!(
        attempts
            .iter()
            .any(|(_, excluded)| excluded == &["driver-1".to_owned()]),
        "{attempts:?}"
    );
    // The search deadline passes: expired, by the system, with a reason.
    let trip = eventually("trip expired", PATIENCE, || async {
        let trip = f.trip(id).await;
        (trip.state == TripState::Expired).then_some(trip)
    })
    .await;
    assert_eq!(trip.ended_by, Some(Actor::System));
    assert!(trip.end_reason.unwrap().contains("deadline"));
}

#[tokio::test]
async fn commands_answer_unavailable_quickly_when_the_database_is_away() {
    let nats = NatsServer::start();
    let prefix = unique_prefix();
    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/none",
        tests::nats::free_port()
    );
    let trips = launch_trips(trips_config(&dead, &nats.url(), &prefix)).await;
    let bus = Bus::new(
        async_nats::connect(nats.url()).await.unwrap(),
        Subjects::new(&prefix).unwrap(),
    );
    let started = std::time::Instant::now();
    let reply: TripReply = eventually("a reply", PATIENCE, || async {
        bus.request(
            bus.subjects.trip_commands(),
            &create("rider-1", "k"),
            Duration::from_secs(10),
        )
        .await
        .ok()
    })
    .await;
    assert_eq!(code(&reply), Some(ErrorCode::Unavailable));
    assert!(reply.unwrap_err().code.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(10));
    // And it says it is not ready.
    let ready = reqwest::get(format!("http://{}/readyz", trips.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("database: waiting"));
}

/// A driver entering a zone, as a gateway reports it.
fn zone_enter(driver: &str) -> protocol::bus::ZoneEvent {
    protocol::bus::ZoneEvent {
        id: Uuid::new_v4(),
        transition: protocol::bus::ZoneTransition::Enter,
        driver_id: driver.to_owned(),
        zone_id: Uuid::new_v4(),
        zone_name: "rank".to_owned(),
        zone_kind: protocol::zone::ZoneKind::Watch,
        at: now_ms(),
        position: None,
    }
}

/// The types of the webhook deliveries queued, in the order they were queued.
async fn queued_for_webhooks(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT event_type FROM webhook_deliveries ORDER BY delivery_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test]
async fn every_event_is_queued_for_webhooks_as_it_is_written_and_published_in_order() {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let config = trips_config(&db.url, &nats.url(), &prefix);
    let subjects = &config.subjects;
    db.client()
        .await
        .execute(
            "INSERT INTO webhook_endpoints (endpoint_id, url, secret) VALUES ($1, $2, 's')",
            &[&Uuid::new_v4(), &"http://127.0.0.1:9/"],
        )
        .await
        .unwrap();
    // A trip's messages wait in the outbox, and no outbox round runs until the test's own.
    let (pool, trip) = created_without_publisher(&db, &config).await;
    assert_eq!(
        queued_for_webhooks(&db).await,
        ["trip.requested"],
        "deliverable once the trip is written, before any publication"
    );
    // The row says what each message is, and still reads as the previous release reads it.
    let row = db
        .client()
        .await
        .query_one(
            "SELECT subjects, hooks_queued, kinds, roles, recipients FROM outbox",
            &[],
        )
        .await
        .unwrap();
    let region = trip.region;
    assert_eq!(
        row.get::<_, Vec<String>>(0),
        [
            subjects.trip_events(region),
            subjects.event(protocol::events::EventType::TripRequested),
            subjects.user(Role::Rider, "rider-1"),
            subjects.ride_requests(region),
        ]
    );
    assert!(
        row.get::<_, bool>(1),
        "a 0.1 round must not queue them again"
    );
    assert_eq!(
        row.get::<_, Vec<String>>(2),
        ["bus", "event", "client", "bus"]
    );
    assert_eq!(
        row.get::<_, Vec<Option<String>>>(3),
        [None, None, Some("rider".to_owned()), None]
    );
    assert_eq!(
        row.get::<_, Vec<Option<String>>>(4),
        [None, None, Some("rider-1".to_owned()), None]
    );

    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut events = client.subscribe(subjects.events_all()).await.unwrap();
    let mut rider = client
        .subscribe(subjects.user(Role::Rider, "rider-1"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let publisher = publisher(kit::bus::Receipts::start(client).await.unwrap(), subjects);

    let entered = zone_enter("driver-1");
    let record =
        || trips::tracking::record(&pool, subjects, &publisher, std::slice::from_ref(&entered));
    let recorded = record().await.unwrap();
    assert_eq!(recorded, 1);
    assert_eq!(
        queued_for_webhooks(&db).await,
        ["trip.requested", "zone.enter"],
        "deliverable once recorded"
    );
    assert_eq!(outbox_rows(&db).await, 2, "and waiting to be published");
    // A repeat of the same crossing (a gateway's retry) writes nothing.
    let recorded = record().await.unwrap();
    assert_eq!(recorded, 0);
    assert_eq!(outbox_rows(&db).await, 2);

    // A row as a replica of the previous release writes it during a rolling upgrade: subjects
    // and payloads alone, its event not queued yet.
    let left = trips::tracking::to_public(&protocol::bus::ZoneEvent {
        transition: protocol::bus::ZoneTransition::Exit(protocol::events::ExitReason::Left),
        ..zone_enter("driver-2")
    });
    let hello = br#"{"from":"0.1"}"#.to_vec();
    db.client()
        .await
        .execute(
            "INSERT INTO outbox (subjects, payloads) VALUES ($1, $2)",
            &[
                &vec![
                    subjects.event(left.kind),
                    subjects.user(Role::Rider, "rider-1"),
                ],
                &vec![left.to_json().into_bytes(), hello.clone()],
            ],
        )
        .await
        .unwrap();

    let published = trips::outbox::publish_batch(&pool, &publisher)
        .await
        .unwrap();
    assert_eq!(published, 3);
    let first: protocol::events::Event = next(&mut events).await;
    assert_eq!(first.kind, protocol::events::EventType::TripRequested);
    let second: protocol::events::Event = next(&mut events).await;
    assert_eq!(second.id, entered.id.to_string(), "in commit order");
    let third: protocol::events::Event = next(&mut events).await;
    assert_eq!(third.id, left.id);
    let update: ServerMessage = next(&mut rider).await;
    assert!(matches!(update, ServerMessage::TripUpdate { trip: t } if t.trip_id == trip.trip_id));
    let from_previous = tokio::time::timeout(PATIENCE, rider.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from_previous.payload.as_ref(), hello.as_slice());
    assert_eq!(
        queued_for_webhooks(&db).await,
        ["trip.requested", "zone.enter", "zone.exit"],
        "the round queued only the previous release's event, and nothing twice"
    );
    assert_eq!(outbox_rows(&db).await, 0);
}
