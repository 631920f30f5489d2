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

/// Where `cargo xtask test` installed schemathesis's `st`.
fn schemathesis() -> String {
    std::env::var("SCHEMATHESIS_BIN").expect(
        "SCHEMATHESIS_BIN must name schemathesis's `st`; `cargo xtask test` installs it and \
         sets it",
    )
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let st = schemathesis();
    let f = Fixture::start(|config| {
        // The fuzzer's own pace is not what is tested here.
        config.api_key_rate = trips::v1::KeyRate {
            per_second: 100_000,
            burst: 100_000,
        };
    })
    .await;
    let (_, key) = f.api_key(&["jobs:write", "trips:read"]).await;
    let reports = std::env::temp_dir().join(format!("schemathesis-{}", unique_prefix()));
    std::fs::create_dir_all(&reports).unwrap();
    // Ids that exist, so operations on one job get past `not_found` too.
    let job = f
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&dispatcher()),
            Some(&job("fuzzed")),
        )
        .await;
    let job_id = job.body["trip_id"].as_str().unwrap().to_owned();
    let config = reports.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[parameters]\n\"path.job_id\" = \"{job_id}\"\n\"path.trip_id\" = \"{job_id}\"\n\
             \"path.driver_id\" = \"driver-1\"\n\n{LISTS}"
        ),
    )
    .unwrap();
    let callers = [
        ("dispatcher", Some(dispatcher())),
        ("api key", Some(key)),
        ("no token", None),
    ];
    for (who, token) in callers {
        let mut command = tokio::process::Command::new(&st);
        command
            .arg("--config-file")
            .arg(&config)
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
            .arg(&reports)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(token) = &token {
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
    let _ = std::fs::remove_dir_all(reports);
}
