//! Tracking: zone events detected by the gateway from real drivers' positions, recorded by the
//! trips service, published on NATS and delivered to webhooks. By subject: [`zones`] (once per
//! crossing), [`webhooks`] (signed, in order, retried, dead-lettered and redelivered, checked
//! when registered, a receiver down under load) and [`queues`] (queue zones).

mod queues;
mod webhooks;
mod zones;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use protocol::client::{Role, ServerMessage};
use protocol::events::{self, Event, EventType, ExitReason};
use protocol::time::now_ms;
use protocol::{GeoConfig, Point, Subjects};
use serde_json::{Value, json};
use simulator::{Scenario, Settings};
use tests::client::{Client, token};
use tests::hooks::{Mode, Receiver};
use tests::services::{
    Running, TOKEN_SECRET, gateway_config, matcher_config, start_gateway, start_matcher,
    start_trips, trips_config, wait_ready,
};
use tests::{NatsServer, Patience, TestDb, eventually, unique_prefix};
use tokio::sync::watch;
use trips::webhooks::policy::Destinations;

const CENTER: Point = Point::new(52.52, 13.405);
const PATIENCE: Duration = Duration::from_secs(20);

/// A square of `half` degrees either side of `at`.
fn square(at: Point, half: f64) -> Value {
    let (w, e, s, n) = (at.lng - half, at.lng + half, at.lat - half, at.lat + half);
    json!({"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]})
}

fn dispatcher() -> String {
    token(Role::Dispatcher, "ops")
}

/// Sends `request` and returns the status and the JSON body (null when there is none).
async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// A trips service that delivers to loopback receivers and retries quickly.
fn trips_for_hooks(db: &TestDb, nats: &NatsServer, prefix: &str) -> trips::Config {
    let mut config = trips_config(&db.url, &nats.url(), prefix);
    config.webhook_destinations = Destinations::parse("127.0.0.1/32").unwrap();
    config.webhook_delivery.base_backoff = Duration::from_millis(50);
    config.webhook_delivery.max_backoff = Duration::from_millis(500);
    config.webhook_delivery.timeout = Duration::from_secs(3);
    config.webhook_delivery.poll = Duration::from_millis(100);
    config
}

/// Registers `receiver` for `types` through the API and tells it the secret; returns the id
/// and the secret.
async fn register(trips: &Running, receiver: &Receiver, types: &[&str]) -> (String, String) {
    let (status, hook) = call(
        reqwest::Client::new()
            .post(format!("http://{}/api/webhooks", trips.http))
            .bearer_auth(dispatcher())
            .json(&json!({"url": receiver.url(), "event_types": types, "description": "test"})),
    )
    .await;
    assert_eq!(status, 201, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 32, "{hook}");
    receiver.set_secret(&secret);
    (hook["endpoint_id"].as_str().unwrap().to_owned(), secret)
}

/// Every event published on `{p}.events.>`, in the order received.
async fn collect_events(nats: &NatsServer, subjects: &Subjects) -> watch::Receiver<Vec<Event>> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut subscription = client.subscribe(subjects.events_all()).await.unwrap();
    client.flush().await.unwrap();
    let (sender, receiver) = watch::channel(Vec::new());
    tokio::spawn(async move {
        let _client = client;
        while let Some(message) = subscription.next().await {
            let event: Event = serde_json::from_slice(&message.payload).unwrap();
            sender.send_modify(|events| events.push(event));
        }
    });
    receiver
}

/// Waits until `events` holds at least `n`, or `patience` passes.
async fn at_least(events: &mut watch::Receiver<Vec<Event>>, n: usize, patience: Duration) -> bool {
    tokio::time::timeout(patience, events.wait_for(|e| e.len() >= n))
        .await
        .is_ok()
}

/// One driver's zone events, as (type, exit reason, zone id).
fn zone_steps(events: &[Event], driver: &str) -> Vec<(EventType, Option<ExitReason>, String)> {
    events
        .iter()
        .filter(|e| e.driver_id.as_deref() == Some(driver) && e.zone.is_some())
        .map(|e| {
            (
                e.kind,
                e.reason,
                e.zone.as_ref().unwrap().zone_id.to_string(),
            )
        })
        .collect()
}

struct Driver {
    client: Client,
    seq: u64,
}

impl Driver {
    /// Reports `at` and waits for the gateway's ack.
    async fn at(&mut self, at: Point) {
        self.seq += 1;
        let id = 1000 + self.seq;
        self.client
            .send_json(
                &json!({"type": "location", "id": id, "lat": at.lat, "lng": at.lng,
                               "ts": now_ms(), "seq": self.seq + 1}),
            )
            .await;
        self.client.ack_for(id).await;
    }

    /// Reports `at` until `events` holds `n`, as it does once the gateway has the zones that
    /// make `at` an event.
    async fn until(
        &mut self,
        at: Point,
        events: &mut watch::Receiver<Vec<Event>>,
        n: usize,
        what: &'static str,
    ) {
        let patience = Patience::new(what, PATIENCE);
        loop {
            self.at(at).await;
            if at_least(events, n, Duration::from_millis(250)).await {
                return;
            }
            patience.check();
        }
    }
}
