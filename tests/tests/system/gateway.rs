//! The gateway with real WebSocket clients, real NATS, the real trips service and PostgreSQL.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use kit::Bus;
use protocol::bus::{CellCount, CellCounts, Position, TripCommand};
use protocol::client::{Eta, EtaTo, Role, ServerMessage, VehicleStatus, close_code};
use protocol::time::now_ms;
use protocol::trip::TripState;
use protocol::{ErrorCode, GeoConfig, Point, Subjects, codec};
use roads::eta::EtaModel;
use serde_json::json;
use tests::client::{Client, Ended, token, token_with};
use tests::proxy::TcpProxy;
use tests::sandbox::Sandbox;
use tests::services::{Gateway, gateway_config, start_gateway, start_trips, trips_config};
use tests::{NatsServer, Patience, TestDb, unique_prefix};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const BERLIN: Point = Point::new(52.520_008, 13.404_954);
const PATIENCE: Duration = Duration::from_secs(15);

/// A trips service and one gateway on a bus and a database of their own.
struct Stack {
    sandbox: Sandbox,
    gateway: Gateway,
}

impl Stack {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tune: impl Fn(&mut gateway::Config) + Send + 'static) -> Self {
        let mut sandbox = Sandbox::builder()
            .gateways(1)
            .tune_gateway(tune)
            .start()
            .await;
        let gateway = sandbox.gateways.remove(0);
        Self { sandbox, gateway }
    }

    async fn driver(&self, id: &str) -> Client {
        let mut driver = Client::connect(self.gateway.ws, Role::Driver, id).await;
        driver
            .send_json(
                &json!({"type": "go_online", "id": 1, "vehicle_class": "standard", "capacity": 4}),
            )
            .await;
        driver.ack_for(1).await;
        driver
    }

    /// Plays the matcher: offers the trip to the driver through the trips service.
    async fn offer(&self, trip_id: Uuid, driver: &str) {
        let offer = TripCommand::Offer {
            trip_id,
            driver_id: driver.into(),
            expires_at: now_ms() + 30_000,
            pickup_eta_s: 60,
        };
        self.sandbox.bus.command(&offer, PATIENCE).await.unwrap();
    }
}

fn location(seq: u64, point: Point, id: Option<u64>) -> serde_json::Value {
    let mut value = json!({"type": "location", "lat": point.lat, "lng": point.lng, "heading": 90.0, "speed": 8.0, "ts": now_ms(), "seq": seq});
    if let Some(id) = id {
        value["id"] = json!(id);
    }
    value
}

fn request_ride(id: u64, key: &str) -> serde_json::Value {
    json!({"type": "request_ride", "id": id, "pickup": {"lat": BERLIN.lat, "lng": BERLIN.lng},
           "dropoff": {"lat": 52.5, "lng": 13.45}, "idempotency_key": key})
}

#[tokio::test]
async fn authentication_failures_are_refused_with_clear_codes() {
    let stack = Stack::start().await;
    let addr = stack.gateway.ws;

    // Forged (wrong secret), expired, and garbage tokens: an error, then close 4001.
    let forged = protocol::token::mint(
        b"another-secret-entirely",
        &protocol::token::Claims {
            role: Role::Dispatcher,
            sub: "mallory".into(),
            exp: now_ms() / 1000 + 60,
            name: None,
        },
    )
    .unwrap();
    for bad in [
        forged,
        // Past the verifier's 30 s leeway for clock differences.
        token_with(Role::Driver, "d1", None, -120),
        "garbage".into(),
    ] {
        let (mut client, first) = Client::hello(addr, &bad, &[1]).await;
        assert!(
            matches!(
                first,
                ServerMessage::Error {
                    code: ErrorCode::Unauthorized,
                    ..
                }
            ),
            "{first:?}"
        );
        assert_eq!(
            client.ended().await,
            Ended::Closed(Some(close_code::UNAUTHORIZED))
        );
    }
    // No hello at all: the first message is something else.
    let mut client = Client::open(addr).await;
    client.send_json(&location(1, BERLIN, None)).await;
    assert_eq!(
        client.ended().await,
        Ended::Closed(Some(close_code::UNAUTHORIZED))
    );
    // A version this server does not speak.
    let (mut client, first) = Client::hello(addr, &token(Role::Rider, "r1"), &[99]).await;
    assert!(
        matches!(
            first,
            ServerMessage::Error {
                code: ErrorCode::UnsupportedVersion,
                ..
            }
        ),
        "{first:?}"
    );
    assert_eq!(
        client.ended().await,
        Ended::Closed(Some(close_code::UNSUPPORTED_VERSION))
    );
    // A good token still works next to all that.
    let (_, welcome) = Client::hello(addr, &token(Role::Rider, "r1"), &[1, 2]).await;
    assert!(
        matches!(
            welcome,
            ServerMessage::Welcome {
                version: 1,
                role: Role::Rider,
                ..
            }
        ),
        "{welcome:?}"
    );
}

#[tokio::test]
async fn a_connection_that_never_says_hello_is_closed() {
    let stack = Stack::start_with(|c| c.limits.hello_timeout = Duration::from_millis(300)).await;
    let mut client = Client::open(stack.gateway.ws).await;
    assert_eq!(
        client.ended().await,
        Ended::Closed(Some(close_code::HELLO_TIMEOUT))
    );
}

#[tokio::test]
async fn roles_are_enforced() {
    let stack = Stack::start().await;
    let mut rider = Client::connect(stack.gateway.ws, Role::Rider, "r1").await;
    let mut driver = Client::connect(stack.gateway.ws, Role::Driver, "d1").await;
    // A rider may not report positions or use dispatcher commands.
    rider.send_json(&location(1, BERLIN, Some(7))).await;
    assert_eq!(rider.error_for(7).await, ErrorCode::Forbidden);
    rider
        .send_json(
            &json!({"type": "assign_driver", "id": 8, "trip_id": Uuid::nil(), "driver_id": "d1"}),
        )
        .await;
    assert_eq!(rider.error_for(8).await, ErrorCode::Forbidden);
    // A driver may not request rides or watch the fleet.
    driver.send_json(&request_ride(9, "k")).await;
    assert_eq!(driver.error_for(9).await, ErrorCode::Forbidden);
    driver.send_json(&json!({"type": "subscribe_viewport", "id": 10, "viewport": {"south": 52.4, "west": 13.3, "north": 52.6, "east": 13.5}, "zoom": 13})).await;
    assert_eq!(driver.error_for(10).await, ErrorCode::Forbidden);
    // A driver cannot speak for another: there is no field for it, and adding one is refused.
    let mut spoof = location(1, BERLIN, Some(11));
    spoof["driver_id"] = json!("d2");
    driver.send_json(&spoof).await;
    assert_eq!(driver.error_for(11).await, ErrorCode::InvalidMessage);
    // A rider cannot cancel someone else's trip.
    let mut other = Client::connect(stack.gateway.ws, Role::Rider, "r2").await;
    other.send_json(&request_ride(1, "k")).await;
    let ServerMessage::Ack {
        trip: Some(trip), ..
    } = other.ack_for(1).await
    else {
        panic!()
    };
    rider
        .send_json(&json!({"type": "cancel_trip", "id": 12, "trip_id": trip.trip_id}))
        .await;
    assert_eq!(rider.error_for(12).await, ErrorCode::Forbidden);
    // Both connections are still fine.
    rider.send_json(&request_ride(13, "k")).await;
    rider.ack_for(13).await;
}

#[tokio::test]
async fn bad_frames_get_errors_or_close_codes_and_others_carry_on() {
    let stack = Stack::start_with(|c| c.limits.max_message_bytes = 4096).await;
    let addr = stack.gateway.ws;
    let mut bystander = Client::connect(addr, Role::Rider, "bystander").await;
    let mut driver = stack.driver("d1").await;

    // Invalid coordinates, unknown types and malformed JSON: errors, connection stays.
    driver
        .send_json(&location(1, Point::new(95.0, 13.0), Some(2)))
        .await;
    assert_eq!(driver.error_for(2).await, ErrorCode::InvalidCoordinates);
    driver
        .send_text(r#"{"type":"location","id":3,"lat":NaN,"lng":1,"ts":1,"seq":1}"#.into())
        .await;
    assert!(matches!(
        driver.recv().await,
        ServerMessage::Error {
            code: ErrorCode::InvalidMessage,
            ..
        }
    ));
    driver
        .send_json(&json!({"type": "teleport", "id": 4}))
        .await;
    assert_eq!(driver.error_for(4).await, ErrorCode::InvalidMessage);
    driver.send_text("{not json".into()).await;
    assert!(matches!(
        driver.recv().await,
        ServerMessage::Error {
            code: ErrorCode::InvalidMessage,
            ..
        }
    ));
    driver.send_text("[".repeat(3000)).await;
    assert!(matches!(
        driver.recv().await,
        ServerMessage::Error {
            code: ErrorCode::InvalidMessage,
            ..
        }
    ));
    driver.send_json(&location(5, BERLIN, Some(5))).await;
    driver.ack_for(5).await;

    // Oversized frame: close 1009.
    let mut big = Client::connect(addr, Role::Driver, "big").await;
    big.send_text(format!(
        r#"{{"type":"go_offline","id":1,"pad":"{}"}}"#,
        "x".repeat(10_000)
    ))
    .await;
    assert_eq!(big.ended().await, Ended::Closed(Some(1009)));
    // Binary frame: an error and close 1003.
    let mut binary = Client::connect(addr, Role::Driver, "bin").await;
    binary
        .ws
        .send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    assert_eq!(binary.ended().await, Ended::Closed(Some(1003)));

    // The bystander was never affected.
    bystander.send_json(&request_ride(1, "k")).await;
    bystander.ack_for(1).await;
}

#[tokio::test]
async fn flooding_past_the_rate_limit_is_refused_then_closed() {
    let stack = Stack::start_with(|c| {
        c.limits.messages_per_sec = 5;
        c.limits.burst = 5;
        c.limits.max_strikes = 100;
    })
    .await;
    let mut bystander = Client::connect(stack.gateway.ws, Role::Rider, "calm").await;
    let mut flood = Client::connect(stack.gateway.ws, Role::Driver, "flood").await;
    for seq in 0..300 {
        if flood
            .ws
            .send(Message::text(location(seq, BERLIN, None).to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let error = flood
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
    assert!(matches!(error, ServerMessage::Error { .. }));
    assert_eq!(
        flood.ended().await,
        Ended::Closed(Some(close_code::RATE_LIMITED))
    );
    bystander.send_json(&request_ride(1, "k")).await;
    bystander.ack_for(1).await;
}

#[tokio::test]
async fn positions_are_published_on_their_cell_subject_and_stale_ones_dropped() {
    let stack = Stack::start().await;
    let (region, cell) = GeoConfig::default().locate(BERLIN).unwrap();
    let mut positions = stack
        .sandbox
        .bus
        .client
        .subscribe(stack.sandbox.bus.subjects.location(region, cell))
        .await
        .unwrap();
    stack.sandbox.bus.client.flush().await.unwrap();
    let mut driver = stack.driver("d1").await;
    driver.send_json(&location(5, BERLIN, Some(1))).await;
    driver.ack_for(1).await;
    // A report older in count and time (a replay) is stale; one with the same stamp too.
    let mut replayed = location(3, BERLIN, Some(2));
    replayed["ts"] = json!(now_ms() - 60_000);
    driver.send_json(&replayed).await;
    assert_eq!(driver.error_for(2).await, ErrorCode::StaleUpdate);
    driver.send_json(&location(6, BERLIN, Some(3))).await;
    driver.ack_for(3).await;

    let first: Position = codec::decode(
        &tokio::time::timeout(PATIENCE, positions.next())
            .await
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
    let second: Position = codec::decode(
        &tokio::time::timeout(PATIENCE, positions.next())
            .await
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(
        (first.seq, second.seq),
        (5, 6),
        "the stale update was not published"
    );
    assert_eq!(
        first.driver_id, "d1",
        "the position speaks for the token's driver"
    );
    assert_eq!(first.status, VehicleStatus::Available);
    assert_eq!(first.capacity, 4);
}

/// The sequence numbers of the next `n` positions a subscription receives.
async fn next_seqs(sub: &mut async_nats::Subscriber, n: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    while seqs.len() < n {
        let message = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} positions arrived: {seqs:?}", seqs.len()))
            .expect("the subscription is open");
        seqs.push(codec::decode::<Position>(&message.payload).unwrap().seq);
    }
    seqs
}

#[tokio::test]
async fn the_publisher_sends_what_gathered_in_one_batch_in_order_and_the_rest_when_stopped() {
    use gateway::publisher::Publisher;
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = client.subscribe("p.>").await.unwrap();
    client.flush().await.unwrap();
    let payload = |seq: u64| -> bytes::Bytes {
        codec::encode(&tests::position(&format!("d{}", seq % 7), BERLIN, seq)).into()
    };

    let publisher = std::sync::Arc::new(Publisher::new(150));
    for seq in 0..100 {
        assert!(publisher.publish(format!("p.{}", seq % 3), payload(seq)));
    }
    let stop = tokio_util::sync::CancellationToken::new();
    // A linger longer than the test: after the first batch, nothing goes out until the stop.
    let running = tokio::spawn({
        let (publisher, client, stop) = (publisher.clone(), client.clone(), stop.clone());
        async move {
            publisher
                .run(client, Duration::from_secs(3_600), stop)
                .await
        }
    });
    let seqs = next_seqs(&mut sub, 100).await;
    assert_eq!(seqs, (0..100).collect::<Vec<_>>(), "in the order published");
    assert_eq!(
        publisher.batches(),
        1,
        "what was queued went out in one batch"
    );

    // While the publisher lingers: queued, bounded, and not yet sent.
    for seq in 100..250 {
        assert!(publisher.publish(format!("p.{}", seq % 3), payload(seq)));
    }
    assert!(
        !publisher.publish("p.0".into(), payload(250)),
        "a full queue refuses"
    );
    assert_eq!(publisher.batches(), 1);

    stop.cancel();
    tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the publisher stops")
        .unwrap();
    assert_eq!(
        next_seqs(&mut sub, 150).await,
        (100..250).collect::<Vec<_>>(),
        "what was queued at the stop went out, in order, in one more batch"
    );
    assert_eq!(publisher.batches(), 2);
}

#[tokio::test]
async fn a_gateway_behind_with_publishing_refuses_positions_and_publishes_the_accepted_on_shutdown()
{
    // One publication may wait, and after the first the publisher lingers past the test.
    let stack = Stack::start_with(|c| {
        c.publishing.queue = 1;
        c.publishing.linger = Duration::from_secs(3_600);
    })
    .await;
    let mut positions = stack
        .sandbox
        .bus
        .client
        .subscribe(stack.sandbox.bus.subjects.location_all())
        .await
        .unwrap();
    stack.sandbox.bus.client.flush().await.unwrap();
    let mut driver = stack.driver("d1").await;
    driver.send_json(&location(1, BERLIN, Some(1))).await;
    driver.ack_for(1).await;
    assert_eq!(
        next_seqs(&mut positions, 1).await,
        vec![1],
        "the first position goes out at once"
    );

    driver.send_json(&location(2, BERLIN, Some(2))).await;
    driver.ack_for(2).await;
    driver.send_json(&location(3, BERLIN, Some(3))).await;
    assert_eq!(driver.error_for(3).await, ErrorCode::Unavailable);

    let Stack { gateway, .. } = stack;
    gateway.running.stop().await.unwrap();
    assert_eq!(
        next_seqs(&mut positions, 1).await,
        vec![2],
        "the accepted position went out at shutdown"
    );
}

#[tokio::test]
async fn a_ride_from_request_to_completion_with_live_driver_position() {
    let stack = Stack::start().await;
    let mut rider = Client::connect(stack.gateway.ws, Role::Rider, "r1").await;
    let mut driver = stack.driver("d1").await;

    rider.send_json(&request_ride(1, "ride-1")).await;
    let ServerMessage::Ack {
        trip: Some(trip),
        changed: true,
        ..
    } = rider.ack_for(1).await
    else {
        panic!("no trip in ack")
    };
    assert_eq!(trip.state, TripState::Requested);
    // Stored before acknowledged.
    let stored: i64 = stack
        .sandbox
        .db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM trips WHERE trip_id = $1",
            &[&trip.trip_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
    // A retry with the same key is the same trip.
    rider.send_json(&request_ride(2, "ride-1")).await;
    let ServerMessage::Ack {
        trip: Some(again),
        changed: false,
        ..
    } = rider.ack_for(2).await
    else {
        panic!()
    };
    assert_eq!(again.trip_id, trip.trip_id);

    stack.offer(trip.trip_id, "d1").await;
    let offer = driver
        .recv_until(|m| matches!(m, ServerMessage::Offer { .. }))
        .await;
    let ServerMessage::Offer { trip: offered, .. } = offer else {
        unreachable!()
    };
    assert_eq!(offered.trip_id, trip.trip_id);
    driver
        .send_json(&json!({"type": "accept_offer", "id": 2, "trip_id": trip.trip_id}))
        .await;
    driver.ack_for(2).await;
    rider.recv_until(|m| matches!(m, ServerMessage::TripUpdate { trip } if trip.state == TripState::Accepted)).await;

    // On the trip, the rider sees the driver move, with its ETA to the pickup from the
    // gateway's model (the matcher's: straight line in this stack).
    let away = Point::new(52.51, 13.40);
    let model = roads::eta::StraightLine::default();
    driver.send_json(&location(1, away, None)).await;
    let position = rider
        .recv_until(|m| matches!(m, ServerMessage::DriverPosition { .. }))
        .await;
    let ServerMessage::DriverPosition {
        driver_id,
        trip_id,
        lat,
        eta,
        ..
    } = position
    else {
        unreachable!()
    };
    assert_eq!(
        (driver_id.as_str(), trip_id, lat),
        ("d1", trip.trip_id, 52.51)
    );
    let to_pickup = Eta {
        to: EtaTo::Pickup,
        seconds: model.eta_s(away, trip.pickup).round() as u32,
    };
    assert_eq!(eta, Some(to_pickup));

    // Arriving there, over a kilometre from the pickup, is refused and changes nothing.
    driver
        .send_json(
            &json!({"type": "trip_progress", "id": 3, "trip_id": trip.trip_id, "stage": "arrived"}),
        )
        .await;
    assert_eq!(driver.error_for(3).await, ErrorCode::NotAtPickup);
    // At the pickup, then gone on before the report got through (no signal, a retry): the
    // report, made at the pickup, is checked against where the driver was when it made it.
    let mut at_pickup = location(2, trip.pickup, Some(10));
    let arrived_at = now_ms();
    at_pickup["ts"] = json!(arrived_at);
    driver.send_json(&at_pickup).await;
    driver.ack_for(10).await;
    let mut gone_on = location(3, away, Some(11));
    gone_on["ts"] = json!(arrived_at + 1_000);
    driver.send_json(&gone_on).await;
    driver.ack_for(11).await;
    for (id, stage, state) in [
        (4, "arrived", TripState::Arrived),
        (5, "started", TripState::InProgress),
    ] {
        driver.send_json(&json!({"type": "trip_progress", "id": id, "trip_id": trip.trip_id, "stage": stage, "ts": arrived_at})).await;
        let ServerMessage::Ack { changed: true, .. } = driver.ack_for(id).await else {
            panic!("{stage} did not change the trip")
        };
        rider
            .recv_until(|m| matches!(m, ServerMessage::TripUpdate { trip } if trip.state == state))
            .await;
    }

    // On board, the ETA is to the dropoff.
    let mut on_board = location(4, away, None);
    on_board["ts"] = json!(arrived_at + 2_000);
    driver.send_json(&on_board).await;
    let position = rider
        .recv_until(|m| {
            matches!(m, ServerMessage::DriverPosition { eta: Some(eta), .. } if eta.to == EtaTo::Dropoff)
        })
        .await;
    let ServerMessage::DriverPosition { eta, .. } = position else {
        unreachable!()
    };
    let to_dropoff = Eta {
        to: EtaTo::Dropoff,
        seconds: model.eta_s(away, trip.dropoff).round() as u32,
    };
    assert_eq!(eta, Some(to_dropoff));

    // Completed kilometres from the dropoff: taken, with the distance on the event, flagged.
    driver.send_json(&json!({"type": "trip_progress", "id": 6, "trip_id": trip.trip_id, "stage": "completed"})).await;
    driver.ack_for(6).await;
    rider
        .recv_until(|m| matches!(m, ServerMessage::TripUpdate { trip } if trip.state == TripState::Completed))
        .await;
    let events = stack
        .sandbox
        .db
        .client()
        .await
        .query(
            "SELECT to_state, distance_m, flagged FROM trip_events \
             WHERE trip_id = $1 AND actor = 'driver' AND to_state <> 'accepted' ORDER BY version",
            &[&trip.trip_id],
        )
        .await
        .unwrap();
    let recorded: Vec<(String, f64, bool)> = events
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<f64>>(1).unwrap(), r.get(2)))
        .collect();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    assert_eq!((recorded[0].0.as_str(), recorded[0].2), ("arrived", false));
    assert!(recorded[0].1 < 1.0, "arrived at the pickup: {recorded:?}");
    let far = away.distance_m(&trip.dropoff);
    assert_eq!((recorded[2].0.as_str(), recorded[2].2), ("completed", true));
    assert!((recorded[2].1 - far).abs() < 1.0, "{recorded:?} vs {far}");
}

#[tokio::test]
async fn reconnecting_clients_are_brought_up_to_date() {
    let stack = Stack::start().await;
    let mut rider = Client::connect(stack.gateway.ws, Role::Rider, "r1").await;
    let driver = stack.driver("d1").await;
    rider.send_json(&request_ride(1, "k")).await;
    let ServerMessage::Ack {
        trip: Some(trip), ..
    } = rider.ack_for(1).await
    else {
        panic!()
    };
    stack.offer(trip.trip_id, "d1").await;
    drop(driver);
    drop(rider);

    let (mut driver, _) = Client::hello(stack.gateway.ws, &token(Role::Driver, "d1"), &[1]).await;
    let state = driver
        .recv_until(|m| matches!(m, ServerMessage::SessionState { .. }))
        .await;
    let ServerMessage::SessionState {
        driver: Some(me),
        trips,
    } = state
    else {
        panic!("{state:?}")
    };
    assert!(me.online);
    assert_eq!(trips.len(), 1);
    assert_eq!(trips[0].state, TripState::Offered);
    // Resumed, the driver can answer the offer it got before the disconnect.
    driver
        .send_json(&json!({"type": "accept_offer", "id": 1, "trip_id": trip.trip_id}))
        .await;
    driver.ack_for(1).await;

    let (mut rider, _) = Client::hello(stack.gateway.ws, &token(Role::Rider, "r1"), &[1]).await;
    let state = rider
        .recv_until(|m| matches!(m, ServerMessage::SessionState { .. }))
        .await;
    let ServerMessage::SessionState { trips, .. } = state else {
        unreachable!()
    };
    assert_eq!(trips[0].trip_id, trip.trip_id);
}

#[tokio::test]
async fn a_gateway_back_on_nats_tells_its_clients_what_they_missed() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let _trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    let proxy = TcpProxy::start(nats.url().trim_start_matches("nats://").parse().unwrap()).await;
    let gateway = start_gateway(gateway_config(&format!("nats://{}", proxy.addr), &prefix)).await;
    tests::services::wait_ready(gateway.running.http).await;
    let bus = Bus::new(
        async_nats::connect(nats.url()).await.unwrap(),
        Subjects::new(&prefix).unwrap(),
    );
    let mut driver = Client::connect(gateway.ws, Role::Driver, "d1").await;
    driver
        .send_json(
            &json!({"type": "go_online", "id": 1, "vehicle_class": "standard", "capacity": 4}),
        )
        .await;
    driver.ack_for(1).await;
    let mut rider = Client::connect(gateway.ws, Role::Rider, "r1").await;
    rider.send_json(&request_ride(1, "k")).await;
    let ServerMessage::Ack {
        trip: Some(trip), ..
    } = rider.ack_for(1).await
    else {
        panic!("no trip in the ack")
    };

    // The gateway loses NATS; the trip is offered meanwhile, and its update to the rider is
    // published while nobody holds the rider's subscription.
    proxy.cut();
    tests::services::wait_unready(gateway.running.http).await;
    let offer = TripCommand::Offer {
        trip_id: trip.trip_id,
        driver_id: "d1".into(),
        expires_at: now_ms() + 30_000,
        pickup_eta_s: 60,
    };
    bus.command(&offer, PATIENCE).await.unwrap();
    tests::eventually("the offer's messages published", PATIENCE, || async {
        let client = db.client().await;
        let left: i64 = client
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .ok()?
            .get(0);
        (left == 0).then_some(())
    })
    .await;
    proxy.restore();

    // Back on NATS, the gateway re-reads the rider's state and tells it.
    let state = rider
        .recv_until(|m| matches!(m, ServerMessage::SessionState { .. }))
        .await;
    let ServerMessage::SessionState { trips, .. } = state else {
        unreachable!()
    };
    let mine = trips.iter().find(|t| t.trip_id == trip.trip_id);
    assert_eq!(
        mine.map(|t| t.state),
        Some(TripState::Offered),
        "the rider learns the offer it missed: {trips:?}"
    );
}

#[tokio::test]
async fn dispatchers_see_vehicles_aggregates_and_trips_and_can_cancel() {
    let stack = Stack::start().await;
    let mut ops = Client::connect(stack.gateway.ws, Role::Dispatcher, "ops").await;
    ops.send_json(&json!({"type": "subscribe_viewport", "id": 1, "viewport": {"south": 52.49, "west": 13.37, "north": 52.55, "east": 13.44}, "zoom": 14})).await;
    ops.ack_for(1).await;
    let mut driver = stack.driver("d1").await;
    driver.send_json(&location(1, BERLIN, None)).await;
    let vehicles = ops
        .recv_until(|m| matches!(m, ServerMessage::Vehicles { .. }))
        .await;
    let ServerMessage::Vehicles { vehicles } = vehicles else {
        unreachable!()
    };
    assert_eq!(vehicles[0].driver_id, "d1");
    assert_eq!(vehicles[0].status, VehicleStatus::Available);

    // Zoomed out: per-cell counts from the matchers, not vehicles.
    ops.send_json(&json!({"type": "subscribe_viewport", "id": 2, "viewport": {"south": 52.0, "west": 12.5, "north": 53.0, "east": 14.5}, "zoom": 8})).await;
    ops.ack_for(2).await;
    let (region, cell) = GeoConfig::default().locate(BERLIN).unwrap();
    let counts = CellCounts {
        region: region.into(),
        resolution: 7,
        cells: vec![CellCount {
            cell: cell.into(),
            vehicles: 3,
            available: 2,
            open_requests: 1,
        }],
        at: now_ms(),
    };
    let patience = Patience::new("aggregates delivered", PATIENCE);
    let aggregates = loop {
        patience.check();
        stack
            .sandbox
            .bus
            .publish(stack.sandbox.bus.subjects.cell_counts(region), &counts)
            .await
            .unwrap();
        let got = tokio::time::timeout(
            Duration::from_millis(300),
            ops.recv_until(|m| matches!(m, ServerMessage::CellAggregates { .. })),
        )
        .await;
        if let Ok(message) = got {
            break message;
        }
    };
    let ServerMessage::CellAggregates { cells, .. } = aggregates else {
        unreachable!()
    };
    assert_eq!(cells[0].cell, cell.to_string());
    assert_eq!(cells[0].available, 2);

    // The trip feed, and a cancel from the dispatcher lands in PostgreSQL.
    let mut rider = Client::connect(stack.gateway.ws, Role::Rider, "r1").await;
    rider.send_json(&request_ride(1, "k")).await;
    let ServerMessage::Ack {
        trip: Some(trip), ..
    } = rider.ack_for(1).await
    else {
        panic!()
    };
    ops.recv_until(
        |m| matches!(m, ServerMessage::TripUpdate { trip: t } if t.trip_id == trip.trip_id),
    )
    .await;
    ops.send_json(&json!({"type": "cancel_trip", "id": 3, "trip_id": trip.trip_id, "reason": "<script>alert(1)</script>"})).await;
    ops.ack_for(3).await;
    let row = stack
        .sandbox
        .db
        .client()
        .await
        .query_one(
            "SELECT state, ended_by, end_reason FROM trips WHERE trip_id = $1",
            &[&trip.trip_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "cancelled");
    assert_eq!(row.get::<_, String>(1), "dispatcher");
    assert_eq!(
        row.get::<_, String>(2),
        "<script>alert(1)</script>",
        "stored as text, verbatim"
    );
    rider.recv_until(|m| matches!(m, ServerMessage::TripUpdate { trip } if trip.state == TripState::Cancelled)).await;
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_and_a_fast_one_is_not() {
    let stack = Stack::start_with(|c| {
        c.limits.control_deadline = Duration::from_secs(2);
        c.limits.write_timeout = Duration::from_secs(2);
    })
    .await;
    let mut fast = Client::connect(stack.gateway.ws, Role::Rider, "fast").await;
    let mut slow = Client::connect(stack.gateway.ws, Role::Rider, "slow").await;
    // 2,000 messages of 8 KiB each to both: far more than socket buffers hold.
    let pad = "x".repeat(8 * 1024);
    let frame = ServerMessage::error(None, ErrorCode::Internal, pad).to_json();
    let sender = stack.sandbox.bus.client.clone();
    let subjects = stack.sandbox.bus.subjects.clone();
    let publisher = tokio::spawn(async move {
        for _ in 0..2_000 {
            sender
                .publish(subjects.user(Role::Rider, "fast"), frame.clone().into())
                .await
                .unwrap();
            sender
                .publish(subjects.user(Role::Rider, "slow"), frame.clone().into())
                .await
                .unwrap();
        }
        sender.flush().await.unwrap();
    });
    let mut received = 0;
    while received < 2_000 {
        if matches!(
            fast.recv().await,
            ServerMessage::Error {
                code: ErrorCode::Internal,
                ..
            }
        ) {
            received += 1;
        }
    }
    publisher.await.unwrap();
    // The slow client finally reads: what was buffered, then the end of its connection.
    let ended = slow.ended().await;
    assert!(
        matches!(
            ended,
            Ended::Closed(Some(close_code::SLOW_CONSUMER)) | Ended::Dropped
        ),
        "{ended:?}"
    );
    fast.send_json(&request_ride(1, "k")).await;
    fast.ack_for(1).await;
}

/// How many connections the gateways in this process have closed as idle.
async fn idle_closes(http: std::net::SocketAddr) -> u64 {
    tests::services::metrics_text(http)
        .await
        .lines()
        .filter(|l| l.starts_with("gateway_closes_total") && l.contains(r#"reason="idle""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_and_a_silent_one_is_closed_as_idle() {
    let stack = Stack::start_with(|c| {
        c.limits.ping_interval = Duration::from_millis(250);
        c.limits.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let http = stack.gateway.running.http;
    let mut client = Client::connect(stack.gateway.ws, Role::Rider, "r1").await;
    // Reading answers each ping with a pong (the library does so), which counts as activity:
    // sixteen pings span two idle timeouts.
    let mut pings = 0;
    while pings < 16 {
        match tokio::time::timeout(PATIENCE, client.ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Close(frame)))) => {
                panic!("closed after {pings} pings though it answered them: {frame:?}")
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no ping: {other:?}"),
        }
    }
    // Silent now (nothing read, so no pong goes back): closed as idle.
    let before = idle_closes(http).await;
    tests::eventually("an idle close", PATIENCE, || async {
        (idle_closes(http).await > before).then_some(())
    })
    .await;
    assert_eq!(client.ended().await, Ended::Closed(Some(1001)));
}

#[tokio::test]
async fn connections_survive_a_nats_restart_and_commands_say_retry_meanwhile() {
    let mut stack = Stack::start().await;
    let (region, cell) = GeoConfig::default().locate(BERLIN).unwrap();
    let mut rider = Client::connect(stack.gateway.ws, Role::Rider, "r1").await;
    let mut driver = stack.driver("d1").await;

    stack.sandbox.nats.kill();
    rider.send_json(&request_ride(1, "k")).await;
    let code = rider.error_for(1).await;
    assert!(code.is_retryable(), "{code:?}");
    stack.sandbox.nats.restart();

    // Everything resumes: the same sockets carry commands and positions again.
    let watcher = async_nats::connect(stack.sandbox.nats.url()).await.unwrap();
    let mut positions = watcher
        .subscribe(stack.sandbox.bus.subjects.location(region, cell))
        .await
        .unwrap();
    watcher.flush().await.unwrap();
    let patience = Patience::new("positions flowing after the restart", PATIENCE);
    for seq in 11.. {
        patience.check();
        driver.send_json(&location(seq, BERLIN, None)).await;
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(200), positions.next()).await
        {
            break;
        }
    }
    let patience = Patience::new("commands working after the restart", PATIENCE);
    // Retries are paced so they stay within the connection's rate limit.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for id in 2.. {
        patience.check();
        pace.tick().await;
        rider.send_json(&request_ride(id, "k")).await;
        let answer = rider
            .recv_until(|m| matches!(m, ServerMessage::Ack { id: i, .. } | ServerMessage::Error { id: Some(i), .. } if *i == id))
            .await;
        if matches!(answer, ServerMessage::Ack { .. }) {
            break;
        }
    }
}

#[tokio::test]
async fn the_connection_cap_and_graceful_shutdown() {
    let stack = Stack::start_with(|c| c.limits.max_connections = 2).await;
    let mut one = Client::connect(stack.gateway.ws, Role::Rider, "r1").await;
    let _two = Client::connect(stack.gateway.ws, Role::Rider, "r2").await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", stack.gateway.ws)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("third connection was not refused: {other:?}"),
    }
    let Stack { gateway, .. } = stack;
    let stopping = tokio::spawn(gateway.running.stop());
    assert_eq!(one.ended().await, Ended::Closed(Some(1001)), "going away");
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn health_and_metrics_endpoints() {
    let stack = Stack::start().await;
    let http = stack.gateway.running.http;
    let _driver = stack.driver("d1").await;
    tests::eventually("gateway ready", PATIENCE, || async {
        let ready = reqwest::get(format!("http://{http}/readyz")).await.ok()?;
        (ready.status() == 200).then_some(())
    })
    .await;
    let metrics = tests::services::metrics_text(http).await;
    assert!(metrics.contains("gateway_connections"), "{metrics}");
    assert!(metrics.contains("gateway_messages_total"));
    let _ = Position::point;
}

/// An older view of a trip reaching the gateway after a newer one (one trips replica's outbox
/// held back by a partition) is not passed on: the client's trip never goes backwards.
#[tokio::test]
async fn a_client_is_never_told_an_older_version_of_its_trip() {
    let stack = Stack::start().await;
    let mut driver = stack.driver("d1").await;
    let mut rider = Client::connect(stack.gateway.ws, Role::Rider, "r1").await;
    rider.send_json(&request_ride(1, "k")).await;
    let ServerMessage::Ack {
        trip: Some(trip), ..
    } = rider.ack_for(1).await
    else {
        panic!("no trip")
    };
    stack.offer(trip.trip_id, "d1").await;
    driver
        .send_json(&json!({"type": "accept_offer", "id": 2, "trip_id": trip.trip_id}))
        .await;
    let ServerMessage::Ack {
        trip: Some(accepted),
        ..
    } = driver.ack_for(2).await
    else {
        panic!("no accepted trip")
    };
    assert_eq!(accepted.state, TripState::Accepted);

    // The trip as it was before the offer, delivered late; then a newer view as a marker.
    let mut stale = accepted.clone();
    stale.state = TripState::Requested;
    stale.driver_id = None;
    stale.version = accepted.version - 2;
    let mut marker = accepted.clone();
    marker.version = accepted.version + 10;
    let to_driver = stack.sandbox.bus.subjects.user(Role::Driver, "d1");
    for trip in [stale, marker.clone()] {
        let update = ServerMessage::TripUpdate { trip }.to_json();
        stack
            .sandbox
            .bus
            .client
            .publish(to_driver.clone(), update.into())
            .await
            .unwrap();
    }
    stack.sandbox.bus.client.flush().await.unwrap();
    loop {
        let message = driver
            .recv_until(
                |m| matches!(m, ServerMessage::TripUpdate { trip: t } if t.trip_id == trip.trip_id),
            )
            .await;
        let ServerMessage::TripUpdate { trip: told } = message else {
            unreachable!()
        };
        assert!(
            told.version >= accepted.version,
            "told an older view: {told:?}"
        );
        if told.version == marker.version {
            break;
        }
    }
}
