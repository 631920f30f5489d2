//! The process library of the commands that run the services as processes (`demo`,
//! `cluster`, `soak`, `bench`): building the binaries, starting a service with its log and pid
//! file (so that a later run stops what a killed one left), stopping it (SIGTERM, then
//! SIGKILL), supervising replicas (restarted with backoff), and waiting for readiness over HTTP.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::infra::{self, say};

/// A service running as a process of its own: its name, its process, its log, and how it was
/// started (to start it again).
pub(crate) struct Service {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
    /// How it was started, to start it again.
    launch: Launch,
}

#[derive(Clone)]
struct Launch {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pid_file: Option<PathBuf>,
}

/// Builds the services' binaries (release or debug); returns the directory holding them.
pub(crate) fn build_services(root: &Path, release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    say(format!("building the services ({profile})"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo);
    build.current_dir(root).args(["build", "--bins"]);
    for package in ["trips", "gateway", "matcher", "simulator"] {
        build.args(["-p", package]);
    }
    if release {
        build.arg("--release");
    }
    if !build.status()?.success() {
        bail!("building the services failed");
    }
    Ok(infra::target_dir(root)?.join(profile))
}

/// The body of a successful GET of `http://{addr}{path}`, if any.
pub(crate) fn http_get(addr: &str, path: &str) -> Option<String> {
    http_agent(Duration::from_secs(5))
        .get(format!("http://{addr}{path}"))
        .call()
        .ok()?
        .into_body()
        .read_to_string()
        .ok()
}

/// Whether `http://{addr}{path}` answers 200.
pub(crate) fn http_ok(addr: &str, path: &str) -> bool {
    http_agent(Duration::from_secs(1))
        .get(format!("http://{addr}{path}"))
        .call()
        .is_ok()
}

/// A client for the services' own endpoints: no proxy, a deadline, an error for any status but
/// success.
pub(crate) fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .proxy(None)
        .build()
        .new_agent()
}

pub(crate) fn start(
    name: &str,
    bin: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    logs: &Path,
) -> Result<Service> {
    let launch = Launch {
        bin: bin.to_owned(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        pid_file: Some(logs.join(format!("{name}.pid"))),
    };
    launch_service(name, launch, logs.join(format!("{name}.log")), false)
}

/// A flag that Ctrl-C raises, for a command that runs until it is stopped.
pub(crate) fn stop_on_ctrl_c() -> Result<std::sync::Arc<AtomicBool>> {
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// Starts `command` (rendered by `topology`) from `bin_dir` as the service `name`, like
/// [`start`].
pub(crate) fn start_command(
    name: &str,
    bin_dir: &Path,
    command: &topology::Command,
    logs: &Path,
) -> Result<Service> {
    let args: Vec<&str> = command.args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = command.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    start(name, &bin_dir.join(command.program), &args, &env, logs)
}

/// Starts a service, its output going to `log` (appended to when `again`), and records its
/// process id so that a later run can stop it if this one is killed before it can.
fn launch_service(name: &str, launch: Launch, log: PathBuf, again: bool) -> Result<Service> {
    if let Some(pid_file) = &launch.pid_file
        && let Some(program) = launch.bin.file_name()
    {
        infra::stop_leftover(pid_file, &program.to_string_lossy());
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(again)
        .write(true)
        .truncate(!again)
        .open(&log)?;
    let child = Command::new(&launch.bin)
        .args(&launch.args)
        .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        // Own process group: Ctrl-C reaches xtask only, which stops services in order.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", launch.bin.display()))?;
    if let Some(pid_file) = &launch.pid_file {
        let _ = std::fs::write(pid_file, child.id().to_string());
    }
    Ok(Service {
        name: name.to_owned(),
        child,
        log,
        launch,
    })
}

impl Drop for Service {
    /// A service still running when the demo ends, by error or not, is stopped.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            terminate(self);
        }
    }
}

/// Stops a service (SIGTERM, then SIGKILL after 15 s) and returns how it ended.
pub(crate) fn stop(mut service: Service) -> Option<ExitStatus> {
    terminate(&mut service)
}

fn terminate(service: &mut Service) -> Option<ExitStatus> {
    // Ended and reaped already: its process id may be another process's by now.
    if let Ok(Some(status)) = service.child.try_wait() {
        if let Some(pid_file) = &service.launch.pid_file {
            let _ = std::fs::remove_file(pid_file);
        }
        return Some(status);
    }
    let pid = Pid::from_raw(service.child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        match service.child.try_wait() {
            Ok(Some(status)) => {
                say(format!("stopped {} ({status})", service.name));
                break Some(status);
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                say(format!("{} did not stop in time; killing it", service.name));
                let _ = service.child.kill();
                let _ = service.child.wait();
                break None;
            }
        }
    };
    if let Some(pid_file) = &service.launch.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    status
}

/// Services run under watch: a replica that exits is started again after a backoff that
/// doubles from 1 s to 30 s (and starts over once it has run for a minute); a service without
/// replicas that exits ends the demo.
pub(crate) struct Supervisor {
    services: Vec<Supervised>,
}

struct Supervised {
    service: Option<Service>,
    replicated: bool,
    restart_at: Option<Instant>,
    started: Instant,
    backoff: Duration,
    restarts: u32,
}

impl Supervisor {
    pub(crate) fn new(services: Vec<(Service, bool)>) -> Self {
        Self {
            services: services
                .into_iter()
                .map(|(service, replicated)| Supervised {
                    service: Some(service),
                    replicated,
                    restart_at: None,
                    started: Instant::now(),
                    backoff: Duration::from_secs(1),
                    restarts: 0,
                })
                .collect(),
        }
    }

    /// Looks after every service once: restarts replicas that are due, schedules those that
    /// exited. Returns a fatal exit (of a service without replicas), if any.
    pub(crate) fn watch(&mut self) -> Option<String> {
        for supervised in &mut self.services {
            if let Some(at) = supervised.restart_at
                && Instant::now() >= at
                && let Some(dead) = supervised.service.take()
            {
                supervised.restart_at = None;
                supervised.restarts += 1;
                let (name, launch, log) =
                    (dead.name.clone(), dead.launch.clone(), dead.log.clone());
                drop(dead);
                match launch_service(&name, launch, log, true) {
                    Ok(service) => {
                        say(format!(
                            "restarted {name} (restart {})",
                            supervised.restarts
                        ));
                        supervised.started = Instant::now();
                        supervised.service = Some(service);
                    }
                    Err(error) => return Some(format!("{name} could not be restarted: {error:#}")),
                }
                continue;
            }
            let Some(service) = supervised.service.as_mut() else {
                continue;
            };
            if supervised.restart_at.is_some() {
                continue;
            }
            let Ok(Some(status)) = service.child.try_wait() else {
                continue;
            };
            if !supervised.replicated {
                return Some(format!(
                    "{} exited unexpectedly ({status}); see {}",
                    service.name,
                    service.log.display()
                ));
            }
            if supervised.started.elapsed() >= Duration::from_secs(60) {
                supervised.backoff = Duration::from_secs(1);
            }
            say(format!(
                "{} exited ({status}); restarting it in {:?} (see {})",
                service.name,
                supervised.backoff,
                service.log.display()
            ));
            supervised.restart_at = Some(Instant::now() + supervised.backoff);
            supervised.backoff = (supervised.backoff * 2).min(Duration::from_secs(30));
        }
        None
    }

    /// The services that run now (those waiting to be started again are left out).
    pub(crate) fn into_services(self) -> Vec<Service> {
        self.services
            .into_iter()
            .filter_map(|supervised| supervised.service)
            .collect()
    }

    /// Stops every service, the last started first.
    pub(crate) fn stop_all(self) {
        for supervised in self.services.into_iter().rev() {
            if let Some(service) = supervised.service {
                stop(service);
            }
        }
    }
}

/// The first service whose process has ended, if any.
pub(crate) fn exited(services: &mut [Service]) -> Option<&Service> {
    let index = services
        .iter_mut()
        .position(|s| s.child.try_wait().ok().flatten().is_some())?;
    Some(&services[index])
}

/// Waits (a minute at most) until every endpoint answers `/readyz`, failing early when a
/// service exits or a stop is requested.
pub(crate) fn wait_ready(
    services: &mut [Service],
    endpoints: &[(&str, &str)],
    stop_requested: &AtomicBool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for (name, addr) in endpoints {
        while !http_ok(addr, "/readyz") {
            if stop_requested.load(Ordering::SeqCst) {
                bail!("stopped before {name} was ready");
            }
            if let Some(dead) = exited(services) {
                bail!(
                    "{} exited during startup; see {}",
                    dead.name,
                    dead.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!("{name} was not ready within a minute");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        say(format!("{name} is ready"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_replica_that_exits_is_started_again_and_a_lone_service_ends_the_demo() {
        let logs = scratch("supervise");
        let sh = Path::new("/bin/sh");
        let replica = start("replica", sh, &["-c", "echo started; exit 3"], &[], &logs).unwrap();
        let mut supervisor = Supervisor::new(vec![(replica, true)]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while supervisor.services[0].restarts < 2 {
            assert!(Instant::now() < deadline, "the replica was not restarted");
            assert_eq!(supervisor.watch(), None, "a replica's exit is not fatal");
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(logs.join("replica.log")).unwrap();
        assert!(log.matches("started").count() >= 2, "{log}");
        supervisor.stop_all();

        let lone = start("lone", sh, &["-c", "exit 0"], &[], &logs).unwrap();
        let mut supervisor = Supervisor::new(vec![(lone, false)]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let fatal = loop {
            assert!(Instant::now() < deadline, "the exit was not noticed");
            if let Some(why) = supervisor.watch() {
                break why;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(fatal.starts_with("lone exited unexpectedly"), "{fatal}");
        let _ = std::fs::remove_dir_all(&logs);
    }
}
