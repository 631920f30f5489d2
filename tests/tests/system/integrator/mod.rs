//! The integrators' API (`/v1`) against a real trips service, PostgreSQL and NATS: [`jobs`]
//! (idempotent creates, paging, cancels, the request reaching matchers), [`schedule`]d jobs
//! (waiting through a restart, dispatched ahead of the pickup, expiring after the window) and
//! [`auth`] (every
//! endpoint against every role and scope, identity-provider tokens from a key set served over
//! HTTP, the common attacks) and the [`contract`]: schemathesis fuzzing the API against its
//! own OpenAPI document.

mod auth;
mod contract;
mod jobs;
mod schedule;

use std::net::SocketAddr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kit::Bus;
use protocol::Subjects;
use protocol::time::now_ms;
use protocol::token::ClaimRules;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tests::services::{Running, TOKEN_SECRET, start_trips, trips_config};
use tests::{NatsServer, TestDb, eventually, unique_prefix};
use tokio_util::sync::CancellationToken;

const ISSUER: &str = "https://id.example.test";
const AUDIENCE: &str = "dispatch";
const PATIENCE: Duration = Duration::from_secs(15);
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt");

/// A token as an identity provider would issue it, signed with `alg` (HS256 with the shared
/// secret; ES256 and RS256 with the test key pairs whose public halves the key set holds).
fn sign(alg: Algorithm, claims: &Value) -> String {
    let (key, kid) = match alg {
        Algorithm::HS256 => (EncodingKey::from_secret(TOKEN_SECRET).unwrap(), None),
        Algorithm::ES256 => (
            EncodingKey::from_ec_der(&std::fs::read(format!("{FIXTURES}/es256.pk8.der")).unwrap()),
            Some("test-es256"),
        ),
        Algorithm::RS256 => (
            EncodingKey::from_rsa_der(&std::fs::read(format!("{FIXTURES}/rs256.pk1.der")).unwrap()),
            Some("test-rs256"),
        ),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// Valid claims for `role` and `sub`.
fn claims(role: &str, sub: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "role": role,
        "iat": now_ms() / 1000, "exp": now_ms() / 1000 + 300,
    })
}

fn dispatcher() -> String {
    sign(Algorithm::ES256, &claims("dispatcher", "ops-1"))
}

/// Serves the test key set over HTTP, as an identity provider publishes it.
async fn serve_key_set() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let set = std::fs::read_to_string(format!("{FIXTURES}/jwks.json")).unwrap();
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let set = set.clone();
            async move { ([("content-type", "application/json")], set) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

struct Fixture {
    _nats: NatsServer,
    db: TestDb,
    bus: Bus,
    trips: Running,
    config: trips::Config,
    http: reqwest::Client,
    stop_keys: CancellationToken,
    _key_set: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop_keys.cancel();
    }
}

/// An answer: status, headers and the body as JSON (`Null` when empty or not JSON).
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Fixture {
    async fn start(tune: impl FnOnce(&mut trips::Config)) -> Self {
        tests::init_logs();
        let nats = NatsServer::start();
        let db = TestDb::create().await;
        let prefix = unique_prefix();
        let mut config = trips_config(&db.url, &nats.url(), &prefix);
        let rules = ClaimRules {
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            ..ClaimRules::default()
        };
        config.verifier = kit::auth::verifier(Some(TOKEN_SECRET), rules, None).unwrap();
        // The key set comes from a URL, fetched as a service fetches it.
        let (key_set, key_set_task) = serve_key_set().await;
        let stop_keys = CancellationToken::new();
        tokio::spawn(kit::auth::follow_keys(
            config.verifier.clone(),
            format!("http://{key_set}/.well-known/jwks.json")
                .parse()
                .unwrap(),
            Duration::from_secs(300),
            kit::auth::KeyMeters {
                keys: trips::meters::JWKS_KEYS,
                failures: trips::meters::JWKS_FAILURES,
            },
            stop_keys.clone(),
        ));
        let verifier = config.verifier.clone();
        eventually("the key set fetched", PATIENCE, || async {
            (verifier.key_count() == 2).then_some(())
        })
        .await;
        tune(&mut config);
        let trips = start_trips(config.clone()).await;
        let client = async_nats::connect(nats.url()).await.unwrap();
        let bus = Bus::new(client, Subjects::new(&prefix).unwrap());
        Self {
            _nats: nats,
            db,
            bus,
            trips,
            config,
            http: reqwest::Client::new(),
            stop_keys,
            _key_set: key_set_task,
        }
    }

    /// Stops the trips service and starts it again on the same database.
    async fn restart_trips(&mut self) {
        self.trips.halt().await.unwrap();
        self.trips = start_trips(self.config.clone()).await;
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.trips.http)
    }

    /// Sends a request with an optional bearer token and JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Creates an API key with `scopes`; its token.
    async fn api_key(&self, scopes: &[&str]) -> (String, String) {
        let answer = self
            .call(
                Method::POST,
                "/v1/api-keys",
                Some(&dispatcher()),
                Some(&json!({"name": "courier backend", "scopes": scopes})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        (
            answer.body["key_id"].as_str().unwrap().to_owned(),
            answer.body["token"].as_str().unwrap().to_owned(),
        )
    }
}

/// A job's body, with pickup and dropoff in the test city.
fn job(reference: &str) -> Value {
    json!({
        "pickup": {"lat": 52.520008, "lng": 13.404954},
        "dropoff": {"lat": 52.5, "lng": 13.45},
        "vehicle_class": "standard",
        "customer_id": "customer-1",
        "external_ref": reference,
        "notes": "<b>ring twice</b>",
    })
}

/// Checks a refusal is a problem document with the given status and code.
fn assert_problem(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(
        answer.headers["content-type"], "application/problem+json",
        "{}",
        answer.body
    );
    assert_eq!(answer.body["code"], code, "{}", answer.body);
    assert_eq!(answer.body["status"], status.as_u16());
    assert_eq!(answer.body["type"], format!("urn:dispatch:problem:{code}"));
}
