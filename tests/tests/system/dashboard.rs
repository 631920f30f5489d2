//! The dispatcher's dashboard in a real browser (Debian's headless Chromium driven by
//! playwright-core) against the whole stack fed by the simulator; and the dashboard's HTTP
//! surface (config, API proxy, security headers) without a browser.

use std::time::Duration;

use protocol::client::{Role, ServerMessage};
use protocol::{GeoConfig, Point};
use serde_json::json;
use simulator::{Scenario, Settings};
use tests::client::{Client, token, token_with};
use tests::sandbox::Sandbox;
use tests::services::{
    TOKEN_SECRET, gateway_config, matcher_config, start_gateway, start_matcher, start_trips,
    trips_config, wait_ready,
};
use tests::web::{pages_dist, workspace_root};
use tests::{NatsServer, TestDb, unique_prefix};
use tokio_util::sync::CancellationToken;

const CENTER: Point = Point::new(52.52, 13.405);
/// Away from the simulated drivers, so the matcher offers this rider's trip to our driver.
const QUIET_CORNER: Point = Point::new(52.52, 13.47);
/// The other side of the city, where a second trip is completed far from its dropoff.
const WEST_CORNER: Point = Point::new(52.52, 13.34);
/// A zone the browser draws, named with markup the page must show as text.
const ZONE_NAME: &str = "Forecourt <b>no</b> pickups";
/// Markup a hostile client might put in its name; the page must show it as text.
const MARKUP_NAME: &str = "<img src=x onerror=\"window.__injected=1\"><b>Bold</b> Driver";

/// A trip in the west corner that its driver reports completed kilometres short of its
/// dropoff, which the dashboard flags; returns its id.
async fn completed_far_from_the_dropoff(ws: std::net::SocketAddr) -> uuid::Uuid {
    let mut driver =
        Client::driver_online_at(ws, &token(Role::Driver, "far-finisher"), WEST_CORNER).await;
    let mut rider = Client::connect(ws, Role::Rider, "rider-far").await;
    rider
        .send_json(&json!({"type": "request_ride", "id": 1,
            "pickup": {"lat": WEST_CORNER.lat, "lng": WEST_CORNER.lng},
            "dropoff": {"lat": 52.50, "lng": 13.30}, "idempotency_key": "far"}))
        .await;
    let trip = rider.ack_trip(1).await;
    driver
        .recv_until(
            |m| matches!(m, ServerMessage::Offer { trip: t, .. } if t.trip_id == trip.trip_id),
        )
        .await;
    let short = Point::new(52.52, 13.32);
    for (id, message) in [
        (
            12,
            json!({"type": "accept_offer", "id": 12, "trip_id": trip.trip_id}),
        ),
        (
            13,
            json!({"type": "trip_progress", "id": 13, "trip_id": trip.trip_id, "stage": "arrived"}),
        ),
        (
            14,
            json!({"type": "trip_progress", "id": 14, "trip_id": trip.trip_id, "stage": "started"}),
        ),
        (
            15,
            json!({"type": "location", "id": 15, "lat": short.lat, "lng": short.lng, "ts": protocol::time::now_ms(), "seq": 1_000}),
        ),
        (
            16,
            json!({"type": "trip_progress", "id": 16, "trip_id": trip.trip_id, "stage": "completed"}),
        ),
    ] {
        driver.send_json(&message).await;
        driver.ack_for(id).await;
    }
    trip.trip_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_dashboard_shows_the_fleet_and_cancels_a_trip_in_a_browser() {
    let dist = pages_dist();
    let regions = GeoConfig::default()
        .regions_covering(CENTER, 8_000.0)
        .unwrap();
    let stack = Sandbox::builder()
        .matcher(regions)
        .tune_matcher(|matcher| matcher.settings.offer_ttl = Duration::from_secs(30))
        .gateways(1)
        .tune_gateway(move |config| {
            config.dashboard.assets = Some(dist.clone());
            config.dashboard.center = CENTER;
            config.dashboard.zoom = 13.0;
        })
        .start()
        .await;
    let (gateway, db) = (stack.gateway(), &stack.db);

    // The simulator drives a small city around the centre for as long as the browser needs.
    let mut settings = Settings::new(&format!("ws://{}/ws", gateway.ws), TOKEN_SECRET, CENTER);
    settings.drivers = 15;
    settings.riders = 5;
    settings.city.radius_m = 1_500.0;
    settings.scenario = Scenario::Steady;
    settings.duration = Duration::from_secs(600);
    settings.drain = Duration::from_secs(5);
    settings.request_rate = 0.5;
    settings.speedup = 10.0;
    settings.progress = false;
    let stop_sim = CancellationToken::new();
    let simulation = tokio::spawn(simulator::run_until(settings, stop_sim.clone()));

    // A driver whose name is markup takes a trip in a quiet corner of the city.
    let mut driver = Client::driver_online_at(
        gateway.ws,
        &token_with(Role::Driver, "marked-up", Some(MARKUP_NAME), 3600),
        QUIET_CORNER,
    )
    .await;
    let mut rider = Client::connect(gateway.ws, Role::Rider, "rider-of-marked-up").await;
    rider
        .send_json(&json!({"type": "request_ride", "id": 1,
            "pickup": {"lat": QUIET_CORNER.lat, "lng": QUIET_CORNER.lng + 0.001},
            "dropoff": {"lat": 52.51, "lng": 13.48}, "idempotency_key": "browser-test"}))
        .await;
    let trip = rider.ack_trip(1).await;
    let offer = driver
        .recv_until(|m| matches!(m, ServerMessage::Offer { .. }))
        .await;
    let ServerMessage::Offer { trip: offered, .. } = offer else {
        unreachable!()
    };
    assert_eq!(offered.trip_id, trip.trip_id);
    driver
        .send_json(&json!({"type": "accept_offer", "id": 3, "trip_id": trip.trip_id}))
        .await;
    driver.ack_for(3).await;
    let flagged = completed_far_from_the_dropoff(gateway.ws).await;

    // The browser does what a dispatcher would.
    let screenshots = workspace_root().join("target/browser");
    let script = workspace_root().join("dashboards/web/tests/dashboard.mjs");
    tests::web::sdk_dir(); // the script cancels a trip as another dispatcher through the SDK
    let said = tests::web::node(
        &workspace_root().join("dashboards/web"),
        &["--experimental-websocket".into(), script.into()],
        &[
            ("DASHBOARD_URL", format!("http://{}/", gateway.running.http)),
            ("DISPATCHER_TOKEN", token(Role::Dispatcher, "ops")),
            ("TRIP_ID", trip.trip_id.to_string()),
            ("DRIVER_NAME", MARKUP_NAME.to_owned()),
            ("FLAGGED_TRIP_ID", flagged.to_string()),
            ("ZONE_NAME", ZONE_NAME.to_owned()),
            ("SCREENSHOT_DIR", screenshots.display().to_string()),
        ],
        Duration::from_secs(240),
    )
    .await;
    assert!(said.contains("\"vehicles_rendered\""), "{said}");
    assert!(
        std::fs::metadata(screenshots.join("dashboard.png"))
            .unwrap()
            .len()
            > 10_000,
        "the screenshot is empty"
    );

    // The cancel from the page is in PostgreSQL, by a dispatcher.
    let pg = db.client().await;
    let row = pg
        .query_one(
            "SELECT state, ended_by FROM trips WHERE trip_id = $1",
            &[&trip.trip_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "cancelled");
    assert_eq!(row.get::<_, String>(1), "dispatcher");
    // The name is stored as the client sent it: the page, not the database, keeps it inert.
    let name: String = pg
        .query_one(
            "SELECT name FROM drivers WHERE driver_id = 'marked-up'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, MARKUP_NAME);
    // The zone drawn in the page is stored as drawn; the refused and the deleted one are not.
    let zones: Vec<(String, String, serde_json::Value)> = pg
        .query("SELECT name, kind, geometry FROM zones", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(zones.len(), 1, "{zones:?}");
    let (name, kind, geometry) = &zones[0];
    assert_eq!((name.as_str(), kind.as_str()), (ZONE_NAME, "no_pickup"));
    let ring = geometry["coordinates"][0].as_array().unwrap();
    assert_eq!(
        ring.len(),
        5,
        "four corners and the first again: {geometry}"
    );
    assert_eq!(ring.first(), ring.last());

    stop_sim.cancel();
    let report = simulation.await.unwrap().unwrap();
    assert_eq!(report.double_assigned, 0, "{}", report.table());
}

#[tokio::test]
async fn the_dashboard_is_served_with_its_settings_and_a_strict_policy() {
    let dist = pages_dist();
    let mut stack = Sandbox::builder()
        .gateways(1)
        .tune_gateway(move |config| {
            config.dashboard.assets = Some(dist.clone());
            config.dashboard.center = CENTER;
        })
        .start()
        .await;
    let trips = stack.trips.remove(0);
    let gateway = stack.gateway();
    let base = format!("http://{}", gateway.running.http);
    let http = reqwest::Client::new();

    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    // The page may only connect to its own origin and the configured WebSocket's.
    let ws_origin = format!("ws://127.0.0.1:{}", gateway.ws.port());
    assert!(
        policy.contains(&format!("connect-src 'self' {ws_origin};")),
        "{policy}"
    );
    assert!(!policy.contains("ws: wss:"), "{policy}");
    // The page itself is revalidated on every visit, so a new build is picked up at once.
    assert_eq!(page.headers()["cache-control"], "no-cache");
    let index = page.text().await.unwrap();
    assert!(index.contains("<div id=\"map\">"));

    // Its hashed assets are cached for good, and served precompressed as the browser asks.
    let script = index
        .split('"')
        .find(|part| part.starts_with("./assets/") && part.ends_with(".js"))
        .expect("index.html names its script")
        .trim_start_matches("./")
        .to_owned();
    let on_disk = std::fs::read(pages_dist().join(&script)).unwrap();
    for (accept, encoding) in [
        ("br", Some("br")),
        ("gzip", Some("gzip")),
        ("gzip, deflate, br", Some("br")),
        ("identity", None),
    ] {
        let asset = http
            .get(format!("{base}/{script}"))
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(asset.status(), 200, "{script} with {accept}");
        let headers = asset.headers().clone();
        assert_eq!(
            headers["cache-control"], "public, max-age=31536000, immutable",
            "{script}"
        );
        assert_eq!(
            headers.get("content-encoding").map(|v| v.to_str().unwrap()),
            encoding,
            "{script} with accept-encoding {accept}"
        );
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .contains("javascript"),
            "{headers:?}"
        );
        let body = asset.bytes().await.unwrap();
        let decoded = match encoding {
            Some("br") => {
                assert!(
                    body.len() * 2 < on_disk.len(),
                    "brotli saves: {} of {}",
                    body.len(),
                    on_disk.len()
                );
                let mut out = Vec::new();
                brotli_decompressor::BrotliDecompress(&mut &body[..], &mut out).unwrap();
                out
            }
            Some("gzip") => {
                assert!(
                    body.len() * 2 < on_disk.len(),
                    "gzip saves: {} of {}",
                    body.len(),
                    on_disk.len()
                );
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut out)
                    .unwrap();
                out
            }
            _ => body.to_vec(),
        };
        assert!(
            decoded == on_disk,
            "{script} as {encoding:?} decodes to the file"
        );
    }

    let settings: serde_json::Value = http
        .get(format!("{base}/dashboard-config.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        settings["ws_url"],
        format!("ws://127.0.0.1:{}/ws", gateway.ws.port())
    );
    assert_eq!(settings["center"], json!([CENTER.lat, CENTER.lng]));

    // The API through the gateway: a dispatcher gets trips; anyone else is refused by the trips
    // service, and the refusal reaches the caller unchanged.
    let as_role = |role: Role| {
        http.get(format!("{base}/api/trips?limit=5"))
            .bearer_auth(token(role, "someone"))
            .send()
    };
    let ok = as_role(Role::Dispatcher).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.json::<serde_json::Value>().await.unwrap().is_array());
    assert_eq!(as_role(Role::Rider).await.unwrap().status(), 403);
    let anonymous = http.get(format!("{base}/api/trips")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let bad = http
        .get(format!(
            "{base}/api/trips?state=%27%3B%20DROP%20TABLE%20trips%3B--"
        ))
        .bearer_auth(token(Role::Dispatcher, "ops"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Zones are drawn through the same proxy: the body and method pass, and so do refusals.
    let zone = json!({"name": "Rank", "kind": "queue", "geometry": {"type": "Polygon",
        "coordinates": [[[13.40, 52.51], [13.41, 52.51], [13.41, 52.52], [13.40, 52.51]]]}});
    let created = http
        .post(format!("{base}/api/zones"))
        .bearer_auth(token(Role::Dispatcher, "ops"))
        .json(&zone)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    let removed = http
        .delete(format!(
            "{base}/api/zones/{}",
            created["zone_id"].as_str().unwrap()
        ))
        .bearer_auth(token(Role::Dispatcher, "ops"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    let as_rider = http
        .post(format!("{base}/api/zones"))
        .bearer_auth(token(Role::Rider, "r"))
        .json(&zone)
        .send()
        .await
        .unwrap();
    assert_eq!(as_rider.status(), 403);

    // With the trips service gone, the page's API calls fail with a clear, retryable error.
    trips.stop().await.unwrap();
    let gone = as_role(Role::Dispatcher).await.unwrap();
    assert_eq!(gone.status(), 502);
    let body: serde_json::Value = gone.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");
}

/// The metric names a PromQL expression reads: identifiers with a service's prefix.
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| {
            ["gateway_", "matcher_", "trips_", "bus_"]
                .iter()
                .any(|prefix| word.starts_with(prefix))
        })
        .map(str::to_owned)
        .collect()
}

/// Metric names in a Prometheus text exposition.
fn exported(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_the_grafana_dashboards_query_is_exported() {
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    let regions = GeoConfig::default()
        .regions_covering(CENTER, 1_000.0)
        .unwrap();
    let matcher = start_matcher(matcher_config(&nats.url(), &prefix, regions)).await;
    wait_ready(matcher.http).await;
    let gateway = start_gateway(gateway_config(&nats.url(), &prefix)).await;
    wait_ready(gateway.running.http).await;

    // Before any traffic: every series a dashboard reads is there from the start.
    let mut names = std::collections::BTreeSet::new();
    for http in [trips.http, matcher.http, gateway.running.http] {
        names.extend(exported(&tests::services::metrics_text(http).await));
    }
    assert!(names.contains("gateway_connections"), "{names:?}");
    // A labelled metric is exported with labels only: an unlabelled series of it would be an
    // empty entry in every `by (...)` panel.
    let text = tests::services::metrics_text(gateway.running.http).await;
    let declared = gateway::meters::LABELLED
        .iter()
        .chain(matcher::meters::LABELLED)
        .chain(trips::meters::LABELLED);
    for (metric, labelled) in declared {
        if !labelled {
            continue;
        }
        for bare in [
            format!("{metric} "),
            format!("{metric}_count "),
            format!("{metric}_sum "),
        ] {
            assert!(
                !text.lines().any(|line| line.starts_with(&bare)),
                "{metric} is exported without labels"
            );
        }
    }

    let dir = workspace_root().join("dashboards/grafana");
    let mut checked = 0;
    for service in ["gateway", "matcher", "trips"] {
        let path = dir.join(format!("{service}.json"));
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{service}: no panels");
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or_default();
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{service}/{title}: no queries");
            for target in targets {
                let expr = target["expr"].as_str().expect("a PromQL expression");
                let used = metrics_in(expr);
                assert!(
                    !used.is_empty(),
                    "{service}/{title}: {expr} reads no metric"
                );
                for metric in used {
                    assert!(
                        metric.starts_with(&format!("{service}_")) || metric.starts_with("bus_"),
                        "{service}/{title}: {metric} belongs to another service"
                    );
                    assert!(
                        names.contains(&metric),
                        "{service}/{title}: {metric} is not exported; exported: {names:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} metric references checked");
}
