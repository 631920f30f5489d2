//! Replicas on one database: stale caches, transitions sharing a statement, writes that
//! outlive their commands.

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

/// A transition decided in time but still queued for the writer when its command gave up
/// (the caller was told the database did not answer) is never written: the caller's retry
/// decides on what the database holds, and a late write could contradict its answer.
#[tokio::test]
async fn a_transition_whose_command_gave_up_is_not_written_later() {
    let db = TestDb::create().await;
    let mut config = trips_config(&db.url, "nats://127.0.0.1:1", &unique_prefix());
    config.store.writers = 1;
    config.store.command_timeout = Duration::from_millis(500);
    let store = store_on(&db, &config);
    for driver in ["driver-1", "driver-2", "driver-3"] {
        assert!(store.execute(online(driver)).await.unwrap().changed);
    }
    let trip_of = |rider: &'static str| {
        let store = store.clone();
        async move {
            store
                .execute(create(rider, "k"))
                .await
                .unwrap()
                .trip
                .unwrap()
                .trip_id
        }
    };
    let (blocker, trip, barrier) = (
        trip_of("rider-1").await,
        trip_of("rider-2").await,
        trip_of("rider-3").await,
    );
    assert!(
        store
            .execute(offer(trip, "driver-1", 60_000))
            .await
            .unwrap()
            .changed
    );

    // The one writer is stuck: its statement waits for a row another transaction holds.
    let mut holder = db.client().await;
    let held = holder.transaction().await.unwrap();
    held.execute(
        "SELECT 1 FROM trips WHERE trip_id = $1 FOR UPDATE",
        &[&blocker],
    )
    .await
    .unwrap();
    let stuck = store.execute(offer(blocker, "driver-2", 60_000)).await;
    assert_eq!(code(&stuck), Some(ErrorCode::Unavailable), "{stuck:?}");
    let pg = db.client().await;
    db.until_a_session_waits_for_a_lock().await;

    // The accept is decided and queued behind it, and its command gives up.
    let given_up = store.execute(accept(trip, "driver-1")).await;
    assert_eq!(
        code(&given_up),
        Some(ErrorCode::Unavailable),
        "{given_up:?}"
    );

    // The writer goes on; once a command queued after the accept is answered, the writer
    // has dealt with the accept.
    held.rollback().await.unwrap();
    assert!(
        store
            .execute(offer(barrier, "driver-3", 60_000))
            .await
            .unwrap()
            .changed
    );
    let state: String = pg
        .query_one("SELECT state FROM trips WHERE trip_id = $1", &[&trip])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        state, "offered",
        "the given-up accept was written after all"
    );

    // The retry is what accepts it.
    let retried = store.execute(accept(trip, "driver-1")).await.unwrap();
    assert!(retried.changed);
    assert_eq!(retried.trip.unwrap().state, TripState::Accepted);
}

/// A refusal is final, so it waits for a write of the trip that is still being committed (an
/// earlier attempt of the same command, say): an accept retried while its first attempt
/// commits is answered as done, not refused as an expired offer that then takes effect.
#[tokio::test]
async fn a_refusal_waits_for_a_write_of_the_trip_in_flight() {
    let db = TestDb::create().await;
    let config = trips_config(&db.url, "nats://127.0.0.1:1", &unique_prefix());
    let store = store_on(&db, &config);
    assert!(store.execute(online("driver-1")).await.unwrap().changed);
    let trip = store
        .execute(create("rider-1", "k"))
        .await
        .unwrap()
        .trip
        .unwrap()
        .trip_id;
    let expires_at = now_ms() + 300;
    assert!(
        store
            .execute(offer(trip, "driver-1", 300))
            .await
            .unwrap()
            .changed
    );
    eventually("the offer expired", PATIENCE, || async {
        (now_ms() > expires_at + 50).then_some(())
    })
    .await;

    // The first attempt's write, accepted before the expiry, is being committed.
    let mut writer = db.client().await;
    let first = writer.transaction().await.unwrap();
    let updated = first
        .execute(
            "UPDATE trips SET state = 'accepted', version = version + 1, offer_expires_at = NULL \
             WHERE trip_id = $1 AND state = 'offered'",
            &[&trip],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);

    // The retry reads the trip as offered, and expired; it must wait for that write.
    let retry = tokio::spawn({
        let store = store.clone();
        async move { store.execute(accept(trip, "driver-1")).await }
    });
    db.until_a_session_waits_for_a_lock().await;
    first.commit().await.unwrap();
    let answer = retry.await.unwrap().unwrap();
    assert!(!answer.changed, "{answer:?}");
    let after = answer.trip.unwrap();
    assert_eq!(after.state, TripState::Accepted);
    assert_eq!(after.driver_id.as_deref(), Some("driver-1"));
}
