//! The trips store on real PostgreSQL: transitions per second and breadcrumb rows per second,
//! each beside a plain-insert baseline measured in the same run on the same server.
//!
//! Run with `cargo xtask bench` (or `cargo bench -p tests --bench trips` with
//! `DISPATCH_TEST_DATABASE_URL` pointing at a server). Prints a table and writes
//! `target/bench/trips.json`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use protocol::bus::TripCommand;
use protocol::time::now_ms;
use protocol::trip::TripStage;
use protocol::{Point, Subjects};
use tests::TestDb;
use tokio::sync::Semaphore;
use trips::breadcrumbs::{self, Crumb};
use uuid::Uuid;

const TRIPS: usize = 2_000;
const CONCURRENCY: usize = 32;
const CRUMBS: usize = 1_000_000;
const CRUMB_BATCH: usize = 5_000;
const BASELINE_ROWS: usize = 50_000;

async fn run_all<F, Fut>(n: usize, f: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let work = f(i);
        tasks.push(tokio::spawn(async move {
            work.await;
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let db = TestDb::create().await;
    let pool = trips::db::pool(
        &db.url,
        &trips::db::PoolSettings {
            max_size: CONCURRENCY,
            ..Default::default()
        },
    )
    .unwrap();
    let store = trips::Store::new(
        pool.clone(),
        Default::default(),
        Subjects::new("bench").unwrap(),
        Default::default(),
    );

    // Transitions: TRIPS trips, each created and taken through its five transitions by its
    // own driver, CONCURRENCY at a time.
    for d in 0..TRIPS {
        store
            .execute(tests::driver_online(&format!("d{d}")))
            .await
            .unwrap();
    }
    let s = store.clone();
    let elapsed = run_all(TRIPS, move |i| {
        let store = s.clone();
        async move {
            let trip = store
                .execute(TripCommand::CreateTrip {
                    rider_id: format!("r{i}"),
                    idempotency_key: "k".into(),
                    pickup: Point::new(52.52, 13.40),
                    dropoff: Point::new(52.50, 13.45),
                    vehicle_class: None,
                    min_capacity: None,
                })
                .await
                .unwrap()
                .trip
                .unwrap();
            let driver_id = format!("d{i}");
            let trip_id = trip.trip_id;
            let commands = [
                TripCommand::Offer {
                    trip_id,
                    driver_id: driver_id.clone(),
                    expires_at: now_ms() + 60_000,
                    pickup_eta_s: 60,
                },
                TripCommand::AnswerOffer {
                    trip_id,
                    driver_id: driver_id.clone(),
                    accept: true,
                },
                TripCommand::Progress {
                    trip_id,
                    driver_id: driver_id.clone(),
                    stage: TripStage::Arrived,
                    position: None,
                },
                TripCommand::Progress {
                    trip_id,
                    driver_id: driver_id.clone(),
                    stage: TripStage::Started,
                    position: None,
                },
                TripCommand::Progress {
                    trip_id,
                    driver_id,
                    stage: TripStage::Completed,
                    position: None,
                },
            ];
            for command in commands {
                assert!(store.execute(command).await.unwrap().changed);
            }
        }
    })
    .await;
    let transitions_per_s = (TRIPS * 6) as f64 / elapsed.as_secs_f64();
    // The events of one write statement share its transaction id.
    let per_statement: f64 = pool
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*)::float8 / count(DISTINCT xmin::text) FROM trip_events \
             WHERE from_state IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // Baseline: one-row INSERT statements into a bare table, as many, as concurrent.
    pool.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE plain (id uuid PRIMARY KEY, state text, at timestamptz)")
        .await
        .unwrap();
    let p = pool.clone();
    let elapsed = run_all(TRIPS * 6, move |_| {
        let pool = p.clone();
        async move {
            let client = pool.get().await.unwrap();
            client
                .execute(
                    "INSERT INTO plain VALUES ($1, 'requested', now())",
                    &[&Uuid::new_v4()],
                )
                .await
                .unwrap();
        }
    })
    .await;
    let plain_inserts_per_s = (TRIPS * 6) as f64 / elapsed.as_secs_f64();

    // Breadcrumbs: binary COPY in batches against single-row inserts.
    let trip_id = Uuid::new_v4();
    let crumb = |i: usize| Crumb {
        trip_id,
        driver_id: "d1".into(),
        seq: i as i64,
        lat: 52.5 + i as f64 * 1e-7,
        lng: 13.4,
        heading: Some(90.0),
        speed: Some(10.0),
        recorded_at: SystemTime::now(),
    };
    let rows: Vec<Crumb> = (0..CRUMB_BATCH).map(crumb).collect();
    let started = Instant::now();
    for _ in 0..CRUMBS / CRUMB_BATCH {
        breadcrumbs::write(&pool, &rows).await.unwrap();
    }
    let crumbs_per_s = CRUMBS as f64 / started.elapsed().as_secs_f64();
    let p = pool.clone();
    let elapsed = run_all(BASELINE_ROWS, move |i| {
        let pool = p.clone();
        let c = crumb(i);
        async move {
            let client = pool.get().await.unwrap();
            client
                .execute(
                    "INSERT INTO breadcrumbs (trip_id, driver_id, seq, lat, lng, heading, speed, recorded_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[&c.trip_id, &c.driver_id, &c.seq, &c.lat, &c.lng, &c.heading, &c.speed, &c.recorded_at],
                )
                .await
                .unwrap();
        }
    })
    .await;
    let crumb_inserts_per_s = BASELINE_ROWS as f64 / elapsed.as_secs_f64();

    println!("| figure | value | baseline (plain inserts) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| trip transitions/s ({TRIPS} trips x 6, {CONCURRENCY} concurrent) | {transitions_per_s:.0} | {plain_inserts_per_s:.0} | {:.2} |",
        transitions_per_s / plain_inserts_per_s
    );
    println!(
        "| breadcrumb rows/s (binary COPY, {CRUMB_BATCH}-row batches) | {crumbs_per_s:.0} | {crumb_inserts_per_s:.0} | {:.2} |",
        crumbs_per_s / crumb_inserts_per_s
    );
    println!("(transitions other than creates: {per_statement:.1} per write statement on average)");
    let report = serde_json::json!({
        "trips": {
            "transitions_per_sec": transitions_per_s,
            "plain_inserts_per_sec": plain_inserts_per_s,
            "transitions_per_write_statement": per_statement,
            "breadcrumb_rows_per_sec": crumbs_per_s,
            "breadcrumb_plain_inserts_per_sec": crumb_inserts_per_s,
        }
    });
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        format!("{dir}/trips.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    drop(store);
    pool.close();
}
