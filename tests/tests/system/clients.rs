//! The clients: the TypeScript SDK (`clients/typescript`) in Node's test runner against the
//! real stack (a gateway the tests restart, a proxy in front of it that they stall and cut,
//! through a small control endpoint this test serves); and the rider's and driver's apps built
//! on it, in two phone-sized Chromium contexts, through a whole ride.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use protocol::client::Role;
use protocol::{GeoConfig, Point};
use tests::client::token;
use tests::proxy::TcpProxy;
use tests::sandbox::Sandbox;
use tests::services::{Gateway, TOKEN_SECRET, gateway_config, start_gateway_at, wait_ready};
use tests::web::{pages_dist, sdk_dir, workspace_root};
use tokio::sync::Mutex;

const CENTER: Point = Point::new(52.52, 13.405);
/// How long a restarted gateway stays away: long enough for several reconnection attempts.
const GATEWAY_DOWNTIME: Duration = Duration::from_secs(3);

/// What the control endpoint acts on.
struct Stack {
    nats_url: String,
    prefix: String,
    gateway: Mutex<Gateway>,
    proxy: TcpProxy,
}

async fn act(
    State(stack): State<Arc<Stack>>,
    Path((what, how)): Path<(String, String)>,
) -> StatusCode {
    match (what.as_str(), how.as_str()) {
        ("proxy", "stall") => stack.proxy.stall(),
        ("proxy", "restore") => stack.proxy.restore(),
        ("proxy", "cut") => stack.proxy.cut(),
        ("gateway", "restart") => {
            let mut gateway = stack.gateway.lock().await;
            let (ws, http) = (gateway.ws, gateway.running.http);
            gateway.running.halt().await.expect("the gateway stops");
            let stack = stack.clone();
            // Answered once the gateway is down; it comes back after a while.
            tokio::spawn(async move {
                let mut gateway = stack.gateway.lock().await;
                tokio::time::sleep(GATEWAY_DOWNTIME).await;
                *gateway =
                    start_gateway_at(gateway_config(&stack.nats_url, &stack.prefix), ws, http)
                        .await;
                wait_ready(http).await;
            });
            // The spawned task takes the lock only after this one is dropped.
        }
        _ => return StatusCode::NOT_FOUND,
    }
    StatusCode::NO_CONTENT
}

/// Runs Node's test runner on `files` (paths relative to the SDK) with `env`; panics with its
/// output if a test failed.
async fn node_tests(dir: &std::path::Path, files: &[PathBuf], env: &[(&str, String)]) -> String {
    let mut args: Vec<std::ffi::OsString> =
        ["--experimental-websocket", "--test", "--test-concurrency=1"]
            .map(Into::into)
            .to_vec();
    args.extend(files.iter().map(Into::into));
    tests::web::node(dir, &args, env, Duration::from_secs(300)).await
}

fn test_files(dir: &std::path::Path, under: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(under))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no tests in {under}");
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_against_the_real_gateway() {
    tests::init_logs();
    let dir = sdk_dir();
    // Without a gateway: the generated types are fresh, the backoff is what it says.
    let unit = node_tests(&dir, &test_files(&dir, "test/unit"), &[]).await;
    assert!(unit.contains("# fail 0"), "{unit}");

    let regions = GeoConfig::default()
        .regions_covering(CENTER, 5_000.0)
        .unwrap();
    let mut sandbox = Sandbox::builder()
        .matcher(regions)
        .gateways(1)
        .start()
        .await;
    let gateway = sandbox.gateways.remove(0);
    let stack = Arc::new(Stack {
        nats_url: sandbox.nats.url(),
        prefix: sandbox.prefix.clone(),
        proxy: TcpProxy::start(gateway.ws).await,
        gateway: Mutex::new(gateway),
    });
    let proxy = stack.proxy.addr;
    let ws = stack.gateway.lock().await.ws;
    let control = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_addr: SocketAddr = control.local_addr().unwrap();
    let app = Router::new()
        .route("/{what}/{how}", post(act))
        .with_state(stack.clone());
    let serving = tokio::spawn(async move { axum::serve(control, app).await });

    let said = node_tests(
        &dir,
        &test_files(&dir, "test/gateway"),
        &[
            ("GATEWAY_WS", format!("ws://{ws}/ws")),
            ("PROXY_WS", format!("ws://{proxy}/ws")),
            ("CONTROL_URL", format!("http://{control_addr}")),
            (
                "TOKEN_SECRET",
                String::from_utf8(TOKEN_SECRET.to_vec()).unwrap(),
            ),
            ("CENTER_LAT", CENTER.lat.to_string()),
            ("CENTER_LNG", CENTER.lng.to_string()),
        ],
    )
    .await;
    assert!(
        said.contains("# fail 0") && !said.contains("# pass 0"),
        "{said}"
    );
    serving.abort();

    // What the server holds agrees: each rider's retried or re-sent request made one trip.
    let pg = sandbox.db.client().await;
    for rider in ["sdk-rider-retry", "sdk-rider-resend", "sdk-rider-ride"] {
        let trips: i64 = pg
            .query_one("SELECT count(*) FROM trips WHERE rider_id = $1", &[&rider])
            .await
            .unwrap()
            .get(0);
        assert_eq!(trips, 1, "{rider} has {trips} trips");
    }
    let completed: String = pg
        .query_one(
            "SELECT state FROM trips WHERE rider_id = 'sdk-rider-ride'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(completed, "completed");
    sandbox.trips.remove(0).stop().await.unwrap();
}

/// A map style served by the gateway from its tiles directory, drawing a PMTiles archive the
/// gateway serves too (read by the pages with range requests); returns the archive's bytes.
fn tiles_dir() -> (tempfile_dir::Dir, Vec<u8>) {
    let dir = tempfile_dir::Dir::new("tiles");
    let style = serde_json::json!({
        "version": 8,
        "name": "Test streets",
        "sources": {"streets": {"type": "raster", "url": "pmtiles:///tiles/city.pmtiles", "tileSize": 256}},
        "layers": [
            {"id": "paper", "type": "background", "paint": {"background-color": "#efe9dc"}},
            {"id": "streets", "type": "raster", "source": "streets", "paint": {"raster-opacity": 1.0}},
        ],
    });
    std::fs::write(dir.path().join("style.json"), style.to_string()).unwrap();
    let archive = pmtiles::one_tile(&pmtiles::solid_png(256, [0xe4, 0xe9, 0xdc]));
    std::fs::write(dir.path().join("city.pmtiles"), &archive).unwrap();
    (dir, archive)
}

/// The smallest real PMTiles (version 3) archive: one raster tile covering the world, which a
/// map shows overzoomed at any zoom.
mod pmtiles {
    use std::io::Write;

    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    /// An archive holding `tile` (a PNG) as z0/0/0, nothing compressed.
    pub fn one_tile(tile: &[u8]) -> Vec<u8> {
        const HEADER: u64 = 127;
        // The root directory: one entry (tile id 0, run length 1, the tile's length, offset 0
        // written as 0 + 1).
        let mut directory = Vec::new();
        for value in [1, 0, 1, tile.len() as u64, 1] {
            varint(&mut directory, value);
        }
        let metadata = b"{}";
        let metadata_at = HEADER + directory.len() as u64;
        let tiles_at = metadata_at + metadata.len() as u64;
        let mut out = b"PMTiles".to_vec();
        out.push(3);
        for value in [
            HEADER,
            directory.len() as u64,
            metadata_at,
            metadata.len() as u64,
            tiles_at, // no leaf directories
            0,
            tiles_at,
            tile.len() as u64,
            1, // addressed tiles
            1, // tile entries
            1, // tile contents
        ] {
            out.extend(value.to_le_bytes());
        }
        // Clustered; internal and tile compression none; tile type PNG; zooms 0 to 0.
        out.extend([1, 1, 1, 2, 0, 0]);
        for e7 in [-1_800_000_000i32, -850_000_000, 1_800_000_000, 850_000_000] {
            out.extend(e7.to_le_bytes());
        }
        out.push(0);
        out.extend(0i32.to_le_bytes());
        out.extend(0i32.to_le_bytes());
        assert_eq!(out.len() as u64, HEADER);
        out.extend(directory);
        out.extend(metadata);
        out.extend(tile);
        out
    }

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.sum().to_be_bytes());
    }

    /// A `size` × `size` PNG of one colour.
    pub fn solid_png(size: u32, rgb: [u8; 3]) -> Vec<u8> {
        let mut header = Vec::new();
        header.extend(size.to_be_bytes());
        header.extend(size.to_be_bytes());
        header.extend([8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, no filter, no interlace
        // Each row: its filter (0, none), then its pixels.
        let row: Vec<u8> = std::iter::once(0)
            .chain(rgb.iter().copied().cycle().take(3 * size as usize))
            .collect();
        let rows = row.repeat(size as usize);
        let mut deflated = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        deflated.write_all(&rows).unwrap();
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut out, b"IHDR", &header);
        chunk(&mut out, b"IDAT", &deflated.finish().unwrap());
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

/// A directory removed when dropped.
mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new(what: &str) -> Self {
            let path = std::env::temp_dir().join(format!("{what}-{}", tests::unique_prefix()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rider_and_driver_apps_complete_a_ride_in_browsers() {
    tests::init_logs();
    let dist = pages_dist();
    let (tiles, archive) = tiles_dir();
    let regions = GeoConfig::default()
        .regions_covering(CENTER, 5_000.0)
        .unwrap();
    let tiles_path = tiles.path().to_owned();
    let mut sandbox = Sandbox::builder()
        .matcher(regions)
        .tune_matcher(|matcher| matcher.settings.offer_ttl = Duration::from_secs(30))
        .gateways(1)
        .tune_gateway(move |config| {
            config.dashboard.assets = Some(dist.clone());
            config.dashboard.center = CENTER;
            config.dashboard.zoom = 13.0;
            config.dashboard.map_style = Some("/tiles/style.json".into());
            config.dashboard.tiles = Some(tiles_path.clone());
        })
        .start()
        .await;
    let gateway = sandbox.gateways.remove(0);
    let base = format!("http://{}", gateway.running.http);

    // The tiles directory answers range requests, as a PMTiles archive is read.
    let http = reqwest::Client::new();
    let part = http
        .get(format!("{base}/tiles/city.pmtiles"))
        .header("range", "bytes=0-126")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.bytes().await.unwrap(),
        archive[..127],
        "the archive's header"
    );
    let settings: serde_json::Value = http
        .get(format!("{base}/dashboard-config.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(settings["map_style"], "/tiles/style.json");
    for page in ["rider.html", "driver.html"] {
        let answer = http.get(format!("{base}/{page}")).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{page}");
        let policy = answer.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(policy.contains("script-src 'self';"), "{page}: {policy}");
        assert_eq!(answer.headers()["cache-control"], "no-cache", "{page}");
    }

    let pickup = Point::new(CENTER.lat + 0.001, CENTER.lng + 0.002);
    let dropoff = Point::new(CENTER.lat + 0.004, CENTER.lng + 0.012);
    let screenshots = workspace_root().join("target/browser");
    sdk_dir(); // the script cancels a ride as a dispatcher through the SDK
    let said = tests::web::node(
        &workspace_root().join("dashboards/web"),
        &[
            "--experimental-websocket".into(),
            workspace_root()
                .join("dashboards/web/tests/apps.mjs")
                .into(),
        ],
        &[
            ("BASE_URL", base.clone()),
            ("WS_URL", format!("ws://{}/ws", gateway.ws)),
            ("DISPATCHER_TOKEN", token(Role::Dispatcher, "apps-ops")),
            ("RIDER_TOKEN", token(Role::Rider, "apps-rider")),
            ("DRIVER_TOKEN", token(Role::Driver, "apps-driver")),
            ("PICKUP", format!("{},{}", pickup.lat, pickup.lng)),
            ("DROPOFF", format!("{},{}", dropoff.lat, dropoff.lng)),
            ("MAP_STYLE_NAME", "Test streets".to_owned()),
            ("SCREENSHOT_DIR", screenshots.display().to_string()),
        ],
        Duration::from_secs(300),
    )
    .await;
    assert!(said.contains("\"ride\":\"completed\""), "{said}");
    for shot in ["rider.png", "driver.png", "driver-offline.png"] {
        let size = std::fs::metadata(screenshots.join(shot)).unwrap().len();
        assert!(size > 10_000, "{shot} is empty");
    }

    // The ride completed; the report queued without signal was carried out exactly once.
    let pg = sandbox.db.client().await;
    let rows = pg
        .query(
            "SELECT trip_id, state, driver_id FROM trips WHERE rider_id = 'apps-rider' \
             ORDER BY requested_at",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        2,
        "the ride, and the one a dispatcher cancelled"
    );
    let cancelled: (String, String) = pg
        .query_one(
            "SELECT state, end_reason FROM trips WHERE trip_id = $1",
            &[&rows[1].get::<_, uuid::Uuid>(0)],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(cancelled.0, "cancelled");
    assert!(
        cancelled.1.starts_with("<img"),
        "stored as sent: {}",
        cancelled.1
    );
    let trip: uuid::Uuid = rows[0].get(0);
    assert_eq!(rows[0].get::<_, String>(1), "completed");
    assert_eq!(rows[0].get::<_, String>(2), "apps-driver");
    let stages: Vec<String> = pg
        .query(
            "SELECT to_state FROM trip_events WHERE trip_id = $1 ORDER BY event_id",
            &[&trip],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for stage in ["accepted", "arrived", "in_progress", "completed"] {
        let times = stages.iter().filter(|s| *s == stage).count();
        assert_eq!(times, 1, "{stage} recorded {times} times: {stages:?}");
    }
    sandbox.trips.remove(0).stop().await.unwrap();
}
