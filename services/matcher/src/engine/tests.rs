//! The engine's offer cycle on paused time, against a fake trips service.

use super::*;
use protocol::Point;
use protocol::bus::{CommandError, TripOutcome};
use protocol::trip::TripView;
use std::sync::Mutex;

const BERLIN: Point = Point::new(52.52, 13.405);

/// Answers every command as a trips service would for an always-free driver, and records it.
#[derive(Debug, Clone, Default)]
struct Fake {
    commands: Arc<Mutex<Vec<TripCommand>>>,
}

impl Link for Fake {
    async fn command(&self, command: TripCommand) -> TripReply {
        self.commands.lock().unwrap().push(command.clone());
        match command {
            TripCommand::Offer {
                trip_id, driver_id, ..
            } => {
                let mut trip = trip(trip_id);
                trip.state = TripState::Offered;
                trip.driver_id = Some(driver_id);
                Ok(TripOutcome {
                    trip: Some(trip),
                    changed: true,
                })
            }
            TripCommand::ExpireOffer { trip_id, .. } => Ok(TripOutcome {
                trip: Some(trip(trip_id)),
                changed: true,
            }),
            _ => Err(CommandError::new(ErrorCode::Internal, "unexpected")),
        }
    }
    async fn publish_counts(&self, _: CellIndex, _: CellCounts) {}
}

fn trip(trip_id: Uuid) -> TripView {
    TripView {
        trip_id,
        state: TripState::Requested,
        rider_id: "r".into(),
        driver_id: None,
        pickup: BERLIN,
        dropoff: Point::new(52.5, 13.45),
        vehicle_class: None,
        min_capacity: None,
        region: GeoConfig::default().region_of(BERLIN).unwrap(),
        created_at: 0,
        updated_at: 0,
        version: 1,
        ended_by: None,
        end_reason: None,
    }
}

fn driver_at(id: &str, point: Point) -> Position {
    Position {
        driver_id: id.into(),
        lat: point.lat,
        lng: point.lng,
        heading: None,
        speed: None,
        accuracy: None,
        ts: now_ms(),
        seq: 1,
        status: VehicleStatus::Available,
        vehicle_class: None,
        capacity: 4,
        trip_id: None,
        received_us: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_offer_is_expired_after_its_ttl() {
    let (tx, mut rx) = mpsc::channel(16);
    let fake = Fake::default();
    let settings = Settings {
        offer_ttl: Duration::from_secs(10),
        ..Default::default()
    };
    let geo = GeoConfig::default();
    let regions = [geo.region_of(BERLIN).unwrap()].into();
    let mut engine = Engine::new(
        settings,
        geo,
        regions,
        h3o::Resolution::Eight,
        Arc::new(assign::StraightLine::default()),
        fake.clone(),
        tx,
    );
    engine.on_input(Input::Position(driver_at("d1", Point::new(52.521, 13.405))));
    let trip_id = Uuid::new_v4();
    engine.on_input(Input::Request(RideRequest {
        trip: trip(trip_id),
        excluded_drivers: vec![],
        deadline: now_ms() + 600_000,
        attempt: 1,
        queue_head: None,
    }));
    // Greedy claims at once.
    let claimed = rx.recv().await.unwrap();
    assert!(matches!(&claimed, Input::Claimed { driver, .. } if driver == "d1"));
    engine.on_input(claimed);
    // The driver says nothing; nothing happens before the offer's time is up.
    tokio::time::advance(Duration::from_secs(9)).await;
    engine.on_tick().await;
    assert!(
        !fake
            .commands
            .lock()
            .unwrap()
            .iter()
            .any(|c| matches!(c, TripCommand::ExpireOffer { .. }))
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    engine.on_tick().await;
    let expired = rx.recv().await.unwrap();
    assert!(matches!(expired, Input::OfferExpired { .. }));
    assert!(
        fake.commands
            .lock()
            .unwrap()
            .iter()
            .any(|c| matches!(c, TripCommand::ExpireOffer { driver_id, .. } if driver_id == "d1"))
    );
    engine.on_input(expired);
    assert_eq!(
        engine.waiting(),
        0,
        "the re-published request decides what comes next"
    );
    assert!(engine.reserved.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_search_without_drivers_expires_at_its_deadline() {
    let (tx, _rx) = mpsc::channel(16);
    let fake = Fake::default();
    let geo = GeoConfig::default();
    let mut engine = Engine::new(
        Settings::default(),
        geo,
        HashSet::new(),
        h3o::Resolution::Eight,
        Arc::new(assign::StraightLine::default()),
        fake.clone(),
        tx,
    );
    let trip_id = Uuid::new_v4();
    engine.on_input(Input::Request(RideRequest {
        trip: trip(trip_id),
        excluded_drivers: vec![],
        deadline: now_ms() - 1,
        attempt: 1,
        queue_head: None,
    }));
    engine.on_tick().await;
    assert_eq!(engine.waiting(), 0);
    // The expiry is sent from a spawned task: let it run.
    for _ in 0..100 {
        if !fake.commands.lock().unwrap().is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        fake.commands
            .lock()
            .unwrap()
            .iter()
            .any(|c| matches!(c, TripCommand::Expire { trip_id: t, .. } if *t == trip_id))
    );
}

#[tokio::test(start_paused = true)]
async fn excluded_busy_and_unfit_drivers_are_never_offered() {
    let (tx, mut rx) = mpsc::channel(16);
    let fake = Fake::default();
    let geo = GeoConfig::default();
    let mut engine = Engine::new(
        Settings::default(),
        geo,
        HashSet::new(),
        h3o::Resolution::Eight,
        Arc::new(assign::StraightLine::default()),
        fake,
        tx,
    );
    engine.on_input(Input::Position(driver_at(
        "near-excluded",
        Point::new(52.5201, 13.405),
    )));
    engine.on_input(Input::Position(driver_at(
        "near-busy",
        Point::new(52.5202, 13.405),
    )));
    let mut van = driver_at("near-small", Point::new(52.5203, 13.405));
    van.capacity = 2;
    engine.on_input(Input::Position(van));
    engine.on_input(Input::Position(driver_at("far", Point::new(52.54, 13.405))));
    engine.on_input(Input::Busy(vec![DriverRecord {
        driver_id: "near-busy".into(),
        online: true,
        vehicle_class: None,
        capacity: Some(4),
        active_trip: Some(Uuid::new_v4()),
    }]));
    let mut wanted = trip(Uuid::new_v4());
    wanted.min_capacity = Some(3);
    engine.on_input(Input::Request(RideRequest {
        trip: wanted,
        excluded_drivers: vec!["near-excluded".into()],
        deadline: now_ms() + 60_000,
        attempt: 2,
        queue_head: None,
    }));
    let Input::Claimed { driver, .. } = rx.recv().await.unwrap() else {
        panic!()
    };
    assert_eq!(driver, "far");
}

/// Answers offers only after a while, as a trips service under load would.
#[derive(Debug, Clone, Default)]
struct Slow {
    answered: Arc<Mutex<Vec<TripCommand>>>,
}

impl Link for Slow {
    async fn command(&self, command: TripCommand) -> TripReply {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let reply = Fake::default().command(command.clone()).await;
        self.answered.lock().unwrap().push(command);
        reply
    }
    async fn publish_counts(&self, _: CellIndex, _: CellCounts) {}
}

#[tokio::test(start_paused = true)]
async fn stopping_waits_for_the_claims_in_flight() {
    let (tx, _rx) = mpsc::channel(16);
    let slow = Slow::default();
    let mut engine = Engine::new(
        Settings::default(),
        GeoConfig::default(),
        HashSet::new(),
        h3o::Resolution::Eight,
        Arc::new(assign::StraightLine::default()),
        slow.clone(),
        tx,
    );
    engine.on_input(Input::Position(driver_at("d1", Point::new(52.521, 13.405))));
    engine.on_input(Input::Request(RideRequest {
        trip: trip(Uuid::new_v4()),
        excluded_drivers: vec![],
        deadline: now_ms() + 60_000,
        attempt: 1,
        queue_head: None,
    }));
    assert!(
        slow.answered.lock().unwrap().is_empty(),
        "the claim is in flight"
    );
    engine.finish().await;
    let answered = slow.answered.lock().unwrap();
    assert!(
        matches!(answered.as_slice(), [TripCommand::Offer { driver_id, .. }] if driver_id == "d1"),
        "{answered:?}"
    );
}

/// Which driver the engine claims for a request at `BERLIN` under `eta`, with two free
/// drivers: one 100 m east of the pickup on a one-way street that leads away from it (300 m
/// around the block by road), one 250 m north on a two-way street.
async fn claimed_under(eta: Arc<dyn EtaModel>) -> String {
    let (tx, mut rx) = mpsc::channel(16);
    let geo = GeoConfig::default();
    let regions = [geo.region_of(BERLIN).unwrap()].into();
    let mut engine = Engine::new(
        Settings::default(),
        geo,
        regions,
        h3o::Resolution::Eight,
        eta,
        Fake::default(),
        tx,
    );
    let (east, north) = block();
    engine.on_input(Input::Position(driver_at("east", east)));
    engine.on_input(Input::Position(driver_at("north", north)));
    engine.on_input(Input::Request(RideRequest {
        trip: trip(Uuid::new_v4()),
        excluded_drivers: vec![],
        deadline: now_ms() + 600_000,
        attempt: 1,
        queue_head: None,
    }));
    match rx.recv().await.unwrap() {
        Input::Claimed { driver, .. } => driver,
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// The two drivers' positions of [`claimed_under`].
fn block() -> (Point, Point) {
    let offset = |north_m: f64, east_m: f64| {
        Point::new(
            BERLIN.lat + north_m / 111_320.0,
            BERLIN.lng + east_m / (111_320.0 * BERLIN.lat.to_radians().cos()),
        )
    };
    (offset(0.0, 100.0), offset(250.0, 0.0))
}

fn block_roads() -> roads::RoadNetwork {
    let (east, north) = block();
    let nw = Point::new(north.lat - 150.0 / 111_320.0, BERLIN.lng);
    let ne = Point::new(nw.lat, east.lng);
    // 0 pickup, 1 north-west corner, 2 north-east, 3 east driver, 4 north driver.
    let points = vec![BERLIN, nw, ne, east, north];
    let v = 10.0;
    let two_way = [(0, 1), (1, 2), (2, 3), (1, 4)];
    let mut segments: Vec<(u32, u32, f64)> = two_way
        .iter()
        .flat_map(|&(a, b)| [(a, b, v), (b, a, v)])
        .collect();
    segments.push((0, 3, v)); // one-way, away from the pickup
    roads::from_segments(points, &segments).unwrap()
}

#[tokio::test(start_paused = true)]
async fn ranking_by_road_eta_prefers_the_driver_the_roads_bring_sooner() {
    assert_eq!(
        claimed_under(Arc::new(assign::StraightLine::default())).await,
        "east",
        "as the crow flies the east driver is nearer"
    );
    let roads = assign::Roads(Arc::new(block_roads()));
    let (east, north) = block();
    let etas = roads.etas_to_s(&[east, north], BERLIN);
    assert!(etas[0] > 29.0 && etas[1] < 26.0, "{etas:?}");
    assert_eq!(
        claimed_under(Arc::new(roads)).await,
        "north",
        "by road the east driver must go round the block"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_in_a_queue_zone_goes_to_the_head_of_the_queue_first() {
    let (tx, mut rx) = mpsc::channel(16);
    let fake = Fake::default();
    let geo = GeoConfig::default();
    let regions = [geo.region_of(BERLIN).unwrap()].into();
    let mut engine = Engine::new(
        Settings::default(),
        geo,
        regions,
        h3o::Resolution::Eight,
        Arc::new(assign::StraightLine::default()),
        fake.clone(),
        tx,
    );
    // d1 is nearer the pickup; d2 waits at the head of the queue farther off.
    engine.on_input(Input::Position(driver_at(
        "d1",
        Point::new(52.5201, 13.405),
    )));
    engine.on_input(Input::Position(driver_at("d2", Point::new(52.523, 13.405))));
    let first = Uuid::new_v4();
    engine.on_input(Input::Request(RideRequest {
        trip: trip(first),
        excluded_drivers: vec![],
        deadline: now_ms() + 600_000,
        attempt: 1,
        queue_head: Some("d2".into()),
    }));
    let claimed = rx.recv().await.unwrap();
    assert!(
        matches!(&claimed, Input::Claimed { driver, .. } if driver == "d2"),
        "{claimed:?}"
    );
    // A head that is not there (or was excluded) leaves the usual search.
    let second = Uuid::new_v4();
    engine.on_input(Input::Request(RideRequest {
        trip: trip(second),
        excluded_drivers: vec!["d3".into()],
        deadline: now_ms() + 600_000,
        attempt: 1,
        queue_head: Some("d3".into()),
    }));
    let claimed = rx.recv().await.unwrap();
    assert!(
        matches!(&claimed, Input::Claimed { driver, .. } if driver == "d1"),
        "{claimed:?}"
    );
}
