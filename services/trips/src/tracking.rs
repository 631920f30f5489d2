//! Zone events from the gateways: recorded against where each driver is known to be
//! (`zone_presence`), and published for integrators, with their webhook deliveries, through
//! the outbox.
//!
//! The presence table makes each crossing one event: an enter for a zone the driver is
//! already in, an exit from one it is not in, or a second dwell repeats what is recorded and
//! is dropped. So a gateway's retry of a batch whose answer was lost, or a driver that
//! reconnects to another gateway inside a zone, publishes nothing twice.

use deadpool_postgres::Pool;
use protocol::Subjects;
use protocol::bus::{ZoneEvent, ZoneTransition};
use protocol::events::{Event, EventType, ExitReason, ZoneRef};
use protocol::zone::ZoneKind;
use uuid::Uuid;

use crate::error::StoreError;
use crate::messages::{Outgoing, public_event};
use crate::meters as m;

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

/// Records `events` in order; returns how many were new (and so published).
pub async fn record(
    pool: &Pool,
    subjects: &Subjects,
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
    let mut out = Vec::new();
    for event in events {
        let changed = match event.transition {
            ZoneTransition::Enter => {
                tx.execute(&enter, &[&event.driver_id, &event.zone_id, &event.at])
                    .await?
            }
            ZoneTransition::Exit(_) => {
                tx.execute(&exit, &[&event.driver_id, &event.zone_id])
                    .await?
            }
            ZoneTransition::Dwell => {
                tx.execute(&dwell, &[&event.driver_id, &event.zone_id])
                    .await?
            }
        };
        let public = to_public(event);
        let outcome = if changed == 1 { "recorded" } else { "repeated" };
        metrics::counter!(m::ZONE_EVENTS, "type" => public.kind.as_str(), "outcome" => outcome)
            .increment(1);
        if changed == 1 {
            out.push(public_event(subjects, &public));
        }
    }
    let recorded = out.len() as u32;
    crate::outbox::enqueue(&tx, out).await?;
    tx.commit().await?;
    Ok(recorded)
}

/// The exits of every driver recorded inside a zone that is being deleted, in the deleting
/// transaction `tx`.
pub(crate) async fn exits_of_deleted(
    tx: &impl deadpool_postgres::GenericClient,
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
