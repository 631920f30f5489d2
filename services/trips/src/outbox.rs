//! Publishes what commits wrote to the outbox, in order, at least once.
//!
//! Client messages are addressed to the gateway holding their client when the [`Directory`]
//! knows it, and to every gateway otherwise.
//!
//! One replica at a time publishes (a transaction-scoped advisory lock), so messages leave in
//! commit order; rows are deleted in the same transaction once the NATS server has read them
//! (a [`Receipts`] round trip on the same connection, not only a flush: the bytes of a flush
//! die in the kernel's buffers when the server has silently gone), so a crash or a lost server
//! at any point means re-publishing, never losing. The integrators' events among them are
//! queued for their webhooks in the same transaction ([`crate::webhooks::queue`]).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use kit::bus::Receipts;
use kit::presence::Directory;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::StoreError;
use crate::messages::Outgoing;
use crate::meters as m;

/// Writes `out` as one outbox row in the transaction `tx`, to be published after it commits.
pub(crate) async fn enqueue(
    tx: &impl deadpool_postgres::GenericClient,
    out: Vec<Outgoing>,
) -> Result<(), StoreError> {
    if out.is_empty() {
        return Ok(());
    }
    let (subjects, payloads): (Vec<String>, Vec<Vec<u8>>) =
        out.into_iter().map(|o| (o.subject, o.payload)).unzip();
    tx.execute(
        &tx.prepare_cached("INSERT INTO outbox (subjects, payloads) VALUES ($1, $2)")
            .await?,
        &[&subjects, &payloads],
    )
    .await?;
    Ok(())
}

const BATCH: i64 = 500;
/// The advisory lock a replica holds, for one transaction, while it publishes.
pub const OUTBOX_LOCK: i64 = 0x6f75_7462_6f78;
/// How often the outbox is checked even without a wake-up (for rows left by a crash).
const POLL: Duration = Duration::from_millis(250);
/// How long a publish round may wait for the server's receipt before giving up and retrying.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the backlog gauge is updated.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// Publishes one batch of transitions' messages; returns how many rows (transitions) left.
pub async fn publish_batch(
    pool: &Pool,
    receipts: &Receipts,
    directory: &Directory,
) -> Result<usize, StoreError> {
    let mut client = pool.get().await?;
    // The lock is taken by the same statement that reads the batch (an InitPlan evaluated
    // once, a one-time filter), so a round costs BEGIN and one prepared statement before it
    // publishes; a replica that does not get the lock reads no row.
    let take = client
        .prepare_cached(
            "SELECT id, subjects, payloads FROM outbox \
             WHERE (SELECT pg_try_advisory_xact_lock($1)) ORDER BY id LIMIT $2",
        )
        .await?;
    let delete = client
        .prepare_cached("DELETE FROM outbox WHERE id = ANY($1)")
        .await?;
    let tx = client.transaction().await?;
    let rows = tx.query(&take, &[&OUTBOX_LOCK, &BATCH]).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut messages = 0;
    let mut events = Vec::new();
    let now = std::time::Instant::now();
    let nats = receipts.client();
    let mark = receipts.mark();
    let publish = async {
        for row in &rows {
            let subjects: Vec<String> = row.get(1);
            let payloads: Vec<Vec<u8>> = row.get(2);
            for (subject, payload) in subjects.into_iter().zip(payloads) {
                if directory.subjects().is_event(&subject) {
                    events.push(payload.clone());
                }
                nats.publish(directory.route(subject, now), payload.into())
                    .await?;
                messages += 1;
            }
        }
        receipts.confirm(mark, RECEIPT_TIMEOUT).await?;
        Ok::<_, anyhow::Error>(())
    };
    match tokio::time::timeout(RECEIPT_TIMEOUT, publish).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            metrics::counter!(m::OUTBOX_FAILURES).increment(1);
            tracing::warn!(%error, "outbox publish failed; will retry");
            return Ok(0);
        }
        Err(_) => {
            metrics::counter!(m::OUTBOX_FAILURES).increment(1);
            tracing::warn!("outbox publish timed out; will retry");
            return Ok(0);
        }
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    // Queued with the rows' deletion: every event published is also queued for its webhooks.
    let queued = crate::webhooks::queue(&tx, &events).await?;
    tx.execute(&delete, &[&ids]).await?;
    tx.commit().await?;
    metrics::counter!(m::OUTBOX_PUBLISHED).increment(messages);
    if queued > 0 {
        let _ = nats
            .publish(directory.subjects().hooks_due(), bytes::Bytes::new())
            .await;
    }
    Ok(ids.len())
}

/// Records how many transitions wait in the outbox.
async fn measure_backlog(pool: &Pool) {
    let Ok(client) = pool.get().await else {
        return;
    };
    if let Ok(row) = client.query_one("SELECT count(*) FROM outbox", &[]).await {
        metrics::gauge!(m::OUTBOX_BACKLOG).set(row.get::<_, i64>(0) as f64);
    }
}

/// Publishes until `shutdown`, woken through `ready` by commits and by a timer.
pub async fn run(
    pool: Pool,
    ready: Arc<Notify>,
    receipts: Receipts,
    directory: Arc<Directory>,
    shutdown: CancellationToken,
) {
    let mut measured = tokio::time::Instant::now();
    loop {
        if measured.elapsed() >= BACKLOG_EVERY {
            measured = tokio::time::Instant::now();
            measure_backlog(&pool).await;
        }
        loop {
            match publish_batch(&pool, &receipts, &directory).await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => break,
                Err(error) => {
                    metrics::counter!(m::OUTBOX_FAILURES).increment(1);
                    tracing::warn!(%error, "outbox unavailable");
                    break;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ready.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    // Publish what the last commands wrote before going.
    let _ = publish_batch(&pool, &receipts, &directory).await;
}
