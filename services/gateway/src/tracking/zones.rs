//! The zones, from the trips service: fetched in pages of one generation whenever a change
//! notice or the poll finds a newer one (`kit::zones`).

use std::sync::Arc;
use std::time::Duration;

use kit::Bus;
use protocol::bus::{QueryReply, TripQuery};
use protocol::zone::Zone;
use tokio_util::sync::CancellationToken;

use super::Tracking;
use crate::meters as m;

/// Keeps the zones current until `stop`.
pub async fn follow(
    bus: Bus,
    nats: async_nats::Client,
    tracking: Arc<Tracking>,
    stop: CancellationToken,
) {
    let follow = kit::zones::Follow {
        zones: tracking.zones().clone(),
        every: tracking.settings().reload_every,
        max_vertices: usize::MAX,
        gauge: metrics::gauge!(m::ZONES),
    };
    let subject = bus.subjects.zones_changed();
    kit::zones::run(follow, nats, subject, None, stop, |known| {
        let bus = bus.clone();
        async move { fetch(&bus, known).await }
    })
    .await;
}

/// The zones, when their generation is newer than `known`.
async fn fetch(bus: &Bus, known: i64) -> kit::zones::Loaded {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let mut zones = Vec::new();
    let mut after = None;
    let mut at = None;
    loop {
        let reply = bus.query(&TripQuery::Zones { known, after }, TIMEOUT).await;
        let (generation, page, more) = match reply {
            QueryReply::Zones {
                generation,
                zones,
                more,
            } => (generation, zones, more),
            QueryReply::Error(error) => return Err(error.message),
            _ => return Err("an unexpected reply to the zones query".into()),
        };
        // A replica that has not loaded the newest zones yet is not listened to.
        if generation <= known {
            return Ok(None);
        }
        // Pages of different generations (from different replicas) do not mix.
        if at.is_some_and(|at| at != generation) {
            return Err("the zones changed while they were read".into());
        }
        at = Some(generation);
        after = page.last().map(|zone| zone.zone_id);
        for record in page {
            let geometry = serde_json::from_str(&record.geometry)
                .map_err(|e| format!("zone {} geometry: {e}", record.zone_id))?;
            zones.push(Zone {
                zone_id: record.zone_id,
                name: record.name,
                kind: record.kind,
                geometry,
                metadata: serde_json::Value::Null,
                version: record.version,
                updated_at: 0,
            });
        }
        if !more {
            return Ok(Some((generation, zones)));
        }
    }
}
