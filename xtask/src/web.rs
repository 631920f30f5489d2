//! The dispatcher dashboard's front end: Node.js from Debian's packages when missing, the npm
//! packages pinned in `dashboards/web/package-lock.json`, and the built page in
//! `dashboards/web/dist`; Debian's Chromium for the browser tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::infra::{self, say};

/// The oldest Node.js the pinned tools (vite, playwright-core) run on.
const MIN_NODE_MAJOR: u32 = 20;

fn node_major() -> Option<u32> {
    let output = Command::new("node").arg("--version").output().ok()?;
    let version = String::from_utf8(output.stdout).ok()?;
    version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

fn ensure_node() -> Result<()> {
    if infra::which("node", &[]).is_none() || infra::which("npm", &[]).is_none() {
        infra::apt_install(&["nodejs", "npm"])?;
    }
    match node_major() {
        Some(major) if major >= MIN_NODE_MAJOR => Ok(()),
        Some(major) => bail!(
            "Node.js {major} is too old for the dashboard's build tools; {MIN_NODE_MAJOR} or \
             newer is needed (Debian 13 and Ubuntu 24.10 ship it)"
        ),
        None => bail!("node does not run"),
    }
}

fn npm(dir: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("npm")
        .current_dir(dir)
        .args(args)
        .args(["--no-audit", "--no-fund", "--loglevel=error"])
        .status()
        .with_context(|| format!("running npm {}", args.join(" ")))?;
    if !status.success() {
        bail!("npm {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `npm ci` in `dir` unless its installed packages are as new as its lock file.
fn install(dir: &Path, what: &str) -> Result<()> {
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules/.package-lock.json");
    let stale = match (lock.metadata(), installed.metadata()) {
        (Ok(lock), Ok(installed)) => lock.modified()? > installed.modified()?,
        _ => true,
    };
    if stale {
        say(format!("installing the {what}'s npm packages"));
        npm(dir, &["ci"])?;
    }
    Ok(())
}

/// Installs the pinned npm packages and builds the pages (the dashboard and the rider's and
/// driver's apps); returns the built directory.
pub fn build_dashboard(root: &Path) -> Result<PathBuf> {
    ensure_node()?;
    let dir = root.join("dashboards/web");
    install(&dir, "dashboard")?;
    say("building the dashboard and the apps");
    npm(&dir, &["run", "build", "--silent"])?;
    Ok(dir.join("dist"))
}

/// Installs the TypeScript SDK's build tools and compiles it (`clients/typescript/dist`), for
/// its tests.
pub fn build_sdk(root: &Path) -> Result<PathBuf> {
    ensure_node()?;
    let dir = root.join("clients/typescript");
    install(&dir, "SDK")?;
    say("building the TypeScript SDK");
    npm(&dir, &["run", "build", "--silent"])?;
    Ok(dir)
}

/// Debian's Chromium for the browser tests, installed when missing.
pub fn ensure_chromium() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM_BIN") {
        return Ok(path.into());
    }
    if let Some(path) = infra::which("chromium", &["/usr/bin/chromium"]) {
        return Ok(path);
    }
    infra::apt_install(&["chromium"])?;
    infra::which("chromium", &["/usr/bin/chromium"])
        .context("chromium is still missing after installing it")
}
