//! The credentials a demo (or a cluster) hands out: tokens for the dashboard's and apps' links,
//! minted with the demo's secret, and an API key for the simulated integrator, made with
//! `dispatch-trips api-key create`.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::demo::DEMO_SECRET;

/// A day's token for the dashboard's or an app's link: `role` (`dispatcher`, `rider`,
/// `driver`), `sub` and a display name.
pub(crate) fn token(gateway: &Path, role: &str, sub: &str, name: &str) -> Result<String> {
    let output = Command::new(gateway)
        .args(["token", "--role", role, "--sub", sub, "--name", name])
        .env("TOKEN_SECRET", DEMO_SECRET)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("minting a {role} token"))?;
    if !output.status.success() {
        bail!("minting a {role} token failed ({})", output.status);
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// A day's dispatcher token for the dashboard link.
pub(crate) fn dispatcher_token(gateway: &Path) -> Result<String> {
    token(gateway, "dispatcher", "ops", "Operations")
}

/// A `jobs:write` API key for the simulated integrator, made with `dispatch-trips api-key`.
pub(crate) fn integrator_key(trips: &Path, database_url: &str) -> Result<String> {
    let output = Command::new(trips)
        .args([
            "api-key",
            "create",
            "--name",
            "demo simulator",
            "--scope",
            "jobs:write",
            "--by",
            "demo",
        ])
        .env("DATABASE_URL", database_url)
        .stderr(Stdio::inherit())
        .output()
        .context("creating the simulator's API key")?;
    if !output.status.success() {
        bail!(
            "creating the simulator's API key failed ({})",
            output.status
        );
    }
    let created: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    created["token"]
        .as_str()
        .map(str::to_owned)
        .context("dispatch-trips api-key create printed no token")
}
