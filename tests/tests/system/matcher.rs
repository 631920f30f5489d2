//! The matcher with the real trips service, PostgreSQL and NATS.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use h3o::{CellIndex, LatLng};
use kit::Bus;
use protocol::bus::{CellCounts, Position, QueryReply, TripCommand, TripQuery, TripReply};
use protocol::client::ServerMessage;
use protocol::trip::{TripStage, TripState, TripView, VehicleClass};
use protocol::{GeoConfig, Point, Subjects, codec};
use tests::services::{Isolated, matcher_config, start_matcher, start_trips, trips_config};
use tests::{NatsServer, Patience, TestDb, eventually, unique_prefix};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BERLIN: Point = Point::new(52.520_008, 13.404_954);
const PATIENCE: Duration = Duration::from_secs(20);

fn center(cell: CellIndex) -> Point {
    let ll = LatLng::from(cell);
    Point::new(ll.lat(), ll.lng())
}

async fn command(bus: &Bus, command: TripCommand) -> TripReply {
    bus.command(&command, Duration::from_secs(10)).await
}

async fn trip(bus: &Bus, trip_id: Uuid) -> Option<TripView> {
    match bus
        .query(&TripQuery::Trip { trip_id }, Duration::from_secs(5))
        .await
    {
        QueryReply::Trip(trip) => trip,
        _ => None,
    }
}

async fn online(bus: &Bus, driver: &str) {
    command(bus, tests::driver_online(driver)).await.unwrap();
}

/// Publishes each driver's position every 200 ms, as gateways would, until `stop`.
fn report_positions(bus: Bus, drivers: Vec<(String, Point)>, stop: CancellationToken) {
    tokio::spawn(async move {
        let geo = GeoConfig::default();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        for seq in 1.. {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            for (id, point) in &drivers {
                let (region, cell) = geo.locate(*point).unwrap();
                let position = Position {
                    vehicle_class: Some(VehicleClass::Standard),
                    ..tests::position(id, *point, seq)
                };
                let _ = bus
                    .publish(bus.subjects.location(region, cell), &position)
                    .await;
            }
        }
    });
}

/// Plays every driver's app: accepts each offer and completes the trip.
fn drive_offers(bus: Bus, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut inbox = bus
            .client
            .subscribe(format!("{}.user.driver.*", bus.subjects.prefix()))
            .await
            .unwrap();
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => break,
                m = inbox.next() => match m { Some(m) => m, None => break },
            };
            let Ok(ServerMessage::Offer { trip, .. }) = serde_json::from_slice(&message.payload)
            else {
                continue;
            };
            let bus = bus.clone();
            tokio::spawn(async move {
                let driver_id = trip.driver_id.clone().unwrap();
                let id = trip.trip_id;
                let accepted = command(
                    &bus,
                    TripCommand::AnswerOffer {
                        trip_id: id,
                        driver_id: driver_id.clone(),
                        accept: true,
                    },
                )
                .await;
                if accepted.is_err() {
                    return;
                }
                for stage in [TripStage::Arrived, TripStage::Started, TripStage::Completed] {
                    let _ = command(
                        &bus,
                        TripCommand::Progress {
                            trip_id: id,
                            driver_id: driver_id.clone(),
                            stage,
                            position: None,
                        },
                    )
                    .await;
                }
            });
        }
    });
}

#[tokio::test]
async fn a_rider_just_inside_a_region_gets_a_driver_just_across_the_border() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let _trips = start_trips(trips_config(&db.url, &nats.url(), &prefix)).await;
    let geo = GeoConfig::default();
    let region = geo.region_of(BERLIN).unwrap();
    // A cell just outside the region, and a cell of the region touching it.
    let outside = geo.halo_cells(region, 1)[0];
    let inside = outside
        .grid_disk::<Vec<_>>(1)
        .into_iter()
        .find(|c| geo.region_of_cell(*c) == region)
        .unwrap();
    assert_ne!(geo.region_of_cell(outside), region);
    let mut config = matcher_config(&nats.url(), &prefix, vec![region]);
    config.halo_rings = 1;
    let _matcher = start_matcher(config).await;

    let bus = Bus::new(
        async_nats::connect(nats.url()).await.unwrap(),
        Subjects::new(&prefix).unwrap(),
    );
    let mut counts = bus
        .client
        .subscribe(bus.subjects.cell_counts(region))
        .await
        .unwrap();
    online(&bus, "across").await;
    let stop = CancellationToken::new();
    report_positions(
        bus.clone(),
        vec![("across".into(), center(outside))],
        stop.clone(),
    );

    let created = command(
        &bus,
        TripCommand::CreateTrip {
            rider_id: "rider".into(),
            idempotency_key: "k".into(),
            pickup: center(inside),
            dropoff: BERLIN,
            vehicle_class: None,
            min_capacity: None,
        },
    )
    .await
    .unwrap()
    .trip
    .unwrap();
    assert_eq!(created.region, region);
    let offered = eventually(
        "the driver across the border is offered the trip",
        PATIENCE,
        || async {
            trip(&bus, created.trip_id)
                .await
                .filter(|t| t.state == TripState::Offered)
        },
    )
    .await;
    assert_eq!(offered.driver_id.as_deref(), Some("across"));

    // Per-cell counts of the region show the open request's cell.
    let inside_hex: u64 = inside.into();
    let patience = Patience::new("counts with the open request", PATIENCE);
    loop {
        patience.check();
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), counts.next()).await
        else {
            continue;
        };
        let counts: CellCounts = codec::decode(&message.payload).unwrap();
        if counts
            .cells
            .iter()
            .any(|c| c.cell == inside_hex && c.open_requests == 0 && c.vehicles == 0)
        {
            // The request is offered by now, so the cell shows no open request: fine either way.
            break;
        }
        if counts.cells.iter().any(|c| c.cell == inside_hex) {
            break;
        }
    }
    stop.cancel();
}

#[tokio::test]
async fn with_one_of_two_replicas_killed_mid_load_every_request_ends() {
    tests::init_logs();
    let nats = NatsServer::start();
    let db = TestDb::create().await;
    let prefix = unique_prefix();
    let mut trips = trips_config(&db.url, &nats.url(), &prefix);
    trips.sweep.interval = Duration::from_millis(200);
    trips.sweep.quiet_after = Duration::from_secs(1);
    trips.sweep.offer_grace = Duration::from_millis(300);
    trips.store.search_timeout = Duration::from_secs(40);
    let _trips = start_trips(trips).await;
    let geo = GeoConfig::default();
    // Pickups lie within a few km of the centre: serve every region that reaches.
    let regions = geo.regions_covering(BERLIN, 5_000.0).unwrap();
    let replica = || {
        let mut config = matcher_config(&nats.url(), &prefix, regions.clone());
        config.settings.offer_ttl = Duration::from_secs(2);
        config
    };
    let mut first = Isolated::start_matcher(replica());
    let _second = Isolated::start_matcher(replica());

    let bus = Bus::new(
        async_nats::connect(nats.url()).await.unwrap(),
        Subjects::new(&prefix).unwrap(),
    );
    let stop = CancellationToken::new();
    let mut drivers = Vec::new();
    for i in 0..10 {
        let id = format!("driver-{i}");
        online(&bus, &id).await;
        drivers.push((
            id,
            Point::new(BERLIN.lat + f64::from(i) * 0.002, BERLIN.lng),
        ));
    }
    report_positions(bus.clone(), drivers, stop.clone());
    drive_offers(bus.clone(), stop.clone());

    let mut trip_ids = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(75));
    for i in 0..40 {
        pace.tick().await;
        if i == 12 {
            first.kill();
        }
        let created = command(
            &bus,
            TripCommand::CreateTrip {
                rider_id: format!("rider-{i}"),
                idempotency_key: "k".into(),
                pickup: Point::new(BERLIN.lat - 0.003, BERLIN.lng + f64::from(i % 7) * 0.001),
                dropoff: Point::new(52.5, 13.45),
                vehicle_class: None,
                min_capacity: None,
            },
        )
        .await
        .unwrap();
        trip_ids.push(created.trip.unwrap().trip_id);
    }
    let client = db.client().await;
    eventually("every request terminal", Duration::from_secs(60), || async {
        let open: i64 = client
            .query_one("SELECT count(*) FROM trips WHERE state NOT IN ('completed', 'cancelled', 'expired')", &[])
            .await
            .ok()?
            .get(0);
        (open == 0).then_some(())
    })
    .await;
    stop.cancel();
    let completed: i64 = client
        .query_one("SELECT count(*) FROM trips WHERE state = 'completed'", &[])
        .await
        .unwrap()
        .get(0);
    // On failure, say what became of the requests that were not served.
    let unserved: Vec<String> = client
        .query(
            "SELECT t.trip_id::text || ' ' || t.state || ' (' || coalesce(t.end_reason, '') \
             || ') attempts ' || t.dispatch_attempts || ': ' || coalesce((SELECT string_agg( \
             coalesce(e.from_state, '-') || '>' || e.to_state || ':' || coalesce(e.driver_id, ''), \
             ' ' ORDER BY e.version) FROM trip_events e WHERE e.trip_id = t.trip_id), '') \
             FROM trips t WHERE t.state <> 'completed'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        completed, 40,
        "all requests served by the surviving replica: {unserved:#?}"
    );
    // No driver ever held two trips at once.
    let overlapping: i64 = client
        .query_one(
            "SELECT count(*) FROM trips a JOIN trips b ON a.driver_id = b.driver_id AND a.trip_id < b.trip_id \
             WHERE a.accepted_at < b.completed_at AND b.accepted_at < a.completed_at",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(overlapping, 0, "a driver held two trips at once");
    let ids: HashSet<Uuid> = trip_ids.into_iter().collect();
    assert_eq!(ids.len(), 40);
}
