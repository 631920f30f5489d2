//! The OpenAPI 3.1 document of `/v1`, generated from the handlers and types with `utoipa`.
//! `docs/openapi.json` is a checked-in copy; a test fails when it is stale
//! (`UPDATE_OPENAPI=1 cargo test -p trips openapi` rewrites it).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{jobs, keys, reads};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("a dispatcher's JWT, or an API key dk_{key_id}_{secret}")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dispatch integrator API",
        version = "1",
        description = "Create and follow jobs, read trips and drivers, manage API keys. \
            Errors are RFC 9457 problem documents (application/problem+json) whose `code` is \
            one of a closed set. Lists page with opaque cursors. Each API key has a request \
            rate; beyond it the answer is 429 with Retry-After.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        jobs::create,
        jobs::list,
        jobs::get_one,
        jobs::cancel,
        reads::list_trips,
        reads::trip_timeline,
        reads::list_drivers,
        reads::driver_trips,
        keys::create,
        keys::list,
        keys::revoke,
    ),
    components(schemas(super::ProblemBody, protocol::ErrorCode)),
    modifiers(&BearerAuth),
    tags(
        (name = "jobs", description = "Dispatch requests created through the API"),
        (name = "trips", description = "Every trip, riders' and jobs, with timelines"),
        (name = "drivers", description = "Drivers and their history"),
        (name = "api-keys", description = "Integrators' keys, managed by dispatchers"),
    )
)]
struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as served and checked in.
pub fn json() -> String {
    let mut text = document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

static JSON: LazyLock<String> = LazyLock::new(json);

/// `GET /v1/openapi.json`, no token needed.
pub(crate) async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], JSON.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

    #[test]
    fn openapi_document_is_current() {
        let generated = json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(CHECKED_IN, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json is stale; run `UPDATE_OPENAPI=1 cargo test -p trips openapi` \
             and commit the result"
        );
    }

    #[test]
    fn every_operation_is_documented_with_its_security() {
        let document = document();
        assert!(json().contains("\"openapi\": \"3.1.0\""));
        let mut operations = 0;
        for (path, item) in &document.paths.paths {
            for operation in [&item.get, &item.post, &item.delete].into_iter().flatten() {
                operations += 1;
                assert!(operation.security.is_some(), "{path} has no security");
                assert!(
                    operation.responses.responses.contains_key("401"),
                    "{path} does not document 401"
                );
            }
        }
        assert_eq!(operations, 11);
    }
}
