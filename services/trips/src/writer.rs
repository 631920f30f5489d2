//! Writes decided transitions, many to one statement: commands that are decided while a write
//! is in flight are written together by the next one, so under load each transition shares
//! one round trip, one executor start and one commit with the others of its batch. A batch
//! holds as many as have queued (up to a limit) and never waits for more, so a lone command is
//! written at once.
//!
//! Every transition is guarded by the version, state and driver it was decided on, exactly as
//! it would be alone: a batch writes those that still match and says which. If the statement
//! fails as a whole (a driver that already holds another trip, say), each of its transitions
//! is written again on its own, so one bad transition costs the others nothing and gets its
//! own error.
//!
//! A transition whose command has given up waiting (its caller was told the database did not
//! answer in time) is not written: the caller retries, and the retry decides on what the
//! database holds. Written late, it could contradict that retry's answer, as an accept
//! decided before its offer expired, queued behind a lost connection, and written after the
//! retry was told the offer had expired.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use deadpool_postgres::{GenericClient, Pool};
use protocol::ErrorCode;
use protocol::bus::CommandError;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::error::StoreError;
use crate::messages::Outgoing;
use crate::meters as m;
use crate::outbox::{self, Committed, Messages};

/// One decided transition, as written: the trip's guard (what it was decided on) and
/// everything the transition changes or appends.
#[derive(Debug, Clone)]
pub(crate) struct Transition {
    pub trip_id: Uuid,
    pub version: i64,
    pub from_state: &'static str,
    pub from_driver: Option<String>,
    pub state: &'static str,
    pub driver_id: Option<String>,
    pub excluded_drivers: Vec<String>,
    pub offer_expires_at: Option<i64>,
    pub ended_by: Option<&'static str>,
    pub end_reason: Option<String>,
    pub at: i64,
    pub event_id: i64,
    pub actor: &'static str,
    pub actor_id: Option<String>,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    /// From the stage's place, for a driver's progress report with a position.
    pub distance_m: Option<f64>,
    /// A completion far from the dropoff.
    pub flagged: bool,
    /// A new offer: driver, expiry, pickup ETA in seconds.
    pub new_offer: Option<(String, i64, i32)>,
    /// The driver whose open offer ends, and how.
    pub closed_offer: Option<(String, &'static str)>,
    /// Messages to publish after commit, in order.
    pub messages: Vec<Outgoing>,
}

struct Job {
    transition: Transition,
    done: oneshot::Sender<Result<bool, StoreError>>,
}

/// The queue of transitions and the tasks that write them.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("trip_id", &self.transition.trip_id)
            .finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts `tasks` writing tasks on the current runtime, each writing up to `batch`
    /// transitions per statement and telling `committed` what each statement wrote. They end
    /// when the last handle is dropped.
    pub fn start(pool: Pool, (tasks, batch): (usize, usize), committed: Arc<Committed>) -> Self {
        let (jobs, queue) = mpsc::channel(4 * batch.max(1) * tasks.max(1));
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..tasks.max(1) {
            tokio::spawn(write_batches(
                pool.clone(),
                queue.clone(),
                batch.max(1),
                committed.clone(),
            ));
        }
        Self { jobs }
    }

    /// Writes one transition; whether it was still current (and so written).
    pub async fn write(&self, transition: Transition) -> Result<bool, StoreError> {
        let (done, written) = oneshot::channel();
        let unavailable = || {
            StoreError::Command(CommandError::new(
                ErrorCode::Unavailable,
                "trip writer stopped",
            ))
        };
        self.jobs
            .send(Job { transition, done })
            .await
            .map_err(|_| unavailable())?;
        written.await.map_err(|_| unavailable())?
    }
}

async fn write_batches(
    pool: Pool,
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    limit: usize,
    committed: Arc<Committed>,
) {
    let mut batch = Vec::with_capacity(limit);
    loop {
        {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < limit {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        // Rows are locked in trip order, so two batches never wait for each other in a cycle.
        batch.sort_by_key(|job| job.transition.trip_id);
        match write_together(&pool, &mut batch, &committed).await {
            Ok(written) => {
                for (i, job) in batch.drain(..).enumerate() {
                    let _ = job.done.send(Ok(written.contains(&(i as i32))));
                }
            }
            Err(error) if batch.len() <= 1 => {
                if let Some(job) = batch.pop() {
                    let _ = job.done.send(Err(error));
                }
            }
            Err(error) => {
                tracing::debug!(%error, size = batch.len(), "batch failed; writing its transitions one by one");
                for job in batch.drain(..) {
                    let mut one = vec![job];
                    let result = write_together(&pool, &mut one, &committed)
                        .await
                        .map(|written| written.contains(&0));
                    if let Some(job) = one.pop() {
                        let _ = job.done.send(result);
                    }
                }
            }
        }
    }
}

/// Drops the jobs whose command is no longer waiting for them (see the module's docs).
fn abandon_given_up(batch: &mut Vec<Job>) {
    let before = batch.len();
    batch.retain(|job| !job.done.is_closed());
    let abandoned = before - batch.len();
    if abandoned > 0 {
        tracing::debug!(abandoned, "transitions not written: their commands gave up");
        metrics::counter!(m::WRITES_ABANDONED).increment(abandoned as u64);
    }
}

/// Writes the transitions of `batch` that still match their guards, in one statement, and
/// tells `committed`; the indexes (into `batch`, less the jobs whose commands gave up) of
/// those it wrote.
///
/// The trips are found through their key (`trip_id = ANY(...)`), whatever the planner thinks
/// of the unnested input's size, so a batch never scans the table.
async fn write_together(
    pool: &Pool,
    batch: &mut Vec<Job>,
    committed: &Committed,
) -> Result<HashSet<i32>, StoreError> {
    static WRITE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH i AS ( \
               SELECT * FROM unnest($1::int4[], $2::uuid[], $3::int8[], $4::text[], $5::text[], \
                 $6::text[], $7::text[], $8::int8[], $9::text[], $10::text[], $11::int8[], \
                 $12::int8[], $13::text[], $14::text[], $15::float8[], $16::float8[], \
                 $17::text[], $18::int8[], $19::int4[], $20::text[], $21::text[], \
                 $24::float8[], $25::bool[]) \
               AS i(job, trip_id, version, from_state, from_driver, state, driver_id, \
                 offer_expires_at, ended_by, end_reason, at, event_id, actor, actor_id, lat, lng, \
                 offer_driver, offer_expiry, offer_eta, closed_driver, closed_outcome, \
                 distance_m, flagged)), \
             upd AS ( \
               UPDATE trips t SET state = i.state, driver_id = i.driver_id, \
                 excluded_drivers = coalesce((SELECT array_agg(x.driver ORDER BY x.n) \
                   FROM unnest($22::int4[], $23::text[]) WITH ORDINALITY x(job, driver, n) \
                   WHERE x.job = i.job), '{{}}'), \
                 offer_expires_at = to_timestamp(i.offer_expires_at / 1000.0), \
                 ended_by = i.ended_by, end_reason = i.end_reason, version = t.version + 1, \
                 updated_at = to_timestamp(i.at / 1000.0), \
                 last_dispatched_at = CASE WHEN i.state = 'requested' \
                   THEN to_timestamp(i.at / 1000.0) ELSE t.last_dispatched_at END, \
                 offered_at = CASE WHEN i.state = 'offered' \
                   THEN to_timestamp(i.at / 1000.0) ELSE t.offered_at END, \
                 accepted_at = CASE WHEN i.state = 'accepted' \
                   THEN to_timestamp(i.at / 1000.0) ELSE t.accepted_at END, \
                 arrived_at = CASE WHEN i.state = 'arrived' \
                   THEN to_timestamp(i.at / 1000.0) ELSE t.arrived_at END, \
                 started_at = CASE WHEN i.state = 'in_progress' \
                   THEN to_timestamp(i.at / 1000.0) ELSE t.started_at END, \
                 completed_at = CASE WHEN i.state = 'completed' \
                   THEN to_timestamp(i.at / 1000.0) ELSE t.completed_at END, \
                 cancelled_at = CASE WHEN i.state = 'cancelled' \
                   THEN to_timestamp(i.at / 1000.0) ELSE t.cancelled_at END, \
                 expired_at = CASE WHEN i.state = 'expired' \
                   THEN to_timestamp(i.at / 1000.0) ELSE t.expired_at END, \
                 dispatch_attempts = t.dispatch_attempts \
                   + CASE WHEN i.state = 'requested' THEN 1 ELSE 0 END \
               FROM i \
               WHERE t.trip_id = ANY($2::uuid[]) \
                 AND t.trip_id = i.trip_id AND t.version = i.version AND t.state = i.from_state \
                 AND t.driver_id IS NOT DISTINCT FROM i.from_driver \
               RETURNING i.job), \
             ok AS (SELECT i.* FROM i JOIN upd USING (job)), \
             event AS ( \
               INSERT INTO trip_events (event_id, trip_id, version, from_state, to_state, actor, \
                 actor_id, driver_id, reason, lat, lng, distance_m, flagged, at) \
               SELECT event_id, trip_id, version + 1, from_state, state, actor, actor_id, \
                 driver_id, end_reason, lat, lng, distance_m, flagged, \
                 to_timestamp(at / 1000.0) FROM ok), \
             {}, \
             new_offer AS ( \
               INSERT INTO offers (trip_id, driver_id, expires_at, pickup_eta_s) \
               SELECT trip_id, offer_driver, to_timestamp(offer_expiry / 1000.0), offer_eta \
               FROM ok WHERE offer_driver IS NOT NULL), \
             closed_offer AS ( \
               UPDATE offers f SET outcome = ok.closed_outcome, \
                 answered_at = to_timestamp(ok.at / 1000.0) \
               FROM ok WHERE f.trip_id = ok.trip_id AND f.driver_id = ok.closed_driver \
                 AND f.outcome IS NULL) \
             SELECT job, (SELECT count(*) FROM hooks) FROM upd",
            outbox::write_ctes(26, "(SELECT job FROM upd)")
        )
    });
    let client = pool.get().await?;
    let statement = client.prepare_cached(&WRITE).await?;
    // Checked here, once a connection (which a lost database makes a long wait) is in hand.
    abandon_given_up(batch);
    if batch.is_empty() {
        return Ok(HashSet::new());
    }
    metrics::histogram!(m::WRITE_BATCH).record(batch.len() as f64);
    let transitions: Vec<&Transition> = batch.iter().map(|job| &job.transition).collect();
    let columns = Columns::of(&transitions);
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns
        .params()
        .into_iter()
        .chain(columns.messages.params())
        .collect();
    let rows = client.query(&statement, &params).await?;
    if let Some(row) = rows.first() {
        committed.wrote(outbox::hooks_queued(row.get(1)));
    }
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The transitions of a batch as one array per column, with the lists inside a transition
/// (excluded drivers, messages) flattened beside the index of the transition they belong to.
#[derive(Default)]
struct Columns<'a> {
    job: Vec<i32>,
    trip_id: Vec<Uuid>,
    version: Vec<i64>,
    from_state: Vec<&'a str>,
    from_driver: Vec<Option<&'a str>>,
    state: Vec<&'a str>,
    driver_id: Vec<Option<&'a str>>,
    offer_expires_at: Vec<Option<i64>>,
    ended_by: Vec<Option<&'a str>>,
    end_reason: Vec<Option<&'a str>>,
    at: Vec<i64>,
    event_id: Vec<i64>,
    actor: Vec<&'a str>,
    actor_id: Vec<Option<&'a str>>,
    lat: Vec<Option<f64>>,
    lng: Vec<Option<f64>>,
    distance_m: Vec<Option<f64>>,
    flagged: Vec<bool>,
    offer_driver: Vec<Option<&'a str>>,
    offer_expiry: Vec<Option<i64>>,
    offer_eta: Vec<Option<i32>>,
    closed_driver: Vec<Option<&'a str>>,
    closed_outcome: Vec<Option<&'a str>>,
    excluded_job: Vec<i32>,
    excluded_driver: Vec<&'a str>,
    messages: Messages<'a>,
}

impl<'a> Columns<'a> {
    fn of(transitions: &[&'a Transition]) -> Self {
        let mut c = Self::default();
        for (job, t) in transitions.iter().enumerate() {
            let job = job as i32;
            c.job.push(job);
            c.trip_id.push(t.trip_id);
            c.version.push(t.version);
            c.from_state.push(t.from_state);
            c.from_driver.push(t.from_driver.as_deref());
            c.state.push(t.state);
            c.driver_id.push(t.driver_id.as_deref());
            c.offer_expires_at.push(t.offer_expires_at);
            c.ended_by.push(t.ended_by);
            c.end_reason.push(t.end_reason.as_deref());
            c.at.push(t.at);
            c.event_id.push(t.event_id);
            c.actor.push(t.actor);
            c.actor_id.push(t.actor_id.as_deref());
            c.lat.push(t.lat);
            c.lng.push(t.lng);
            c.distance_m.push(t.distance_m);
            c.flagged.push(t.flagged);
            c.offer_driver
                .push(t.new_offer.as_ref().map(|(d, _, _)| d.as_str()));
            c.offer_expiry
                .push(t.new_offer.as_ref().map(|(_, e, _)| *e));
            c.offer_eta
                .push(t.new_offer.as_ref().map(|(_, _, eta)| *eta));
            c.closed_driver
                .push(t.closed_offer.as_ref().map(|(d, _)| d.as_str()));
            c.closed_outcome
                .push(t.closed_offer.as_ref().map(|(_, outcome)| *outcome));
            for driver in &t.excluded_drivers {
                c.excluded_job.push(job);
                c.excluded_driver.push(driver);
            }
            for message in &t.messages {
                c.messages.push(job, message);
            }
        }
        c
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 25] {
        [
            &self.job,
            &self.trip_id,
            &self.version,
            &self.from_state,
            &self.from_driver,
            &self.state,
            &self.driver_id,
            &self.offer_expires_at,
            &self.ended_by,
            &self.end_reason,
            &self.at,
            &self.event_id,
            &self.actor,
            &self.actor_id,
            &self.lat,
            &self.lng,
            &self.offer_driver,
            &self.offer_expiry,
            &self.offer_eta,
            &self.closed_driver,
            &self.closed_outcome,
            &self.excluded_job,
            &self.excluded_driver,
            &self.distance_m,
            &self.flagged,
        ]
    }
}
