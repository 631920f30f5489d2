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
//!
//! A transaction that writes integrators' events can queue their webhook deliveries itself
//! ([`enqueue_with_hooks`]): they are then delivered once it commits, without waiting for the
//! outbox's round, and the round only publishes them. Zone events take this way.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Pool, Transaction};
use kit::bus::Receipts;
use kit::presence::Directory;
use tokio::sync::Notify;
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;

use crate::error::StoreError;
use crate::messages::Outgoing;
use crate::meters as m;
use crate::webhooks::deliver::Nudges;

/// Writes `out` as one outbox row in the transaction `tx`, to be published after it commits;
/// its events are queued for their webhooks when they are published.
pub(crate) async fn enqueue(
    tx: &impl deadpool_postgres::GenericClient,
    out: Vec<Outgoing>,
) -> Result<(), StoreError> {
    write(tx, &out, false).await
}

/// Writes `out` as one outbox row in the transaction `tx` and, in it, queues the webhook
/// deliveries of the events among them; returns how many were queued. Once `tx` commits they
/// can be delivered ([`Publisher::queued`]) while the row waits to be published.
pub(crate) async fn enqueue_with_hooks(
    tx: &impl deadpool_postgres::GenericClient,
    subjects: &protocol::Subjects,
    out: Vec<Outgoing>,
) -> Result<u64, StoreError> {
    let events: Vec<&[u8]> = out
        .iter()
        .filter(|o| subjects.is_event(&o.subject))
        .map(|o| o.payload.as_slice())
        .collect();
    // Both sent at once; the connection carries them out in order.
    let (queued, written) =
        tokio::join!(crate::webhooks::queue(tx, &events), write(tx, &out, true));
    written?;
    queued
}

async fn write(
    tx: &impl deadpool_postgres::GenericClient,
    out: &[Outgoing],
    hooks_queued: bool,
) -> Result<(), StoreError> {
    if out.is_empty() {
        return Ok(());
    }
    let (subjects, payloads): (Vec<&str>, Vec<&[u8]>) = out
        .iter()
        .map(|o| (o.subject.as_str(), o.payload.as_slice()))
        .unzip();
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO outbox (subjects, payloads, hooks_queued) VALUES ($1, $2, $3)",
        )
        .await?,
        &[&subjects, &payloads, &hooks_queued],
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

/// What publishes: the connection whose receipts vouch for it, where clients are, the
/// outbox's wake-up, and the webhooks' delivery's.
#[derive(Debug, Clone)]
pub struct Publisher {
    receipts: Receipts,
    directory: Arc<Directory>,
    ready: Arc<Notify>,
    nudges: Nudges,
}

/// What a round published.
struct Sent {
    rows: usize,
    messages: u64,
    queued: u64,
}

impl Publisher {
    /// Publishes through `receipts`' client; `ready` is the outbox's wake-up.
    pub fn new(
        receipts: Receipts,
        directory: Arc<Directory>,
        ready: Arc<Notify>,
        nudges: Nudges,
    ) -> Self {
        Self {
            receipts,
            directory,
            ready,
            nudges,
        }
    }

    /// After a commit that wrote to the outbox and queued `queued` webhook deliveries: wakes
    /// the outbox and the delivery.
    pub(crate) async fn queued(&self, queued: u64) {
        self.ready.notify_one();
        self.nudge(queued).await;
    }

    /// Publishes the messages of `rows` in order and meanwhile, in `tx`, queues for webhooks
    /// the events of rows whose events are not queued yet, and deletes the rows. `None` when
    /// the server did not vouch for them: then the caller must not commit.
    async fn send(&self, tx: &Transaction<'_>, rows: &[Row]) -> Result<Option<Sent>, StoreError> {
        let subjects = self.directory.subjects();
        let mut messages: Vec<(String, Bytes)> = Vec::new();
        let mut events: Vec<Bytes> = Vec::new();
        for row in rows {
            let (names, payloads): (Vec<String>, Vec<Vec<u8>>) = (row.get(1), row.get(2));
            let hooks_queued: bool = row.get(3);
            for (subject, payload) in names.into_iter().zip(payloads) {
                let payload = Bytes::from(payload);
                if !hooks_queued && subjects.is_event(&subject) {
                    events.push(payload.clone());
                }
                messages.push((subject, payload));
            }
        }
        let count = messages.len() as u64;
        let now = std::time::Instant::now();
        let nats = self.receipts.client();
        let mark = self.receipts.mark();
        let publish = async {
            for (subject, payload) in messages {
                nats.publish(self.directory.route(subject, now), payload)
                    .await?;
            }
            self.receipts.confirm(mark, RECEIPT_TIMEOUT).await?;
            Ok::<_, anyhow::Error>(())
        };
        // Written while the server reads: every event published is also queued for its
        // webhooks, in the transaction that deletes its row (unless the transaction that wrote
        // the row did), and nothing commits without the receipt.
        let write = async {
            let events: Vec<&[u8]> = events.iter().map(Bytes::as_ref).collect();
            let queued = crate::webhooks::queue(tx, &events).await?;
            let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            let delete = tx
                .prepare_cached("DELETE FROM outbox WHERE id = ANY($1)")
                .await?;
            tx.execute(&delete, &[&ids]).await?;
            Ok::<_, StoreError>(queued)
        };
        let (published, written) =
            tokio::join!(tokio::time::timeout(RECEIPT_TIMEOUT, publish), write);
        match published {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                metrics::counter!(m::OUTBOX_FAILURES).increment(1);
                tracing::warn!(%error, "outbox publish failed; will retry");
                return Ok(None);
            }
            Err(_) => {
                metrics::counter!(m::OUTBOX_FAILURES).increment(1);
                tracing::warn!("outbox publish timed out; will retry");
                return Ok(None);
            }
        }
        Ok(Some(Sent {
            rows: rows.len(),
            messages: count,
            queued: written?,
        }))
    }

    /// Nudges the webhooks' delivery after a commit that queued `queued` deliveries: directly
    /// when this replica delivers, else on the bus.
    async fn nudge(&self, queued: u64) {
        if queued > 0 && !self.nudges.here() {
            let _ = self
                .receipts
                .client()
                .publish(self.directory.subjects().hooks_due(), Bytes::new())
                .await;
        }
    }
}

/// Publishes one batch of transitions' messages; returns how many rows (transitions) left.
pub async fn publish_batch(pool: &Pool, publisher: &Publisher) -> Result<usize, StoreError> {
    let mut client = pool.get().await?;
    // The lock is taken by the same statement that reads the batch (an InitPlan evaluated
    // once, a one-time filter), so a round costs BEGIN and one prepared statement before it
    // publishes; a replica that does not get the lock reads no row.
    let take = client
        .prepare_cached(
            "SELECT id, subjects, payloads, hooks_queued FROM outbox \
             WHERE (SELECT pg_try_advisory_xact_lock($1)) ORDER BY id LIMIT $2",
        )
        .await?;
    let tx = client.transaction().await?;
    let rows = tx.query(&take, &[&OUTBOX_LOCK, &BATCH]).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let Some(sent) = publisher.send(&tx, &rows).await? else {
        return Ok(0);
    };
    tx.commit().await?;
    metrics::counter!(m::OUTBOX_PUBLISHED).increment(sent.messages);
    publisher.nudge(sent.queued).await;
    Ok(sent.rows)
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

/// Publishes until `shutdown`, woken through the publisher's `ready` by commits and by a timer.
pub async fn run(pool: Pool, publisher: Publisher, shutdown: CancellationToken) {
    let mut measured = tokio::time::Instant::now();
    loop {
        if measured.elapsed() >= BACKLOG_EVERY {
            measured = tokio::time::Instant::now();
            measure_backlog(&pool).await;
        }
        loop {
            match publish_batch(&pool, &publisher).await {
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
            _ = publisher.ready.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    // Publish what the last commands wrote before going.
    let _ = publish_batch(&pool, &publisher).await;
}
