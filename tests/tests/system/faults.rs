//! Faults injected under simulated load: a matcher killed, NATS restarted, a NATS cluster node
//! lost, PostgreSQL taken away for ten seconds, a gateway restarted. After each, every request
//! the simulator made reached a terminal state, no driver ever held two trips, and every trip's
//! state agrees with its event log.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::client::{Role, ServerMessage};
use protocol::{GeoConfig, Point};
use serde_json::json;
use simulator::report::Report;
use simulator::{Scenario, Settings};
use tests::client::{Client, token};
use tests::proxy::{self, TcpProxy};
use tests::services::{
    Gateway, Isolated, Running, TOKEN_SECRET, gateway_config, matcher_config, start_gateway,
    start_gateway_at, start_trips, trips_config, wait_ready, wait_unready,
};
use tests::{NatsCluster, NatsServer, TestDb, unique_prefix};
use tokio::task::JoinHandle;

const CENTER: Point = Point::new(52.52, 13.405);
/// How long PostgreSQL is away in the database fault.
const PG_OUTAGE: Duration = Duration::from_secs(10);
/// Far enough from the simulated city that a probe driver there gets the probe rider's trip.
const PROBE: Point = Point::new(52.52, 13.46);

/// The services of one test, all on the same NATS (one server or a cluster's URLs).
struct City {
    db: TestDb,
    prefix: String,
    trips: Running,
    matchers: Vec<Isolated>,
    gateway: Gateway,
}

impl City {
    /// Trips (through the proxy at `database_via` when given, so the test can take PostgreSQL
    /// away from it),
    /// `matchers` replicas serving the same regions in runtimes of their own, and a gateway.
    async fn start(nats_url: &str, matchers: usize, database_via: Option<SocketAddr>) -> Self {
        let db = TestDb::create().await;
        let prefix = unique_prefix();
        let database_url = match database_via {
            Some(proxy) => proxy::via(&db.url, proxy),
            None => db.url.clone(),
        };
        let mut trips = trips_config(&database_url, nats_url, &prefix);
        trips.store.search_timeout = Duration::from_secs(20);
        trips.sweep.quiet_after = Duration::from_secs(2);
        let trips = start_trips(trips).await;
        let regions = GeoConfig::default()
            .regions_covering(CENTER, 6_000.0)
            .unwrap();
        let matchers = (0..matchers)
            .map(|_| {
                let mut config = matcher_config(nats_url, &prefix, regions.clone());
                config.settings.offer_ttl = Duration::from_secs(3);
                Isolated::start_matcher(config)
            })
            .collect();
        let gateway = start_gateway(gateway_config(nats_url, &prefix)).await;
        wait_ready(gateway.running.http).await;
        Self {
            db,
            prefix,
            trips,
            matchers,
            gateway,
        }
    }

    /// A small city's worth of drivers and riders through the gateway, in the background.
    fn simulate(&self) -> JoinHandle<anyhow::Result<Report>> {
        let mut settings = Settings::new(
            &format!("ws://{}/ws", self.gateway.ws),
            TOKEN_SECRET,
            CENTER,
        );
        settings.drivers = 16;
        settings.riders = 12;
        settings.city.radius_m = 1_500.0;
        settings.scenario = Scenario::Chaos;
        settings.duration = Duration::from_secs(14);
        settings.drain = Duration::from_secs(75);
        settings.request_rate = 1.5;
        settings.speedup = 60.0;
        settings.answer_delay = Duration::from_millis(300);
        settings.accept_probability = 0.9;
        settings.cancel_probability = 0.05;
        settings.progress = false;
        tokio::spawn(simulator::run(settings))
    }

    /// Waits until the simulation has trips under way.
    async fn under_load(&self) {
        let pg = self.db.client().await;
        tests::eventually("trips under way", Duration::from_secs(30), || async {
            let row = pg
                .query_one(
                    "SELECT count(*) FILTER (WHERE state IN ('accepted', 'arrived', 'in_progress')), \
                     count(*) FROM trips",
                    &[],
                )
                .await
                .ok()?;
            (row.get::<_, i64>(0) >= 1 && row.get::<_, i64>(1) >= 3).then_some(())
        })
        .await;
    }

    /// Checks the run's outcome and the database's.
    async fn assert_sound(&self, report: &Report) {
        let table = report.table();
        let pg = self.db.client().await;
        let open: Vec<String> = pg
            .query(
                "SELECT t.trip_id::text || ' ' || t.state || ' rider ' || t.rider_id || ': ' || \
                 (SELECT string_agg(e.to_state || ' by ' || e.actor, ', ' ORDER BY e.version) \
                  FROM trip_events e WHERE e.trip_id = t.trip_id) \
                 FROM trips t WHERE t.state NOT IN ('completed', 'cancelled', 'expired')",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            open.is_empty(),
            "trips left open in PostgreSQL: {open:#?}\n{table}"
        );
        // Each trip's state is where its event log ends, and each event starts where the one
        // before it ended.
        let disagreeing: i64 = pg
            .query_one(
                "SELECT count(*) FROM trips t WHERE t.state IS DISTINCT FROM \
                 (SELECT to_state FROM trip_events e WHERE e.trip_id = t.trip_id \
                  ORDER BY version DESC LIMIT 1)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(disagreeing, 0, "trips whose state is not their last event");
        let broken_chains: i64 = pg
            .query_one(
                "SELECT count(*) FROM (SELECT from_state, lag(to_state) OVER \
                 (PARTITION BY trip_id ORDER BY version) AS previous FROM trip_events) e \
                 WHERE e.previous IS DISTINCT FROM e.from_state",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(broken_chains, 0, "event logs with gaps");
        assert!(report.acknowledged > 3, "too little happened\n{table}");
        assert_eq!(report.lost, 0, "requests that never ended\n{table}");
        assert_eq!(report.double_assigned, 0, "{table}");
        assert_eq!(
            report.completed + report.cancelled + report.expired,
            report.acknowledged,
            "{table}"
        );
        assert!(report.completed > 0, "{table}");
    }
}

/// A driver online at `at`, for probing the service directly.
async fn probe_driver(gateway: SocketAddr, id: &str, at: Point) -> Client {
    Client::driver_online_at(gateway, &token(Role::Driver, id), at).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_matchers_under_load() {
    tests::init_logs();
    let nats = NatsServer::start();
    let mut city = City::start(&nats.url(), 2, None).await;
    let mut driver = probe_driver(city.gateway.ws, "probe-driver", PROBE).await;
    let mut rider = Client::connect(city.gateway.ws, Role::Rider, "probe-rider").await;
    let simulation = city.simulate();
    city.under_load().await;

    city.matchers[0].kill();
    let killed = Instant::now();
    // A new request right after the kill is offered by the surviving replica: at once when
    // NATS already knows the killed one is gone (about 10 ms after the kill), or, when the
    // request reached the killed replica's subscription in the moment before, once the trips
    // service's sweeper publishes the quiet request again (`quiet_after`, 2 s here, checked
    // every second). Either way within 5 s.
    rider
        .send_json(&json!({"type": "request_ride", "id": 1,
            "pickup": {"lat": PROBE.lat, "lng": PROBE.lng + 0.0005},
            "dropoff": {"lat": PROBE.lat - 0.01, "lng": PROBE.lng}, "idempotency_key": "probe"}))
        .await;
    let trip = rider.ack_trip(1).await;
    let offer = tokio::time::timeout(
        Duration::from_secs(5),
        driver.recv_until(|m| matches!(m, ServerMessage::Offer { .. })),
    )
    .await
    .expect("the surviving matcher offered the probe request within 5 s of the kill");
    let ServerMessage::Offer { trip: offered, .. } = offer else {
        unreachable!()
    };
    assert_eq!(offered.trip_id, trip.trip_id);
    tracing::info!(after = ?killed.elapsed(), "probe offered after the kill");
    rider
        .send_json(&json!({"type": "cancel_trip", "id": 2, "trip_id": trip.trip_id}))
        .await;
    rider.ack_for(2).await;

    let report = simulation.await.unwrap().unwrap();
    city.assert_sound(&report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_nats_under_load() {
    tests::init_logs();
    let mut nats = NatsServer::start();
    let city = City::start(&nats.url(), 1, None).await;
    let mut ops = Client::connect(city.gateway.ws, Role::Dispatcher, "ops").await;
    ops.send_json(&json!({"type": "subscribe_viewport", "id": 1,
        "viewport": {"south": 52.50, "west": 13.37, "north": 52.54, "east": 13.44}, "zoom": 14}))
        .await;
    ops.ack_for(1).await;
    let simulation = city.simulate();
    city.under_load().await;

    nats.kill();
    // NATS stays away until every service has noticed.
    wait_unready(city.gateway.running.http).await;
    wait_unready(city.trips.http).await;
    nats.restart();
    let restarted = Instant::now();

    // The dispatcher's socket stayed up and positions flow to it again.
    ops.send_json(&json!({"type": "subscribe_viewport", "id": 2,
        "viewport": {"south": 52.50, "west": 13.37, "north": 52.54, "east": 13.44}, "zoom": 14}))
        .await;
    ops.ack_for(2).await;
    ops.recv_until(|m| matches!(m, ServerMessage::Vehicles { vehicles } if vehicles.iter().any(|v| v.ts > protocol::time::now_ms() - 1_000)))
        .await;
    tracing::info!(after = ?restarted.elapsed(), "positions flowing after the restart");

    let report = simulation.await.unwrap().unwrap();
    assert_eq!(
        report.reconnects,
        0,
        "client WebSockets stay up through a NATS restart\n{}",
        report.table()
    );
    city.assert_sound(&report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_node_of_a_three_node_nats_cluster_under_load() {
    tests::init_logs();
    let mut cluster = NatsCluster::start(3);
    cluster.wait_routed().await;
    let city = City::start(&cluster.urls(), 1, None).await;
    let simulation = city.simulate();
    city.under_load().await;

    cluster.nodes[0].kill();

    let report = simulation.await.unwrap().unwrap();
    city.assert_sound(&report).await;
    // Everything the gateway publishes still reaches the survivors.
    let survivor = async_nats::connect(cluster.nodes[1].url()).await.unwrap();
    let mut positions = survivor
        .subscribe(format!("{}.loc.>", city.prefix))
        .await
        .unwrap();
    survivor.flush().await.unwrap();
    let _driver = probe_driver(city.gateway.ws, "after-failover", CENTER).await;
    tokio::time::timeout(
        Duration::from_secs(15),
        futures_util::StreamExt::next(&mut positions),
    )
    .await
    .expect("a position through the cluster after the failover")
    .expect("subscription open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unavailable_for_ten_seconds_under_load() {
    tests::init_logs();
    let nats = NatsServer::start();
    // The trips service reaches PostgreSQL only through the proxy; the test reads directly.
    let proxy = TcpProxy::start(proxy::postgres_addr(&tests::pg::admin_url())).await;
    let city = City::start(&nats.url(), 1, Some(proxy.addr)).await;
    let trips_http = city.trips.http;
    let mut rider = Client::connect(city.gateway.ws, Role::Rider, "probe-rider").await;
    let simulation = city.simulate();
    city.under_load().await;

    proxy.cut();
    let cut = Instant::now();
    // Meanwhile a rider's command gets a retryable error, within bounded time.
    rider
        .send_json(&json!({"type": "request_ride", "id": 1,
            "pickup": {"lat": PROBE.lat, "lng": PROBE.lng},
            "dropoff": {"lat": PROBE.lat - 0.01, "lng": PROBE.lng}, "idempotency_key": "during-outage"}))
        .await;
    let code = rider.error_for(1).await;
    assert!(
        matches!(
            code,
            protocol::ErrorCode::Unavailable | protocol::ErrorCode::Timeout
        ),
        "{code:?}"
    );
    wait_unready(trips_http).await;
    // The fault itself lasts PG_OUTAGE (the length under test, not a wait for anything).
    tokio::time::sleep(PG_OUTAGE.saturating_sub(cut.elapsed())).await;
    proxy.restore();
    wait_ready(trips_http).await;
    // The same command, retried after recovery, succeeds.
    rider
        .send_json(&json!({"type": "request_ride", "id": 2,
            "pickup": {"lat": PROBE.lat, "lng": PROBE.lng},
            "dropoff": {"lat": PROBE.lat - 0.01, "lng": PROBE.lng}, "idempotency_key": "during-outage"}))
        .await;
    let trip = rider.ack_trip(2).await;
    rider
        .send_json(&json!({"type": "cancel_trip", "id": 3, "trip_id": trip.trip_id}))
        .await;
    rider.ack_for(3).await;

    let report = simulation.await.unwrap().unwrap();
    city.assert_sound(&report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_gateway_under_load() {
    tests::init_logs();
    let nats = NatsServer::start();
    let mut city = City::start(&nats.url(), 1, None).await;
    let simulation = city.simulate();
    city.under_load().await;

    let pg = city.db.client().await;
    let under_way: Vec<uuid::Uuid> = pg
        .query(
            "SELECT trip_id FROM trips WHERE state IN ('accepted', 'arrived', 'in_progress')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!under_way.is_empty());
    let (ws, http) = (city.gateway.ws, city.gateway.running.http);
    city.gateway.running.halt().await.unwrap();
    city.gateway = start_gateway_at(gateway_config(&nats.url(), &city.prefix), ws, http).await;
    wait_ready(http).await;

    let report = simulation.await.unwrap().unwrap();
    assert!(
        report.reconnects > 0,
        "clients reconnected\n{}",
        report.table()
    );
    city.assert_sound(&report).await;
    // The trips under way at the restart went on to an end, most of them to completion.
    let ended: Vec<String> = pg
        .query(
            "SELECT state FROM trips WHERE trip_id = ANY($1)",
            &[&under_way],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ended.iter().any(|s| s == "completed"), "{ended:?}");
}
