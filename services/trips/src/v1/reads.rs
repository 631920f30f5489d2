//! Reading trips (every trip, a rider's or a job) and drivers.

// utoipa's expansion of `params(SomeFilter)` names the type with a path the lint flags.
#![allow(unused_qualifications)]

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use protocol::trip::{TripState, VehicleClass};
use protocol::validate;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::jobs::{ListQuery, Page, Trip, list_page};
use super::{Principal, Problem, Scope, V1State, paging};
use crate::api::{TripDetail, load_detail};

/// Filters of the trip list; all optional.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TripFilter {
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_:-]+$")]
    pub rider_id: Option<String>,
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_:-]+$")]
    pub driver_id: Option<String>,
    pub state: Option<TripState>,
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

/// Trips, riders' and jobs alike, newest first.
#[utoipa::path(
    get, path = "/v1/trips", tag = "trips",
    params(TripFilter),
    responses(
        (status = 200, description = "A page of trips", body = Page<Trip>),
        (status = 403, description = "Lacks trips:read"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_trips(
    State(state): State<V1State>,
    Extension(principal): Extension<Principal>,
    filter: Result<Query<TripFilter>, QueryRejection>,
) -> Result<Json<Page<Trip>>, Problem> {
    principal.require(Scope::TripsRead)?;
    let Query(filter) = filter?;
    let query = ListQuery {
        rider_id: filter.rider_id,
        driver_id: filter.driver_id,
        state: filter.state,
        from: filter.from,
        to: filter.to,
        limit: filter.limit,
        cursor: filter.cursor,
        ..Default::default()
    };
    let client = state.pool.get().await?;
    Ok(Json(list_page(&client, &query).await?))
}

/// A trip with its timeline (every event, with actor and position) and its route.
#[utoipa::path(
    get, path = "/v1/trips/{trip_id}", tag = "trips",
    params(("trip_id" = Uuid, Path, description = "The trip's (or job's) id")),
    responses(
        (status = 200, description = "The trip, its events and route", body = TripDetail),
        (status = 403, description = "Lacks trips:read, and not the key's own job"),
        (status = 404, description = "No such trip"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn trip_timeline(
    State(state): State<V1State>,
    Extension(principal): Extension<Principal>,
    Path(trip_id): Path<String>,
) -> Result<Json<TripDetail>, Problem> {
    if !principal.has(Scope::TripsRead) {
        principal.require(Scope::JobsWrite)?;
    }
    let trip_id = Problem::uuid("trip id", &trip_id)?;
    let client = state.pool.get().await?;
    if !principal.has(Scope::TripsRead) {
        // A key with only jobs:write reads the timelines of its own jobs.
        let own = client
            .query_opt(
                "SELECT 1 FROM trips WHERE trip_id = $1 AND created_by = $2",
                &[&trip_id, &principal.owner()],
            )
            .await?;
        if own.is_none() {
            return Err(Problem::not_found("trip"));
        }
    }
    let detail = load_detail(&client, trip_id)
        .await?
        .ok_or_else(|| Problem::not_found("trip"))?;
    Ok(Json(detail))
}

/// Filters of the driver list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DriverFilter {
    /// Only drivers online (true) or offline (false).
    pub online: Option<bool>,
    /// At most this many, by id (default 50, at most 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// From a previous page's `next_cursor`.
    #[param(min_length = 1, max_length = 512)]
    pub cursor: Option<String>,
}

/// A position and when it was taken.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Located {
    pub lat: f64,
    pub lng: f64,
    /// Milliseconds since the epoch.
    pub at: i64,
}

/// A driver as the API lists it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Driver {
    pub driver_id: String,
    pub name: Option<String>,
    pub online: bool,
    pub vehicle_class: Option<VehicleClass>,
    pub capacity: Option<u16>,
    /// When its status last changed, milliseconds since the epoch.
    pub updated_at: i64,
    /// The trip offered to it or under way, if any.
    pub current_trip_id: Option<Uuid>,
    /// Its latest position recorded on that trip.
    pub last_position: Option<Located>,
}

#[derive(Debug, Serialize, Deserialize)]
struct DriverPosition {
    d: String,
}

/// Drivers by id, with status, vehicle, current trip and latest recorded position.
#[utoipa::path(
    get, path = "/v1/drivers", tag = "drivers",
    params(DriverFilter),
    responses(
        (status = 200, description = "A page of drivers", body = Page<Driver>),
        (status = 403, description = "Lacks drivers:read"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_drivers(
    State(state): State<V1State>,
    Extension(principal): Extension<Principal>,
    filter: Result<Query<DriverFilter>, QueryRejection>,
) -> Result<Json<Page<Driver>>, Problem> {
    principal.require(Scope::DriversRead)?;
    let Query(filter) = filter?;
    let limit = paging::limit(filter.limit)?;
    let after = match &filter.cursor {
        Some(cursor) => Some(paging::decode::<DriverPosition>(cursor)?.d),
        None => None,
    };
    let client = state.pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT d.driver_id, d.name, d.online, d.vehicle_class, d.capacity, \
               (extract(epoch from d.updated_at) * 1000)::int8, t.trip_id, b.lat, b.lng, \
               (extract(epoch from b.recorded_at) * 1000)::int8 \
             FROM drivers d \
             LEFT JOIN LATERAL (SELECT trip_id FROM trips WHERE driver_id = d.driver_id \
               AND state IN ('offered', 'accepted', 'arrived', 'in_progress') LIMIT 1) t ON true \
             LEFT JOIN LATERAL (SELECT lat, lng, recorded_at FROM breadcrumbs \
               WHERE trip_id = t.trip_id ORDER BY recorded_at DESC LIMIT 1) b ON true \
             WHERE ($1::bool IS NULL OR d.online = $1) AND ($2::text IS NULL OR d.driver_id > $2) \
             ORDER BY d.driver_id LIMIT $3",
        )
        .await?;
    let rows = client
        .query(&statement, &[&filter.online, &after, &(limit + 1)])
        .await?;
    let mut items: Vec<Driver> = rows
        .iter()
        .map(|r| {
            let class: Option<String> = r.get(3);
            let capacity: Option<i16> = r.get(4);
            let lat: Option<f64> = r.get(7);
            let lng: Option<f64> = r.get(8);
            let at: Option<i64> = r.get(9);
            Driver {
                driver_id: r.get(0),
                name: r.get(1),
                online: r.get(2),
                vehicle_class: class.as_deref().and_then(VehicleClass::parse),
                capacity: capacity.map(|c| c as u16),
                updated_at: r.get(5),
                current_trip_id: r.get(6),
                last_position: match (lat, lng, at) {
                    (Some(lat), Some(lng), Some(at)) => Some(Located { lat, lng, at }),
                    _ => None,
                },
            }
        })
        .collect();
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|d| {
            paging::encode(&DriverPosition {
                d: d.driver_id.clone(),
            })
        })
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// Filters of a driver's history.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryFilter {
    pub state: Option<TripState>,
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

/// One driver's trips, newest first.
#[utoipa::path(
    get, path = "/v1/drivers/{driver_id}/trips", tag = "drivers",
    params(("driver_id" = String, Path, description = "The driver's id", min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_:-]+$"), HistoryFilter),
    responses(
        (status = 200, description = "A page of the driver's trips", body = Page<Trip>),
        (status = 403, description = "Lacks drivers:read"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn driver_trips(
    State(state): State<V1State>,
    Extension(principal): Extension<Principal>,
    Path(driver_id): Path<String>,
    filter: Result<Query<HistoryFilter>, QueryRejection>,
) -> Result<Json<Page<Trip>>, Problem> {
    principal.require(Scope::DriversRead)?;
    validate::id("driver_id", &driver_id).map_err(|e| Problem::invalid(e.to_string()))?;
    let Query(filter) = filter?;
    let query = ListQuery {
        driver_id: Some(driver_id),
        state: filter.state,
        from: filter.from,
        to: filter.to,
        limit: filter.limit,
        cursor: filter.cursor,
        ..Default::default()
    };
    let client = state.pool.get().await?;
    Ok(Json(list_page(&client, &query).await?))
}
