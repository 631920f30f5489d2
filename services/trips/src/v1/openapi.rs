//! The OpenAPI 3.1 document of `/v1`, generated from the handlers and types with `utoipa`.
//! `docs/openapi.json` is a checked-in copy; a test fails when it is stale
//! (`UPDATE_OPENAPI=1 cargo test -p trips openapi` rewrites it).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, Type};
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

/// Every refusal is a problem document: a handler documents a refusal's status and what it
/// means, and this gives it its body.
struct Problems;

impl Modify for Problems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for operation in operations(openapi) {
            for (status, response) in operation.responses.responses.iter_mut() {
                let refusal = status.starts_with('4') || status.starts_with('5');
                if let (true, utoipa::openapi::RefOr::T(response)) = (refusal, response)
                    && response.content.is_empty()
                {
                    response
                        .content
                        .insert("application/problem+json".to_owned(), problem_content());
                }
            }
        }
    }
}

/// Every operation of the document.
fn operations(
    openapi: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
    })
}

fn problem_content() -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ProblemBody")))
        .build()
}

/// What every operation behind a token may answer whatever its handler does: no valid token
/// (401), an API key over its rate (429, with `Retry-After`), the database away while the key
/// is checked or the operation runs (503), and for an operation with a body, a body too large
/// (413) or not JSON (415). Said once here rather than on each handler; a handler that
/// documents one of them itself keeps its own description.
pub(crate) const REFUSALS: &[(&str, &str)] = &[
    (
        "400",
        "Invalid: a path parameter, query parameter or field is malformed or out of range (the problem's `detail` names it)",
    ),
    ("401", "No valid token"),
    ("429", "Rate limited; see Retry-After"),
    (
        "503",
        "The database is unavailable; retry later (with the same idempotency key)",
    ),
];

/// What an operation that takes a body may answer before its handler reads it.
const BODY_REFUSALS: &[(&str, &str)] = &[("413", "Body too large"), ("415", "Not JSON")];

struct Refusals;

impl Modify for Refusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for operation in operations(openapi) {
            if operation.security.is_none() {
                continue;
            }
            let takes_input = operation.parameters.as_ref().is_some_and(|p| !p.is_empty())
                || operation.request_body.is_some();
            for (status, description) in REFUSALS {
                if *status == "400" && !takes_input {
                    continue;
                }
                let mut response = ResponseBuilder::new()
                    .description(*description)
                    .content("application/problem+json", problem_content());
                if *status == "429" {
                    response = response.header(
                        "Retry-After",
                        HeaderBuilder::new()
                            .schema(
                                utoipa::openapi::ObjectBuilder::new().schema_type(Type::Integer),
                            )
                            .description(Some("Seconds until the key may call again"))
                            .build(),
                    );
                }
                operation
                    .responses
                    .responses
                    .entry((*status).to_owned())
                    .or_insert_with(|| response.build().into());
            }
            // The JSON body's own refusals, before the handler reads it.
            if operation.request_body.is_some() {
                for (status, description) in BODY_REFUSALS {
                    operation
                        .responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(*description)
                                .content("application/problem+json", problem_content())
                                .build()
                                .into()
                        });
                }
            }
        }
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
    modifiers(&BearerAuth, &Refusals, &Problems),
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
                for status in ["401", "403", "429", "503"] {
                    assert!(
                        operation.responses.responses.contains_key(status),
                        "{path} does not document {status}"
                    );
                }
            }
        }
        assert_eq!(operations, 11);
    }
}
