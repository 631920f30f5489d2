//! `dispatch-sim`: drives a simulated city through a gateway and reports.
//!
//! Run with:
//! ```text
//! TOKEN_SECRET=dev-secret-0123456789 dispatch-sim --gateway ws://127.0.0.1:8080/ws \
//!     --drivers 200 --riders 200 --duration 60s --report-json target/sim.json
//! ```

#![allow(clippy::print_stdout)] // prints the summary table

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use protocol::Point;
use simulator::{Scenario, Settings};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A city of simulated drivers and riders over the real WebSocket protocol"
)]
struct Args {
    /// The gateway's WebSocket URL; several, comma-separated, spread the clients over them in
    /// turn, as a load balancer would.
    #[arg(long, env = "GATEWAY_URL", default_value = "ws://127.0.0.1:8080/ws")]
    gateway: String,
    /// Secret that signs the simulated clients' tokens (the gateway's TOKEN_SECRET).
    #[arg(long, env = "TOKEN_SECRET", hide_env_values = true)]
    token_secret: String,
    #[arg(long, default_value_t = 50)]
    drivers: usize,
    #[arg(long, default_value_t = 50)]
    riders: usize,
    /// steady, rush-hour, border or chaos.
    #[arg(long, default_value = "steady")]
    scenario: Scenario,
    /// How long demand runs (for example 60s, 5m); open trips then get up to --drain to end.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// City centre, LAT,LNG.
    #[arg(long, default_value = "52.52,13.405")]
    center: String,
    #[arg(long, default_value_t = 5.0)]
    radius_km: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Ride requests per second across the city.
    #[arg(long, default_value_t = 1.0)]
    request_rate: f64,
    /// Seconds between a driver's position reports.
    #[arg(long, default_value_t = 1.0)]
    report_every_s: f64,
    /// Simulated movement runs this many times faster than real time.
    #[arg(long, default_value_t = 10.0)]
    speedup: f64,
    #[arg(long, default_value_t = 0.9)]
    accept_probability: f64,
    #[arg(long, default_value_t = 0.05)]
    cancel_probability: f64,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 500.0)]
    ramp_per_sec: f64,
    /// Take a gateway silent this long for dead and reconnect to the next one (the client
    /// pings after a third of it); without it, only a closed connection counts.
    #[arg(long, value_parser = humantime::parse_duration)]
    liveness: Option<Duration>,
    /// Write the report as JSON here.
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Write the report as an HTML page with plots here.
    #[arg(long)]
    report_html: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
    /// Drive along the roads of this OpenStreetMap extract (.osm.pbf) at road speeds instead
    /// of in straight lines; `--center` must lie within the extract.
    #[arg(long)]
    roads: Option<PathBuf>,
    /// Connect from this many loopback addresses (127.0.0.1, 127.0.0.2, ...) to hold more than
    /// about 64k connections to one gateway; the gateway must be on loopback.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    source_ips: u8,
    /// Also create jobs through the integrator API at this trips service (`http://host:port`),
    /// as an integrator's server would; needs --api-key.
    #[arg(long, requires = "api_key")]
    jobs_api: Option<String>,
    /// An API key with the jobs:write scope (`dispatch-trips api-key create`).
    #[arg(long, env = "DISPATCH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Jobs created per second.
    #[arg(long, default_value_t = 0.2)]
    jobs_per_sec: f64,
    /// The share of jobs scheduled ahead, 0 to 1.
    #[arg(long, default_value_t = 0.5)]
    scheduled_share: f64,
    /// How far ahead scheduled pickups are: between a third of this and all of it.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    schedule_ahead: Duration,
}

fn settings(args: &Args) -> anyhow::Result<Settings> {
    let (lat, lng) = args
        .center
        .split_once(',')
        .ok_or_else(|| anyhow::anyhow!("--center takes LAT,LNG"))?;
    let center = Point::new(lat.trim().parse()?, lng.trim().parse()?);
    center.validate("center")?;
    anyhow::ensure!(
        args.radius_km > 0.0 && args.radius_km <= 200.0,
        "--radius-km must be in (0, 200]"
    );
    anyhow::ensure!(args.request_rate > 0.0, "--request-rate must be positive");
    anyhow::ensure!(
        args.report_every_s >= 0.05,
        "--report-every-s must be at least 0.05"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.accept_probability),
        "--accept-probability must be in [0, 1]"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.cancel_probability),
        "--cancel-probability must be in [0, 1]"
    );
    anyhow::ensure!(args.speedup >= 1.0, "--speedup must be at least 1");
    let mut settings = Settings::new(&args.gateway, args.token_secret.as_bytes(), center);
    settings.drivers = args.drivers;
    settings.riders = args.riders;
    settings.scenario = args.scenario;
    if let Some(api) = &args.jobs_api {
        anyhow::ensure!(
            args.jobs_per_sec > 0.0 && args.jobs_per_sec <= 1000.0,
            "--jobs-per-sec must be in (0, 1000]"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&args.scheduled_share),
            "--scheduled-share must be in [0, 1]"
        );
        settings.jobs = Some(simulator::integrator::Jobs {
            api: api.trim_end_matches('/').to_owned(),
            key: args.api_key.clone().unwrap_or_default(),
            per_sec: args.jobs_per_sec,
            scheduled_share: args.scheduled_share,
            ahead: args.schedule_ahead.max(Duration::from_secs(3)),
            window: Duration::from_secs(120),
        });
    }
    settings.duration = args.duration;
    settings.drain = args.drain;
    settings.city.radius_m = args.radius_km * 1000.0;
    settings.seed = args.seed;
    if args.source_ips > 1 {
        for url in args.gateway.split(',') {
            let host = url
                .trim()
                .parse::<tokio_tungstenite::tungstenite::http::Uri>()?
                .host()
                .map(str::to_owned)
                .unwrap_or_default();
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            anyhow::ensure!(
                loopback,
                "--source-ips needs gateways on loopback, not {host}"
            );
        }
        settings.sources = (1..=args.source_ips)
            .map(|i| std::net::IpAddr::from([127, 0, 0, i]))
            .collect();
    }
    settings.request_rate = args.request_rate;
    settings.report_every = Duration::from_secs_f64(args.report_every_s);
    settings.speedup = args.speedup;
    settings.accept_probability = args.accept_probability;
    settings.cancel_probability = args.cancel_probability;
    settings.ramp_per_sec = args.ramp_per_sec;
    if let Some(liveness) = args.liveness {
        anyhow::ensure!(
            liveness >= Duration::from_secs(1),
            "--liveness must be at least 1s"
        );
        settings.liveness = Some(liveness);
    }
    settings.progress = !args.quiet;
    if let Some(path) = &args.roads {
        let network = roads::RoadNetwork::load(path)?;
        let (sw, ne) = network.bounds();
        anyhow::ensure!(
            (sw.lat..=ne.lat).contains(&center.lat) && (sw.lng..=ne.lng).contains(&center.lng),
            "--center {},{} is outside the roads of {} ({},{} to {},{})",
            center.lat,
            center.lng,
            path.display(),
            sw.lat,
            sw.lng,
            ne.lat,
            ne.lng
        );
        settings.roads = Some(std::sync::Arc::new(network));
    }
    if args.scenario == Scenario::Border {
        settings.border_point = Some(simulator::border_point(center));
    }
    if args.scenario == Scenario::Chaos {
        settings.drain = settings.drain.max(Duration::from_secs(120));
    }
    Ok(settings)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber_init();
    let args = Args::parse();
    let settings = match settings(&args) {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "invalid arguments");
            return ExitCode::from(64);
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        signal.cancel();
    });
    let report = match simulator::run_until(settings, stop).await {
        Ok(report) => report,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "simulation failed");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if let Some(path) = &args.report_json
        && let Err(error) = std::fs::write(
            path,
            serde_json::to_string_pretty(&report).expect("report serialises"),
        )
    {
        tracing::error!(%error, path = %path.display(), "cannot write the JSON report");
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.report_html
        && let Err(error) = std::fs::write(path, simulator::report::html(&report))
    {
        tracing::error!(%error, path = %path.display(), "cannot write the HTML report");
        return ExitCode::FAILURE;
    }
    if report.is_correct() {
        ExitCode::SUCCESS
    } else {
        tracing::error!(
            lost = report.lost,
            double_assigned = report.double_assigned,
            "correctness violated"
        );
        ExitCode::from(2)
    }
}

fn tracing_subscriber_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
