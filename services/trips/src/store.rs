//! Commands and queries against PostgreSQL. Each command takes the trip (from this process's
//! cache of trips it wrote or read, else from the database), decides with [`crate::machine`],
//! and writes in one statement guarded by the version it decided on: the trip, its event and
//! its outgoing messages (the outbox) together or not at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{GenericClient, Pool, PoolError};
use protocol::area::ServiceArea;
use protocol::bus::{
    CommandError, DriverRecord as BusDriver, DriverStatus, QueryReply, RideRequest, TripCommand,
    TripEvent, TripOutcome, TripQuery, TripReply,
};
use protocol::client::{DriverState, Role, ServerMessage};
use protocol::time::now_ms;
use protocol::trip::{Actor, TripState, TripView, VehicleClass};
use protocol::{ErrorCode, GeoConfig, Point, Subjects, codec};
use tokio::sync::Notify;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::machine::{self, Change, Decision, DriverRecord, TripRecord};
use crate::meters as m;
use crate::writer::{Transition, Writer};

/// The columns every trip query selects, in the order [`trip_from_row`] reads them.
pub const TRIP_COLUMNS: &str = "trip_id, state, rider_id, driver_id, pickup_lat, pickup_lng, \
     dropoff_lat, dropoff_lng, vehicle_class, min_capacity, region, \
     (extract(epoch from requested_at) * 1000)::int8, (extract(epoch from updated_at) * 1000)::int8, \
     version, ended_by, end_reason, excluded_drivers, \
     (extract(epoch from search_deadline) * 1000)::int8, \
     (extract(epoch from offer_expires_at) * 1000)::int8, dispatch_attempts";

const HOLDING_STATES: &str = "('offered', 'accepted', 'arrived', 'in_progress')";

fn actor_from(s: &str) -> Option<Actor> {
    [
        Actor::Rider,
        Actor::Driver,
        Actor::Dispatcher,
        Actor::System,
    ]
    .into_iter()
    .find(|a| a.as_str() == s)
}

/// Reads a trip selected with [`TRIP_COLUMNS`].
pub fn trip_from_row(row: &Row) -> TripRecord {
    let state: &str = row.get(1);
    let class: Option<&str> = row.get(8);
    let min_capacity: Option<i16> = row.get(9);
    let ended_by: Option<&str> = row.get(14);
    TripRecord {
        view: TripView {
            trip_id: row.get(0),
            state: TripState::parse(state).expect("the schema restricts states"),
            rider_id: row.get(2),
            driver_id: row.get(3),
            pickup: Point::new(row.get(4), row.get(5)),
            dropoff: Point::new(row.get(6), row.get(7)),
            vehicle_class: class.and_then(VehicleClass::parse),
            min_capacity: min_capacity.map(|c| c as u16),
            region: row.get(10),
            created_at: row.get(11),
            updated_at: row.get(12),
            version: row.get(13),
            ended_by: ended_by.and_then(actor_from),
            end_reason: row.get(15),
        },
        excluded_drivers: row.get(16),
        search_deadline: row.get(17),
        offer_expires_at: row.get(18),
        dispatch_attempts: row.get(19),
    }
}

/// Why a command failed inside the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] PoolError),
}

impl StoreError {
    /// What the caller is told.
    pub fn into_command_error(self) -> CommandError {
        match self {
            Self::Command(err) => err,
            Self::Db(err) => {
                if let Some(db) = err.as_db_error() {
                    if *db.code() == SqlState::UNIQUE_VIOLATION
                        && db.constraint() == Some("trips_one_active_trip_per_driver")
                    {
                        return CommandError::new(
                            ErrorCode::Conflict,
                            "driver already holds another trip",
                        );
                    }
                    if *db.code() == SqlState::QUERY_CANCELED
                        || db.code().code().starts_with("08")
                        || db.code().code().starts_with("57")
                    {
                        return CommandError::new(ErrorCode::Unavailable, "database unavailable");
                    }
                    tracing::error!(error = %err, "database error");
                    return CommandError::new(ErrorCode::Internal, "internal error");
                }
                CommandError::new(ErrorCode::Unavailable, "database unavailable")
            }
            Self::Pool(_) => CommandError::new(ErrorCode::Unavailable, "database unavailable"),
        }
    }
}

fn err(code: ErrorCode, message: &str) -> StoreError {
    StoreError::Command(CommandError::new(code, message))
}

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
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            search_timeout: Duration::from_secs(120),
            command_timeout: Duration::from_secs(3),
            cached_trips: 100_000,
            writers: 2,
            write_batch: 64,
        }
    }
}

/// A message to publish after commit.
struct Outgoing {
    subject: String,
    payload: Vec<u8>,
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

/// Trip commands and queries.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    geo: GeoConfig,
    /// Where pickups and dropoffs are accepted; anywhere when absent.
    area: Option<Arc<ServiceArea>>,
    subjects: Subjects,
    settings: StoreSettings,
    outbox_ready: Arc<Notify>,
    event_ids: Arc<EventIds>,
    /// Open trips as this process last wrote or read them. An entry can be behind the
    /// database (another replica changed the trip), never ahead: only a transition decided to
    /// apply is trusted from it, because its write checks the version; anything else is
    /// decided again on a fresh read.
    trips: Arc<quick_cache::sync::Cache<Uuid, TripRecord>>,
    writer: Writer,
}

impl Store {
    pub fn new(pool: Pool, geo: GeoConfig, subjects: Subjects, settings: StoreSettings) -> Self {
        Self {
            writer: Writer::start(pool.clone(), settings.writers, settings.write_batch),
            pool,
            geo,
            area: None,
            subjects,
            trips: Arc::new(quick_cache::sync::Cache::new(settings.cached_trips.max(1))),
            settings,
            outbox_ready: Arc::new(Notify::new()),
            event_ids: Arc::default(),
        }
    }

    /// Refuses trips whose pickup or dropoff lies outside `area`.
    pub fn with_service_area(mut self, area: Arc<ServiceArea>) -> Self {
        self.area = Some(area);
        self
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Woken after every commit that wrote to the outbox.
    pub fn outbox_ready(&self) -> Arc<Notify> {
        self.outbox_ready.clone()
    }

    /// Carries out a command; never takes longer than the command timeout.
    pub async fn execute(&self, command: TripCommand) -> TripReply {
        let kind = command.kind();
        let started = Instant::now();
        let result =
            match tokio::time::timeout(self.settings.command_timeout, self.run(command)).await {
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
            self.outbox_ready.notify_one();
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
                self.create(
                    &rider_id,
                    &idempotency_key,
                    pickup,
                    dropoff,
                    vehicle_class,
                    min_capacity,
                )
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

    async fn create(
        &self,
        rider_id: &str,
        key: &str,
        pickup: Point,
        dropoff: Point,
        vehicle_class: Option<VehicleClass>,
        min_capacity: Option<u16>,
    ) -> Result<TripOutcome, StoreError> {
        let region = self
            .geo
            .region_of(pickup)
            .map_err(|e| err(ErrorCode::InvalidCoordinates, &e.to_string()))?;
        self.geo
            .region_of(dropoff)
            .map_err(|e| err(ErrorCode::InvalidCoordinates, &e.to_string()))?;
        if let Some(area) = &self.area {
            for (what, point) in [("pickup", pickup), ("dropoff", dropoff)] {
                if !area.contains(point) {
                    return Err(err(
                        ErrorCode::OutsideServiceArea,
                        &format!("{what} lies outside the service area"),
                    ));
                }
            }
        }
        // Taken before a connection: a new block of ids needs a connection of its own.
        let event_id = self.event_ids.next(&self.pool).await?;
        let client = self.pool.get().await?;
        let find = client
            .prepare_cached(&format!(
                "SELECT {TRIP_COLUMNS} FROM trips WHERE rider_id = $1 AND idempotency_key = $2"
            ))
            .await?;
        let existing = |row: &Row| {
            let trip = trip_from_row(row);
            if trip.view.pickup != pickup || trip.view.dropoff != dropoff {
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
        // The whole new trip is known here, so one statement stores it with its event and
        // outgoing messages; an earlier create with the same key (a retry, or a concurrent
        // one) makes it store nothing, and the stored trip is the answer.
        let now = now_ms();
        let search_ms = self.settings.search_timeout.as_millis() as i64;
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
                region: region.to_string(),
                created_at: now,
                updated_at: now,
                version: 1,
                ended_by: None,
                end_reason: None,
            },
            excluded_drivers: Vec::new(),
            search_deadline: now + search_ms,
            offer_expires_at: None,
            dispatch_attempts: 1,
        };
        let mut out = self.event_messages(&trip, None, Actor::Rider, event_id);
        out.push(self.ride_request(&trip));
        let (subjects, payloads): (Vec<String>, Vec<Vec<u8>>) =
            out.into_iter().map(|o| (o.subject, o.payload)).unzip();
        let insert = client
            .prepare_cached(
                "WITH rider AS (INSERT INTO riders (rider_id) VALUES ($2) ON CONFLICT DO NOTHING), \
                 ins AS ( \
                   INSERT INTO trips (trip_id, rider_id, idempotency_key, state, region, pickup_lat, \
                     pickup_lng, dropoff_lat, dropoff_lng, vehicle_class, min_capacity, \
                     search_deadline, requested_at, updated_at, last_dispatched_at) \
                   VALUES ($1, $2, $3, 'requested', $4, $5, $6, $7, $8, $9, $10, \
                     to_timestamp(($11::int8 + $12::int8) / 1000.0), to_timestamp($11::int8 / 1000.0), \
                     to_timestamp($11::int8 / 1000.0), to_timestamp($11::int8 / 1000.0)) \
                   ON CONFLICT (rider_id, idempotency_key) DO NOTHING RETURNING trip_id), \
                 event AS ( \
                   INSERT INTO trip_events (event_id, trip_id, version, from_state, to_state, actor, \
                     actor_id, at) \
                   SELECT $13, trip_id, 1, NULL, 'requested', 'rider', $2, \
                     to_timestamp($11::int8 / 1000.0) FROM ins), \
                 outgoing AS ( \
                   INSERT INTO outbox (subjects, payloads) SELECT $14::text[], $15::bytea[] \
                   WHERE EXISTS (SELECT 1 FROM ins) AND cardinality($14::text[]) > 0) \
                 SELECT count(*) FROM ins",
            )
            .await?;
        let stored: i64 = client
            .query_one(
                &insert,
                &[
                    &trip.view.trip_id,
                    &rider_id,
                    &key,
                    &trip.view.region,
                    &pickup.lat,
                    &pickup.lng,
                    &dropoff.lat,
                    &dropoff.lng,
                    &vehicle_class.map(VehicleClass::as_str),
                    &min_capacity.map(|c| c as i16),
                    &now,
                    &search_ms,
                    &event_id,
                    &subjects,
                    &payloads,
                ],
            )
            .await?
            .get(0);
        if stored == 1 {
            let view = trip.view.clone();
            self.trips.insert(view.trip_id, trip);
            return Ok(TripOutcome {
                trip: Some(view),
                changed: true,
            });
        }
        match client.query_opt(&find, &[&rider_id, &key]).await? {
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
            self.enqueue(
                &tx,
                vec![Outgoing {
                    subject: self.subjects.driver_status(),
                    payload: codec::encode(&status),
                }],
            )
            .await?;
        }
        tx.commit().await?;
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
        for _attempt in 0..8 {
            let fresh = cached.is_none();
            let (read, driver) = self.read(fresh.then_some(trip_id), named_driver).await?;
            let trip = match cached.take().or(read) {
                Some(trip) => trip,
                None => return Err(err(ErrorCode::NotFound, "no such trip")),
            };
            let now = now_ms();
            let change = match machine::decide(&trip, &command, driver.as_ref(), now) {
                Decision::Apply(change) => change,
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
            let mut after = trip.clone();
            machine::apply(&mut after, &change, now);
            let event_id = self.event_ids.next(&self.pool).await?;
            let messages = self
                .transition_messages(&trip, &after, &change, event_id)
                .into_iter()
                .map(|o| (o.subject, o.payload))
                .collect();
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

    /// Reads the trip (when asked for) and the named driver, in one round trip.
    async fn read(
        &self,
        trip_id: Option<Uuid>,
        driver_id: Option<&str>,
    ) -> Result<(Option<TripRecord>, Option<DriverRecord>), StoreError> {
        if trip_id.is_none() && driver_id.is_none() {
            return Ok((None, None));
        }
        let client = self.pool.get().await?;
        let read_trip = client
            .prepare_cached(&format!(
                "SELECT {TRIP_COLUMNS} FROM trips WHERE trip_id = $1"
            ))
            .await?;
        let read_driver = client
            .prepare_cached(
                "SELECT online, vehicle_class, capacity FROM drivers WHERE driver_id = $1",
            )
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
        let driver = driver.map(|row| DriverRecord {
            online: row.get(0),
            vehicle_class: row.get::<_, Option<&str>>(1).and_then(VehicleClass::parse),
            capacity: row.get::<_, Option<i16>>(2).map(|c| c as u16),
        });
        Ok((trip.as_ref().map(trip_from_row), driver))
    }

    async fn enqueue(&self, tx: &impl GenericClient, out: Vec<Outgoing>) -> Result<(), StoreError> {
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

    fn to_user(&self, role: Role, id: &str, message: &ServerMessage) -> Outgoing {
        Outgoing {
            subject: self.subjects.user(role, id),
            payload: message.to_json().into_bytes(),
        }
    }

    /// The request matchers receive for a trip waiting for a driver.
    fn ride_request(&self, trip: &TripRecord) -> Outgoing {
        let region =
            protocol::geo::parse_cell(&trip.view.region).expect("stored regions are cells");
        Outgoing {
            subject: self.subjects.ride_requests(region),
            payload: codec::encode(&RideRequest {
                trip: trip.view.clone(),
                excluded_drivers: trip.excluded_drivers.clone(),
                deadline: trip.search_deadline,
                attempt: trip.dispatch_attempts.max(1) as u32,
            }),
        }
    }

    /// The event for dashboards and matchers and the update for the rider.
    fn event_messages(
        &self,
        trip: &TripRecord,
        from: Option<TripState>,
        actor: Actor,
        event_id: i64,
    ) -> Vec<Outgoing> {
        let event = TripEvent {
            event_id,
            trip: trip.view.clone(),
            from,
            actor,
            at: trip.view.updated_at,
        };
        vec![
            Outgoing {
                subject: self.subjects.trip_events(&trip.view.region),
                payload: codec::encode(&event),
            },
            self.to_user(
                Role::Rider,
                &trip.view.rider_id,
                &ServerMessage::TripUpdate {
                    trip: trip.view.clone(),
                },
            ),
        ]
    }

    fn transition_messages(
        &self,
        before: &TripRecord,
        after: &TripRecord,
        change: &Change,
        event_id: i64,
    ) -> Vec<Outgoing> {
        let mut out = self.event_messages(after, Some(before.view.state), change.actor, event_id);
        let update = ServerMessage::TripUpdate {
            trip: after.view.clone(),
        };
        if let Some(driver_id) = &after.view.driver_id {
            let message = match &change.new_offer {
                Some((_, expires_at, eta)) => ServerMessage::Offer {
                    trip: after.view.clone(),
                    expires_at: *expires_at,
                    pickup_eta_s: *eta,
                },
                None => update.clone(),
            };
            out.push(self.to_user(Role::Driver, driver_id, &message));
        }
        // A driver that lost the trip (declined, expired, superseded) hears of it too.
        if let Some(previous) = &before.view.driver_id
            && after.view.driver_id.as_ref() != Some(previous)
        {
            out.push(self.to_user(Role::Driver, previous, &update));
        }
        if after.view.state == TripState::Requested {
            out.push(self.ride_request(after));
        }
        out
    }

    /// Answers a query.
    pub async fn query(&self, query: TripQuery) -> QueryReply {
        match tokio::time::timeout(self.settings.command_timeout, self.answer(query)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => QueryReply::Error(e.into_command_error()),
            Err(_) => QueryReply::Error(CommandError::new(
                ErrorCode::Unavailable,
                "database did not answer in time",
            )),
        }
    }

    async fn answer(&self, query: TripQuery) -> Result<QueryReply, StoreError> {
        let client = self.pool.get().await?;
        match query {
            TripQuery::SessionState { role, id } => {
                let (column, driver) = match role {
                    Role::Dispatcher => {
                        return Ok(QueryReply::SessionState {
                            driver: None,
                            trips: vec![],
                        });
                    }
                    Role::Rider => ("rider_id", None),
                    Role::Driver => {
                        let driver = client
                            .query_opt(
                                "SELECT online, vehicle_class, capacity FROM drivers WHERE driver_id = $1",
                                &[&id],
                            )
                            .await?
                            .map(|row| DriverState {
                                online: row.get(0),
                                vehicle_class: row
                                    .get::<_, Option<&str>>(1)
                                    .and_then(VehicleClass::parse),
                                capacity: row.get::<_, Option<i16>>(2).map(|c| c as u16),
                            });
                        ("driver_id", driver)
                    }
                };
                let rows = client
                    .query(
                        &format!(
                            "SELECT {TRIP_COLUMNS} FROM trips WHERE {column} = $1 \
                             AND state NOT IN ('completed', 'cancelled', 'expired') \
                             ORDER BY requested_at DESC LIMIT 20"
                        ),
                        &[&id],
                    )
                    .await?;
                Ok(QueryReply::SessionState {
                    driver,
                    trips: rows.iter().map(|r| trip_from_row(r).view).collect(),
                })
            }
            TripQuery::Trip { trip_id } => {
                let row = client
                    .query_opt(
                        &format!("SELECT {TRIP_COLUMNS} FROM trips WHERE trip_id = $1"),
                        &[&trip_id],
                    )
                    .await?;
                Ok(QueryReply::Trip(row.map(|r| trip_from_row(&r).view)))
            }
            TripQuery::Drivers { regions } => {
                let rows = client
                    .query(
                        &format!(
                            "SELECT t.driver_id, d.online, d.vehicle_class, d.capacity, t.trip_id \
                             FROM trips t JOIN drivers d USING (driver_id) \
                             WHERE t.state IN {HOLDING_STATES} AND t.region = ANY($1)"
                        ),
                        &[&regions],
                    )
                    .await?;
                Ok(QueryReply::Drivers(
                    rows.iter()
                        .map(|row| BusDriver {
                            driver_id: row.get(0),
                            online: row.get(1),
                            vehicle_class: row
                                .get::<_, Option<&str>>(2)
                                .and_then(VehicleClass::parse),
                            capacity: row.get::<_, Option<i16>>(3).map(|c| c as u16),
                            active_trip: row.get(4),
                        })
                        .collect(),
                ))
            }
        }
    }

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
                "SELECT trip_id FROM trips WHERE state = 'requested' AND search_deadline < now() LIMIT 500",
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
            let reply = self
                .execute(TripCommand::Expire {
                    trip_id: row.get(0),
                    reason: "no driver found before the search deadline".into(),
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
                       AND last_dispatched_at < now() - make_interval(secs => $1::int8 / 1000.0) \
                       AND search_deadline > now() LIMIT 500 FOR UPDATE SKIP LOCKED) \
                     RETURNING {TRIP_COLUMNS}"
                ),
                &[&quiet_ms],
            )
            .await?;
        let trips: Vec<TripRecord> = rows.iter().map(trip_from_row).collect();
        let out: Vec<Outgoing> = trips.iter().map(|trip| self.ride_request(trip)).collect();
        let count = out.len();
        self.enqueue(&tx, out).await?;
        tx.commit().await?;
        // The attempt counts moved without a version change: remember them as they are now.
        for trip in trips {
            self.trips.insert(trip.view.trip_id, trip);
        }
        if count > 0 {
            metrics::counter!(m::REDISPATCHED).increment(count as u64);
            self.outbox_ready.notify_one();
        }
        Ok(count)
    }
}

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
