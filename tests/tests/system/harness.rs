//! The harness itself: servers come up, restart, cluster; databases are isolated.

use std::time::Duration;

use futures_util::StreamExt;
use tests::{NatsCluster, NatsServer, TestDb};

#[tokio::test]
async fn nats_server_restarts_on_the_same_port() {
    let mut server = NatsServer::start();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await
        .unwrap();
    let mut sub = client.subscribe("h.ping").await.unwrap();
    client.flush().await.unwrap();
    server.restart();
    // The client reconnects on its own and its subscription is restored. Writes to the old,
    // dead socket can vanish, so publish until one arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let message = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no message after the restart"
        );
        let _ = client.publish("h.ping", "x".into()).await;
        let _ = tokio::time::timeout(Duration::from_millis(200), client.flush()).await;
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), sub.next()).await
        {
            break message;
        }
    };
    assert_eq!(&message.payload[..], b"x");
}

#[tokio::test]
async fn cluster_routes_messages_between_nodes() {
    let cluster = NatsCluster::start(3);
    let a = async_nats::connect(cluster.nodes[0].url()).await.unwrap();
    let c = async_nats::connect(cluster.nodes[2].url()).await.unwrap();
    let mut sub = a.subscribe("h.cluster").await.unwrap();
    a.flush().await.unwrap();
    // Routes take a moment to form: publish until the other node delivers.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let got = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery across the cluster"
        );
        c.publish("h.cluster", "y".into()).await.unwrap();
        c.flush().await.unwrap();
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), sub.next()).await
        {
            break message;
        }
    };
    assert_eq!(&got.payload[..], b"y");
}

#[tokio::test]
async fn each_test_database_is_fresh_and_migrated() {
    let one = TestDb::create().await;
    let two = TestDb::create().await;
    assert_ne!(one.name, two.name);
    let client = one.client().await;
    client
        .execute("INSERT INTO riders (rider_id) VALUES ('r1')", &[])
        .await
        .unwrap();
    let other: i64 = two
        .client()
        .await
        .query_one("SELECT count(*) FROM riders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(other, 0);
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name IN \
             ('drivers', 'riders', 'trips', 'trip_events', 'offers', 'outbox', 'breadcrumbs')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 7);
    let name = one.name.clone();
    drop(client);
    drop(one);
    let exists: i64 = two
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(exists, 0, "dropped test database still exists");
}
