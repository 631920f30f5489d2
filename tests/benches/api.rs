//! The integrator API on real PostgreSQL and NATS, in three runs:
//! - `GET /v1/jobs/{id}` with an API key at 2,000 requests/s (open loop, latency from each
//!   request's scheduled time), beside `GET /healthz` on the same server at the same rate (the
//!   HTTP floor) and the same row read straight from a connection pool (the database floor);
//! - `POST /v1/jobs`, creates per second from 64 concurrent clients, each answer checked and
//!   every job then counted in the database, beside the store creating jobs directly (no HTTP,
//!   no authentication) in the same run.
//!
//! The trips service runs as its own release process (`TRIPS_BIN`, built by `cargo xtask
//! bench`), as integrators' servers are elsewhere; it shares the machine's cores with the load,
//! PostgreSQL and nats-server. The reads go to a server and database holding only the jobs
//! read (scheduled for the next day, so none is being searched for); each run's creates go
//! to a fresh server and database, stopped once counted. Run with `cargo xtask bench api` (or `cargo bench -p tests
//! --bench api` with `DISPATCH_TEST_DATABASE_URL`, `NATS_SERVER_BIN` and a release
//! `dispatch-trips`). Writes `target/bench/api.json`.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use protocol::client::Role;
use protocol::time::now_ms;
use protocol::{Point, Subjects};
use serde_json::{Value, json};
use tests::services::trips_config;
use tests::{NatsServer, TestDb, unique_prefix};
use tokio::sync::{Mutex, Semaphore};
use trips::store::{JobOrigin, NewTrip};
use uuid::Uuid;

const RUNS: usize = 3;
const RATE: u64 = 2_000;
const GET_SECONDS: u64 = 10;
const CREATES: usize = 10_000;
const CONCURRENCY: usize = 64;
const SEEDED: usize = 1_000;

fn job(n: usize) -> Value {
    let spread = (n % 100) as f64 * 0.0005;
    json!({
        "pickup": {"lat": 52.50 + spread, "lng": 13.40 + spread},
        "dropoff": {"lat": 52.52 - spread, "lng": 13.42},
        "customer_id": format!("customer-{}", n % 500),
        "external_ref": format!("order-{n}"),
    })
}

/// Latencies in microseconds, p50 and p99 in milliseconds.
fn summary(histogram: &Histogram<u64>) -> Value {
    json!({
        "p50_ms": histogram.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_ms": histogram.value_at_quantile(0.99) as f64 / 1000.0,
        "max_ms": histogram.max() as f64 / 1000.0,
        "count": histogram.len(),
    })
}

/// Runs `request(i)` `RATE` times a second for `GET_SECONDS`, each timed from when it was due;
/// the latencies and how many failed.
async fn open_loop<F, Fut>(request: F) -> (Histogram<u64>, usize)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3).unwrap()));
    let failed = Arc::new(AtomicUsize::new(0));
    let total = (RATE * GET_SECONDS) as usize;
    let per_tick = (RATE / 1000) as usize;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        for _ in 0..per_tick {
            let due = started + Duration::from_micros(sent as u64 * 1_000_000 / RATE);
            let work = request(sent);
            let histogram = histogram.clone();
            let failed = failed.clone();
            tasks.push(tokio::spawn(async move {
                if !work.await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                let micros = due.elapsed().as_micros() as u64;
                histogram.lock().await.record(micros.max(1)).unwrap();
            }));
            sent += 1;
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let histogram = histogram.lock().await.clone();
    (histogram, failed.load(Ordering::Relaxed))
}

/// Runs `work(i)` for `0..n` with `CONCURRENCY` at once; how long it took.
async fn closed_loop<F, Fut>(n: usize, work: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(CONCURRENCY));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let work = work(i);
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

/// A release trips service in a process of its own, stopped when dropped.
struct Server {
    _process: tests::process::TripsProcess,
    base: String,
}

impl Server {
    async fn start(db: &TestDb, nats: &NatsServer, prefix: &str) -> Self {
        let process = tests::process::TripsProcess::start(
            "api",
            (&db.url, &nats.url(), prefix),
            &["--pool-size", "32"],
            &[("TRIPS_API_KEY_RATE", "1000000")],
        )
        .await
        .unwrap();
        Self {
            base: format!("http://{}", process.http),
            _process: process,
        }
    }

    /// A new API key with `jobs:write`: its token and id.
    async fn api_key(&self, http: &reqwest::Client) -> (String, String) {
        let dispatcher = tests::client::token(Role::Dispatcher, "bench");
        let created: Value = http
            .post(format!("{}/v1/api-keys", self.base))
            .bearer_auth(&dispatcher)
            .json(&json!({"name": "bench", "scopes": ["jobs:write"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            created["token"].as_str().unwrap().to_owned(),
            created["key_id"].as_str().unwrap().to_owned(),
        )
    }
}

/// The count a `SELECT count(*)` query answers.
async fn count_in(pool: &deadpool_postgres::Pool, query: &str) -> i64 {
    pool.get()
        .await
        .unwrap()
        .query_one(query, &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::main]
async fn main() {
    let nats = NatsServer::start();
    let prefix = unique_prefix();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    // The reads: a server and database of their own, holding jobs scheduled for tomorrow, so
    // nothing else runs on them while they are read (an immediate job that no matcher answers
    // is re-published by the sweeper every few seconds until it expires).
    let read_db = TestDb::create().await;
    let config = {
        let mut config = trips_config(&read_db.url, &nats.url(), &prefix);
        config.pool.max_size = 32;
        config
    };
    let reader = Server::start(&read_db, &nats, &prefix).await;
    let base = reader.base.clone();
    let (key, _) = reader.api_key(&http).await;
    let key = Arc::new(key);
    let tomorrow = now_ms() + 24 * 3600 * 1000;
    let mut ids = Vec::with_capacity(SEEDED);
    for n in 0..SEEDED {
        let mut body = job(n);
        body["pickup_at"] = json!(tomorrow);
        let answer: Value = http
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(key.as_str())
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(answer["trip_id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let ids = Arc::new(ids);
    let pool = trips::db::pool(&read_db.url, &config.pool).unwrap();
    let columns = Arc::new(trips::v1::jobs::columns());
    const SEARCHING: &str = "SELECT count(*) FROM trips WHERE state = 'requested' \
                             AND dispatch_attempts > 0 AND search_deadline > now()";

    let mut runs = Vec::new();
    for run in 0..RUNS {
        println!("run {} of {RUNS}", run + 1);
        let (get, get_failed) = open_loop(|i| {
            let request = http
                .get(format!("{base}/v1/jobs/{}", ids[i % ids.len()]))
                .bearer_auth(key.as_str());
            async move {
                match request.send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        let (health, health_failed) = open_loop(|_| {
            let request = http.get(format!("{base}/healthz"));
            async move {
                match request.send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        let (sql, sql_failed) = open_loop(|i| {
            let pool = pool.clone();
            let id = ids[i % ids.len()];
            let columns = columns.clone();
            async move {
                let Ok(client) = pool.get().await else {
                    return false;
                };
                let query = format!("SELECT {columns} FROM trips WHERE trip_id = $1");
                let Ok(statement) = client.prepare_cached(&query).await else {
                    return false;
                };
                client
                    .query_opt(&statement, &[&id])
                    .await
                    .is_ok_and(|r| r.is_some())
            }
        })
        .await;
        let searching_during_reads = count_in(&pool, SEARCHING).await;

        // The creates: a fresh database and server per run, so that no run's reads or creates
        // share the machine with an earlier run's 20,000 searching requests, and no run
        // starts on a bigger table than the one before. Each create has its own idempotency
        // key; every answer must be a 201.
        let write_db = TestDb::create().await;
        let writer = Server::start(&write_db, &nats, &prefix).await;
        let (write_key, key_id) = writer.api_key(&http).await;
        let write_key = Arc::new(write_key);
        let accepted = Arc::new(AtomicUsize::new(0));
        let elapsed = closed_loop(CREATES, |i| {
            let request = http
                .post(format!("{}/v1/jobs", writer.base))
                .bearer_auth(write_key.as_str())
                .header("Idempotency-Key", format!("run{run}-{i}"))
                .json(&job(i));
            let accepted = accepted.clone();
            async move {
                if let Ok(r) = request.send().await
                    && r.status() == 201
                {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
        let api_rate = CREATES as f64 / elapsed.as_secs_f64();
        // Stopped before the store's turn, so its sweeper does not re-publish the jobs above
        // while the store creates.
        drop(writer);
        let write_pool = trips::db::pool(&write_db.url, &config.pool).unwrap();
        let stored = count_in(
            &write_pool,
            &format!("SELECT count(*) FROM trips WHERE created_by = 'key:{key_id}'"),
        )
        .await;

        // The same creates straight into the store.
        let store = trips::Store::new(
            write_pool.clone(),
            config.geo,
            Subjects::new(&prefix).unwrap(),
            config.store.clone(),
        );
        let store_ok = Arc::new(AtomicUsize::new(0));
        let store_elapsed = closed_loop(CREATES, |i| {
            let store = store.clone();
            let ok = store_ok.clone();
            let body = job(i);
            async move {
                let point =
                    |v: &Value| Point::new(v["lat"].as_f64().unwrap(), v["lng"].as_f64().unwrap());
                let new = NewTrip {
                    rider_id: body["customer_id"].as_str().unwrap().to_owned(),
                    idempotency_key: format!("direct/run{run}-{i}"),
                    pickup: point(&body["pickup"]),
                    dropoff: point(&body["dropoff"]),
                    vehicle_class: None,
                    min_capacity: None,
                    job: Some(JobOrigin {
                        created_by: "direct".into(),
                        actor_id: "direct".into(),
                        external_ref: body["external_ref"].as_str().map(str::to_owned),
                        notes: None,
                        schedule: None,
                    }),
                };
                if store.create_job(new).await.is_ok_and(|o| o.changed) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
        let store_rate = CREATES as f64 / store_elapsed.as_secs_f64();
        drop(store);
        write_pool.close();
        drop(write_db);
        let result = json!({
            "get_job": summary(&get),
            "get_job_failed": get_failed,
            "healthz": summary(&health),
            "healthz_failed": health_failed,
            "sql_read": summary(&sql),
            "sql_read_failed": sql_failed,
            "searching_during_reads": searching_during_reads,
            "creates_per_sec": api_rate,
            "creates_accepted": accepted.load(Ordering::Relaxed),
            "creates_stored": stored,
            "creates_lost": CREATES as i64 - stored,
            "store_creates_per_sec": store_rate,
            "store_creates_ok": store_ok.load(Ordering::Relaxed),
        });
        println!(
            "  GET /v1/jobs/{{id}} at {RATE}/s: p50 {:.2} ms, p99 {:.2} ms ({} failed); /healthz p99 {:.2} ms; \
             the row from the pool p99 {:.2} ms; requests searching meanwhile: {searching_during_reads}",
            result["get_job"]["p50_ms"].as_f64().unwrap(),
            result["get_job"]["p99_ms"].as_f64().unwrap(),
            get_failed,
            result["healthz"]["p99_ms"].as_f64().unwrap(),
            result["sql_read"]["p99_ms"].as_f64().unwrap(),
        );
        println!(
            "  POST /v1/jobs: {api_rate:.0}/s, {} of {CREATES} accepted, {stored} stored; the store \
             alone {store_rate:.0}/s",
            accepted.load(Ordering::Relaxed),
        );
        runs.push(result);
    }
    let worst = |path: &[&str], pick: fn(f64, f64) -> f64, start: f64| {
        runs.iter().fold(start, |acc, run| {
            let value = path.iter().fold(run, |v, k| &v[k]).as_f64().unwrap();
            pick(acc, value)
        })
    };
    let summary = json!({
        "rate_per_sec": RATE,
        "seconds_per_rate": GET_SECONDS,
        "creates_per_run": CREATES,
        "concurrency": CONCURRENCY,
        "runs": runs,
        "worst_get_job_p99_ms": worst(&["get_job", "p99_ms"], f64::max, 0.0),
        "worst_healthz_p99_ms": worst(&["healthz", "p99_ms"], f64::max, 0.0),
        "lowest_creates_per_sec": worst(&["creates_per_sec"], f64::min, f64::INFINITY),
        "lowest_store_creates_per_sec": worst(&["store_creates_per_sec"], f64::min, f64::INFINITY),
        "most_creates_lost": worst(&["creates_lost"], f64::max, 0.0),
    });
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        format!("{dir}/api.json"),
        serde_json::to_string_pretty(&summary).unwrap(),
    )
    .unwrap();
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    drop(reader);
}
