//! Replicas on one database: stale caches, transitions sharing a statement.

use super::*;

/// Two trips processes over one database, each with its own cache of trips: a cache that is
/// behind never decides anything on its own, and a trip's history stays one chain in version
/// order though its event ids come from two blocks.
#[tokio::test]
async fn replicas_with_stale_caches_keep_one_history() {
    let db = TestDb::create().await;
    let config = trips_config(&db.url, "nats://127.0.0.1:1", &unique_prefix());
    let replica = || store_on(&db, &config);
    let (a, b) = (replica(), replica());
    assert!(a.execute(online("driver-1")).await.unwrap().changed);
    let progress = |trip_id, stage| TripCommand::Progress {
        trip_id,
        driver_id: "driver-1".into(),
        stage,
        position: None,
    };

    // A remembers the trip as requested; B offers it.
    let id = a
        .execute(create("rider-1", "k"))
        .await
        .unwrap()
        .trip
        .unwrap()
        .trip_id;
    assert!(
        b.execute(offer(id, "driver-1", 60_000))
            .await
            .unwrap()
            .changed
    );
    // On A's cache there is no offer to accept: A reads again and accepts.
    let accepted = a.execute(accept(id, "driver-1")).await.unwrap();
    assert!(accepted.changed, "accepted on the fresh trip");
    assert_eq!(accepted.trip.unwrap().state, TripState::Accepted);
    // B remembers it as offered: arriving is refused there, so B reads again.
    let arrived = b.execute(progress(id, TripStage::Arrived)).await.unwrap();
    assert!(arrived.changed);
    // A remembers it as accepted; starting needs arrived.
    assert!(
        a.execute(progress(id, TripStage::Started))
            .await
            .unwrap()
            .changed
    );
    // B remembers it as arrived, where a dispatcher's cancel applies too: its write finds the
    // version moved, and the cancel is decided again on the trip under way.
    let cancelled = b
        .execute(TripCommand::Cancel {
            trip_id: id,
            actor: Actor::Dispatcher,
            actor_id: "dispatcher-1".into(),
            reason: Some("test".into()),
        })
        .await
        .unwrap();
    assert!(cancelled.changed);
    let trip = cancelled.trip.unwrap();
    assert_eq!((trip.state, trip.version), (TripState::Cancelled, 6));

    let rows = db
        .client()
        .await
        .query(
            "SELECT version, event_id, coalesce(from_state, '-'), to_state FROM trip_events \
                 WHERE trip_id = $1 ORDER BY version",
            &[&id],
        )
        .await
        .unwrap();
    let chain: Vec<(i64, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(2), r.get(3)))
        .collect();
    let expected = [
        (1, "-", "requested"),
        (2, "requested", "offered"),
        (3, "offered", "accepted"),
        (4, "accepted", "arrived"),
        (5, "arrived", "in_progress"),
        (6, "in_progress", "cancelled"),
    ];
    assert_eq!(
        chain,
        expected.map(|(v, from, to)| (v, from.to_owned(), to.to_owned()))
    );
    let ids: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert!(
        !ids.is_sorted(),
        "ids from two replicas' blocks interleave, so only the version orders events: {ids:?}"
    );
}

/// Transitions decided while a write is in flight are written together, and one that cannot
/// be written (its driver holds another trip) fails alone while the rest of its statement is
/// written.
#[tokio::test]
async fn concurrent_transitions_share_a_statement_and_a_bad_one_fails_alone() {
    const TRIPS: usize = 20;
    let db = TestDb::create().await;
    let mut config = trips_config(&db.url, "nats://127.0.0.1:1", &unique_prefix());
    config.store.writers = 1;
    let store = store_on(&db, &config);
    // A driver busy with a trip of its own.
    assert!(store.execute(online("busy")).await.unwrap().changed);
    let held = store
        .execute(create("rider-busy", "k"))
        .await
        .unwrap()
        .trip
        .unwrap();
    assert!(
        store
            .execute(offer(held.trip_id, "busy", 60_000))
            .await
            .unwrap()
            .changed
    );

    // Rounds of TRIPS offers sent at once, the last to the busy driver, until one statement
    // has written several (they share a transaction id); each round must come out the same.
    let pg = db.client().await;
    eventually("offers written together", PATIENCE, || {
        let (store, pg) = (store.clone(), &pg);
        async move {
            let round = Uuid::new_v4().simple().to_string();
            let mut trip_ids = Vec::new();
            for k in 0..TRIPS {
                assert!(
                    store
                        .execute(online(&format!("{round}-{k}")))
                        .await
                        .unwrap()
                        .changed
                );
                let trip = store
                    .execute(create(&format!("{round}-{k}"), "k"))
                    .await
                    .unwrap();
                trip_ids.push(trip.trip.unwrap().trip_id);
            }
            let replies =
                futures_util::future::join_all(trip_ids.iter().enumerate().map(|(k, &trip_id)| {
                    let driver = match k {
                        k if k == TRIPS - 1 => "busy".to_owned(),
                        k => format!("{round}-{k}"),
                    };
                    store.execute(offer(trip_id, &driver, 60_000))
                }))
                .await;
            let (bad, good) = replies.split_last().unwrap();
            assert_eq!(code(bad), Some(ErrorCode::Conflict), "{bad:?}");
            assert!(
                good.iter().all(|r| r.as_ref().is_ok_and(|o| o.changed)),
                "{good:?}"
            );
            let states: Vec<String> = pg
                .query(
                    "SELECT state FROM trips WHERE trip_id = ANY($1) ORDER BY state",
                    &[&trip_ids],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(states.iter().filter(|s| *s == "offered").count(), TRIPS - 1);
            assert_eq!(states.iter().filter(|s| *s == "requested").count(), 1);
            let statements: i64 = pg
                .query_one(
                    "SELECT count(DISTINCT xmin::text) FROM trip_events \
                     WHERE trip_id = ANY($1) AND to_state = 'offered'",
                    &[&trip_ids],
                )
                .await
                .unwrap()
                .get(0);
            (statements < (TRIPS - 1) as i64).then_some(())
        }
    })
    .await;
}
