//! The HTTP JSON API for dashboards and operators: trip history, one trip's timeline and route,
//! the zones (listed, created, replaced and deleted), and the webhooks (registered, listed,
//! deleted, their dead letters listed and delivered again). Every request needs a dispatcher
//! token (`Authorization: Bearer ...`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::{GenericClient, Pool};
use protocol::client::Role;
use protocol::token::Verifier;
use protocol::trip::{TripState, TripView};
use protocol::zone::{Zone, ZoneSpec};
use protocol::{ErrorCode, validate};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;
use crate::meters as m;
use crate::outbox::Publisher;
use crate::rows::{TRIP_COLUMNS, trip_from_row};
use crate::webhooks::{DeadLetter, Webhook, WebhookError, WebhookSpec, Webhooks};
use crate::zones::{ZoneChangeError, Zones};

#[derive(Clone)]
struct ApiState {
    pool: Pool,
    zones: Zones,
    webhooks: Webhooks,
    publisher: Publisher,
    verifier: Verifier,
}

/// Largest request body: a zone of the most vertices allowed fits with room to spare.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An error as the API returns it.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let error = error.into_command_error();
        let status = match error.code {
            ErrorCode::Unavailable | ErrorCode::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.code, error.message)
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        StoreError::from(error).into()
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        StoreError::from(error).into()
    }
}

async fn authenticate(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(bearer) = bearer else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing bearer token",
        ));
    };
    let now_s = protocol::time::now_ms() / 1000;
    let claims = state.verifier.verify(bearer, now_s).map_err(|e| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            e.to_string(),
        )
    })?;
    if claims.role != Role::Dispatcher {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "the trips API is for dispatchers",
        ));
    }
    Ok(next.run(request).await)
}

/// Filters of the trip list; all optional.
#[derive(Debug, Default, Deserialize)]
pub struct TripFilter {
    pub rider_id: Option<String>,
    pub driver_id: Option<String>,
    /// One state, or `active`: every state a trip is under way in (requested to in progress).
    pub state: Option<String>,
    /// Requested at or after, milliseconds since the epoch.
    pub from: Option<i64>,
    /// Requested before, milliseconds since the epoch.
    pub to: Option<i64>,
    /// At most this many, newest first (default 50, at most 500).
    pub limit: Option<i64>,
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidField, message)
}

async fn list_trips(
    State(state): State<ApiState>,
    Query(filter): Query<TripFilter>,
) -> Result<Json<Vec<TripView>>, ApiError> {
    for (field, value) in [
        ("rider_id", &filter.rider_id),
        ("driver_id", &filter.driver_id),
    ] {
        if let Some(value) = value {
            validate::id(field, value).map_err(|e| bad_request(e.to_string()))?;
        }
    }
    let states: Option<Vec<&str>> = match filter.state.as_deref() {
        Some("active") => Some(
            TripState::ALL
                .into_iter()
                .filter(|s| !s.is_terminal())
                .map(TripState::as_str)
                .collect(),
        ),
        Some(s) => Some(vec![
            TripState::parse(s)
                .ok_or_else(|| bad_request(format!("unknown state {s:?}")))?
                .as_str(),
        ]),
        None => None,
    };
    let limit = filter.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(bad_request("limit must be between 1 and 500"));
    }
    let client = state.pool.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {TRIP_COLUMNS} FROM trips \
                 WHERE ($1::text IS NULL OR rider_id = $1) \
                   AND ($2::text IS NULL OR driver_id = $2) \
                   AND ($3::text[] IS NULL OR state = ANY($3)) \
                   AND ($4::int8 IS NULL OR requested_at >= to_timestamp($4::int8 / 1000.0)) \
                   AND ($5::int8 IS NULL OR requested_at < to_timestamp($5::int8 / 1000.0)) \
                 ORDER BY requested_at DESC LIMIT $6"
            ),
            &[
                &filter.rider_id,
                &filter.driver_id,
                &states,
                &filter.from,
                &filter.to,
                &limit,
            ],
        )
        .await?;
    Ok(Json(rows.iter().map(|r| trip_from_row(r).view).collect()))
}

/// One entry of a trip's timeline.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    pub event_id: i64,
    pub from: Option<String>,
    pub to: String,
    pub actor: String,
    pub actor_id: Option<String>,
    pub driver_id: Option<String>,
    pub reason: Option<String>,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    /// For a driver's progress report: metres from the pickup (arrived, started) or the
    /// dropoff (completed) where it was reported.
    pub distance_m: Option<f64>,
    /// A completion reported far from the dropoff.
    pub flagged: bool,
    pub at: i64,
}

/// One point of a trip's route.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoutePoint {
    pub lat: f64,
    pub lng: f64,
    pub heading: Option<f32>,
    pub speed: Option<f32>,
    pub ts: i64,
}

/// A trip with its timeline and route.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TripDetail {
    pub trip: TripView,
    pub driver_name: Option<String>,
    pub events: Vec<EventView>,
    pub route: Vec<RoutePoint>,
}

async fn trip_detail(
    State(state): State<ApiState>,
    Path(trip_id): Path<String>,
) -> Result<Json<TripDetail>, ApiError> {
    let trip_id: Uuid = trip_id
        .parse()
        .map_err(|_| bad_request("trip id is not a UUID"))?;
    let client = state.pool.get().await?;
    let detail = load_detail(&client, trip_id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such trip"))?;
    Ok(Json(detail))
}

/// A trip with its driver's name, timeline and route, if it exists.
pub async fn load_detail(
    client: &impl GenericClient,
    trip_id: Uuid,
) -> Result<Option<TripDetail>, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            &format!("SELECT {TRIP_COLUMNS} FROM trips WHERE trip_id = $1"),
            &[&trip_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let trip = trip_from_row(&row).view;
    let driver_name = match &trip.driver_id {
        Some(driver) => client
            .query_opt("SELECT name FROM drivers WHERE driver_id = $1", &[driver])
            .await?
            .and_then(|r| r.get(0)),
        None => None,
    };
    let events = client
        .query(
            "SELECT event_id, from_state, to_state, actor, actor_id, driver_id, reason, lat, lng, \
             (extract(epoch from at) * 1000)::int8, distance_m, flagged \
             FROM trip_events WHERE trip_id = $1 ORDER BY version",
            &[&trip_id],
        )
        .await?
        .iter()
        .map(|r| EventView {
            event_id: r.get(0),
            from: r.get(1),
            to: r.get(2),
            actor: r.get(3),
            actor_id: r.get(4),
            driver_id: r.get(5),
            reason: r.get(6),
            lat: r.get(7),
            lng: r.get(8),
            at: r.get(9),
            distance_m: r.get(10),
            flagged: r.get(11),
        })
        .collect();
    let route = client
        .query(
            "SELECT lat, lng, heading, speed, (extract(epoch from recorded_at) * 1000)::int8 \
             FROM breadcrumbs WHERE trip_id = $1 ORDER BY recorded_at, seq LIMIT 20000",
            &[&trip_id],
        )
        .await?
        .iter()
        .map(|r| RoutePoint {
            lat: r.get(0),
            lng: r.get(1),
            heading: r.get(2),
            speed: r.get(3),
            ts: r.get(4),
        })
        .collect();
    Ok(Some(TripDetail {
        trip,
        driver_name,
        events,
        route,
    }))
}

impl From<ZoneChangeError> for ApiError {
    fn from(error: ZoneChangeError) -> Self {
        match error {
            ZoneChangeError::Invalid(error) => bad_request(error.to_string()),
            ZoneChangeError::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such zone")
            }
            conflict @ ZoneChangeError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                conflict.to_string(),
            ),
            ZoneChangeError::Store(error) => error.into(),
        }
    }
}

/// A body that is not the JSON expected: what was wrong with it, never a server error.
fn refused_body(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorCode::TooLarge
    } else {
        ErrorCode::InvalidMessage
    };
    // Unparsable or of the wrong shape alike: 400, as every other refusal of a field.
    let status = match status {
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE => status,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, code, rejection.body_text())
}

fn zone_id(text: &str) -> Result<Uuid, ApiError> {
    text.parse()
        .map_err(|_| bad_request("zone id is not a UUID"))
}

/// The version an `If-Match` header asks for (`"3"` or `3`), if any.
fn expected_version(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| bad_request("If-Match must be a zone version, such as \"3\""))
}

async fn list_zones(State(state): State<ApiState>) -> Result<Json<Vec<Zone>>, ApiError> {
    Ok(Json(state.zones.list().await?))
}

async fn get_zone(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Zone>, ApiError> {
    state
        .zones
        .get(zone_id(&id)?)
        .await?
        .map(Json)
        .ok_or_else(|| ZoneChangeError::NotFound.into())
}

async fn create_zone(
    State(state): State<ApiState>,
    body: Result<Json<ZoneSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<Zone>), ApiError> {
    let Json(spec) = body.map_err(refused_body)?;
    Ok((StatusCode::CREATED, Json(state.zones.create(&spec).await?)))
}

async fn update_zone(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<ZoneSpec>, JsonRejection>,
) -> Result<Json<Zone>, ApiError> {
    let zone_id = zone_id(&id)?;
    let expected = expected_version(&headers)?;
    let Json(spec) = body.map_err(refused_body)?;
    Ok(Json(state.zones.update(zone_id, &spec, expected).await?))
}

/// A queue zone's drivers, in order.
#[derive(Debug, Serialize)]
struct ZoneQueue {
    zone_id: Uuid,
    drivers: Vec<crate::tracking::Queued>,
}

async fn zone_queue(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ZoneQueue>, ApiError> {
    let zone_id = zone_id(&id)?;
    let zone = state
        .zones
        .get(zone_id)
        .await?
        .ok_or(ZoneChangeError::NotFound)?;
    if zone.kind != protocol::zone::ZoneKind::Queue {
        return Err(bad_request(format!(
            "zone {:?} is a {} zone; only queue zones have a queue",
            zone.name,
            zone.kind.as_str()
        )));
    }
    let client = state.pool.get().await?;
    let drivers = crate::tracking::queue(&client, zone_id, &[], 1000).await?;
    Ok(Json(ZoneQueue { zone_id, drivers }))
}

async fn delete_zone(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.zones.delete(zone_id(&id)?, &state.publisher).await?;
    Ok(StatusCode::NO_CONTENT)
}

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        match error {
            WebhookError::Invalid(_) | WebhookError::Destination(_) => {
                bad_request(error.to_string())
            }
            WebhookError::NotFound => ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no such webhook",
            ),
            WebhookError::TooMany => {
                ApiError::new(StatusCode::CONFLICT, ErrorCode::Conflict, error.to_string())
            }
            WebhookError::Store(error) => error.into(),
        }
    }
}

fn webhook_id(text: &str) -> Result<Uuid, ApiError> {
    text.parse()
        .map_err(|_| bad_request("webhook id is not a UUID"))
}

async fn list_webhooks(State(state): State<ApiState>) -> Result<Json<Vec<Webhook>>, ApiError> {
    Ok(Json(state.webhooks.list().await?))
}

async fn create_webhook(
    State(state): State<ApiState>,
    body: Result<Json<WebhookSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<Webhook>), ApiError> {
    let Json(spec) = body.map_err(refused_body)?;
    Ok((
        StatusCode::CREATED,
        Json(state.webhooks.create(&spec).await?),
    ))
}

async fn get_webhook(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    Ok(Json(state.webhooks.get(webhook_id(&id)?).await?))
}

async fn delete_webhook(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.webhooks.delete(webhook_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadFilter {
    /// At most this many, oldest first (default 100, at most 1,000).
    limit: Option<i64>,
}

async fn dead_letters(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(filter): Query<DeadFilter>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    let limit = filter.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(bad_request("limit must be between 1 and 1000"));
    }
    Ok(Json(
        state.webhooks.dead_letters(webhook_id(&id)?, limit).await?,
    ))
}

/// Which dead letters to deliver again: those named, or all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Redeliver {
    #[serde(default)]
    delivery_ids: Option<Vec<i64>>,
}

#[derive(Debug, Serialize)]
struct Requeued {
    requeued: u64,
}

async fn redeliver(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Json<Redeliver>, JsonRejection>,
) -> Result<Json<Requeued>, ApiError> {
    let id = webhook_id(&id)?;
    // An empty body redelivers all.
    let only = match body {
        Ok(Json(Redeliver { delivery_ids })) => delivery_ids,
        Err(JsonRejection::MissingJsonContentType(_)) => None,
        Err(rejection) => return Err(refused_body(rejection)),
    };
    if only.as_ref().is_some_and(|ids| ids.len() > 10_000) {
        return Err(bad_request("at most 10000 delivery ids at once"));
    }
    let requeued = state.webhooks.redeliver(id, only.as_deref()).await?;
    Ok(Json(Requeued { requeued }))
}

/// The API routes, each behind dispatcher authentication; `publisher` is woken when a change
/// writes events (a zone deleted with drivers inside).
pub fn routes(
    pool: Pool,
    zones: Zones,
    webhooks: Webhooks,
    publisher: Publisher,
    verifier: Verifier,
) -> Router {
    let state = ApiState {
        pool,
        zones,
        webhooks,
        publisher,
        verifier,
    };
    Router::new()
        .route("/api/trips", get(list_trips))
        .route("/api/trips/{trip_id}", get(trip_detail))
        .route("/api/zones", get(list_zones).post(create_zone))
        .route(
            "/api/zones/{zone_id}",
            get(get_zone).put(update_zone).delete(delete_zone),
        )
        .route("/api/zones/{zone_id}/queue", get(zone_queue))
        .route("/api/webhooks", get(list_webhooks).post(create_webhook))
        .route(
            "/api/webhooks/{webhook_id}",
            get(get_webhook).delete(delete_webhook),
        )
        .route("/api/webhooks/{webhook_id}/dead", get(dead_letters))
        .route("/api/webhooks/{webhook_id}/redeliver", post(redeliver))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route_layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Counts every API request by route and status, refusals included (the outermost layer).
async fn count_requests(request: Request, next: Next) -> Response {
    let route = match request.uri().path() {
        "/api/trips" => "trips",
        "/api/zones" => "zones",
        path if path.starts_with("/api/zones/") => "zone",
        "/api/webhooks" => "webhooks",
        path if path.starts_with("/api/webhooks/") => "webhook",
        _ => "trip",
    };
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(m::HTTP_REQUESTS, "route" => route, "status" => status).increment(1);
    response
}
