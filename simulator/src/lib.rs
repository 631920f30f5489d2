//! The load simulator: a city of drivers and riders, each a real WebSocket client with its own
//! token, speaking only the public protocol. A seeded random generator makes runs repeatable
//! (up to the timing of the system under test).
//!
//! [`run`] ramps connections up at a bounded rate, drives the scenario for its duration, stops
//! new demand, lets open trips finish (the drain), and returns a [`Report`]. With
//! [`Settings::jobs`], an [`integrator`] creates jobs through the HTTP API beside the riders,
//! some of them scheduled.

pub mod chart;
pub mod city;
pub mod client;
pub mod driver;
pub mod integrator;
pub mod report;
pub mod rider;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::Point;
use protocol::client::{Role, ServerMessage};
use protocol::time::now_us;
use protocol::token::{self, Claims};
use protocol::trip::VehicleClass;
use rand::Rng;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use city::City;
pub use report::Report;
use stats::{Stats, get};

/// The shape of demand over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Constant demand.
    Steady,
    /// Demand triples in the middle third of the run.
    RushHour,
    /// Pickups clustered on the border between two H3 regions.
    Border,
    /// Steady demand with patient clients and a long drain, for runs while faults are injected.
    Chaos,
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "steady" => Ok(Self::Steady),
            "rush-hour" => Ok(Self::RushHour),
            "border" => Ok(Self::Border),
            "chaos" => Ok(Self::Chaos),
            other => Err(format!(
                "unknown scenario {other:?}: steady, rush-hour, border or chaos"
            )),
        }
    }
}

/// Everything a run is configured by.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The gateways' WebSocket URLs, `ws://host:port/ws`, comma-separated: clients are spread
    /// over them in turn, as a load balancer would.
    pub url: String,
    pub token_secret: Vec<u8>,
    pub drivers: usize,
    pub riders: usize,
    pub city: City,
    pub seed: u64,
    pub scenario: Scenario,
    pub duration: Duration,
    /// Longest wait for open trips after demand stops.
    pub drain: Duration,
    /// Ride requests per second across the city.
    pub request_rate: f64,
    pub report_every: Duration,
    pub speed_mps: f64,
    /// Simulated time runs this many times faster than real time for movement and boarding.
    pub speedup: f64,
    pub accept_probability: f64,
    /// Drivers answer offers after up to this long.
    pub answer_delay: Duration,
    pub cancel_probability: f64,
    pub vehicle_class: VehicleClass,
    /// New connections per second while ramping up.
    pub ramp_per_sec: f64,
    /// Watch the fleet as a dispatcher too (location latency through viewport feeds).
    pub dispatcher: bool,
    /// Print a progress line every second.
    pub progress: bool,
    /// Pickups of the border scenario gather here.
    pub border_point: Option<Point>,
    /// Makes this run's idempotency keys unique against earlier runs on the same database.
    pub run_id: String,
    /// Source addresses to connect from, spread over the clients (empty: the system's choice).
    pub sources: Vec<std::net::IpAddr>,
    /// A gateway silent this long is taken for dead and the client reconnects (none: only a
    /// closed connection counts).
    pub liveness: Option<Duration>,
    /// A driver report with no answer for this long is sent again: the gateway answers every
    /// command within its own timeout, so silence means the answer (or the report) was lost.
    pub report_patience: Duration,
    /// Vehicles drive along this network at its speeds (none: straight lines at `speed_mps`).
    pub roads: Option<Arc<roads::RoadNetwork>>,
    /// Jobs created through the integrator API beside the riders' requests (none: riders only).
    pub jobs: Option<integrator::Jobs>,
}

impl Settings {
    /// The gateway URL client number `index` connects to on its `attempt`th connection: each
    /// reconnect tries the next gateway, as a load balancer would send it to a live one.
    pub fn url_for(&self, index: usize, attempt: usize) -> &str {
        let index = index.wrapping_add(attempt);
        let urls: Vec<&str> = self
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        match urls.len() {
            0 => &self.url,
            n => urls[index % n],
        }
    }

    /// The source address of client number `index`.
    pub fn source(&self, index: usize) -> Option<std::net::IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()])
    }

    /// Defaults for a small city around `center`.
    pub fn new(url: &str, token_secret: &[u8], center: Point) -> Self {
        Self {
            url: url.into(),
            token_secret: token_secret.into(),
            drivers: 50,
            riders: 50,
            city: City {
                center,
                radius_m: 5_000.0,
            },
            seed: 1,
            scenario: Scenario::Steady,
            duration: Duration::from_secs(60),
            drain: Duration::from_secs(60),
            request_rate: 1.0,
            report_every: Duration::from_secs(1),
            speed_mps: 10.0,
            speedup: 10.0,
            accept_probability: 0.9,
            answer_delay: Duration::from_millis(500),
            cancel_probability: 0.05,
            vehicle_class: VehicleClass::Standard,
            ramp_per_sec: 500.0,
            dispatcher: true,
            progress: false,
            border_point: None,
            run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            sources: Vec::new(),
            liveness: None,
            report_patience: Duration::from_secs(10),
            roads: None,
            jobs: None,
        }
    }

    fn pickup(&self, rng: &mut impl Rng) -> Point {
        match (self.scenario, self.border_point) {
            (Scenario::Border, Some(anchor)) => self.city.point_near(anchor, 400.0, rng),
            _ => self.city.random_point(rng),
        }
    }

    fn token(&self, role: Role, sub: &str) -> anyhow::Result<String> {
        let exp =
            protocol::time::now_ms() / 1000 + (self.duration + self.drain).as_secs() as i64 + 3_600;
        Ok(token::mint(
            &self.token_secret,
            &Claims {
                role,
                sub: sub.into(),
                exp,
                name: None,
            },
        )?)
    }
}

/// A point on the boundary between the region of `center` and a neighbour: where the border
/// scenario puts its pickups.
pub fn border_point(center: Point) -> Point {
    let geo = protocol::GeoConfig::default();
    let region = geo.region_of(center).expect("a valid centre");
    let outside = geo.halo_cells(region, 1);
    let cell = outside
        .iter()
        .min_by(|a, b| {
            let pa = h3o::LatLng::from(**a);
            let pb = h3o::LatLng::from(**b);
            center
                .distance_m(&Point::new(pa.lat(), pa.lng()))
                .total_cmp(&center.distance_m(&Point::new(pb.lat(), pb.lng())))
        })
        .expect("a region has neighbours");
    let ll = h3o::LatLng::from(*cell);
    Point::new(ll.lat(), ll.lng())
}

async fn watch_fleet(settings: Arc<Settings>, stats: Arc<Stats>, stop: CancellationToken) {
    let Ok(token) = settings.token(Role::Dispatcher, "sim-dispatcher") else {
        return;
    };
    let mut backoff = client::Backoff::default();
    while !stop.is_cancelled() {
        let Ok(mut ws) = client::connect(
            settings.url_for(0, 0),
            &token,
            settings.source(0),
            settings.liveness,
        )
        .await
        else {
            backoff.wait().await;
            continue;
        };
        let c = settings.city.center;
        let r = settings.city.radius_m;
        let south_west = settings.city.offset(c, -r, -r);
        let north_east = settings.city.offset(c, r, r);
        let subscribe = serde_json::json!({"type": "subscribe_viewport", "id": 1, "zoom": 14,
            "viewport": {"south": south_west.lat, "west": south_west.lng, "north": north_east.lat, "east": north_east.lng}});
        if client::send(&mut ws, subscribe).await.is_err() {
            continue;
        }
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                m = client::next(&mut ws) => m,
            };
            match message {
                Ok(Some(ServerMessage::Vehicles { vehicles })) => {
                    let now = now_us();
                    for v in vehicles {
                        stats
                            .location_latency_us
                            .record((now - v.ts * 1000).max(0) as u64);
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
}

/// Runs the simulation and reports.
pub async fn run(settings: Settings) -> anyhow::Result<Report> {
    run_until(settings, CancellationToken::new()).await
}

/// Runs the simulation, ending demand early when `stop` is cancelled (the drain is then cut
/// to at most ten seconds), and reports.
pub async fn run_until(settings: Settings, stop: CancellationToken) -> anyhow::Result<Report> {
    let settings = Arc::new(settings);
    let stats = Arc::new(Stats::default());
    let stop_clients = CancellationToken::new();
    let stop_demand = CancellationToken::new();
    let mut tasks = Vec::new();

    // Ramp up: drivers first, then riders, at a bounded rate.
    let mut ramp = tokio::time::interval(Duration::from_secs_f64(
        1.0 / settings.ramp_per_sec.max(1.0),
    ));
    for index in 0..settings.drivers {
        ramp.tick().await;
        let token = settings.token(Role::Driver, &format!("sim-driver-{index}"))?;
        tasks.push(tokio::spawn(driver::run(
            index,
            token,
            settings.clone(),
            stats.clone(),
            stop_clients.clone(),
        )));
    }
    let (sender, receiver) = mpsc::channel(settings.riders.max(1));
    let queue = Arc::new(Mutex::new(receiver));
    let open: rider::Open = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let crowd = rider::Crowd {
        settings: settings.clone(),
        stats: stats.clone(),
        queue,
        open: open.clone(),
        stop: stop_demand.clone(),
        stop_now: stop_clients.clone(),
    };
    for index in 0..settings.riders {
        ramp.tick().await;
        let token = settings.token(Role::Rider, &format!("sim-rider-{index}"))?;
        tasks.push(tokio::spawn(rider::run(index, token, crowd.clone())));
    }
    if settings.dispatcher {
        tasks.push(tokio::spawn(watch_fleet(
            settings.clone(),
            stats.clone(),
            stop_clients.clone(),
        )));
    }
    let duration = settings.duration.as_secs_f64();
    let scenario = settings.scenario;
    let shape = move |t: f64| match scenario {
        Scenario::RushHour if t > duration / 3.0 && t < 2.0 * duration / 3.0 => 3.0,
        _ => 1.0,
    };
    let demand = tokio::spawn(rider::demand(
        settings.clone(),
        sender,
        shape,
        stop_demand.clone(),
    ));
    let jobs = settings.jobs.clone().map(|jobs| {
        tokio::spawn(integrator::run(
            settings.clone(),
            jobs,
            stop_demand.clone(),
            stop_clients.clone(),
        ))
    });

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_updates = 0;
    let mut last_tick = Instant::now();
    let sample = |stats: &Stats, last_updates: &mut u64, last_tick: &mut Instant| {
        let updates = get(&stats.updates_sent);
        let dt = last_tick.elapsed().as_secs_f64().max(1e-3);
        *last_tick = Instant::now();
        let s = stats::Sample {
            t_s: started.elapsed().as_secs_f64(),
            updates_per_sec: (updates - *last_updates) as f64 / dt,
            open_trips: get(&stats.open_trips),
            completed: get(&stats.completed),
        };
        *last_updates = updates;
        if settings.progress {
            #[allow(clippy::print_stderr)] // the live progress line
            {
                eprint!(
                    "\r{:>5.0}s  updates/s {:>8.0}  requests {:>6}  open {:>5}  completed {:>6}  cancelled {:>5}  expired {:>5}  p99 location {:>6.1} ms   ",
                    s.t_s,
                    s.updates_per_sec,
                    get(&stats.requests),
                    s.open_trips,
                    s.completed,
                    get(&stats.cancelled),
                    get(&stats.expired),
                    stats.location_latency_us.quantile(0.99) as f64 / 1000.0
                );
            }
        }
        stats.series.lock().expect("series lock").push(s);
    };
    while started.elapsed() < settings.duration && !stop.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        sample(&stats, &mut last_updates, &mut last_tick);
    }
    let drain = if stop.is_cancelled() {
        settings.drain.min(Duration::from_secs(10))
    } else {
        settings.drain
    };
    // No new demand; riders with open trips follow them to the end, within the drain.
    stop_demand.cancel();
    let _ = demand.await;
    let drain_started = Instant::now();
    while get(&stats.open_trips) > 0 && drain_started.elapsed() < drain {
        tick.tick().await;
        sample(&stats, &mut last_updates, &mut last_tick);
    }
    let elapsed = started.elapsed();
    stop_clients.cancel();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::future::join_all(tasks),
    )
    .await;
    if settings.progress {
        #[allow(clippy::print_stderr)] // ends the progress line
        {
            eprintln!();
        }
    }
    let mut still_open: Vec<_> = open
        .lock()
        .expect("open lock")
        .iter()
        .map(|(id, state)| (*id, *state))
        .collect();
    still_open.sort_by_key(|(id, _)| *id);
    // A run cut short by a stop ends with trips under way: they are not lost.
    let stopped_early = stop.is_cancelled();
    if stopped_early {
        tracing::info!(
            under_way = still_open.len(),
            "stopped early; trips still under way were cut off by the stop, not lost"
        );
    } else {
        for (trip_id, state) in &still_open {
            tracing::warn!(%trip_id, last_heard = ?state, "trip lost: acknowledged and not ended");
        }
    }
    let mut report = Report::build(&settings, &stats, still_open, stopped_early, elapsed);
    if let Some(jobs) = jobs {
        report.jobs = jobs.await.ok();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_spread_over_every_gateway_in_turn() {
        let settings = Settings::new(
            "ws://a/ws, ws://b/ws,ws://c/ws",
            b"0123456789abcdef",
            Point::new(52.52, 13.405),
        );
        let urls: Vec<&str> = (0..4).map(|i| settings.url_for(i, 0)).collect();
        assert_eq!(urls, ["ws://a/ws", "ws://b/ws", "ws://c/ws", "ws://a/ws"]);
        let one = Settings::new("ws://a/ws", b"0123456789abcdef", Point::new(52.52, 13.405));
        assert_eq!(one.url_for(7, 0), "ws://a/ws");
        // A reconnect goes to the next gateway, and round again.
        assert_eq!(settings.url_for(0, 1), "ws://b/ws");
        assert_eq!(settings.url_for(2, 2), "ws://b/ws");
    }
}
