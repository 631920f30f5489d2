//! The TypeScript SDK (`clients/typescript`) in Node's test runner against the real stack: a
//! gateway the tests restart, a proxy in front of it that they stall and cut, through a small
//! control endpoint this test serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use protocol::{GeoConfig, Point};
use tests::proxy::TcpProxy;
use tests::services::{
    Gateway, TOKEN_SECRET, gateway_config, matcher_config, start_gateway, start_gateway_at,
    start_matcher, start_trips, trips_config, wait_ready,
};
use tests::{NatsServer, TestDb, unique_prefix};
use tokio::sync::Mutex;

const CENTER: Point = Point::new(52.52, 13.405);
/// How long a restarted gateway stays away: long enough for several reconnection attempts.
const GATEWAY_DOWNTIME: Duration = Duration::from_secs(3);

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// The SDK's directory, built: `cargo xtask test` builds it and says where.
fn sdk_dir() -> PathBuf {
    let dir = std::env::var_os("DISPATCH_SDK_DIR").map_or_else(
        || workspace_root().join("clients/typescript"),
        PathBuf::from,
    );
    assert!(
        dir.join("dist/index.js").is_file() && dir.join("node_modules").is_dir(),
        "the SDK is not built in {}: run `cargo xtask test`, or `npm ci && npm run build` there",
        dir.display()
    );
    dir
}

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
    let mut command = tokio::process::Command::new("node");
    command
        .args(["--experimental-websocket", "--test", "--test-concurrency=1"])
        .args(files)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .expect("node runs (cargo xtask test installs it)");
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the SDK's tests finished in time")
        .expect("node ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "SDK tests failed:\n{said}");
    said
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

    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    let regions = GeoConfig::default()
        .regions_covering(CENTER, 5_000.0)
        .unwrap();
    let matcher = start_matcher(matcher_config(&nats.url(), &prefix, regions)).await;
    wait_ready(matcher.http).await;
    let gateway = start_gateway(gateway_config(&nats.url(), &prefix)).await;
    wait_ready(gateway.running.http).await;
    let stack = Arc::new(Stack {
        nats_url: nats.url(),
        prefix: prefix.clone(),
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
    let pg = db.client().await;
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
    trips.stop().await.unwrap();
}
