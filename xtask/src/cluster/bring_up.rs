//! Bringing the cluster up: NATS, PostgreSQL under pg_auto_failover, then every service, each
//! on its host, in order.

use super::*;

pub(super) fn bring_up(
    cluster: &Cluster,
    services: &mut Vec<Service>,
    stop: &AtomicBool,
    bin: &dyn Fn(&str) -> PathBuf,
    dashboard: &Path,
    latency: Option<Duration>,
) -> Result<Urls> {
    // NATS: three nodes, each routing to the other two.
    let nats_bin = infra::nats_server_bin().context("nats-server is missing")?;
    let nats_addrs = cluster.addrs(|r| matches!(r, Role::Nats(_)));
    for (i, addr) in nats_addrs.iter().enumerate() {
        let routes: Vec<String> = nats_addrs
            .iter()
            .filter(|other| *other != addr)
            .map(|other| format!("nats://{other}:{NATS_ROUTE_PORT}"))
            .collect();
        // Pings every 5 s, so a client cut off by a partition is dropped (and its
        // subscriptions with it) within 15 s rather than minutes. Clients are given every
        // node and learn no other addresses (`no_advertise`), so the gateways stay behind
        // their latency proxies when there are some.
        let config = cluster.dir.join(format!("nats-{}.conf", i + 1));
        std::fs::write(
            &config,
            format!(
                "server_name: nats-{n}\nlisten: \"{addr}:{NATS_PORT}\"\nhttp: \"{addr}:{NATS_MONITOR_PORT}\"\n\
                 ping_interval: \"5s\"\nping_max: 3\n\
                 cluster {{\n  name: dispatch\n  listen: \"{addr}:{NATS_ROUTE_PORT}\"\n  routes: [{routes}]\n  no_advertise: true\n}}\n",
                n = i + 1,
                routes = routes
                    .iter()
                    .map(|r| format!("\"{r}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        )?;
        let args = vec!["-c".to_owned(), config.display().to_string()];
        let host = cluster.host(&Role::Nats(i));
        services.push(cluster.start(
            &format!("nats-{}", i + 1),
            &cluster.inside(host, &nats_bin, &args),
            &[],
        )?);
    }
    for addr in &nats_addrs {
        wait_for(
            &format!("NATS at {addr} routes to the other two"),
            Duration::from_secs(30),
            stop,
            services,
            || routed(addr),
        )?;
    }
    let nats = nats_addrs
        .iter()
        .map(|a| format!("nats://{a}:{NATS_PORT}"))
        .collect::<Vec<_>>()
        .join(",");
    // The gateways reach NATS through proxies that add the latency, when asked for.
    let gateways_nats = match latency {
        None => nats.clone(),
        Some(delay) => {
            let mut proxied = Vec::new();
            for (i, addr) in nats_addrs.iter().enumerate() {
                let listen = SocketAddr::from((cluster.net.addr(), LATENCY_PORT + i as u16));
                latency::start(listen, SocketAddr::from((*addr, NATS_PORT)), delay)?;
                proxied.push(format!("nats://{listen}"));
            }
            say(format!(
                "gateways reach NATS through {} ({delay:?} each way)",
                proxied.join(", ")
            ));
            proxied.join(",")
        }
    };

    // PostgreSQL under pg_auto_failover: the monitor, then the first node (the primary), then
    // the second (its synchronous standby, cloned from the primary).
    let pg_ctl = cluster.pg_bin.join("pg_ctl").display().to_string();
    let monitor_host = cluster.host(&Role::PgMonitor).clone();
    let monitor_node = cluster.dir.join("pg-monitor");
    make_postgres_dir(&monitor_node)?;
    let monitor_pgdata = monitor_node.join("pgdata").display().to_string();
    let monitor_addr = monitor_host.addr.to_string();
    let monitor_port = PG_MONITOR_PORT.to_string();
    cluster.run_to_end(
        "pg_autoctl create monitor",
        &cluster.pg_autoctl(
            &monitor_host,
            &monitor_node,
            &[
                "create",
                "monitor",
                "--pgdata",
                &monitor_pgdata,
                "--pgport",
                &monitor_port,
                "--hostname",
                &monitor_addr,
                "--auth",
                "trust",
                "--no-ssl",
                "--pgctl",
                &pg_ctl,
            ],
        ),
        "pg-monitor.log",
    )?;
    services.push(cluster.start(
        "pg-monitor",
        &cluster.pg_autoctl(
            &monitor_host,
            &monitor_node,
            &["run", "--pgdata", &monitor_pgdata],
        ),
        &[],
    )?);
    let monitor_tcp = format!("{monitor_addr}:{PG_MONITOR_PORT}");
    wait_for(
        "the pg_auto_failover monitor answers",
        Duration::from_secs(60),
        stop,
        services,
        || infra::answers(&monitor_tcp),
    )?;
    let monitor_url = format!(
        "postgres://autoctl_node@{monitor_addr}:{PG_MONITOR_PORT}/pg_auto_failover?sslmode=disable"
    );
    let mut pg_hosts = Vec::new();
    for i in 0..POSTGRES_NODES {
        let host = cluster.host(&Role::Postgres(i)).clone();
        let name = format!("pg-{}", i + 1);
        let node = cluster.dir.join(&name);
        make_postgres_dir(&node)?;
        let pgdata = node.join("pgdata").display().to_string();
        let port = (PG_PORT + i as u16).to_string();
        let addr = host.addr.to_string();
        // `create ... --run` creates the node once, and on a restart finds it made and runs it;
        // `--pg-hba-lan` lets the trips hosts in (by default only the node itself may connect).
        services.push(cluster.start(
            &name,
            &cluster.pg_autoctl(
                &host,
                &node,
                &[
                    "create",
                    "postgres",
                    "--pgdata",
                    &pgdata,
                    "--pgport",
                    &port,
                    "--hostname",
                    &addr,
                    "--name",
                    &name,
                    "--auth",
                    "trust",
                    "--no-ssl",
                    "--pgctl",
                    &pg_ctl,
                    "--pg-hba-lan",
                    "--monitor",
                    &monitor_url,
                    "--run",
                ],
            ),
            &[],
        )?);
        let wanted: &[&str] = if i == 0 {
            &["single"]
        } else {
            &["primary", "secondary"]
        };
        wait_for(
            &format!("PostgreSQL {name} is {}", wanted.join(" or ")),
            Duration::from_secs(120),
            stop,
            services,
            || {
                cluster
                    .pg_states()
                    .iter()
                    .any(|(node, reported, assigned)| {
                        node == &name && reported == assigned && wanted.contains(&reported.as_str())
                    })
            },
        )?;
        pg_hosts.push(format!("{addr}:{port}"));
    }
    let database = format!(
        "postgres://postgres@{}/postgres?target_session_attrs=read-write",
        pg_hosts.join(",")
    );

    let at = |host: &Host, port: u16| SocketAddr::from((host.addr, port));
    let trips_apis = cluster.addrs(|r| matches!(r, Role::Trips(_)));
    let deployment = topology::Deployment {
        shared: demo::city_shared(&nats, &database),
        trips: (0..TRIPS_REPLICAS)
            .map(|i| demo::city_trips(at(cluster.host(&Role::Trips(i)), TRIPS_HTTP_PORT)))
            .collect(),
        matchers: (0..MATCHERS)
            .map(|i| {
                let (host, regions) = cluster
                    .hosts
                    .iter()
                    .find_map(|(p, h)| match &p.role {
                        Role::Matcher(m, regions) if *m == i => Some((h, regions)),
                        _ => None,
                    })
                    .expect("every matcher is placed");
                demo::city_matcher(
                    topology::Serves::Regions(regions.clone()),
                    at(host, MATCHER_HTTP_PORT),
                )
            })
            .collect(),
        gateways: (0..GATEWAYS)
            .map(|i| {
                let host = cluster.host(&Role::Gateway(i));
                topology::Gateway {
                    // Through the latency, when asked for.
                    nats_url: Some(gateways_nats.clone()),
                    ..demo::city_gateway(
                        &format!("cluster-gateway-{}", i + 1),
                        (at(host, GATEWAY_WS_PORT), at(host, GATEWAY_HTTP_PORT)),
                        dashboard,
                        format!(
                            "http://{}:{TRIPS_HTTP_PORT}",
                            trips_apis[i % trips_apis.len()]
                        ),
                    )
                }
            })
            .collect(),
    };
    // Each replica on the host its HTTP address is on.
    let mut endpoints = Vec::new();
    for replica in deployment.replicas(topology::Form::Flags) {
        let host = cluster
            .hosts
            .iter()
            .map(|(_, h)| h)
            .find(|h| std::net::IpAddr::V4(h.addr) == replica.http.ip())
            .expect("every replica is on a host");
        let command = &replica.command;
        let env: Vec<(&str, &str)> = command.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let argv = cluster.inside(host, &bin(command.program), &command.args);
        services.push(cluster.start(&replica.name, &argv, &env)?);
        endpoints.push((replica.name, replica.http.to_string()));
    }
    let endpoints: Vec<(&str, &str)> = endpoints
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str()))
        .collect();
    process::wait_ready(services, &endpoints, stop)?;
    Ok(Urls { nats, database })
}
