//! Jobs: dispatch requests created by integrators (or dispatchers) through the API. A job is a
//! trip, with the same state machine, events and timeline as a rider's, plus who created it,
//! the integrator's reference and notes. Creating one is idempotent on the `Idempotency-Key`
//! header, per creator.

// utoipa's expansion of `params(SomeFilter)` names the type with a path the lint flags.
#![allow(unused_qualifications)]

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use deadpool_postgres::GenericClient;
use protocol::bus::TripCommand;
use protocol::trip::{Actor, TripState, TripView, VehicleClass};
use protocol::{ErrorCode, Point, validate};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::paging::{self, TripPosition};
use super::{Principal, Problem, Scope, V1State};
use crate::rows::{TRIP_COLUMNS, trip_from_row};
use crate::store::{JobOrigin, NewTrip, Schedule};

/// The columns a [`Trip`] is read from: [`TRIP_COLUMNS`], then the job's own and the cursor.
pub fn columns() -> String {
    format!(
        "{TRIP_COLUMNS}, created_by, external_ref, notes, \
         (extract(epoch from requested_at) * 1000000)::int8, \
         (extract(epoch from pickup_at) * 1000)::int8"
    )
}

/// A trip as the API shows it; a job is a trip whose `created_by` is set.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Trip {
    #[serde(flatten)]
    pub trip: TripView,
    /// Who created the job (`key:{key_id}` or `dispatcher:{id}`); null for a rider's request.
    pub created_by: Option<String>,
    /// The integrator's own reference.
    pub external_ref: Option<String>,
    pub notes: Option<String>,
    /// A scheduled job's pickup time, milliseconds since the epoch.
    pub pickup_at: Option<i64>,
    /// A scheduled job's end of the pickup window: with no driver by then, it expires.
    pub pickup_window_end: Option<i64>,
}

/// A trip and where it sits in the list order.
pub(crate) fn trip_from(row: &Row) -> (Trip, TripPosition) {
    let record = trip_from_row(row);
    let pickup_at: Option<i64> = row.get(24);
    let trip = Trip {
        trip: record.view,
        created_by: row.get(20),
        external_ref: row.get(21),
        notes: row.get(22),
        pickup_at,
        pickup_window_end: pickup_at.map(|_| record.search_deadline),
    };
    let position = TripPosition {
        t: row.get(23),
        id: trip.trip.trip_id,
    };
    (trip, position)
}

/// A page of a list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A job to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    pub pickup: Point,
    pub dropoff: Point,
    pub vehicle_class: Option<VehicleClass>,
    /// Seats or load the vehicle must have, 1 to 64.
    #[schema(minimum = 1, maximum = 64)]
    #[serde(default, deserialize_with = "integral")]
    pub min_capacity: Option<u16>,
    /// The customer the job is for: the rider id its events name (letters, digits, `_ : -`,
    /// at most 64). The caller's own id when not given.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_:-]+$")]
    pub customer_id: Option<String>,
    /// The integrator's own reference, at most 200 characters.
    #[schema(max_length = 200, pattern = "^[^\\u0000]*$")]
    pub external_ref: Option<String>,
    /// Free text for the driver and dispatchers, at most 2000 characters.
    #[schema(max_length = 2000, pattern = "^[^\\u0000]*$")]
    pub notes: Option<String>,
    /// For a job to be picked up later: the pickup time, milliseconds since the epoch, at most
    /// 30 days ahead. It is dispatched at this time less the service's lead time
    /// (`TRIPS_SCHEDULE_LEAD_S`).
    #[schema(minimum = 0, maximum = 4102444800000_i64)]
    pub pickup_at: Option<i64>,
    /// With `pickup_at`: how long after the pickup time a driver may still be found, seconds
    /// (default 900). A job with no driver by then expires.
    #[schema(minimum = 5, maximum = 86400)]
    #[serde(default, deserialize_with = "integral_u32")]
    pub window_s: Option<u32>,
}

/// A whole number, written as JSON Schema counts integers: `2` and `2.0` alike.
fn whole<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        })
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number")))
}

fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u16>, D::Error> {
    use serde::de::Error;
    whole(deserializer)?
        .map(|n| u16::try_from(n).map_err(|_| D::Error::custom(format!("{n} is above 65535"))))
        .transpose()
}

fn integral_u32<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    whole(deserializer)?
        .map(|n| u32::try_from(n).map_err(|_| D::Error::custom(format!("{n} is too large"))))
        .transpose()
}

/// Why a job is cancelled.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelJob {
    /// At most 500 characters.
    #[schema(max_length = 500, pattern = "^[^\\u0000]*$")]
    pub reason: Option<String>,
}

/// Filters of the job list; all optional.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    pub state: Option<TripState>,
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_:-]+$")]
    pub customer_id: Option<String>,
    #[param(max_length = 200, pattern = "^[^\\u0000]*$")]
    pub external_ref: Option<String>,
    /// Requested at or after, milliseconds since the epoch.
    #[param(minimum = 0, maximum = 4102444800000_i64)]
    pub from: Option<i64>,
    /// Requested before, milliseconds since the epoch.
    #[param(minimum = 0, maximum = 4102444800000_i64)]
    pub to: Option<i64>,
    /// At most this many, newest first (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// From a previous page's `next_cursor`.
    #[param(min_length = 1, max_length = 512)]
    pub cursor: Option<String>,
}

/// Everything a trip list can be filtered by.
#[derive(Debug, Default)]
pub(crate) struct ListQuery {
    pub rider_id: Option<String>,
    pub driver_id: Option<String>,
    pub state: Option<TripState>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub created_by: Option<String>,
    pub jobs_only: bool,
    pub external_ref: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// A page of trips, newest first.
pub(crate) async fn list_page(
    client: &impl GenericClient,
    query: &ListQuery,
) -> Result<Page<Trip>, Problem> {
    for (field, value) in [
        ("rider_id", &query.rider_id),
        ("driver_id", &query.driver_id),
    ] {
        if let Some(value) = value {
            validate::id(field, value).map_err(|e| Problem::invalid(e.to_string()))?;
        }
    }
    check_text("external_ref", &query.external_ref, 200)?;
    for (field, value) in [("from", query.from), ("to", query.to)] {
        if value.is_some_and(|ms| !(0..=MAX_TIME_MS).contains(&ms)) {
            return Err(Problem::invalid(format!(
                "{field} must be milliseconds since the epoch, before 2100"
            )));
        }
    }
    let limit = paging::limit(query.limit)?;
    let after = match &query.cursor {
        Some(cursor) => Some(paging::decode::<TripPosition>(cursor)?),
        None => None,
    };
    let statement = client
        .prepare_cached(&format!(
            "SELECT {} FROM trips \
             WHERE ($1::text IS NULL OR rider_id = $1) \
               AND ($2::text IS NULL OR driver_id = $2) \
               AND ($3::text IS NULL OR state = $3) \
               AND ($4::int8 IS NULL OR requested_at >= 'epoch'::timestamptz + $4::int8 * interval '1 millisecond') \
               AND ($5::int8 IS NULL OR requested_at < 'epoch'::timestamptz + $5::int8 * interval '1 millisecond') \
               AND ($6::text IS NULL OR created_by = $6) \
               AND (NOT $7::bool OR created_by IS NOT NULL) \
               AND ($8::text IS NULL OR external_ref = $8) \
               AND ($9::int8 IS NULL OR (requested_at, trip_id) < \
                    ('epoch'::timestamptz + $9::int8 * interval '1 microsecond', $10::uuid)) \
             ORDER BY requested_at DESC, trip_id DESC LIMIT $11",
            columns()
        ))
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &query.rider_id,
                &query.driver_id,
                &query.state.map(TripState::as_str),
                &query.from,
                &query.to,
                &query.created_by,
                &query.jobs_only,
                &query.external_ref,
                &after.as_ref().map(|a| a.t),
                &after.as_ref().map(|a| a.id),
                &(limit + 1),
            ],
        )
        .await?;
    let mut items: Vec<(Trip, TripPosition)> = rows.iter().map(trip_from).collect();
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|(_, position)| paging::encode(position))
    } else {
        None
    };
    Ok(Page {
        items: items.into_iter().map(|(trip, _)| trip).collect(),
        next_cursor,
    })
}

/// Whose jobs `principal` may see: all of them (`None`), or only its own.
fn visible_to(principal: &Principal) -> Result<Option<String>, Problem> {
    if principal.has(Scope::TripsRead) {
        return Ok(None);
    }
    principal.require(Scope::JobsWrite)?;
    Ok(Some(principal.owner()))
}

/// A job `principal` may see, or `not_found`: another key's job is indistinguishable from
/// none.
async fn load(
    client: &impl GenericClient,
    job_id: Uuid,
    owner: Option<&str>,
) -> Result<Trip, Problem> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {} FROM trips WHERE trip_id = $1 AND created_by IS NOT NULL \
             AND ($2::text IS NULL OR created_by = $2)",
            columns()
        ))
        .await?;
    let row = client
        .query_opt(&statement, &[&job_id, &owner])
        .await?
        .ok_or_else(|| Problem::not_found("job"))?;
    Ok(trip_from(&row).0)
}

/// Farthest ahead a job may be scheduled.
const MAX_SCHEDULE_AHEAD_MS: i64 = 30 * 24 * 3600 * 1000;
/// Pickup window when none is given, seconds.
const DEFAULT_WINDOW_S: u32 = 900;

/// The schedule of a job with a pickup time, checked against `now`.
fn schedule(
    pickup_at: Option<i64>,
    window_s: Option<u32>,
    now: i64,
) -> Result<Option<Schedule>, Problem> {
    let Some(pickup_at) = pickup_at else {
        if window_s.is_some() {
            return Err(Problem::invalid("window_s needs pickup_at"));
        }
        return Ok(None);
    };
    let window_s = window_s.unwrap_or(DEFAULT_WINDOW_S);
    if !(5..=86_400).contains(&window_s) {
        return Err(Problem::invalid("window_s must be between 5 and 86400"));
    }
    let window_end = pickup_at + i64::from(window_s) * 1000;
    if window_end <= now {
        return Err(Problem::invalid(
            "pickup_at and its window are already over",
        ));
    }
    if pickup_at > now + MAX_SCHEDULE_AHEAD_MS {
        return Err(Problem::invalid("pickup_at is more than 30 days ahead"));
    }
    Ok(Some(Schedule {
        pickup_at,
        window_end,
    }))
}

/// Longest idempotency key, bytes.
const MAX_IDEMPOTENCY_KEY: usize = 200;

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(Uuid::new_v4().to_string());
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            Problem::invalid("Idempotency-Key must be 1 to 200 visible ASCII characters")
        })?;
    Ok(key.to_owned())
}

/// Free text: at most `max` characters, and no NUL (which PostgreSQL's text cannot hold).
pub(crate) fn check_text(
    field: &'static str,
    value: &Option<String>,
    max: usize,
) -> Result<(), Problem> {
    if let Some(value) = value {
        if value.chars().count() > max {
            return Err(Problem::invalid(format!(
                "{field} is longer than {max} characters"
            )));
        }
        if value.contains('\0') {
            return Err(Problem::invalid(format!("{field} holds a NUL character")));
        }
    }
    Ok(())
}

/// The latest time a filter may name: 2100-01-01, milliseconds since the epoch.
const MAX_TIME_MS: i64 = 4_102_444_800_000;

/// Creates a job. A retry with the same `Idempotency-Key` (per caller) returns the same job
/// with `200` and `Idempotent-Replayed: true`; the same key with a different pickup, dropoff
/// or customer is a conflict.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs",
    request_body = NewJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key returns the same job", min_length = 1, max_length = 200, pattern = "^[\\x21-\\x7E]+$")),
    responses(
        (status = 201, description = "Created", body = Trip),
        (status = 200, description = "A retry: the job the key created", body = Trip),
        (status = 403, description = "Lacks jobs:write"),
        (status = 409, description = "The key was used for another job"),
        (status = 422, description = "Outside the service area, or a pickup where none is allowed"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create(
    State(state): State<V1State>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Json<NewJob>, JsonRejection>,
) -> Result<Response, Problem> {
    principal.require(Scope::JobsWrite)?;
    let key = idempotency_key(&headers)?;
    let Json(job) = body?;
    if let Some(customer) = &job.customer_id {
        validate::id("customer_id", customer).map_err(|e| Problem::invalid(e.to_string()))?;
    }
    check_text("external_ref", &job.external_ref, 200)?;
    check_text("notes", &job.notes, 2000)?;
    if job.min_capacity.is_some_and(|c| !(1..=64).contains(&c)) {
        return Err(Problem::invalid("min_capacity must be between 1 and 64"));
    }
    let schedule = schedule(job.pickup_at, job.window_s, protocol::time::now_ms())?;
    let owner = principal.owner();
    let origin = JobOrigin {
        created_by: owner.clone(),
        actor_id: principal.actor_id(),
        external_ref: job.external_ref,
        notes: job.notes,
        schedule,
    };
    let new = NewTrip {
        rider_id: job.customer_id.unwrap_or_else(|| principal.actor_id()),
        idempotency_key: format!("{owner}/{key}"),
        pickup: job.pickup,
        dropoff: job.dropoff,
        vehicle_class: job.vehicle_class,
        min_capacity: job.min_capacity,
        job: Some(origin.clone()),
    };
    let outcome = state.store.create_job(new).await?;
    let view = outcome
        .trip
        .ok_or_else(|| Problem::new(ErrorCode::Unavailable, "job is being created; retry"))?;
    let job_id = view.trip_id;
    let location = HeaderValue::from_str(&format!("/v1/jobs/{job_id}"))
        .expect("a UUID path is a header value");
    if outcome.changed {
        // Just stored as given: no need to read it back.
        let trip = Trip {
            trip: view,
            created_by: Some(origin.created_by),
            external_ref: origin.external_ref,
            notes: origin.notes,
            pickup_at: schedule.map(|s| s.pickup_at),
            pickup_window_end: schedule.map(|s| s.window_end),
        };
        return Ok((
            StatusCode::CREATED,
            [(header::LOCATION, location)],
            Json(trip),
        )
            .into_response());
    }
    let client = state.pool.get().await?;
    let trip = load(&client, job_id, Some(&owner)).await?;
    let replayed = HeaderName::from_static("idempotent-replayed");
    Ok((
        StatusCode::OK,
        [
            (header::LOCATION, location),
            (replayed, HeaderValue::from_static("true")),
        ],
        Json(trip),
    )
        .into_response())
}

/// One job. A key with only `jobs:write` sees only the jobs it created.
#[utoipa::path(
    get, path = "/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = Trip),
        (status = 403, description = "Lacks jobs:write and trips:read"),
        (status = 404, description = "No such job visible to the caller"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_one(
    State(state): State<V1State>,
    Extension(principal): Extension<Principal>,
    Path(job_id): Path<String>,
) -> Result<Json<Trip>, Problem> {
    let owner = visible_to(&principal)?;
    let job_id = Problem::uuid("job id", &job_id)?;
    let client = state.pool.get().await?;
    Ok(Json(load(&client, job_id, owner.as_deref()).await?))
}

/// Jobs, newest first. A key with only `jobs:write` lists only the jobs it created.
#[utoipa::path(
    get, path = "/v1/jobs", tag = "jobs",
    params(JobFilter),
    responses(
        (status = 200, description = "A page of jobs", body = Page<Trip>),
        (status = 403, description = "Lacks jobs:write and trips:read"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(state): State<V1State>,
    Extension(principal): Extension<Principal>,
    filter: Result<Query<JobFilter>, QueryRejection>,
) -> Result<Json<Page<Trip>>, Problem> {
    let owner = visible_to(&principal)?;
    let Query(filter) = filter?;
    let query = ListQuery {
        rider_id: filter.customer_id,
        state: filter.state,
        from: filter.from,
        to: filter.to,
        created_by: owner,
        jobs_only: true,
        external_ref: filter.external_ref,
        limit: filter.limit,
        cursor: filter.cursor,
        ..Default::default()
    };
    let client = state.pool.get().await?;
    Ok(Json(list_page(&client, &query).await?))
}

/// Cancels a job that has not ended; the cancel is the job's next event, with the caller as
/// its actor.
#[utoipa::path(
    post, path = "/v1/jobs/{job_id}/cancel", tag = "jobs",
    params(("job_id" = Uuid, Path, description = "The job's id")),
    request_body(content = Option<CancelJob>, description = "Optional"),
    responses(
        (status = 200, description = "The cancelled job", body = Trip),
        (status = 403, description = "Lacks jobs:write"),
        (status = 404, description = "No such job visible to the caller"),
        (status = 409, description = "The job has ended"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cancel(
    State(state): State<V1State>,
    Extension(principal): Extension<Principal>,
    Path(job_id): Path<String>,
    body: Result<Json<Option<CancelJob>>, JsonRejection>,
) -> Result<Json<Trip>, Problem> {
    principal.require(Scope::JobsWrite)?;
    let job_id = Problem::uuid("job id", &job_id)?;
    let reason = match body {
        Ok(Json(cancel)) => cancel.and_then(|c| c.reason),
        Err(JsonRejection::MissingJsonContentType(_)) => None,
        Err(rejection) => return Err(rejection.into()),
    };
    check_text("reason", &reason, 500)?;
    let owner = (!principal.is_dispatcher()).then(|| principal.owner());
    let client = state.pool.get().await?;
    let job = load(&client, job_id, owner.as_deref()).await?;
    if job.trip.state.is_terminal() {
        return Err(Problem::new(
            ErrorCode::InvalidTransition,
            format!("the job has ended ({})", job.trip.state.as_str()),
        ));
    }
    state
        .store
        .execute(TripCommand::Cancel {
            trip_id: job_id,
            actor: Actor::Dispatcher,
            actor_id: principal.actor_id(),
            reason,
        })
        .await?;
    Ok(Json(load(&client, job_id, owner.as_deref()).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_are_whole_numbers_however_written() {
        let parse = |json: &str| {
            serde_json::from_str::<NewJob>(&format!(
                r#"{{"pickup": {{"lat": 1, "lng": 1}}, "dropoff": {{"lat": 1, "lng": 1}}, {json}}}"#
            ))
            .map(|job| job.min_capacity)
        };
        assert_eq!(parse(r#""min_capacity": 2"#).unwrap(), Some(2));
        assert_eq!(parse(r#""min_capacity": 2.0"#).unwrap(), Some(2));
        assert_eq!(parse(r#""min_capacity": null"#).unwrap(), None);
        assert_eq!(parse(r#""notes": "n""#).unwrap(), None);
        for bad in ["2.5", "-1", "70000", "\"2\"", "1e300"] {
            assert!(
                parse(&format!(r#""min_capacity": {bad}"#)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn schedules_are_checked() {
        let now = 1_000_000_000;
        assert_eq!(schedule(None, None, now).unwrap(), None);
        assert!(schedule(None, Some(60), now).is_err());
        assert_eq!(
            schedule(Some(now + 60_000), None, now).unwrap(),
            Some(Schedule {
                pickup_at: now + 60_000,
                window_end: now + 60_000 + 900_000,
            })
        );
        // A pickup time just past is still within its window.
        assert!(schedule(Some(now - 1_000), Some(60), now).is_ok());
        assert!(schedule(Some(now - 61_000), Some(60), now).is_err());
        assert!(schedule(Some(now + 31 * 86_400_000), None, now).is_err());
        assert!(schedule(Some(now + 60_000), Some(4), now).is_err());
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap().len(), 36);
        headers.insert("idempotency-key", HeaderValue::from_static("order-42"));
        assert_eq!(idempotency_key(&headers).unwrap(), "order-42");
        for bad in ["", "a b", &"k".repeat(201)] {
            headers.insert("idempotency-key", HeaderValue::from_str(bad).unwrap());
            assert!(idempotency_key(&headers).is_err(), "{bad:?}");
        }
    }
}
