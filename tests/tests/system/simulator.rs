//! A short simulated city against the whole real stack: gateway, matcher, trips, NATS and
//! PostgreSQL, every client a real WebSocket.

use std::time::Duration;

use futures_util::StreamExt;
use protocol::{GeoConfig, Point};
use simulator::{Scenario, Settings};
use tests::services::{
    TOKEN_SECRET, gateway_config, matcher_config, start_gateway, start_matcher, start_trips,
    trips_config, wait_ready,
};
use tests::{NatsServer, TestDb, unique_prefix};

const CENTER: Point = Point::new(52.52, 13.405);

/// The sum of counter `name`'s series that carry every label in `labels`, from a `/metrics`
/// text.
fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_short_steady_city_ends_every_request_and_reports() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let mut config = trips_config(&db.url, &nats.url(), &prefix);
    // The simulated integrator schedules pickups 1 to 3 s ahead: they wait until 1 s before.
    config.store.schedule_lead = Duration::from_secs(1);
    let trips = start_trips(config).await;
    let regions = GeoConfig::default()
        .regions_covering(CENTER, 3_000.0)
        .unwrap();
    let mut matcher = matcher_config(&nats.url(), &prefix, regions);
    matcher.settings.offer_ttl = Duration::from_secs(3);
    let matcher = start_matcher(matcher).await;
    wait_ready(matcher.http).await;
    let gateway = start_gateway(gateway_config(&nats.url(), &prefix)).await;
    wait_ready(gateway.running.http).await;

    // Every service in this process shares one recorder: counters only grow, so what the
    // run must have moved is read as a difference.
    let metrics_at = gateway.running.http;
    let before = tests::services::metrics_text(metrics_at).await;

    let mut settings = Settings::new(&format!("ws://{}/ws", gateway.ws), TOKEN_SECRET, CENTER);
    settings.drivers = 20;
    settings.riders = 20;
    settings.city.radius_m = 2_000.0;
    settings.scenario = Scenario::Steady;
    settings.duration = Duration::from_secs(6);
    settings.drain = Duration::from_secs(45);
    settings.request_rate = 4.0;
    settings.report_every = Duration::from_millis(200);
    settings.speedup = 100.0;
    settings.answer_delay = Duration::from_millis(200);
    settings.accept_probability = 0.9;
    settings.cancel_probability = 0.1;
    // An integrator's server beside the riders, with a key made through the API.
    let dispatcher = tests::client::token(protocol::client::Role::Dispatcher, "ops");
    let key: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/v1/api-keys", trips.http))
        .bearer_auth(dispatcher)
        .json(&serde_json::json!({"name": "simulated integrator", "scopes": ["jobs:write"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    settings.jobs = Some(simulator::integrator::Jobs {
        api: format!("http://{}", trips.http),
        key: key["token"].as_str().unwrap().to_owned(),
        per_sec: 2.0,
        scheduled_share: 0.5,
        ahead: Duration::from_secs(3),
        window: Duration::from_secs(30),
    });
    let report = simulator::run(settings).await.unwrap();
    let jobs = report.jobs.clone().expect("a jobs report");
    assert!(
        jobs.created >= 5 && jobs.scheduled >= 1,
        "{}",
        report.table()
    );
    assert_eq!((jobs.refused, jobs.failed), (0, 0), "{}", report.table());
    assert_eq!(
        jobs.by_state.values().sum::<u64>(),
        jobs.created,
        "{}",
        report.table()
    );
    assert!(
        jobs.by_state.get("completed").copied().unwrap_or(0) >= 1,
        "drivers served jobs too\n{}",
        report.table()
    );
    let scheduled_stored: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM trips WHERE created_by IS NOT NULL AND pickup_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(scheduled_stored as u64, jobs.scheduled);

    assert!(report.acknowledged > 5, "{}", report.table());
    assert_eq!(
        report.lost,
        0,
        "requests that never ended\n{}",
        report.table()
    );
    assert_eq!(report.double_assigned, 0, "{}", report.table());
    assert_eq!(
        report.completed + report.cancelled + report.expired,
        report.acknowledged,
        "every acknowledged request reached a terminal state\n{}",
        report.table()
    );
    assert!(report.completed > 0, "{}", report.table());
    assert!(
        report.location_samples > 0 && report.updates_per_sec > 0.0,
        "{}",
        report.table()
    );
    // The JSON report is valid and carries the documented fields.
    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    for field in [
        "updates_per_sec",
        "requests",
        "completed",
        "cancelled",
        "expired",
        "lost",
        "double_assigned",
        "service_rate",
        "mean_pickup_eta_s",
        "mean_rider_eta_error_s",
    ] {
        assert!(json[field].is_number(), "{field} missing from {json}");
    }
    for field in ["p50", "p99", "p999"] {
        assert!(json["location_latency_ms"][field].is_number());
    }
    for field in ["p50", "p99"] {
        assert!(json["match_latency_ms"][field].is_number());
    }
    assert!(!json["series"].as_array().unwrap().is_empty());
    let html = simulator::report::html(&report);
    assert!(html.contains("<svg") && html.contains("Location latency"));

    // The metrics say what happened: commands, queries, the clients' ends, and the history
    // API's answers whatever their status (here a request without a token).
    let refused = reqwest::get(format!("http://{}/api/trips", trips.http))
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let after = tests::services::metrics_text(metrics_at).await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        counter(&after, name, labels) - counter(&before, name, labels)
    };
    assert!(
        moved("trips_commands_total", &[("command", "create_trip")]) >= report.acknowledged as f64
    );
    assert!(moved("trips_commands_total", &[("command", "offer")]) > 0.0);
    // Simulated drivers report arriving from the pickup: every arrival is checked against a
    // position near it, none refused; and riders were told their driver's ETA.
    let arrivals = |outcome| {
        moved(
            "trips_progress_checks_total",
            &[("stage", "arrived"), ("outcome", outcome)],
        )
    };
    assert!(arrivals("near") > 0.0, "{}", report.table());
    assert_eq!(arrivals("refused"), 0.0, "{}", report.table());
    assert!(report.rider_eta_samples > 0, "{}", report.table());
    // Positions, counted through the handles the gateway looked up once.
    let positions = moved("gateway_messages_total", &[("kind", "location")]);
    assert!(positions >= report.updates_per_sec, "{positions} positions");
    assert!(moved("gateway_positions_published_total", &[]) >= positions * 0.9);
    assert!(
        moved(
            "trips_queries_total",
            &[("query", "session_state"), ("outcome", "ok")]
        ) >= 40.0
    );
    // The clients' ends reach the gateway as their sockets close, just after the run: they
    // go without a close frame, as the simulator drops them.
    let ends = |metrics: &str| {
        counter(metrics, "gateway_closes_total", &[("reason", "normal")])
            + counter(metrics, "gateway_closes_total", &[("reason", "gone")])
    };
    let before_ends = ends(&before);
    tests::eventually(
        "the clients' ends counted",
        Duration::from_secs(15),
        || async {
            let now = tests::services::metrics_text(metrics_at).await;
            (ends(&now) - before_ends >= 40.0).then_some(())
        },
    )
    .await;
    assert!(moved("trips_http_requests_total", &[("status", "401")]) >= 1.0);
    // Close reasons are the closed set of labels, never the text the client reads.
    let labels: Vec<&str> = gateway::outbound::Close::ALL
        .iter()
        .map(|c| c.label())
        .collect();
    for line in after
        .lines()
        .filter(|l| l.starts_with("gateway_closes_total{"))
    {
        let reason = line
            .split("reason=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        assert!(labels.contains(&reason), "{line}");
    }
}

#[tokio::test]
async fn idle_simulated_clients_answer_pings_and_stay_connected() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let _trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    // A gateway that closes a connection silent for 2 s and pings every half second: a
    // client that does not read (and so does not answer pings) is closed within the run.
    let mut config = gateway_config(&nats.url(), &prefix);
    config.limits.idle_timeout = Duration::from_secs(2);
    config.limits.ping_interval = Duration::from_millis(500);
    let gateway_id = config.id.clone();
    let gateway = start_gateway(config).await;
    wait_ready(gateway.running.http).await;

    let mut settings = Settings::new(&format!("ws://{}/ws", gateway.ws), TOKEN_SECRET, CENTER);
    settings.drivers = 0;
    settings.riders = 10;
    settings.scenario = Scenario::Steady;
    // No demand: every rider waits with nothing to say.
    settings.request_rate = 0.0;
    settings.duration = Duration::from_secs(9);
    settings.drain = Duration::from_secs(1);
    settings.progress = false;
    let run = tokio::spawn(simulator::run(settings));
    // Two and a half idle timeouts of silence (the scenario itself, not a wait for an event).
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Who is still connected, as the gateway announces it when asked.
    let bus = async_nats::connect(nats.url()).await.unwrap();
    let subjects = protocol::Subjects::new(&prefix).unwrap();
    let mut presence = bus.subscribe(subjects.presence()).await.unwrap();
    bus.flush().await.unwrap();
    bus.publish(subjects.presence_sync(), bytes::Bytes::new())
        .await
        .unwrap();
    let patience = tests::Patience::new("the gateway's snapshot", Duration::from_secs(10));
    let connected = loop {
        patience.check();
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), presence.next()).await
        else {
            continue;
        };
        let Ok(announced) = protocol::codec::decode::<protocol::bus::Presence>(&message.payload)
        else {
            continue;
        };
        if announced.snapshot && announced.gateway == gateway_id {
            break announced
                .changes
                .iter()
                .filter(|c| c.joined && c.role == protocol::client::Role::Rider)
                .count();
        }
    };
    assert_eq!(
        connected, 10,
        "idle riders were closed: they did not answer pings"
    );
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.reconnects, 0, "{}", report.table());
}
