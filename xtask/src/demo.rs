//! `cargo xtask demo`: infrastructure, every service and the simulated city, until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt as _;

use crate::infra::{self, Infra, say};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop after this long (for example `60s`, `5m`); without it, run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Build and run the debug profile instead of release (faster to build, slower to run).
    #[arg(long)]
    debug: bool,
    /// Write the simulator's report as JSON here (the run fails if any request was lost or
    /// double-assigned).
    #[arg(long)]
    report_json: Option<PathBuf>,
    /// Write the simulator's report with plots as HTML here.
    #[arg(long)]
    report_html: Option<PathBuf>,
    /// Write what the run cost and where its time went as JSON here: each program's CPU while
    /// the city was simulated (share of one core: services, simulator, NATS, PostgreSQL), and
    /// each hop's latency from the services' metrics at the end.
    #[arg(long)]
    costs_json: Option<PathBuf>,
    /// Simulated drivers and riders.
    #[arg(long, default_value_t = 200)]
    drivers: usize,
    #[arg(long, default_value_t = 200)]
    riders: usize,
    /// Ride requests per second across the city.
    #[arg(long, default_value_t = 2.0)]
    request_rate: f64,
    /// The matcher's strategy: `greedy` or `batched`. Two runs with the same `--seed` and
    /// different strategies compare them (`cargo xtask bench matching` does it for you).
    #[arg(long, default_value = "greedy")]
    strategy: String,
    /// Seed of the simulated city.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Gateways to run (1 to 8); the simulator spreads its clients over them as a load
    /// balancer would. The first is on 8080/8081, the next on 8090/8091, and so on.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    gateways: u16,
    /// Matcher replicas serving the city (1 to 8). With more than one gateway or matcher, a
    /// replica that dies is restarted with backoff and the demo goes on.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    matchers: u16,
}

/// The secret the demo's services sign and check tokens with.
pub(crate) const DEMO_SECRET: &str = "demo-secret-not-for-production";
pub(crate) const SUBJECT_PREFIX: &str = "demo";
/// The simulated city: centre (latitude, longitude) and radius.
pub(crate) const CITY: (f64, f64) = (52.52, 13.405);
pub(crate) const CITY_RADIUS_KM: f64 = 15.0;
/// Where the simulated demand and drivers are, inside the city.
const SIM_RADIUS_KM: f64 = 8.0;

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

/// The simulator's arguments for the demo's city: `gateways` (comma-separated WebSocket URLs),
/// `(drivers, riders, requests per second)`, demand for `duration`, and the seed.
pub(crate) fn city_args(
    gateways: &str,
    (drivers, riders, request_rate): (usize, usize, f64),
    duration: &str,
    seed: u64,
) -> Vec<String> {
    vec![
        "--gateway".to_owned(),
        gateways.to_owned(),
        "--drivers".into(),
        drivers.to_string(),
        "--riders".into(),
        riders.to_string(),
        "--request-rate".into(),
        request_rate.to_string(),
        "--center".into(),
        format!("{},{}", CITY.0, CITY.1),
        "--radius-km".into(),
        SIM_RADIUS_KM.to_string(),
        "--duration".into(),
        duration.to_owned(),
        // Long enough for the search timeout and the longest trip across the city.
        "--drain".into(),
        "90s".into(),
        // Vehicles move 30 times faster than real time, so a trip across the city takes
        // well under a minute.
        "--speedup".into(),
        "30".into(),
        "--quiet".into(),
        "--seed".into(),
        seed.to_string(),
    ]
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
fn http_agent(timeout: Duration) -> ureq::Agent {
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

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    let stop_requested = Arc::new(AtomicBool::new(false));
    let flag = stop_requested.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    let bin_dir = build_services(&root, !args.debug)?;
    let bin = |name: &str| bin_dir.join(name);
    let dashboard = crate::web::build_dashboard(&root)?;

    let infra = Infra::up(&root, infra::Profile::Demo)?;
    let logs = root.join("target/dev/logs");
    std::fs::create_dir_all(&logs)?;
    let common = [
        ("NATS_URL", infra.nats_url.as_str()),
        ("DATABASE_URL", infra.database_url.as_str()),
        ("TOKEN_SECRET", DEMO_SECRET),
        ("SUBJECT_PREFIX", SUBJECT_PREFIX),
        ("RUST_LOG", "info"),
    ];
    let replicated = args.gateways > 1 || args.matchers > 1;
    let mut services: Vec<(Service, bool)> = Vec::new();
    let trips_http = "127.0.0.1:8082";
    services.push((
        start(
            "trips",
            &bin("dispatch-trips"),
            // Scheduled jobs are dispatched 30 s before their pickup time, so the simulated
            // integrator's (a few minutes ahead) wait a while first.
            &[
                "--http",
                trips_http,
                "--search-timeout-s",
                "30",
                "--schedule-lead-s",
                "30",
            ],
            &common,
            &logs,
        )?,
        false,
    ));
    let area = format!("{},{},{}", CITY.0, CITY.1, CITY_RADIUS_KM);
    let matcher_https: Vec<String> = (0..args.matchers)
        .map(|i| format!("127.0.0.1:{}", 8083 + 10 * i))
        .collect();
    for (i, http) in matcher_https.iter().enumerate() {
        let name = if args.matchers == 1 {
            "matcher".to_owned()
        } else {
            format!("matcher-{}", i + 1)
        };
        services.push((
            start(
                &name,
                &bin("dispatch-matcher"),
                &[
                    "--area",
                    &area,
                    "--http",
                    http,
                    "--strategy",
                    &args.strategy,
                ],
                &common,
                &logs,
            )?,
            args.matchers > 1,
        ));
    }
    let dashboard_dir = dashboard.display().to_string();
    let trips_api = format!("http://{trips_http}");
    let map_center = format!("{},{}", CITY.0, CITY.1);
    let gateway_addrs: Vec<(String, String)> = (0..args.gateways)
        .map(|i| {
            (
                format!("127.0.0.1:{}", 8080 + 10 * i),
                format!("127.0.0.1:{}", 8081 + 10 * i),
            )
        })
        .collect();
    for (i, (ws, http)) in gateway_addrs.iter().enumerate() {
        let (name, id) = if args.gateways == 1 {
            ("gateway".to_owned(), "demo-gateway".to_owned())
        } else {
            (
                format!("gateway-{}", i + 1),
                format!("demo-gateway-{}", i + 1),
            )
        };
        services.push((
            start(
                &name,
                &bin("dispatch-gateway"),
                &[
                    "serve",
                    "--id",
                    &id,
                    "--ws",
                    ws,
                    "--http",
                    http,
                    "--dashboard-dir",
                    &dashboard_dir,
                    "--trips-api",
                    &trips_api,
                    "--map-center",
                    &map_center,
                    "--map-zoom",
                    "12.5",
                ],
                &common,
                &logs,
            )?,
            args.gateways > 1,
        ));
    }
    let mut endpoints = vec![("trips".to_owned(), trips_http.to_owned())];
    endpoints.extend(
        matcher_https
            .iter()
            .map(|h| ("matcher".to_owned(), h.clone())),
    );
    endpoints.extend(
        gateway_addrs
            .iter()
            .map(|(_, h)| ("gateway".to_owned(), h.clone())),
    );
    let endpoints: Vec<(&str, &str)> = endpoints
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str()))
        .collect();
    let mut plain: Vec<Service> = services.into_iter().map(|(s, _)| s).collect();
    let ready = wait_ready(&mut plain, &endpoints, &stop_requested);
    let flags: Vec<bool> = std::iter::once(false)
        .chain((0..args.matchers).map(|_| args.matchers > 1))
        .chain((0..args.gateways).map(|_| args.gateways > 1))
        .collect();
    let mut supervisor = Supervisor::new(plain.into_iter().zip(flags).collect());

    let mut simulator = None;
    let mut sim_status = None;
    let mut fatal = None;
    if ready.is_ok() {
        let duration = args
            .duration
            .map_or("365d".to_owned(), |d| format!("{}s", d.as_secs()));
        let gateway_urls: Vec<String> = gateway_addrs
            .iter()
            .map(|(ws, _)| format!("ws://{ws}/ws"))
            .collect();
        let mut sim_args = city_args(
            &gateway_urls.join(","),
            (args.drivers, args.riders, args.request_rate),
            &duration,
            args.seed,
        );
        if let Some(path) = &args.report_json {
            sim_args.extend(["--report-json".to_owned(), path.display().to_string()]);
        }
        // An integrator's server beside the riders: jobs through the API, half scheduled.
        let api_key =
            crate::credentials::integrator_key(&bin("dispatch-trips"), &infra.database_url)?;
        sim_args.extend([
            "--jobs-api".to_owned(),
            format!("http://{trips_http}"),
            "--jobs-per-sec".into(),
            (args.request_rate / 5.0).to_string(),
        ]);
        let mut sim_env = common.to_vec();
        sim_env.push(("DISPATCH_API_KEY", api_key.as_str()));
        if let Some(path) = &args.report_html {
            sim_args.extend(["--report-html".to_owned(), path.display().to_string()]);
        }
        let sim_args: Vec<&str> = sim_args.iter().map(String::as_str).collect();
        simulator = Some(start(
            "simulator",
            &bin("dispatch-sim"),
            &sim_args,
            &sim_env,
            &logs,
        )?);
        // What the city costs: from the simulator's start to its last snapshot while it ran.
        let cpu_roots: Vec<u32> = infra.own_postgres_pid().into_iter().collect();
        let cpu_before = crate::cpu::Snapshot::take(&cpu_roots);
        let mut cpu_last = None;
        let mut cpu_taken = Instant::now();
        say(format!(
            "simulating {} drivers and {} riders in a city of {CITY_RADIUS_KM} km around {:?}",
            args.drivers, args.riders, CITY
        ));
        let token = crate::credentials::dispatcher_token(&bin("dispatch-gateway"))?;
        let first_http = &gateway_addrs[0].1;
        say("the system is up:");
        say(format!(
            "  dispatcher dashboard   http://{first_http}/#token={token}"
        ));
        let gateway = bin("dispatch-gateway");
        let rider = crate::credentials::token(&gateway, "rider", "demo-rider", "Demo rider")?;
        let driver = crate::credentials::token(&gateway, "driver", "demo-driver", "Demo driver")?;
        say(format!(
            "  rider's app            http://{first_http}/rider.html#token={rider}"
        ));
        say(format!(
            "  driver's app           http://{first_http}/driver.html#token={driver}"
        ));
        for (ws, http) in &gateway_addrs {
            say(format!(
                "  gateway                ws://{ws}/ws, metrics http://{http}/metrics"
            ));
        }
        for http in &matcher_https {
            say(format!("  matcher metrics        http://{http}/metrics"));
        }
        say(format!(
            "  trips API and metrics  http://{trips_http}/api/trips"
        ));
        say(format!(
            "  integrator API         http://{trips_http}/v1 (contract: /v1/openapi.json)"
        ));
        say(format!(
            "  a dispatcher token     TOKEN_SECRET={DEMO_SECRET} {} token --role dispatcher --sub ops",
            bin("dispatch-gateway").display()
        ));
        say(format!("  NATS                   {}", infra.nats_url));
        say(format!("  PostgreSQL             {}", infra.database_url));
        say(format!("  logs                   {}", logs.display()));
        if replicated {
            say("replicas that die are restarted; the demo goes on");
        }
        match args.duration {
            Some(d) => say(format!("running for {d:?}; Ctrl-C stops earlier")),
            None => say("Ctrl-C stops everything"),
        }
        loop {
            if stop_requested.load(Ordering::SeqCst) {
                break;
            }
            if args.costs_json.is_some() && cpu_taken.elapsed() >= Duration::from_secs(1) {
                cpu_last = Some(crate::cpu::Snapshot::take(&cpu_roots));
                cpu_taken = Instant::now();
            }
            if let Some(status) = simulator.as_mut().and_then(finished) {
                simulator = None;
                sim_status = Some(status);
                break;
            }
            if let Some(why) = supervisor.watch() {
                say(&why);
                fatal = Some(why);
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(path) = &args.costs_json {
            let shares = cpu_last
                .unwrap_or_else(|| crate::cpu::Snapshot::take(&cpu_roots))
                .shares_since(&cpu_before);
            let texts: Vec<String> = endpoints
                .iter()
                .filter_map(|(_, addr)| {
                    http_agent(Duration::from_secs(5))
                        .get(format!("http://{addr}/metrics"))
                        .call()
                        .ok()?
                        .body_mut()
                        .read_to_string()
                        .ok()
                })
                .collect();
            let json = serde_json::json!({
                "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
                "cpu_share_of_a_core": shares,
                "hops": crate::hops::breakdown(&texts),
            });
            std::fs::write(path, serde_json::to_string_pretty(&json)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    say("stopping");
    // Stopped early (Ctrl-C): the simulator drains and still writes its report, but counts the
    // trips it had to cut short as lost; those were ended by the person, not by the system.
    let cut_short = simulator.is_some();
    if let Some(sim) = simulator {
        sim_status = stop(sim);
    }
    supervisor.stop_all();
    drop(infra);
    ready?;
    if let Some(why) = fatal {
        bail!("{why}");
    }
    match sim_status {
        Some(status) if !status.success() && cut_short => {
            say_cut_short(status);
            Ok(())
        }
        Some(status) if !status.success() => {
            bail!("the simulation reported lost or double-assigned requests, or failed ({status})")
        }
        _ => Ok(()),
    }
}

/// Says why a simulator stopped by Ctrl-C reported lost trips: they were still under way.
pub(crate) fn say_cut_short(status: ExitStatus) {
    say(format!(
        "stopped before the city ended: the simulator's report ({status}) counts the trips \
         still under way as lost; see its summary for the figures"
    ));
}

/// How the simulator ended, if it has, said with where its summary is.
pub(crate) fn finished(simulator: &mut Service) -> Option<ExitStatus> {
    let status = simulator.child.try_wait().ok()??;
    say(format!(
        "the simulation finished ({status}); its summary is in {}",
        simulator.log.display()
    ));
    Some(status)
}

/// The first service whose process has ended, if any.
pub(crate) fn exited(services: &mut [Service]) -> Option<&Service> {
    let index = services
        .iter_mut()
        .position(|s| s.child.try_wait().ok().flatten().is_some())?;
    Some(&services[index])
}

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
