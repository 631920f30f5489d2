//! Simulated riders: take ride requests from the city's demand, follow each trip to its end,
//! sometimes cancel, and watch their driver approach.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::Point;
use protocol::client::{Eta, EtaTo, ServerMessage};
use protocol::time::now_us;
use protocol::trip::TripState;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Settings;
use crate::client::{self, Backoff, Ws};
use crate::stats::{Stats, bump};

/// One ride to ask for.
#[derive(Debug, Clone)]
pub struct Demand {
    pub pickup: Point,
    pub dropoff: Point,
    /// Cancel this long after asking, if not picked up by then.
    pub cancel_after: Option<Duration>,
}

/// How long a rider keeps asking for a ride the server cannot take yet, and how often.
const REQUEST_PATIENCE: Duration = Duration::from_secs(30);
const REQUEST_RETRY: Duration = Duration::from_secs(1);

/// A trip not heard of for this long is asked for.
const QUIET_TRIP: Duration = Duration::from_secs(5);

/// Trips asked for and not yet ended, shared by all riders (for the lost count).
pub type Open = Arc<std::sync::Mutex<HashMap<Uuid, TripState>>>;

struct Ride {
    key: String,
    /// The message id of the latest request_ride sent for it.
    request_id: u64,
    demand: Demand,
    sent: Instant,
    trip_id: Option<Uuid>,
    offered: bool,
    accepted: bool,
    picked_up: bool,
    /// The first ETA to the pickup the rider was told with its driver's position, and when.
    told_pickup: Option<(Instant, u32)>,
    /// When the rider last heard of its trip.
    last_news: Instant,
    /// The server's view may have moved on without us (a resync lacked the trip): ask.
    refresh: bool,
    /// When to ask again for a ride the server could not take yet.
    retry_at: Option<Instant>,
}

/// What all riders share.
#[derive(Debug, Clone)]
pub struct Crowd {
    pub settings: Arc<Settings>,
    pub stats: Arc<Stats>,
    pub queue: Arc<Mutex<mpsc::Receiver<Demand>>>,
    pub open: Open,
    /// No new requests after this; open trips are still followed.
    pub stop: CancellationToken,
    /// Everything ends now.
    pub stop_now: CancellationToken,
}

/// Runs one rider, taking demand from the crowd's queue.
pub async fn run(index: usize, token: String, crowd: Crowd) {
    let Crowd {
        settings,
        stats,
        queue,
        open,
        stop,
        stop_now,
    } = crowd;
    // Keys stay unique against earlier runs on the same database.
    let rider = format!("{}-r{index}", settings.run_id);
    let mut backoff = Backoff::default();
    let mut ride: Option<Ride> = None;
    let mut next_id = 1u64;
    let mut counter = 0u64;
    let mut first = true;
    let mut attempt = 0;
    // After `stop` riders ask for nothing new but follow open trips; `stop_now` ends them all.
    while !(stop_now.is_cancelled() || stop.is_cancelled() && ride.is_none()) {
        if !first {
            attempt += 1;
            bump(&stats.reconnects);
            tokio::select! {
                _ = stop_now.cancelled() => break,
                _ = backoff.wait() => {}
            }
        }
        first = false;
        let connected = tokio::select! {
            _ = stop_now.cancelled() => break,
            ws = client::connect(settings.url_for(settings.drivers + index, attempt), &token, settings.source(settings.drivers + index), settings.liveness) => ws,
        };
        let Ok(mut ws) = connected else { continue };
        backoff.reset();
        let session = session(
            &rider,
            &mut ws,
            &stats,
            &queue,
            &open,
            &stop,
            &mut ride,
            &mut next_id,
            &mut counter,
            settings.speedup,
        );
        let result = tokio::select! {
            _ = stop_now.cancelled() => break,
            result = session => result,
        };
        if result.is_ok() {
            break;
        }
    }
}

#[allow(clippy::too_many_arguments)] // the rider's whole state, threaded through reconnects
async fn session(
    rider: &str,
    ws: &mut Ws,
    stats: &Stats,
    queue: &Mutex<mpsc::Receiver<Demand>>,
    open: &Open,
    stop: &CancellationToken,
    ride: &mut Option<Ride>,
    next_id: &mut u64,
    counter: &mut u64,
    speedup: f64,
) -> anyhow::Result<()> {
    // A ride in flight across a reconnect is asked for again with the same key: the server
    // answers with the same trip, so nothing is duplicated.
    if let Some(current) = ride.as_mut().filter(|r| r.trip_id.is_none()) {
        current.request_id = request(ws, next_id, &current.key, &current.demand).await?;
    }
    let mut check = tokio::time::interval(Duration::from_millis(100));
    loop {
        if ride.is_none() && !stop.is_cancelled() {
            let demand = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                demand = async { queue.lock().await.recv().await } => demand,
                // Keep reading while waiting for demand, as a real app does: reading answers
                // the server's pings, without which an idle rider is closed as idle.
                message = client::next(ws) => match message? {
                    Some(_) => continue,
                    None => anyhow::bail!("the gateway closed the connection"),
                },
            };
            let Some(demand) = demand else { return Ok(()) };
            *counter += 1;
            let key = format!("{rider}-{counter}");
            bump(&stats.requests);
            let request_id = request(ws, next_id, &key, &demand).await?;
            *ride = Some(Ride {
                key,
                request_id,
                demand,
                sent: Instant::now(),
                trip_id: None,
                offered: false,
                accepted: false,
                picked_up: false,
                told_pickup: None,
                last_news: Instant::now(),
                refresh: false,
                retry_at: None,
            });
        }
        tokio::select! {
            // Riders with a trip under way keep following it after the stop, until it ends.
            _ = stop.cancelled(), if ride.is_none() => return Ok(()),
            _ = check.tick() => {
                if let Some(r) = ride.as_mut()
                    && r.retry_at.is_some_and(|at| Instant::now() >= at)
                {
                    r.retry_at = None;
                    r.request_id = request(ws, next_id, &r.key, &r.demand).await?;
                }
                // Updates can be missed (a bus outage between the server's parts): a trip not
                // heard of for a while, or missing from a resync, is asked for.
                if let Some(r) = ride.as_mut()
                    && let Some(trip_id) = r.trip_id
                    && (r.refresh || r.last_news.elapsed() >= QUIET_TRIP)
                {
                    r.refresh = false;
                    r.last_news = Instant::now();
                    *next_id += 1;
                    client::send(ws, json!({"type": "get_trip", "id": *next_id, "trip_id": trip_id})).await?;
                }
                if let Some(r) = ride.as_mut() {
                    let due = r.demand.cancel_after.is_some_and(|after| r.sent.elapsed() >= after);
                    if due && !r.picked_up
                        && let Some(trip_id) = r.trip_id {
                            r.demand.cancel_after = None;
                            *next_id += 1;
                            client::send(ws, json!({"type": "cancel_trip", "id": *next_id, "trip_id": trip_id, "reason": "rider changed plans"})).await?;
                        }
                }
            }
            message = client::next(ws) => {
                let Some(message) = message? else { anyhow::bail!("connection closed") };
                on_message(message, stats, open, ride, speedup);
            }
        }
    }
}

/// Sends a ride request; returns its message id.
async fn request(
    ws: &mut Ws,
    next_id: &mut u64,
    key: &str,
    demand: &Demand,
) -> anyhow::Result<u64> {
    *next_id += 1;
    client::send(
        ws,
        json!({"type": "request_ride", "id": *next_id,
        "pickup": {"lat": demand.pickup.lat, "lng": demand.pickup.lng},
        "dropoff": {"lat": demand.dropoff.lat, "lng": demand.dropoff.lng},
        "idempotency_key": key}),
    )
    .await?;
    Ok(*next_id)
}

fn on_message(
    message: ServerMessage,
    stats: &Stats,
    open: &Open,
    ride: &mut Option<Ride>,
    speedup: f64,
) {
    let Some(r) = ride.as_mut() else {
        return;
    };
    let trip = match message {
        ServerMessage::Ack {
            id,
            trip: Some(trip),
            ..
        } if r.trip_id.is_none() && id == r.request_id => {
            r.trip_id = Some(trip.trip_id);
            bump(&stats.acked);
            open.lock()
                .expect("open lock")
                .insert(trip.trip_id, trip.state);
            stats.open_trips.store(
                open.lock().expect("open lock").len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            trip
        }
        ServerMessage::Error {
            code,
            id: Some(id),
            message,
        } if r.trip_id.is_none() && id == r.request_id => {
            tracing::warn!(%code, %message, "ride request refused");
            if code.is_retryable() {
                bump(&stats.errors);
                if r.sent.elapsed() < REQUEST_PATIENCE {
                    // Asked again with the same key: stored at most once, whatever happened.
                    r.retry_at = Some(Instant::now() + REQUEST_RETRY);
                    return;
                }
                // Not stored for too long: the demand is lost to the rider, not to the system.
            } else {
                bump(&stats.refused);
            }
            *ride = None;
            return;
        }
        ServerMessage::TripUpdate { trip } if Some(trip.trip_id) == r.trip_id => trip,
        ServerMessage::SessionState { trips, .. } => {
            match trips.into_iter().find(|t| Some(t.trip_id) == r.trip_id) {
                Some(trip) => trip,
                None => {
                    // Not among the open trips: it may have ended while we were not listening.
                    r.refresh = r.trip_id.is_some();
                    return;
                }
            }
        }
        ServerMessage::Ack {
            trip: Some(trip), ..
        } if Some(trip.trip_id) == r.trip_id => trip,
        ServerMessage::DriverPosition {
            ts, trip_id, eta, ..
        } if Some(trip_id) == r.trip_id => {
            stats
                .location_latency_us
                .record((now_us() - ts * 1000).max(0) as u64);
            if let Some(Eta {
                to: EtaTo::Pickup,
                seconds,
            }) = eta
            {
                r.told_pickup.get_or_insert((Instant::now(), seconds));
            }
            return;
        }
        _ => return,
    };
    r.last_news = Instant::now();
    let elapsed_us = r.sent.elapsed().as_micros() as u64;
    if trip.state == TripState::Offered && !r.offered {
        r.offered = true;
        stats.match_latency_us.record(elapsed_us);
    }
    if matches!(
        trip.state,
        TripState::Accepted | TripState::Arrived | TripState::InProgress
    ) && !r.accepted
    {
        r.accepted = true;
        r.offered = true;
        stats.accept_latency_us.record(elapsed_us);
    }
    if matches!(trip.state, TripState::Arrived | TripState::InProgress) && !r.picked_up {
        r.picked_up = true;
        // How far off the first ETA the rider was told turned out to be, in simulated time.
        if let Some((told_at, seconds)) = r.told_pickup {
            let actual_ms = told_at.elapsed().as_secs_f64() * speedup * 1000.0;
            let error_ms = (f64::from(seconds) * 1000.0 - actual_ms).abs();
            stats.rider_eta_error_ms.record(error_ms as u64);
        }
    }
    if let Some(state) = open.lock().expect("open lock").get_mut(&trip.trip_id) {
        *state = trip.state;
    }
    if trip.state.is_terminal() {
        match trip.state {
            TripState::Completed => bump(&stats.completed),
            TripState::Cancelled => bump(&stats.cancelled),
            _ => bump(&stats.expired),
        }
        let mut open = open.lock().expect("open lock");
        open.remove(&trip.trip_id);
        stats
            .open_trips
            .store(open.len() as u64, std::sync::atomic::Ordering::Relaxed);
        *ride = None;
    }
}

/// The shortest trip demanded: 500 m, or half the city's radius in a smaller city, where a
/// pickup at the centre has no point 500 m away.
fn min_trip_m(city: &crate::City) -> f64 {
    (city.radius_m / 2.0).min(500.0)
}

/// Produces demand at `rate` requests per second (a Poisson process), scaled over time by
/// `shape(t)`, until `stop`.
pub async fn demand(
    settings: Arc<Settings>,
    sender: mpsc::Sender<Demand>,
    shape: impl Fn(f64) -> f64 + Send + 'static,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(settings.seed.wrapping_add(0xd3_4a_2d));
    let started = Instant::now();
    loop {
        let rate = (settings.request_rate * shape(started.elapsed().as_secs_f64())).max(1e-6);
        let gap = -rng.random::<f64>().max(1e-12).ln() / rate;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs_f64(gap.min(60.0))) => {}
        }
        let pickup = settings.pickup(&mut rng);
        let mut dropoff = settings.city.random_point(&mut rng);
        while dropoff.distance_m(&pickup) < min_trip_m(&settings.city) {
            dropoff = settings.city.random_point(&mut rng);
        }
        let cancel_after = (rng.random::<f64>() < settings.cancel_probability)
            .then(|| Duration::from_secs_f64(rng.random_range(0.5..5.0)));
        // Every rider busy: this demand goes unserved by the simulation (not by the system).
        let _ = sender.try_send(Demand {
            pickup,
            dropoff,
            cancel_after,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two workers, so that a demand task stuck in a loop fails the test by its timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_city_still_gets_its_demand() {
        // 200 m across: no two points are 500 m apart.
        let mut settings = Settings::new("ws://unused/ws", b"unused", Point::new(60.17, 24.94));
        settings.city.radius_m = 200.0;
        settings.request_rate = 1_000.0;
        let settings = Arc::new(settings);
        let (sender, mut demands) = mpsc::channel(64);
        let stop = CancellationToken::new();
        tokio::spawn(demand(settings.clone(), sender, |_| 1.0, stop.clone()));
        for _ in 0..50 {
            let next = tokio::time::timeout(Duration::from_secs(10), demands.recv())
                .await
                .expect("demand keeps coming")
                .expect("the demand task runs");
            let length = next.pickup.distance_m(&next.dropoff);
            assert!((100.0..=400.0).contains(&length), "a trip of {length} m");
        }
        stop.cancel();
    }
}
