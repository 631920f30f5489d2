//! Webhooks: endpoints dispatchers register, the durable queue of deliveries, and the dead
//! letters.
//!
//! An event is queued for every endpoint whose filter names its type by the outbox, in the
//! transaction that publishes it ([`queue`]), so an event that was published is also queued,
//! and a crash at any point re-publishes and re-queues rather than losing it. [`deliver`]
//! sends the queue, one replica at a time. [`policy`] decides which URLs may receive.

pub mod deliver;
pub mod policy;

use deadpool_postgres::{GenericClient, Pool};
use protocol::events::{Event, EventType};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::StoreError;
use crate::meters as m;
use policy::{Destinations, Refused};

/// Most endpoints one deployment may register.
pub const MAX_ENDPOINTS: i64 = 100;
/// Longest URL, description and secret taken.
const MAX_URL: usize = 2048;
const MAX_DESCRIPTION: usize = 500;
const SECRET_CHARS: std::ops::RangeInclusive<usize> = 16..=256;

/// An endpoint as a dispatcher registers it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    /// The event types delivered (`zone.enter`, `trip.completed`, ...); every type when empty.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// The signing secret; one is made when absent. Shown only in the answer to the create.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub description: String,
}

/// A registered endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub endpoint_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub created_at: i64,
    /// Deliveries waiting (retrying included) and dead.
    pub pending: i64,
    pub dead: i64,
    /// Only in the answer to the create.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A delivery that gave up, kept for redelivery.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub delivery_id: i64,
    pub event_id: String,
    pub event_type: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub queued_at: i64,
    pub event: serde_json::Value,
}

/// Why a webhook change was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Destination(#[from] Refused),
    #[error("no such webhook")]
    NotFound,
    #[error("at most {MAX_ENDPOINTS} webhooks may be registered; delete one first")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for WebhookError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self::Store(error.into())
    }
}

impl From<deadpool_postgres::PoolError> for WebhookError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        Self::Store(error.into())
    }
}

const COLUMNS: &str = "e.endpoint_id, e.url, e.event_types, e.description, \
     (extract(epoch from e.created_at) * 1000)::int8, \
     (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.endpoint_id AND NOT d.dead), \
     (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.endpoint_id AND d.dead)";

fn webhook_from_row(row: &Row) -> Webhook {
    Webhook {
        endpoint_id: row.get(0),
        url: row.get(1),
        event_types: row.get(2),
        description: row.get(3),
        created_at: row.get(4),
        pending: row.get(5),
        dead: row.get(6),
        secret: None,
    }
}

/// A new signing secret: 32 random bytes, hex.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    let mut secret = String::from("whsec_");
    for byte in bytes {
        secret.push_str(&format!("{byte:02x}"));
    }
    secret
}

impl WebhookSpec {
    /// Checks every field but the destination; returns the secret to keep.
    fn checked(&self) -> Result<String, WebhookError> {
        let invalid = |message: String| Err(WebhookError::Invalid(message));
        if self.url.len() > MAX_URL {
            return invalid(format!("the URL is longer than {MAX_URL} characters"));
        }
        if self.description.chars().count() > MAX_DESCRIPTION {
            return invalid(format!(
                "the description is longer than {MAX_DESCRIPTION} characters"
            ));
        }
        for name in &self.event_types {
            if EventType::parse(name).is_none() {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                return invalid(format!(
                    "unknown event type {name:?}; known types: {}",
                    known.join(", ")
                ));
            }
        }
        match &self.secret {
            None => Ok(new_secret()),
            Some(secret) if SECRET_CHARS.contains(&secret.chars().count()) => Ok(secret.clone()),
            Some(_) => invalid(format!(
                "the secret must have {} to {} characters",
                SECRET_CHARS.start(),
                SECRET_CHARS.end()
            )),
        }
    }
}

/// The registered endpoints and their queues.
#[derive(Debug, Clone)]
pub struct Webhooks {
    pool: Pool,
    destinations: Destinations,
}

impl Webhooks {
    pub fn new(pool: Pool, destinations: Destinations) -> Self {
        Self { pool, destinations }
    }

    /// Registers an endpoint after checking its URL; the answer carries the secret, once.
    pub async fn create(&self, spec: &WebhookSpec) -> Result<Webhook, WebhookError> {
        let secret = spec.checked()?;
        self.destinations.check(&spec.url).await?;
        let mut types = spec.event_types.clone();
        types.sort();
        types.dedup();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // One registration at a time, so the cap holds under concurrent creates.
        tx.execute("LOCK TABLE webhook_endpoints IN EXCLUSIVE MODE", &[])
            .await?;
        let count: i64 = tx
            .query_one("SELECT count(*) FROM webhook_endpoints", &[])
            .await?
            .get(0);
        if count >= MAX_ENDPOINTS {
            return Err(WebhookError::TooMany);
        }
        let id = Uuid::new_v4();
        tx.execute(
            "INSERT INTO webhook_endpoints (endpoint_id, url, secret, event_types, description) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&id, &spec.url, &secret, &types, &spec.description.trim()],
        )
        .await?;
        let row = tx
            .query_one(
                &format!("SELECT {COLUMNS} FROM webhook_endpoints e WHERE e.endpoint_id = $1"),
                &[&id],
            )
            .await?;
        tx.commit().await?;
        let mut webhook = webhook_from_row(&row);
        webhook.secret = Some(secret);
        Ok(webhook)
    }

    pub async fn list(&self) -> Result<Vec<Webhook>, WebhookError> {
        let client = self.pool.get().await?;
        Ok(client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM webhook_endpoints e ORDER BY e.created_at, e.endpoint_id"
                ),
                &[],
            )
            .await?
            .iter()
            .map(webhook_from_row)
            .collect())
    }

    pub async fn get(&self, id: Uuid) -> Result<Webhook, WebhookError> {
        let client = self.pool.get().await?;
        client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM webhook_endpoints e WHERE e.endpoint_id = $1"),
                &[&id],
            )
            .await?
            .as_ref()
            .map(webhook_from_row)
            .ok_or(WebhookError::NotFound)
    }

    /// Deletes an endpoint and everything queued for it.
    pub async fn delete(&self, id: Uuid) -> Result<(), WebhookError> {
        let client = self.pool.get().await?;
        let deleted = client
            .execute(
                "DELETE FROM webhook_endpoints WHERE endpoint_id = $1",
                &[&id],
            )
            .await?;
        if deleted == 0 {
            return Err(WebhookError::NotFound);
        }
        Ok(())
    }

    /// The endpoint's dead letters, oldest first.
    pub async fn dead_letters(
        &self,
        id: Uuid,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, WebhookError> {
        self.get(id).await?;
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT delivery_id, event_id, event_type, attempts, last_error, \
                 (extract(epoch from queued_at) * 1000)::int8, body \
                 FROM webhook_deliveries WHERE endpoint_id = $1 AND dead \
                 ORDER BY delivery_id LIMIT $2",
                &[&id, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let body: String = row.get(6);
                DeadLetter {
                    delivery_id: row.get(0),
                    event_id: row.get(1),
                    event_type: row.get(2),
                    attempts: row.get(3),
                    last_error: row.get(4),
                    queued_at: row.get(5),
                    event: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
                }
            })
            .collect())
    }

    /// Puts dead letters (all of the endpoint's, or those named) back in the queue, with a
    /// fresh retention; returns how many.
    pub async fn redeliver(&self, id: Uuid, only: Option<&[i64]>) -> Result<u64, WebhookError> {
        self.get(id).await?;
        let client = self.pool.get().await?;
        let requeued = client
            .execute(
                "UPDATE webhook_deliveries SET dead = false, attempts = 0, last_error = NULL, \
                 queued_at = now(), next_attempt_at = now() \
                 WHERE endpoint_id = $1 AND dead AND ($2::int8[] IS NULL OR delivery_id = ANY($2))",
                &[&id, &only.map(<[i64]>::to_vec)],
            )
            .await?;
        Ok(requeued)
    }
}

/// Queues `events` (integrators' events as JSON) for every endpoint that wants them, in `tx`:
/// the round publishing outbox rows of the previous release that did not queue their events
/// ([`crate::outbox`] queues every other event as it writes it). Returns how many deliveries
/// were queued.
pub(crate) async fn queue(tx: &impl GenericClient, events: &[&[u8]]) -> Result<u64, StoreError> {
    let mut ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut keys = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    let mut ats = Vec::with_capacity(events.len());
    for payload in events {
        let Ok(event) = serde_json::from_slice::<Event>(payload) else {
            tracing::warn!("an outbox event does not decode; not queued for webhooks");
            continue;
        };
        ids.push(event.id.clone());
        types.push(event.kind.as_str().to_owned());
        keys.push(event.ordering_key());
        bodies.push(String::from_utf8_lossy(payload).into_owned());
        ats.push(event.at);
    }
    if ids.is_empty() {
        return Ok(0);
    }
    let statement = tx
        .prepare_cached(
            "INSERT INTO webhook_deliveries \
               (endpoint_id, event_id, event_type, ordering_key, body, event_at) \
             SELECT e.endpoint_id, x.id, x.type, x.key, x.body, to_timestamp(x.at / 1000.0) \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]) \
               WITH ORDINALITY AS x(id, type, key, body, at, n) \
             JOIN webhook_endpoints e \
               ON cardinality(e.event_types) = 0 OR x.type = ANY(e.event_types) \
             ORDER BY x.n, e.endpoint_id",
        )
        .await?;
    let queued = tx
        .execute(&statement, &[&ids, &types, &keys, &bodies, &ats])
        .await?;
    metrics::counter!(m::WEBHOOKS_QUEUED).increment(queued);
    Ok(queued)
}
