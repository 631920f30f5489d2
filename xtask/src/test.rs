//! `cargo xtask test`: the whole suite, as CI runs it.

use std::process::Command;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::infra::{self, Infra, say};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Leave out the faults across hosts (they need root, for network namespaces).
    #[arg(long)]
    no_hosts: bool,
    /// Extra arguments for `cargo test` (a test name filter, `--nocapture`...); with them, the
    /// faults across hosts are left out.
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

fn step(name: &str, command: &mut Command) -> Result<()> {
    say(format!("== {name}"));
    let started = Instant::now();
    let status = command.status()?;
    say(format!(
        "== {name}: {} in {:.1}s",
        if status.success() { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    ));
    if !status.success() {
        bail!("{name} failed");
    }
    Ok(())
}

/// The clusters `cargo xtask test` runs across hosts, each of its own: the faults, one after
/// another (the first a third of the way in, each next 5 s after the system recovered), how
/// long the city runs, and any other arguments.
const HOST_FAULTS: &[(&[&str], &str, &[&str])] = &[
    (&["kill-postgres-primary"], "75s", &[]),
    (
        &[
            "partition-matcher",
            "partition-nats",
            "partition-gateway",
            "partition-postgres-primary",
        ],
        "140s",
        &[],
    ),
    (
        &["kill-matcher", "kill-trips", "kill-gateway", "kill-nats"],
        "90s",
        &[],
    ),
    // No fault: 100 ms each way between the gateways and NATS.
    (&[], "45s", &["--latency", "100ms"]),
];

/// What `git status` says of the work tree, a line a path; `None` outside a git checkout.
fn tree_status(root: &std::path::Path) -> Option<std::collections::BTreeSet<String>> {
    let output = Command::new("git")
        .current_dir(root)
        .args(["status", "--porcelain=v1", "--untracked-files=all"])
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    // The suite must leave the tree as it found it: tools' caches and reports go elsewhere.
    let tree_before = tree_status(&root);
    let hosts = !args.no_hosts && args.cargo_test_args.is_empty();
    if hosts && !nix::unistd::geteuid().is_root() {
        bail!(
            "the faults across hosts build hosts from network namespaces, which needs root: run \
             `sudo -E cargo xtask test`, or `cargo xtask test --no-hosts` to leave them out"
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !args.no_lint {
        step(
            "cargo fmt --check",
            Command::new(&cargo)
                .current_dir(&root)
                .args(["fmt", "--all", "--", "--check"]),
        )?;
        step(
            "cargo clippy",
            Command::new(&cargo).current_dir(&root).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--quiet",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    say("== supply chain (licenses and sources, offline)");
    crate::supply::check(&root)?;
    say("== advisories (the lock file against the RustSec database)");
    crate::advisories::check(&root)?;
    let infra = Infra::up(&root, infra::Profile::Test)?;
    let dashboard = crate::web::build_dashboard(&root)?;
    let sdk = crate::web::build_sdk(&root)?;
    let chromium = crate::web::ensure_chromium()?;
    let schemathesis = crate::python::ensure_schemathesis(&root)?;
    // The deploy files are checked against the binaries' own --help.
    step(
        "cargo build --bins",
        Command::new(&cargo)
            .current_dir(&root)
            .args(["build", "--workspace", "--bins", "--quiet"]),
    )?;
    let bin_dir = infra::target_dir(&root)?.join("debug");
    step(
        "cargo test",
        Command::new(&cargo)
            .current_dir(&root)
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(&args.cargo_test_args)
            .env("DISPATCH_TEST_DATABASE_URL", &infra.database_url)
            .env("NATS_SERVER_BIN", &infra.nats_server_bin)
            .env("DISPATCH_TEST_NATS_URL", &infra.nats_url)
            .env("DISPATCH_DASHBOARD_DIST", &dashboard)
            .env("DISPATCH_SDK_DIR", &sdk)
            .env("CHROMIUM_BIN", &chromium)
            .env("SCHEMATHESIS_BIN", &schemathesis)
            .env("DISPATCH_BIN_DIR", &bin_dir),
    )?;
    drop(infra);
    if hosts {
        // Each in a cluster of its own, with the debug binaries just built (xtask's too: the
        // build above may have replaced the file this process runs from).
        let xtask = bin_dir.join("xtask");
        for (faults, duration, extra) in HOST_FAULTS {
            let mut cluster = Command::new(&xtask);
            cluster.current_dir(&root).args([
                "cluster",
                "--debug",
                "--duration",
                duration,
                "--drivers",
                "100",
                "--riders",
                "100",
            ]);
            for fault in *faults {
                cluster.args(["--fault", fault]);
            }
            cluster.args(*extra);
            let what = [faults.join(", "), extra.join(" ")]
                .into_iter()
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
            step(&format!("across hosts: {what}"), &mut cluster)?;
        }
    } else {
        say("the faults across hosts were left out (--no-hosts or a test filter)");
    }
    match (tree_before, tree_status(&root)) {
        (Some(before), Some(after)) => {
            let changed: Vec<_> = after.difference(&before).cloned().collect();
            if !changed.is_empty() {
                bail!(
                    "the suite changed the work tree (a tool wrote into it; send its files to a \
                     temporary folder):\n  {}",
                    changed.join("\n  ")
                );
            }
        }
        _ => say(
            "not a git checkout: the check that the suite leaves the tree as it was is left out",
        ),
    }
    say("all tests passed");
    Ok(())
}
