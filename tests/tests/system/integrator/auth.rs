//! Who may call what: every `/v1` operation against every kind of caller, identity-provider
//! tokens (RS256 and ES256 from a key set) at the API and at the gateway's hello, and the
//! common attacks: broken authentication, access outside a scope or to another key's job,
//! injection through filters, ids and bodies, oversized and deeply nested bodies, floods.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use protocol::client::ServerMessage;
use tests::client::Client;

use super::*;

/// What a caller may expect from an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Allowed,
    Unauthenticated,
    Forbidden,
}

#[tokio::test]
async fn every_operation_against_every_caller_is_allowed_401_or_403_never_500() {
    let f = Fixture::start(|_| {}).await;
    let (_, jobs_key) = f.api_key(&["jobs:write"]).await;
    let (_, trips_key) = f.api_key(&["trips:read"]).await;
    let (_, drivers_key) = f.api_key(&["drivers:read"]).await;
    let (revoked_id, revoked_key) = f.api_key(&["jobs:write", "trips:read"]).await;
    // Revoking answers 204, and revoking again answers the same and changes nothing.
    for attempt in ["first", "again"] {
        let revoked = f
            .call(
                Method::DELETE,
                &format!("/v1/api-keys/{revoked_id}"),
                Some(&dispatcher()),
                None,
            )
            .await;
        assert_eq!(
            revoked.status,
            StatusCode::NO_CONTENT,
            "{attempt}: {}",
            revoked.body
        );
    }
    // The list still shows it revoked; a key that never was is not found.
    let listed = f
        .call(Method::GET, "/v1/api-keys", Some(&dispatcher()), None)
        .await;
    let entry = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == revoked_id.as_str())
        .cloned();
    assert!(
        entry.is_some_and(|k| k["revoked_at"].is_i64()),
        "{}",
        listed.body
    );
    let never = f
        .call(
            Method::DELETE,
            "/v1/api-keys/0123456789abcdef",
            Some(&dispatcher()),
            None,
        )
        .await;
    assert_problem(&never, StatusCode::NOT_FOUND, "not_found");
    let created = f
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&jobs_key),
            Some(&job("table")),
        )
        .await;
    let job_id = created.body["trip_id"].as_str().unwrap().to_owned();
    let (throwaway, _) = f.api_key(&["trips:read"]).await;

    let forged = {
        let claims = claims("dispatcher", "ops-1");
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"not-the-secret-0123456789").unwrap(),
        )
        .unwrap()
    };
    let callers: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("forged", Some(forged)),
        ("revoked key", Some(revoked_key)),
        (
            "unknown key",
            Some(format!("dk_0123456789abcdef_{}", "x".repeat(43))),
        ),
        (
            "rider",
            Some(sign(Algorithm::HS256, &claims("rider", "rider-1"))),
        ),
        (
            "driver",
            Some(sign(Algorithm::RS256, &claims("driver", "driver-1"))),
        ),
        ("dispatcher", Some(dispatcher())),
        ("jobs:write", Some(jobs_key)),
        ("trips:read", Some(trips_key)),
        ("drivers:read", Some(drivers_key)),
    ];
    let new_key = json!({"name": "n", "scopes": ["trips:read"]});
    let operations: Vec<(Method, String, Option<Value>, &[&str])> = vec![
        (
            Method::POST,
            "/v1/jobs".into(),
            Some(job("t")),
            &["dispatcher", "jobs:write"],
        ),
        (
            Method::GET,
            "/v1/jobs".into(),
            None,
            &["dispatcher", "jobs:write", "trips:read"],
        ),
        (
            Method::GET,
            format!("/v1/jobs/{job_id}"),
            None,
            &["dispatcher", "jobs:write", "trips:read"],
        ),
        (
            Method::GET,
            "/v1/trips".into(),
            None,
            &["dispatcher", "trips:read"],
        ),
        (
            Method::GET,
            format!("/v1/trips/{job_id}"),
            None,
            &["dispatcher", "jobs:write", "trips:read"],
        ),
        (
            Method::GET,
            "/v1/drivers".into(),
            None,
            &["dispatcher", "drivers:read"],
        ),
        (
            Method::GET,
            "/v1/drivers/driver-1/trips".into(),
            None,
            &["dispatcher", "drivers:read"],
        ),
        (Method::GET, "/v1/api-keys".into(), None, &["dispatcher"]),
        (
            Method::POST,
            "/v1/api-keys".into(),
            Some(new_key),
            &["dispatcher"],
        ),
        (
            Method::DELETE,
            format!("/v1/api-keys/{throwaway}"),
            None,
            &["dispatcher"],
        ),
        // Last: it ends the job the reads above use.
        (
            Method::POST,
            format!("/v1/jobs/{job_id}/cancel"),
            Some(json!({"reason": "table"})),
            &["dispatcher", "jobs:write"],
        ),
    ];
    let mut checked = 0;
    for (method, path, body, allowed) in &operations {
        for (caller, token) in &callers {
            let expect = match caller {
                &"no token" | &"forged" | &"revoked key" | &"unknown key" => {
                    Expect::Unauthenticated
                }
                name if allowed.contains(name) => Expect::Allowed,
                _ => Expect::Forbidden,
            };
            let answer = f
                .call(method.clone(), path, token.as_deref(), body.as_ref())
                .await;
            let what = format!(
                "{caller} {method} {path}: {} {}",
                answer.status, answer.body
            );
            assert!(answer.status.as_u16() < 500, "{what}");
            match expect {
                Expect::Allowed if path.ends_with("/cancel") => {
                    // The second allowed caller finds the job cancelled already.
                    assert!(
                        answer.status.is_success() || answer.status == StatusCode::CONFLICT,
                        "{what}"
                    );
                }
                Expect::Allowed => assert!(answer.status.is_success(), "{what}"),
                Expect::Unauthenticated => {
                    assert_problem(&answer, StatusCode::UNAUTHORIZED, "unauthorized")
                }
                Expect::Forbidden => assert_problem(&answer, StatusCode::FORBIDDEN, "forbidden"),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, operations.len() * callers.len());
    // The document needs no token.
    let document = f.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(document.status, StatusCode::OK);
    assert_eq!(document.body["openapi"], "3.1.0");
}

#[tokio::test]
async fn broken_tokens_other_keys_jobs_injection_and_floods_are_refused() {
    let f = Fixture::start(|config| {
        config.api_key_rate = trips::v1::KeyRate {
            per_second: 1,
            burst: 30,
        };
    })
    .await;
    let get_jobs = |token: String| {
        let f = &f;
        async move { f.call(Method::GET, "/v1/jobs", Some(&token), None).await }
    };
    // Identity-provider tokens from the key set, both algorithms.
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let answer = get_jobs(sign(alg, &claims("dispatcher", "ops-2"))).await;
        assert_eq!(answer.status, StatusCode::OK, "{alg:?}: {}", answer.body);
    }
    // Broken authentication.
    let now = now_ms() / 1000;
    let with = |patch: Value| {
        let mut value = claims("dispatcher", "ops-1");
        for (k, v) in patch.as_object().unwrap() {
            value[k] = v.clone();
        }
        value
    };
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let valid = dispatcher();
    let signature = valid.rsplit('.').next().unwrap().to_owned();
    let public_key_as_secret = std::fs::read(format!("{FIXTURES}/jwks.json")).unwrap();
    let broken: Vec<(&str, String)> = vec![
        (
            "expired",
            sign(Algorithm::ES256, &with(json!({"exp": now - 120}))),
        ),
        (
            "not yet valid",
            sign(Algorithm::ES256, &with(json!({"nbf": now + 600}))),
        ),
        (
            "no expiry",
            sign(Algorithm::ES256, &with(json!({"exp": null}))),
        ),
        (
            "wrong issuer",
            sign(Algorithm::ES256, &with(json!({"iss": "https://evil.test"}))),
        ),
        (
            "wrong audience",
            sign(Algorithm::RS256, &with(json!({"aud": "another-api"}))),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims("dispatcher", "ops-1"))
            ),
        ),
        (
            "body swapped under a signature",
            format!(
                "{}.{}.{signature}",
                b64(&json!({"alg": "ES256", "kid": "test-es256"})),
                b64(&claims("dispatcher", "someone-else"))
            ),
        ),
        ("unknown kid", {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some("rotated-away".into());
            jsonwebtoken::encode(
                &header,
                &claims("dispatcher", "ops-1"),
                &EncodingKey::from_rsa_der(
                    &std::fs::read(format!("{FIXTURES}/rs256.pk1.der")).unwrap(),
                ),
            )
            .unwrap()
        }),
        (
            "HS256 keyed with the public key set",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims("dispatcher", "ops-1"),
                &EncodingKey::from_secret(&public_key_as_secret).unwrap(),
            )
            .unwrap(),
        ),
        ("garbage", "a.b.c".into()),
        ("oversized", "a".repeat(10_000)),
    ];
    for (what, token) in broken {
        let answer = get_jobs(token).await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            answer.body
        );
        assert_problem(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    }

    // A key limited to its own jobs cannot see or cancel another key's.
    let (_, mine) = f.api_key(&["jobs:write"]).await;
    let (_, theirs) = f.api_key(&["jobs:write"]).await;
    let their_job = f
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&theirs),
            Some(&job("theirs")),
        )
        .await;
    let their_id = their_job.body["trip_id"].as_str().unwrap().to_owned();
    for (method, path) in [
        (Method::GET, format!("/v1/jobs/{their_id}")),
        (Method::GET, format!("/v1/trips/{their_id}")),
        (Method::POST, format!("/v1/jobs/{their_id}/cancel")),
    ] {
        let answer = f.call(method, &path, Some(&mine), None).await;
        assert_problem(&answer, StatusCode::NOT_FOUND, "not_found");
    }
    let listed = f.call(Method::GET, "/v1/jobs", Some(&mine), None).await;
    assert_eq!(listed.body["items"], json!([]));
    let still = f
        .call(
            Method::GET,
            &format!("/v1/jobs/{their_id}"),
            Some(&theirs),
            None,
        )
        .await;
    assert_eq!(still.body["state"], "requested");

    // Injection through filters, ids and bodies: refused or taken as text.
    let ops = dispatcher();
    for path in [
        "/v1/trips?rider_id=x'%20OR%20'1'='1",
        "/v1/trips?state=requested'--",
        "/v1/jobs/1'%20OR%20'1'='1",
        "/v1/trips/%22%7D%5D%7B",
        "/v1/drivers/x;DROP%20TABLE%20trips/trips",
        "/v1/trips?limit=1;DELETE%20FROM%20trips",
        "/v1/jobs?unknown_filter=1",
    ] {
        let answer = f.call(Method::GET, path, Some(&ops), None).await;
        assert_problem(&answer, StatusCode::BAD_REQUEST, "invalid_field");
    }
    let as_text = f
        .call(
            Method::GET,
            "/v1/jobs?external_ref='%20OR%20'1'='1",
            Some(&ops),
            None,
        )
        .await;
    assert_eq!(as_text.status, StatusCode::OK);
    assert_eq!(as_text.body["items"], json!([]));
    let mut hostile = job("x'); DROP TABLE trips; --");
    hostile["notes"] = json!("\"}], \"state\": \"completed\" <script>alert(1)</script>");
    let stored = f
        .call(Method::POST, "/v1/jobs", Some(&ops), Some(&hostile))
        .await;
    assert_eq!(stored.status, StatusCode::CREATED, "{}", stored.body);
    assert_eq!(stored.body["external_ref"], hostile["external_ref"]);
    assert_eq!(stored.body["notes"], hostile["notes"]);
    assert_eq!(stored.body["state"], "requested");
    let mut bad_customer = job("c");
    bad_customer["customer_id"] = json!("x\"; DROP TABLE riders; --");
    let refused = f
        .call(Method::POST, "/v1/jobs", Some(&ops), Some(&bad_customer))
        .await;
    assert_problem(&refused, StatusCode::BAD_REQUEST, "invalid_field");
    let trips: i64 =
        f.db.client()
            .await
            .query_one("SELECT count(*) FROM trips", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(trips, 2);

    // Bodies: too large, too deep, not JSON, the wrong shape.
    let raw = |body: String, content_type: &'static str| {
        let request = f
            .http
            .post(f.url("/v1/jobs"))
            .bearer_auth(&ops)
            .header("content-type", content_type)
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.json().await.unwrap_or(Value::Null);
            Answer {
                status,
                headers,
                body,
            }
        }
    };
    let mut large = job("large");
    large["notes"] = json!("n".repeat(200 * 1024));
    let answer = raw(large.to_string(), "application/json").await;
    assert_problem(&answer, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let deep = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let answer = raw(deep, "application/json").await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "invalid_message");
    let answer = raw("{\"pickup\":".into(), "application/json").await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "invalid_message");
    let answer = raw(job("t").to_string(), "text/plain").await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut extra = job("extra");
    extra["state"] = json!("completed");
    let answer = raw(extra.to_string(), "application/json").await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "invalid_message");
    let mut far = job("far");
    far["pickup"] = json!({"lat": 95.0, "lng": 13.4});
    let answer = raw(far.to_string(), "application/json").await;
    assert_problem(&answer, StatusCode::BAD_REQUEST, "invalid_coordinates");

    // A flood from one key is held to its rate, with Retry-After; a dispatcher is not.
    let (_, flood) = f.api_key(&["trips:read"]).await;
    let mut limited = None;
    for _ in 0..40 {
        let answer = f
            .call(Method::GET, "/v1/trips?limit=1", Some(&flood), None)
            .await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(answer);
            break;
        }
        assert_eq!(answer.status, StatusCode::OK);
    }
    let limited = limited.expect("40 requests at once from a key allowed 1/s with a burst of 30");
    assert_problem(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    for _ in 0..40 {
        let answer = f
            .call(Method::GET, "/v1/trips?limit=1", Some(&ops), None)
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn the_gateway_takes_identity_provider_tokens_from_a_key_set_file() {
    tests::init_logs();
    let nats = NatsServer::start();
    let mut config = tests::services::gateway_config(&nats.url(), &unique_prefix());
    let rules = ClaimRules {
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        role_claim: "realm_access.roles".into(),
        ..ClaimRules::default()
    };
    let file = kit::auth::KeySource::parse(&format!("{FIXTURES}/jwks.json")).unwrap();
    config.verifier = kit::auth::verifier(None, rules, Some(&file)).unwrap();
    let gateway = tests::services::start_gateway(config).await;
    let token = |patch: Value| {
        let mut value = claims("unused", "driver-7");
        value["realm_access"] = json!({"roles": ["offline_access", "driver"]});
        for (k, v) in patch.as_object().unwrap() {
            value[k] = v.clone();
        }
        value
    };
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        let (_client, first) = Client::hello(gateway.ws, &sign(alg, &token(json!({}))), &[1]).await;
        assert!(
            matches!(first, ServerMessage::Welcome { .. }),
            "{alg:?}: {first:?}"
        );
    }
    // No shared secret is configured: an HS256 token is refused, as are the wrong audience
    // and an expired token.
    for claims in [
        json!({}),
        json!({"aud": "another-api"}),
        json!({"exp": now_ms() / 1000 - 120}),
    ] {
        let alg = if claims == json!({}) {
            Algorithm::HS256
        } else {
            Algorithm::ES256
        };
        let (_client, first) = Client::hello(gateway.ws, &sign(alg, &token(claims)), &[1]).await;
        assert!(
            matches!(
                first,
                ServerMessage::Error {
                    code: protocol::ErrorCode::Unauthorized,
                    ..
                }
            ),
            "{first:?}"
        );
    }
}

/// The built `dispatch-trips`.
fn trips_binary() -> std::path::PathBuf {
    let binary = tests::process::built_binaries().join("dispatch-trips");
    assert!(
        binary.is_file(),
        "{} is missing: build the binaries first (`cargo xtask test` does)",
        binary.display()
    );
    binary
}

#[tokio::test]
async fn keys_made_and_revoked_on_the_command_line_work_at_the_api() {
    let f = Fixture::start(|_| {}).await;
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(trips_binary())
            .arg("api-key")
            .args(args)
            .env("DATABASE_URL", &f.db.url)
            .env_remove("TOKEN_SECRET")
            .output()
            .expect("running dispatch-trips api-key");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["create", "--name", "ops script", "--scope", "jobs:write"]);
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    let made = f
        .call(Method::POST, "/v1/jobs", Some(&token), Some(&job("cli")))
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    // The list never shows a secret.
    let (ok, out, _) = cli(&["list"]);
    assert!(ok);
    assert!(out.contains(&key_id) && !out.contains(&token));
    // Bad input is refused with a clear message and no key.
    let (ok, _, err) = cli(&["create", "--name", "x", "--scope", "jobs:admin"]);
    assert!(!ok && err.contains("unknown scope"), "{err}");
    let (ok, _, _) = cli(&["revoke", &key_id]);
    assert!(ok);
    // Revoked in the database, the key stops working within the replica's `KEY_TTL`.
    let refused = eventually(
        "the revoked key refused",
        trips::v1::keys::KEY_TTL + PATIENCE,
        || async {
            let answer = f.call(Method::GET, "/v1/jobs", Some(&token), None).await;
            (answer.status == StatusCode::UNAUTHORIZED).then_some(answer)
        },
    )
    .await;
    assert_problem(&refused, StatusCode::UNAUTHORIZED, "unauthorized");
    // Revoking again changes nothing and is no error; a key that never was is.
    let (ok, out, err) = cli(&["revoke", &key_id]);
    assert!(ok && out.contains("revoked already"), "{out} {err}");
    let (ok, _, err) = cli(&["revoke", "0123456789abcdef"]);
    assert!(!ok && err.contains("no API key"), "{err}");
}
