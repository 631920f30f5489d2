//! `dispatch-matcher`: the matcher binary.
//!
//! Run with:
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 dispatch-matcher --area 52.52,13.405,25 --strategy greedy
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use protocol::area::ServiceArea;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Assigns ride requests to nearby drivers for its regions"
)]
#[command(group(
    clap::ArgGroup::new("serves")
        .required(true)
        .multiple(true)
        .args(["regions", "area", "service_area"])
))]
struct Args {
    #[command(flatten)]
    bus: kit::cli::BusArgs,
    /// Regions to serve: H3 cells at the region resolution, comma-separated.
    #[arg(long = topology::matcher::REGIONS.flag, env = topology::matcher::REGIONS.env, value_delimiter = ',')]
    regions: Vec<String>,
    /// Or: serve every region within RADIUS_KM of LAT,LNG (written LAT,LNG,RADIUS_KM).
    #[arg(long = topology::matcher::AREA.flag, env = topology::matcher::AREA.env)]
    area: Option<String>,
    /// Or: serve every region a GeoJSON service area touches.
    #[arg(long, env = "SERVICE_AREA")]
    service_area: Option<std::path::PathBuf>,
    /// greedy (nearest first, lowest latency) or batched (min-cost assignment per window).
    #[arg(long = topology::matcher::STRATEGY.flag, env = topology::matcher::STRATEGY.env, default_value = "greedy")]
    strategy: matcher::assign::Strategy,
    /// Batched strategy: seconds of pickup ETA each second of a request's waiting is worth
    /// when drivers are too few for every request (0: pickup ETA alone).
    #[arg(long, env = "MATCHER_WAIT_WEIGHT", default_value_t = matcher::assign::Fairness::default().wait_weight)]
    wait_weight: f64,
    /// Batched strategy: a request that has waited this long, seconds, is served greedily
    /// (its nearest free driver) before the batch is solved.
    #[arg(long, env = "MATCHER_MAX_WAIT_S", default_value_t = matcher::assign::Fairness::default().max_wait_s)]
    max_wait_s: f64,
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
    /// Rank drivers by travel time over the roads of this OpenStreetMap extract (.osm.pbf)
    /// instead of straight-line distance.
    #[arg(long, env = "MATCHER_ROADS")]
    roads: Option<std::path::PathBuf>,
    /// Metrics and health endpoints.
    #[arg(long = topology::matcher::HTTP.flag, env = topology::matcher::HTTP.env, default_value = "127.0.0.1:8083")]
    http: SocketAddr,
}

/// The batched strategy's fairness, refusing weights and bounds that are not numbers of
/// seconds.
fn fairness(args: &Args) -> anyhow::Result<matcher::assign::Fairness> {
    anyhow::ensure!(
        args.wait_weight.is_finite() && args.wait_weight >= 0.0,
        "--wait-weight must be a number of seconds, 0 or more (got {})",
        args.wait_weight
    );
    anyhow::ensure!(
        args.max_wait_s > 0.0 && !args.max_wait_s.is_nan(),
        "--max-wait-s must be a positive number of seconds (got {})",
        args.max_wait_s
    );
    Ok(matcher::assign::Fairness {
        wait_weight: args.wait_weight,
        max_wait_s: args.max_wait_s,
    })
}

/// Reads the service area file named by `--service-area`, if any.
fn service_area(args: &Args) -> anyhow::Result<Option<ServiceArea>> {
    let Some(path) = &args.service_area else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("reading {}: {error}", path.display()))?;
    Ok(Some(ServiceArea::from_geojson(
        &text,
        h3o::Resolution::Eight,
    )?))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::telemetry::init_tracing();
    let args = Args::parse();
    let (subjects, geo, regions) =
        kit::cli::or_exit(args.bus.validate().and_then(|(subjects, geo)| {
            let area = service_area(&args)?;
            let regions = matcher::serving::regions(
                &args.regions,
                args.area.as_deref(),
                area.as_ref(),
                &geo,
            )?;
            Ok((subjects, geo, regions))
        }));
    let mut config = matcher::Config::new(&args.bus.nats_url, subjects, regions);
    config.geo = geo;
    config.halo_rings = args.halo_rings;
    config.settings.strategy = args.strategy;
    config.settings.fairness = kit::cli::or_exit(fairness(&args));
    config.settings.batch_window = Duration::from_millis(args.batch_window_ms);
    config.settings.offer_ttl = Duration::from_secs(args.offer_ttl_s);
    config.settings.max_radius_m = args.max_radius_m;
    config.eta = kit::cli::or_exit(roads::eta::load(args.roads.as_deref(), "ranking drivers"));
    let http = tokio::net::TcpListener::bind(args.http).await?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), http = %http.local_addr()?, regions = config.regions.len(), "dispatch-matcher starting");
    let shutdown = CancellationToken::new();
    kit::shutdown::on_signal(shutdown.clone(), Duration::from_secs(30));
    matcher::run(config, http, shutdown).await
}
