//! `cargo xtask bench`: the benchmarks, on real servers brought up like the tests'.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::infra::{self, Infra, say};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run only the benchmarks whose names contain this (codec, trips, geo, matching).
    filter: Option<String>,
}

/// Port of the Redis xtask starts when `REDIS_URL` does not answer.
const OWN_REDIS_PORT: u16 = 16379;

/// A Redis for the geo comparison: `REDIS_URL` when it answers, else a local one.
struct Redis {
    url: String,
    own: Option<Child>,
}

impl Redis {
    fn up(dev: &Path) -> Result<Self> {
        if let Ok(url) = std::env::var("REDIS_URL")
            && infra::host_port(&url, 6379).is_some_and(|a| infra::answers(&a))
        {
            say(format!("using Redis at {url} (REDIS_URL)"));
            return Ok(Self { url, own: None });
        }
        let find = || {
            infra::which(
                "redis-server",
                &["/usr/bin/redis-server", "/usr/sbin/redis-server"],
            )
        };
        let bin = match find() {
            Some(bin) => bin,
            None => {
                infra::apt_install(&["redis-server"])?;
                find().context("redis-server is still missing after installing it")?
            }
        };
        let addr = format!("127.0.0.1:{OWN_REDIS_PORT}");
        if infra::answers(&addr) {
            bail!("port {OWN_REDIS_PORT} is taken; stop that process or set REDIS_URL");
        }
        let child = Command::new(&bin)
            .args(["--bind", "127.0.0.1", "--port", &OWN_REDIS_PORT.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dev)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        infra::wait_until("redis-server", Duration::from_secs(10), || {
            infra::answers(&addr)
        })?;
        let url = format!("redis://{addr}");
        say(format!("started redis-server at {url}"));
        Ok(Self {
            url,
            own: Some(child),
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.own.take() {
            let _ = child.kill();
            let _ = child.wait();
            say("stopped redis-server");
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let infra = Infra::up(&root, infra::Profile::Test)?;
    let redis = Redis::up(&root.join("target/dev"))?;
    let wanted = |name: &str| args.filter.as_deref().is_none_or(|f| name.contains(f));
    for (package, bench) in [
        ("protocol", "codec"),
        ("tests", "trips"),
        ("tests", "geo"),
        ("tests", "matching"),
    ] {
        if !wanted(bench) {
            continue;
        }
        say(format!("== cargo bench -p {package} --bench {bench}"));
        let status = Command::new(&cargo)
            .current_dir(&root)
            .args(["bench", "-p", package, "--bench", bench])
            .env("DISPATCH_TEST_DATABASE_URL", &infra.database_url)
            .env("NATS_SERVER_BIN", &infra.nats_server_bin)
            .env("REDIS_URL", &redis.url)
            .status()?;
        if !status.success() {
            bail!("benchmark {bench} failed");
        }
    }
    say("reports are in target/criterion/ and target/bench/");
    Ok(())
}
