//! `dispatch-gateway`: the WebSocket gateway, and a tool that mints client tokens.
//!
//! Run with:
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 TOKEN_SECRET=dev-secret-0123456789 \
//!     dispatch-gateway serve --ws 127.0.0.1:8080 --http 127.0.0.1:8081
//! TOKEN_SECRET=dev-secret-0123456789 dispatch-gateway token --role driver --sub driver-1
//! ```

#![allow(clippy::print_stdout)] // the token command prints the token

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use protocol::client::Role;
use protocol::token::{self, Claims};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "WebSocket gateway for drivers, riders and dispatchers"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve clients.
    Serve(Box<Serve>),
    /// Print a signed token for a client (development, simulator, operators).
    Token(Box<MintToken>),
}

#[derive(Debug, clap::Args)]
struct Serve {
    #[command(flatten)]
    bus: kit::cli::BusArgs,
    #[command(flatten)]
    token: kit::cli::TokenArgs,
    /// This gateway's id, unique among the deployment's gateways (its clients' messages are
    /// addressed to it); a random one when not given.
    #[arg(long = topology::gateway::ID.flag, env = topology::gateway::ID.env)]
    id: Option<String>,
    /// WebSocket listen address (clients connect to ws://ADDR/ws).
    #[arg(long = topology::gateway::WS.flag, env = topology::gateway::WS.env, default_value = "127.0.0.1:8080")]
    ws: SocketAddr,
    /// Metrics, health endpoints and the dispatcher's dashboard.
    #[arg(long = topology::gateway::HTTP.flag, env = topology::gateway::HTTP.env, default_value = "127.0.0.1:8081")]
    http: SocketAddr,
    /// The built dashboard (`dashboards/web/dist`), served at `/` on the HTTP address.
    #[arg(long = topology::gateway::DASHBOARD_DIR.flag, env = topology::gateway::DASHBOARD_DIR.env)]
    dashboard_dir: Option<std::path::PathBuf>,
    /// The trips service's HTTP API (`http://host:port`), proxied under `/api/` for the
    /// dashboard.
    #[arg(long = topology::gateway::TRIPS_API.flag, env = topology::gateway::TRIPS_API.env)]
    trips_api: Option<String>,
    /// WebSocket URL the dashboard connects to, when clients reach the gateway through a
    /// proxy; by default the page's host on the `--ws` port.
    #[arg(long = topology::gateway::PUBLIC_WS_URL.flag, env = topology::gateway::PUBLIC_WS_URL.env, value_parser = gateway::dashboard::check_ws_url)]
    public_ws_url: Option<String>,
    /// Where the dashboard's map opens, `LAT,LNG`.
    #[arg(long = topology::gateway::MAP_CENTER.flag, env = topology::gateway::MAP_CENTER.env, default_value = "52.52,13.405", value_parser = parse_point)]
    map_center: protocol::Point,
    /// The dashboard map's initial zoom.
    #[arg(long = topology::gateway::MAP_ZOOM.flag, env = topology::gateway::MAP_ZOOM.env, default_value_t = 12.0)]
    map_zoom: f64,
    /// The pages' map style: a MapLibre style URL, or a path on this gateway such as
    /// `/tiles/style.json` (a style whose sources are `pmtiles:///tiles/city.pmtiles`). By
    /// default the pages draw a bundled offline outline of the world.
    #[arg(long, env = "GATEWAY_MAP_STYLE", value_parser = gateway::dashboard::check_map_style)]
    map_style: Option<String>,
    /// A directory served under `/tiles/` on the HTTP address, with range requests: PMTiles
    /// archives, styles, sprites and glyphs.
    #[arg(long, env = "GATEWAY_TILES_DIR")]
    tiles_dir: Option<std::path::PathBuf>,
    /// Connections held at once.
    #[arg(long = topology::gateway::MAX_CONNECTIONS.flag, env = topology::gateway::MAX_CONNECTIONS.env, default_value_t = 100_000)]
    max_connections: usize,
    /// Sustained messages per second per connection.
    #[arg(long, default_value_t = 20)]
    messages_per_sec: u32,
    /// Positions go to NATS in batches, at most one per this many microseconds (0: each batch
    /// as soon as it can).
    #[arg(long, env = "GATEWAY_PUBLISH_LINGER_US", default_value_t = 1_000)]
    publish_linger_us: u64,
    /// Time inside a zone after which a driver's `zone.dwell` event is sent, seconds.
    #[arg(long, env = "GATEWAY_ZONE_DWELL_S", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    zone_dwell_s: u64,
    /// A driver silent this long leaves the zones it was in (`zone.exit`, reason `stale`),
    /// seconds.
    #[arg(long, env = "GATEWAY_ZONE_STALE_S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    zone_stale_s: u64,
    /// Tell riders their driver's ETA over the roads of this OpenStreetMap extract (.osm.pbf),
    /// the one the matchers rank by; straight-line estimates when not given.
    #[arg(long, env = "GATEWAY_ROADS")]
    roads: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
struct MintToken {
    #[command(flatten)]
    token: kit::cli::TokenArgs,
    /// driver, rider or dispatcher.
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// The client's id.
    #[arg(long)]
    sub: String,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Validity in hours.
    #[arg(long, default_value_t = 24)]
    ttl_hours: i64,
}

fn parse_point(s: &str) -> Result<protocol::Point, String> {
    let (lat, lng) = s
        .split_once(',')
        .ok_or_else(|| format!("expected LAT,LNG, got {s:?}"))?;
    let parse = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    let point = protocol::Point::new(parse(lat)?, parse(lng)?);
    protocol::validate::latitude("map_center", point.lat).map_err(|e| e.to_string())?;
    protocol::validate::longitude("map_center", point.lng).map_err(|e| e.to_string())?;
    Ok(point)
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "driver" => Ok(Role::Driver),
        "rider" => Ok(Role::Rider),
        "dispatcher" => Ok(Role::Dispatcher),
        other => Err(format!(
            "unknown role {other:?}: driver, rider or dispatcher"
        )),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::telemetry::init_tracing();
    match Args::parse().command {
        Command::Token(args) => {
            let secret = kit::cli::or_exit(args.token.secret());
            let claims = Claims {
                role: args.role,
                sub: args.sub,
                exp: protocol::time::now_ms() / 1000 + args.ttl_hours * 3600,
                name: args.name,
            };
            match token::mint(&secret, &claims) {
                Ok(token) => println!("{token}"),
                Err(error) => {
                    tracing::error!(%error, "cannot mint token");
                    std::process::exit(kit::EXIT_BAD_CONFIG);
                }
            }
            Ok(())
        }
        Command::Serve(args) => serve(*args).await,
    }
}

async fn serve(args: Serve) -> anyhow::Result<()> {
    let (subjects, geo) = kit::cli::or_exit(args.bus.validate());
    let tokens = kit::cli::or_exit(args.token.validate());
    let id = args.id.unwrap_or_else(gateway::config::new_id);
    kit::cli::or_exit(protocol::validate::id("GATEWAY_ID", &id).map_err(anyhow::Error::from));
    let mut config = gateway::Config::new(&args.bus.nats_url, subjects, tokens.verifier.clone());
    config.id = id;
    config.geo = geo;
    config.limits.max_connections = args.max_connections;
    config.limits.messages_per_sec = args.messages_per_sec;
    config.limits.burst = args.messages_per_sec * 2;
    config.dashboard = gateway::dashboard::Dashboard {
        assets: args.dashboard_dir,
        trips_api: args.trips_api,
        ws_url: args.public_ws_url,
        center: args.map_center,
        zoom: args.map_zoom,
        map_style: args.map_style,
        tiles: args.tiles_dir,
    };
    config.publishing.linger = Duration::from_micros(args.publish_linger_us);
    config.tracking.dwell = Duration::from_secs(args.zone_dwell_s);
    config.tracking.stale_after = Duration::from_secs(args.zone_stale_s);
    config.eta = kit::cli::or_exit(roads::eta::load(
        args.roads.as_deref(),
        "telling riders ETAs",
    ));
    let ws = tokio::net::TcpListener::bind(args.ws).await?;
    let http = tokio::net::TcpListener::bind(args.http).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        ws = %ws.local_addr()?,
        http = %http.local_addr()?,
        "dispatch-gateway starting"
    );
    let shutdown = CancellationToken::new();
    kit::shutdown::on_signal(shutdown.clone(), Duration::from_secs(30));
    if let Some((url, every)) = tokens.follow {
        tokio::spawn(kit::auth::follow_keys(
            tokens.verifier,
            url,
            every,
            kit::auth::KeyMeters {
                keys: gateway::meters::JWKS_KEYS,
                failures: gateway::meters::JWKS_FAILURES,
            },
            shutdown.clone(),
        ));
    }
    gateway::run(config, ws, http, shutdown).await
}
