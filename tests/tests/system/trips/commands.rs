//! Commands: idempotent creates, racing claims, a whole trip, refusals, the service area.

use super::*;

#[tokio::test]
async fn a_create_retried_ten_times_yields_one_trip_and_one_request() {
    let f = Fixture::start().await;
    let region = f
        .bus
        .subjects
        .ride_requests(protocol::GeoConfig::default().region_of(PICKUP).unwrap());
    let mut requests = f.bus.client.subscribe(region).await.unwrap();
    f.bus.client.flush().await.unwrap();

    let replies =
        futures_util::future::join_all((0..10).map(|_| f.command(create("rider-1", "key-1"))))
            .await;
    let outcomes: Vec<TripOutcome> = replies.into_iter().map(Result::unwrap).collect();
    let first = outcomes[0].trip.as_ref().unwrap().trip_id;
    assert!(
        outcomes
            .iter()
            .all(|o| o.trip.as_ref().unwrap().trip_id == first)
    );
    assert_eq!(outcomes.iter().filter(|o| o.changed).count(), 1);

    let count: i64 =
        f.db.client()
            .await
            .query_one("SELECT count(*) FROM trips", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(count, 1);
    let request: RideRequest = next(&mut requests).await;
    assert_eq!(request.trip.trip_id, first);
    assert_eq!(request.attempt, 1);
    // Nothing more: one stored trip, one published request.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), requests.next())
            .await
            .is_err()
    );

    // The same key for a different ride is a conflict, not a silent reuse.
    let mut other = create("rider-1", "key-1");
    if let TripCommand::CreateTrip { dropoff, .. } = &mut other {
        *dropoff = Point::new(52.0, 13.0);
    }
    assert_eq!(code(&f.command(other).await), Some(ErrorCode::Conflict));
}

#[tokio::test]
async fn fifty_concurrent_claims_of_one_driver_exactly_one_wins() {
    let f = Fixture::start().await;
    f.driver_online("driver-1").await;
    let mut trips = Vec::new();
    for i in 0..50 {
        trips.push(f.create(&format!("rider-{i}"), "k").await.trip_id);
    }
    let replies =
        futures_util::future::join_all(trips.iter().map(|t| f.offer(*t, "driver-1", 30_000))).await;
    let won = replies.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{replies:?}");
    for reply in replies.iter().filter(|r| r.is_err()) {
        assert_eq!(code(reply), Some(ErrorCode::Conflict), "{reply:?}");
    }
    let held: i64 = f
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM trips WHERE driver_id = 'driver-1' AND state IN ('offered', 'accepted')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 1);
}

#[tokio::test]
async fn a_trip_runs_its_course_with_events_in_order() {
    let f = Fixture::start().await;
    let mut events = f
        .bus
        .client
        .subscribe(f.subjects().trip_events_all())
        .await
        .unwrap();
    let mut rider_inbox = f
        .bus
        .client
        .subscribe(f.subjects().user(Role::Rider, "rider-1"))
        .await
        .unwrap();
    let mut driver_inbox = f
        .bus
        .client
        .subscribe(f.subjects().user(Role::Driver, "driver-1"))
        .await
        .unwrap();
    f.bus.client.flush().await.unwrap();
    f.driver_online("driver-1").await;
    f.driver_online("driver-2").await;
    let trip = f.create("rider-1", "k1").await;
    let id = trip.trip_id;
    f.offer(id, "driver-1", 30_000).await.unwrap();

    // Someone else's offer cannot be accepted.
    let stolen = f
        .command(TripCommand::AnswerOffer {
            trip_id: id,
            driver_id: "driver-2".into(),
            accept: true,
        })
        .await;
    assert_eq!(code(&stolen), Some(ErrorCode::Forbidden));

    let accept = TripCommand::AnswerOffer {
        trip_id: id,
        driver_id: "driver-1".into(),
        accept: true,
    };
    assert!(f.command(accept.clone()).await.unwrap().changed);
    let again = f.command(accept).await.unwrap();
    assert!(!again.changed, "a repeated accept has no second effect");

    for stage in [TripStage::Arrived, TripStage::Started, TripStage::Completed] {
        let progress = TripCommand::Progress {
            trip_id: id,
            driver_id: "driver-1".into(),
            stage,
            position: Some(PICKUP),
        };
        assert!(f.command(progress.clone()).await.unwrap().changed);
        assert!(!f.command(progress).await.unwrap().changed);
    }
    let done = f.trip(id).await;
    assert_eq!(done.state, TripState::Completed);

    let mut seen = Vec::new();
    let mut told = Vec::new();
    while seen.len() < 6 {
        let event: TripEvent = next(&mut events).await;
        assert_eq!(event.trip.trip_id, id);
        seen.push(event.trip.state);
        told.push(event);
    }
    // Each event names who acted; a driver's reports carry where it was, how far from the
    // stage's place, and the completion (reported at the pickup) is flagged.
    assert_eq!(
        (told[0].actor, told[0].actor_id.as_deref()),
        (Actor::Rider, Some("rider-1"))
    );
    let arrived = &told[3];
    assert_eq!(arrived.actor_id.as_deref(), Some("driver-1"));
    assert_eq!(arrived.position, Some(PICKUP));
    assert!(
        arrived.distance_m.unwrap() < 1.0 && !arrived.flagged,
        "{arrived:?}"
    );
    let completed = &told[5];
    assert_eq!(completed.position, Some(PICKUP));
    let far = PICKUP.distance_m(&DROPOFF);
    assert!(
        (completed.distance_m.unwrap() - far).abs() < 1.0,
        "{completed:?}"
    );
    assert!(completed.flagged, "{completed:?}");
    assert_eq!(
        seen,
        [
            TripState::Requested,
            TripState::Offered,
            TripState::Accepted,
            TripState::Arrived,
            TripState::InProgress,
            TripState::Completed
        ]
    );
    // The rider heard every step as a client message; the driver got the offer first.
    let first: ServerMessage = next(&mut rider_inbox).await;
    assert!(
        matches!(first, ServerMessage::TripUpdate { trip } if trip.state == TripState::Requested)
    );
    let offer: ServerMessage = next(&mut driver_inbox).await;
    assert!(matches!(offer, ServerMessage::Offer { trip, .. } if trip.trip_id == id));

    // The timeline in the database has every transition with its actor.
    let rows =
        f.db.client()
            .await
            .query(
                "SELECT to_state, actor FROM trip_events WHERE trip_id = $1 ORDER BY version",
                &[&id],
            )
            .await
            .unwrap();
    let timeline: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(timeline.len(), 6);
    assert_eq!(timeline[2], ("accepted".to_owned(), "driver".to_owned()));
}

#[tokio::test]
async fn wrong_actors_and_invalid_transitions_write_nothing() {
    let f = Fixture::start().await;
    f.driver_online("driver-1").await;
    let id = f.create("rider-1", "k").await.trip_id;
    let events_before: i64 =
        f.db.client()
            .await
            .query_one("SELECT count(*) FROM trip_events", &[])
            .await
            .unwrap()
            .get(0);

    let cases = [
        (
            TripCommand::Progress {
                trip_id: id,
                driver_id: "driver-1".into(),
                stage: TripStage::Completed,
                position: None,
            },
            ErrorCode::Forbidden,
        ),
        (
            TripCommand::Cancel {
                trip_id: id,
                actor: Actor::Rider,
                actor_id: "rider-2".into(),
                reason: None,
            },
            ErrorCode::Forbidden,
        ),
        (
            TripCommand::AnswerOffer {
                trip_id: id,
                driver_id: "driver-1".into(),
                accept: true,
            },
            ErrorCode::Forbidden,
        ),
        (
            TripCommand::Cancel {
                trip_id: Uuid::new_v4(),
                actor: Actor::Dispatcher,
                actor_id: "ops".into(),
                reason: None,
            },
            ErrorCode::NotFound,
        ),
        (
            TripCommand::Offer {
                trip_id: id,
                driver_id: "ghost".into(),
                expires_at: now_ms() + 10_000,
                pickup_eta_s: 1,
            },
            ErrorCode::NotFound,
        ),
    ];
    for (command, expected) in cases {
        assert_eq!(
            code(&f.command(command.clone()).await),
            Some(expected),
            "{command:?}"
        );
    }
    let events_after: i64 =
        f.db.client()
            .await
            .query_one("SELECT count(*) FROM trip_events", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(events_before, events_after);
    assert_eq!(f.trip(id).await.version, 1);

    // Cancel works, says so once, and a cancelled trip stays cancelled.
    let cancel = TripCommand::Cancel {
        trip_id: id,
        actor: Actor::Rider,
        actor_id: "rider-1".into(),
        reason: Some("<b>late</b>".into()),
    };
    assert!(f.command(cancel.clone()).await.unwrap().changed);
    assert!(!f.command(cancel).await.unwrap().changed);
    assert_eq!(
        code(&f.offer(id, "driver-1", 10_000).await),
        Some(ErrorCode::InvalidTransition)
    );
    let trip = f.trip(id).await;
    assert_eq!(trip.state, TripState::Cancelled);
    assert_eq!(trip.ended_by, Some(Actor::Rider));
    assert_eq!(trip.end_reason.as_deref(), Some("<b>late</b>"));
}

#[tokio::test]
async fn trips_outside_the_service_area_are_refused() {
    // The file's polygon becomes a service area zone, which a restart leaves as it is.
    let area = protocol::area::multipolygon(
        r#"{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[13.30, 52.45],
            [13.50, 52.45], [13.50, 52.58], [13.30, 52.58], [13.30, 52.45]]]}}"#,
    )
    .unwrap();
    let mut f = Fixture::start_with(|c| c.service_area = Some(area.clone())).await;
    let prefix = f.subjects().prefix().to_owned();
    let mut again = trips_config(&f.db.url, &f._nats.url(), &prefix);
    again.service_area = Some(area);
    let again = start_trips(again).await;
    f.trips.take().unwrap().stop().await.unwrap();
    let zones: Vec<serde_json::Value> = reqwest::Client::new()
        .get(format!("http://{}/api/zones", again.http))
        .bearer_auth(tests::client::token(Role::Dispatcher, "ops"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(zones.len(), 1, "{zones:?}");
    assert_eq!(
        (zones[0]["kind"].as_str(), zones[0]["version"].as_i64()),
        (Some("service_area"), Some(1))
    );
    assert_eq!(zones[0]["geometry"]["type"], "MultiPolygon");
    f.create("rider-1", "inside").await;
    for (pickup, dropoff) in [
        (Point::new(48.85, 2.35), DROPOFF),
        (PICKUP, Point::new(52.52, 13.9)),
    ] {
        let reply = f
            .command(TripCommand::CreateTrip {
                rider_id: "rider-1".into(),
                idempotency_key: format!("{pickup:?}"),
                pickup,
                dropoff,
                vehicle_class: None,
                min_capacity: None,
            })
            .await;
        let error = reply.unwrap_err();
        assert_eq!(error.code, ErrorCode::OutsideServiceArea);
        assert!(
            error.message.contains("outside every service area"),
            "{}",
            error.message
        );
    }
    let stored: i64 =
        f.db.client()
            .await
            .query_one("SELECT count(*) FROM trips", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(stored, 1, "nothing stored for refused requests");
}

/// A command that waited out a partition in its sender's socket reaches the service after the
/// link heals, long after the sender gave up on it: it is dropped, not carried out.
#[tokio::test]
async fn a_command_that_arrives_after_its_sender_gave_up_is_not_carried_out() {
    // One command at a time, so the late command is decided before the next one starts.
    let f = Fixture::start_with(|config| config.max_in_flight = 1).await;
    let addr = f.bus.client.server_info().port;
    let proxy = tests::proxy::TcpProxy::start(([127, 0, 0, 1], addr).into()).await;
    let client = async_nats::connect(format!("nats://{}", proxy.addr))
        .await
        .unwrap();
    let partitioned = Bus::new(client, f.bus.subjects.clone());
    partitioned.client.flush().await.unwrap();

    proxy.stall();
    let timeout = Duration::from_millis(500);
    let given_up = now_ms() + timeout.as_millis() as i64;
    let reply = partitioned
        .command(&create("rider-late", "key-late"), timeout)
        .await;
    assert_eq!(code(&reply), Some(ErrorCode::Timeout));
    // The link heals only once the request is past its deadline and the allowance for clocks.
    let stale_from = given_up + kit::bus::DEADLINE_SLACK.as_millis() as i64;
    eventually("the request's deadline passed", PATIENCE, || async {
        (now_ms() > stale_from + 100).then_some(())
    })
    .await;
    proxy.restore();

    // The sender retries, as told: the retry is what creates the trip, once.
    let retried = partitioned
        .command(&create("rider-late", "key-late"), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        retried.changed,
        "the late request was carried out before the retry"
    );
    let count: i64 =
        f.db.client()
            .await
            .query_one(
                "SELECT count(*) FROM trips WHERE rider_id = $1",
                &[&"rider-late"],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(count, 1);
}
