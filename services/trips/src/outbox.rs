//! Writes what a transaction publishes to the outbox, and publishes what commits wrote, in
//! order, at least once.
//!
//! A row holds one transaction's (one transition's) messages in order, each with what it is
//! ([`Kind`]): for the bus, for one client (its role and id), or an integrators' event. The
//! statement that writes a row also queues its events' webhook deliveries, from each event's
//! id, type, ordering key and time ([`write_ctes`], the one place they are queued), so they can
//! be delivered as soon as it commits, whatever becomes of the publication.
//!
//! Client messages are addressed to the gateway holding their client when the [`Directory`]
//! knows it, and to every gateway otherwise.
//!
//! One replica at a time publishes (a transaction-scoped advisory lock), so messages leave in
//! commit order; rows are deleted in the same transaction once the NATS server has read them
//! (a [`Receipts`] round trip on the same connection, not only a flush: the bytes of a flush
//! die in the kernel's buffers when the server has silently gone), so a crash or a lost server
//! at any point means re-publishing, never losing. Nothing in a round is parsed: subjects,
//! recipients and payloads are used as the row holds them.
//!
//! Rows written by a replica of the previous release (while a rolling upgrade runs) say only
//! subjects and payloads; they are published as that release would ([`previous_release`]).

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{GenericClient, Pool, Transaction};
use kit::bus::Receipts;
use kit::presence::Directory;
use protocol::client::Role;
use tokio::sync::Notify;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use crate::error::StoreError;
use crate::messages::{Kind, Outgoing};
use crate::meters as m;
use crate::webhooks::deliver::Nudges;

/// Messages of one or more outbox rows as one array per column, in order, with the bounds of
/// each row's messages in them (1-based, inclusive) beside the row's index (in the writer's
/// statement, its transition's): the parameters of [`write_ctes`], in its order. A row's
/// arrays are slices of these, so the statement neither sorts nor aggregates.
#[derive(Debug, Default)]
pub(crate) struct Messages<'a> {
    row: Vec<i32>,
    first: Vec<i32>,
    last: Vec<i32>,
    subject: Vec<&'a str>,
    payload: Vec<&'a [u8]>,
    kind: Vec<&'static str>,
    role: Vec<Option<&'static str>>,
    recipient: Vec<Option<&'a str>>,
    event_id: Vec<Option<&'a str>>,
    event_type: Vec<Option<&'static str>>,
    ordering_key: Vec<Option<&'a str>>,
    event_at: Vec<Option<i64>>,
}

/// How many parameters [`Messages::params`] gives.
const PARAMS: usize = 12;

impl<'a> Messages<'a> {
    /// Adds `out` to the row with index `row`; a row's messages are added together.
    pub fn push(&mut self, row: i32, out: &'a Outgoing) {
        self.subject.push(&out.subject);
        let at = self.subject.len() as i32;
        if self.row.last() == Some(&row) {
            *self.last.last_mut().expect("a row has bounds") = at;
        } else {
            self.row.push(row);
            self.first.push(at);
            self.last.push(at);
        }
        self.payload.push(&out.payload);
        let (kind, client, event) = match &out.kind {
            Kind::Bus => ("bus", None, None),
            Kind::Client { role, id } => ("client", Some((role.as_str(), id.as_str())), None),
            Kind::Event(hook) => ("event", None, Some(hook)),
        };
        self.kind.push(kind);
        self.role.push(client.map(|(role, _)| role));
        self.recipient.push(client.map(|(_, id)| id));
        self.event_id.push(event.map(|e| e.id.as_str()));
        self.event_type.push(event.map(|e| e.kind.as_str()));
        self.ordering_key
            .push(event.map(|e| e.ordering_key.as_str()));
        self.event_at.push(event.map(|e| e.at));
    }

    pub fn params(&self) -> [&(dyn ToSql + Sync); PARAMS] {
        [
            &self.row,
            &self.first,
            &self.last,
            &self.subject,
            &self.payload,
            &self.kind,
            &self.role,
            &self.recipient,
            &self.event_id,
            &self.event_type,
            &self.ordering_key,
            &self.event_at,
        ]
    }
}

/// Two common table expressions for a statement that writes outbox rows: `outgoing` writes
/// one row for each row index in `rows` (an SQL list or subquery of int4, such as
/// `(SELECT job FROM upd)`) from the [`Messages`] in parameters `$first` on, and `hooks`
/// queues the events among those rows' messages for every webhook endpoint that takes their
/// type, in the order they were written. A count of the endpoints gates it (an InitPlan, so a
/// one-time filter: with none registered, no message is looked at); as a semi-join (`EXISTS`)
/// or a lateral join the planner joins the messages every time, which cost the writer about
/// 15% of its transitions a second. `SELECT count(*) FROM hooks` says how many were queued.
///
/// Rows are written with the subjects and payloads the previous release reads, and say their
/// events are queued (`hooks_queued`), so a replica of that release publishing them during a
/// rolling upgrade does not queue them again.
pub(crate) fn write_ctes(first: usize, rows: &str) -> String {
    let p: Vec<String> = (first..first + PARAMS).map(|i| format!("${i}")).collect();
    let slice = |i: usize, cast: &str| format!("({}::{cast})[r.first:r.last]", p[i]);
    format!(
        "outgoing AS ( \
           INSERT INTO outbox (subjects, payloads, kinds, roles, recipients, hooks_queued) \
           SELECT {}, {}, {}, {}, {}, true \
           FROM unnest({rows_param}::int4[], {first_param}::int4[], {last_param}::int4[]) \
             AS r(row_index, first, last) \
           WHERE r.row_index IN {rows} ORDER BY r.row_index), \
         hooks AS ( \
           INSERT INTO webhook_deliveries \
             (endpoint_id, event_id, event_type, ordering_key, body, event_at) \
           SELECT e.endpoint_id, x.event_id, x.event_type, x.ordering_key, \
             convert_from(x.payload, 'UTF8'), to_timestamp(x.event_at / 1000.0) \
           FROM unnest({kind}::text[], {payload}::bytea[], {event_id}::text[], \
               {event_type}::text[], {ordering_key}::text[], {event_at}::int8[]) WITH ORDINALITY \
               x(kind, payload, event_id, event_type, ordering_key, event_at, n) \
             JOIN unnest({rows_param}::int4[], {first_param}::int4[], {last_param}::int4[]) \
               AS r(row_index, first, last) ON x.n BETWEEN r.first AND r.last \
             JOIN webhook_endpoints e \
               ON cardinality(e.event_types) = 0 OR x.event_type = ANY(e.event_types) \
           WHERE (SELECT count(*) FROM webhook_endpoints) > 0 \
             AND x.kind = 'event' AND r.row_index IN {rows} \
           ORDER BY x.n, e.endpoint_id \
           RETURNING 1)",
        slice(3, "text[]"),
        slice(4, "bytea[]"),
        slice(5, "text[]"),
        slice(6, "text[]"),
        slice(7, "text[]"),
        rows_param = p[0],
        first_param = p[1],
        last_param = p[2],
        kind = p[5],
        payload = p[4],
        event_id = p[8],
        event_type = p[9],
        ordering_key = p[10],
        event_at = p[11],
    )
}

/// Writes `out` as one outbox row in the transaction `tx`, to be published after it commits,
/// and queues its events for their webhooks; returns how many deliveries were queued, for
/// [`Committed::wrote`] once `tx` commits.
pub(crate) async fn write(tx: &impl GenericClient, out: &[Outgoing]) -> Result<u64, StoreError> {
    static WRITE: LazyLock<String> =
        LazyLock::new(|| format!("WITH {} SELECT count(*) FROM hooks", write_ctes(1, "(0)")));
    if out.is_empty() {
        return Ok(0);
    }
    let mut messages = Messages::default();
    for o in out {
        messages.push(0, o);
    }
    let statement = tx.prepare_cached(&WRITE).await?;
    let queued: i64 = tx.query_one(&statement, &messages.params()).await?.get(0);
    Ok(hooks_queued(queued))
}

/// Counts `queued` webhook deliveries queued by a statement, and returns it.
pub(crate) fn hooks_queued(queued: i64) -> u64 {
    let queued = queued.max(0) as u64;
    metrics::counter!(m::WEBHOOKS_QUEUED).increment(queued);
    queued
}

/// What commits leave to the publisher: rows to publish (a wake-up), and a count of webhook
/// deliveries queued, for which it nudges the delivering replica.
#[derive(Debug, Default)]
pub struct Committed {
    rows: Notify,
    hooks: AtomicU64,
}

impl Committed {
    /// After a commit that wrote outbox rows and queued `hooks` webhook deliveries.
    pub fn wrote(&self, hooks: u64) {
        if hooks > 0 {
            self.hooks.fetch_add(hooks, Ordering::Relaxed);
        }
        self.rows.notify_one();
    }
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

/// What publishes: the connection whose receipts vouch for it, where clients are, what
/// commits left, and the webhooks' delivery's nudges.
#[derive(Debug, Clone)]
pub struct Publisher {
    receipts: Receipts,
    directory: Arc<Directory>,
    committed: Arc<Committed>,
    nudges: Nudges,
}

/// What a round published.
struct Sent {
    rows: usize,
    messages: u64,
    queued: u64,
}

impl Publisher {
    /// Publishes through `receipts`' client; `committed` is what commits tell it.
    pub fn new(
        receipts: Receipts,
        directory: Arc<Directory>,
        committed: Arc<Committed>,
        nudges: Nudges,
    ) -> Self {
        Self {
            receipts,
            directory,
            committed,
            nudges,
        }
    }

    /// After a commit that wrote to the outbox and queued `queued` webhook deliveries.
    pub(crate) fn queued(&self, queued: u64) {
        self.committed.wrote(queued);
    }

    /// The subject and payload of each message of `rows`, in order, and the events of rows
    /// from the previous release that still need their webhooks queued.
    fn messages(&self, rows: &[Row]) -> (Vec<(String, Bytes)>, Vec<Bytes>) {
        let now = std::time::Instant::now();
        let mut messages = Vec::new();
        let mut unqueued = Vec::new();
        for row in rows {
            let (subjects, payloads): (Vec<String>, Vec<Vec<u8>>) = (row.get(1), row.get(2));
            let Some(kinds) = row.get::<_, Option<Vec<String>>>(3) else {
                previous_release(&self.directory, row, now, &mut messages, &mut unqueued);
                continue;
            };
            let roles: Vec<Option<String>> = row.get(4);
            let recipients: Vec<Option<String>> = row.get(5);
            let clients = roles.into_iter().zip(recipients);
            for (((subject, payload), kind), (role, id)) in
                subjects.into_iter().zip(payloads).zip(kinds).zip(clients)
            {
                let client = (kind == "client")
                    .then(|| role.as_deref().and_then(Role::parse).zip(id))
                    .flatten();
                let subject = match client {
                    Some((role, id)) => self.directory.subject(role, &id, now),
                    None => subject,
                };
                messages.push((subject, Bytes::from(payload)));
            }
        }
        (messages, unqueued)
    }

    /// Publishes the messages of `rows` in order and meanwhile, in `tx`, deletes the rows
    /// (and queues the webhooks of a previous release's rows that did not). `None` when the
    /// server did not vouch for them: then the caller must not commit.
    async fn send(&self, tx: &Transaction<'_>, rows: &[Row]) -> Result<Option<Sent>, StoreError> {
        let (messages, unqueued) = self.messages(rows);
        let count = messages.len() as u64;
        let nats = self.receipts.client();
        let mark = self.receipts.mark();
        let publish = async {
            for (subject, payload) in messages {
                nats.publish(subject, payload).await?;
            }
            self.receipts.confirm(mark, RECEIPT_TIMEOUT).await?;
            Ok::<_, anyhow::Error>(())
        };
        // Written while the server reads; nothing commits without the receipt.
        let write = async {
            let unqueued: Vec<&[u8]> = unqueued.iter().map(Bytes::as_ref).collect();
            let queued = crate::webhooks::queue(tx, &unqueued).await?;
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

    /// Nudges the webhooks' delivery after commits that queued `queued` deliveries: directly
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

    /// Nudges the webhooks' delivery for what commits queued since the last call.
    async fn nudge_committed(&self) {
        self.nudge(self.committed.hooks.swap(0, Ordering::Relaxed))
            .await;
    }
}

/// The messages of `row`, written by a replica of the previous release (subjects and payloads
/// alone): a client's subject is readdressed to its gateway, and unless the writing
/// transaction queued them (`hooks_queued`), its events are to be queued for their webhooks,
/// as that release's round did. Goes with the `hooks_queued` column, once no replica of 0.1
/// runs.
fn previous_release(
    directory: &Directory,
    row: &Row,
    now: std::time::Instant,
    messages: &mut Vec<(String, Bytes)>,
    unqueued: &mut Vec<Bytes>,
) {
    let (subjects, payloads): (Vec<String>, Vec<Vec<u8>>) = (row.get(1), row.get(2));
    let hooks_queued: bool = row.get(6);
    for (subject, payload) in subjects.into_iter().zip(payloads) {
        let payload = Bytes::from(payload);
        if !hooks_queued && directory.subjects().is_event(&subject) {
            unqueued.push(payload.clone());
        }
        messages.push((directory.route(subject, now), payload));
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
            "SELECT id, subjects, payloads, kinds, roles, recipients, hooks_queued FROM outbox \
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

/// Publishes until `shutdown`, woken by commits (through the publisher's [`Committed`]) and
/// by a timer.
pub async fn run(pool: Pool, publisher: Publisher, shutdown: CancellationToken) {
    let mut measured = tokio::time::Instant::now();
    loop {
        publisher.nudge_committed().await;
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
            _ = publisher.committed.rows.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    // Publish what the last commands wrote before going.
    publisher.nudge_committed().await;
    let _ = publish_batch(&pool, &publisher).await;
}
