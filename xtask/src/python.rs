//! schemathesis, from PyPI, for fuzzing the integrator API against its OpenAPI document: a
//! virtual environment under the target directory holding exactly the versions pinned in
//! `tests/contract/requirements.txt`, made again when that file changes. Python 3 and its
//! `venv` module come from Debian's packages when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::infra::{self, say};

fn run(command: &mut Command, what: &str) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// schemathesis's `st`, installed when missing or when the pinned versions changed.
pub fn ensure_schemathesis(root: &Path) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SCHEMATHESIS_BIN") {
        return Ok(path.into());
    }
    let requirements = root.join("tests/contract/requirements.txt");
    let pinned = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = infra::target_dir(root)?.join("schemathesis-venv");
    let st = venv.join("bin/st");
    let stamp = venv.join("installed-requirements.txt");
    if st.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(pinned.as_str()) {
        return Ok(st);
    }
    if infra::which("python3", &[]).is_none() {
        infra::apt_install(&["python3", "python3-venv"])?;
    }
    say("installing schemathesis (pinned in tests/contract/requirements.txt)");
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv")?;
    if !made.success() {
        // Debian splits `venv`'s pip bootstrap into its own package.
        let _ = std::fs::remove_dir_all(&venv);
        infra::apt_install(&["python3-venv"])?;
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
    }
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        "pip install -r tests/contract/requirements.txt",
    )?;
    std::fs::write(&stamp, pinned)?;
    Ok(st)
}
