//! The integrators' API, versioned under `/v1`: jobs (a trip created through the API, with
//! an idempotency key, an external reference and notes), trips and their timelines, drivers,
//! and the API keys integrators' servers use. Errors are RFC 9457 problem documents carrying
//! the closed [`ErrorCode`] set; lists page with opaque cursors; each API key has its own
//! request rate. The contract is the OpenAPI document [`openapi::document`] generates, served
//! at `/v1/openapi.json` and checked in as `docs/openapi.json`.
//!
//! Who may do what: a dispatcher token may do everything; an API key what its scopes allow
//! ([`Scope`]); a driver's or rider's token nothing here.

pub mod jobs;
pub mod keys;
pub mod openapi;
mod paging;
mod reads;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use deadpool_postgres::Pool;
use protocol::ErrorCode;
use protocol::bus::CommandError;
use protocol::client::Role;
use protocol::token::Verifier;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::StoreError;
use crate::meters as m;
use crate::store::Store;
pub use keys::{ApiKeys, KeyRate, Scope};

/// Largest request body: a job is well under a kilobyte.
const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub(crate) struct V1State {
    pool: Pool,
    store: Store,
    verifier: Verifier,
    keys: ApiKeys,
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemBody {
    /// A URI naming the kind of problem: `urn:dispatch:problem:{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The machine-readable code, from the same closed set the WebSocket protocol uses.
    pub code: ErrorCode,
}

/// A refusal, answered as `application/problem+json`.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    code: ErrorCode,
    detail: String,
    retry_after_s: Option<u64>,
}

impl Problem {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            status: status_of(code),
            code,
            detail: detail.into(),
            retry_after_s: None,
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidField, detail)
    }

    /// A path's id that must be a UUID, named `what` in the refusal ("job id is not a UUID").
    pub fn uuid(what: &str, id: &str) -> Result<uuid::Uuid, Self> {
        id.parse()
            .map_err(|_| Self::invalid(format!("{what} is not a UUID")))
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no such {what}"))
    }

    /// What the caller is told.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// The HTTP status of each code.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict
        | ErrorCode::InvalidTransition
        | ErrorCode::StaleUpdate
        | ErrorCode::NotAtPickup => StatusCode::CONFLICT,
        ErrorCode::OutsideServiceArea | ErrorCode::PickupNotAllowed => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable | ErrorCode::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::UnsupportedVersion
        | ErrorCode::InvalidMessage
        | ErrorCode::InvalidCoordinates
        | ErrorCode::InvalidField => StatusCode::BAD_REQUEST,
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = ProblemBody {
            kind: format!("urn:dispatch:problem:{}", self.code.as_str()),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            code: self.code,
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<CommandError> for Problem {
    fn from(error: CommandError) -> Self {
        // Internal errors were logged where they happened; the client learns only the code.
        let detail = match error.code {
            ErrorCode::Internal => "internal error".to_owned(),
            _ => error.message,
        };
        Self::new(error.code, detail)
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        error.into_command_error().into()
    }
}

impl From<tokio_postgres::Error> for Problem {
    fn from(error: tokio_postgres::Error) -> Self {
        StoreError::from(error).into()
    }
}

impl From<deadpool_postgres::PoolError> for Problem {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        StoreError::from(error).into()
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        let code = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
            _ => ErrorCode::InvalidMessage,
        };
        let mut problem = Self::new(code, rejection.body_text());
        if rejection.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            problem.status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        }
        problem
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid(rejection.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Self {
        Self::invalid(rejection.body_text())
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    Dispatcher { sub: String },
    Key { key_id: String, scopes: Vec<Scope> },
}

impl Principal {
    /// Whose jobs it creates: `dispatcher:{sub}` or `key:{key_id}`.
    pub fn owner(&self) -> String {
        match self {
            Self::Dispatcher { sub } => format!("dispatcher:{sub}"),
            Self::Key { key_id, .. } => format!("key:{key_id}"),
        }
    }

    /// The id recorded as the actor of what it does.
    pub fn actor_id(&self) -> String {
        match self {
            Self::Dispatcher { sub } => sub.clone(),
            Self::Key { key_id, .. } => format!("key:{key_id}"),
        }
    }

    pub fn is_dispatcher(&self) -> bool {
        matches!(self, Self::Dispatcher { .. })
    }

    /// Whether it holds `scope` (a dispatcher holds them all).
    pub fn has(&self, scope: Scope) -> bool {
        match self {
            Self::Dispatcher { .. } => true,
            Self::Key { scopes, .. } => scopes.contains(&scope),
        }
    }

    /// Refuses unless it holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Problem> {
        if self.has(scope) {
            return Ok(());
        }
        Err(Problem::new(
            ErrorCode::Forbidden,
            format!("this API key lacks the {} scope", scope.as_str()),
        ))
    }

    /// Refuses anyone but a dispatcher.
    pub fn require_dispatcher(&self) -> Result<(), Problem> {
        if self.is_dispatcher() {
            return Ok(());
        }
        Err(Problem::new(
            ErrorCode::Forbidden,
            "only a dispatcher may do this",
        ))
    }
}

/// Finds the caller from its bearer token (a dispatcher's JWT or an API key) and applies the
/// key's request rate.
async fn authenticate(
    State(state): State<V1State>,
    mut request: Request,
    next: Next,
) -> Result<Response, Problem> {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(bearer) = bearer else {
        return Err(Problem::new(
            ErrorCode::Unauthorized,
            "missing bearer token (a dispatcher token or an API key)",
        ));
    };
    let principal = if keys::is_api_key(bearer) {
        state.keys.authenticate(bearer).await?
    } else {
        let now_s = protocol::time::now_ms() / 1000;
        let claims = state
            .verifier
            .verify(bearer, now_s)
            .map_err(|e| Problem::new(ErrorCode::Unauthorized, e.to_string()))?;
        if claims.role != Role::Dispatcher {
            return Err(Problem::new(
                ErrorCode::Forbidden,
                "the integrator API takes API keys and dispatcher tokens",
            ));
        }
        Principal::Dispatcher { sub: claims.sub }
    };
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// Counts every request by operation and status, refusals included.
async fn count_requests(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let route = route_name(&method, &path);
    let status = response.status().as_u16().to_string();
    metrics::counter!(m::HTTP_REQUESTS, "route" => route, "status" => status).increment(1);
    response
}

/// A bounded name for a request's operation, for metric labels.
fn route_name(method: &axum::http::Method, path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["jobs"]) => "v1_create_job",
        ("GET", ["jobs"]) => "v1_list_jobs",
        ("GET", ["jobs", _]) => "v1_get_job",
        ("POST", ["jobs", _, "cancel"]) => "v1_cancel_job",
        ("GET", ["trips"]) => "v1_list_trips",
        ("GET", ["trips", _]) => "v1_get_trip",
        ("GET", ["drivers"]) => "v1_list_drivers",
        ("GET", ["drivers", _, "trips"]) => "v1_driver_trips",
        (_, ["api-keys", ..]) => "v1_api_keys",
        _ => "v1_other",
    }
}

/// The `/v1` routes. `/v1/openapi.json` needs no token; everything else does.
pub fn routes(pool: Pool, store: Store, verifier: Verifier, rate: KeyRate) -> Router {
    let state = V1State {
        keys: ApiKeys::new(pool.clone(), rate),
        pool,
        store,
        verifier,
    };
    let authenticated = Router::new()
        .route("/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/jobs/{job_id}", get(jobs::get_one))
        .route("/v1/jobs/{job_id}/cancel", post(jobs::cancel))
        .route("/v1/trips", get(reads::list_trips))
        .route("/v1/trips/{trip_id}", get(reads::trip_timeline))
        .route("/v1/drivers", get(reads::list_drivers))
        .route("/v1/drivers/{driver_id}/trips", get(reads::driver_trips))
        .route("/v1/api-keys", post(keys::create).get(keys::list))
        .route("/v1/api-keys/{key_id}", axum::routing::delete(keys::revoke))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(authenticated)
        .route("/v1/openapi.json", get(openapi::serve))
        .fallback(|| async { Problem::new(ErrorCode::NotFound, "no such operation") })
        .method_not_allowed_fallback(|| async {
            let mut problem = Problem::new(ErrorCode::InvalidMessage, "method not allowed");
            problem.status = StatusCode::METHOD_NOT_ALLOWED;
            problem
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_status_and_internal_text_stays_inside() {
        assert_eq!(
            status_of(ErrorCode::RateLimited),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            status_of(ErrorCode::OutsideServiceArea),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let problem: Problem =
            CommandError::new(ErrorCode::Internal, "relation \"trips\" is locked").into();
        assert_eq!(problem.detail, "internal error");
    }

    #[test]
    fn route_names_are_bounded() {
        use axum::http::Method;
        assert_eq!(route_name(&Method::GET, "/v1/jobs/abc"), "v1_get_job");
        assert_eq!(
            route_name(&Method::POST, "/v1/jobs/a/cancel"),
            "v1_cancel_job"
        );
        assert_eq!(route_name(&Method::GET, "/v1/x/y/z"), "v1_other");
    }
}
