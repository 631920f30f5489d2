//! `dispatch-matcher`: the matcher binary.
//!
//! Run with:
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 dispatch-matcher --area 52.52,13.405,25 --strategy greedy
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use h3o::CellIndex;
use protocol::Point;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Assigns ride requests to nearby drivers for its regions"
)]
struct Args {
    #[command(flatten)]
    bus: kit::cli::BusArgs,
    /// Regions to serve: H3 cells at the region resolution, comma-separated.
    #[arg(long, env = "MATCHER_REGIONS", value_delimiter = ',')]
    regions: Vec<String>,
    /// Or: serve every region within RADIUS_KM of LAT,LNG (written LAT,LNG,RADIUS_KM).
    #[arg(long, env = "MATCHER_AREA")]
    area: Option<String>,
    /// Or: serve every region a GeoJSON service area touches.
    #[arg(long, env = "SERVICE_AREA")]
    service_area: Option<std::path::PathBuf>,
    /// greedy (nearest first, lowest latency) or batched (min-cost assignment per window).
    #[arg(long, env = "MATCHER_STRATEGY", default_value = "greedy")]
    strategy: matcher::assign::Strategy,
    /// Batch window of the batched strategy, milliseconds.
    #[arg(long, default_value_t = 500)]
    batch_window_ms: u64,
    /// How long a driver has to answer an offer, seconds.
    #[arg(long, default_value_t = 15)]
    offer_ttl_s: u64,
    /// Largest search radius, metres.
    #[arg(long, default_value_t = 10_000.0)]
    max_radius_m: f64,
    /// Rings of cells beyond the regions' borders to index.
    #[arg(long, default_value_t = 2)]
    halo_rings: u32,
    /// Metrics and health endpoints.
    #[arg(long, env = "MATCHER_HTTP", default_value = "127.0.0.1:8083")]
    http: SocketAddr,
}

fn regions(args: &Args, geo: &protocol::GeoConfig) -> anyhow::Result<Vec<CellIndex>> {
    let mut regions = Vec::new();
    for hex in args.regions.iter().filter(|s| !s.is_empty()) {
        let cell: CellIndex = hex
            .parse()
            .map_err(|_| anyhow::anyhow!("{hex:?} is not an H3 cell"))?;
        anyhow::ensure!(
            cell.resolution() == geo.region_res,
            "{hex} is not at the region resolution"
        );
        regions.push(cell);
    }
    if let Some(area) = &args.area {
        let parts: Vec<f64> = area
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--area takes LAT,LNG,RADIUS_KM"))?;
        let [lat, lng, radius_km] = parts[..] else {
            anyhow::bail!("--area takes LAT,LNG,RADIUS_KM");
        };
        anyhow::ensure!(
            radius_km > 0.0 && radius_km <= 500.0,
            "area radius must be between 0 and 500 km"
        );
        regions.extend(geo.regions_covering(Point::new(lat, lng), radius_km * 1000.0)?);
    }
    anyhow::ensure!(
        !regions.is_empty(),
        "no regions to serve: give --regions or --area"
    );
    regions.sort();
    regions.dedup();
    Ok(regions)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::telemetry::init_tracing();
    let args = Args::parse();
    let validated = args
        .bus
        .validate()
        .and_then(|(subjects, geo)| Ok((subjects, geo, regions(&args, &geo)?)));
    let (subjects, geo, regions) = match validated {
        Ok(parts) => parts,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "invalid configuration");
            std::process::exit(kit::EXIT_BAD_CONFIG);
        }
    };
    let mut config = matcher::Config::new(&args.bus.nats_url, subjects, regions);
    config.geo = geo;
    config.halo_rings = args.halo_rings;
    config.settings.strategy = args.strategy;
    config.settings.batch_window = Duration::from_millis(args.batch_window_ms);
    config.settings.offer_ttl = Duration::from_secs(args.offer_ttl_s);
    config.settings.max_radius_m = args.max_radius_m;
    let http = tokio::net::TcpListener::bind(args.http).await?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), http = %http.local_addr()?, regions = config.regions.len(), "dispatch-matcher starting");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        kit::shutdown_signal().await;
        signal.cancel();
    });
    matcher::run(config, http, shutdown).await
}
