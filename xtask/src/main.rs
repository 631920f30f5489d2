//! Developer commands, run as `cargo xtask <command>`:
//!
//! - `cargo xtask demo`: infrastructure, every service and the simulator driving a city; prints
//!   the dashboard's address and runs until Ctrl-C (or `--duration`).
//! - `cargo xtask cluster`: the same across hosts made of network namespaces (as root): a
//!   NATS cluster, PostgreSQL with automatic failover, replicas of every service.
//! - `cargo xtask test`: formatting, lints and the whole test suite against real NATS and
//!   PostgreSQL, brought up the same way.
//! - `cargo xtask bench`: the benchmarks, figures in BENCHMARKS.md.
//! - `cargo xtask supply-chain`: licenses and sources of every dependency, offline, and the
//!   lock file against the RustSec advisory database.
//! - `cargo xtask soak`: hours of moderate load, failing on memory growth, errors or losses.
//! - `cargo xtask fuzz`: the protocol fuzzer for as long as asked.

mod advisories;
mod bench;
mod city;
mod cluster;
mod cpu;
mod credentials;
mod demo;
mod fuzz;
mod hops;
mod infra;
mod netns;
mod process;
mod python;
mod soak;
mod supply;
mod targets;
mod test;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Developer commands for the dispatch workspace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole system with a simulated city until Ctrl-C.
    Demo(demo::Args),
    /// Run the system across hosts made of network namespaces (as root) until Ctrl-C.
    Cluster(cluster::Args),
    /// Run formatting checks, clippy and every test against real NATS and PostgreSQL.
    Test(test::Args),
    /// Run the benchmarks against real NATS and PostgreSQL.
    Bench(bench::Args),
    /// Check the licenses and sources of every dependency, offline, and the lock file against
    /// the RustSec advisory database (`ADVISORY_DB`); part of `test`.
    SupplyChain,
    /// Run the system at moderate load for a long time, watching memory, latency and errors.
    Soak(soak::Args),
    /// Fuzz client frames, tokens and bus payloads for a while (a short run is part of `test`).
    Fuzz(fuzz::Args),
}

/// The workspace root (the parent of this crate). `cargo run` says where the crate is at run
/// time; the path compiled in is only a fallback, since with a target directory shared by
/// several clones (`CARGO_TARGET_DIR`) the binary cargo runs may have been built from another.
fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .parent()
        .expect("xtask lives inside the workspace")
        .to_owned()
}

/// With one target directory shared by several checkouts (`CARGO_TARGET_DIR`), cargo copies a
/// binary to `target/debug/` only when it builds it, so `cargo xtask` in one checkout may run
/// the xtask another built. Then this one's is built and run instead (a source file made newer
/// than its build makes cargo build it); returns that run's exit code.
fn run_own_build() -> Option<ExitCode> {
    let here = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    if here == std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        || std::env::var_os("XTASK_REBUILT").is_some()
    {
        return None;
    }
    infra::say(format!(
        "this xtask was built from {}, which shares the target directory; building this \
         checkout's",
        env!("CARGO_MANIFEST_DIR")
    ));
    let touched = std::fs::File::options()
        .append(true)
        .open(here.join("src/main.rs"))
        .and_then(|file| file.set_modified(std::time::SystemTime::now()));
    if let Err(err) = touched {
        infra::say(format!("error: cannot mark xtask for rebuilding: {err}"));
        return Some(ExitCode::FAILURE);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(std::env::args_os().skip(1))
        .current_dir(here.parent().unwrap_or(&here))
        .env("XTASK_REBUILT", "1")
        .status();
    Some(match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => ExitCode::from(status.code().map_or(1, |c| c.clamp(1, 255) as u8)),
        Err(err) => {
            infra::say(format!("error: running cargo: {err}"));
            ExitCode::FAILURE
        }
    })
}

fn main() -> ExitCode {
    if let Some(code) = run_own_build() {
        return code;
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::SupplyChain => {
            supply::check(&workspace_root()).and_then(|()| advisories::check(&workspace_root()))
        }
        Command::Soak(args) => soak::run(args),
        Command::Fuzz(args) => fuzz::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            infra::say(format!("error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}
