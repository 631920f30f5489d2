//! The API against its own OpenAPI document, fuzzed by schemathesis: every operation, with
//! positive and negative examples, as a dispatcher, as an API key and with no token. No answer
//! may be a server error or break the document.

use std::process::Stdio;

use super::*;

/// Where a schema-valid request may still be refused: a cursor is opaque, so a string the
/// schema allows but this API did not issue is refused with 400; and a job's pickup time may
/// already be past (the schema cannot say "in the future").
const LISTS: &str = r#"[[operations]]
include-name-regex = '^GET /v1/(jobs|trips|drivers|drivers/\{driver_id\}/trips)$'
checks.positive_data_acceptance.expected-statuses = [200, 400, 401, 403, 429]

[[operations]]
include-name = "POST /v1/jobs"
checks.positive_data_acceptance.expected-statuses = [200, 201, 400, 401, 403, 409, 429]
"#;

/// The operations not in [`LISTS`], where valid data may be refused for the key's rate alone.
const RATE_LIMITED: &str = r#"
[[operations]]
exclude-name-regex = '^(GET /v1/(jobs|trips|drivers|drivers/\{driver_id\}/trips)|POST /v1/jobs)$'
checks.positive_data_acceptance.expected-statuses = [200, 201, 204, 400, 401, 403, 404, 409, 429]
"#;

/// Where `cargo xtask test` installed schemathesis's `st`.
fn schemathesis() -> String {
    std::env::var("SCHEMATHESIS_BIN").expect(
        "SCHEMATHESIS_BIN must name schemathesis's `st`; `cargo xtask test` installs it and \
         sets it",
    )
}

/// Runs schemathesis against `f`'s API as `who` (with `token`, or none), in `reports`, which
/// also holds its caches so nothing is written into the source tree. Panics with what it
/// printed unless it found nothing.
async fn fuzz(
    f: &Fixture,
    reports: &std::path::Path,
    config: &std::path::Path,
    who: &str,
    token: Option<&str>,
    extra: &[&str],
) {
    let mut command = tokio::process::Command::new(schemathesis());
    command
        .current_dir(reports)
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(f.url("/v1/openapi.json"))
        .args(["--url", &f.url("")])
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "40"])
        // One worker: Python 3.11's `ast` is not safe to use from several threads, which
        // hypothesis does to describe its strategies.
        .args(["--workers", "1"])
        .args(["--seed", "7"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "10"])
        .arg("--no-color")
        .arg("--report-dir")
        .arg(reports)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(token) = token {
        command.args(["--header", &format!("Authorization: Bearer {token}")]);
    }
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .expect("schemathesis finished within 10 minutes")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis as {who} found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every operation was exercised.
    assert!(
        stdout.contains("11 selected") || stdout.contains("11 total"),
        "as {who}, not every operation ran:\n{stdout}"
    );
}

/// A fresh folder for one run's reports, configuration and caches; the configuration names
/// `job_id` for the operations on one job.
fn workspace(job_id: &str, extra: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let reports = std::env::temp_dir().join(format!("schemathesis-{}", unique_prefix()));
    std::fs::create_dir_all(&reports).unwrap();
    let config = reports.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[parameters]\n\"path.job_id\" = \"{job_id}\"\n\"path.trip_id\" = \"{job_id}\"\n\
             \"path.driver_id\" = \"driver-1\"\n\n{LISTS}{extra}"
        ),
    )
    .unwrap();
    (reports, config)
}

/// A job that exists, so operations on one job get past `not_found` too; its id.
async fn existing_job(f: &Fixture) -> String {
    let job = f
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&dispatcher()),
            Some(&job("fuzzed")),
        )
        .await;
    job.body["trip_id"].as_str().unwrap().to_owned()
}

/// A fixture whose API keys may make `per_second` requests a second (bursts as large), and a
/// key with `jobs:write` and `trips:read`.
async fn keyed_fixture(per_second: u32) -> (Fixture, String) {
    let f = Fixture::start(move |config| {
        config.api_key_rate = trips::v1::KeyRate {
            per_second,
            burst: per_second,
        };
    })
    .await;
    let (_, key) = f.api_key(&["jobs:write", "trips:read"]).await;
    (f, key)
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    // The fuzzer's own pace is not what is tested here (see the next test for that).
    let (f, key) = keyed_fixture(100_000).await;
    let (reports, config) = workspace(&existing_job(&f).await, "");
    let callers = [
        ("dispatcher", Some(dispatcher())),
        ("api key", Some(key)),
        ("no token", None),
    ];
    for (who, token) in callers {
        fuzz(&f, &reports, &config, who, token.as_deref(), &[]).await;
    }
    let _ = std::fs::remove_dir_all(reports);
}

/// Every operation may answer an API key over its rate with 429, and every such refusal must
/// be one the document names. The key's rate is set far below what the fuzzer sends, so that
/// every operation meets it on any machine: at the default rate (100 a second) whether the
/// fuzzer goes faster depends on how busy the machine is, and a pass that saw no 429 would
/// prove nothing.
#[tokio::test]
async fn an_api_key_over_its_rate_gets_only_documented_answers() {
    let (f, key) = keyed_fixture(2).await;
    // Where valid data may be refused for the rate alone.
    let (reports, config) = workspace(&existing_job(&f).await, RATE_LIMITED);
    fuzz(
        &f,
        &reports,
        &config,
        "api key over its rate",
        Some(&key),
        &["--report", "har"],
    )
    .await;
    // The recording of every exchange shows the rate was reached on every operation (named by
    // method and first path segment: the ids differ from request to request).
    let mut exercised = std::collections::BTreeSet::new();
    let mut limited = std::collections::BTreeSet::new();
    for file in std::fs::read_dir(&reports).unwrap() {
        let path = file.unwrap().path();
        if !path.to_string_lossy().contains("har") || path.is_dir() {
            continue;
        }
        let har: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for entry in har["log"]["entries"].as_array().unwrap() {
            let url = entry["request"]["url"].as_str().unwrap_or_default();
            let path = url.split("/v1/").nth(1).unwrap_or_default();
            if path.starts_with("openapi.json") {
                continue;
            }
            let operation = format!(
                "{} {}",
                entry["request"]["method"].as_str().unwrap_or_default(),
                path.split(['/', '?']).next().unwrap_or_default()
            );
            if entry["response"]["status"] == 429 {
                limited.insert(operation.clone());
            }
            exercised.insert(operation);
        }
    }
    // Every documented operation, by method and first path segment (schemathesis also tries
    // methods no route takes, which are refused before any key is looked at).
    let documented: std::collections::BTreeSet<String> = [
        "GET jobs",
        "POST jobs",
        "GET trips",
        "GET drivers",
        "GET api-keys",
        "POST api-keys",
        "DELETE api-keys",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert!(
        documented.is_subset(&exercised),
        "not every operation was exercised: {exercised:?}"
    );
    assert!(
        documented.is_subset(&limited),
        "operations that never met the rate: {:?}",
        documented.difference(&limited).collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(reports);
}
