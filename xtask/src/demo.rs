//! `cargo xtask demo`: infrastructure, every service and the simulated city, until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
}

/// The secret the demo's services sign and check tokens with.
const DEMO_SECRET: &str = "demo-secret-not-for-production";
const SUBJECT_PREFIX: &str = "demo";
/// The simulated city: centre (latitude, longitude) and radius.
const CITY: (f64, f64) = (52.52, 13.405);
const CITY_RADIUS_KM: f64 = 15.0;
/// Where the simulated demand and drivers are, inside the city.
const SIM_RADIUS_KM: f64 = 8.0;

pub(crate) struct Service {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
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
    Ok(root.join("target").join(profile))
}

/// A day's dispatcher token for the dashboard link.
fn dispatcher_token(gateway: &Path) -> Result<String> {
    let output = Command::new(gateway)
        .args([
            "token",
            "--role",
            "dispatcher",
            "--sub",
            "ops",
            "--name",
            "Operations",
        ])
        .env("TOKEN_SECRET", DEMO_SECRET)
        .stderr(Stdio::inherit())
        .output()
        .context("minting a dispatcher token")?;
    if !output.status.success() {
        bail!("minting a dispatcher token failed ({})", output.status);
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
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
    name: &'static str,
    bin: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    logs: &Path,
) -> Result<Service> {
    let log = logs.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    let child = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        // Own process group: Ctrl-C reaches xtask only, which stops services in order.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Service { name, child, log })
}

impl Drop for Service {
    /// A service still running when the demo ends, by error or not, is stopped.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            terminate(self);
        }
    }
}

pub(crate) fn stop(mut service: Service) {
    terminate(&mut service);
}

fn terminate(service: &mut Service) {
    let pid = Pid::from_raw(service.child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match service.child.try_wait() {
            Ok(Some(status)) => {
                say(format!("stopped {} ({status})", service.name));
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                say(format!("{} did not stop in time; killing it", service.name));
                let _ = service.child.kill();
                let _ = service.child.wait();
                return;
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
    let mut services = Vec::new();
    let trips_http = "127.0.0.1:8082";
    services.push(start(
        "trips",
        &bin("dispatch-trips"),
        &["--http", trips_http, "--search-timeout-s", "30"],
        &common,
        &logs,
    )?);
    let matcher_http = "127.0.0.1:8083";
    let area = format!("{},{},{}", CITY.0, CITY.1, CITY_RADIUS_KM);
    services.push(start(
        "matcher",
        &bin("dispatch-matcher"),
        &[
            "--area",
            &area,
            "--http",
            matcher_http,
            "--strategy",
            &args.strategy,
        ],
        &common,
        &logs,
    )?);
    let gateway_ws = "127.0.0.1:8080";
    let gateway_http = "127.0.0.1:8081";
    let dashboard_dir = dashboard.display().to_string();
    let trips_api = format!("http://{trips_http}");
    let map_center = format!("{},{}", CITY.0, CITY.1);
    services.push(start(
        "gateway",
        &bin("dispatch-gateway"),
        &[
            "serve",
            "--ws",
            gateway_ws,
            "--http",
            gateway_http,
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
    )?);
    let ready = wait_ready(
        &mut services,
        &[
            ("trips", trips_http),
            ("matcher", matcher_http),
            ("gateway", gateway_http),
        ],
        &stop_requested,
    );

    let mut simulator = None;
    let mut sim_status = None;
    if ready.is_ok() {
        let duration = args
            .duration
            .map_or("365d".to_owned(), |d| format!("{}s", d.as_secs()));
        let center = format!("{},{}", CITY.0, CITY.1);
        let mut sim_args = vec![
            "--gateway".to_owned(),
            format!("ws://{gateway_ws}/ws"),
            "--drivers".into(),
            args.drivers.to_string(),
            "--riders".into(),
            args.riders.to_string(),
            "--request-rate".into(),
            args.request_rate.to_string(),
            "--center".into(),
            center,
            "--radius-km".into(),
            SIM_RADIUS_KM.to_string(),
            "--duration".into(),
            duration,
            // Long enough for the search timeout and the longest trip across the city.
            "--drain".into(),
            "90s".into(),
            // Vehicles move 30 times faster than real time, so a trip across the city takes
            // well under a minute.
            "--speedup".into(),
            "30".into(),
            "--quiet".into(),
            "--seed".into(),
            args.seed.to_string(),
        ];
        if let Some(path) = &args.report_json {
            sim_args.extend(["--report-json".to_owned(), path.display().to_string()]);
        }
        if let Some(path) = &args.report_html {
            sim_args.extend(["--report-html".to_owned(), path.display().to_string()]);
        }
        let sim_args: Vec<&str> = sim_args.iter().map(String::as_str).collect();
        simulator = Some(start(
            "simulator",
            &bin("dispatch-sim"),
            &sim_args,
            &common,
            &logs,
        )?);
        say(format!(
            "simulating {} drivers and {} riders in a city of {CITY_RADIUS_KM} km around {:?}",
            args.drivers, args.riders, CITY
        ));
        let token = dispatcher_token(&bin("dispatch-gateway"))?;
        say("the system is up:");
        say(format!(
            "  dispatcher dashboard   http://{gateway_http}/#token={token}"
        ));
        say(format!("  client WebSocket       ws://{gateway_ws}/ws"));
        say(format!(
            "  gateway metrics        http://{gateway_http}/metrics"
        ));
        say(format!(
            "  matcher metrics        http://{matcher_http}/metrics"
        ));
        say(format!(
            "  trips API and metrics  http://{trips_http}/api/trips"
        ));
        say(format!(
            "  a dispatcher token     TOKEN_SECRET={DEMO_SECRET} {} token --role dispatcher --sub ops",
            bin("dispatch-gateway").display()
        ));
        say(format!("  NATS                   {}", infra.nats_url));
        say(format!("  PostgreSQL             {}", infra.database_url));
        say(format!("  logs                   {}", logs.display()));
        match args.duration {
            Some(d) => say(format!("running for {d:?}; Ctrl-C stops earlier")),
            None => say("Ctrl-C stops everything"),
        }
        loop {
            if stop_requested.load(Ordering::SeqCst) {
                break;
            }
            if let Some(sim) = simulator.as_mut()
                && let Ok(Some(status)) = sim.child.try_wait()
            {
                say(format!(
                    "the simulation finished ({status}); its summary is in {}",
                    sim.log.display()
                ));
                simulator = None;
                sim_status = Some(status);
                break;
            }
            if let Some(dead) = exited(&mut services) {
                say(format!(
                    "{} exited unexpectedly; see {}",
                    dead.name,
                    dead.log.display()
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    say("stopping");
    if let Some(sim) = simulator {
        // Asked to stop early: the simulator drains and still writes its report.
        stop(sim);
    }
    for service in services.into_iter().rev() {
        stop(service);
    }
    drop(infra);
    ready?;
    match sim_status {
        Some(status) if !status.success() => {
            bail!("the simulation reported lost or double-assigned requests, or failed ({status})")
        }
        _ => Ok(()),
    }
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
