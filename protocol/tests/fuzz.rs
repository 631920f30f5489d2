//! A structure-aware mutation fuzzer on stable Rust for what the system reads from outside:
//! client frames (`client::decode`), tokens (`token::verify`) and bus payloads
//! (`codec::decode`). It starts from the committed seed corpus in `protocol/fuzz/corpus/` and
//! mutates bytes and JSON tokens with a seeded generator, checking that nothing panics and that
//! every accepted client message survives a round trip unchanged.
//!
//! In the test suite it runs a fixed number of inputs per target; `cargo xtask fuzz --duration
//! 10m` (which sets `FUZZ_SECONDS`) runs it for longer and prints the number of executions.
//! A failing input is written to `target/fuzz-failures/` and printed.

#![allow(clippy::print_stdout)] // the fuzzer reports its execution counts

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protocol::bus::{Position, RideRequest, TripCommand, TripEvent, TripQuery};
use protocol::client::{self, ClientMessage, Role};
use protocol::trip::{Actor, TripStage};
use protocol::{Point, codec, token};
use uuid::Uuid;

/// Inputs per target in a normal test run.
const CI_EXECS: u64 = 200_000;
const NOW_MS: i64 = 1_800_000_000_000;
const SECRET: &[u8] = b"fuzz-secret-0123456789";

/// Tokens that make JSON interesting.
const DICTIONARY: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "null",
    "true",
    "false",
    "NaN",
    "Infinity",
    "-0",
    "1e400",
    "-1e400",
    "18446744073709551616",
    "-9223372036854775809",
    "0.000000000000000000001",
    "\"type\"",
    "\"id\"",
    "\"lat\"",
    "\"lng\"",
    "\"trip_id\"",
    "\"hello\"",
    "\"location\"",
    "\"request_ride\"",
    "\\u0000",
    "\\ud800",
    "\\\\",
    "\u{202e}",
    "é",
    "😀",
    "\"\"",
    "\"5eed0000-0000-4000-8000-000000000001\"",
    "'); DROP TABLE trips; --",
    "<script>alert(1)</script>",
    ".",
    "=",
];

/// xorshift64*: small, fast, and the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut input = corpus[rng.below(corpus.len())].clone();
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len);
                input[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                input[at] = rng.next() as u8;
            }
            2 => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes();
                let at = rng.below(len + 1);
                input.splice(at..at, token.iter().copied());
            }
            3 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(16)).min(len);
                input.drain(from..to);
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(32)).min(len);
                let copy = input[from..to].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, copy);
            }
            5 => {
                // Splice another entry's tail onto this one's head.
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(input.len() + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            6 => {
                // Replace a run of digits with an extreme number.
                if let Some(start) = input.iter().position(|b| b.is_ascii_digit()) {
                    let end = input[start..]
                        .iter()
                        .position(|b| !b.is_ascii_digit() && *b != b'.')
                        .map_or(input.len(), |e| start + e);
                    let extreme =
                        ["1e999", "-0", "99999999999999999999", "0.5", "-1"][rng.below(5)];
                    input.splice(start..end, extreme.bytes());
                }
            }
            _ => {
                // Nest it.
                let depth = 1 + rng.below(200);
                let mut nested = vec![b'['; depth];
                nested.extend_from_slice(&input);
                nested.extend(std::iter::repeat_n(b']', depth));
                input = nested;
            }
        }
    }
    input.truncate(64 * 1024);
    input
}

fn check_client(input: &[u8]) -> bool {
    // Only text frames reach the decoder; the WebSocket layer has checked their UTF-8.
    let Ok(text) = std::str::from_utf8(input) else {
        return false;
    };
    match client::decode(text, NOW_MS) {
        Ok(message) => {
            let _ = (message.kind(), message.id());
            let json = serde_json::to_string(&message).expect("accepted messages serialise");
            let again = client::decode(&json, NOW_MS)
                .unwrap_or_else(|e| panic!("{json} no longer decodes after a round trip: {e}"));
            assert_eq!(again, message, "round trip changed the message");
            true
        }
        Err(error) => {
            let _ = error.to_string();
            false
        }
    }
}

fn check_token(input: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(input) else {
        return false;
    };
    let verified = token::verify(SECRET, text, NOW_MS / 1000);
    if let Ok(claims) = &verified {
        // Only a token signed with the secret verifies: whatever mutation made of the signed
        // seed, an accepted input must be exactly what minting its claims gives.
        assert_eq!(
            token::mint(SECRET, claims).ok().as_deref(),
            Some(text),
            "a token that was never minted verified"
        );
    }
    verified.is_ok()
}

fn check_bus(input: &[u8]) -> bool {
    [
        codec::decode::<TripCommand>(input).is_ok(),
        codec::decode::<TripQuery>(input).is_ok(),
        codec::decode::<Position>(input).is_ok(),
        codec::decode::<RideRequest>(input).is_ok(),
        codec::decode::<TripEvent>(input).is_ok(),
    ]
    .contains(&true)
}

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name)
}

fn read_corpus(name: &str) -> Vec<Vec<u8>> {
    let mut entries: Vec<_> = std::fs::read_dir(corpus_dir(name))
        .unwrap_or_else(|e| panic!("the {name} corpus is missing: {e}"))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let corpus: Vec<Vec<u8>> = entries.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!corpus.is_empty(), "the {name} corpus is empty");
    corpus
}

/// Bus payloads to start from: one of each kind the services read.
fn bus_corpus() -> Vec<Vec<u8>> {
    let trip = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001);
    vec![
        codec::encode(&TripCommand::Progress {
            trip_id: trip,
            driver_id: "driver-1".into(),
            stage: TripStage::Arrived,
            position: Some(Point::new(52.5, 13.4)),
        }),
        codec::encode(&TripCommand::Cancel {
            trip_id: trip,
            actor: Actor::Rider,
            actor_id: "rider-1".into(),
            reason: Some("changed plans".into()),
        }),
        codec::encode(&TripQuery::SessionState {
            role: Role::Driver,
            id: "driver-1".into(),
        }),
        codec::encode(&Position {
            driver_id: "driver-1".into(),
            lat: 52.5,
            lng: 13.4,
            heading: Some(90.0),
            speed: Some(8.0),
            accuracy: Some(5.0),
            ts: NOW_MS,
            seq: 7,
            status: client::VehicleStatus::Available,
            vehicle_class: None,
            capacity: 4,
            trip_id: Some(trip),
            received_us: NOW_MS * 1000,
        }),
    ]
}

/// Runs one target: the corpus, then mutants for the configured budget. Returns how many
/// inputs the code under test accepted.
fn fuzz(name: &str, corpus: &[Vec<u8>], check: fn(&[u8]) -> bool) -> u64 {
    let budget = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let started = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    let mut execs = 0u64;
    let mut accepted = 0u64;
    let run = |input: &[u8], execs: u64| -> bool {
        let outcome = catch_unwind(AssertUnwindSafe(|| check(input)));
        if outcome.is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{name}-{execs}"));
            let _ = std::fs::write(&path, input);
            panic!(
                "{name}: input {:?} failed (saved to {})",
                String::from_utf8_lossy(input),
                path.display()
            );
        }
        outcome.unwrap_or(false)
    };
    for seed in corpus {
        accepted += u64::from(run(seed, execs));
        execs += 1;
    }
    loop {
        let done = match budget {
            Some(budget) => started.elapsed() >= budget,
            None => execs >= CI_EXECS,
        };
        if done {
            break;
        }
        let input = mutate(&mut rng, corpus);
        accepted += u64::from(run(&input, execs));
        execs += 1;
    }
    println!(
        "fuzz {name}: {execs} executions in {:.1} s ({:.0}/s), {accepted} accepted",
        started.elapsed().as_secs_f64(),
        execs as f64 / started.elapsed().as_secs_f64().max(1e-9)
    );
    accepted
}

#[test]
fn client_frames() {
    let corpus = read_corpus("client");
    // The corpus holds every client message type.
    let seeds: Vec<ClientMessage> = corpus
        .iter()
        .filter_map(|c| client::decode(std::str::from_utf8(c).ok()?, NOW_MS).ok())
        .collect();
    assert!(seeds.len() >= 10, "only {} seeds decode", seeds.len());
    let accepted = fuzz("client", &corpus, check_client);
    // Mutants that still decode reach the validation and the round trip, not just the parser.
    assert!(accepted > corpus.len() as u64, "no mutant was accepted");
}

#[test]
fn tokens() {
    let mut corpus = read_corpus("token");
    // A genuinely signed token too, so mutants start next to a valid one.
    corpus.push(
        token::mint(
            SECRET,
            &token::Claims {
                role: Role::Rider,
                sub: "rider-1".into(),
                exp: NOW_MS / 1000 + 3600,
                name: Some("Ada".into()),
            },
        )
        .unwrap()
        .into_bytes(),
    );
    fuzz("token", &corpus, check_token);
}

#[test]
fn bus_payloads() {
    let corpus = bus_corpus();
    let accepted = fuzz("bus", &corpus, check_bus);
    assert!(accepted >= corpus.len() as u64);
}
