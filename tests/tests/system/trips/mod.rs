//! The trips service against real PostgreSQL and NATS, by subject: [`commands`] and the
//! state machine, [`replicas`] sharing one database, [`delivery`] of what committed (outbox,
//! sweeper, an absent database), [`history`] (breadcrumbs, the history API, migrations) and
//! [`zones`] (drawn through the API, in force in every replica).

mod commands;
mod delivery;
mod history;
mod replicas;
mod zones;

use std::time::Duration;

use futures_util::StreamExt;
use kit::Bus;
use protocol::bus::{
    QueryReply, RideRequest, TripCommand, TripEvent, TripOutcome, TripQuery, TripReply,
};
use protocol::client::{Role, ServerMessage};
use protocol::time::now_ms;
use protocol::token::{self, Claims};
use protocol::trip::{Actor, TripStage, TripState, TripView};
use protocol::{ErrorCode, Point, Subjects, codec};
use serde::de::DeserializeOwned;
use tests::services::{Running, TOKEN_SECRET, launch_trips, start_trips, trips_config};
use tests::{NatsServer, TestDb, driver_online as online, eventually, unique_prefix};
use uuid::Uuid;

const PICKUP: Point = Point::new(52.520_008, 13.404_954);
const DROPOFF: Point = Point::new(52.500_000, 13.450_000);
const PATIENCE: Duration = Duration::from_secs(15);

struct Fixture {
    _nats: NatsServer,
    db: TestDb,
    bus: Bus,
    trips: Option<Running>,
}

impl Fixture {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tune: impl FnOnce(&mut trips::Config)) -> Self {
        tests::init_logs();
        let nats = NatsServer::start();
        let db = TestDb::create().await;
        let prefix = unique_prefix();
        let mut config = trips_config(&db.url, &nats.url(), &prefix);
        tune(&mut config);
        let trips = start_trips(config).await;
        let client = async_nats::connect(nats.url()).await.unwrap();
        let bus = Bus::new(client, Subjects::new(&prefix).unwrap());
        let fixture = Self {
            _nats: nats,
            db,
            bus,
            trips: Some(trips),
        };
        // Ready once it answers a query.
        eventually("trips service answering", PATIENCE, || async {
            match fixture
                .query(TripQuery::Trip {
                    trip_id: Uuid::nil(),
                })
                .await
            {
                Some(QueryReply::Trip(None)) => Some(()),
                _ => None,
            }
        })
        .await;
        fixture
    }

    fn subjects(&self) -> &Subjects {
        &self.bus.subjects
    }

    async fn command(&self, command: TripCommand) -> TripReply {
        self.bus.command(&command, Duration::from_secs(10)).await
    }

    /// The answer, or `None` when the service could not give one.
    async fn query(&self, query: TripQuery) -> Option<QueryReply> {
        match self.bus.query(&query, Duration::from_secs(2)).await {
            QueryReply::Error(_) => None,
            reply => Some(reply),
        }
    }

    async fn driver_online(&self, driver_id: &str) {
        let outcome = self.command(online(driver_id)).await.unwrap();
        assert!(outcome.changed);
    }

    async fn create(&self, rider: &str, key: &str) -> TripView {
        self.command(create(rider, key))
            .await
            .unwrap()
            .trip
            .unwrap()
    }

    async fn offer(&self, trip_id: Uuid, driver: &str, ttl_ms: i64) -> TripReply {
        self.command(offer(trip_id, driver, ttl_ms)).await
    }

    async fn trip(&self, trip_id: Uuid) -> TripView {
        match self.query(TripQuery::Trip { trip_id }).await {
            Some(QueryReply::Trip(Some(trip))) => trip,
            other => panic!("no trip {trip_id}: {other:?}"),
        }
    }
}

fn create(rider: &str, key: &str) -> TripCommand {
    TripCommand::CreateTrip {
        rider_id: rider.into(),
        idempotency_key: key.into(),
        pickup: PICKUP,
        dropoff: DROPOFF,
        vehicle_class: None,
        min_capacity: None,
    }
}

/// A trips store of its own on `db`, as one more trips process would have.
fn store_on(db: &TestDb, config: &trips::Config) -> trips::Store {
    trips::Store::new(
        trips::db::pool(&db.url, &config.pool).unwrap(),
        config.geo,
        config.subjects.clone(),
        config.store.clone(),
    )
}

fn offer(trip_id: Uuid, driver: &str, ttl_ms: i64) -> TripCommand {
    TripCommand::Offer {
        trip_id,
        driver_id: driver.into(),
        expires_at: now_ms() + ttl_ms,
        pickup_eta_s: 120,
    }
}

fn accept(trip_id: Uuid, driver: &str) -> TripCommand {
    TripCommand::AnswerOffer {
        trip_id,
        driver_id: driver.into(),
        accept: true,
    }
}

fn code(reply: &TripReply) -> Option<ErrorCode> {
    reply.as_ref().err().map(|e| e.code)
}

/// The next message on `subscription` within the patience, decoded: a client's JSON (a
/// payload that opens an object) or a bus payload.
async fn next<T: DeserializeOwned>(subscription: &mut async_nats::Subscriber) -> T {
    let message = tokio::time::timeout(PATIENCE, subscription.next())
        .await
        .expect("a message in time")
        .expect("the subscription is open");
    if message.payload.first() == Some(&b'{') {
        serde_json::from_slice(&message.payload).expect("a client message")
    } else {
        codec::decode(&message.payload).expect("a bus payload")
    }
}
