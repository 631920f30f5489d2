//! `dispatch-trips`: the trips service binary.
//!
//! Run with:
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres NATS_URL=nats://127.0.0.1:4222 \
//! TOKEN_SECRET=dev-secret dispatch-trips --http 127.0.0.1:8082
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
    /// Secret that signs client tokens (the history API takes dispatcher tokens).
    #[arg(long, env = "TOKEN_SECRET", hide_env_values = true)]
    token_secret: String,
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
    #[arg(long, env = "SERVICE_AREA")]
    service_area: Option<std::path::PathBuf>,
    /// Do not apply migrations at startup.
    #[arg(long)]
    no_migrate: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::telemetry::init_tracing();
    let args = Args::parse();
    let (subjects, geo) = match args.bus.validate() {
        Ok(parts) => parts,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "invalid configuration");
            std::process::exit(kit::EXIT_BAD_CONFIG);
        }
    };
    if args.token_secret.len() < 16 {
        tracing::error!("TOKEN_SECRET must be at least 16 bytes");
        std::process::exit(kit::EXIT_BAD_CONFIG);
    }
    let mut config = trips::Config::new(
        &args.database_url,
        &args.bus.nats_url,
        subjects,
        args.token_secret.as_bytes(),
    );
    config.geo = geo;
    config.pool.max_size = args.pool_size;
    config.store.search_timeout = Duration::from_secs(args.search_timeout_s);
    config.breadcrumb_retention = Duration::from_secs(args.breadcrumb_retention_h * 3600);
    config.migrate = !args.no_migrate;
    if let Some(path) = &args.service_area {
        let area = std::fs::read_to_string(path)
            .map_err(anyhow::Error::from)
            .and_then(|text| {
                Ok(protocol::area::ServiceArea::from_geojson(
                    &text,
                    h3o::Resolution::Eight,
                )?)
            });
        match area {
            Ok(area) => config.service_area = Some(std::sync::Arc::new(area)),
            Err(error) => {
                tracing::error!(path = %path.display(), error = format!("{error:#}"), "invalid service area");
                std::process::exit(kit::EXIT_BAD_CONFIG);
            }
        }
    }

    let http = tokio::net::TcpListener::bind(args.http).await?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), http = %http.local_addr()?, "dispatch-trips starting");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        kit::shutdown_signal().await;
        signal.cancel();
    });
    trips::run(config, http, shutdown).await
}
