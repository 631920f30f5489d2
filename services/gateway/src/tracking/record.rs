//! Sending the tracker's events to the trips service on `{p}.tracking.record`: in batches, in
//! order, each retried until it is stored; at the stop, what is queued gets a few seconds more.

use std::time::Duration;

use kit::Bus;
use protocol::bus::{RecordReply, ZoneEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::meters as m;

/// Sends the tracker's events to the trips service until `stop`, in order, each batch retried
/// until it is stored; at the stop, what is queued gets a few seconds more.
pub async fn record(bus: Bus, mut events: mpsc::Receiver<ZoneEvent>, stop: CancellationToken) {
    const BATCH: usize = 500;
    const TIMEOUT: Duration = Duration::from_secs(5);
    let fresh = || kit::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut backoff = fresh();
    let mut batch: Vec<ZoneEvent> = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if batch.is_empty() {
            let first = tokio::select! {
                _ = stop.cancelled(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                    continue;
                }
                event = events.recv() => event,
                _ = tokio::time::sleep(Duration::from_millis(100)), if deadline.is_some() => None,
            };
            let Some(first) = first else {
                return;
            };
            batch.push(first);
            while batch.len() < BATCH {
                match events.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            tracing::warn!(
                events = batch.len() + events.len(),
                "zone events not recorded before the stop"
            );
            return;
        }
        let reply: Result<RecordReply, _> = bus
            .request(bus.subjects.tracking_record(), &batch, TIMEOUT)
            .await;
        match reply {
            Ok(Ok(_)) => {
                batch.clear();
                backoff = fresh();
            }
            Ok(Err(error)) => {
                metrics::counter!(m::ZONE_RECORD_FAILURES).increment(1);
                tracing::warn!(
                    code = error.code.as_str(),
                    message = error.message,
                    "zone events not recorded; retrying"
                );
                backoff.wait().await;
            }
            Err(error) => {
                metrics::counter!(m::ZONE_RECORD_FAILURES).increment(1);
                tracing::warn!(%error, "zone events not recorded; retrying");
                backoff.wait().await;
            }
        }
    }
}
