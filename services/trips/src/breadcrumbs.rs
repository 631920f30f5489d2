//! Route breadcrumbs: positions of drivers on a trip, written in batches with binary COPY, and
//! deleted in bounded batches once past retention.

use std::pin::pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use protocol::bus::Position;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::meters as m;

/// Rows buffered before a write is forced.
const BATCH: usize = 5_000;
/// Longest a row waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Rows the buffer holds at most while the database is away; beyond, new rows are dropped.
const MAX_BUFFER: usize = 200_000;
/// Rows deleted per retention statement.
const DELETE_BATCH: i64 = 5_000;

/// One recorded position.
#[derive(Debug, Clone, PartialEq)]
pub struct Crumb {
    pub trip_id: Uuid,
    pub driver_id: String,
    pub seq: i64,
    pub lat: f64,
    pub lng: f64,
    pub heading: Option<f32>,
    pub speed: Option<f32>,
    pub recorded_at: SystemTime,
}

impl Crumb {
    pub fn from_position(position: &Position) -> Option<Self> {
        Some(Self {
            trip_id: position.trip_id?,
            driver_id: position.driver_id.clone(),
            seq: position.seq.min(i64::MAX as u64) as i64,
            lat: position.lat,
            lng: position.lng,
            heading: position.heading,
            speed: position.speed,
            recorded_at: UNIX_EPOCH + Duration::from_millis(position.ts.max(0) as u64),
        })
    }
}

/// Writes `rows` with one binary COPY.
pub async fn write(pool: &Pool, rows: &[Crumb]) -> anyhow::Result<()> {
    let client = pool.get().await?;
    let sink = client
        .copy_in(
            "COPY breadcrumbs (trip_id, driver_id, seq, lat, lng, heading, speed, recorded_at) \
             FROM STDIN BINARY",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::UUID,
            Type::TEXT,
            Type::INT8,
            Type::FLOAT8,
            Type::FLOAT8,
            Type::FLOAT4,
            Type::FLOAT4,
            Type::TIMESTAMPTZ,
        ],
    );
    let mut writer = pin!(writer);
    for c in rows {
        writer
            .as_mut()
            .write(&[
                &c.trip_id,
                &c.driver_id,
                &c.seq,
                &c.lat,
                &c.lng,
                &c.heading,
                &c.speed,
                &c.recorded_at,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Records breadcrumbs from `subscription` until `shutdown`.
pub async fn run(
    pool: Pool,
    mut subscription: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    let mut buffer: Vec<Crumb> = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            message = subscription.next() => {
                let Some(message) = message else { break };
                match protocol::codec::decode::<Position>(&message.payload) {
                    Ok(position) => match Crumb::from_position(&position) {
                        Some(crumb) if buffer.len() < MAX_BUFFER => buffer.push(crumb),
                        Some(_) => metrics::counter!(m::BREADCRUMBS_DROPPED).increment(1),
                        None => {}
                    },
                    Err(_) => metrics::counter!(m::MALFORMED, "subject" => "crumbs").increment(1),
                }
                if buffer.len() < BATCH {
                    continue;
                }
            }
            _ = tick.tick() => {}
        }
        flush(&pool, &mut buffer).await;
    }
    flush(&pool, &mut buffer).await;
}

async fn flush(pool: &Pool, buffer: &mut Vec<Crumb>) {
    if buffer.is_empty() {
        return;
    }
    match write(pool, buffer).await {
        Ok(()) => {
            metrics::counter!(m::BREADCRUMBS_WRITTEN).increment(buffer.len() as u64);
            buffer.clear();
        }
        Err(error) => {
            // Kept for the next round; the buffer is bounded by MAX_BUFFER.
            tracing::warn!(%error, rows = buffer.len(), "writing breadcrumbs failed");
        }
    }
}

/// Deletes breadcrumbs older than `retention`, `DELETE_BATCH` rows per statement so no long
/// lock is held. Returns the number deleted.
pub async fn expire(pool: &Pool, retention: Duration) -> anyhow::Result<u64> {
    let client = pool.get().await?;
    let retention_ms = retention.as_millis() as i64;
    let mut total = 0;
    loop {
        let deleted = client
            .execute(
                "DELETE FROM breadcrumbs WHERE ctid = ANY(ARRAY(SELECT ctid FROM breadcrumbs \
                 WHERE recorded_at < now() - make_interval(secs => $1::int8 / 1000.0) LIMIT $2))",
                &[&retention_ms, &DELETE_BATCH],
            )
            .await?;
        total += deleted;
        if deleted < DELETE_BATCH as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    metrics::counter!(m::BREADCRUMBS_DELETED).increment(total);
    Ok(total)
}
