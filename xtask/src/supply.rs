//! Supply-chain checks that need no network: every Rust crate built for this platform and every
//! npm package (the pages' and the SDK's) carries a license on the allow-list, and every crate comes from
//! crates.io or this workspace (no git or other registries). Security advisories are checked
//! against the RustSec database by `advisories`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use spdx::{Expression, LicenseItem, ParseMode};

use crate::infra::say;

/// Licenses that let anyone use, change and ship the system, including in closed products.
const ALLOWED: &[&str] = &[
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "CC0-1.0",
    "Unicode-3.0",
    "Unlicense",
    "BSL-1.0",
    "0BSD",
];

/// Crates allowed one more license by name, each reviewed. MPL-2.0 is copyleft per file: a
/// closed product may ship it, and only changes to its own files must be published.
/// `priority-queue` comes unchanged with `fast_paths` (the road network's contraction
/// hierarchies) and is offered under LGPL-3.0-or-later OR MPL-2.0. `argparse` (npm) is a
/// build tool of the SDK's type generator, never shipped; the PSF license is permissive.
/// `axe-core` (npm, MPL-2.0) audits the pages' accessibility in the browser tests and is never
/// part of a built page.
const REVIEWED: &[(&str, &str)] = &[
    ("priority-queue", "MPL-2.0"),
    ("argparse", "Python-2.0"),
    ("axe-core", "MPL-2.0"),
];

/// The crates.io index, the only registry crates may come from.
const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// The npm projects: the pages (dashboard and apps) and the TypeScript SDK's build tools.
const NPM_PROJECTS: &[&str] = &["dashboards/web", "clients/typescript"];

/// npm packages whose metadata omits the license, with the license their own files state.
const NPM_LICENSE_FILES: &[(&str, &str)] = &[("@mapbox/jsonlint-lines-primitives", "MIT")];

/// Whether `expression` is allowed, for the crate or npm package named `krate` when given
/// (with the license [`REVIEWED`] allows it).
fn allowed_for(expression: &str, krate: Option<&str>) -> Result<bool> {
    let extra = REVIEWED
        .iter()
        .find(|(name, _)| Some(*name) == krate)
        .map(|(_, license)| *license);
    let parsed = Expression::parse_mode(expression, ParseMode::LAX)
        .map_err(|e| anyhow::anyhow!("license {expression:?} does not parse: {e}"))?;
    Ok(parsed.evaluate(|req| match &req.license {
        LicenseItem::Spdx { id, .. } => {
            let name = match &req.addition {
                Some(addition) => format!("{} WITH {addition}", id.name),
                None => id.name.to_owned(),
            };
            ALLOWED.contains(&name.as_str()) || extra == Some(name.as_str())
        }
        LicenseItem::Other { .. } => false,
    }))
}

fn host_triple() -> Result<String> {
    let output = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8(output.stdout)?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")
}

/// Runs the checks; fails listing every offending package.
pub fn check(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host_triple()?])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut problems = Vec::new();
    let mut licenses = BTreeMap::<String, usize>::new();
    let packages = metadata["packages"].as_array().context("no packages")?;
    for package in packages {
        let name = format!("{} {}", package["name"], package["version"]);
        match package["source"].as_str() {
            None | Some(CRATES_IO) => {}
            Some(other) => problems.push(format!("{name}: comes from {other}")),
        }
        match package["license"].as_str() {
            Some(license) => {
                *licenses.entry(license.to_owned()).or_default() += 1;
                if !allowed_for(license, package["name"].as_str())? {
                    problems.push(format!("{name}: license {license} is not allowed"));
                }
            }
            None => problems.push(format!("{name}: no license")),
        }
    }

    let mut npm_count = 0;
    for dir in NPM_PROJECTS {
        let lock: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join(dir).join("package-lock.json"))
                .with_context(|| format!("reading {dir}/package-lock.json"))?,
        )?;
        let npm = lock["packages"].as_object().context("no npm packages")?;
        for (path, package) in npm.iter().filter(|(path, _)| !path.is_empty()) {
            npm_count += 1;
            let name = path
                .rsplit_once("node_modules/")
                .map_or(path.as_str(), |(_, n)| n);
            let license = package["license"].as_str().or_else(|| {
                NPM_LICENSE_FILES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, l)| *l)
            });
            match license {
                Some(license) if allowed_for(license, Some(name))? => {}
                Some(license) => problems.push(format!(
                    "npm {name} ({dir}): license {license} is not allowed"
                )),
                None => problems.push(format!("npm {name} ({dir}): no license")),
            }
        }
    }

    if !problems.is_empty() {
        bail!("supply-chain check failed:\n  {}", problems.join("\n  "));
    }
    say(format!(
        "supply chain: {} crates ({} license expressions) and {npm_count} npm packages, all from \
         allowed sources under allowed licenses",
        packages.len(),
        licenses.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::allowed_for;

    fn allowed(expression: &str) -> anyhow::Result<bool> {
        allowed_for(expression, None)
    }

    #[test]
    fn license_expressions() {
        assert!(allowed("MIT OR Apache-2.0").unwrap());
        assert!(allowed("Apache-2.0/MIT").unwrap());
        assert!(allowed("(MIT OR Apache-2.0) AND Unicode-3.0").unwrap());
        assert!(allowed("MIT OR Apache-2.0 OR LGPL-2.1-or-later").unwrap());
        assert!(!allowed("GPL-3.0-only").unwrap());
        assert!(!allowed("MIT AND GPL-3.0-only").unwrap());
        assert!(allowed("not a license at all").is_err());
        let mpl = "LGPL-3.0-or-later OR MPL-2.0";
        assert!(!allowed(mpl).unwrap(), "not for any crate");
        assert!(allowed_for(mpl, Some("priority-queue")).unwrap());
        assert!(!allowed_for(mpl, Some("another-crate")).unwrap());
        assert!(!allowed_for("GPL-3.0-only", Some("priority-queue")).unwrap());
        // The PSF license of an npm build tool, for that package only.
        assert!(allowed_for("Python-2.0", Some("argparse")).unwrap());
        assert!(!allowed("Python-2.0").unwrap());
    }
}
