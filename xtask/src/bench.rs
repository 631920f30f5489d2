//! `cargo xtask bench`: the benchmarks, on real servers brought up like the tests'.

use std::process::Command;

use anyhow::{Result, bail};

use crate::infra::{Infra, say};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> Result<()> {
    let root = crate::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let infra = Infra::up(&root)?;
    for (package, bench) in [("protocol", "codec"), ("tests", "trips")] {
        say(format!("== cargo bench -p {package} --bench {bench}"));
        let status = Command::new(&cargo)
            .current_dir(&root)
            .args(["bench", "-p", package, "--bench", bench])
            .env("DISPATCH_TEST_DATABASE_URL", &infra.database_url)
            .env("NATS_SERVER_BIN", &infra.nats_server_bin)
            .status()?;
        if !status.success() {
            bail!("benchmark {bench} failed");
        }
    }
    say("reports are in target/criterion/ and target/bench/");
    Ok(())
}
