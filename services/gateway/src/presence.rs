//! Announcing which clients this gateway holds, so that publishers address their messages here
//! ([`kit::presence`] is the reading side).
//!
//! Joins and leaves go out as they happen, gathered for a few milliseconds; an empty
//! announcement every heartbeat says the gateway is alive (a directory stops addressing a
//! gateway that has been silent for three heartbeats); every client now and then, and when a
//! publisher asks on `{p}.presence.sync`, repairs what a lost announcement left wrong. At the
//! stop, after the sessions have closed, the gateway says it is going.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use protocol::Subjects;
use protocol::bus::{Presence, PresenceChange};
use protocol::codec;
use tokio_util::sync::CancellationToken;

use crate::inbox::Inboxes;

/// How often presence is announced at the least, and how often all of it.
#[derive(Debug, Clone)]
pub struct Announcing {
    pub heartbeat: Duration,
    pub snapshot_every: Duration,
    /// How long joins and leaves are gathered before they go out.
    pub gather: Duration,
}

impl Default for Announcing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            snapshot_every: Duration::from_secs(30),
            gather: Duration::from_millis(5),
        }
    }
}

/// Changes in one announcement at most (a NATS message has a size limit).
const CHUNK: usize = 2_000;

struct Announcer {
    nats: async_nats::Client,
    subjects: Subjects,
    gateway: String,
    valid_for_ms: u32,
}

impl Announcer {
    async fn publish(&self, changes: Vec<PresenceChange>, snapshot: bool, stopping: bool) {
        let chunks: Vec<Vec<PresenceChange>> = if changes.is_empty() {
            vec![Vec::new()]
        } else {
            changes.chunks(CHUNK).map(<[_]>::to_vec).collect()
        };
        for changes in chunks {
            let presence = Presence {
                gateway: self.gateway.clone(),
                changes,
                snapshot,
                stopping,
                valid_for_ms: self.valid_for_ms,
            };
            if let Err(error) = self
                .nats
                .publish(self.subjects.presence(), codec::encode(&presence).into())
                .await
            {
                tracing::warn!(%error, "presence not announced");
            }
        }
    }
}

/// The next request to announce every client; never, without the subscription.
async fn next_ask(asks: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match asks {
        Some(asks) => asks.next().await,
        None => std::future::pending().await,
    }
}

/// Announces `inboxes`' clients as gateway `gateway` until `stop`, then that it is going.
pub async fn announce(
    nats: async_nats::Client,
    subjects: Subjects,
    gateway: String,
    inboxes: Arc<Inboxes>,
    settings: Announcing,
    stop: CancellationToken,
) {
    let valid_for_ms = u32::try_from((settings.heartbeat * 3).as_millis()).unwrap_or(u32::MAX);
    let announcer = Announcer {
        nats: nats.clone(),
        subjects: subjects.clone(),
        gateway,
        valid_for_ms,
    };
    let mut asks = match nats.subscribe(subjects.presence_sync()).await {
        Ok(asks) => Some(asks),
        Err(error) => {
            tracing::warn!(%error, "not answering presence requests");
            None
        }
    };
    // Whoever started before us learns of us at once.
    announcer.publish(inboxes.snapshot(), true, false).await;
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    let mut snapshot = tokio::time::interval(settings.snapshot_every);
    snapshot.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            () = inboxes.wait_changes() => {
                tokio::time::sleep(settings.gather).await;
                announcer.publish(inboxes.take_changes(), false, false).await;
                inboxes.announced();
                heartbeat.reset();
            }
            _ = heartbeat.tick() => {
                announcer.publish(inboxes.take_changes(), false, false).await;
                inboxes.announced();
            }
            _ = snapshot.tick() => {
                // Changes first, so a snapshot never goes before news it would contradict.
                announcer.publish(inboxes.take_changes(), false, false).await;
                inboxes.announced();
                announcer.publish(inboxes.snapshot(), true, false).await;
            }
            ask = next_ask(&mut asks) => match ask {
                Some(_) => {
                    announcer.publish(inboxes.take_changes(), false, false).await;
                    inboxes.announced();
                    announcer.publish(inboxes.snapshot(), true, false).await;
                }
                None => asks = None,
            },
        }
    }
    announcer
        .publish(inboxes.take_changes(), false, false)
        .await;
    announcer.publish(Vec::new(), false, true).await;
    let _ = nats.flush().await;
}
