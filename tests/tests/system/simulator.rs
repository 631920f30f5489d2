//! A short simulated city against the whole real stack: gateway, matcher, trips, NATS and
//! PostgreSQL, every client a real WebSocket.

use std::time::Duration;

use protocol::{GeoConfig, Point};
use simulator::{Scenario, Settings};
use tests::services::{
    TOKEN_SECRET, gateway_config, matcher_config, start_gateway, start_matcher, start_trips,
    trips_config, wait_ready,
};
use tests::{NatsServer, TestDb, unique_prefix};

const CENTER: Point = Point::new(52.52, 13.405);

#[tokio::test]
async fn a_short_steady_city_ends_every_request_and_reports() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let _trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    let regions = GeoConfig::default()
        .regions_covering(CENTER, 3_000.0)
        .unwrap();
    let mut matcher = matcher_config(&nats.url(), &prefix, regions);
    matcher.settings.offer_ttl = Duration::from_secs(3);
    let matcher = start_matcher(matcher).await;
    wait_ready(matcher.http).await;
    let gateway = start_gateway(gateway_config(&nats.url(), &prefix)).await;
    wait_ready(gateway.running.http).await;

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
    let report = simulator::run(settings).await.unwrap();

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
}
