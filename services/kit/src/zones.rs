//! Following the zones: the one loop by which every process that holds them (the trips
//! replicas, from PostgreSQL; the gateways, from the trips service) keeps its [`ZoneSet`]
//! current.
//!
//! A change is in force in one step: the trips replica that commits it reloads at once and
//! announces the new generation on `{p}.zones.changed` ([`ZonesChanged`]); every follower
//! reloads on that nudge, and if what it read is still older than the nudge said (the replica
//! it asked had not reloaded yet), reads again shortly. A poll every so often covers a nudge
//! lost on the way (core NATS delivers at most once) or sent while a follower was away.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use protocol::bus::ZonesChanged;
use protocol::codec;
use protocol::zone::{Zone, ZoneIndex, ZoneSet};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a load found: the generation and every zone when it is newer than the one asked
/// about, `None` when it is not.
pub type Loaded = Result<Option<(i64, Vec<Zone>)>, String>;

/// How a process follows the zones.
#[derive(Debug, Clone)]
pub struct Follow {
    pub zones: Arc<ZoneSet>,
    /// How often to look without a nudge.
    pub every: Duration,
    /// Most vertices a zone may have to be indexed; a zone stored with more is left out.
    pub max_vertices: usize,
    /// Set to the number of zones in force.
    pub gauge: metrics::Gauge,
}

/// How many times, and how far apart, a follower reads again when what it read is older than
/// a nudge announced.
const CATCH_UP_TRIES: u32 = 20;
const CATCH_UP_EVERY: Duration = Duration::from_millis(25);

/// Indexes `zones` and puts them in force as `generation` (unless a newer one already is);
/// zones that do not pass their checks are left out and logged.
pub async fn put_in_force(follow: &Follow, generation: i64, zones: Vec<Zone>) -> bool {
    let max_vertices = follow.max_vertices;
    let (index, refused) =
        tokio::task::spawn_blocking(move || ZoneIndex::build(zones, max_vertices))
            .await
            .expect("indexing zones does not panic");
    for (zone_id, error) in refused {
        tracing::warn!(%zone_id, %error, "a zone does not pass its checks; left out");
    }
    let count = index.len();
    let replaced = follow.zones.replace(generation, index);
    if replaced {
        follow.gauge.set(count as f64);
        tracing::debug!(generation, zones = count, "zones in force");
    }
    replaced
}

/// Loads the zones if `load` finds a newer generation than the one in force, and puts them in
/// force.
pub async fn reload<L, F>(follow: &Follow, load: &mut L)
where
    L: FnMut(i64) -> F,
    F: Future<Output = Loaded>,
{
    match load(follow.zones.generation()).await {
        Ok(Some((generation, zones))) => {
            put_in_force(follow, generation, zones).await;
        }
        Ok(None) => {}
        Err(error) => tracing::debug!(error, "zones not reloaded; keeping the last ones"),
    }
}

/// Keeps `follow.zones` current until `stop`: at every nudge on `{p}.zones.changed`
/// (`subject`), and every `follow.every`. When `announce` is given (a trips replica), each
/// time it is notified (this process committed a change and put it in force) the generation
/// in force is announced on `subject` for the others.
pub async fn run<L, F>(
    follow: Follow,
    nats: async_nats::Client,
    subject: String,
    announce: Option<Arc<Notify>>,
    stop: CancellationToken,
    mut load: L,
) where
    L: FnMut(i64) -> F,
    F: Future<Output = Loaded>,
{
    let mut nudges = match nats.subscribe(subject.clone()).await {
        Ok(nudges) => Some(nudges),
        Err(error) => {
            tracing::warn!(%error, "not told of zone changes; polling only");
            None
        }
    };
    let mut tick = tokio::time::interval(follow.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let announced = async || match &announce {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    };
    loop {
        let mut wanted = None;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            () = announced() => {
                let generation = follow.zones.generation();
                let payload = codec::encode(&ZonesChanged { generation });
                if let Err(error) = nats.publish(subject.clone(), payload.into()).await {
                    tracing::warn!(%error, "zone change not announced; the others will poll");
                }
                continue;
            }
            nudge = next(&mut nudges) => match nudge {
                Some(payload) => match codec::decode::<ZonesChanged>(&payload) {
                    Ok(changed) => wanted = Some(changed.generation),
                    Err(error) => tracing::warn!(%error, "an unreadable zone change notice"),
                },
                None => nudges = None,
            },
        }
        reload(&follow, &mut load).await;
        let Some(wanted) = wanted else {
            continue;
        };
        for _ in 0..CATCH_UP_TRIES {
            if follow.zones.generation() >= wanted {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(CATCH_UP_EVERY) => {}
            }
            reload(&follow, &mut load).await;
        }
    }
}

/// The next nudge's payload; pending for good without a subscription, `None` when it ended.
async fn next(nudges: &mut Option<async_nats::Subscriber>) -> Option<bytes::Bytes> {
    match nudges {
        Some(nudges) => nudges.next().await.map(|message| message.payload),
        None => std::future::pending().await,
    }
}
