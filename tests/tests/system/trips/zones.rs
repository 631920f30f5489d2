//! Zones through the trips service's API: drawn, changed and deleted by dispatchers, in force
//! in every replica within 2 s with no restart, and refused with a clear error when invalid.

use serde_json::{Value, json};

use super::*;

/// A square about 220 m a side around `at`.
fn square(at: Point) -> Value {
    let d = 0.001;
    let (w, e, s, n) = (at.lng - d, at.lng + d, at.lat - d, at.lat + d);
    json!({"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]})
}

fn dispatcher() -> String {
    token_for(Role::Dispatcher, "ops")
}

fn token_for(role: Role, sub: &str) -> String {
    let claims = Claims {
        role,
        sub: sub.into(),
        exp: now_ms() / 1000 + 600,
        name: None,
    };
    token::mint(TOKEN_SECRET, &claims).unwrap()
}

fn create_at(rider: &str, key: &str, pickup: Point, dropoff: Point) -> TripCommand {
    TripCommand::CreateTrip {
        rider_id: rider.into(),
        idempotency_key: key.into(),
        pickup,
        dropoff,
        vehicle_class: None,
        min_capacity: None,
    }
}

/// Sends `request` and returns the status and the JSON body (null when there is none).
async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn zones_drawn_through_the_api_are_in_force_in_every_replica_within_2_s() {
    let mut f = Fixture::start().await;
    let prefix = f.subjects().prefix().to_owned();
    let b = start_trips(trips_config(&f.db.url, &f._nats.url(), &prefix)).await;
    let a = f.trips.take().unwrap();
    let http = reqwest::Client::new();
    let within = Duration::from_secs(2);
    // Before any zone: a trip from here is taken, and will be asked for again below.
    let early = f
        .command(create_at("r-early", "early", DROPOFF, PICKUP))
        .await
        .unwrap()
        .trip
        .unwrap();

    // Drawn through replica A, which then stops: replica B must refuse on its own.
    let (status, zone) = call(
        http.post(format!("http://{}/api/zones", a.http))
            .bearer_auth(dispatcher())
            .json(&json!({"name": "Station forecourt", "kind": "no_pickup",
                          "geometry": square(PICKUP), "metadata": {"why": "buses only"}})),
    )
    .await;
    assert_eq!(status, 201, "{zone}");
    assert_eq!(
        (zone["version"].as_i64(), zone["kind"].as_str()),
        (Some(1), Some("no_pickup"))
    );
    let id = zone["zone_id"].as_str().unwrap().to_owned();
    a.stop().await.unwrap();
    let mut n = 0;
    let refusal = eventually("the zone in force in replica B", within, || {
        n += 1;
        let command = create_at("r1", &format!("in-{n}"), PICKUP, DROPOFF);
        async { f.command(command).await.err() }
    })
    .await;
    assert_eq!(refusal.code, ErrorCode::PickupNotAllowed);
    assert!(
        refusal.message.contains("Station forecourt"),
        "{}",
        refusal.message
    );
    // Outside it, and with only the dropoff inside, requests are taken.
    f.command(create_at("r2", "out", DROPOFF, PICKUP))
        .await
        .unwrap();

    // Moved over the other point, at the version read; a stale version is refused.
    let moved =
        json!({"name": "Station forecourt", "kind": "no_pickup", "geometry": square(DROPOFF)});
    let (status, zone) = call(
        http.put(format!("http://{}/api/zones/{id}", b.http))
            .bearer_auth(dispatcher())
            .header("if-match", "\"1\"")
            .json(&moved),
    )
    .await;
    assert_eq!((status, zone["version"].as_i64()), (200, Some(2)), "{zone}");
    let (status, conflict) = call(
        http.put(format!("http://{}/api/zones/{id}", b.http))
            .bearer_auth(dispatcher())
            .header("if-match", "1")
            .json(&moved),
    )
    .await;
    assert_eq!(
        (status, conflict["code"].as_str()),
        (409, Some("conflict")),
        "{conflict}"
    );
    eventually("the moved zone in force", within, || {
        n += 1;
        let command = create_at("r3", &format!("moved-{n}"), PICKUP, DROPOFF);
        async { f.command(command).await.ok() }
    })
    .await;
    let refused = f
        .command(create_at("r4", "now-inside", DROPOFF, PICKUP))
        .await;
    assert_eq!(code(&refused), Some(ErrorCode::PickupNotAllowed));
    // A request stored before the zone covered its pickup, asked for again, is the same trip.
    let again = f
        .command(create_at("r-early", "early", DROPOFF, PICKUP))
        .await
        .unwrap();
    assert_eq!(
        (again.trip.unwrap().trip_id, again.changed),
        (early.trip_id, false)
    );

    // A service area zone: trips must start and end inside one.
    let (status, _) = call(
        http.post(format!("http://{}/api/zones", b.http))
            .bearer_auth(dispatcher())
            .json(
                &json!({"name": "Berlin", "kind": "service_area", "geometry":
                {"type": "Polygon", "coordinates": [[[13.30, 52.45], [13.50, 52.45], [13.50, 52.58],
                    [13.30, 52.58], [13.30, 52.45]]]}}),
            ),
    )
    .await;
    assert_eq!(status, 201);
    let far = f
        .command(create_at("r5", "far", PICKUP, Point::new(52.52, 13.9)))
        .await;
    assert_eq!(code(&far), Some(ErrorCode::OutsideServiceArea));

    // Deleted: pickups there are taken again; deleting it twice finds nothing.
    let (status, _) = call(
        http.delete(format!("http://{}/api/zones/{id}", b.http))
            .bearer_auth(dispatcher()),
    )
    .await;
    assert_eq!(status, 204);
    f.command(create_at("r6", "after-delete", DROPOFF, PICKUP))
        .await
        .unwrap();
    let (status, gone) = call(
        http.delete(format!("http://{}/api/zones/{id}", b.http))
            .bearer_auth(dispatcher()),
    )
    .await;
    assert_eq!((status, gone["code"].as_str()), (404, Some("not_found")));
    let (status, listed) = call(
        http.get(format!("http://{}/api/zones", b.http))
            .bearer_auth(dispatcher()),
    )
    .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|z| z["name"].as_str())
        .collect();
    assert_eq!(names, ["Berlin"]);
    b.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_zones_and_other_roles_are_refused_with_clear_errors() {
    let f = Fixture::start_with(|c| c.store.max_zone_vertices = 20).await;
    let base = format!("http://{}/api/zones", f.trips.as_ref().unwrap().http);
    let http = reqwest::Client::new();
    let zone = json!({"name": "Rank", "kind": "queue", "geometry": square(PICKUP)});

    let (status, body) = call(http.post(&base).json(&zone)).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    for role in [Role::Rider, Role::Driver] {
        let (status, body) = call(
            http.post(&base)
                .bearer_auth(token_for(role, "x"))
                .json(&zone),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("forbidden")),
            "{role:?}"
        );
        let (status, _) = call(http.get(&base).bearer_auth(token_for(role, "x"))).await;
        assert_eq!(status, 403);
    }

    let many: Vec<Value> = (0..=30)
        .map(|i| {
            let angle = f64::from(i % 30) / 30.0 * std::f64::consts::TAU;
            json!([13.40 + 0.01 * angle.cos(), 52.52 + 0.01 * angle.sin()])
        })
        .collect();
    let geometry = |coordinates: Value| json!({"type": "Polygon", "coordinates": coordinates});
    for (what, geometry, says) in [
        (
            "a bow tie",
            geometry(json!([[
                [13.39, 52.51],
                [13.41, 52.53],
                [13.41, 52.51],
                [13.39, 52.53],
                [13.39, 52.51]
            ]])),
            "self-intersection",
        ),
        (
            "an open ring",
            geometry(json!([[
                [13.39, 52.51],
                [13.41, 52.51],
                [13.41, 52.53],
                [13.39, 52.53]
            ]])),
            "not closed",
        ),
        (
            "a latitude of 952",
            geometry(json!([[
                [13.39, 952.51],
                [13.41, 52.51],
                [13.41, 52.53],
                [13.39, 952.51]
            ]])),
            "in range",
        ),
        ("31 vertices", geometry(json!([many])), "at most 20"),
        (
            "a point",
            json!({"type": "Point", "coordinates": [13.4, 52.5]}),
            "Polygon or MultiPolygon",
        ),
        (
            "SQL in the type",
            json!({"type": "Polygon'; DROP TABLE zones;--", "coordinates": []}),
            "Polygon or MultiPolygon",
        ),
    ] {
        let (status, body) = call(
            http.post(&base)
                .bearer_auth(dispatcher())
                .json(&json!({"name": "Bad", "kind": "watch", "geometry": geometry})),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_field")),
            "{what}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{what}: {body}"
        );
    }
    for (what, body) in [
        ("not JSON", "{\"name\": ".to_owned()),
        (
            "an unknown kind",
            json!({"name": "x", "kind": "lava", "geometry": square(PICKUP)}).to_string(),
        ),
        (
            "an unknown field",
            json!({"name": "x", "kind": "watch", "geometry": square(PICKUP), "colour": 1})
                .to_string(),
        ),
    ] {
        let (status, answer) = call(
            http.post(&base)
                .bearer_auth(dispatcher())
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("invalid_message")),
            "{what}: {answer}"
        );
    }
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let (status, answer) = call(
        http.post(&base)
            .bearer_auth(dispatcher())
            .header("content-type", "application/json")
            .body(huge),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("too_large")),
        "{answer}"
    );
    let (status, _) = call(
        http.get(format!("{base}/not-a-uuid"))
            .bearer_auth(dispatcher()),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(
        http.get(format!("{base}/{}", Uuid::new_v4()))
            .bearer_auth(dispatcher()),
    )
    .await;
    assert_eq!(status, 404);
    // Nothing refused was stored.
    let (status, listed) = call(http.get(&base).bearer_auth(dispatcher())).await;
    assert_eq!((status, listed), (200, json!([])));
}
