//! Scheduled jobs: stored at once, published to matchers only at the pickup time less the
//! lead time (through a restart of the trips service in between), and expired with a reason
//! when no driver took them by the end of their pickup window.

use futures_util::StreamExt;
use protocol::bus::RideRequest;
use protocol::{GeoConfig, Point, codec};

use super::*;

async fn next_request(requests: &mut async_nats::Subscriber) -> RideRequest {
    let message = tokio::time::timeout(PATIENCE, requests.next())
        .await
        .expect("a ride request in time")
        .unwrap();
    codec::decode(&message.payload).unwrap()
}

#[tokio::test]
async fn a_scheduled_job_waits_through_a_restart_is_dispatched_ahead_of_pickup_and_expires_after_its_window()
 {
    let lead_ms = 1_000;
    let mut f = Fixture::start(|config| {
        config.store.schedule_lead = Duration::from_millis(lead_ms as u64);
    })
    .await;
    let (_, key) = f.api_key(&["jobs:write"]).await;
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

    let pickup_at = now_ms() + 5_000;
    let mut body = job("later");
    body["pickup_at"] = json!(pickup_at);
    body["window_s"] = json!(5);
    let scheduled = f
        .call(Method::POST, "/v1/jobs", Some(&key), Some(&body))
        .await;
    assert_eq!(scheduled.status, StatusCode::CREATED, "{}", scheduled.body);
    assert_eq!(scheduled.body["state"], "requested");
    assert_eq!(scheduled.body["pickup_at"], pickup_at);
    assert_eq!(scheduled.body["pickup_window_end"], pickup_at + 5_000);
    let scheduled_id = scheduled.body["trip_id"].as_str().unwrap().to_owned();
    // A job for now, created after it, is published at once: the first request seen.
    let now_job = f
        .call(Method::POST, "/v1/jobs", Some(&key), Some(&job("now")))
        .await;
    let now_id = now_job.body["trip_id"].as_str().unwrap().to_owned();
    let first = next_request(&mut requests).await;
    assert_eq!(first.trip.trip_id.to_string(), now_id);

    // The trips service restarts while the scheduled job waits; its sweeper picks it up.
    f.restart_trips().await;
    let dispatch_at = pickup_at - lead_ms;
    let request = loop {
        let request = next_request(&mut requests).await;
        if request.trip.trip_id.to_string() == scheduled_id {
            break request;
        }
    };
    let received = now_ms();
    assert!(
        received >= dispatch_at,
        "published {} ms before it was due",
        dispatch_at - received
    );
    assert_eq!(request.attempt, 1);
    assert_eq!(request.deadline, pickup_at + 5_000);

    // No driver: it expires once its window is over, saying why.
    let expired = eventually("the scheduled job expired", PATIENCE, || async {
        let answer = f
            .call(
                Method::GET,
                &format!("/v1/jobs/{scheduled_id}"),
                Some(&key),
                None,
            )
            .await;
        (answer.body["state"] == "expired").then_some(answer.body)
    })
    .await;
    assert_eq!(
        expired["end_reason"],
        "no driver found by the end of the pickup window"
    );
    assert!(expired["updated_at"].as_i64().unwrap() >= pickup_at + 5_000);

    // Schedules that cannot be kept are refused.
    for (patch, why) in [
        (json!({"pickup_at": now_ms() - 3_600_000}), "already over"),
        (
            json!({"pickup_at": now_ms() + 40 * 86_400_000_i64}),
            "30 days",
        ),
        (json!({"window_s": 60}), "needs pickup_at"),
    ] {
        let mut body = job("bad");
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let answer = f
            .call(Method::POST, "/v1/jobs", Some(&key), Some(&body))
            .await;
        assert_problem(&answer, StatusCode::BAD_REQUEST, "invalid_field");
        assert!(
            answer.body["detail"].as_str().unwrap().contains(why),
            "{}",
            answer.body
        );
    }
}
