//! Makes sure nats-server and PostgreSQL are there: the configured ones when they answer,
//! otherwise local instances with their data under `target/dev/`, installing Debian's packages
//! first when the binaries are missing.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt as _;

/// Ports of the local NATS server and PostgreSQL the demo starts when none is configured; the
/// demo prints them, so they stay the same from run to run.
const DEMO_NATS_PORT: u16 = 14222;
const DEMO_PG_PORT: u16 = 15432;

/// Which local servers to start when none is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Fixed ports and data under `target/dev/postgres`, kept between runs.
    Demo,
    /// Free ports and a cluster of its own under `target/dev/postgres-test`, so that tests and
    /// benchmarks never collide with a demo or with a leftover server.
    Test,
}

/// A port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The infrastructure in use; what this process started is stopped on drop.
#[derive(Debug)]
pub struct Infra {
    pub nats_url: String,
    pub database_url: String,
    pub nats_server_bin: PathBuf,
    own_nats: Option<Child>,
    own_pg: Option<OwnPostgres>,
}

#[derive(Debug)]
struct OwnPostgres {
    bin: PathBuf,
    data: PathBuf,
}

pub fn say(message: impl AsRef<str>) {
    #[allow(clippy::print_stderr)] // xtask talks to the person running it
    {
        eprintln!("xtask: {}", message.as_ref());
    }
}

/// Whether a TCP listener answers at `host:port` within a second.
pub fn answers(addr: &str) -> bool {
    let Ok(addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a: SocketAddr| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// The `host:port` of a `nats://` or `postgres://` URL (first of a comma-separated list).
pub fn host_port(url: &str, default_port: u16) -> Option<String> {
    let first = url.split(',').next()?;
    let rest = first.split_once("://").map_or(first, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let authority = rest.split(['/', '?']).next()?;
    if authority.is_empty() {
        return None;
    }
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        Some(authority.to_owned())
    } else {
        Some(format!("{authority}:{default_port}"))
    }
}

pub fn wait_until(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > deadline {
            bail!("{what} did not come up within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn which(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .chain(extra.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Installs Debian packages, with sudo when not root.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    say(format!("installing {} with apt-get", packages.join(" ")));
    let sudo = if is_root() {
        None
    } else if which("sudo", &[]).is_some() {
        Some("sudo")
    } else {
        bail!(
            "{} missing and this user cannot install packages (not root, no sudo); install them \
             or point NATS_URL / DATABASE_URL at running servers",
            packages.join(" and ")
        );
    };
    let run = |args: &[&str]| -> Result<()> {
        let mut command = match sudo {
            Some(sudo) => {
                let mut c = Command::new(sudo);
                c.arg("apt-get");
                c
            }
            None => Command::new("apt-get"),
        };
        let status = command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    run(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(&args)
}

pub fn nats_server_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return Some(PathBuf::from(bin));
    }
    which(
        "nats-server",
        &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
    )
}

pub fn postgres_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// Finds or installs the binaries both commands need.
fn ensure_binaries() -> Result<(PathBuf, Option<PathBuf>)> {
    let mut missing = Vec::new();
    if nats_server_bin().is_none() {
        missing.push("nats-server");
    }
    if postgres_bin_dir().is_none() && std::env::var_os("DATABASE_URL").is_none() {
        missing.push("postgresql");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    let nats = nats_server_bin().context("nats-server is still missing after installing it")?;
    Ok((nats, postgres_bin_dir()))
}

impl Infra {
    /// Brings up NATS and PostgreSQL under `root/target/dev`.
    pub fn up(root: &Path, profile: Profile) -> Result<Self> {
        let (nats_server_bin, pg_bin) = ensure_binaries()?;
        let dev = root.join("target/dev");
        std::fs::create_dir_all(&dev)?;
        let mut infra = Infra {
            nats_url: String::new(),
            database_url: String::new(),
            nats_server_bin,
            own_nats: None,
            own_pg: None,
        };

        match std::env::var("NATS_URL") {
            Ok(url) if host_port(&url, 4222).is_some_and(|a| answers(&a)) => {
                say(format!("using NATS at {url} (NATS_URL)"));
                infra.nats_url = url;
            }
            configured => {
                if let Ok(url) = configured {
                    say(format!(
                        "NATS_URL={url} does not answer; starting a local server"
                    ));
                }
                let port = match profile {
                    Profile::Demo => DEMO_NATS_PORT,
                    Profile::Test => free_port()?,
                };
                infra.start_nats(&dev, port)?;
            }
        }

        match std::env::var("DATABASE_URL") {
            Ok(url) if host_port(&url, 5432).is_some_and(|a| answers(&a)) => {
                say(format!("using PostgreSQL at {url} (DATABASE_URL)"));
                infra.database_url = url;
            }
            configured => {
                if let Ok(url) = configured {
                    say(format!(
                        "DATABASE_URL={url} does not answer; starting a local server"
                    ));
                }
                let bin = match pg_bin {
                    Some(bin) => bin,
                    None => {
                        apt_install(&["postgresql"])?;
                        postgres_bin_dir().context("postgresql is still missing after install")?
                    }
                };
                let (port, data) = match profile {
                    Profile::Demo => (DEMO_PG_PORT, dev.join("postgres")),
                    Profile::Test => (free_port()?, dev.join("postgres-test")),
                };
                infra.start_postgres(&bin, &data, port)?;
            }
        }
        Ok(infra)
    }

    fn start_nats(&mut self, dev: &Path, port: u16) -> Result<()> {
        let addr = format!("127.0.0.1:{port}");
        let pid_file = dev.join(format!("nats-server-{port}.pid"));
        stop_leftover(&pid_file, "nats-server");
        if answers(&addr) {
            bail!(
                "port {port} is taken by another process; stop it or set NATS_URL to a \
                 running server"
            );
        }
        let log = dev.join("nats-server.log");
        let child = Command::new(&self.nats_server_bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-l")
            .arg(&log)
            .arg("-P")
            .arg(&pid_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.nats_server_bin.display()))?;
        self.own_nats = Some(child);
        wait_until("nats-server", Duration::from_secs(10), || answers(&addr))?;
        self.nats_url = format!("nats://{addr}");
        say(format!(
            "started nats-server at {} (log {})",
            self.nats_url,
            log.display()
        ));
        Ok(())
    }

    fn start_postgres(&mut self, bin: &Path, data: &Path, port: u16) -> Result<()> {
        let data = data.to_owned();
        let addr = format!("127.0.0.1:{port}");
        // initdb and postgres refuse to run as root: run them as the postgres user then.
        let as_user = |program: &Path| -> Command {
            if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        if !data.join("PG_VERSION").is_file() {
            std::fs::create_dir_all(&data)?;
            if is_root() {
                let status = Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&data)
                    .status()?;
                if !status.success() {
                    bail!("cannot hand {} to the postgres user", data.display());
                }
            }
            say(format!(
                "initialising a PostgreSQL cluster in {}",
                data.display()
            ));
            let output = as_user(&bin.join("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data)
                .output()
                .context("running initdb")?;
            if !output.status.success() {
                bail!(
                    "initdb failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
        }
        if let Some(pid) = leftover_postgres(&data, port) {
            say(format!(
                "PostgreSQL from an earlier run is still up in {} (pid {pid}); stopping it",
                data.display()
            ));
            let _ = as_user(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-m", "fast", "-w", "stop"])
                .stdout(Stdio::null())
                .status();
        }
        if answers(&addr) {
            bail!(
                "port {port} is taken by another process; stop it or set DATABASE_URL to \
                 a running server"
            );
        }
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c max_connections=200",
            data.display()
        );
        let output = as_user(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &options, "-l"])
            .arg(data.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .context("running pg_ctl start")?;
        if !output.status.success() {
            bail!(
                "PostgreSQL did not start: {} (see {})",
                String::from_utf8_lossy(&output.stdout).trim(),
                data.join("server.log").display()
            );
        }
        self.own_pg = Some(OwnPostgres {
            bin: bin.to_owned(),
            data,
        });
        self.database_url = format!("postgres://postgres@{addr}/postgres");
        say(format!("started PostgreSQL at {}", self.database_url));
        Ok(())
    }
}

impl Drop for Infra {
    fn drop(&mut self) {
        if let Some(mut nats) = self.own_nats.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(nats.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = nats.wait();
            say("stopped nats-server");
        }
        if let Some(pg) = self.own_pg.take() {
            let mut command = if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(pg.bin.join("pg_ctl"));
                c
            } else {
                Command::new(pg.bin.join("pg_ctl"))
            };
            let stopped = command
                .arg("-D")
                .arg(&pg.data)
                .args(["-m", "fast", "-w", "stop"])
                .stdout(Stdio::null())
                .status();
            if stopped.is_ok_and(|s| s.success()) {
                say("stopped PostgreSQL");
            } else {
                say(format!(
                    "could not stop PostgreSQL in {}",
                    pg.data.display()
                ));
            }
        }
    }
}

impl Infra {
    /// The process id of the PostgreSQL this run started (its postmaster, whose children are
    /// the backends), if it started one. It runs as a daemon, not as a child of xtask.
    pub fn own_postgres_pid(&self) -> Option<u32> {
        let pg = self.own_pg.as_ref()?;
        let text = std::fs::read_to_string(pg.data.join("postmaster.pid")).ok()?;
        let (pid, _) = postmaster_pid(&text)?;
        u32::try_from(pid).ok()
    }
}

/// The process id in `postmaster.pid` of the cluster in `data`, if that process is alive and
/// listens on `port`: PostgreSQL left running by an earlier run that could not stop it.
fn leftover_postgres(data: &Path, port: u16) -> Option<i32> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let (pid, listening) = postmaster_pid(&text)?;
    (listening == port && alive(pid)).then_some(pid)
}

/// The process id and port in the text of a `postmaster.pid` (its first and fourth lines).
fn postmaster_pid(text: &str) -> Option<(i32, u16)> {
    let lines: Vec<&str> = text.lines().collect();
    Some((
        lines.first()?.trim().parse().ok()?,
        lines.get(3)?.trim().parse().ok()?,
    ))
}

/// Whether process `pid` exists and has not ended (a zombie has: it only waits to be reaped).
fn alive(pid: i32) -> bool {
    if pid <= 0 || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        });
    state.as_deref() != Some("Z")
}

/// Whether process `pid` runs a program whose name starts with `program`.
fn runs(pid: i32, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|cmdline| {
            let first = cmdline.split(|b| *b == 0).next()?.to_vec();
            let path = PathBuf::from(String::from_utf8(first).ok()?);
            Some(path.file_name()?.to_string_lossy().starts_with(program))
        })
        .unwrap_or(false)
}

/// Stops the process named in `pid_file` if it is still alive and runs `program`: what an
/// earlier run started and could not stop (it was killed). Waits up to 10 s for it to go.
pub fn stop_leftover(pid_file: &Path, program: &str) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    else {
        return;
    };
    if !alive(pid) || !runs(pid, program) {
        let _ = std::fs::remove_file(pid_file);
        return;
    }
    say(format!(
        "{program} from an earlier run is still up (pid {pid}); stopping it"
    ));
    let target = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR`, a configured `build.target-dir`, or
/// the workspace's `target/`, as cargo itself says.
pub fn target_dir(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stderr(Stdio::inherit())
        .output()
        .context("asking cargo for its target directory")?;
    if !output.status.success() {
        bail!("cargo metadata failed ({})", output.status);
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata names no target directory")?;
    Ok(PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postmaster_pid_file_names_its_process_and_port() {
        let text = "4242\n/work/target/dev/postgres\n1764600000\n15432\n/tmp\n127.0.0.1\n";
        assert_eq!(postmaster_pid(text), Some((4242, 15432)));
        assert_eq!(postmaster_pid("4242\n"), None);
        assert_eq!(postmaster_pid(""), None);
    }

    #[test]
    fn a_leftover_is_stopped_only_when_it_runs_the_program_named() {
        let dir = std::env::temp_dir().join(format!("xtask-leftover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pid_file = dir.join("x.pid");
        let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
        // Just spawned, a child can still show its parent's program for a moment.
        let pid = sleeper.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !runs(pid, "sleep") {
            assert!(Instant::now() < deadline, "the sleeper never ran sleep");
            std::thread::yield_now();
        }
        std::fs::write(&pid_file, sleeper.id().to_string()).unwrap();
        // Not the program named: left alone (a pid reused by something else).
        stop_leftover(&pid_file, "nats-server");
        assert!(
            matches!(sleeper.try_wait(), Ok(None)),
            "another program was stopped"
        );
        std::fs::write(&pid_file, sleeper.id().to_string()).unwrap();
        stop_leftover(&pid_file, "sleep");
        let status = sleeper.wait().unwrap();
        assert!(!status.success(), "the leftover was stopped");
        assert!(!pid_file.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_ports() {
        assert_eq!(
            host_port("nats://127.0.0.1:4222", 4222).unwrap(),
            "127.0.0.1:4222"
        );
        assert_eq!(host_port("nats://a:1,nats://b:2", 4222).unwrap(), "a:1");
        assert_eq!(host_port("localhost", 4222).unwrap(), "localhost:4222");
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/db?x=1", 5432).unwrap(),
            "127.0.0.1:5432"
        );
        assert_eq!(host_port("postgres://u:p@db/x", 5432).unwrap(), "db:5432");
    }
}
