//! A simulated driver: goes online, reports its position, answers offers, drives to the pickup
//! and the dropoff and reports each stage, reconnecting with backoff when the link drops.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use protocol::client::ServerMessage;
use protocol::time::now_ms;
use protocol::trip::{TripState, TripView};
use protocol::{ErrorCode, Point};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roads::Leg;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Settings;
use crate::city;
use crate::client::{self, Backoff, Ws};
use crate::stats::{Stats, bump};

#[derive(Debug, Clone, PartialEq)]
enum Task {
    Roaming {
        to: Point,
    },
    /// An offer to answer at `at`.
    Answering {
        trip: TripView,
        at: Instant,
        accept: bool,
    },
    ToPickup {
        trip: TripView,
        accepted: Instant,
    },
    Boarding {
        trip: TripView,
        until: Instant,
    },
    ToDropoff {
        trip: TripView,
    },
}

impl Task {
    fn trip_id(&self) -> Option<Uuid> {
        match self {
            Task::Roaming { .. } => None,
            Task::Answering { trip, .. }
            | Task::ToPickup { trip, .. }
            | Task::Boarding { trip, .. }
            | Task::ToDropoff { trip } => Some(trip.trip_id),
        }
    }

    /// Whether the server has this driver on a trip (not merely offered one).
    fn on_trip(&self) -> bool {
        matches!(
            self,
            Task::ToPickup { .. } | Task::Boarding { .. } | Task::ToDropoff { .. }
        )
    }
}

/// Something the server must hear, in order and exactly as meant: an answer to an offer or a
/// trip stage. Sent one at a time; retried while the server says to retry (repeats are
/// idempotent on the server).
#[derive(Debug, Clone)]
struct Report {
    kind: &'static str,
    trip_id: Uuid,
    stage: Option<&'static str>,
    /// When the stage was reached, sent with every attempt so a late one is checked
    /// against where the vehicle was then.
    made_at: i64,
}

/// Wait before re-sending a report the server could not take.
const REPORT_RETRY: Duration = Duration::from_millis(500);

struct Driver {
    id: String,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    rng: StdRng,
    at: Point,
    task: Task,
    /// Where the vehicle is driving and the legs left to get there.
    route: Option<(Point, VecDeque<Leg>)>,
    seq: u64,
    next_id: u64,
    reports: VecDeque<Report>,
    /// The message id of the report awaiting its answer, and when it was sent.
    in_flight: Option<(u64, Instant)>,
    retry_at: Option<Instant>,
}

/// Runs one driver until `stop`.
pub async fn run(
    index: usize,
    token: String,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut rng =
        StdRng::seed_from_u64(settings.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let city = settings.city;
    let at = city.random_point(&mut rng);
    let to = city.random_point(&mut rng);
    let mut driver = Driver {
        id: format!("sim-driver-{index}"),
        settings,
        stats,
        rng,
        at,
        task: Task::Roaming { to },
        route: None,
        seq: 0,
        next_id: 1,
        reports: VecDeque::new(),
        in_flight: None,
        retry_at: None,
    };
    let mut backoff = Backoff::default();
    let mut first = true;
    let mut attempt = 0;
    while !stop.is_cancelled() {
        if !first {
            attempt += 1;
            bump(&driver.stats.reconnects);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = backoff.wait() => {}
            }
        }
        first = false;
        let ws = tokio::select! {
            _ = stop.cancelled() => break,
            ws = client::connect(driver.settings.url_for(index, attempt), &token, driver.settings.source(index), driver.settings.liveness) => ws,
        };
        let Ok(mut ws) = ws else { continue };
        backoff.reset();
        if driver.session(&mut ws, &stop).await.is_ok() {
            break;
        }
    }
    let _ = driver.id;
}

impl Driver {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// One connection; `Ok` when told to stop, `Err` when the link failed.
    async fn session(&mut self, ws: &mut Ws, stop: &CancellationToken) -> anyhow::Result<()> {
        // A report in flight when the link dropped may never have arrived: send it again.
        self.in_flight = None;
        self.retry_at = None;
        let id = self.id();
        let class = self.settings.vehicle_class;
        client::send(
            ws,
            json!({"type": "go_online", "id": id, "vehicle_class": class, "capacity": 4}),
        )
        .await?;
        let period = self.settings.report_every;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_move = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = client::send(ws, json!({"type": "go_offline", "id": self.id()})).await;
                    return Ok(());
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let dt = now.duration_since(last_move);
                    last_move = now;
                    self.advance(ws, dt).await?;
                }
                message = client::next(ws) => match message? {
                    Some(message) => self.on_message(ws, message).await?,
                    None => anyhow::bail!("connection closed"),
                },
            }
        }
    }

    /// Moves, reports the position, and takes the next step of the current task.
    async fn advance(&mut self, ws: &mut Ws, dt: Duration) -> anyhow::Result<()> {
        let seconds = self.settings.speedup * dt.as_secs_f64();
        let target = match &self.task {
            Task::Roaming { to } => Some(*to),
            Task::ToPickup { trip, .. } => Some(trip.pickup),
            Task::ToDropoff { trip } => Some(trip.dropoff),
            Task::Answering { .. } | Task::Boarding { .. } => None,
        };
        let (mut heading, mut speed, mut arrived) = (None, 0.0, false);
        if let Some(target) = target {
            (heading, speed, arrived) = self.drive(target, seconds);
        }
        self.seq += 1;
        client::send(ws, json!({"type": "location", "lat": self.at.lat, "lng": self.at.lng,
            "heading": heading, "speed": speed.min(80.0), "accuracy": 5.0, "ts": now_ms(), "seq": self.seq})).await?;
        bump(&self.stats.updates_sent);

        let now = Instant::now();
        match self.task.clone() {
            Task::Roaming { .. } if arrived => {
                let to = self.settings.city.random_point(&mut self.rng);
                self.task = Task::Roaming { to };
            }
            Task::Answering { trip, at, accept } if now >= at => {
                let kind = if accept {
                    "accept_offer"
                } else {
                    "decline_offer"
                };
                self.reports.push_back(Report {
                    kind,
                    trip_id: trip.trip_id,
                    stage: None,
                    made_at: now_ms(),
                });
                if accept {
                    self.stats
                        .pickup_distance_m
                        .record(self.at.distance_m(&trip.pickup) as u64);
                    self.task = Task::ToPickup {
                        trip,
                        accepted: now,
                    };
                } else {
                    bump(&self.stats.declined);
                    self.roam();
                }
            }
            Task::ToPickup { trip, accepted } if arrived => {
                let simulated = now.duration_since(accepted).as_secs_f64() * self.settings.speedup;
                self.stats
                    .pickup_time_ms
                    .record((simulated * 1000.0) as u64);
                self.progress(ws, &trip, "arrived").await?;
                let boarding = Duration::from_secs_f64(30.0 / self.settings.speedup);
                self.task = Task::Boarding {
                    trip,
                    until: now + boarding,
                };
            }
            Task::Boarding { trip, until } if now >= until => {
                self.progress(ws, &trip, "started").await?;
                self.task = Task::ToDropoff { trip };
            }
            Task::ToDropoff { trip } if arrived => {
                self.progress(ws, &trip, "completed").await?;
                self.roam();
            }
            _ => {}
        }
        self.flush_reports(ws).await
    }

    /// Drives towards `target` for `seconds` of simulated time: along the roads when the run
    /// has a network, else in a straight line. Returns the heading, the speed and whether the
    /// vehicle arrived.
    fn drive(&mut self, target: Point, seconds: f64) -> (Option<f32>, f64, bool) {
        if self.route.as_ref().map(|(to, _)| *to) != Some(target) {
            let legs = match &self.settings.roads {
                Some(network) => network.route(self.at, target),
                None => vec![Leg {
                    to: target,
                    speed_mps: self.settings.speed_mps,
                }],
            };
            self.route = Some((target, legs.into()));
        }
        let Some((_, legs)) = self.route.as_mut() else {
            unreachable!("set above")
        };
        let (mut heading, mut speed) = (None, 0.0);
        let mut left = seconds;
        while let Some(leg) = legs.front().copied() {
            if self.at.distance_m(&leg.to) >= 1.0 {
                heading = Some(city::heading(self.at, leg.to));
            }
            speed = leg.speed_mps;
            let (at, reached) = city::step_towards(self.at, leg.to, leg.speed_mps * left);
            left -= self.at.distance_m(&at) / leg.speed_mps;
            self.at = at;
            if !reached {
                break;
            }
            legs.pop_front();
            if left <= 0.0 {
                break;
            }
        }
        let arrived = legs.is_empty();
        if arrived {
            self.route = None;
        }
        (heading, speed, arrived)
    }

    /// Sends the next report when none awaits an answer.
    async fn flush_reports(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        if let Some((_, sent)) = self.in_flight {
            if sent.elapsed() < self.settings.report_patience {
                return Ok(());
            }
            // Repeats are idempotent on the server: ask again under a new id.
            bump(&self.stats.reports_resent);
            self.in_flight = None;
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        let Some(report) = self.reports.front().cloned() else {
            return Ok(());
        };
        let id = self.id();
        let mut message = json!({"type": report.kind, "id": id, "trip_id": report.trip_id});
        if let Some(stage) = report.stage {
            message["stage"] = json!(stage);
            message["ts"] = json!(report.made_at);
        }
        client::send(ws, message).await?;
        self.in_flight = Some((id, Instant::now()));
        self.retry_at = None;
        Ok(())
    }

    fn roam(&mut self) {
        let to = self.settings.city.random_point(&mut self.rng);
        self.task = Task::Roaming { to };
    }

    async fn progress(
        &mut self,
        ws: &mut Ws,
        trip: &TripView,
        stage: &'static str,
    ) -> anyhow::Result<()> {
        self.reports.push_back(Report {
            kind: "trip_progress",
            trip_id: trip.trip_id,
            stage: Some(stage),
            made_at: now_ms(),
        });
        self.flush_reports(ws).await
    }

    async fn on_message(&mut self, ws: &mut Ws, message: ServerMessage) -> anyhow::Result<()> {
        match message {
            ServerMessage::Offer {
                trip, pickup_eta_s, ..
            } => {
                bump(&self.stats.offers);
                self.stats.pickup_eta_s.record(u64::from(pickup_eta_s));
                if self.task.on_trip() && self.task.trip_id() != Some(trip.trip_id) {
                    // The server offered a driver that is carrying out another trip.
                    bump(&self.stats.double_assigned);
                    let id = self.id();
                    client::send(
                        ws,
                        json!({"type": "decline_offer", "id": id, "trip_id": trip.trip_id}),
                    )
                    .await?;
                    return Ok(());
                }
                if matches!(self.task, Task::Roaming { .. }) {
                    let accept = self.rng.random::<f64>() < self.settings.accept_probability;
                    let delay = self
                        .rng
                        .random_range(0.0..=self.settings.answer_delay.as_secs_f64());
                    self.task = Task::Answering {
                        trip,
                        at: Instant::now() + Duration::from_secs_f64(delay),
                        accept,
                    };
                }
            }
            ServerMessage::TripUpdate { trip } => self.on_trip(trip),
            ServerMessage::SessionState { trips, .. } => {
                // Resumed after a reconnect: carry on with the trip the server says is ours.
                match trips.into_iter().find(|t| t.state.holds_driver()) {
                    Some(trip) => self.resume(trip),
                    None if self.task.trip_id().is_some() => {
                        self.give_up("the session state names no trip for this driver");
                    }
                    None => {}
                }
            }
            ServerMessage::Ack { id, .. } if self.awaits(id) => {
                self.reports.pop_front();
                self.in_flight = None;
                self.flush_reports(ws).await?;
            }
            ServerMessage::Error {
                code,
                id: Some(id),
                message,
            } => {
                bump(&self.stats.errors);
                if !self.awaits(id) {
                    return Ok(());
                }
                self.in_flight = None;
                // Refused as far from the pickup: the next position, sent from there, lets
                // the same report through.
                if code.is_retryable() || code == ErrorCode::NotAtPickup {
                    self.retry_at = Some(Instant::now() + REPORT_RETRY);
                    return Ok(());
                }
                let report = self.reports.pop_front();
                if let Some(report) = &report {
                    tracing::info!(driver = %self.id, trip = %report.trip_id, kind = report.kind,
                        stage = ?report.stage, code = code.as_str(), %message, "report refused");
                }
                if report.is_some_and(|r| r.kind == "accept_offer")
                    && matches!(self.task, Task::ToPickup { .. })
                {
                    // The accept failed (offer gone): back to roaming.
                    self.give_up("the accept was refused");
                }
                self.flush_reports(ws).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether `id` is the report awaiting its answer.
    fn awaits(&self, id: u64) -> bool {
        self.in_flight.is_some_and(|(awaited, _)| awaited == id)
    }

    fn on_trip(&mut self, trip: TripView) {
        let mine = trip.driver_id.as_deref() == Some(self.id.as_str());
        if self.task.trip_id() != Some(trip.trip_id) {
            // The server is the truth: a trip it says this driver carries out (an accept that
            // reached it after the driver had given up on it) is taken up, unless the driver is
            // busy with another, which the double-assignment count already sees.
            let assigned = mine && trip.state.holds_driver() && trip.state != TripState::Offered;
            if assigned && !self.task.on_trip() {
                tracing::info!(driver = %self.id, trip = %trip.trip_id, state = %trip.state, since_ms = now_ms() - trip.updated_at,
                    was = ?self.task.trip_id(), "taking up a trip the server says this driver holds");
                bump(&self.stats.trips_taken_up);
                self.resume(trip);
            }
            return;
        }
        if trip.state.is_terminal() {
            self.roam();
        } else if trip.state == TripState::Requested {
            self.give_up("the trip is back to searching");
        } else if !mine {
            self.give_up("the trip is another driver's");
        }
    }

    /// Leaves the current trip for roaming; `why` is logged when the driver was carrying it
    /// out, as a trip the server still holds it to would otherwise be dropped silently.
    fn give_up(&mut self, why: &str) {
        if self.task.on_trip()
            && let Some(trip) = self.task.trip_id()
        {
            tracing::info!(driver = %self.id, %trip, why, "leaving a trip");
        }
        self.roam();
    }

    fn resume(&mut self, trip: TripView) {
        if self.task.trip_id() == Some(trip.trip_id) {
            return;
        }
        self.task = match trip.state {
            TripState::Offered => Task::Answering {
                trip,
                at: Instant::now(),
                accept: true,
            },
            TripState::Accepted => Task::ToPickup {
                trip,
                accepted: Instant::now(),
            },
            TripState::Arrived => Task::Boarding {
                trip,
                until: Instant::now(),
            },
            _ => Task::ToDropoff { trip },
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use protocol::Point;
    use protocol::client::{Role, ServerMessage, SessionLimits};
    use protocol::trip::{TripState, TripView};
    use serde_json::Value;
    use tokio::sync::mpsc;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_util::sync::CancellationToken;
    use uuid::Uuid;

    use crate::Settings;
    use crate::stats::{Stats, get};

    const CENTER: Point = Point::new(52.52, 13.405);

    fn trip(trip_id: Uuid, state: TripState) -> TripView {
        TripView {
            trip_id,
            state,
            rider_id: "r1".into(),
            driver_id: Some("sim-driver-0".into()),
            pickup: CENTER,
            dropoff: Point::new(52.53, 13.41),
            vehicle_class: None,
            min_capacity: None,
            region: protocol::GeoConfig::default().region_of(CENTER).unwrap(),
            created_at: 0,
            updated_at: 0,
            version: 1,
            ended_by: None,
            end_reason: None,
        }
    }

    /// A scripted gateway for one driver: welcomes it, acknowledges `go_online`, then sends
    /// `after_online` and passes on every trip command it reads, answering with `answer`.
    async fn gateway(
        after_online: ServerMessage,
        answer: impl Fn(&Value) -> Option<ServerMessage> + Send + 'static,
    ) -> (String, mpsc::UnboundedReceiver<Value>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let (heard, commands) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let _hello = ws.next().await;
            let welcome = ServerMessage::Welcome {
                version: 1,
                role: Role::Driver,
                subject: "sim-driver-0".into(),
                limits: SessionLimits {
                    max_message_bytes: 16_384,
                    messages_per_sec: 50,
                },
            };
            ws.send(Message::text(welcome.to_json())).await.unwrap();
            while let Some(Ok(frame)) = ws.next().await {
                let Ok(text) = frame.to_text() else { continue };
                let Ok(message) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                let id = message["id"].as_u64().unwrap_or_default();
                match message["type"].as_str() {
                    Some("go_online") => {
                        let ack = ServerMessage::Ack {
                            id,
                            trip: None,
                            changed: true,
                        };
                        ws.send(Message::text(ack.to_json())).await.unwrap();
                        ws.send(Message::text(after_online.to_json()))
                            .await
                            .unwrap();
                    }
                    Some("location") | None => {}
                    Some(_) => {
                        if let Some(reply) = answer(&message) {
                            ws.send(Message::text(reply.to_json())).await.unwrap();
                        }
                        if heard.send(message).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        (url, commands)
    }

    fn settings(url: &str) -> Arc<Settings> {
        let mut settings = Settings::new(url, b"unused", CENTER);
        settings.accept_probability = 1.0;
        settings.answer_delay = Duration::ZERO;
        settings.report_every = Duration::from_millis(50);
        settings.report_patience = Duration::from_millis(300);
        settings.city.radius_m = 500.0;
        settings.speedup = 200.0;
        Arc::new(settings)
    }

    async fn next(commands: &mut mpsc::UnboundedReceiver<Value>) -> Value {
        tokio::time::timeout(Duration::from_secs(10), commands.recv())
            .await
            .expect("the driver sent nothing more")
            .expect("the gateway ended")
    }

    #[tokio::test]
    async fn a_report_with_no_answer_is_sent_again() {
        let trip_id = Uuid::new_v4();
        let offer = ServerMessage::Offer {
            trip: trip(trip_id, TripState::Offered),
            expires_at: 0,
            pickup_eta_s: 60,
        };
        // The first accept gets no answer, as one lost on the way.
        let (url, mut commands) = gateway(offer, |_| None).await;
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let driver = tokio::spawn(super::run(
            0,
            "t".into(),
            settings(&url),
            stats.clone(),
            stop.clone(),
        ));
        let first = next(&mut commands).await;
        assert_eq!(first["type"], "accept_offer");
        let again = next(&mut commands).await;
        assert_eq!(again["type"], "accept_offer");
        assert_eq!(again["trip_id"], trip_id.to_string());
        assert_ne!(again["id"], first["id"], "a new message id");
        assert_eq!(get(&stats.reports_resent), 1);
        stop.cancel();
        driver.await.unwrap();
    }

    #[tokio::test]
    async fn a_trip_the_server_says_the_driver_holds_is_carried_out() {
        let trip_id = Uuid::new_v4();
        // An accept the driver had given up on reached the server: it says the trip is ours.
        let assigned = ServerMessage::TripUpdate {
            trip: trip(trip_id, TripState::Accepted),
        };
        let (url, mut commands) = gateway(assigned, |message| {
            Some(ServerMessage::Ack {
                id: message["id"].as_u64()?,
                trip: None,
                changed: true,
            })
        })
        .await;
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let driver = tokio::spawn(super::run(
            0,
            "t".into(),
            settings(&url),
            stats.clone(),
            stop.clone(),
        ));
        let report = next(&mut commands).await;
        assert_eq!(report["type"], "trip_progress");
        assert_eq!(report["stage"], "arrived");
        assert_eq!(report["trip_id"], trip_id.to_string());
        assert_eq!(get(&stats.trips_taken_up), 1);
        stop.cancel();
        driver.await.unwrap();
    }

    /// A 100 m square around CENTER's south-west corner, every side two-way but the south
    /// side, one-way eastbound.
    fn square() -> roads::RoadNetwork {
        let north = 100.0 / 111_320.0;
        let east = 100.0 / (111_320.0 * CENTER.lat.to_radians().cos());
        let points = vec![
            CENTER,
            Point::new(CENTER.lat + north, CENTER.lng),
            Point::new(CENTER.lat + north, CENTER.lng + east),
            Point::new(CENTER.lat, CENTER.lng + east),
        ];
        let sides = [(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2), (0, 3)];
        roads::from_segments(points, &sides.map(|(a, b)| (a, b, 10.0))).unwrap()
    }

    #[test]
    fn with_a_road_network_a_vehicle_drives_the_roads_at_their_speeds() {
        let network = Arc::new(square());
        let (start, target) = (network.point(3), network.point(0));
        let mut settings = Settings::new("ws://unused/ws", b"unused", CENTER);
        settings.roads = Some(network.clone());
        let mut driver = super::Driver {
            id: "sim-driver-0".into(),
            settings: Arc::new(settings),
            stats: Arc::new(Stats::default()),
            rng: rand::SeedableRng::seed_from_u64(1),
            at: start,
            task: super::Task::Roaming { to: target },
            route: None,
            seq: 0,
            next_id: 1,
            reports: Default::default(),
            in_flight: None,
            retry_at: None,
        };
        // One simulated second at a time: the one-way south side is closed westbound, so
        // the vehicle goes round by the north-west corner, 300 m at 10 m/s.
        let mut seconds = 0;
        let mut passed_north_west = false;
        loop {
            let (_, speed, arrived) = driver.drive(target, 1.0);
            seconds += 1;
            passed_north_west |= driver.at.distance_m(&network.point(1)) < 6.0;
            if arrived {
                break;
            }
            assert!((speed - 10.0).abs() < 0.1, "{speed}");
            assert!(seconds < 100, "never arrived; at {:?}", driver.at);
        }
        assert!(passed_north_west, "went round the block");
        assert_eq!(driver.at, target);
        assert!((29..=31).contains(&seconds), "took {seconds} s");
    }
}
