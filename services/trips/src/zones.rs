//! Zones in PostgreSQL: created, changed and deleted by dispatchers through the API, and held
//! by every trips process as a [`ZoneIndex`] that ride requests are checked against.
//!
//! Every change bumps `zone_generation` in its transaction. The replica that made it reloads
//! at once and announces the new generation on `{p}.zones.changed`, on which every other
//! replica and every gateway reloads (`kit::zones`); each also reads the generation every
//! [`Zones::POLL`], in case a notice was lost. Gateways, which evaluate zones for their
//! drivers' positions, are sent them from memory in pages ([`Zones::page`]); deleting a zone
//! records the exits of the drivers inside.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use protocol::bus::{CommandError, QueryReply, ZoneRecord};
use protocol::zone::{Zone, ZoneError, ZoneIndex, ZoneKind, ZoneSet, ZoneSpec};
use protocol::{ErrorCode, Point, Subjects};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::{StoreError, err};
use crate::meters as m;

const COLUMNS: &str = "zone_id, name, kind, geometry, metadata, version, \
                       (extract(epoch from updated_at) * 1000)::int8";

fn zone_from_row(row: &Row) -> Zone {
    let kind: String = row.get(2);
    Zone {
        zone_id: row.get(0),
        name: row.get(1),
        kind: ZoneKind::parse(&kind).unwrap_or(ZoneKind::Watch),
        geometry: row.get(3),
        metadata: row.get(4),
        version: row.get(5),
        updated_at: row.get(6),
    }
}

/// Why a zone change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ZoneChangeError {
    #[error(transparent)]
    Invalid(#[from] ZoneError),
    #[error("no such zone")]
    NotFound,
    #[error("the zone was changed meanwhile (now version {0}); reload it and retry")]
    Conflict(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for ZoneChangeError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Store(error.into())
    }
}

impl From<deadpool_postgres::PoolError> for ZoneChangeError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Self::Store(error.into())
    }
}

/// About how much zone geometry one page of [`Zones::page`] carries: well under NATS's
/// default largest message (1 MiB), a zone of the most vertices allowed included.
const PAGE_BYTES: usize = 256 * 1024;

/// The zones as this process holds them, and how to change them.
#[derive(Debug, Clone)]
pub struct Zones {
    pool: Pool,
    max_vertices: usize,
    subjects: Subjects,
    current: Arc<ZoneSet>,
    /// Notified when this process committed a change and put it in force, to announce it.
    made_here: Arc<Notify>,
}

impl Zones {
    /// How often the generation is read.
    pub const POLL: Duration = Duration::from_millis(500);

    pub fn new(pool: Pool, max_vertices: usize, subjects: Subjects) -> Self {
        Self {
            pool,
            max_vertices,
            subjects,
            current: Arc::default(),
            made_here: Arc::default(),
        }
    }

    /// The zones in force.
    pub fn index(&self) -> Arc<ZoneIndex> {
        self.current.index()
    }

    /// How this process follows the zones (`kit::zones`), polling every `every`.
    pub fn follow_settings(&self, every: Duration) -> kit::zones::Follow {
        kit::zones::Follow {
            zones: self.current.clone(),
            every,
            max_vertices: self.max_vertices,
            gauge: metrics::gauge!(m::ZONES),
        }
    }

    /// Notified each time this process committed a change and put it in force.
    pub fn changes_made_here(&self) -> Arc<Notify> {
        self.made_here.clone()
    }

    /// A page of the zones in force for a gateway (see [`TripQuery::Zones`]), from memory.
    ///
    /// [`TripQuery::Zones`]: protocol::bus::TripQuery::Zones
    pub fn page(&self, known: i64, after: Option<Uuid>) -> QueryReply {
        let (generation, index) = self.current.current();
        if generation < 0 {
            return QueryReply::Error(CommandError::new(
                ErrorCode::Unavailable,
                "zones not loaded yet",
            ));
        }
        let mut zones = Vec::new();
        let mut more = false;
        if generation != known || after.is_some() {
            let mut bytes = 0;
            // Loaded in id order, so a page resumes after the last id of the one before.
            for zone in index
                .zones()
                .filter(|zone| after.is_none_or(|after| zone.zone_id > after))
            {
                if bytes >= PAGE_BYTES {
                    more = true;
                    break;
                }
                let geometry = zone.geometry.to_string();
                bytes += geometry.len() + zone.name.len() + 64;
                zones.push(ZoneRecord {
                    zone_id: zone.zone_id,
                    name: zone.name.clone(),
                    kind: zone.kind,
                    geometry,
                    version: zone.version,
                });
            }
        }
        QueryReply::Zones {
            generation,
            zones,
            more,
        }
    }

    /// The queue zone `point` lies in, if any.
    pub fn queue_at(&self, point: Point) -> Option<Uuid> {
        self.index()
            .containing(point)
            .find(|zone| zone.kind == ZoneKind::Queue)
            .map(|zone| zone.zone_id)
    }

    /// Why a trip from `pickup` to `dropoff` may not be taken, if it may not.
    pub fn refusal(&self, pickup: Point, dropoff: Point) -> Option<StoreError> {
        let index = self.index();
        if let Some(zone) = index
            .containing(pickup)
            .find(|zone| zone.kind == ZoneKind::NoPickup)
        {
            return Some(err(
                ErrorCode::PickupNotAllowed,
                &format!("pickups are not allowed in zone {:?}", zone.name),
            ));
        }
        if index.has(ZoneKind::ServiceArea) {
            for (what, point) in [("pickup", pickup), ("dropoff", dropoff)] {
                let served = index
                    .containing(point)
                    .any(|zone| zone.kind == ZoneKind::ServiceArea);
                if !served {
                    return Some(err(
                        ErrorCode::OutsideServiceArea,
                        &format!("{what} lies outside every service area zone"),
                    ));
                }
            }
        }
        None
    }

    /// The generation and every zone, when the stored generation is newer than `known`.
    pub async fn load(&self, known: i64) -> Result<Option<(i64, Vec<Zone>)>, StoreError> {
        let client = self.pool.get().await?;
        let generation: i64 = client
            .query_one("SELECT generation FROM zone_generation WHERE id = 1", &[])
            .await?
            .get(0);
        if generation <= known {
            return Ok(None);
        }
        let zones = client
            .query(
                &format!("SELECT {COLUMNS} FROM zones ORDER BY zone_id"),
                &[],
            )
            .await?
            .iter()
            .map(zone_from_row)
            .collect();
        Ok(Some((generation, zones)))
    }

    /// Reloads the zones if their generation moved since the last load.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        if let Some((generation, zones)) = self.load(self.current.generation()).await? {
            kit::zones::put_in_force(&self.follow_settings(Self::POLL), generation, zones).await;
        }
        Ok(())
    }

    /// Keeps the zones current until `stop`: on the notices on `{p}.zones.changed` and every
    /// `every`, announcing there the changes this process makes.
    pub async fn follow(
        self,
        nats: async_nats::Client,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let subject = self.subjects.zones_changed();
        let announce = Some(self.made_here.clone());
        let this = self.clone();
        kit::zones::run(
            self.follow_settings(every),
            nats,
            subject,
            announce,
            stop,
            move |known| {
                let this = this.clone();
                async move { this.load(known).await.map_err(|e| e.to_string()) }
            },
        )
        .await;
    }

    pub async fn list(&self) -> Result<Vec<Zone>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                &format!("SELECT {COLUMNS} FROM zones ORDER BY name, zone_id"),
                &[],
            )
            .await?
            .iter()
            .map(zone_from_row)
            .collect())
    }

    pub async fn get(&self, zone_id: Uuid) -> Result<Option<Zone>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM zones WHERE zone_id = $1"),
                &[&zone_id],
            )
            .await?
            .as_ref()
            .map(zone_from_row))
    }

    /// The zone the `SERVICE_AREA` file becomes.
    pub const SERVICE_AREA_ID: Uuid = Uuid::from_u128(0x5e41_ce0a_4ea0);

    /// Makes `geometry` (the `SERVICE_AREA` file's) the service area zone
    /// [`Self::SERVICE_AREA_ID`], creating it or redrawing it when the file changed; a zone
    /// like any other from then on.
    pub async fn ensure_service_area(&self, geometry: &Value) -> Result<(), ZoneChangeError> {
        let spec = ZoneSpec {
            name: "Service area".into(),
            kind: ZoneKind::ServiceArea,
            geometry: geometry.clone(),
            metadata: serde_json::json!({"source": "SERVICE_AREA"}),
        };
        spec.validate(self.max_vertices)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let changed = tx
            .execute(
                "INSERT INTO zones (zone_id, name, kind, geometry, metadata) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (zone_id) DO UPDATE SET kind = EXCLUDED.kind, \
                   geometry = EXCLUDED.geometry, version = zones.version + 1, updated_at = now() \
                 WHERE zones.geometry IS DISTINCT FROM EXCLUDED.geometry \
                   OR zones.kind IS DISTINCT FROM EXCLUDED.kind",
                &[
                    &Self::SERVICE_AREA_ID,
                    &spec.name,
                    &spec.kind.as_str(),
                    &spec.geometry,
                    &spec.metadata,
                ],
            )
            .await?;
        if changed == 0 {
            return Ok(());
        }
        tracing::info!("the service area file is in force as a zone");
        self.commit(tx).await
    }

    /// Stores a new zone.
    pub async fn create(&self, spec: &ZoneSpec) -> Result<Zone, ZoneChangeError> {
        spec.validate(self.max_vertices)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO zones (zone_id, name, kind, geometry, metadata) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
                ),
                &[
                    &Uuid::new_v4(),
                    &spec.name.trim(),
                    &spec.kind.as_str(),
                    &spec.geometry,
                    &spec.metadata,
                ],
            )
            .await?;
        self.commit(tx).await?;
        Ok(zone_from_row(&row))
    }

    /// Replaces a zone; with `expected`, only if it is still at that version.
    pub async fn update(
        &self,
        zone_id: Uuid,
        spec: &ZoneSpec,
        expected: Option<i64>,
    ) -> Result<Zone, ZoneChangeError> {
        spec.validate(self.max_vertices)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE zones SET name = $2, kind = $3, geometry = $4, metadata = $5, \
                     version = version + 1, updated_at = now() \
                     WHERE zone_id = $1 AND ($6::int8 IS NULL OR version = $6) RETURNING {COLUMNS}"
                ),
                &[
                    &zone_id,
                    &spec.name.trim(),
                    &spec.kind.as_str(),
                    &spec.geometry,
                    &spec.metadata,
                    &expected,
                ],
            )
            .await?;
        let Some(row) = row else {
            let now: Option<i64> = tx
                .query_opt("SELECT version FROM zones WHERE zone_id = $1", &[&zone_id])
                .await?
                .map(|r| r.get(0));
            return Err(now.map_or(ZoneChangeError::NotFound, ZoneChangeError::Conflict));
        };
        self.commit(tx).await?;
        Ok(zone_from_row(&row))
    }

    /// Deletes a zone, with an exit for every driver who was inside; once committed, wakes
    /// `publisher` for them, as a recording does.
    pub async fn delete(
        &self,
        zone_id: Uuid,
        publisher: &crate::outbox::Publisher,
    ) -> Result<(), ZoneChangeError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let Some(deleted) = tx
            .query_opt(
                "DELETE FROM zones WHERE zone_id = $1 RETURNING name, kind",
                &[&zone_id],
            )
            .await?
        else {
            return Err(ZoneChangeError::NotFound);
        };
        let kind = ZoneKind::parse(deleted.get(1)).unwrap_or(ZoneKind::Watch);
        // Whoever was inside has left it.
        let exits =
            crate::tracking::exits_of_deleted(&tx, &self.subjects, (zone_id, deleted.get(0), kind))
                .await?;
        // Queued for their webhooks as they are written, as every event is, so a driver's
        // zone events reach each endpoint in the order they were written.
        let written = !exits.is_empty();
        let queued = crate::outbox::write(&tx, &exits).await?;
        self.commit(tx).await?;
        if written {
            publisher.queued(queued);
        }
        Ok(())
    }

    /// Commits a change with the generation bumped, and puts it in force here at once.
    async fn commit(&self, tx: deadpool_postgres::Transaction<'_>) -> Result<(), ZoneChangeError> {
        tx.execute(
            "UPDATE zone_generation SET generation = generation + 1 WHERE id = 1",
            &[],
        )
        .await?;
        tx.commit().await?;
        self.changed().await;
        Ok(())
    }

    /// After a change this process made: in force here at once, and announced to the others.
    async fn changed(&self) {
        metrics::counter!(m::ZONE_CHANGES).increment(1);
        if let Err(error) = self.refresh().await {
            tracing::warn!(%error, "zones not reloaded after a change; the next poll will");
        }
        self.made_here.notify_one();
    }
}
