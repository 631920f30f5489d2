//! What a user deploys (`deploy/`), checked against the code, since no container runs here:
//! every variable the files set is one the binary accepts, every option a binary requires is
//! set, listen ports, published ports, probes and scrape targets agree, probe paths are served,
//! and every binary the files run is one the image holds and the workspace builds.
//!
//! What a binary accepts and requires is read from its own `--help`: the binaries come from
//! `DISPATCH_BIN_DIR` (`cargo xtask test` builds them there) or beside this test's executable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin_dir() -> PathBuf {
    tests::process::built_binaries()
}

/// A YAML file as JSON, with merge keys (`<<: *anchor`) applied.
fn yaml(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let mut value = serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{path} is not YAML: {e}"));
            value.apply_merge().expect("merge keys apply");
            serde_json::to_value(value).expect("YAML maps to JSON")
        })
        .collect()
}

/// What a binary's command line accepts, from its help.
#[derive(Debug)]
struct Cli {
    /// Environment variables it reads.
    env: BTreeSet<String>,
    /// Long option to its environment variable.
    env_of: BTreeMap<String, String>,
    /// What must be given: each entry is a set of options, one of which is enough.
    required: Vec<Vec<String>>,
}

impl Cli {
    fn of(program: &str, subcommand: &[&str]) -> Self {
        let binary = bin_dir().join(program);
        assert!(
            binary.is_file(),
            "{} is missing: build the binaries (cargo build --bins) or run cargo xtask test",
            binary.display()
        );
        let output = std::process::Command::new(&binary)
            .args(subcommand)
            .arg("--help")
            .output()
            .expect("running the binary's --help");
        assert!(output.status.success(), "{program} --help failed");
        parse_help(&String::from_utf8_lossy(&output.stdout))
    }

    /// The required options not satisfied by `env` (variables set) or `args` (flags given).
    fn missing(&self, env: &BTreeSet<String>, args: &[String]) -> Vec<String> {
        self.required
            .iter()
            .filter(|choices| {
                !choices.iter().any(|flag| {
                    args.iter()
                        .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
                        || self.env_of.get(flag).is_some_and(|e| env.contains(e))
                })
            })
            .map(|choices| choices.join(" or "))
            .collect()
    }
}

/// Reads clap's help: the usage line's required options (alone, or `<a|b|c>` groups) and each
/// option's `[env: NAME]`.
fn parse_help(help: &str) -> Cli {
    let usage = help
        .lines()
        .find_map(|l| l.strip_prefix("Usage: "))
        .expect("a usage line");
    let mut required = Vec::new();
    let mut depth = 0;
    let mut group = String::new();
    let mut words = String::new();
    for c in usage.chars() {
        match c {
            '<' => {
                depth += 1;
                if depth == 1 {
                    group.clear();
                }
            }
            '>' => depth -= 1,
            _ => {}
        }
        if depth >= 1 {
            group.push(c);
        } else if c == '>' && group.starts_with("<--") {
            required.push(
                group[1..]
                    .split('|')
                    .filter_map(|alternative| alternative.split_whitespace().next())
                    .map(str::to_owned)
                    .collect(),
            );
            group.clear();
        } else if c != '>' {
            words.push(c);
        }
    }
    required.extend(
        words
            .split_whitespace()
            .filter(|w| w.starts_with("--"))
            .map(|w| vec![w.to_owned()]),
    );
    let mut env = BTreeSet::new();
    let mut env_of = BTreeMap::new();
    let mut flag = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') && line.len() - trimmed.len() <= 6 {
            flag = trimmed
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .map(str::to_owned);
        }
        if let Some(at) = line.find("[env: ") {
            let name: String = line[at + 6..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if let Some(flag) = &flag {
                env_of.insert(flag.clone(), name.clone());
            }
            env.insert(name);
        }
    }
    Cli {
        env,
        env_of,
        required,
    }
}

/// The port of a listen address such as `0.0.0.0:8081`.
fn port_of(address: &str) -> Option<u64> {
    address.rsplit_once(':')?.1.parse().ok()
}

/// The binaries the image copies into /usr/local/bin.
fn image_binaries() -> BTreeSet<String> {
    std::fs::read_to_string(root().join("deploy/Dockerfile"))
        .expect("deploy/Dockerfile")
        .lines()
        .filter(|l| l.starts_with("COPY --from=services") && l.ends_with("/usr/local/bin/"))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(2)?
                .rsplit('/')
                .next()
                .map(str::to_owned)
        })
        .collect()
}

/// One container running one of our binaries, from either file.
#[derive(Debug)]
struct Container {
    /// Where it is defined, for messages.
    name: String,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    /// Ports the container exposes (compose: the container side of `ports`).
    ports: BTreeSet<u64>,
    /// (kind, path, port) of each HTTP probe.
    probes: Vec<(String, String, u64)>,
}

/// Checks a container against its binary; returns the ports its listen addresses use.
fn check(container: &Container, images: &BTreeSet<String>) -> BTreeSet<u64> {
    let name = &container.name;
    let program = container
        .command
        .first()
        .unwrap_or_else(|| panic!("{name} names no command"));
    assert!(
        images.contains(program),
        "{name} runs {program}, which the image does not hold ({images:?})"
    );
    let subcommand: Vec<&str> = container.command[1..]
        .iter()
        .take_while(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let cli = Cli::of(program, &subcommand);
    for variable in container.env.keys() {
        assert!(
            cli.env.contains(variable),
            "{name} sets {variable}, which {program} does not read (it reads {:?})",
            cli.env
        );
    }
    let set: BTreeSet<String> = container.env.keys().cloned().collect();
    let missing = cli.missing(&set, &container.command[1..]);
    assert!(
        missing.is_empty(),
        "{name} leaves out what {program} requires: {missing:?}"
    );
    let listens: BTreeSet<u64> = container
        .env
        .iter()
        .filter(|(k, _)| k.ends_with("_WS") || k.ends_with("_HTTP"))
        .filter_map(|(_, v)| port_of(v))
        .collect();
    for port in &container.ports {
        assert!(
            listens.contains(port),
            "{name} exposes port {port}, on which {program} does not listen ({listens:?})"
        );
    }
    let http: Option<u64> = container
        .env
        .iter()
        .find(|(k, _)| k.ends_with("_HTTP"))
        .and_then(|(_, v)| port_of(v));
    for (kind, path, port) in &container.probes {
        assert_eq!(
            Some(*port),
            http,
            "{name}'s {kind} probe asks port {port}, not the HTTP address"
        );
        let wanted = if kind == "readinessProbe" {
            "/readyz"
        } else {
            "/healthz"
        };
        assert_eq!(path, wanted, "{name}'s {kind} asks {path}");
    }
    listens
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_compose_file_runs_binaries_as_the_code_accepts_them() {
    let images = image_binaries();
    let compose = yaml("deploy/compose.yaml").remove(0);
    let services = compose["services"].as_object().expect("services");
    let mut http_ports = BTreeMap::new();
    let mut ours = 0;
    for (service, spec) in services {
        if spec["image"] != "dispatch:latest" {
            continue;
        }
        ours += 1;
        let env: BTreeMap<String, String> = spec["environment"]
            .as_object()
            .unwrap_or_else(|| panic!("{service} sets no environment"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let ports = strings(&spec["ports"])
            .iter()
            .filter_map(|p| p.rsplit(':').next()?.parse().ok())
            .collect();
        let container = Container {
            name: format!("compose service {service}"),
            command: strings(&spec["command"]),
            env,
            ports,
            probes: Vec::new(),
        };
        check(&container, &images);
        if let Some(port) = container
            .env
            .iter()
            .find(|(k, _)| k.ends_with("_HTTP"))
            .and_then(|(_, v)| port_of(v))
        {
            http_ports.insert(service.clone(), port);
        }
        for url in container
            .env
            .get("NATS_URL")
            .into_iter()
            .flat_map(|u| u.split(','))
        {
            let host = url.trim_start_matches("nats://").split(':').next().unwrap();
            assert!(
                services.contains_key(host),
                "{service}'s NATS_URL names {host}, which is no service"
            );
        }
        if let Some(api) = container.env.get("GATEWAY_TRIPS_API") {
            let address = api.trim_start_matches("http://");
            let (host, port) = address.split_once(':').expect("host:port");
            assert_eq!(
                http_ports.get(host).copied().or_else(|| {
                    services.get(host)?["environment"]["TRIPS_HTTP"]
                        .as_str()
                        .and_then(port_of)
                }),
                port.parse().ok(),
                "{service}'s GATEWAY_TRIPS_API is not the trips service's HTTP address"
            );
        }
    }
    assert!(ours >= 4, "trips, matcher and two gateways run the image");

    // Prometheus scrapes every service on its HTTP port, under the jobs the dashboards use.
    let prometheus = yaml("deploy/prometheus.yaml").remove(0);
    let dashboards_jobs: BTreeSet<String> =
        yaml("dashboards/prometheus/prometheus.yml")[0]["scrape_configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["job_name"].as_str().unwrap().to_owned())
            .collect();
    let mut jobs = BTreeSet::new();
    let mut scraped = BTreeSet::new();
    for job in prometheus["scrape_configs"].as_array().unwrap() {
        jobs.insert(job["job_name"].as_str().unwrap().to_owned());
        for target in job["static_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| strings(&c["targets"]))
        {
            let (host, port) = target.split_once(':').unwrap();
            assert_eq!(
                http_ports.get(host).copied(),
                port.parse().ok(),
                "Prometheus scrapes {target}, not {host}'s HTTP address"
            );
            scraped.insert(host.to_owned());
        }
        for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
            for host in strings(&sd["names"]) {
                assert_eq!(
                    http_ports.get(&host).copied(),
                    sd["port"].as_u64(),
                    "Prometheus scrapes {host} on a port it does not serve"
                );
                scraped.insert(host);
            }
        }
    }
    assert_eq!(jobs, dashboards_jobs, "the jobs the dashboards filter on");
    let unscraped: Vec<_> = http_ports
        .keys()
        .filter(|s| !scraped.contains(*s))
        .collect();
    assert!(unscraped.is_empty(), "not scraped: {unscraped:?}");
}

/// The deployment `deploy/compose.yaml` describes (each compose service once: `replicas`
/// copies it), as `topology` describes deployments.
fn compose_deployment() -> topology::Deployment {
    let nats = "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222";
    let secret = "${TOKEN_SECRET:?set TOKEN_SECRET to at least 16 random bytes}";
    let any = |port: u16| std::net::SocketAddr::from(([0, 0, 0, 0], port));
    let gateway = topology::Gateway {
        dashboard_dir: Some("/srv/dashboard".into()),
        trips_api: Some("http://trips:8082".into()),
        ..topology::Gateway::at(any(8080), any(8081))
    };
    topology::Deployment {
        shared: topology::Shared {
            nats_url: nats.into(),
            database_url: Some("postgres://postgres:dispatch@postgres:5432/postgres".into()),
            token_secret: Some(secret.into()),
            subject_prefix: None,
            log: None,
        },
        trips: vec![topology::Trips::at(any(8082))],
        matchers: vec![topology::Matcher {
            serves: topology::Serves::Area {
                lat: 52.52,
                lng: 13.405,
                radius_km: 15.0,
            },
            http: any(8083),
            strategy: None,
        }],
        gateways: vec![
            gateway.clone(),
            topology::Gateway {
                public_ws_url: Some("ws://localhost:8090/ws".into()),
                ..gateway
            },
        ],
    }
}

#[test]
fn the_compose_file_sets_what_the_topology_renders() {
    let compose = yaml("deploy/compose.yaml").remove(0);
    let services = &compose["services"];
    let replicas = compose_deployment().replicas(topology::Form::Env);
    assert_eq!(replicas.len(), 4);
    for replica in replicas {
        let spec = &services[&replica.name];
        assert!(spec.is_object(), "compose has no service {}", replica.name);
        let command: Vec<String> = std::iter::once(replica.command.program.to_owned())
            .chain(replica.command.args.iter().cloned())
            .collect();
        assert_eq!(
            strings(&spec["command"]),
            command,
            "{}'s command",
            replica.name
        );
        let rendered: BTreeMap<String, String> = replica
            .command
            .env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let set: BTreeMap<String, String> = spec["environment"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        assert_eq!(set, rendered, "{}'s environment", replica.name);
    }
}

#[test]
fn the_kubernetes_manifests_run_binaries_as_the_code_accepts_them() {
    let images = image_binaries();
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(root().join("deploy/k8s")).unwrap() {
        let path = entry.unwrap().path();
        let relative = path.strip_prefix(root()).unwrap().display().to_string();
        documents.extend(yaml(&relative));
    }
    let of_kind =
        |kind: &str| -> Vec<&Value> { documents.iter().filter(|d| d["kind"] == kind).collect() };
    let budgets: BTreeSet<String> = of_kind("PodDisruptionBudget")
        .iter()
        .filter_map(|p| {
            p["spec"]["selector"]["matchLabels"]["app"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let mut apps = BTreeMap::new();
    for deployment in of_kind("Deployment") {
        let app = deployment["spec"]["template"]["metadata"]["labels"]["app"]
            .as_str()
            .expect("an app label")
            .to_owned();
        let pod = &deployment["spec"]["template"]["spec"];
        for spec in pod["containers"].as_array().unwrap() {
            assert_eq!(spec["image"], "dispatch:latest", "{app} runs the image");
            let env = spec["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().to_owned(),
                        e["value"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            let probes = ["readinessProbe", "livenessProbe"]
                .iter()
                .map(|kind| {
                    let probe = &spec[*kind]["httpGet"];
                    assert!(probe.is_object(), "{app} has an HTTP {kind}");
                    (
                        (*kind).to_owned(),
                        probe["path"].as_str().unwrap().to_owned(),
                        probe["port"].as_u64().unwrap(),
                    )
                })
                .collect();
            let container = Container {
                name: format!("Deployment {app}"),
                command: strings(&spec["command"])
                    .into_iter()
                    .chain(strings(&spec["args"]))
                    .collect(),
                env,
                ports: spec["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["containerPort"].as_u64().unwrap())
                    .collect(),
                probes,
            };
            let listens = check(&container, &images);
            assert!(
                spec["resources"]["requests"]["cpu"].is_string()
                    && spec["resources"]["requests"]["memory"].is_string(),
                "{app} requests CPU and memory"
            );
            apps.insert(app.clone(), listens);
        }
    }
    for app in ["trips", "matcher", "gateway"] {
        assert!(apps.contains_key(app), "a Deployment runs {app}");
    }
    for app in ["matcher", "gateway"] {
        assert!(budgets.contains(app), "{app} has a PodDisruptionBudget");
    }
    // Each Service of ours sends to ports its pods listen on.
    for service in of_kind("Service") {
        let Some(app) = service["spec"]["selector"]["app"].as_str() else {
            continue;
        };
        let Some(listens) = apps.get(app) else {
            continue;
        };
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = port["targetPort"]
                .as_u64()
                .or(port["port"].as_u64())
                .unwrap();
            assert!(
                listens.contains(&target),
                "Service {app} sends to port {target}, on which {app} does not listen"
            );
        }
    }
}

#[test]
fn the_image_holds_every_service_binary_the_workspace_builds() {
    let images = image_binaries();
    for program in [
        "dispatch-trips",
        "dispatch-matcher",
        "dispatch-gateway",
        "dispatch-sim",
    ] {
        assert!(images.contains(program), "the image holds {program}");
        assert!(
            bin_dir().join(program).is_file(),
            "the workspace builds {program}"
        );
    }
}

/// The license and the third-party notices (the OpenStreetMap data's ODbL among them) ship in
/// the image as they do in the repository.
#[test]
fn the_image_and_the_repository_carry_the_license_and_the_notices() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let copied = dockerfile
        .lines()
        .find(|l| l.starts_with("COPY ") && l.ends_with("/usr/share/doc/dispatch/"))
        .expect("the image copies its license and notices");
    for file in ["LICENSE", "NOTICE"] {
        assert!(copied.split_whitespace().any(|w| w == file), "{copied}");
        assert!(root().join(file).is_file(), "{file} in the repository");
    }
    let license = std::fs::read_to_string(root().join("LICENSE")).unwrap();
    assert!(license.contains("Apache License") && license.contains("Version 2.0"));
    let workspace = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(workspace.contains("license = \"Apache-2.0\""));
    let notice = std::fs::read_to_string(root().join("NOTICE")).unwrap();
    // Every data file in the repository is named in the notices.
    for data in std::fs::read_dir(root().join("services/roads/data")).unwrap() {
        let name = data.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".osm.pbf") {
            assert!(notice.contains(&name), "NOTICE names {name}");
        }
    }
    assert!(notice.contains("Open Database License"));
}

#[tokio::test]
async fn the_probe_paths_are_served() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let readiness = kit::http::Readiness::default();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(kit::http::serve(
        listener,
        kit::http::operator_routes(readiness),
        stop.clone(),
    ));
    for path in ["/healthz", "/readyz"] {
        let status = reqwest::get(format!("http://{address}{path}"))
            .await
            .unwrap()
            .status();
        assert!(
            status.is_success() || status == reqwest::StatusCode::SERVICE_UNAVAILABLE,
            "{path} answers {status}"
        );
    }
    stop.cancel();
}

#[test]
fn usage_lines_are_read_as_clap_writes_them() {
    let cli = parse_help(
        "Usage: dispatch-matcher [OPTIONS] --token-secret <TOKEN_SECRET> <--regions <REGIONS>|--area <AREA>>\n\
         \n\
         Options:\n      --token-secret <TOKEN_SECRET>\n          Secret [env: TOKEN_SECRET]\n\
         \x20     --regions <REGIONS>\n          Regions [env: MATCHER_REGIONS=]\n\
         \x20     --area <AREA>\n          Or an area [env: MATCHER_AREA=]\n",
    );
    assert_eq!(
        cli.required,
        vec![
            vec!["--regions".to_owned(), "--area".to_owned()],
            vec!["--token-secret".to_owned()]
        ]
    );
    assert_eq!(cli.env_of["--area"], "MATCHER_AREA");
    let set = BTreeSet::from(["MATCHER_AREA".to_owned()]);
    assert_eq!(cli.missing(&set, &[]), vec!["--token-secret"]);
    assert!(
        cli.missing(&set, &["--token-secret=x".to_owned()])
            .is_empty()
    );
}
