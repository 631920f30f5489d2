//! Gateways that scale out: each receives only its own clients' messages; a client that moves
//! to another gateway mid-trip gets them there, and a gateway that dies loses nothing that
//! trips committed.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::Point;
use protocol::bus::TripCommand;
use protocol::client::{Role, ServerMessage};
use protocol::time::now_ms;
use protocol::trip::{TripStage, TripState, TripView};
use serde_json::json;
use tests::Patience;
use tests::client::{Client, token};
use tests::sandbox::Sandbox;
use tests::services::{Gateway, Isolated, metrics_text, start_gateway};
use uuid::Uuid;

const BERLIN: Point = Point::new(52.520_008, 13.404_954);
const PATIENCE: Duration = Duration::from_secs(15);
/// How soon a client's message reaches it at its new gateway.
const PROMPTLY: Duration = Duration::from_secs(1);

/// A trips service on a bus and a database of their own; the tests start the gateways.
struct Stack {
    sandbox: Sandbox,
}

impl Stack {
    async fn start() -> Self {
        Self {
            sandbox: Sandbox::builder().start().await,
        }
    }

    fn gateway_config(&self) -> gateway::Config {
        self.sandbox.gateway_config()
    }

    async fn gateway(&self) -> (Gateway, String) {
        let config = self.gateway_config();
        let id = config.id.clone();
        let gateway = start_gateway(config).await;
        tests::services::wait_ready(gateway.running.http).await;
        (gateway, id)
    }

    /// A trip of `rider` (on `rider_at`) accepted by `driver` (on `driver_at`).
    async fn accepted_trip(&self, rider: &mut Client, driver: &mut Client) -> TripView {
        rider
            .send_json(&json!({"type": "request_ride", "id": 1, "pickup": BERLIN,
                "dropoff": {"lat": 52.5, "lng": 13.45}, "idempotency_key": "k1"}))
            .await;
        let trip = rider.ack_trip(1).await;
        let offer = TripCommand::Offer {
            trip_id: trip.trip_id,
            driver_id: "d1".into(),
            expires_at: now_ms() + 60_000,
            pickup_eta_s: 60,
        };
        self.sandbox.bus.command(&offer, PATIENCE).await.unwrap();
        driver
            .recv_until(|m| matches!(m, ServerMessage::Offer { .. }))
            .await;
        driver
            .send_json(&json!({"type": "accept_offer", "id": 3, "trip_id": trip.trip_id}))
            .await;
        let accepted = driver.ack_trip(3).await;
        assert_eq!(accepted.state, TripState::Accepted);
        accepted
    }
}

/// Client messages gateway `id` has received from NATS so far.
async fn received(http: SocketAddr, id: &str) -> u64 {
    let label = format!("gateway=\"{id}\"");
    metrics_text(http)
        .await
        .lines()
        .filter(|line| line.starts_with("gateway_client_messages_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Reports a position and returns its timestamp.
async fn report(driver: &mut Client, seq: u64) -> i64 {
    let ts = now_ms();
    driver
        .send_json(&json!({"type": "location", "lat": BERLIN.lat, "lng": BERLIN.lng, "ts": ts, "seq": seq}))
        .await;
    ts
}

fn position_at(ts: i64) -> impl Fn(&ServerMessage) -> bool {
    move |m| matches!(m, ServerMessage::DriverPosition { ts: t, .. } if *t == ts)
}

fn trip_in(trip_id: Uuid, state: TripState) -> impl Fn(&ServerMessage) -> bool {
    move |m| matches!(m, ServerMessage::TripUpdate { trip } if trip.trip_id == trip_id && trip.state == state)
}

#[tokio::test]
async fn a_rider_moving_gateway_mid_trip_gets_its_messages_there_and_only_there() {
    let stack = Stack::start().await;
    let (first, first_id) = stack.gateway().await;
    let (second, _) = stack.gateway().await;
    let mut driver = Client::driver_online_at(second.ws, &token(Role::Driver, "d1"), BERLIN).await;
    let mut rider = Client::connect(first.ws, Role::Rider, "r1").await;
    let trip = stack.accepted_trip(&mut rider, &mut driver).await;
    // The driver's position reaches the rider at its first gateway.
    let mut seq = 10;
    let ts = report(&mut driver, seq).await;
    rider.recv_until(position_at(ts)).await;

    // The rider's phone moves to the other gateway.
    drop(rider);
    let mut rider = Client::hello(second.ws, &token(Role::Rider, "r1"), &[1])
        .await
        .0;
    let state = rider
        .recv_until(|m| matches!(m, ServerMessage::SessionState { .. }))
        .await;
    assert!(
        matches!(&state, ServerMessage::SessionState { trips, .. } if trips.iter().any(|t| t.trip_id == trip.trip_id)),
        "{state:?}"
    );
    // Soon its driver's positions reach it there promptly, and the first gateway, which it
    // left, receives none of its messages any more.
    let patience = Patience::new("the rider's messages only at its new gateway", PATIENCE);
    loop {
        patience.check();
        seq += 1;
        let before = received(first.running.http, &first_id).await;
        let ts = report(&mut driver, seq).await;
        let prompt = tokio::time::timeout(PROMPTLY, rider.recv_until(position_at(ts))).await;
        if prompt.is_ok() && received(first.running.http, &first_id).await == before {
            break;
        }
    }
    // And so do its trip's updates.
    let before = received(first.running.http, &first_id).await;
    driver
        .send_json(
            &json!({"type": "trip_progress", "id": 4, "trip_id": trip.trip_id, "stage": "arrived"}),
        )
        .await;
    tokio::time::timeout(
        PROMPTLY,
        rider.recv_until(trip_in(trip.trip_id, TripState::Arrived)),
    )
    .await
    .expect("the trip's update promptly at the new gateway");
    assert_eq!(received(first.running.http, &first_id).await, before);
}

/// The state of trip `trip_id` in the session state a (re)connected client is sent.
async fn resumed(client: &mut Client, trip_id: Uuid) -> Option<TripState> {
    match client
        .recv_until(|m| matches!(m, ServerMessage::SessionState { .. }))
        .await
    {
        ServerMessage::SessionState { trips, .. } => trips
            .into_iter()
            .find(|t| t.trip_id == trip_id)
            .map(|t| t.state),
        _ => None,
    }
}

#[tokio::test]
async fn a_gateway_that_dies_loses_nothing_trips_committed() {
    let stack = Stack::start().await;
    let (mut doomed, doomed_ws) = Isolated::start_gateway(stack.gateway_config());
    let (survivor, _) = stack.gateway().await;
    let mut driver = Client::driver_online_at(doomed_ws, &token(Role::Driver, "d1"), BERLIN).await;
    let mut rider = Client::connect(doomed_ws, Role::Rider, "r1").await;
    let trip = stack.accepted_trip(&mut rider, &mut driver).await;

    doomed.kill();
    // While nobody can hear it, the trip moves on.
    let arrived = TripCommand::Progress {
        trip_id: trip.trip_id,
        driver_id: "d1".into(),
        stage: TripStage::Arrived,
        position: None,
    };
    assert!(
        stack
            .sandbox
            .bus
            .command(&arrived, PATIENCE)
            .await
            .unwrap()
            .changed
    );

    // Both reconnect to the other gateway and find the trip as trips committed it.
    let mut rider = Client::hello(survivor.ws, &token(Role::Rider, "r1"), &[1])
        .await
        .0;
    assert_eq!(
        resumed(&mut rider, trip.trip_id).await,
        Some(TripState::Arrived)
    );
    let mut driver = Client::hello(survivor.ws, &token(Role::Driver, "d1"), &[1])
        .await
        .0;
    assert_eq!(
        resumed(&mut driver, trip.trip_id).await,
        Some(TripState::Arrived)
    );
    // And the trip goes on there.
    driver
        .send_json(
            &json!({"type": "trip_progress", "id": 5, "trip_id": trip.trip_id, "stage": "started"}),
        )
        .await;
    driver.ack_for(5).await;
    rider
        .recv_until(trip_in(trip.trip_id, TripState::InProgress))
        .await;
}
