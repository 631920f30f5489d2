//! Commands and queries against PostgreSQL. Each command takes the trip (from this process's
//! cache of trips it wrote or read, else from the database), decides with [`crate::machine`],
//! and writes in one statement guarded by the version it decided on: the trip, its event and
//! its outgoing messages (the outbox) together or not at all.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use deadpool_postgres::{GenericClient, Pool};
use protocol::bus::{CommandError, DriverStatus, TripCommand, TripOutcome, TripReply};
use protocol::time::{UnixMillis, now_ms};
use protocol::trip::{Actor, TripState, TripView, VehicleClass};
use protocol::{ErrorCode, GeoConfig, Point, Subjects};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::error::{StoreError, err};
use crate::machine::{self, Decision, DriverRecord, TripRecord};
use crate::messages::{self, Outgoing};
use crate::meters as m;
use crate::outbox::{self, Committed, Messages};
use crate::progress::{Checked, Plausibility};
use crate::rows::{DRIVER_COLUMNS, DriverColumns, TRIP_COLUMNS, trip_from_row};
use crate::writer::{Transition, Writer};
use crate::zones::Zones;

/// Behaviour of the store.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// How long a request searches for a driver before it expires.
    pub search_timeout: Duration,
    /// Upper bound on one command, database waits included.
    pub command_timeout: Duration,
    /// How many open trips this process remembers, so that a transition of one of them needs
    /// no read first.
    pub cached_trips: usize,
    /// Tasks writing transitions, each with one connection while it writes.
    pub writers: usize,
    /// Most transitions written by one statement.
    pub write_batch: usize,
    /// How far from the pickup and dropoff drivers may report progress.
    pub plausibility: Plausibility,
    /// Most vertices a zone may have.
    pub max_zone_vertices: usize,
    /// How long before its pickup time a scheduled job is dispatched.
    pub schedule_lead: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            search_timeout: Duration::from_secs(120),
            command_timeout: Duration::from_secs(3),
            cached_trips: 100_000,
            writers: 2,
            write_batch: 64,
            plausibility: Plausibility::default(),
            max_zone_vertices: protocol::zone::DEFAULT_MAX_VERTICES,
            schedule_lead: Duration::from_secs(600),
        }
    }
}

/// Trip event ids, handed out from blocks of the sequence: one `nextval` reserves the
/// sequence's whole increment (64, migration V3), so a transition needs no round trip for its
/// id. Within one process ids grow with each trip's versions; across processes they
/// interleave, which is why a trip's events are ordered by version.
#[derive(Debug, Default)]
struct EventIds {
    block: tokio::sync::Mutex<std::ops::Range<i64>>,
}

impl EventIds {
    async fn next(&self, pool: &Pool) -> Result<i64, StoreError> {
        let mut block = self.block.lock().await;
        if block.is_empty() {
            let client = pool.get().await?;
            let reserve = client
                .prepare_cached(
                    "SELECT nextval('trip_events_event_id_seq'), seqincrement FROM pg_sequence \
                     WHERE seqrelid = 'trip_events_event_id_seq'::regclass",
                )
                .await?;
            let row = client.query_one(&reserve, &[]).await?;
            let start: i64 = row.get(0);
            let increment: i64 = row.get(1);
            *block = start..start + increment.max(1);
        }
        Ok(block.next().expect("the block was refilled"))
    }
}

/// A trip to create: a rider's request, or a job created through the API.
#[derive(Debug, Clone)]
pub struct NewTrip {
    pub rider_id: String,
    pub idempotency_key: String,
    pub pickup: Point,
    pub dropoff: Point,
    pub vehicle_class: Option<VehicleClass>,
    pub min_capacity: Option<u16>,
    pub job: Option<JobOrigin>,
}

/// When a scheduled job is to be picked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The pickup time, milliseconds since the epoch.
    pub pickup_at: UnixMillis,
    /// The end of the pickup window: a job with no driver by then expires.
    pub window_end: UnixMillis,
}

/// Who created a job through the API, and the integrator's own fields.
#[derive(Debug, Clone)]
pub struct JobOrigin {
    /// `key:{key_id}` or `dispatcher:{sub}`: whose job it is.
    pub created_by: String,
    /// Recorded as the actor of the `requested` event.
    pub actor_id: String,
    pub external_ref: Option<String>,
    pub notes: Option<String>,
    /// For a job to be picked up later.
    pub schedule: Option<Schedule>,
}

/// Trip commands and queries.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    geo: GeoConfig,
    pub(crate) subjects: Subjects,
    pub(crate) settings: StoreSettings,
    pub(crate) committed: Arc<Committed>,
    event_ids: Arc<EventIds>,
    /// Open trips as this process last wrote or read them. An entry can be behind the
    /// database (another replica changed the trip), never ahead: only a transition decided to
    /// apply is trusted from it, because its write checks the version; anything else is
    /// decided again on a fresh read.
    pub(crate) trips: Arc<quick_cache::sync::Cache<Uuid, TripRecord>>,
    writer: Writer,
    zones: Zones,
}

impl Store {
    pub fn new(pool: Pool, geo: GeoConfig, subjects: Subjects, settings: StoreSettings) -> Self {
        let committed = Arc::new(Committed::default());
        Self {
            writer: Writer::start(
                pool.clone(),
                (settings.writers, settings.write_batch),
                committed.clone(),
            ),
            zones: Zones::new(pool.clone(), settings.max_zone_vertices, subjects.clone()),
            pool,
            geo,
            subjects,
            trips: Arc::new(quick_cache::sync::Cache::new(settings.cached_trips.max(1))),
            settings,
            committed,
            event_ids: Arc::default(),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The zones requests are checked against.
    pub fn zones(&self) -> &Zones {
        &self.zones
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// What commits that wrote to the outbox tell its publisher.
    pub fn committed(&self) -> Arc<Committed> {
        self.committed.clone()
    }

    /// Carries out a command; never takes longer than the command timeout.
    pub async fn execute(&self, command: TripCommand) -> TripReply {
        let kind = command.kind();
        self.timed(kind, self.run(command)).await
    }

    /// Runs `work` within the command timeout, counts and times it as `kind`, and wakes the
    /// outbox when it changed something.
    async fn timed(
        &self,
        kind: &'static str,
        work: impl Future<Output = Result<TripOutcome, StoreError>>,
    ) -> TripReply {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.settings.command_timeout, work).await {
            Ok(result) => result.map_err(StoreError::into_command_error),
            Err(_) => Err(CommandError::new(
                ErrorCode::Unavailable,
                "database did not answer in time",
            )),
        };
        let outcome = match &result {
            Ok(o) if o.changed => "changed",
            Ok(_) => "unchanged",
            Err(e) => e.code.as_str(),
        };
        metrics::counter!(m::COMMANDS, "command" => kind, "outcome" => outcome).increment(1);
        metrics::histogram!(m::COMMAND_DURATION, "command" => kind).record(started.elapsed());
        if matches!(&result, Ok(o) if o.changed) {
            self.committed.wrote(0);
        }
        result
    }

    async fn run(&self, command: TripCommand) -> Result<TripOutcome, StoreError> {
        match command {
            TripCommand::CreateTrip {
                rider_id,
                idempotency_key,
                pickup,
                dropoff,
                vehicle_class,
                min_capacity,
            } => {
                self.create(NewTrip {
                    rider_id,
                    idempotency_key,
                    pickup,
                    dropoff,
                    vehicle_class,
                    min_capacity,
                    job: None,
                })
                .await
            }
            TripCommand::SetDriverStatus {
                driver_id,
                online,
                vehicle_class,
                capacity,
                name,
            } => {
                self.set_driver_status(&driver_id, online, vehicle_class, capacity, name.as_deref())
                    .await
            }
            command => self.transition(command).await,
        }
    }

    /// Creates a job for an integrator (or a dispatcher) through the API: a trip like a
    /// rider's, idempotent on `(created_by, idempotency_key)`, within the command timeout.
    pub async fn create_job(&self, trip: NewTrip) -> TripReply {
        self.timed("create_job", self.create(trip)).await
    }

    async fn create(&self, new: NewTrip) -> Result<TripOutcome, StoreError> {
        let NewTrip {
            rider_id,
            idempotency_key: key,
            pickup,
            dropoff,
            vehicle_class,
            min_capacity,
            job,
        } = new;
        let (rider_id, key) = (rider_id.as_str(), key.as_str());
        let (actor, actor_id) = match &job {
            Some(job) => (Actor::Dispatcher, job.actor_id.as_str()),
            None => (Actor::Rider, rider_id),
        };
        let region = self
            .geo
            .region_of(pickup)
            .map_err(|e| err(ErrorCode::InvalidCoordinates, &e.to_string()))?;
        self.geo
            .region_of(dropoff)
            .map_err(|e| err(ErrorCode::InvalidCoordinates, &e.to_string()))?;
        // Taken before a connection: a new block of ids needs a connection of its own.
        let event_id = self.event_ids.next(&self.pool).await?;
        let client = self.pool.get().await?;
        // A rider's request is the same request for the same rider and key; a job, for the
        // same creator and key.
        let (find, owner) = match &job {
            Some(job) => (
                client
                    .prepare_cached(&format!(
                        "SELECT {TRIP_COLUMNS} FROM trips WHERE created_by = $1 AND idempotency_key = $2"
                    ))
                    .await?,
                job.created_by.as_str(),
            ),
            None => (
                client
                    .prepare_cached(&format!(
                        "SELECT {TRIP_COLUMNS} FROM trips WHERE rider_id = $1 AND idempotency_key = $2"
                    ))
                    .await?,
                rider_id,
            ),
        };
        let existing = |row: &Row| {
            let trip = trip_from_row(row);
            if trip.view.pickup != pickup
                || trip.view.dropoff != dropoff
                || trip.view.rider_id != rider_id
            {
                return Err(err(
                    ErrorCode::Conflict,
                    "idempotency key was already used for a different request",
                ));
            }
            Ok(TripOutcome {
                trip: Some(trip.view),
                changed: false,
            })
        };
        if let Some(refusal) = self.zones.refusal(pickup, dropoff) {
            // A retry of a request stored before the zones changed is still that trip.
            return match client.query_opt(&find, &[&owner, &key]).await? {
                Some(row) => existing(&row),
                None => Err(refusal),
            };
        }
        // The whole new trip is known here, so one statement stores it with its event and
        // outgoing messages; an earlier create with the same key (a retry, or a concurrent
        // one) makes it store nothing, and the stored trip is the answer.
        let now = now_ms();
        let search_ms = self.settings.search_timeout.as_millis() as i64;
        let schedule = job.as_ref().and_then(|j| j.schedule);
        // A scheduled job waits until its pickup time less the lead; until then it is not
        // published and has made no dispatch attempt.
        let (deadline, dispatch_at) = match schedule {
            Some(s) => (
                s.window_end,
                (s.pickup_at - self.settings.schedule_lead.as_millis() as i64).max(now),
            ),
            None => (now + search_ms, now),
        };
        let waits = dispatch_at > now;
        let trip = TripRecord {
            view: TripView {
                trip_id: Uuid::new_v4(),
                state: TripState::Requested,
                rider_id: rider_id.to_owned(),
                driver_id: None,
                pickup,
                dropoff,
                vehicle_class,
                min_capacity,
                region,
                created_at: now,
                updated_at: now,
                version: 1,
                ended_by: None,
                end_reason: None,
            },
            excluded_drivers: Vec::new(),
            search_deadline: deadline,
            offer_expires_at: None,
            dispatch_attempts: if waits { 0 } else { 1 },
        };
        let mut out = messages::event_messages(
            &self.subjects,
            &trip,
            None,
            (actor, Some(actor_id)),
            &Checked::default(),
            event_id,
        );
        if !waits {
            let head = self.queue_head(&trip).await?;
            out.push(messages::ride_request(&self.subjects, &trip, head));
        }
        let mut messages = Messages::default();
        for o in &out {
            messages.push(0, o);
        }
        static CREATE: LazyLock<String> = LazyLock::new(|| {
            format!(
                "WITH rider AS (INSERT INTO riders (rider_id) VALUES ($2) ON CONFLICT DO NOTHING), \
                 ins AS ( \
                   INSERT INTO trips (trip_id, rider_id, idempotency_key, state, region, pickup_lat, \
                     pickup_lng, dropoff_lat, dropoff_lng, vehicle_class, min_capacity, \
                     search_deadline, requested_at, updated_at, last_dispatched_at, created_by, \
                     external_ref, notes, dispatch_attempts, pickup_at) \
                   VALUES ($1, $2, $3, 'requested', $4, $5, $6, $7, $8, $9, $10, \
                     to_timestamp($12::int8 / 1000.0), to_timestamp($11::int8 / 1000.0), \
                     to_timestamp($11::int8 / 1000.0), to_timestamp($19::int8 / 1000.0), $16, $17, $18, \
                     $20, to_timestamp($21::int8 / 1000.0)) \
                   ON CONFLICT DO NOTHING RETURNING trip_id), \
                 event AS ( \
                   INSERT INTO trip_events (event_id, trip_id, version, from_state, to_state, actor, \
                     actor_id, at) \
                   SELECT $13, trip_id, 1, NULL, 'requested', $14, $15, \
                     to_timestamp($11::int8 / 1000.0) FROM ins), \
                 {} \
                 SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM hooks)",
                outbox::write_ctes(22, "(SELECT 0 FROM ins)")
            )
        });
        let insert = client.prepare_cached(&CREATE).await?;
        let fields: [&(dyn ToSql + Sync); 21] = [
            &trip.view.trip_id,
            &rider_id,
            &key,
            &trip.view.region.to_string(),
            &pickup.lat,
            &pickup.lng,
            &dropoff.lat,
            &dropoff.lng,
            &vehicle_class.map(VehicleClass::as_str),
            &min_capacity.map(|c| c as i16),
            &now,
            &deadline,
            &event_id,
            &actor.as_str(),
            &actor_id,
            &job.as_ref().map(|j| j.created_by.as_str()),
            &job.as_ref().and_then(|j| j.external_ref.as_deref()),
            &job.as_ref().and_then(|j| j.notes.as_deref()),
            &dispatch_at,
            &trip.dispatch_attempts,
            &schedule.map(|s| s.pickup_at),
        ];
        let params: Vec<&(dyn ToSql + Sync)> =
            fields.into_iter().chain(messages.params()).collect();
        let row = client.query_one(&insert, &params).await?;
        let stored: i64 = row.get(0);
        self.committed.wrote(outbox::hooks_queued(row.get(1)));
        if stored == 1 {
            let view = trip.view.clone();
            self.trips.insert(view.trip_id, trip);
            return Ok(TripOutcome {
                trip: Some(view),
                changed: true,
            });
        }
        match client.query_opt(&find, &[&owner, &key]).await? {
            Some(row) => existing(&row),
            None => Err(err(ErrorCode::Unavailable, "trip is being created; retry")),
        }
    }

    async fn set_driver_status(
        &self,
        driver_id: &str,
        online: bool,
        vehicle_class: Option<VehicleClass>,
        capacity: Option<u16>,
        name: Option<&str>,
    ) -> Result<TripOutcome, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let changed = tx
            .execute(
                "INSERT INTO drivers (driver_id, name, online, vehicle_class, capacity) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (driver_id) DO UPDATE SET \
                   name = coalesce(EXCLUDED.name, drivers.name), online = EXCLUDED.online, \
                   vehicle_class = coalesce(EXCLUDED.vehicle_class, drivers.vehicle_class), \
                   capacity = coalesce(EXCLUDED.capacity, drivers.capacity), updated_at = now() \
                 WHERE (drivers.online, drivers.vehicle_class, drivers.capacity, drivers.name) \
                   IS DISTINCT FROM (EXCLUDED.online, coalesce(EXCLUDED.vehicle_class, drivers.vehicle_class), \
                   coalesce(EXCLUDED.capacity, drivers.capacity), coalesce(EXCLUDED.name, drivers.name))",
                &[
                    &driver_id,
                    &name,
                    &online,
                    &vehicle_class.map(VehicleClass::as_str),
                    &capacity.map(|c| c as i16),
                ],
            )
            .await?
            > 0;
        if changed {
            let status = DriverStatus {
                driver_id: driver_id.to_owned(),
                online,
                vehicle_class,
                capacity,
                at: now_ms(),
            };
            let out = [messages::driver_status(&self.subjects, &status)];
            self.enqueue(tx, &out).await?;
        } else {
            tx.commit().await?;
        }
        Ok(TripOutcome {
            trip: None,
            changed,
        })
    }

    /// Take, decide, write: the write is one statement guarded by the version decided on, so
    /// a concurrent change makes it touch nothing, and the command is decided again on a
    /// fresh read. The trip is taken from the cache when this process has it; a decision not
    /// to write (rejected, or already done) is only trusted on a fresh read.
    async fn transition(&self, command: TripCommand) -> Result<TripOutcome, StoreError> {
        let (trip_id, named_driver, position) = match &command {
            TripCommand::Offer {
                trip_id, driver_id, ..
            }
            | TripCommand::Assign {
                trip_id, driver_id, ..
            } => (*trip_id, Some(driver_id.as_str()), None),
            TripCommand::Progress {
                trip_id, position, ..
            } => (*trip_id, None, *position),
            TripCommand::AnswerOffer { trip_id, .. }
            | TripCommand::ExpireOffer { trip_id, .. }
            | TripCommand::Cancel { trip_id, .. }
            | TripCommand::Expire { trip_id, .. } => (*trip_id, None, None),
            TripCommand::CreateTrip { .. } | TripCommand::SetDriverStatus { .. } => {
                unreachable!("handled by run")
            }
        };
        let mut cached = self.trips.get(&trip_id);
        let mut checked_once: Option<Checked> = None;
        // Whether the trip is read after every write of it in flight has ended.
        let mut settled = false;
        for _attempt in 0..8 {
            let fresh = cached.is_none();
            let (read, driver) = self
                .read(fresh.then_some(trip_id), named_driver, settled)
                .await?;
            let trip = match cached.take().or(read) {
                Some(trip) => trip,
                None => return Err(err(ErrorCode::NotFound, "no such trip")),
            };
            let now = now_ms();
            let change = match machine::decide(&trip, &command, driver.as_ref(), now) {
                Decision::Apply(change) => change,
                // A refusal is final for the caller, so it is decided on a read that waited
                // for any write of the trip still being committed (an earlier attempt of this
                // very command, say, that the caller gave up on): otherwise the command could
                // be refused and then take effect.
                Decision::Reject(_) if !settled => {
                    settled = true;
                    continue;
                }
                // The cached trip may be behind: decide again on what the database holds.
                _ if !fresh => continue,
                Decision::Reject(error) => return Err(error.into()),
                Decision::AlreadyDone => {
                    return Ok(TripOutcome {
                        trip: Some(trip.view),
                        changed: false,
                    });
                }
            };
            // Pickup and dropoff never change, so a cached trip checks as well as a fresh one,
            // and a report is checked (and counted) once however often its write is retried.
            let checked = match (checked_once, &command) {
                (Some(checked), _) => checked,
                (
                    None,
                    TripCommand::Progress {
                        stage, position, ..
                    },
                ) => self
                    .settings
                    .plausibility
                    .check(&trip.view, *stage, *position)?,
                (None, _) => Checked::default(),
            };
            checked_once = Some(checked);
            let mut after = trip.clone();
            machine::apply(&mut after, &change, now);
            let event_id = self.event_ids.next(&self.pool).await?;
            let head = if after.view.state == TripState::Requested {
                self.queue_head(&after).await?
            } else {
                None
            };
            let messages = messages::transition_messages(
                &self.subjects,
                (&trip, &after),
                &change,
                &checked,
                (event_id, head),
            );
            let transition = Transition {
                trip_id,
                version: trip.view.version,
                from_state: trip.view.state.as_str(),
                from_driver: trip.view.driver_id.clone(),
                state: after.view.state.as_str(),
                driver_id: after.view.driver_id.clone(),
                excluded_drivers: after.excluded_drivers.clone(),
                offer_expires_at: after.offer_expires_at,
                ended_by: after.view.ended_by.map(Actor::as_str),
                end_reason: after.view.end_reason.clone(),
                at: now,
                event_id,
                actor: change.actor.as_str(),
                actor_id: change.actor_id.clone(),
                lat: position.map(|p| p.lat),
                lng: position.map(|p| p.lng),
                distance_m: checked.distance_m,
                flagged: checked.flagged,
                new_offer: change
                    .new_offer
                    .as_ref()
                    .map(|(driver, expires_at, eta)| (driver.clone(), *expires_at, *eta as i32)),
                closed_offer: change
                    .closed_offer
                    .as_ref()
                    .map(|(driver, outcome)| (driver.clone(), outcome.as_str())),
                messages,
            };
            // Whatever the write's outcome, the entry is no longer known to be current.
            self.trips.remove(&trip_id);
            if self.writer.write(transition).await? {
                if !after.view.state.is_terminal() {
                    self.trips.insert(trip_id, after.clone());
                }
                return Ok(TripOutcome {
                    trip: Some(after.view),
                    changed: true,
                });
            }
            // Someone else changed the trip in between: decide again on what it is now.
        }
        Err(err(ErrorCode::Conflict, "trip is changing too fast; retry"))
    }

    /// Reads the trip (when asked for) and the named driver, in one round trip. `settled`
    /// reads the trip only once no transaction holds it for writing (`FOR SHARE` waits for
    /// any that does, and then reads what it committed).
    async fn read(
        &self,
        trip_id: Option<Uuid>,
        driver_id: Option<&str>,
        settled: bool,
    ) -> Result<(Option<TripRecord>, Option<DriverRecord>), StoreError> {
        if trip_id.is_none() && driver_id.is_none() {
            return Ok((None, None));
        }
        let client = self.pool.get().await?;
        let lock = if settled { " FOR SHARE" } else { "" };
        let read_trip = client
            .prepare_cached(&format!(
                "SELECT {TRIP_COLUMNS} FROM trips WHERE trip_id = $1{lock}"
            ))
            .await?;
        let read_driver = client
            .prepare_cached(&format!(
                "SELECT {DRIVER_COLUMNS} FROM drivers WHERE driver_id = $1"
            ))
            .await?;
        let (trip, driver) = tokio::try_join!(
            async {
                match &trip_id {
                    Some(id) => client.query_opt(&read_trip, &[id]).await,
                    None => Ok(None),
                }
            },
            async {
                match driver_id {
                    Some(id) => client.query_opt(&read_driver, &[&id]).await,
                    None => Ok(None),
                }
            }
        )?;
        let driver = driver.map(|row| DriverColumns::read(&row, 0).record());
        Ok((trip.as_ref().map(trip_from_row), driver))
    }

    /// For a trip whose pickup lies in a queue zone, the driver to offer it first: the head
    /// of that queue among the drivers not excluded from the trip.
    pub(crate) async fn queue_head(&self, trip: &TripRecord) -> Result<Option<String>, StoreError> {
        let Some(zone) = self.zones.queue_at(trip.view.pickup) else {
            return Ok(None);
        };
        let client = self.pool.get().await?;
        let queue = crate::tracking::queue(&client, zone, &trip.excluded_drivers, 1).await?;
        Ok(queue.into_iter().next().map(|queued| queued.driver_id))
    }

    /// Writes `out` to the outbox in `tx` (see [`outbox::write`]); tells the publisher
    /// once `tx` commits.
    pub(crate) async fn enqueue(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        out: &[Outgoing],
    ) -> Result<(), StoreError> {
        let queued = outbox::write(&tx, out).await?;
        tx.commit().await?;
        self.committed.wrote(queued);
        Ok(())
    }
}
