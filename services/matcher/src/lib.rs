//! The matcher: assigns ride requests to nearby drivers, for one or more regions.
//!
//! It keeps a live [`index`] of drivers from the location subjects of its regions plus a halo
//! of cells around them, takes requests of its regions through a NATS queue group shared with
//! its replicas, and runs the offer cycle in the [`engine`]: pick drivers with a strategy from
//! [`assign`], claim them through the trips service (the database settles races), expire
//! offers nobody answered and searches that ran out of time.

pub mod assign;
pub mod counts;
pub mod engine;
pub mod holdings;
pub mod index;
pub mod meters;
pub mod serving;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use h3o::{CellIndex, Resolution};
use kit::{Bus, Readiness};
use protocol::bus::{
    CellCounts, DriverStatus, Position, QueryReply, RideRequest, TripCommand, TripEvent, TripQuery,
    TripReply,
};
use protocol::{GeoConfig, Subjects, codec};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use engine::Settings;

/// Everything the matcher needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    pub subjects: Subjects,
    pub geo: GeoConfig,
    /// Regions served by this process.
    pub regions: Vec<CellIndex>,
    /// Rings of cells beyond each region's border whose drivers are also indexed.
    pub halo_rings: u32,
    /// Resolution of the index's buckets (finer than the cell resolution).
    pub index_res: Resolution,
    pub settings: Settings,
    /// How pickup times are estimated.
    pub eta: Arc<dyn assign::EtaModel>,
    /// Deadline of a command to the trips service.
    pub command_timeout: Duration,
}

impl Config {
    pub fn new(nats_url: &str, subjects: Subjects, regions: Vec<CellIndex>) -> Self {
        Self {
            nats_url: nats_url.into(),
            subjects,
            geo: GeoConfig::default(),
            regions,
            halo_rings: 2,
            index_res: Resolution::Eight,
            settings: Settings::default(),
            eta: Arc::new(assign::StraightLine::default()),
            command_timeout: Duration::from_secs(3),
        }
    }
}

/// The engine's link to the rest of the system.
#[derive(Debug, Clone)]
struct BusLink {
    bus: Bus,
    timeout: Duration,
}

impl engine::Link for BusLink {
    async fn command(&self, command: TripCommand) -> TripReply {
        self.bus.command(&command, self.timeout).await
    }

    async fn publish_counts(&self, region: CellIndex, counts: CellCounts) {
        let _ = self
            .bus
            .publish(self.bus.subjects.cell_counts(region), &counts)
            .await;
    }
}

/// Forwards decoded messages from `subscription` to the engine. Positions are dropped when the
/// engine is behind (the next one replaces them); everything else waits for room.
async fn forward<T: DeserializeOwned>(
    mut subscription: async_nats::Subscriber,
    inputs: mpsc::Sender<engine::Input>,
    wrap: fn(T) -> engine::Input,
    droppable: bool,
) {
    while let Some(message) = subscription.next().await {
        let Ok(value) = codec::decode::<T>(&message.payload) else {
            continue;
        };
        let input = wrap(value);
        if droppable {
            if inputs.try_send(input).is_err() {
                metrics::counter!(meters::POSITIONS_DROPPED).increment(1);
            }
        } else if inputs.send(input).await.is_err() {
            break;
        }
    }
}

/// Runs the matcher until `shutdown`, serving metrics and health on `http`.
pub async fn run(
    config: Config,
    http: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(!config.regions.is_empty(), "no regions to serve");
    meters::register();
    let readiness = Readiness::new(&["nats"]);
    let nats = kit::bus::connect(&config.nats_url, "matcher").await?;
    let bus = Bus::new(nats.clone(), config.subjects.clone());
    let tasks = TaskTracker::new();
    let (inputs, receiver) = mpsc::channel(1 << 16);
    let regions: HashSet<CellIndex> = config.regions.iter().copied().collect();
    let link = BusLink {
        bus: bus.clone(),
        timeout: config.command_timeout,
    };
    let engine = engine::Engine::new(
        config.settings.clone(),
        config.geo,
        regions.clone(),
        config.index_res,
        config.eta.clone(),
        link,
        inputs.clone(),
    );
    let stop_engine = CancellationToken::new();
    let engine = tokio::spawn(engine.run(receiver, Duration::from_millis(20), stop_engine.clone()));

    // Positions of the regions and their halos; every replica sees them all.
    let subjects = &config.subjects;
    let mut location_subjects: Vec<String> = config
        .regions
        .iter()
        .map(|r| subjects.location_region(*r))
        .collect();
    let mut halo: HashSet<CellIndex> = HashSet::new();
    for region in &config.regions {
        halo.extend(config.geo.halo_cells(*region, config.halo_rings));
    }
    halo.retain(|cell| !regions.contains(&config.geo.region_of_cell(*cell)));
    location_subjects.extend(
        halo.iter()
            .map(|c| subjects.location(config.geo.region_of_cell(*c), *c)),
    );
    for subject in location_subjects {
        let sub = nats.subscribe(subject).await?;
        tasks.spawn(forward::<Position>(
            sub,
            inputs.clone(),
            engine::Input::Position,
            true,
        ));
    }
    // Requests are shared among the region's replicas.
    for region in &config.regions {
        let sub = nats
            .queue_subscribe(
                subjects.ride_requests(*region),
                subjects.matcher_queue(*region),
            )
            .await?;
        tasks.spawn(forward::<RideRequest>(
            sub,
            inputs.clone(),
            engine::Input::Request,
            false,
        ));
    }
    let events = nats.subscribe(subjects.trip_events_all()).await?;
    tasks.spawn(forward::<TripEvent>(
        events,
        inputs.clone(),
        engine::Input::Event,
        false,
    ));
    let statuses = nats.subscribe(subjects.driver_status()).await?;
    tasks.spawn(forward::<DriverStatus>(
        statuses,
        inputs.clone(),
        engine::Input::Status,
        false,
    ));
    let _ = nats.flush().await;
    tracing::info!(
        regions = config.regions.len(),
        halo_cells = halo.len(),
        strategy = ?config.settings.strategy,
        prefix = subjects.prefix(),
        "matcher subscribed"
    );

    // Who is busy, from the trips service, so a fresh replica does not offer busy drivers.
    let rebuild_bus = bus.clone();
    let rebuild_inputs = inputs.clone();
    let names: Vec<String> = config.regions.iter().map(|r| r.to_string()).collect();
    let rebuild_stop = shutdown.clone();
    let timeout = config.command_timeout;
    tasks.spawn(async move {
        let mut backoff = kit::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let query = TripQuery::Drivers { regions: names };
        loop {
            match rebuild_bus.query(&query, timeout).await {
                QueryReply::Drivers(drivers) => {
                    tracing::info!(busy = drivers.len(), "loaded busy drivers");
                    let _ = rebuild_inputs.send(engine::Input::Busy(drivers)).await;
                    break;
                }
                QueryReply::Error(error) => {
                    tracing::warn!(code = error.code.as_str(), "busy drivers not loaded yet; retrying");
                }
                other => tracing::warn!(reply = ?other, "unexpected reply to the drivers query; retrying"),
            }
            tokio::select! {
                _ = rebuild_stop.cancelled() => break,
                () = backoff.wait() => {}
            }
        }
    });
    drop(inputs);

    tasks.spawn(kit::bus::track_readiness(
        nats.clone(),
        readiness.clone(),
        "nats",
        shutdown.clone(),
    ));
    let app = kit::http::operator_routes(readiness);
    tasks.spawn(kit::http::serve(http, app, shutdown.clone()));

    shutdown.cancelled().await;
    tracing::info!("matcher stopping");
    // The engine stops and waits for its commands in flight, which still have the bus; what
    // this replica held is re-published by the trips sweeper. Then no more requests are
    // taken (the drain ends the subscriptions and their forwarding tasks).
    stop_engine.cancel();
    if tokio::time::timeout(Duration::from_secs(10), engine)
        .await
        .is_err()
    {
        tracing::warn!("commands in flight did not finish within the grace period");
    }
    nats.drain().await.context("draining nats")?;
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks did not finish within the grace period");
    }
    Ok(())
}
