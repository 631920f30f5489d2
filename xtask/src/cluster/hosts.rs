//! The hosts: making them (network namespaces), running commands on them, waiting for what
//! they serve, and PostgreSQL's data directories.

use super::*;

/// What a run holds: the hosts and what runs on each, its directory, PostgreSQL's binaries.
/// Dropping it removes the hosts (the processes on them are stopped first, by `run`).
pub(super) struct Cluster {
    pub(super) net: Net,
    pub(super) hosts: Vec<(Placement, Host)>,
    pub(super) dir: PathBuf,
    pub(super) pg_bin: PathBuf,
}

impl Cluster {
    pub(super) fn host(&self, role: &Role) -> &Host {
        &self
            .hosts
            .iter()
            .find(|(p, _)| &p.role == role)
            .expect("every role is placed")
            .1
    }

    pub(super) fn addrs(&self, matches: impl Fn(&Role) -> bool) -> Vec<Ipv4Addr> {
        self.hosts
            .iter()
            .filter(|(p, _)| matches(&p.role))
            .map(|(_, h)| h.addr)
            .collect()
    }

    /// `program args...` run inside `host`, as argv for `ip`.
    pub(super) fn inside(&self, host: &Host, program: &Path, args: &[String]) -> Vec<String> {
        let mut argv = vec![
            "netns".to_owned(),
            "exec".into(),
            host.namespace.clone(),
            program.display().to_string(),
        ];
        argv.extend_from_slice(args);
        argv
    }

    /// `pg_autoctl args...` run inside `host` as the postgres user, with its configuration
    /// and state under `node`'s directory.
    pub(super) fn pg_autoctl(&self, host: &Host, node: &Path, args: &[&str]) -> Vec<String> {
        let mut argv: Vec<String> = ["-u", "postgres", "--", "env"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        argv.push(format!("XDG_CONFIG_HOME={}", node.join("config").display()));
        argv.push(format!("XDG_DATA_HOME={}", node.join("data").display()));
        argv.push(format!("PATH={}:/usr/bin:/bin", self.pg_bin.display()));
        argv.push("pg_autoctl".into());
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        self.inside(host, Path::new("runuser"), &argv)
    }

    pub(super) fn start(
        &self,
        name: &str,
        argv: &[String],
        env: &[(&str, &str)],
    ) -> Result<Service> {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        process::start(name, self.net.ip(), &argv, env, &self.dir.join("logs"))
    }

    /// Runs `argv` (for `ip`) to the end, its output appended to `log`.
    pub(super) fn run_to_end(&self, what: &str, argv: &[String], log: &str) -> Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(log))?;
        let status = Command::new(self.net.ip())
            .args(argv)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .with_context(|| format!("running {what}"))?;
        ensure!(
            status.success(),
            "{what} failed ({status}); see {}",
            self.dir.join("logs").join(log).display()
        );
        Ok(())
    }

    /// The state of every PostgreSQL node as the monitor sees it: (name, reported, assigned).
    pub(super) fn pg_states(&self) -> Vec<(String, String, String)> {
        let host = self.host(&Role::PgMonitor);
        let node = self.dir.join("pg-monitor");
        let pgdata = node.join("pgdata").display().to_string();
        let argv = self.pg_autoctl(
            host,
            &node,
            &["show", "state", "--json", "--pgdata", &pgdata],
        );
        let Ok(output) = Command::new(self.net.ip())
            .args(&argv)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            return Vec::new();
        };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
            return Vec::new();
        };
        json.as_array()
            .into_iter()
            .flatten()
            .filter_map(|node| {
                Some((
                    node["nodename"].as_str()?.to_owned(),
                    node["current_group_state"].as_str()?.to_owned(),
                    node["assigned_group_state"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }
}

pub(super) fn wait_for(
    what: &str,
    deadline: Duration,
    stop: &AtomicBool,
    services: &mut [Service],
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        if stop.load(Ordering::SeqCst) {
            bail!("stopped before {what}");
        }
        if let Some(dead) = process::exited(services) {
            bail!(
                "{} exited while waiting for {what}; see {}",
                dead.name,
                dead.log.display()
            );
        }
        if start.elapsed() > deadline {
            bail!("{what} did not happen within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    say(format!("{what} ({:.1} s)", start.elapsed().as_secs_f64()));
    Ok(())
}

/// Whether the NATS node at `addr` has its routes to the other nodes.
pub(super) fn routed(addr: &Ipv4Addr) -> bool {
    process::http_get(&format!("{addr}:{NATS_MONITOR_PORT}"), "/routez")
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|routes| routes["num_routes"].as_u64())
        .is_some_and(|n| n >= (NATS_NODES - 1) as u64)
}

/// A directory the postgres user owns, for one node's data, configuration and state.
pub(super) fn make_postgres_dir(node: &Path) -> Result<()> {
    std::fs::create_dir_all(node)?;
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(node)
        .status()?;
    ensure!(
        status.success(),
        "cannot hand {} to the postgres user",
        node.display()
    );
    Ok(())
}
