//! The trips service: the source of truth for every trip and the only writer of PostgreSQL.
//!
//! Other processes talk to it over NATS: commands on `{p}.trips.cmd` and queries on
//! `{p}.trips.query` (request/reply, typed payloads from `protocol::bus`). Each command is
//! decided by the state machine in [`machine`] and written in one statement guarded by the
//! trip's version; what it publishes goes through
//! the [`outbox`], so a crash after commit loses no event. A sweeper keeps every request moving
//! until it reaches a terminal state. [`api`] serves history, zones and webhooks over HTTP.
//! Gateways send the zone events they detect on `{p}.tracking.record` ([`tracking`]);
//! integrators' events are delivered to [`webhooks`]; integrators' servers use the [`v1`] API.

pub mod api;
pub mod breadcrumbs;
pub mod db;
pub mod error;
pub mod machine;
pub mod messages;
pub mod meters;
pub mod outbox;
pub mod progress;
mod queries;
pub mod rows;
pub mod store;
pub mod sweep;
pub mod tracking;
pub mod v1;
pub mod webhooks;
mod writer;
pub mod zones;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use kit::Readiness;
use protocol::bus::{
    CommandError, QueryReply, RecordReply, TripCommand, TripQuery, TripReply, ZoneEvent,
};
use protocol::{ErrorCode, GeoConfig, Subjects, codec};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use error::StoreError;
pub use store::{Store, StoreSettings};
pub use sweep::SweepSettings;

/// Everything the service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub nats_url: String,
    pub subjects: Subjects,
    pub geo: GeoConfig,
    /// Checks the API's bearer tokens.
    pub verifier: protocol::token::Verifier,
    pub pool: db::PoolSettings,
    pub store: StoreSettings,
    pub sweep: SweepSettings,
    /// How long breadcrumbs are kept.
    pub breadcrumb_retention: Duration,
    /// Commands handled at once.
    pub max_in_flight: usize,
    /// Whether to apply migrations at startup.
    pub migrate: bool,
    /// The `SERVICE_AREA` file's polygons (a GeoJSON MultiPolygon), made the service area zone
    /// at startup.
    pub service_area: Option<serde_json::Value>,
    /// Internal addresses webhooks may be delivered to (none by default).
    pub webhook_destinations: webhooks::policy::Destinations,
    pub webhook_delivery: webhooks::deliver::DeliverySettings,
    /// Each API key's request rate on each replica.
    pub api_key_rate: v1::KeyRate,
    /// How often the zones' generation is read, in case a change notice was lost.
    pub zone_poll: Duration,
}

impl Config {
    /// Defaults for everything but the addresses and how tokens are checked. Callers set what
    /// they configure on the result, as every service's configuration is built.
    pub fn new(
        database_url: &str,
        nats_url: &str,
        subjects: Subjects,
        verifier: protocol::token::Verifier,
    ) -> Self {
        Self {
            database_url: database_url.into(),
            nats_url: nats_url.into(),
            subjects,
            geo: GeoConfig::default(),
            verifier,
            pool: db::PoolSettings::default(),
            store: StoreSettings::default(),
            sweep: SweepSettings::default(),
            breadcrumb_retention: Duration::from_secs(30 * 24 * 3600),
            max_in_flight: 512,
            migrate: true,
            service_area: None,
            webhook_destinations: Default::default(),
            webhook_delivery: Default::default(),
            api_key_rate: Default::default(),
            zone_poll: zones::Zones::POLL,
        }
    }
}

/// Keeps the `database` readiness condition true only while PostgreSQL answers a trivial query
/// within a second, checked twice a second.
async fn track_database(
    pool: deadpool_postgres::Pool,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let check = async {
            let client = pool.get().await.ok()?;
            client.simple_query("SELECT 1").await.ok()
        };
        let answered = tokio::time::timeout(Duration::from_secs(1), check)
            .await
            .ok()
            .flatten()
            .is_some();
        readiness.set("database", answered);
    }
}

/// Runs the service until `shutdown` is cancelled, serving HTTP on `http`.
pub async fn run(
    config: Config,
    http: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    meters::register();
    let readiness = Readiness::new(&["database", "nats"]);
    if config.migrate {
        // Wait for the database rather than exiting: it may start after us.
        let mut backoff = kit::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match db::migrate(&config.database_url).await {
                Ok(()) => break,
                Err(error) if !shutdown.is_cancelled() => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "database not ready for migrations; retrying"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        () = backoff.wait() => {}
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
    let pool = db::pool(&config.database_url, &config.pool)?;
    let nats = kit::bus::connect(&config.nats_url, "trips").await?;
    let store = Store::new(
        pool.clone(),
        config.geo,
        config.subjects.clone(),
        config.store.clone(),
    );
    if let Some(area) = &config.service_area {
        // Every replica does this; only a changed file changes the zone.
        store
            .zones()
            .ensure_service_area(area)
            .await
            .context("making the service area file a zone")?;
    }

    // Requests are checked against the zones from the first one on.
    if let Err(error) = store.zones().refresh().await {
        tracing::warn!(%error, "zones not loaded yet; retrying in the background");
    }

    let tasks = TaskTracker::new();
    let stop_intake = CancellationToken::new();

    let commands = nats
        .queue_subscribe(
            config.subjects.trip_commands(),
            config.subjects.trips_queue(),
        )
        .await?;
    let queries = nats
        .queue_subscribe(
            config.subjects.trip_queries(),
            config.subjects.trips_queue(),
        )
        .await?;
    let crumbs = nats
        .queue_subscribe(config.subjects.breadcrumbs(), config.subjects.trips_queue())
        .await?;
    let zone_events = nats
        .queue_subscribe(
            config.subjects.tracking_record(),
            config.subjects.trips_queue(),
        )
        .await?;
    // Readiness follows the connection; make sure the server has our subscriptions first.
    let _ = nats.flush().await;
    let background = CancellationToken::new();
    // Where clients are, so that their messages go to their gateway only.
    let directory = Arc::new(kit::presence::Directory::new(
        config.subjects.clone(),
        &[
            protocol::client::Role::Driver,
            protocol::client::Role::Rider,
        ],
    ));
    tasks.spawn(kit::presence::follow(
        nats.clone(),
        directory.clone(),
        background.clone(),
    ));
    let receipts = kit::bus::Receipts::start(nats.clone())
        .await
        .context("starting the outbox's receipts")?;
    let nudges = webhooks::deliver::Nudges::default();
    let publisher = outbox::Publisher::new(receipts, directory, store.committed(), nudges.clone());
    tasks.spawn(outbox::run(
        pool.clone(),
        publisher.clone(),
        background.clone(),
    ));
    let limit = Arc::new(Semaphore::new(config.max_in_flight));
    let in_flight = limit.clone();
    tasks.spawn(serve(
        commands,
        nats.clone(),
        store.clone(),
        limit.clone(),
        stop_intake.clone(),
        tasks.clone(),
        Handler::Command,
    ));
    tasks.spawn(serve(
        queries,
        nats.clone(),
        store.clone(),
        limit.clone(),
        stop_intake.clone(),
        tasks.clone(),
        Handler::Query,
    ));
    tasks.spawn(serve(
        zone_events,
        nats.clone(),
        store.clone(),
        limit,
        stop_intake.clone(),
        tasks.clone(),
        Handler::Record(Arc::new(publisher.clone())),
    ));
    tasks.spawn(kit::bus::track_readiness(
        nats.clone(),
        readiness.clone(),
        "nats",
        background.clone(),
    ));
    tasks.spawn(track_database(
        pool.clone(),
        readiness.clone(),
        background.clone(),
    ));
    tasks.spawn(breadcrumbs::run(pool.clone(), crumbs, stop_intake.clone()));
    tasks.spawn(webhooks::deliver::run(
        pool.clone(),
        nats.clone(),
        config.subjects.clone(),
        config.webhook_destinations.clone(),
        config.webhook_delivery.clone(),
        nudges,
        background.clone(),
    ));
    tasks.spawn(
        store
            .zones()
            .clone()
            .follow(nats.clone(), config.zone_poll, background.clone()),
    );
    tasks.spawn(sweep::run(
        store.clone(),
        config.sweep.clone(),
        stop_intake.clone(),
    ));
    tasks.spawn(retention(
        pool.clone(),
        config.breadcrumb_retention,
        stop_intake.clone(),
    ));

    let hooks = webhooks::Webhooks::new(pool.clone(), config.webhook_destinations.clone());
    let app = api::routes(
        pool.clone(),
        store.zones().clone(),
        hooks,
        publisher,
        config.verifier.clone(),
    )
    .merge(v1::routes(
        pool.clone(),
        store.clone(),
        config.verifier.clone(),
        config.api_key_rate,
    ))
    .merge(kit::http::operator_routes(readiness));
    tasks.spawn(kit::http::serve(http, app, shutdown.clone()));
    tracing::info!(prefix = config.subjects.prefix(), "trips service running");

    shutdown.cancelled().await;
    tracing::info!("trips service stopping");
    stop_intake.cancel();
    // Commands in flight finish (every permit is back) and the outbox publishes what they
    // wrote before we go; what a stuck command writes later waits in the outbox.
    let all = u32::try_from(config.max_in_flight).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(5), in_flight.acquire_many(all)).await;
    background.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks did not finish within the grace period");
    }
    nats.drain().await.context("draining nats")?;
    pool.close();
    Ok(())
}

#[derive(Debug, Clone)]
enum Handler {
    Command,
    Query,
    /// Zone events from gateways, and what wakes the outbox and the delivery after them.
    Record(Arc<outbox::Publisher>),
}

async fn serve(
    mut subscription: async_nats::Subscriber,
    nats: async_nats::Client,
    store: Store,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
    tasks: TaskTracker,
    handler: Handler,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = subscription.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let Some(reply_to) = message.reply.clone() else {
            metrics::counter!(meters::MALFORMED, "subject" => "no_reply").increment(1);
            continue;
        };
        if kit::bus::stale(&message, protocol::time::now_ms()) {
            let what = match &handler {
                Handler::Command => "command",
                Handler::Query => "query",
                Handler::Record(_) => "zone_events",
            };
            metrics::counter!(meters::STALE_REQUESTS, "subject" => what).increment(1);
            tracing::warn!(
                what,
                "dropped a request that arrived after its requester gave up"
            );
            continue;
        }
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let store = store.clone();
        let nats = nats.clone();
        let handler = handler.clone();
        tasks.spawn(async move {
            let malformed = |what: &'static str, error: codec::CodecError| {
                metrics::counter!(meters::MALFORMED, "subject" => what).increment(1);
                tracing::warn!(%error, what, "malformed bus payload");
                CommandError::new(ErrorCode::InvalidMessage, "malformed payload")
            };
            let reply = match handler {
                Handler::Command => match codec::decode::<TripCommand>(&message.payload) {
                    Ok(command) => codec::encode(&store.execute(command).await),
                    Err(error) => codec::encode(&TripReply::Err(malformed("command", error))),
                },
                Handler::Query => match codec::decode::<TripQuery>(&message.payload) {
                    Ok(query) => codec::encode(&store.query(query).await),
                    Err(error) => codec::encode(&QueryReply::Error(malformed("query", error))),
                },
                Handler::Record(ref publisher) => {
                    match codec::decode::<Vec<ZoneEvent>>(&message.payload) {
                        Ok(events) if events.len() > tracking::MAX_BATCH => {
                            codec::encode(&RecordReply::Err(CommandError::new(
                                ErrorCode::TooLarge,
                                "too many zone events in one batch",
                            )))
                        }
                        Ok(events) => {
                            let recorded = tracking::record(
                                store.pool(),
                                store.subjects(),
                                publisher,
                                &events,
                            )
                            .await;
                            let reply: RecordReply =
                                recorded.map_err(StoreError::into_command_error);
                            codec::encode(&reply)
                        }
                        Err(error) => {
                            codec::encode(&RecordReply::Err(malformed("zone_events", error)))
                        }
                    }
                }
            };
            if let Err(error) = nats.publish(reply_to, reply.into()).await {
                tracing::warn!(%error, "could not send reply");
            }
            drop(permit);
        });
    }
    let _ = subscription.unsubscribe().await;
}

async fn retention(pool: deadpool_postgres::Pool, keep: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match breadcrumbs::expire(&pool, keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "deleted expired breadcrumbs"),
            Err(error) => tracing::warn!(%error, "breadcrumb retention failed"),
        }
    }
}
