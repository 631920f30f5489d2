//! Zone events from the gateways: recorded against where each driver is known to be
//! (`zone_presence`), and written to the outbox for integrators in the same transaction, which
//! queues their webhooks ([`crate::outbox::write`]): their deliveries can start as soon as it
//! commits.
//!
//! The presence table makes each crossing one event: an enter for a zone the driver is
//! already in, an exit from one it is not in, or a second dwell repeats what is recorded and
//! is dropped. So a gateway's retry of a batch whose answer was lost, or a driver that
//! reconnects to another gateway inside a zone, publishes nothing twice.
//!
//! A queue zone's drivers wait in the order they were recorded entering it ([`queue`]): online,
//! holding no trip. Every enter or exit of a queue zone tells each of its drivers its place
//! (`queue_place`); a request with its pickup inside is offered to the head first.

use std::collections::BTreeSet;

use deadpool_postgres::{GenericClient, Pool};
use protocol::Subjects;
use protocol::bus::{ZoneEvent, ZoneTransition};
use protocol::client::{Role, ServerMessage};
use protocol::events::{Event, EventType, ExitReason, ZoneRef};
use protocol::time::UnixMillis;
use protocol::zone::ZoneKind;
use serde::Serialize;
use uuid::Uuid;

use crate::error::StoreError;
use crate::messages::{Outgoing, public_event, to_user};
use crate::meters as m;
use crate::outbox::Publisher;

/// Most events a gateway sends in one batch.
pub const MAX_BATCH: usize = 1000;

/// The public event of a zone event.
pub fn to_public(event: &ZoneEvent) -> Event {
    let (kind, reason) = match event.transition {
        ZoneTransition::Enter => (EventType::ZoneEnter, None),
        ZoneTransition::Exit(reason) => (EventType::ZoneExit, Some(reason)),
        ZoneTransition::Dwell => (EventType::ZoneDwell, None),
    };
    Event {
        id: event.id.to_string(),
        kind,
        at: event.at,
        driver_id: Some(event.driver_id.clone()),
        zone: Some(ZoneRef {
            zone_id: event.zone_id,
            name: event.zone_name.clone(),
            kind: event.zone_kind,
        }),
        position: event.position,
        reason,
        trip: None,
        from: None,
        actor: None,
        actor_id: None,
        distance_m: None,
        flagged: false,
    }
}

/// Records `events` in order, with the new ones' messages and webhook deliveries; returns how
/// many were new.
pub async fn record(
    pool: &Pool,
    subjects: &Subjects,
    publisher: &Publisher,
    events: &[ZoneEvent],
) -> Result<u32, StoreError> {
    let mut client = pool.get().await?;
    let enter = client
        .prepare_cached(
            "INSERT INTO zone_presence (driver_id, zone_id, entered_at) \
             VALUES ($1, $2, to_timestamp($3::int8 / 1000.0)) ON CONFLICT DO NOTHING",
        )
        .await?;
    let exit = client
        .prepare_cached("DELETE FROM zone_presence WHERE driver_id = $1 AND zone_id = $2")
        .await?;
    let dwell = client
        .prepare_cached(
            "UPDATE zone_presence SET dwelt = true \
             WHERE driver_id = $1 AND zone_id = $2 AND NOT dwelt",
        )
        .await?;
    let tx = client.transaction().await?;
    // Sent together (the connection pipelines them) and carried out in order.
    let changes = futures_util::future::try_join_all(events.iter().map(|event| {
        let (tx, enter, exit, dwell) = (&tx, &enter, &exit, &dwell);
        async move {
            match event.transition {
                ZoneTransition::Enter => {
                    tx.execute(enter, &[&event.driver_id, &event.zone_id, &event.at])
                        .await
                }
                ZoneTransition::Exit(_) => {
                    tx.execute(exit, &[&event.driver_id, &event.zone_id]).await
                }
                ZoneTransition::Dwell => {
                    tx.execute(dwell, &[&event.driver_id, &event.zone_id]).await
                }
            }
        }
    }))
    .await?;
    let mut out = Vec::new();
    let mut queues_moved: BTreeSet<(Uuid, String)> = BTreeSet::new();
    for (event, changed) in events.iter().zip(changes) {
        let public = to_public(event);
        let outcome = if changed == 1 { "recorded" } else { "repeated" };
        metrics::counter!(m::ZONE_EVENTS, "type" => public.kind.as_str(), "outcome" => outcome)
            .increment(1);
        if changed == 1 {
            out.push(public_event(subjects, &public));
            if event.zone_kind == ZoneKind::Queue && event.transition != ZoneTransition::Dwell {
                queues_moved.insert((event.zone_id, event.zone_name.clone()));
            }
        }
    }
    let recorded = out.len() as u32;
    // Each queue that moved tells its drivers, and those who left it, their place.
    for &(zone_id, ref name) in &queues_moved {
        let queue = queue(&tx, zone_id, &[], MAX_QUEUE_TOLD).await?;
        let length = queue.len() as u32;
        for queued in &queue {
            let place = ServerMessage::QueuePlace {
                zone_id,
                zone_name: name.clone(),
                place: queued.place,
                length,
            };
            out.push(to_user(subjects, Role::Driver, &queued.driver_id, &place));
        }
        for event in events
            .iter()
            .filter(|e| e.zone_id == zone_id && matches!(e.transition, ZoneTransition::Exit(_)))
        {
            if queue.iter().any(|q| q.driver_id == event.driver_id) {
                continue;
            }
            let left = ServerMessage::QueuePlace {
                zone_id,
                zone_name: name.clone(),
                place: 0,
                length,
            };
            out.push(to_user(subjects, Role::Driver, &event.driver_id, &left));
        }
    }
    let written = !out.is_empty();
    let queued = crate::outbox::write(&tx, &out).await?;
    tx.commit().await?;
    if written {
        publisher.queued(queued);
    }
    Ok(recorded)
}

/// Most drivers of one queue told their place after a change.
const MAX_QUEUE_TOLD: i64 = 1000;

/// A driver waiting in a queue zone.
#[derive(Debug, Clone, Serialize)]
pub struct Queued {
    pub driver_id: String,
    /// 1 for the head.
    pub place: u32,
    /// When it entered the zone, milliseconds since the epoch.
    pub since: UnixMillis,
}

/// The first `limit` drivers waiting in `zone`, in order: inside it, online and holding no
/// trip, and not in `excluded`.
pub async fn queue(
    client: &impl GenericClient,
    zone: Uuid,
    excluded: &[String],
    limit: i64,
) -> Result<Vec<Queued>, StoreError> {
    let statement = client
        .prepare_cached(
            "SELECT zp.driver_id, (extract(epoch from zp.entered_at) * 1000)::int8 \
             FROM zone_presence zp JOIN drivers d ON d.driver_id = zp.driver_id \
             WHERE zp.zone_id = $1 AND d.online AND NOT (zp.driver_id = ANY($2)) \
               AND NOT EXISTS (SELECT 1 FROM trips t WHERE t.driver_id = zp.driver_id \
                 AND t.state IN ('offered', 'accepted', 'arrived', 'in_progress')) \
             ORDER BY zp.queued_seq LIMIT $3",
        )
        .await?;
    Ok(client
        .query(&statement, &[&zone, &excluded, &limit])
        .await?
        .iter()
        .enumerate()
        .map(|(i, row)| Queued {
            driver_id: row.get(0),
            place: i as u32 + 1,
            since: row.get(1),
        })
        .collect())
}

/// The exits of every driver recorded inside a zone that is being deleted, in the deleting
/// transaction `tx`.
pub(crate) async fn exits_of_deleted(
    tx: &impl GenericClient,
    subjects: &Subjects,
    (zone_id, name, kind): (Uuid, String, ZoneKind),
) -> Result<Vec<Outgoing>, StoreError> {
    let now = protocol::time::now_ms();
    let drivers = tx
        .query(
            "DELETE FROM zone_presence WHERE zone_id = $1 RETURNING driver_id",
            &[&zone_id],
        )
        .await?;
    Ok(drivers
        .iter()
        .map(|row| {
            let event = ZoneEvent {
                id: Uuid::new_v4(),
                transition: ZoneTransition::Exit(ExitReason::ZoneDeleted),
                driver_id: row.get(0),
                zone_id,
                zone_name: name.clone(),
                zone_kind: kind,
                at: now,
                position: None,
            };
            public_event(subjects, &to_public(&event))
        })
        .collect())
}
