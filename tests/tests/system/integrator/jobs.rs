//! Jobs through `/v1`: created once per idempotency key, published to matchers like a rider's
//! request, listed in pages, cancelled with a reason that lands on the timeline.

use futures_util::StreamExt;
use protocol::bus::RideRequest;
use protocol::{GeoConfig, Point, codec};

use super::*;

#[tokio::test]
async fn a_job_is_created_once_per_idempotency_key_and_reaches_the_matchers() {
    let f = Fixture::start(|_| {}).await;
    let (key_id, key) = f.api_key(&["jobs:write"]).await;
    let region = GeoConfig::default()
        .region_of(Point::new(52.520008, 13.404954))
        .unwrap();
    let mut requests = f
        .bus
        .client
        .subscribe(f.bus.subjects.ride_requests(region))
        .await
        .unwrap();
    f.bus.client.flush().await.unwrap();

    let create = |idempotency: &'static str, body: Value| {
        let request = f
            .http
            .post(f.url("/v1/jobs"))
            .bearer_auth(&key)
            .header("Idempotency-Key", idempotency)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let body: Value = response.json().await.unwrap();
            Answer {
                status,
                headers,
                body,
            }
        }
    };
    let first = create("order-1001", job("order-1001")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let job_id = first.body["trip_id"].as_str().unwrap().to_owned();
    assert_eq!(first.headers["location"], format!("/v1/jobs/{job_id}"));
    assert_eq!(first.body["state"], "requested");
    assert_eq!(first.body["created_by"], format!("key:{key_id}"));
    assert_eq!(first.body["rider_id"], "customer-1");
    assert_eq!(first.body["external_ref"], "order-1001");
    assert_eq!(first.body["notes"], "<b>ring twice</b>");
    // A retry is the same job, and says so.
    let retry = create("order-1001", job("order-1001")).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.body["trip_id"], job_id.as_str());
    // The same key for another pickup is a conflict.
    let mut moved = job("order-1001");
    moved["pickup"]["lat"] = json!(52.53);
    let conflict = create("order-1001", moved).await;
    assert_problem(&conflict, StatusCode::CONFLICT, "conflict");
    // The same key used by another API key is another job.
    let (_, other) = f.api_key(&["jobs:write"]).await;
    let elsewhere = f
        .call(Method::POST, "/v1/jobs", Some(&other), Some(&job("x")))
        .await;
    assert_eq!(elsewhere.status, StatusCode::CREATED);
    assert_ne!(elsewhere.body["trip_id"], job_id.as_str());

    // Matchers got the request once for this job, as for a rider's.
    let request = tokio::time::timeout(PATIENCE, async {
        loop {
            let message = requests.next().await.unwrap();
            let request: RideRequest = codec::decode(&message.payload).unwrap();
            if request.trip.trip_id.to_string() == job_id {
                return request;
            }
        }
    })
    .await
    .expect("the job's request reached the matchers");
    assert_eq!(request.attempt, 1);

    // In the database: one trip, whose first event names the key.
    let pg = f.db.client().await;
    let rows = pg
        .query(
            "SELECT e.actor, e.actor_id FROM trips t JOIN trip_events e USING (trip_id) \
             WHERE t.external_ref = 'order-1001'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "dispatcher");
    assert_eq!(rows[0].get::<_, String>(1), format!("key:{key_id}"));
}

#[tokio::test]
async fn jobs_page_with_cursors_and_cancel_with_a_reason() {
    let f = Fixture::start(|_| {}).await;
    let (key_id, key) = f.api_key(&["jobs:write"]).await;
    let mut created = Vec::new();
    for n in 0..5 {
        let reference = format!("order-{n}");
        let answer = f
            .call(Method::POST, "/v1/jobs", Some(&key), Some(&job(&reference)))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        created.push(answer.body["trip_id"].as_str().unwrap().to_owned());
    }
    // A rider's trip is not a job.
    f.bus
        .command(
            &protocol::bus::TripCommand::CreateTrip {
                rider_id: "rider-1".into(),
                idempotency_key: "k".into(),
                pickup: Point::new(52.52, 13.40),
                dropoff: Point::new(52.5, 13.45),
                vehicle_class: None,
                min_capacity: None,
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    // Pages of two, newest first, each job once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=2&cursor={c}"),
            None => "/v1/jobs?limit=2".into(),
        };
        let page = f.call(Method::GET, &path, Some(&key), None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        pages += 1;
        for item in page.body["items"].as_array().unwrap() {
            seen.push(item["trip_id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    // Filters.
    let one = f
        .call(
            Method::GET,
            "/v1/jobs?external_ref=order-3",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(one.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(one.body["items"][0]["trip_id"], created[3].as_str());
    let bad_cursor = f
        .call(
            Method::GET,
            "/v1/jobs?cursor=bm90LWEtY3Vyc29y",
            Some(&key),
            None,
        )
        .await;
    assert_problem(&bad_cursor, StatusCode::BAD_REQUEST, "invalid_field");
    // The dispatcher's trip list holds the rider's trip as well.
    let all = f
        .call(
            Method::GET,
            "/v1/trips?limit=500",
            Some(&dispatcher()),
            None,
        )
        .await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 6);

    // Cancelled with a reason; the timeline says who and why.
    let target = &created[1];
    let cancelled = f
        .call(
            Method::POST,
            &format!("/v1/jobs/{target}/cancel"),
            Some(&key),
            Some(&json!({"reason": "customer called"})),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["state"], "cancelled");
    assert_eq!(cancelled.body["end_reason"], "customer called");
    let again = f
        .call(
            Method::POST,
            &format!("/v1/jobs/{target}/cancel"),
            Some(&key),
            None,
        )
        .await;
    assert_problem(&again, StatusCode::CONFLICT, "invalid_transition");
    let timeline = f
        .call(
            Method::GET,
            &format!("/v1/trips/{target}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(timeline.status, StatusCode::OK, "{}", timeline.body);
    let events = timeline.body["events"].as_array().unwrap();
    let last = events.last().unwrap();
    assert_eq!(last["to"], "cancelled");
    assert_eq!(last["actor"], "dispatcher");
    assert_eq!(last["actor_id"], format!("key:{key_id}"));
    assert_eq!(last["reason"], "customer called");
    let only_cancelled = f
        .call(Method::GET, "/v1/jobs?state=cancelled", Some(&key), None)
        .await;
    let items = only_cancelled.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["trip_id"], target.as_str());
}
