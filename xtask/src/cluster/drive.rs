//! Driving the city through the cluster: the simulator on its host, the faults injected one
//! after another, every process watched, and the audit at the end.

use super::*;

pub(super) fn drive(
    cluster: &Cluster,
    services: &mut Vec<Service>,
    stop: &AtomicBool,
    bin: &dyn Fn(&str) -> PathBuf,
    args: &Args,
    urls: &Urls,
) -> Result<()> {
    let gateways = cluster.addrs(|r| matches!(r, Role::Gateway(_)));
    let gateway_urls: Vec<String> = gateways
        .iter()
        .map(|a| format!("ws://{a}:{GATEWAY_WS_PORT}/ws"))
        .collect();
    let mut sim_args = args.city.simulator_args(&gateway_urls.join(","));
    // A gateway cut off by the network closes nothing: the clients take one silent for 9 s
    // for dead and reconnect to the next, as phone apps do.
    sim_args.extend(["--liveness".to_owned(), "9s".to_owned()]);
    // Always written: a failed run explains its lost trips from it.
    let report = args
        .city
        .report_json
        .clone()
        .unwrap_or_else(|| cluster.dir.join("simulator.json"));
    sim_args.extend(["--report-json".to_owned(), report.display().to_string()]);
    let sim_host = cluster.host(&Role::Simulator);
    let env = [
        ("TOKEN_SECRET", demo::DEMO_SECRET),
        ("SUBJECT_PREFIX", demo::SUBJECT_PREFIX),
        ("RUST_LOG", "info"),
    ];
    let simulator = cluster.start(
        "simulator",
        &cluster.inside(sim_host, &bin("dispatch-sim"), &sim_args),
        &env,
    )?;

    print_topology(cluster, urls);
    let token = crate::credentials::dispatcher_token(&bin("dispatch-gateway"))?;
    for addr in &gateways {
        say(format!(
            "  dashboard              http://{addr}:{GATEWAY_HTTP_PORT}/#token={token}"
        ));
    }
    say(format!(
        "  logs                   {}",
        cluster.dir.join("logs").display()
    ));
    say("a process that exits is restarted with backoff; the cluster goes on");
    match args.city.duration {
        Some(d) => say(format!("running for {d:?}; Ctrl-C stops earlier")),
        None => say("Ctrl-C stops everything and removes the hosts"),
    }

    let mut supervisor = Supervisor::new(
        std::mem::take(services)
            .into_iter()
            .map(|s| (s, true))
            .collect(),
    );
    let mut simulator = Some(simulator);
    let mut sim_status = None;
    let began = Instant::now();
    let mut next_fault_at = args.city.duration.map(|d| began + d / 3);
    let mut pending: std::collections::VecDeque<Fault> = args.fault.iter().copied().collect();
    let mut injection: Option<Injection> = None;
    let mut done: Vec<Injection> = Vec::new();
    let mut outcome = Ok(());
    while !stop.load(Ordering::SeqCst) {
        if injection.is_none()
            && next_fault_at.is_some_and(|at| Instant::now() >= at)
            && let Some(fault) = pending.pop_front()
        {
            match cluster.inject(fault) {
                Ok(started) => injection = Some(started),
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
        if let Some(current) = injection.as_mut() {
            if let Err(error) = cluster.follow(current, urls, false) {
                outcome = Err(error);
                break;
            }
            if current.healed.is_some() && current.recovered.is_some() {
                done.extend(injection.take());
                next_fault_at = Some(Instant::now() + Duration::from_secs(5));
            }
        }
        if let Some(status) = simulator.as_mut().and_then(demo::finished) {
            simulator = None;
            sim_status = Some(status);
            break;
        }
        if let Some(why) = supervisor.watch() {
            say(&why);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let finished = simulator.is_none() && outcome.is_ok();
    if let Some(sim) = simulator {
        sim_status = process::stop(sim);
    }
    // The city may end before the host is due back: it comes back now, and the recovery is
    // awaited for up to a minute more.
    if let Some(injection) = injection.as_mut()
        && outcome.is_ok()
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        while injection.recovered.is_none() && Instant::now() < deadline {
            if let Err(error) = cluster.follow(injection, urls, true) {
                outcome = Err(error);
                break;
            }
            if let Some(why) = supervisor.watch() {
                say(&why);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    *services = supervisor.into_services();
    outcome?;
    done.extend(injection);
    if let Some(status) = sim_status
        && !status.success()
    {
        // Stopped by Ctrl-C, the simulator does not count the trips still under way as lost;
        // if it ended without a verdict (killed before its report), there is nothing to say.
        if !finished && !demo::reported_violation(status) {
            demo::say_cut_short(status);
            return Ok(());
        }
        // What PostgreSQL says of them, to tell a trip stuck in the system from an ending
        // that did not reach its rider.
        for line in faults::explain_lost(&cluster.pg_bin, &urls.database, &report) {
            say(line);
        }
        if let Ok(wrong) = audit(&cluster.pg_bin, &urls.database) {
            for problem in wrong {
                say(format!("audit: {problem}"));
            }
        }
        bail!("the simulation reported lost or double-assigned requests, or failed ({status})");
    }
    ensure!(
        pending.is_empty() || !finished,
        "the city ended before every fault was injected ({} left): give it a longer --duration",
        pending.len()
    );
    for injection in &done {
        let Some(took) = injection.recovered else {
            bail!(
                "the system had not recovered from {:?} on {} when the city ended",
                injection.fault,
                injection.host.name
            );
        };
        // A kill is survived by failing over: writes must work again before the dead host is
        // back.
        ensure!(
            !injection.fault.kills() || injection.recovered_while_away,
            "writes came back only once {} was back, {:.1} s after the kill: the standby did \
             not take over",
            injection.host.name,
            took.as_secs_f64()
        );
        say(format!(
            "fault {:?} on {}: recovered in {:.1} s",
            injection.fault,
            injection.host.name,
            took.as_secs_f64()
        ));
    }
    if finished {
        if let Some(line) = faults::latencies(&report) {
            say(line);
        }
        let wrong = audit(&cluster.pg_bin, &urls.database)?;
        ensure!(wrong.is_empty(), "the audit found: {}", wrong.join("; "));
    }
    Ok(())
}
