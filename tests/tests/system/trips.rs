//! The trips service against real PostgreSQL and NATS.

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
        self.bus
            .request(
                self.subjects().trip_commands(),
                &command,
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| e.into_command_error())
            .and_then(|reply: TripReply| reply)
    }

    async fn query(&self, query: TripQuery) -> Option<QueryReply> {
        self.bus
            .request(
                self.subjects().trip_queries(),
                &query,
                Duration::from_secs(2),
            )
            .await
            .ok()
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
    let request: RideRequest = codec::decode(
        &tokio::time::timeout(PATIENCE, requests.next())
            .await
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
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
    while seen.len() < 6 {
        let message = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("event")
            .unwrap();
        let event: TripEvent = codec::decode(&message.payload).unwrap();
        assert_eq!(event.trip.trip_id, id);
        seen.push(event.trip.state);
    }
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
    let first: ServerMessage = serde_json::from_slice(
        &tokio::time::timeout(PATIENCE, rider_inbox.next())
            .await
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
    assert!(
        matches!(first, ServerMessage::TripUpdate { trip } if trip.state == TripState::Requested)
    );
    let offer: ServerMessage = serde_json::from_slice(
        &tokio::time::timeout(PATIENCE, driver_inbox.next())
            .await
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
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

/// Two trips processes over one database, each with its own cache of trips: a cache that is
/// behind never decides anything on its own, and a trip's history stays one chain in version
/// order though its event ids come from two blocks.
#[tokio::test]
async fn replicas_with_stale_caches_keep_one_history() {
    let db = TestDb::create().await;
    let config = trips_config(&db.url, "nats://127.0.0.1:1", &unique_prefix());
    let replica = || store_on(&db, &config);
    let (a, b) = (replica(), replica());
    assert!(a.execute(online("driver-1")).await.unwrap().changed);
    let progress = |trip_id, stage| TripCommand::Progress {
        trip_id,
        driver_id: "driver-1".into(),
        stage,
        position: None,
    };

    // A remembers the trip as requested; B offers it.
    let id = a
        .execute(create("rider-1", "k"))
        .await
        .unwrap()
        .trip
        .unwrap()
        .trip_id;
    assert!(
        b.execute(offer(id, "driver-1", 60_000))
            .await
            .unwrap()
            .changed
    );
    // On A's cache there is no offer to accept: A reads again and accepts.
    let accepted = a.execute(accept(id, "driver-1")).await.unwrap();
    assert!(accepted.changed, "accepted on the fresh trip");
    assert_eq!(accepted.trip.unwrap().state, TripState::Accepted);
    // B remembers it as offered: arriving is refused there, so B reads again.
    let arrived = b.execute(progress(id, TripStage::Arrived)).await.unwrap();
    assert!(arrived.changed);
    // A remembers it as accepted; starting needs arrived.
    assert!(
        a.execute(progress(id, TripStage::Started))
            .await
            .unwrap()
            .changed
    );
    // B remembers it as arrived, where a dispatcher's cancel applies too: its write finds the
    // version moved, and the cancel is decided again on the trip under way.
    let cancelled = b
        .execute(TripCommand::Cancel {
            trip_id: id,
            actor: Actor::Dispatcher,
            actor_id: "dispatcher-1".into(),
            reason: Some("test".into()),
        })
        .await
        .unwrap();
    assert!(cancelled.changed);
    let trip = cancelled.trip.unwrap();
    assert_eq!((trip.state, trip.version), (TripState::Cancelled, 6));

    let rows = db
        .client()
        .await
        .query(
            "SELECT version, event_id, coalesce(from_state, '-'), to_state FROM trip_events \
                 WHERE trip_id = $1 ORDER BY version",
            &[&id],
        )
        .await
        .unwrap();
    let chain: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(2), r.get(3)))
        .collect();
    let expected = [
        (1, "-", "requested"),
        (2, "requested", "offered"),
        (3, "offered", "accepted"),
        (4, "accepted", "arrived"),
        (5, "arrived", "in_progress"),
        (6, "in_progress", "cancelled"),
    ];
    assert_eq!(
        chain,
        expected.map(|(v, from, to)| (v, from.to_owned(), to.to_owned()))
    );
    let ids: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert!(
        !ids.is_sorted(),
        "ids from two replicas' blocks interleave, so only the version orders events: {ids:?}"
    );
}

/// Transitions decided while a write is in flight are written together, and one that cannot
/// be written (its driver holds another trip) fails alone while the rest of its statement is
/// written.
#[tokio::test]
async fn concurrent_transitions_share_a_statement_and_a_bad_one_fails_alone() {
    const TRIPS: usize = 20;
    let db = TestDb::create().await;
    let mut config = trips_config(&db.url, "nats://127.0.0.1:1", &unique_prefix());
    config.store.writers = 1;
    let store = store_on(&db, &config);
    // A driver busy with a trip of its own.
    assert!(store.execute(online("busy")).await.unwrap().changed);
    let held = store
        .execute(create("rider-busy", "k"))
        .await
        .unwrap()
        .trip
        .unwrap();
    assert!(
        store
            .execute(offer(held.trip_id, "busy", 60_000))
            .await
            .unwrap()
            .changed
    );

    // Rounds of TRIPS offers sent at once, the last to the busy driver, until one statement
    // has written several (they share a transaction id); each round must come out the same.
    let pg = db.client().await;
    eventually("offers written together", PATIENCE, || {
        let (store, pg) = (store.clone(), &pg);
        async move {
            let round = Uuid::new_v4().simple().to_string();
            let mut trip_ids = Vec::new();
            for k in 0..TRIPS {
                assert!(
                    store
                        .execute(online(&format!("{round}-{k}")))
                        .await
                        .unwrap()
                        .changed
                );
                let trip = store
                    .execute(create(&format!("{round}-{k}"), "k"))
                    .await
                    .unwrap();
                trip_ids.push(trip.trip.unwrap().trip_id);
            }
            let replies =
                futures_util::future::join_all(trip_ids.iter().enumerate().map(|(k, &trip_id)| {
                    let driver = match k {
                        k if k == TRIPS - 1 => "busy".to_owned(),
                        k => format!("{round}-{k}"),
                    };
                    store.execute(offer(trip_id, &driver, 60_000))
                }))
                .await;
            let (bad, good) = replies.split_last().unwrap();
            assert_eq!(code(bad), Some(ErrorCode::Conflict), "{bad:?}");
            assert!(
                good.iter().all(|r| r.as_ref().is_ok_and(|o| o.changed)),
                "{good:?}"
            );
            let states: Vec<String> = pg
                .query(
                    "SELECT state FROM trips WHERE trip_id = ANY($1) ORDER BY state",
                    &[&trip_ids],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(states.iter().filter(|s| *s == "offered").count(), TRIPS - 1);
            assert_eq!(states.iter().filter(|s| *s == "requested").count(), 1);
            let statements: i64 = pg
                .query_one(
                    "SELECT count(DISTINCT xmin::text) FROM trip_events \
                     WHERE trip_id = ANY($1) AND to_state = 'offered'",
                    &[&trip_ids],
                )
                .await
                .unwrap()
                .get(0);
            (statements < (TRIPS - 1) as i64).then_some(())
        }
    })
    .await;
}

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
async fn a_crash_between_commit_and_publish_still_publishes() {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let config = trips_config(&db.url, &nats.url(), &prefix);
    // A store with no publisher: the command commits, then the "process" is gone.
    let pool = trips::db::pool(&db.url, &config.pool).unwrap();
    let store = trips::Store::new(
        pool.clone(),
        config.geo,
        config.subjects.clone(),
        config.store.clone(),
    );
    let trip = store
        .execute(create("rider-1", "k"))
        .await
        .unwrap()
        .trip
        .unwrap();
    drop(store);
    pool.close();
    let waiting: i64 = db
        .client()
        .await
        .query_one(
            "SELECT coalesce(sum(cardinality(subjects)), 0)::int8 FROM outbox",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        waiting >= 3,
        "event, rider update and ride request wait in the outbox"
    );

    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut events = client
        .subscribe(config.subjects.trip_events_all())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let _trips = start_trips(config).await;
    let message = tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("event published after restart")
        .unwrap();
    let event: TripEvent = codec::decode(&message.payload).unwrap();
    assert_eq!(event.trip.trip_id, trip.trip_id);
    assert_eq!(event.trip.state, TripState::Requested);
    eventually("outbox emptied", PATIENCE, || async {
        let n: i64 = db
            .client()
            .await
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .ok()?
            .get(0);
        (n == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_sweeper_reverts_expired_offers_and_expires_searches() {
    let f = Fixture::start_with(|c| {
        c.store.search_timeout = Duration::from_secs(3);
        c.sweep.interval = Duration::from_millis(100);
        c.sweep.offer_grace = Duration::from_millis(100);
        c.sweep.quiet_after = Duration::from_millis(500);
    })
    .await;
    let region = protocol::GeoConfig::default().region_of(PICKUP).unwrap();
    let mut requests = f
        .bus
        .client
        .subscribe(f.subjects().ride_requests(region))
        .await
        .unwrap();
    f.bus.client.flush().await.unwrap();
    f.driver_online("driver-1").await;
    let id = f.create("rider-1", "k").await.trip_id;
    f.offer(id, "driver-1", 200).await.unwrap();

    // Nobody answers: the offer reverts and the driver is excluded.
    eventually("offer reverted", PATIENCE, || async {
        let trip = f.trip(id).await;
        (trip.state == TripState::Requested && trip.version > 2).then_some(())
    })
    .await;
    // The quiet request is re-published with the exclusion, more than once.
    let mut attempts = Vec::new();
    while attempts.len() < 3 {
        let message = tokio::time::timeout(PATIENCE, requests.next())
            .await
            .expect("request")
            .unwrap();
        let request: RideRequest = codec::decode(&message.payload).unwrap();
        attempts.push((request.attempt, request.excluded_drivers.clone()));
    }
    assert!(
        attempts
            .iter()
            .any(|(_, excluded)| excluded == &["driver-1".to_owned()]),
        "{attempts:?}"
    );
    // The search deadline passes: expired, by the system, with a reason.
    let trip = eventually("trip expired", PATIENCE, || async {
        let trip = f.trip(id).await;
        (trip.state == TripState::Expired).then_some(trip)
    })
    .await;
    assert_eq!(trip.ended_by, Some(Actor::System));
    assert!(trip.end_reason.unwrap().contains("deadline"));
}

#[tokio::test]
async fn commands_answer_unavailable_quickly_when_the_database_is_away() {
    let nats = NatsServer::start();
    let prefix = unique_prefix();
    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/none",
        tests::nats::free_port()
    );
    let trips = launch_trips(trips_config(&dead, &nats.url(), &prefix)).await;
    let bus = Bus::new(
        async_nats::connect(nats.url()).await.unwrap(),
        Subjects::new(&prefix).unwrap(),
    );
    let started = std::time::Instant::now();
    let reply: TripReply = eventually("a reply", PATIENCE, || async {
        bus.request(
            bus.subjects.trip_commands(),
            &create("rider-1", "k"),
            Duration::from_secs(10),
        )
        .await
        .ok()
    })
    .await;
    assert_eq!(code(&reply), Some(ErrorCode::Unavailable));
    assert!(reply.unwrap_err().code.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(10));
    // And it says it is not ready.
    let ready = reqwest::get(format!("http://{}/readyz", trips.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("database: waiting"));
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
    assert_eq!(all.len(), 2);
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

#[tokio::test]
async fn trips_outside_the_service_area_are_refused() {
    let area = protocol::area::ServiceArea::from_geojson(
        r#"{"type": "Polygon", "coordinates": [[[13.30, 52.45], [13.50, 52.45], [13.50, 52.58],
            [13.30, 52.58], [13.30, 52.45]]]}"#,
        h3o::Resolution::Eight,
    )
    .unwrap();
    let f = Fixture::start_with(|c| c.service_area = Some(std::sync::Arc::new(area))).await;
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
            error.message.contains("outside the service area"),
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
