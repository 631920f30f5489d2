//! A gateway session's commands: carried out in the order sent, waited for by the gateway's
//! stop, and answered in words written for people, never with internal error text.

use std::time::Duration;

use kit::Bus;
use protocol::bus::{QueryReply, TripQuery};
use protocol::client::{Role, ServerMessage};
use protocol::{ErrorCode, Subjects};
use serde_json::json;
use tests::client::Client;
use tests::services::{gateway_config, start_gateway, start_trips, trips_config};
use tests::{NatsServer, TestDb, unique_prefix};

const PATIENCE: Duration = Duration::from_secs(15);

/// The answers (ack or error) to messages `ids`, in the order they arrive.
async fn answers(client: &mut Client, ids: &[u64]) -> Vec<ServerMessage> {
    let mut seen = Vec::new();
    while seen.len() < ids.len() {
        let answer = client
            .recv_until(|m| match m {
                ServerMessage::Ack { id, .. } | ServerMessage::Error { id: Some(id), .. } => {
                    ids.contains(id)
                }
                _ => false,
            })
            .await;
        seen.push(answer);
    }
    seen
}

fn answer_id(message: &ServerMessage) -> u64 {
    match message {
        ServerMessage::Ack { id, .. } | ServerMessage::Error { id: Some(id), .. } => *id,
        other => panic!("not an answer: {other:?}"),
    }
}

#[tokio::test]
async fn commands_of_one_session_apply_in_the_order_sent() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let _trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    let gateway = start_gateway(gateway_config(&nats.url(), &prefix)).await;
    tests::services::wait_ready(gateway.running.http).await;
    let mut driver = Client::connect(gateway.ws, Role::Driver, "d-order").await;
    // Online and offline in turn, without waiting: each must apply after the one before.
    let ids: Vec<u64> = (1..=6).collect();
    for id in &ids {
        let message = if id % 2 == 1 {
            json!({"type": "go_online", "id": id, "vehicle_class": "standard", "capacity": 4})
        } else {
            json!({"type": "go_offline", "id": id})
        };
        driver.send_json(&message).await;
    }
    let answered = answers(&mut driver, &ids).await;
    let order: Vec<u64> = answered.iter().map(answer_id).collect();
    assert_eq!(order, ids, "answers in the order sent");
    for answer in &answered {
        assert!(
            matches!(answer, ServerMessage::Ack { changed: true, .. }),
            "{answer:?}"
        );
    }
    // The last one sent is the one that stands.
    let bus = Bus::new(
        async_nats::connect(nats.url()).await.unwrap(),
        Subjects::new(&prefix).unwrap(),
    );
    let query = TripQuery::SessionState {
        role: Role::Driver,
        id: "d-order".into(),
    };
    match bus.query(&query, PATIENCE).await {
        QueryReply::SessionState {
            driver: Some(state),
            ..
        } => assert!(!state.online, "the driver's last word was go_offline"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_gateway_stop_waits_for_commands_in_flight() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let mut trips = trips_config(&db.url, &nats.url(), &prefix);
    trips.store.command_timeout = Duration::from_secs(60);
    let _trips = start_trips(trips).await;
    let mut config = gateway_config(&nats.url(), &prefix);
    config.limits.command_timeout = Duration::from_secs(60);
    let gateway = start_gateway(config).await;
    tests::services::wait_ready(gateway.running.http).await;
    let mut driver = Client::connect(gateway.ws, Role::Driver, "d-stop").await;
    driver
        .send_json(
            &json!({"type": "go_online", "id": 1, "vehicle_class": "standard", "capacity": 4}),
        )
        .await;
    driver.ack_for(1).await;
    // Hold the driver's row, so that going offline waits in the database for as long as the
    // test wants.
    let mut holder = db.client().await;
    let lock = holder.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM drivers WHERE driver_id = 'd-stop' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    driver
        .send_json(&json!({"type": "go_offline", "id": 2}))
        .await;
    // The command waits on the row.
    db.until_a_session_waits_for_a_lock().await;
    let mut running = gateway.running;
    let mut stopping = tokio::spawn(async move { running.halt().await });
    // The sessions close at once, but the gateway waits for the command it forwarded.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), &mut stopping)
            .await
            .is_err(),
        "the gateway stopped with a command in flight"
    );
    lock.commit().await.unwrap();
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the gateway stops once the command is answered")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn clients_are_told_errors_in_words_not_internals() {
    tests::init_logs();
    let nats = NatsServer::start();
    let prefix = unique_prefix();
    // No trips service: commands fail on the bus.
    let gateway = start_gateway(gateway_config(&nats.url(), &prefix)).await;
    tests::services::wait_ready(gateway.running.http).await;
    let (mut rider, welcome) = Client::hello(
        gateway.ws,
        &tests::client::token(Role::Rider, "r-words"),
        &[1],
    )
    .await;
    assert!(matches!(welcome, ServerMessage::Welcome { .. }));
    let internals = |message: &str| {
        let lower = message.to_lowercase();
        [
            "line ",
            "column",
            "`",
            "nats",
            &prefix,
            "missing field",
            "expected",
        ]
        .iter()
        .any(|part| lower.contains(part))
    };
    let error = |message: ServerMessage| match message {
        ServerMessage::Error { code, message, .. } => (code, message),
        other => panic!("expected an error, got {other:?}"),
    };

    rider.send_text("{".into()).await;
    let (code, message) = error(
        rider
            .recv_until(|m| matches!(m, ServerMessage::Error { id: None, .. }))
            .await,
    );
    assert_eq!(code, ErrorCode::InvalidMessage);
    assert_eq!(message, "not valid JSON");

    rider
        .send_json(&json!({"type": "request_ride", "id": 2}))
        .await;
    let (code, message) = error(
        rider
            .recv_until(|m| matches!(m, ServerMessage::Error { id: Some(2), .. }))
            .await,
    );
    assert_eq!(code, ErrorCode::InvalidMessage);
    assert!(!internals(&message), "{message}");

    rider
        .send_json(&json!({"type": "get_trip", "id": 3, "trip_id": uuid::Uuid::new_v4()}))
        .await;
    let (code, message) = error(
        rider
            .recv_until(|m| matches!(m, ServerMessage::Error { id: Some(3), .. }))
            .await,
    );
    assert!(code.is_retryable(), "{code:?}");
    assert!(!internals(&message), "{message}");
}
