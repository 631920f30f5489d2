//! What the tests of the web pages and the TypeScript SDK share: where the workspace, the built
//! pages and the SDK are, and running a Node.js script to its end.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// The directory named by `var` (set by `cargo xtask test`), or `default` under the workspace;
/// panics, saying how to build it, unless every one of `needs` is in it.
fn built(var: &str, default: &str, needs: &[&str]) -> PathBuf {
    let dir = std::env::var_os(var).map_or_else(|| workspace_root().join(default), PathBuf::from);
    assert!(
        needs.iter().all(|need| dir.join(need).exists()),
        "{} is not built: run `cargo xtask test`, or `npm ci && npm run build` there",
        dir.display()
    );
    dir
}

/// The built pages (`dashboards/web/dist`): the dashboard and the rider's and driver's apps.
pub fn pages_dist() -> PathBuf {
    built(
        "DISPATCH_DASHBOARD_DIST",
        "dashboards/web/dist",
        &["index.html", "rider.html", "driver.html"],
    )
}

/// The TypeScript SDK's directory, compiled (`dist/`) with its tools installed.
pub fn sdk_dir() -> PathBuf {
    built(
        "DISPATCH_SDK_DIR",
        "clients/typescript",
        &["dist/index.js", "node_modules"],
    )
}

/// Runs `node` with `args` in `dir` and `env` for at most `patience`; panics with what it said
/// unless it succeeded, else returns what it said.
pub async fn node(
    dir: &std::path::Path,
    args: &[std::ffi::OsString],
    env: &[(&str, String)],
    patience: Duration,
) -> String {
    let child = tokio::process::Command::new("node")
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (cargo xtask test installs it)");
    let output = tokio::time::timeout(patience, child.wait_with_output())
        .await
        .expect("the node script finished in time")
        .expect("node ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "node {args:?} failed:\n{said}");
    said
}
