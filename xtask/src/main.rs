//! Developer commands, run as `cargo xtask <command>`:
//!
//! - `cargo xtask demo`: infrastructure, every service and the simulator driving a city; prints
//!   the dashboard's address and runs until Ctrl-C (or `--duration`).
//! - `cargo xtask cluster`: the same across hosts made of network namespaces (as root): a
//!   NATS cluster, PostgreSQL with automatic failover, replicas of every service.
//! - `cargo xtask test`: formatting, lints and the whole test suite against real NATS and
//!   PostgreSQL, brought up the same way.
//! - `cargo xtask bench`: the benchmarks, figures in BENCHMARKS.md.
//! - `cargo xtask supply-chain`: licenses and sources of every dependency, offline.
//! - `cargo xtask soak`: hours of moderate load, failing on memory growth, errors or losses.
//! - `cargo xtask fuzz`: the protocol fuzzer for as long as asked.

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
    /// Check the licenses and sources of every dependency, offline (part of `test`).
    SupplyChain,
    /// Run the system at moderate load for a long time, watching memory, latency and errors.
    Soak(soak::Args),
    /// Fuzz client frames, tokens and bus payloads for a while (a short run is part of `test`).
    Fuzz(fuzz::Args),
}

/// The workspace root (the parent of this crate).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_owned()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::SupplyChain => supply::check(&workspace_root()),
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
