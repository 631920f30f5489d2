//! `dispatch-trips`: the trips service binary.
//!
//! Run with:
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres NATS_URL=nats://127.0.0.1:4222 \
//! TOKEN_SECRET=dev-secret-0123456789 dispatch-trips --http 127.0.0.1:8082
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Trip state in PostgreSQL: commands, queries, outbox, sweeper, history API"
)]
struct Args {
    #[command(flatten)]
    bus: kit::cli::BusArgs,
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The secret that signs client tokens (the history API takes dispatcher tokens).
    #[command(flatten)]
    token: kit::cli::TokenArgs,
    /// Address of the HTTP API, metrics and health endpoints.
    #[arg(long, env = "TRIPS_HTTP", default_value = "127.0.0.1:8082")]
    http: SocketAddr,
    /// Database connections.
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// How long a request searches for a driver before it expires, seconds.
    #[arg(long, default_value_t = 120)]
    search_timeout_s: u64,
    /// How long breadcrumbs are kept, hours.
    #[arg(long, default_value_t = 720)]
    breadcrumb_retention_h: u64,
    /// GeoJSON polygon of the service area; trips starting or ending outside it are refused.
    /// It becomes the zone "Service area", which dispatchers see and may redraw.
    #[arg(long, env = "SERVICE_AREA")]
    service_area: Option<std::path::PathBuf>,
    /// Drivers reporting `arrived` farther than this from the pickup are refused, metres.
    #[arg(long, env = "TRIPS_ARRIVAL_RADIUS_M", default_value_t = 250.0, value_parser = radius)]
    arrival_radius_m: f64,
    /// Completions reported farther than this from the dropoff are flagged, metres.
    #[arg(long, env = "TRIPS_DROPOFF_RADIUS_M", default_value_t = 500.0, value_parser = radius)]
    dropoff_radius_m: f64,
    /// Most vertices a zone may have; larger zones are refused when drawn.
    #[arg(long, env = "TRIPS_MAX_ZONE_VERTICES", default_value_t = protocol::zone::DEFAULT_MAX_VERTICES)]
    max_zone_vertices: usize,
    /// Internal networks webhooks may be delivered to, comma-separated (`127.0.0.1/32,10.0.0.0/8`);
    /// loopback, private and link-local addresses are refused unless named here.
    #[arg(long, env = "TRIPS_WEBHOOK_ALLOW", default_value = "", value_parser = destinations)]
    webhook_allow: trips::webhooks::policy::Destinations,
    /// How long one webhook request may take, seconds.
    #[arg(long, env = "TRIPS_WEBHOOK_TIMEOUT_S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    webhook_timeout_s: u64,
    /// How long a webhook delivery is retried before it is a dead letter, hours.
    #[arg(long, env = "TRIPS_WEBHOOK_RETRY_H", default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=720))]
    webhook_retry_h: u64,
    /// Webhook requests in flight per endpoint.
    #[arg(long, env = "TRIPS_WEBHOOK_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=64))]
    webhook_concurrency: u64,
    /// Do not apply migrations at startup.
    #[arg(long)]
    no_migrate: bool,
}

fn destinations(s: &str) -> Result<trips::webhooks::policy::Destinations, String> {
    trips::webhooks::policy::Destinations::parse(s)
}

/// A radius in metres: a positive number.
fn radius(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(metres) if metres.is_finite() && metres > 0.0 => Ok(metres),
        _ => Err(format!("expected a positive number of metres, got {s:?}")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::telemetry::init_tracing();
    let args = Args::parse();
    let (subjects, geo) = kit::cli::or_exit(args.bus.validate());
    let tokens = kit::cli::or_exit(args.token.validate());
    let mut config = trips::Config::new(&args.database_url, &args.bus.nats_url, subjects, &[]);
    config.verifier = tokens.verifier.clone();
    config.geo = geo;
    config.pool.max_size = args.pool_size;
    config.store.search_timeout = Duration::from_secs(args.search_timeout_s);
    config.store.max_zone_vertices = args.max_zone_vertices;
    config.store.plausibility = trips::progress::Plausibility {
        arrival_radius_m: args.arrival_radius_m,
        dropoff_radius_m: args.dropoff_radius_m,
    };
    config.breadcrumb_retention = Duration::from_secs(args.breadcrumb_retention_h * 3600);
    config.migrate = !args.no_migrate;
    config.webhook_destinations = args.webhook_allow.clone();
    config.webhook_delivery.timeout = Duration::from_secs(args.webhook_timeout_s);
    config.webhook_delivery.max_age = Duration::from_secs(args.webhook_retry_h * 3600);
    config.webhook_delivery.concurrency = args.webhook_concurrency as usize;
    if let Some(path) = &args.service_area {
        let area = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))
            .and_then(|text| Ok(protocol::area::multipolygon(&text)?));
        config.service_area = Some(kit::cli::or_exit(area));
    }

    let http = tokio::net::TcpListener::bind(args.http).await?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), http = %http.local_addr()?, "dispatch-trips starting");
    let shutdown = CancellationToken::new();
    kit::shutdown::on_signal(shutdown.clone(), Duration::from_secs(30));
    if let Some((url, every)) = tokens.follow {
        tokio::spawn(kit::auth::follow_keys(
            tokens.verifier,
            url,
            every,
            shutdown.clone(),
        ));
    }
    trips::run(config, http, shutdown).await
}
