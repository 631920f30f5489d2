//! What the cluster needs from Debian (nats-server, PostgreSQL, pg_auto_failover), installed
//! through apt when missing.

use super::*;

/// nats-server, PostgreSQL, pg_auto_failover: installed through apt when missing. Returns
/// PostgreSQL's binary directory.
pub(super) fn ensure_packages() -> Result<PathBuf> {
    let mut missing = Vec::new();
    if infra::nats_server_bin().is_none() {
        missing.push("nats-server");
    }
    if infra::postgres_bin_dir().is_none() {
        missing.push("postgresql");
    }
    if infra::which("pg_autoctl", &["/usr/bin/pg_autoctl"]).is_none() {
        missing.push("pg-auto-failover-cli");
    }
    let has_extension = |dir: &Path| {
        dir.parent()
            .and_then(|version| version.file_name())
            .is_some_and(|version| {
                Path::new("/usr/share/postgresql")
                    .join(version)
                    .join("extension/pgautofailover.control")
                    .is_file()
            })
    };
    let extension_package = infra::postgres_bin_dir().and_then(|dir| {
        let version = dir.parent()?.file_name()?.to_string_lossy().into_owned();
        (!has_extension(&dir)).then(|| format!("postgresql-{version}-auto-failover"))
    });
    let mut wanted: Vec<&str> = missing.clone();
    if let Some(package) = &extension_package {
        wanted.push(package);
    }
    if !wanted.is_empty() {
        infra::apt_install(&wanted)?;
    }
    let dir =
        infra::postgres_bin_dir().context("PostgreSQL is still missing after installing it")?;
    if !has_extension(&dir) {
        let version = dir
            .parent()
            .and_then(|v| v.file_name())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        infra::apt_install(&[&format!("postgresql-{version}-auto-failover")])?;
    }
    ensure!(
        infra::which("pg_autoctl", &["/usr/bin/pg_autoctl"]).is_some(),
        "pg_autoctl is still missing after installing pg-auto-failover-cli"
    );
    Ok(dir)
}
