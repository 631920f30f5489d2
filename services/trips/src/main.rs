//! `dispatch-trips`: the trips service binary.
//!
//! Run with:
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres NATS_URL=nats://127.0.0.1:4222 \
//! TOKEN_SECRET=dev-secret-0123456789 dispatch-trips --http 127.0.0.1:8082
//! ```
//!
//! Integrators' API keys from the command line (the same as `POST /v1/api-keys`):
//! ```text
//! DATABASE_URL=... dispatch-trips api-key create --name "courier backend" --scope jobs:write
//! DATABASE_URL=... dispatch-trips api-key list
//! DATABASE_URL=... dispatch-trips api-key revoke 0123456789abcdef
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
    #[arg(long = topology::trips::DATABASE_URL.flag, env = topology::trips::DATABASE_URL.env)]
    database_url: String,
    /// The secret that signs client tokens (the history API takes dispatcher tokens).
    #[command(flatten)]
    token: kit::cli::TokenArgs,
    /// Address of the HTTP API, metrics and health endpoints.
    #[arg(long = topology::trips::HTTP.flag, env = topology::trips::HTTP.env, default_value = "127.0.0.1:8082")]
    http: SocketAddr,
    /// Database connections.
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// How long a request searches for a driver before it expires, seconds.
    #[arg(long = topology::trips::SEARCH_TIMEOUT_S.flag, env = topology::trips::SEARCH_TIMEOUT_S.env, default_value_t = 120)]
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
    /// Requests a second each integrator API key may make on each replica; bursts of twice as
    /// many. Beyond it the API answers 429 with Retry-After.
    #[arg(long, env = "TRIPS_API_KEY_RATE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    api_key_rate: u32,
    /// How long before its pickup time a scheduled job is dispatched, seconds.
    #[arg(long = topology::trips::SCHEDULE_LEAD_S.flag, env = topology::trips::SCHEDULE_LEAD_S.env, default_value_t = 600, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    schedule_lead_s: u64,
    /// Do not apply migrations at startup.
    #[arg(long = topology::trips::NO_MIGRATE.flag, env = topology::trips::NO_MIGRATE.env)]
    no_migrate: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Integrators' API keys: create (the token is printed once), list, revoke.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
}

#[derive(Debug, clap::Subcommand)]
enum ApiKeyCommand {
    /// Creates a key and prints it as JSON, with its token (shown only now).
    Create {
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// A scope: jobs:write, trips:read or drivers:read; repeat for several.
        #[arg(long = "scope", required = true, value_parser = scope)]
        scopes: Vec<trips::v1::Scope>,
        /// Who creates it, recorded with the key.
        #[arg(long, default_value = "cli")]
        by: String,
    },
    /// Prints every key as JSON, revoked ones included.
    List,
    /// Revokes a key at once.
    Revoke { key_id: String },
}

fn scope(s: &str) -> Result<trips::v1::Scope, String> {
    trips::v1::Scope::parse(s).ok_or_else(|| {
        let known: Vec<&str> = trips::v1::Scope::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown scope {s:?}; one of {}", known.join(", "))
    })
}

/// Carries out an `api-key` command against the database.
async fn api_key(database_url: &str, command: ApiKeyCommand) -> anyhow::Result<()> {
    let pool = trips::db::pool(database_url, &Default::default())?;
    let failed = |problem: trips::v1::Problem| anyhow::anyhow!("{}", problem.detail());
    let out = match command {
        ApiKeyCommand::Create { name, scopes, by } => serde_json::to_string_pretty(
            &trips::v1::keys::insert(&pool, &name, &scopes, &by)
                .await
                .map_err(failed)?,
        )?,
        ApiKeyCommand::List => {
            serde_json::to_string_pretty(&trips::v1::keys::all(&pool).await.map_err(failed)?)?
        }
        ApiKeyCommand::Revoke { key_id } => {
            use trips::v1::keys::Revoked;
            match trips::v1::keys::revoke_key(&pool, &key_id)
                .await
                .map_err(failed)?
            {
                Revoked::Now => format!("revoked {key_id}"),
                Revoked::Already => format!("{key_id} was revoked already"),
                Revoked::NoSuchKey => anyhow::bail!("no API key {key_id:?}"),
            }
        }
    };
    #[allow(clippy::print_stdout)]
    {
        println!("{out}");
    }
    Ok(())
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
    let mut args = Args::parse();
    if let Some(Command::ApiKey(command)) = args.command.take() {
        if let Err(error) = api_key(&args.database_url, command).await {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {error:#}");
            }
            std::process::exit(1);
        }
        return Ok(());
    }
    let (subjects, geo) = kit::cli::or_exit(args.bus.validate());
    let tokens = kit::cli::or_exit(args.token.validate());
    let mut config = trips::Config::new(
        &args.database_url,
        &args.bus.nats_url,
        subjects,
        tokens.verifier.clone(),
    );
    config.geo = geo;
    config.pool.max_size = args.pool_size;
    config.store.search_timeout = Duration::from_secs(args.search_timeout_s);
    config.store.max_zone_vertices = args.max_zone_vertices;
    config.store.schedule_lead = Duration::from_secs(args.schedule_lead_s);
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
    config.api_key_rate = trips::v1::KeyRate {
        per_second: args.api_key_rate,
        burst: args.api_key_rate.saturating_mul(2),
    };
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
            kit::auth::KeyMeters {
                keys: trips::meters::JWKS_KEYS,
                failures: trips::meters::JWKS_FAILURES,
            },
            shutdown.clone(),
        ));
    }
    trips::run(config, http, shutdown).await
}
