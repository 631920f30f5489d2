//! The lock file against the RustSec advisory database: every advisory that is not withdrawn
//! and names a locked crate's version fails the suite (vulnerabilities and the informational
//! kinds, unsound and unmaintained, alike), unless it is one of [`REVIEWED`], each with the
//! reason it does not reach this system. A reviewed exception that no longer matches anything
//! fails too, so the list cannot outlive its reason.
//!
//! Where the database comes from: `ADVISORY_DB` (a folder laid out as the public repository,
//! with `crates/`); else `../shared/advisory-db` beside the checkout when present; else a clone
//! of the public repository under the target folder, refreshed each run. With none of them the
//! check fails and says how to point it at a copy. `ADVISORY_DB=off` leaves the check out, and
//! says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use rustsec::database::Query;
use rustsec::{Collection, Database, Lockfile};

use crate::infra::say;

/// Advisories reviewed and accepted, by id, with why they do not reach this system.
pub const REVIEWED: &[(&str, &str)] = &[
    (
        "RUSTSEC-2023-0071",
        "rsa (through jsonwebtoken's rust_crypto backend): the Marvin attack recovers a private \
         key from the timing of decryptions or signatures made with it. The services hold no RSA \
         private key: they only verify RS256 signatures against an identity provider's public \
         keys, which the advisory does not reach. Only the tests sign, with a fixture key.",
    ),
    (
        "RUSTSEC-2026-0186",
        "memmap2 0.5 (through osmpbf, whose latest release still pins it): the unsound \
         functions are Mmap(Mut)::advise_range, unchecked_advise_range and \
         MmapMut::flush(_async)_range. osmpbf calls only Mmap::map, and the roads crate reads \
         extracts with osmpbf's ElementReader, which maps nothing.",
    ),
];

/// The public database, cloned when no copy is at hand.
const PUBLIC_DB: &str = "https://github.com/rustsec/advisory-db";

/// Where the database is: see the module's documentation. `None` for `ADVISORY_DB=off`.
fn locate(root: &Path) -> Result<Option<PathBuf>> {
    if let Some(configured) = std::env::var_os("ADVISORY_DB") {
        if configured == "off" {
            return Ok(None);
        }
        let path = PathBuf::from(configured);
        if !path.join("crates").is_dir() {
            bail!(
                "ADVISORY_DB={} has no crates/ folder: point it at a copy of the RustSec \
                 advisory database",
                path.display()
            );
        }
        return Ok(Some(path));
    }
    let shared = root.join("../shared/advisory-db");
    if shared.join("crates").is_dir() {
        return Ok(Some(shared.canonicalize().unwrap_or(shared)));
    }
    let clone = crate::infra::target_dir(root)?.join("advisory-db");
    let status = if clone.join(".git").is_dir() {
        Command::new("git")
            .args(["-C"])
            .arg(&clone)
            .args(["pull", "--quiet", "--ff-only"])
            .status()
    } else {
        Command::new("git")
            .args(["clone", "--quiet", "--depth", "1", PUBLIC_DB])
            .arg(&clone)
            .status()
    };
    match status {
        Ok(status) if status.success() => Ok(Some(clone)),
        _ => bail!(
            "the RustSec advisory database could not be fetched from {PUBLIC_DB}: set \
             ADVISORY_DB to a copy of it (a folder with crates/), or ADVISORY_DB=off to leave \
             the advisory check out"
        ),
    }
}

/// What the check found: the advisories that fail it, and the reviewed ones that matched.
#[derive(Debug, Default, PartialEq)]
pub struct Findings {
    /// `id package version: title`, one per advisory and package.
    pub unreviewed: Vec<String>,
    /// Reviewed ids that matched a locked package.
    pub reviewed: Vec<String>,
    /// Reviewed ids that matched nothing: to be removed.
    pub stale: Vec<String>,
}

/// Checks `lockfile` against the database at `db`, with `reviewed` exceptions.
pub fn audit(db: &Path, lockfile: &Path, reviewed: &[(&str, &str)]) -> Result<Findings> {
    let database = Database::open(db)
        .with_context(|| format!("reading the advisory database at {}", db.display()))?;
    let lockfile = Lockfile::load(lockfile).context("reading the lock file")?;
    // Every advisory about crates that is not withdrawn, informational ones included.
    let query = Query::new().collection(Collection::Crates).withdrawn(false);
    let mut findings = Findings::default();
    for found in database.query_vulnerabilities(&lockfile, &query) {
        let id = found.advisory.id.to_string();
        if reviewed.iter().any(|(reviewed, _)| *reviewed == id) {
            findings.reviewed.push(id);
        } else {
            let kind = found
                .advisory
                .informational
                .as_ref()
                .map_or("vulnerability".to_owned(), |kind| kind.to_string());
            findings.unreviewed.push(format!(
                "{id} {} {} ({kind}): {}",
                found.package.name, found.package.version, found.advisory.title
            ));
        }
    }
    findings.reviewed.sort();
    findings.reviewed.dedup();
    findings.stale = reviewed
        .iter()
        .map(|(id, _)| id.to_string())
        .filter(|id| !findings.reviewed.contains(id))
        .collect();
    Ok(findings)
}

/// The suite's step: fails on any unreviewed advisory or stale exception.
pub fn check(root: &Path) -> Result<()> {
    let Some(db) = locate(root)? else {
        say("advisories: NOT CHECKED (ADVISORY_DB=off)");
        return Ok(());
    };
    let findings = audit(&db, &root.join("Cargo.lock"), REVIEWED)?;
    let mut problems = findings.unreviewed.clone();
    for id in &findings.stale {
        problems.push(format!(
            "{id} is listed as reviewed in xtask/src/advisories.rs but no locked crate is \
             affected any more: remove it"
        ));
    }
    if !problems.is_empty() {
        bail!(
            "advisory check against {} failed:\n  {}",
            db.display(),
            problems.join("\n  ")
        );
    }
    say(format!(
        "advisories: Cargo.lock checked against {}; no unreviewed advisory (reviewed: {})",
        db.display(),
        if findings.reviewed.is_empty() {
            "none".to_owned()
        } else {
            findings.reviewed.join(", ")
        }
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder removed when dropped.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A database of two advisories, one informational, and a lock file.
    fn fixture(versions: &[(&str, &str)]) -> (Scratch, PathBuf, PathBuf) {
        let dir =
            Scratch(std::env::temp_dir().join(format!("advisories-{}", uuid::Uuid::new_v4())));
        let db = dir.0.join("db");
        for (package, id, informational) in [
            ("leaky", "RUSTSEC-2099-0001", ""),
            (
                "shaky",
                "RUSTSEC-2099-0002",
                "informational = \"unsound\"\n",
            ),
        ] {
            let folder = db.join("crates").join(package);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(
                folder.join(format!("{id}.md")),
                format!(
                    "```toml\n[advisory]\nid = \"{id}\"\npackage = \"{package}\"\n\
                     date = \"2099-01-01\"\n{informational}\n[versions]\n\
                     patched = [\">= 1.2.0\"]\n```\n\n# {package} misbehaves\n\nDetails.\n"
                ),
            )
            .unwrap();
        }
        let mut lock = String::from("version = 4\n");
        for (name, version) in versions {
            lock.push_str(&format!(
                "\n[[package]]\nname = \"{name}\"\nversion = \"{version}\"\nsource = \
                 \"registry+https://github.com/rust-lang/crates.io-index\"\n"
            ));
        }
        let lockfile = dir.0.join("Cargo.lock");
        std::fs::write(&lockfile, lock).unwrap();
        (dir, db, lockfile)
    }

    #[test]
    fn an_affected_version_fails_unless_reviewed_and_a_patched_one_passes() {
        let (_dir, db, lock) =
            fixture(&[("leaky", "1.1.0"), ("shaky", "0.9.0"), ("fine", "1.0.0")]);
        let findings = audit(&db, &lock, &[]).unwrap();
        assert_eq!(findings.unreviewed.len(), 2, "{findings:?}");
        assert!(findings.unreviewed[0].starts_with("RUSTSEC-2099-0001 leaky 1.1.0"));
        assert!(findings.unreviewed[1].contains("(unsound)"), "{findings:?}");

        let reviewed = [
            ("RUSTSEC-2099-0002", "reason"),
            ("RUSTSEC-2099-0001", "reason"),
        ];
        let findings = audit(&db, &lock, &reviewed).unwrap();
        assert!(findings.unreviewed.is_empty(), "{findings:?}");
        assert!(findings.stale.is_empty(), "{findings:?}");

        let (_dir, db, lock) = fixture(&[("leaky", "1.2.0"), ("shaky", "1.3.1")]);
        let findings = audit(&db, &lock, &reviewed).unwrap();
        assert!(findings.unreviewed.is_empty(), "{findings:?}");
        assert_eq!(findings.stale, ["RUSTSEC-2099-0002", "RUSTSEC-2099-0001"]);
    }
}
