//! `cargo xtask demo`: infrastructure, every service and the simulated city, until Ctrl-C.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::infra::{self, Infra, say};
use crate::process::{
    Service, Supervisor, build_services, http_agent, start, start_command, stop, wait_ready,
};
use topology::{Deployment, Form, Serves};

/// The simulated city's flags, the same for `demo` and `cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct City {
    /// Stop after this long (for example `60s`, `5m`); without it, run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Build and run the debug profile instead of release (faster to build, slower to run).
    #[arg(long)]
    pub debug: bool,
    /// Simulated drivers and riders.
    #[arg(long, default_value_t = 200)]
    pub drivers: usize,
    #[arg(long, default_value_t = 200)]
    pub riders: usize,
    /// Ride requests per second across the city.
    #[arg(long, default_value_t = 2.0)]
    pub request_rate: f64,
    /// Seed of the simulated city.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the simulator's report as JSON here (the run fails if any request was lost or
    /// double-assigned).
    #[arg(long)]
    pub report_json: Option<PathBuf>,
}

impl City {
    /// The simulator's arguments for this city against `gateways` (comma-separated WebSocket
    /// URLs): for `--duration`, or a year.
    pub(crate) fn simulator_args(&self, gateways: &str) -> Vec<String> {
        let duration = self
            .duration
            .map_or("365d".to_owned(), |d| format!("{}s", d.as_secs()));
        city_args(
            gateways,
            (self.drivers, self.riders, self.request_rate),
            &duration,
            self.seed,
        )
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    city: City,
    /// Write the simulator's report with plots as HTML here.
    #[arg(long)]
    report_html: Option<PathBuf>,
    /// Write what the run cost and where its time went as JSON here: each program's CPU while
    /// the city was simulated (share of one core: services, simulator, NATS, PostgreSQL), and
    /// each hop's latency from the services' metrics at the end.
    #[arg(long)]
    costs_json: Option<PathBuf>,
    /// The matcher's strategy: `greedy` or `batched`. Two runs with the same `--seed` and
    /// different strategies compare them (`cargo xtask bench matching` does it for you).
    #[arg(long, default_value = "greedy")]
    strategy: String,
    /// Gateways to run (1 to 8); the simulator spreads its clients over them as a load
    /// balancer would. The first is on 8080/8081, the next on 8090/8091, and so on.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    gateways: u16,
    /// Matcher replicas serving the city (1 to 8). With more than one gateway or matcher, a
    /// replica that dies is restarted with backoff and the demo goes on.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    matchers: u16,
}

pub(crate) const DEMO_SECRET: &str = "demo-secret-not-for-production";
pub(crate) const SUBJECT_PREFIX: &str = "demo";
/// The simulated city: centre (latitude, longitude) and radius.
pub(crate) const CITY: (f64, f64) = (52.52, 13.405);
pub(crate) const CITY_RADIUS_KM: f64 = 15.0;
/// Where the simulated demand and drivers are, inside the city.
const SIM_RADIUS_KM: f64 = 8.0;

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

/// What the demo city's services share, over the NATS servers at `nats_url` and the database
/// at `database_url`.
pub(crate) fn city_shared(nats_url: &str, database_url: &str) -> topology::Shared {
    topology::Shared {
        nats_url: nats_url.to_owned(),
        database_url: Some(database_url.to_owned()),
        token_secret: Some(DEMO_SECRET.to_owned()),
        subject_prefix: Some(SUBJECT_PREFIX.to_owned()),
        log: Some("info".to_owned()),
    }
}

/// A trips replica of the demo city on `http`: requests search for 30 s.
pub(crate) fn city_trips(http: std::net::SocketAddr) -> topology::Trips {
    topology::Trips {
        search_timeout_s: Some(30),
        ..topology::Trips::at(http)
    }
}

/// A matcher of the demo city serving `serves`, on `http`.
pub(crate) fn city_matcher(serves: Serves, http: std::net::SocketAddr) -> topology::Matcher {
    topology::Matcher {
        serves,
        http,
        strategy: Some("greedy".to_owned()),
    }
}

/// A gateway of the demo city: `id`, on (`ws`, `http`), serving the dashboard built in
/// `dashboard` with its map on the city, and proxying `trips_api`.
pub(crate) fn city_gateway(
    id: &str,
    (ws, http): (std::net::SocketAddr, std::net::SocketAddr),
    dashboard: &std::path::Path,
    trips_api: String,
) -> topology::Gateway {
    topology::Gateway {
        id: Some(id.to_owned()),
        dashboard_dir: Some(dashboard.display().to_string()),
        trips_api: Some(trips_api),
        map: Some((CITY.0, CITY.1, 12.5)),
        ..topology::Gateway::at(ws, http)
    }
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::workspace_root();
    let stop_requested = crate::process::stop_on_ctrl_c()?;

    let bin_dir = build_services(&root, !args.city.debug)?;
    let bin = |name: &str| bin_dir.join(name);
    let dashboard = crate::web::build_dashboard(&root)?;

    let infra = Infra::up(&root, infra::Profile::Demo)?;
    let logs = root.join("target/dev/logs");
    std::fs::create_dir_all(&logs)?;
    let trips_http = "127.0.0.1:8082";
    let deployment = Deployment {
        shared: city_shared(&infra.nats_url, &infra.database_url),
        // Scheduled jobs are dispatched 30 s before their pickup time, so the simulated
        // integrator's (a few minutes ahead) wait a while first.
        trips: vec![topology::Trips {
            schedule_lead_s: Some(30),
            ..city_trips(trips_http.parse()?)
        }],
        matchers: (0..args.matchers)
            .map(|i| {
                Ok(topology::Matcher {
                    strategy: Some(args.strategy.clone()),
                    ..city_matcher(
                        Serves::Area {
                            lat: CITY.0,
                            lng: CITY.1,
                            radius_km: CITY_RADIUS_KM,
                        },
                        format!("127.0.0.1:{}", 8083 + 10 * i).parse()?,
                    )
                })
            })
            .collect::<Result<_>>()?,
        gateways: (0..args.gateways)
            .map(|i| {
                let id = if args.gateways == 1 {
                    "demo-gateway".to_owned()
                } else {
                    format!("demo-gateway-{}", i + 1)
                };
                Ok(city_gateway(
                    &id,
                    (
                        format!("127.0.0.1:{}", 8080 + 10 * i).parse()?,
                        format!("127.0.0.1:{}", 8081 + 10 * i).parse()?,
                    ),
                    &dashboard,
                    format!("http://{trips_http}"),
                ))
            })
            .collect::<Result<_>>()?,
    };
    let replicated = args.gateways > 1 || args.matchers > 1;
    let mut plain: Vec<Service> = Vec::new();
    let mut restartable = Vec::new();
    let mut endpoints = Vec::new();
    for replica in deployment.replicas(Form::Flags) {
        plain.push(start_command(
            &replica.name,
            &bin_dir,
            &replica.command,
            &logs,
        )?);
        restartable.push(match replica.service {
            topology::Service::Trips => false,
            topology::Service::Matcher => args.matchers > 1,
            topology::Service::Gateway => args.gateways > 1,
        });
        endpoints.push((replica.service.as_str(), replica.http.to_string()));
    }
    let endpoints: Vec<(&str, &str)> = endpoints.iter().map(|(n, a)| (*n, a.as_str())).collect();
    let ready = wait_ready(&mut plain, &endpoints, &stop_requested);
    let mut supervisor = Supervisor::new(plain.into_iter().zip(restartable).collect());
    let common = deployment.shared.env();
    let gateway_addrs: Vec<(String, String)> = deployment
        .gateways
        .iter()
        .map(|g| (g.ws.to_string(), g.http.to_string()))
        .collect();
    let matcher_https: Vec<String> = deployment
        .matchers
        .iter()
        .map(|m| m.http.to_string())
        .collect();

    let mut simulator = None;
    let mut sim_status = None;
    let mut fatal = None;
    if ready.is_ok() {
        let gateway_urls: Vec<String> = gateway_addrs
            .iter()
            .map(|(ws, _)| format!("ws://{ws}/ws"))
            .collect();
        let mut sim_args = args.city.simulator_args(&gateway_urls.join(","));
        if let Some(path) = &args.city.report_json {
            sim_args.extend(["--report-json".to_owned(), path.display().to_string()]);
        }
        // An integrator's server beside the riders: jobs through the API, half scheduled.
        let api_key =
            crate::credentials::integrator_key(&bin("dispatch-trips"), &infra.database_url)?;
        sim_args.extend([
            "--jobs-api".to_owned(),
            format!("http://{trips_http}"),
            "--jobs-per-sec".into(),
            (args.city.request_rate / 5.0).to_string(),
        ]);
        let mut sim_env: Vec<(&str, &str)> = common.iter().map(|(k, v)| (*k, v.as_str())).collect();
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
            args.city.drivers, args.city.riders, CITY
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
        match args.city.duration {
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
        Some(status) if status.success() => Ok(()),
        Some(status) if cut_short && !reported_violation(status) => {
            say_cut_short(status);
            Ok(())
        }
        Some(status) => {
            bail!("the simulation reported lost or double-assigned requests, or failed ({status})")
        }
        None => Ok(()),
    }
}

/// Whether the simulator ended saying the system broke a promise (exit 2: lost or
/// double-assigned requests). Trips cut off by a stop are not lost, so a stopped simulator says
/// this only of real violations.
pub(crate) fn reported_violation(status: ExitStatus) -> bool {
    status.code() == Some(2)
}

/// Says that a simulator stopped by Ctrl-C ended without its report (killed before it could
/// write it); its trips under way were cut off by the stop, not lost.
pub(crate) fn say_cut_short(status: ExitStatus) {
    say(format!(
        "stopped before the city ended; the simulator ended ({status}) before its report, so \
         nothing is said of the trips still under way"
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
