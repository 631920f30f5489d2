//! History: events in order across a schema upgrade, breadcrumbs, the history API.

use super::*;

/// A database written before event ids came in blocks (schema version 2) keeps each trip's
/// history through the upgrade: its events get versions in their old order, and the trip
/// carries on from there.
#[tokio::test]
async fn upgrading_the_schema_keeps_each_trips_history_in_order() {
    let db = TestDb::create_at(Some(2)).await;
    let config = trips_config(&db.url, "nats://127.0.0.1:1", &unique_prefix());
    let region = config.geo.region_of(PICKUP).unwrap().to_string();
    let id = Uuid::new_v4();
    let pg = db.client().await;
    pg.batch_execute(
        "INSERT INTO riders (rider_id) VALUES ('rider-1'); \
         INSERT INTO drivers (driver_id, online, vehicle_class, capacity) \
           VALUES ('driver-1', true, 'standard', 4); \
         SELECT nextval('trip_events_event_id_seq') FROM generate_series(1, 10)",
    )
    .await
    .unwrap();
    pg.execute(
        "INSERT INTO trips (trip_id, rider_id, idempotency_key, state, driver_id, region, \
           pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, search_deadline, offer_expires_at, \
           version) \
         VALUES ($1, 'rider-1', 'k', 'offered', 'driver-1', $2, $3, $4, $5, $6, \
           now() + interval '2 minutes', now() + interval '1 minute', 2)",
        &[
            &id,
            &region,
            &PICKUP.lat,
            &PICKUP.lng,
            &DROPOFF.lat,
            &DROPOFF.lng,
        ],
    )
    .await
    .unwrap();
    pg.execute(
        "INSERT INTO trip_events (trip_id, from_state, to_state, actor, actor_id) VALUES \
           ($1, NULL, 'requested', 'rider', 'rider-1'), \
           ($1, 'requested', 'offered', 'system', 'matcher')",
        &[&id],
    )
    .await
    .unwrap();
    pg.execute(
        "INSERT INTO offers (trip_id, driver_id, expires_at) \
         VALUES ($1, 'driver-1', now() + interval '1 minute')",
        &[&id],
    )
    .await
    .unwrap();

    trips::db::migrate(&db.url).await.unwrap();
    let store = store_on(&db, &config);
    let accepted = store.execute(accept(id, "driver-1")).await.unwrap();
    assert!(accepted.changed);
    let rows = pg
        .query(
            "SELECT version, event_id, to_state FROM trip_events WHERE trip_id = $1 \
             ORDER BY version",
            &[&id],
        )
        .await
        .unwrap();
    let states: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(2))).collect();
    assert_eq!(
        states,
        [(1, "requested"), (2, "offered"), (3, "accepted")].map(|(v, s)| (v, s.to_owned()))
    );
    let ids: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert!(
        ids.is_sorted(),
        "the new event's id follows the old ones: {ids:?}"
    );
}

#[tokio::test]
async fn breadcrumbs_are_recorded_and_expire() {
    let f = Fixture::start().await;
    f.driver_online("driver-1").await;
    let id = f.create("rider-1", "k").await.trip_id;
    let now = now_ms();
    for seq in 0..100u64 {
        let position = protocol::bus::Position {
            driver_id: "driver-1".into(),
            lat: PICKUP.lat + seq as f64 * 1e-4,
            lng: PICKUP.lng,
            heading: Some(0.0),
            speed: Some(10.0),
            accuracy: None,
            ts: now - 100_000 + seq as i64 * 1000,
            seq,
            status: protocol::client::VehicleStatus::OnTrip,
            vehicle_class: None,
            capacity: 4,
            trip_id: Some(id),
            received_us: 0,
        };
        f.bus
            .publish(f.subjects().breadcrumbs(), &position)
            .await
            .unwrap();
    }
    f.bus.client.flush().await.unwrap();
    eventually("breadcrumbs written", PATIENCE, || async {
        let n: i64 =
            f.db.client()
                .await
                .query_one("SELECT count(*) FROM breadcrumbs", &[])
                .await
                .ok()?
                .get(0);
        (n == 100).then_some(())
    })
    .await;
    // The route comes back through the history API in order.
    let dispatcher = token::mint(
        TOKEN_SECRET,
        &Claims {
            role: Role::Dispatcher,
            sub: "ops".into(),
            exp: now / 1000 + 60,
            name: None,
        },
    )
    .unwrap();
    let http = f.trips.as_ref().unwrap().http;
    let detail: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{http}/api/trips/{id}"))
        .bearer_auth(&dispatcher)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let route = detail["route"].as_array().unwrap();
    assert_eq!(route.len(), 100);
    assert!(
        route
            .windows(2)
            .all(|w| w[0]["ts"].as_i64() < w[1]["ts"].as_i64())
    );
    // Retention of 50 s keeps the newest half.
    let pool = trips::db::pool(&f.db.url, &Default::default()).unwrap();
    let deleted = trips::breadcrumbs::expire(&pool, Duration::from_secs(50))
        .await
        .unwrap();
    assert!((49..=51).contains(&deleted), "{deleted}");
}

#[tokio::test]
async fn the_history_api_needs_a_dispatcher_and_filters() {
    let f = Fixture::start().await;
    let a = f.create("rider-a", "k").await;
    f.create("rider-b", "k").await;
    let ended = f.create("rider-c", "k").await;
    f.command(TripCommand::Cancel {
        trip_id: ended.trip_id,
        actor: Actor::Rider,
        actor_id: "rider-c".into(),
        reason: None,
    })
    .await
    .unwrap();
    let http = f.trips.as_ref().unwrap().http;
    let exp = now_ms() / 1000 + 60;
    let mint = |role, sub: &str| {
        token::mint(
            TOKEN_SECRET,
            &Claims {
                role,
                sub: sub.into(),
                exp,
                name: None,
            },
        )
        .unwrap()
    };
    let client = reqwest::Client::new();
    let get = |path: String, token: Option<String>| {
        let mut request = client.get(format!("http://{http}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(get("/api/trips".into(), None).await.unwrap().status(), 401);
    assert_eq!(
        get("/api/trips".into(), Some("forged.token".into()))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        get("/api/trips".into(), Some(mint(Role::Rider, "rider-a")))
            .await
            .unwrap()
            .status(),
        403
    );

    let ops = Some(mint(Role::Dispatcher, "ops"));
    let all: Vec<TripView> = get("/api/trips".into(), ops.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    // `active`: every trip under way, the cancelled one not.
    let active: Vec<TripView> = get("/api/trips?state=active".into(), ops.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(active.len(), 2, "{active:?}");
    assert!(active.iter().all(|t| t.trip_id != ended.trip_id));
    let mine: Vec<TripView> = get(
        "/api/trips?rider_id=rider-a&state=requested".into(),
        ops.clone(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].trip_id, a.trip_id);
    let none: Vec<TripView> = get(
        format!("/api/trips?from={}", now_ms() + 60_000),
        ops.clone(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(none.is_empty());
    for bad in [
        "/api/trips?rider_id=x'%20OR%20'1'='1",
        "/api/trips?state=bogus",
        "/api/trips?limit=0",
        "/api/trips/not-a-uuid",
    ] {
        let response = get(bad.into(), ops.clone()).await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "invalid_field");
    }
    assert_eq!(
        get(format!("/api/trips/{}", Uuid::new_v4()), ops.clone())
            .await
            .unwrap()
            .status(),
        404
    );
    let detail: serde_json::Value = get(format!("/api/trips/{}", a.trip_id), ops)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["events"][0]["to"], "requested");
    assert_eq!(detail["events"][0]["actor"], "rider");
}

/// A trip's region is read back as a cell (`TripView::region`): the schema refuses any other
/// text, so no read of a trip can find one it cannot use.
#[tokio::test]
async fn the_schema_takes_only_h3_cells_as_a_trips_region() {
    let db = TestDb::create().await;
    let config = trips_config(&db.url, "nats://127.0.0.1:1", &unique_prefix());
    let pg = db.client().await;
    pg.batch_execute("INSERT INTO riders (rider_id) VALUES ('rider-1')")
        .await
        .unwrap();
    let insert = |region: String| {
        let pg = &pg;
        async move {
            pg.execute(
                "INSERT INTO trips (trip_id, rider_id, idempotency_key, state, region, \
                   pickup_lat, pickup_lng, dropoff_lat, dropoff_lng, search_deadline) \
                 VALUES ($1, 'rider-1', $2, 'requested', $3, 52.5, 13.4, 52.6, 13.5, \
                   now() + interval '2 minutes')",
                &[&Uuid::new_v4(), &region, &region],
            )
            .await
        }
    };
    let cell = config.geo.region_of(PICKUP).unwrap().to_string();
    insert(cell).await.unwrap();
    for bad in [
        "r",
        "",
        "851F1D4BFFFFFFF",
        "851f1d4bfffffff; --",
        "not a cell at all",
    ] {
        let refused = insert(bad.to_owned()).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
            "{bad:?}: {refused}"
        );
    }
}
