//! The sweeper: keeps every request moving until it ends. It publishes scheduled jobs when
//! they are due, re-publishes requests that went quiet, expires offers and searches that ran
//! out (matchers normally do), and cancels trips abandoned mid-way.

use std::time::Duration;

use protocol::bus::TripCommand;
use protocol::trip::Actor;
use tokio_util::sync::CancellationToken;

use crate::Store;
use crate::error::StoreError;
use crate::machine::TripRecord;
use crate::messages::{self, Outgoing};
use crate::meters as m;
use crate::rows::{TRIP_COLUMNS, trip_from_row};

/// When the sweeper steps in.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    pub interval: Duration,
    /// A request not re-published for this long is published again.
    pub quiet_after: Duration,
    /// An offer past its expiry by this much is expired by the sweeper (matchers normally do).
    pub offer_grace: Duration,
    /// A trip under way without any transition for this long is cancelled.
    pub abandoned_after: Duration,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            quiet_after: Duration::from_secs(5),
            offer_grace: Duration::from_secs(2),
            abandoned_after: Duration::from_secs(4 * 3600),
        }
    }
}

impl Store {
    /// Re-publishes requests that went quiet, expires offers and searches that ran out, and
    /// cancels trips abandoned mid-way. Returns how many trips it touched.
    pub async fn sweep(&self, settings: &SweepSettings) -> Result<usize, StoreError> {
        let mut touched = 0;
        let client = self.pool.get().await?;
        let grace_ms = settings.offer_grace.as_millis() as i64;
        let expired_offers = client
            .query(
                "SELECT trip_id, driver_id FROM trips WHERE state = 'offered' \
                 AND offer_expires_at < now() - make_interval(secs => $1::int8 / 1000.0) LIMIT 500",
                &[&grace_ms],
            )
            .await?;
        let searches_over = client
            .query(
                "SELECT trip_id, pickup_at IS NOT NULL FROM trips \
                 WHERE state = 'requested' AND search_deadline < now() LIMIT 500",
                &[],
            )
            .await?;
        let abandoned_ms = settings.abandoned_after.as_millis() as i64;
        let abandoned = client
            .query(
                "SELECT trip_id FROM trips WHERE state IN ('accepted', 'arrived', 'in_progress') \
                 AND updated_at < now() - make_interval(secs => $1::int8 / 1000.0) LIMIT 500",
                &[&abandoned_ms],
            )
            .await?;
        drop(client);
        for row in expired_offers {
            let reply = self
                .execute(TripCommand::ExpireOffer {
                    trip_id: row.get(0),
                    driver_id: row.get(1),
                })
                .await;
            touched += usize::from(reply.is_ok_and(|o| o.changed));
        }
        for row in searches_over {
            let scheduled: bool = row.get(1);
            let reason = if scheduled {
                "no driver found by the end of the pickup window"
            } else {
                "no driver found before the search deadline"
            };
            let reply = self
                .execute(TripCommand::Expire {
                    trip_id: row.get(0),
                    reason: reason.into(),
                })
                .await;
            touched += usize::from(reply.is_ok_and(|o| o.changed));
        }
        for row in abandoned {
            let reply = self
                .execute(TripCommand::Cancel {
                    trip_id: row.get(0),
                    actor: Actor::System,
                    actor_id: "sweeper".into(),
                    reason: Some("trip abandoned: no progress reported".into()),
                })
                .await;
            touched += usize::from(reply.is_ok_and(|o| o.changed));
        }
        touched += self.redispatch_quiet(settings.quiet_after).await?;
        metrics::counter!(m::SWEPT).increment(touched as u64);
        Ok(touched)
    }

    async fn redispatch_quiet(&self, quiet_after: Duration) -> Result<usize, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let quiet_ms = quiet_after.as_millis() as i64;
        let rows = tx
            .query(
                &format!(
                    "UPDATE trips SET last_dispatched_at = now(), dispatch_attempts = dispatch_attempts + 1 \
                     WHERE trip_id IN (SELECT trip_id FROM trips WHERE state = 'requested' \
                       AND (last_dispatched_at < now() - make_interval(secs => $1::int8 / 1000.0) \
                         OR (dispatch_attempts = 0 AND last_dispatched_at <= now())) \
                       AND search_deadline > now() LIMIT 500 FOR UPDATE SKIP LOCKED) \
                     RETURNING {TRIP_COLUMNS}"
                ),
                &[&quiet_ms],
            )
            .await?;
        let trips: Vec<TripRecord> = rows.iter().map(trip_from_row).collect();
        let mut out: Vec<Outgoing> = Vec::with_capacity(trips.len());
        for trip in &trips {
            let head = self.queue_head(trip).await?;
            out.push(messages::ride_request(&self.subjects, trip, head));
        }
        let count = out.len();
        self.enqueue(tx, &out).await?;
        // The attempt counts moved without a version change: remember them as they are now.
        for trip in trips {
            self.trips.insert(trip.view.trip_id, trip);
        }
        if count > 0 {
            metrics::counter!(m::REDISPATCHED).increment(count as u64);
        }
        Ok(count)
    }
}

/// Sweeps every `settings.interval` until `stop`.
pub async fn run(store: Store, settings: SweepSettings, stop: CancellationToken) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match store.sweep(&settings).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(trips = n, "sweeper moved trips along"),
            Err(error) => tracing::warn!(%error, "sweep failed"),
        }
    }
}
