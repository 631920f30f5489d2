//! Hostile input over real WebSockets and HTTP, case by case: each gets a clear error or close
//! code, the gateway and trips service stay healthy for everyone else, and nothing is stored
//! that should not be. RELIABILITY.md lists the cases.

use std::time::Duration;

use futures_util::SinkExt;
use protocol::bus::TripCommand;
use protocol::client::{Role, ServerMessage, close_code};
use protocol::time::now_ms;
use protocol::{ErrorCode, Point};
use serde_json::{Value, json};
use tests::client::{Client, Ended, token, token_with};
use tests::sandbox::Sandbox;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

const BERLIN: Point = Point::new(52.520_008, 13.404_954);
const SQL: &str = "'); DROP TABLE trips; --";
const SCRIPT: &str = "<script>alert('x')</script><img src=x onerror=alert(1)>";

/// The cases run so far, for the count and the failure messages.
#[derive(Default)]
struct Cases(Vec<&'static str>);

impl Cases {
    fn pass(&mut self, name: &'static str) {
        tracing::info!(case = name, "hostile case handled");
        self.0.push(name);
    }
}

fn location(id: u64, lat: Value, lng: Value) -> Value {
    json!({"type": "location", "id": id, "lat": lat, "lng": lng, "ts": now_ms(), "seq": id})
}

fn ride(id: u64, key: &str) -> Value {
    json!({"type": "request_ride", "id": id, "pickup": {"lat": BERLIN.lat, "lng": BERLIN.lng},
           "dropoff": {"lat": 52.5, "lng": 13.45}, "idempotency_key": key})
}

/// Sends `frame` and expects the error `code` for message `id`, the connection staying open.
async fn refused(client: &mut Client, frame: Value, id: u64, code: ErrorCode) {
    client.send_json(&frame).await;
    assert_eq!(client.error_for(id).await, code, "answer to {frame}");
}

/// Sends raw text and expects an error without an id (the frame could not be read).
async fn unreadable(client: &mut Client, text: String) {
    client.send_text(text.clone()).await;
    match client.recv().await {
        ServerMessage::Error {
            code: ErrorCode::InvalidMessage,
            id: None,
            ..
        } => {}
        other => panic!("{} answered with {other:?}", &text[..text.len().min(80)]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_clear_refusals_and_harms_nobody() {
    let stack = Sandbox::builder()
        .gateways(1)
        .tune_gateway(|config| {
            config.limits.hello_timeout = Duration::from_millis(500);
            config.limits.max_message_bytes = 4096;
        })
        .start()
        .await;
    let (trips, gateway, db, bus) = (&stack.trips[0], stack.gateway(), &stack.db, &stack.bus);
    let ws = gateway.ws;
    let mut cases = Cases::default();

    // Somebody minding their own business throughout.
    let mut bystander = Client::connect(ws, Role::Rider, "bystander").await;
    bystander.send_json(&ride(1, "bystander-1")).await;
    let their_trip = bystander.ack_trip(1).await;

    // ---- tokens ----
    let forged = protocol::token::mint(
        b"not-the-servers-secret",
        &protocol::token::Claims {
            role: Role::Dispatcher,
            sub: "mallory".into(),
            exp: now_ms() / 1000 + 60,
            name: None,
        },
    )
    .unwrap();
    let rider_token = token(Role::Rider, "mallory");
    let dispatcher_token = token(Role::Dispatcher, "mallory");
    // A dispatcher's header and claims under a rider's signature.
    let spliced = format!(
        "{}.{}",
        dispatcher_token.rsplit_once('.').unwrap().0,
        rider_token.rsplit_once('.').unwrap().1
    );
    for (name, bad) in [
        ("token missing (empty)", String::new()),
        ("token forged with another secret", forged),
        ("token expired", token_with(Role::Driver, "d1", None, -120)),
        ("token with claims swapped under another signature", spliced),
        ("token that is not a token", "garbage".repeat(3)),
    ] {
        let mut client = Client::open(ws).await;
        client
            .send_json(&json!({"type": "hello", "token": bad, "versions": [1]}))
            .await;
        // An error saying why (when the hello could be read), then close 4001.
        let ended = client.ended().await;
        assert_eq!(
            ended,
            Ended::Closed(Some(close_code::UNAUTHORIZED)),
            "{name}"
        );
        cases.pass(name);
    }
    let mut client = Client::open(ws).await;
    client
        .send_json(&json!({"type": "hello", "token": "a".repeat(100_000), "versions": [1]}))
        .await;
    // Closed with 1009 as soon as the frame header shows its size; the rest of the frame,
    // still in flight, is read away so the close frame is not lost to a reset.
    assert_eq!(
        client.ended().await,
        Ended::Closed(Some(close_code::TOO_BIG))
    );
    cases.pass("a token far too long");
    let mut client = Client::open(ws).await;
    client
        .send_json(&json!({"type": "hello", "versions": [1]}))
        .await;
    assert!(matches!(
        client.ended().await,
        Ended::Closed(Some(close_code::UNAUTHORIZED))
    ));
    cases.pass("hello without a token field");
    let mut client = Client::open(ws).await;
    client
        .send_json(&location(1, json!(52.5), json!(13.4)))
        .await;
    assert_eq!(
        client.ended().await,
        Ended::Closed(Some(close_code::UNAUTHORIZED))
    );
    cases.pass("a message before hello");
    let mut client = Client::open(ws).await;
    assert_eq!(
        client.ended().await,
        Ended::Closed(Some(close_code::HELLO_TIMEOUT))
    );
    cases.pass("a WebSocket that never says hello");
    // TCP without finishing the WebSocket handshake: dropped after the handshake timeout.
    let mut half = tokio::net::TcpStream::connect(ws).await.unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut half, &mut buf),
    )
    .await
    .expect("the half-open connection is closed by the server");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    cases.pass("a connection that never finishes the handshake");
    let refused_path = tokio_tungstenite::connect_async(format!("ws://{ws}/admin")).await;
    assert!(refused_path.is_err());
    cases.pass("a WebSocket on a path other than /ws");

    // ---- roles and identities ----
    let mut rider = Client::connect(ws, Role::Rider, "r-hostile").await;
    let mut driver = Client::connect(ws, Role::Driver, "d-hostile").await;
    driver
        .send_json(
            &json!({"type": "go_online", "id": 1, "vehicle_class": "standard", "capacity": 4}),
        )
        .await;
    driver.ack_for(1).await;
    let mut spoof = location(2, json!(BERLIN.lat), json!(BERLIN.lng));
    spoof["driver_id"] = json!("someone-else");
    refused(&mut driver, spoof, 2, ErrorCode::InvalidMessage).await;
    cases.pass("a driver speaking for another driver");
    refused(
        &mut rider,
        location(3, json!(BERLIN.lat), json!(BERLIN.lng)),
        3,
        ErrorCode::Forbidden,
    )
    .await;
    cases.pass("a rider reporting positions");
    refused(&mut driver, ride(4, "k4"), 4, ErrorCode::Forbidden).await;
    cases.pass("a driver requesting rides");
    refused(
        &mut rider,
        json!({"type": "assign_driver", "id": 5, "trip_id": their_trip.trip_id, "driver_id": "d-hostile"}),
        5,
        ErrorCode::Forbidden,
    )
    .await;
    cases.pass("a rider sending a dispatcher command (assign)");
    refused(
        &mut driver,
        json!({"type": "subscribe_viewport", "id": 6, "viewport": {"south": 52.4, "west": 13.3, "north": 52.6, "east": 13.5}, "zoom": 13}),
        6,
        ErrorCode::Forbidden,
    )
    .await;
    cases.pass("a driver watching the fleet");
    refused(
        &mut rider,
        json!({"type": "cancel_trip", "id": 7, "trip_id": their_trip.trip_id}),
        7,
        ErrorCode::Forbidden,
    )
    .await;
    cases.pass("a rider cancelling someone else's trip");
    refused(
        &mut rider,
        json!({"type": "get_trip", "id": 8, "trip_id": their_trip.trip_id}),
        8,
        ErrorCode::NotFound,
    )
    .await;
    cases.pass("a rider asking for someone else's trip");
    refused(
        &mut driver,
        json!({"type": "get_trip", "id": 9, "trip_id": their_trip.trip_id}),
        9,
        ErrorCode::NotFound,
    )
    .await;
    cases.pass("a driver asking for a trip it has no part in");
    // An offer to another driver cannot be taken, nor progressed, by this one.
    let _other = Client::driver_online_at(ws, &token(Role::Driver, "d-other"), BERLIN).await;
    let offer = TripCommand::Offer {
        trip_id: their_trip.trip_id,
        driver_id: "d-other".into(),
        expires_at: now_ms() + 60_000,
        pickup_eta_s: 60,
    };
    bus.command(&offer, Duration::from_secs(10)).await.unwrap();
    driver
        .send_json(&json!({"type": "accept_offer", "id": 10, "trip_id": their_trip.trip_id}))
        .await;
    let code = driver.error_for(10).await;
    assert!(
        matches!(
            code,
            ErrorCode::Forbidden | ErrorCode::NotFound | ErrorCode::InvalidTransition
        ),
        "{code:?}"
    );
    cases.pass("a driver accepting another driver's offer");
    driver
        .send_json(&json!({"type": "trip_progress", "id": 11, "trip_id": their_trip.trip_id, "stage": "arrived"}))
        .await;
    let code = driver.error_for(11).await;
    assert!(
        matches!(
            code,
            ErrorCode::Forbidden | ErrorCode::NotFound | ErrorCode::InvalidTransition
        ),
        "{code:?}"
    );
    cases.pass("a driver reporting progress on another driver's trip");

    // ---- numbers and shapes ----
    refused(
        &mut driver,
        location(12, json!(95.0), json!(13.4)),
        12,
        ErrorCode::InvalidCoordinates,
    )
    .await;
    cases.pass("latitude out of range");
    refused(
        &mut driver,
        location(13, json!(52.5), json!(-181.0)),
        13,
        ErrorCode::InvalidCoordinates,
    )
    .await;
    cases.pass("longitude out of range");
    refused(
        &mut driver,
        location(14, json!(1e308), json!(1e308)),
        14,
        ErrorCode::InvalidCoordinates,
    )
    .await;
    cases.pass("absurdly large coordinates");
    unreadable(
        &mut driver,
        r#"{"type":"location","id":15,"lat":NaN,"lng":13.4,"ts":1,"seq":1}"#.into(),
    )
    .await;
    cases.pass("NaN coordinates");
    unreadable(
        &mut driver,
        r#"{"type":"location","id":16,"lat":1e400,"lng":13.4,"ts":1,"seq":1}"#.into(),
    )
    .await;
    cases.pass("infinite coordinates");
    let mut future = location(17, json!(BERLIN.lat), json!(BERLIN.lng));
    future["ts"] = json!(32_503_680_000_000i64);
    driver.send_json(&future).await;
    assert_ne!(driver.error_for(17).await, ErrorCode::Internal);
    cases.pass("a timestamp in the year 3000");
    unreadable(
        &mut driver,
        r#"{"type":"location","id":-1,"lat":52.5,"lng":13.4,"ts":1,"seq":-5}"#.into(),
    )
    .await;
    cases.pass("negative ids and sequence numbers");
    refused(
        &mut driver,
        json!({"type": "go_online", "id": 18, "vehicle_class": "standard", "capacity": 65535}),
        18,
        ErrorCode::InvalidField,
    )
    .await;
    cases.pass("an absurd vehicle capacity");
    refused(
        &mut rider,
        json!({"type": "request_ride", "id": 19, "pickup": {"lat": 52.5, "lng": 13.4}, "dropoff": {"lat": 52.5, "lng": 13.4}, "idempotency_key": "same"}),
        19,
        ErrorCode::InvalidField,
    )
    .await;
    cases.pass("a ride from a place to itself");
    let ops = &mut Client::connect(ws, Role::Dispatcher, "ops").await;
    refused(
        ops,
        json!({"type": "subscribe_viewport", "id": 20, "viewport": {"south": 53.0, "west": 13.3, "north": 52.0, "east": 13.5}, "zoom": 13}),
        20,
        ErrorCode::InvalidField,
    )
    .await;
    cases.pass("an upside-down viewport");
    refused(
        ops,
        json!({"type": "subscribe_viewport", "id": 21, "viewport": {"south": -89.0, "west": -179.0, "north": 89.0, "east": 179.0}, "zoom": 3}),
        21,
        ErrorCode::InvalidField,
    )
    .await;
    cases.pass("a viewport of the whole world");
    unreadable(&mut driver, "[".repeat(3000)).await;
    cases.pass("deeply nested JSON");
    unreadable(&mut driver, "{not json at all".into()).await;
    cases.pass("malformed JSON");
    refused(
        &mut driver,
        json!({"type": "teleport", "id": 22}),
        22,
        ErrorCode::InvalidMessage,
    )
    .await;
    cases.pass("an unknown message type");
    refused(
        &mut driver,
        json!({"type": "go_offline", "id": 23, "extra": {"nested": [1, 2, 3]}}),
        23,
        ErrorCode::InvalidMessage,
    )
    .await;
    cases.pass("unknown fields");
    let mut big = Client::connect(ws, Role::Driver, "big").await;
    big.send_text(format!(
        r#"{{"type":"go_offline","id":1,"pad":"{}"}}"#,
        "x".repeat(10_000)
    ))
    .await;
    assert_eq!(big.ended().await, Ended::Closed(Some(1009)));
    cases.pass("an oversized frame");
    let mut binary = Client::connect(ws, Role::Driver, "bin").await;
    binary
        .ws
        .send(Message::binary(vec![0u8, 159, 146, 150, 255, 0, 7]))
        .await
        .unwrap();
    assert_eq!(binary.ended().await, Ended::Closed(Some(1003)));
    cases.pass("binary garbage");
    let mut flood = Client::connect(ws, Role::Driver, "flood").await;
    let mut seq = 1000;
    let mut send_flood = async |flood: &mut Client, frames: u64| {
        for _ in 0..frames {
            seq += 1;
            let frame =
                Message::text(location(seq, json!(BERLIN.lat), json!(BERLIN.lng)).to_string());
            if flood.ws.send(frame).await.is_err() {
                break;
            }
        }
    };
    // Past the burst: told it is rate limited, still connected.
    send_flood(&mut flood, 100).await;
    flood
        .recv_until(|m| {
            matches!(
                m,
                ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }
            )
        })
        .await;
    // Keeping it up: closed with 4029 (seen as a reset when the close crosses frames still
    // being sent).
    send_flood(&mut flood, 500).await;
    let ended = flood.ended().await;
    assert!(
        matches!(
            ended,
            Ended::Closed(Some(close_code::RATE_LIMITED)) | Ended::Dropped
        ),
        "{ended:?}"
    );
    cases.pass("a flood beyond the rate limit");

    // ---- injection in free text ----
    refused(&mut rider, ride(24, SQL), 24, ErrorCode::InvalidField).await;
    cases.pass("SQL in an idempotency key");
    rider.send_json(&ride(25, "r-hostile-1")).await;
    let own = rider.ack_trip(25).await;
    rider
        .send_json(&json!({"type": "cancel_trip", "id": 26, "trip_id": own.trip_id, "reason": SQL}))
        .await;
    rider.ack_for(26).await;
    cases.pass("SQL in a cancel reason (stored as text)");
    rider.send_json(&ride(27, "r-hostile-2")).await;
    let second = rider.ack_trip(27).await;
    rider
        .send_json(
            &json!({"type": "cancel_trip", "id": 28, "trip_id": second.trip_id, "reason": SCRIPT}),
        )
        .await;
    rider.ack_for(28).await;
    cases.pass("HTML and script in a cancel reason (stored as text)");
    let _named = Client::driver_online_at(
        ws,
        &token_with(
            Role::Driver,
            "d-named",
            Some(&format!("{SQL}{SCRIPT}")),
            3600,
        ),
        BERLIN,
    )
    .await;
    cases.pass("SQL and script in a display name (stored as text)");

    // ---- HTTP ----
    let http = reqwest::Client::new();
    let api = format!("http://{}/api/trips", trips.http);
    let proxied = format!("http://{}/api/trips", gateway.running.http);
    for (name, url, bearer, status) in [
        ("API without a token", api.clone(), None, 401),
        (
            "API with a rider's token",
            api.clone(),
            Some(token(Role::Rider, "r1")),
            403,
        ),
        (
            "API with a forged token",
            api.clone(),
            Some("x.y".to_owned()),
            401,
        ),
        (
            "API through the gateway without a token",
            proxied.clone(),
            None,
            401,
        ),
        (
            "API: trip id that is not a UUID",
            format!("{api}/1%20OR%201=1"),
            Some(token(Role::Dispatcher, "ops")),
            400,
        ),
        (
            "API: SQL in the state filter",
            format!("{api}?state=%27%3B%20DROP%20TABLE%20trips%3B--"),
            Some(token(Role::Dispatcher, "ops")),
            400,
        ),
        (
            "API: SQL in the rider filter",
            format!("{api}?rider_id=%27%20OR%20%271%27=%271"),
            Some(token(Role::Dispatcher, "ops")),
            400,
        ),
        (
            "API: an absurd limit",
            format!("{api}?limit=100000000"),
            Some(token(Role::Dispatcher, "ops")),
            400,
        ),
        (
            "API: a time range that is not a number",
            format!("{api}?from=yesterday"),
            Some(token(Role::Dispatcher, "ops")),
            400,
        ),
    ] {
        let mut request = http.get(&url);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), status, "{name}: {url}");
        if status != 400 {
            let body: Value = answer.json().await.unwrap();
            assert!(body["code"].is_string(), "{name}: {body}");
        }
        cases.pass(name);
    }
    let detail: Value = http
        .get(format!("{api}/{}", second.trip_id))
        .bearer_auth(token(Role::Dispatcher, "ops"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        detail["trip"]["end_reason"], SCRIPT,
        "returned as JSON data, unchanged"
    );

    // ---- a storm of connections ----
    let storm: Vec<_> = (0..2_000)
        .map(|_| tokio::spawn(tokio::net::TcpStream::connect(ws)))
        .collect();
    let mut opened = 0;
    for connection in storm {
        if let Ok(Ok(stream)) = connection.await {
            opened += 1;
            drop(stream);
        }
    }
    assert!(opened > 1_500, "only {opened} connections opened");
    let mut upgrades = Vec::new();
    for _ in 0..200 {
        upgrades.push(tokio::spawn(tokio_tungstenite::connect_async(format!(
            "ws://{ws}/ws"
        ))));
    }
    for upgrade in upgrades {
        drop(upgrade.await.unwrap());
    }
    cases.pass("thousands of connections opened and dropped at once");

    // ---- nobody else was harmed, nothing was stored that should not be ----
    bystander
        .send_json(&json!({"type": "get_trip", "id": 2, "trip_id": their_trip.trip_id}))
        .await;
    bystander.ack_for(2).await;
    let health = reqwest::get(format!("http://{}/readyz", gateway.running.http))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let pg = db.client().await;
    let trips_now: i64 = pg
        .query_one("SELECT count(*) FROM trips", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        trips_now, 3,
        "only the bystander's and the hostile rider's two trips"
    );
    let offered: String = pg
        .query_one(
            "SELECT state FROM trips WHERE trip_id = $1",
            &[&their_trip.trip_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        offered, "offered",
        "nobody else took or moved the bystander's trip"
    );
    let reason: String = pg
        .query_one(
            "SELECT end_reason FROM trips WHERE trip_id = $1",
            &[&own.trip_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason, SQL);
    let name: String = pg
        .query_one("SELECT name FROM drivers WHERE driver_id = 'd-named'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, format!("{SQL}{SCRIPT}"));
    let positions: i64 = pg
        .query_one(
            "SELECT count(*) FROM drivers WHERE driver_id = 'someone-else'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(positions, 0);
    assert!(
        cases.0.len() >= 30,
        "only {} cases: {:?}",
        cases.0.len(),
        cases.0
    );
}

/// Sends `GET {target}` as written, without a URL parser between (which would resolve dot
/// segments before they were sent); the status and the whole answer.
async fn raw_get(addr: std::net::SocketAddr, target: &str, bearer: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET {target} HTTP/1.1\r\nHost: gateway\r\n{auth}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer),
    )
    .await
    .expect("answered within 10 s")
    .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    (status, text)
}

#[tokio::test]
async fn the_api_proxy_forwards_only_paths_under_api_and_every_route_still_works() {
    let stack = Sandbox::builder()
        .tune_trips(|config| {
            config.webhook_destinations =
                trips::webhooks::policy::Destinations::parse("127.0.0.1/32").unwrap();
        })
        .gateways(1)
        .start()
        .await;
    let (trips, gateway) = (&stack.trips[0], stack.gateway());
    let dispatcher = token(Role::Dispatcher, "ops");
    // What the trips service's routes outside /api/ would give away.
    let leaks = ["# TYPE", "\"openapi\"", "key_id", "trips_"];

    for target in [
        "/api/../metrics",
        "/api/%2e%2e/metrics",
        "/api/%2E%2E/metrics",
        "/api/%2e%2E/metrics",
        "/api/.%2e/metrics",
        "/api/%2e./metrics",
        "/api/%2E%2E/v1/openapi.json",
        "/api/%2e%2e/v1/api-keys",
        "/api/trips/../../metrics",
        "/api/trips/%2e%2e/%2e%2e/metrics",
        "/api/%252e%252e/metrics",
        "/api/%25%32%65%25%32%65/metrics",
        "/api/%2e%2e%2fmetrics",
        "/api/trips%2f..%2f..%2fmetrics",
        "/api/trips/..%2F..%2Fmetrics",
        "/api/..%5cmetrics",
        "/api/%5c..%5c..%5cmetrics",
        "/api/..\\metrics",
        "/api/..;/metrics",
        "/api/%c0%ae%c0%ae/metrics",
        "/api/./trips",
        "/api//metrics",
        "/api/trips/%00",
    ] {
        for bearer in [None, Some(dispatcher.as_str())] {
            let (status, answer) = raw_get(gateway.running.http, target, bearer).await;
            assert_eq!(status, 400, "{target} answered {answer}");
            for leak in leaks {
                assert!(!answer.contains(leak), "{target} leaked {leak}: {answer}");
            }
        }
    }

    // Every route of the trips API answers through the proxy as it does directly.
    let http = reqwest::Client::new();
    let direct = format!("http://{}", trips.http);
    let proxied = format!("http://{}", gateway.running.http);
    let send = |base: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&dispatcher);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    let zone = json!({"name": "Rank", "kind": "queue", "geometry": {"type": "Polygon",
        "coordinates": [[[13.40, 52.51], [13.41, 52.51], [13.41, 52.52], [13.40, 52.51]]]}});
    let created = send(
        &proxied,
        reqwest::Method::POST,
        "/api/zones",
        Some(zone.clone()),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let zone_id = created["zone_id"].as_str().unwrap().to_owned();
    let updated = http
        .put(format!("{proxied}/api/zones/{zone_id}"))
        .bearer_auth(&dispatcher)
        .header("if-match", format!("\"{}\"", created["version"]))
        .json(&json!({"name": "Rank 2", "kind": "queue", "geometry": zone["geometry"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200, "{:?}", updated.text().await);
    let hook = send(
        &proxied,
        reqwest::Method::POST,
        "/api/webhooks",
        Some(json!({"url": "http://127.0.0.1:9/hook", "event_types": ["trip.completed"]})),
    )
    .await
    .unwrap();
    assert_eq!(hook.status(), 201);
    let hook: Value = hook.json().await.unwrap();
    let hook_id = hook["endpoint_id"].as_str().unwrap().to_owned();
    let nowhere = uuid::Uuid::new_v4();
    for path in [
        "/api/trips?limit=5".to_owned(),
        format!("/api/trips/{nowhere}"),
        "/api/trips/not-a-uuid".to_owned(),
        "/api/zones".to_owned(),
        format!("/api/zones/{zone_id}"),
        format!("/api/zones/{zone_id}/queue"),
        "/api/webhooks".to_owned(),
        format!("/api/webhooks/{hook_id}"),
        format!("/api/webhooks/{hook_id}/dead"),
    ] {
        let through = send(&proxied, reqwest::Method::GET, &path, None)
            .await
            .unwrap();
        let straight = send(&direct, reqwest::Method::GET, &path, None)
            .await
            .unwrap();
        assert_eq!(through.status(), straight.status(), "{path}");
        assert!(
            through.status().is_success() || through.status() == 404 || through.status() == 400,
            "{path}: {}",
            through.status()
        );
        let through: Value = through.json().await.unwrap();
        let straight: Value = straight.json().await.unwrap();
        assert_eq!(through, straight, "{path}");
    }
    let redelivered = send(
        &proxied,
        reqwest::Method::POST,
        &format!("/api/webhooks/{hook_id}/redeliver"),
        Some(json!({})),
    )
    .await
    .unwrap();
    assert_eq!(redelivered.status(), 200);
    for path in [
        format!("/api/webhooks/{hook_id}"),
        format!("/api/zones/{zone_id}"),
    ] {
        let removed = send(&proxied, reqwest::Method::DELETE, &path, None)
            .await
            .unwrap();
        assert_eq!(removed.status(), 204, "{path}");
    }
}

/// Reads a refused connection to its end: the error messages it was told, and the close frame's
/// code and reason (`None` when the connection dropped without one).
async fn refusal(client: &mut Client) -> (Vec<String>, Option<(u16, String)>) {
    let mut told = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_secs(15),
            futures_util::StreamExt::next(&mut client.ws),
        )
        .await
        .expect("closed within 15 s")
        {
            Some(Ok(Message::Text(text))) => told.push(text.to_string()),
            Some(Ok(Message::Close(frame))) => {
                return (
                    told,
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                );
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (told, None),
        }
    }
}

/// An HS256 token over `body` exactly as written, duplicate names and all.
fn raw_token(body: &str) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let signed = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(body.as_bytes())
    );
    let key = jsonwebtoken::EncodingKey::from_secret(tests::services::TOKEN_SECRET).unwrap();
    let signature =
        jsonwebtoken::crypto::sign(signed.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .unwrap();
    format!("{signed}.{signature}")
}

#[tokio::test]
async fn a_hello_too_big_a_token_too_long_and_a_claim_named_twice_are_told_apart() {
    // The default limits: 16 KB messages, 4 KB tokens.
    let stack = Sandbox::builder().gateways(1).start().await;
    let ws = stack.gateway().ws;
    let hello = |token: String| json!({"type": "hello", "token": token, "versions": [1]});

    // Far over the message limit: told so, and closed with 1009 (never a reset), every time.
    for _ in 0..3 {
        let mut client = Client::open(ws).await;
        client.send_json(&hello("a".repeat(100_000))).await;
        let (told, closed) = refusal(&mut client).await;
        assert_eq!(
            closed.as_ref().map(|(code, _)| *code),
            Some(close_code::TOO_BIG),
            "{told:?} {closed:?}"
        );
        assert!(told.iter().any(|t| t.contains("too_large")), "{told:?}");
    }

    // Within the message limit but over the token's: the token is what is wrong.
    let mut client = Client::open(ws).await;
    client.send_json(&hello("a".repeat(10_000))).await;
    let (told, closed) = refusal(&mut client).await;
    assert_eq!(
        closed,
        Some((close_code::UNAUTHORIZED, "token too long".to_owned())),
        "{told:?}"
    );
    assert!(
        told.iter()
            .any(|t| t.contains("token is longer than 4096 bytes")),
        "{told:?}"
    );

    // A role claim named twice could mean either role: refused.
    let exp = now_ms() / 1000 + 600;
    for body in [
        format!(r#"{{"role":"driver","sub":"d-twice","exp":{exp},"role":"dispatcher"}}"#),
        format!(r#"{{"role":"dispatcher","sub":"d-twice","exp":{exp},"sub":"someone-else"}}"#),
    ] {
        let mut client = Client::open(ws).await;
        client.send_json(&hello(raw_token(&body))).await;
        let (told, closed) = refusal(&mut client).await;
        assert_eq!(
            closed.map(|(code, _)| code),
            Some(close_code::UNAUTHORIZED),
            "{body}"
        );
        assert!(
            told.iter().any(|t| t.contains("appears more than once")),
            "{body}: {told:?}"
        );
    }
    // The same claims once each are let in.
    let once = format!(r#"{{"role":"driver","sub":"d-once","exp":{exp}}}"#);
    let mut client = Client::open(ws).await;
    client.send_json(&hello(raw_token(&once))).await;
    assert!(matches!(client.recv().await, ServerMessage::Welcome { .. }));
}
