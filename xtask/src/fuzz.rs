//! `cargo xtask fuzz --duration 10m`: the structure-aware fuzzer of `protocol/tests/fuzz.rs`
//! (client frames, tokens, bus payloads) for a given time per target, optimised; prints each
//! target's execution count. The test suite runs the same fuzzer for a fixed, short budget.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::infra::say;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Time per target (the three run in parallel).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    duration: Duration,
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    say(format!("fuzzing each target for {:?}", args.duration));
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "test",
            "--release",
            "-p",
            "protocol",
            "--test",
            "fuzz",
            "--",
        ])
        .args(["--nocapture", "--test-threads", "3"])
        .env("FUZZ_SECONDS", args.duration.as_secs().to_string())
        .status()?;
    if !status.success() {
        bail!("the fuzzer found a failing input (saved under target/fuzz-failures/)");
    }
    Ok(())
}
