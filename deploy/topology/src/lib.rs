//! One description of a deployment: which services run and how many of each, which regions
//! each matcher serves, at which addresses, and the settings they share; rendered to the
//! command lines and environments that start them (local processes, hosts made of network
//! namespaces) and to the environments the container files set.
//!
//! The services' command-line definitions take each flag's and variable's name from the
//! [`Setting`]s here, so renaming one touches this file only. Settings every service shares
//! (the bus, the database, the token secret) are always rendered as environment variables,
//! which, unlike arguments, other users of the machine cannot read.

use std::fmt::Display;
use std::net::SocketAddr;

/// One setting of a service: its long flag (without `--`) and its environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flag: &'static str,
    pub env: &'static str,
}

const fn setting(flag: &'static str, env: &'static str) -> Setting {
    Setting { flag, env }
}

/// Settings of every service.
pub mod shared {
    use super::{Setting, setting};

    /// NATS servers, comma-separated URLs.
    pub const NATS_URL: Setting = setting("nats-url", "NATS_URL");
    /// The prefix of every subject, so deployments can share NATS servers.
    pub const SUBJECT_PREFIX: Setting = setting("subject-prefix", "SUBJECT_PREFIX");
    /// The HMAC secret client tokens are signed with.
    pub const TOKEN_SECRET: Setting = setting("token-secret", "TOKEN_SECRET");
    /// The log filter (`tracing`'s `EnvFilter`); a variable only.
    pub const LOG: &str = "RUST_LOG";
}

/// The trips service: trip state, the outbox, the integrators' API.
pub mod trips {
    use super::{Setting, setting};

    pub const BINARY: &str = "dispatch-trips";
    pub const DATABASE_URL: Setting = setting("database-url", "DATABASE_URL");
    pub const HTTP: Setting = setting("http", "TRIPS_HTTP");
    pub const SEARCH_TIMEOUT_S: Setting = setting("search-timeout-s", "TRIPS_SEARCH_TIMEOUT_S");
    pub const SCHEDULE_LEAD_S: Setting = setting("schedule-lead-s", "TRIPS_SCHEDULE_LEAD_S");
    /// Start without applying migrations (another replica or an operator applies them).
    pub const NO_MIGRATE: Setting = setting("no-migrate", "TRIPS_NO_MIGRATE");
}

/// A matcher: the regions it serves and how it ranks drivers.
pub mod matcher {
    use super::{Setting, setting};

    pub const BINARY: &str = "dispatch-matcher";
    /// The regions served, comma-separated H3 cells.
    pub const REGIONS: Setting = setting("regions", "MATCHER_REGIONS");
    /// Every region within a circle, `LAT,LNG,RADIUS_KM`.
    pub const AREA: Setting = setting("area", "MATCHER_AREA");
    pub const STRATEGY: Setting = setting("strategy", "MATCHER_STRATEGY");
    pub const HTTP: Setting = setting("http", "MATCHER_HTTP");
}

/// A gateway: clients' WebSockets, the dashboard, the API proxy.
pub mod gateway {
    use super::{Setting, setting};

    pub const BINARY: &str = "dispatch-gateway";
    /// The subcommand that serves clients.
    pub const SERVE: &str = "serve";
    pub const ID: Setting = setting("id", "GATEWAY_ID");
    pub const WS: Setting = setting("ws", "GATEWAY_WS");
    pub const HTTP: Setting = setting("http", "GATEWAY_HTTP");
    pub const DASHBOARD_DIR: Setting = setting("dashboard-dir", "GATEWAY_DASHBOARD_DIR");
    pub const TRIPS_API: Setting = setting("trips-api", "GATEWAY_TRIPS_API");
    pub const PUBLIC_WS_URL: Setting = setting("public-ws-url", "GATEWAY_PUBLIC_WS_URL");
    pub const MAP_CENTER: Setting = setting("map-center", "GATEWAY_MAP_CENTER");
    pub const MAP_ZOOM: Setting = setting("map-zoom", "GATEWAY_MAP_ZOOM");
    pub const MAX_CONNECTIONS: Setting = setting("max-connections", "GATEWAY_MAX_CONNECTIONS");
}

/// How a service's own settings are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// As flags (processes started here, where a command line shows what runs).
    Flags,
    /// As environment variables (containers, whose files set an environment).
    Env,
}

/// A program to start: its binary's name, arguments and environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub program: &'static str,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
}

impl Command {
    /// The value of the variable `name`, if it is set.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A command being rendered in one [`Form`].
struct Rendering {
    form: Form,
    command: Command,
}

impl Rendering {
    fn new(program: &'static str, form: Form) -> Self {
        Self {
            form,
            command: Command {
                program,
                args: Vec::new(),
                env: Vec::new(),
            },
        }
    }

    fn arg(mut self, arg: &str) -> Self {
        self.command.args.push(arg.to_owned());
        self
    }

    /// `setting` as a variable, whatever the form.
    fn var(mut self, setting: Setting, value: Option<&impl Display>) -> Self {
        if let Some(value) = value {
            self.command.env.retain(|(n, _)| *n != setting.env);
            self.command.env.push((setting.env, value.to_string()));
        }
        self
    }

    /// `setting` in the command's form.
    fn set(mut self, setting: Setting, value: Option<&impl Display>) -> Self {
        let Some(value) = value else {
            return self;
        };
        match self.form {
            Form::Flags => {
                let flag = format!("--{}", setting.flag);
                self.command.args.extend([flag, value.to_string()]);
                self
            }
            Form::Env => self.var(setting, Some(value)),
        }
    }

    /// The switch `setting`, when `on`.
    fn switch(self, setting: Setting, on: bool) -> Self {
        match self.form {
            Form::Flags if on => self.arg(&format!("--{}", setting.flag)),
            Form::Env if on => self.var(setting, Some(&"true")),
            _ => self,
        }
    }

    fn shared(mut self, shared: &Shared, with: &[Setting]) -> Self {
        for setting in with {
            let value = match *setting {
                s if s == shared::NATS_URL => Some(&shared.nats_url),
                s if s == shared::SUBJECT_PREFIX => shared.subject_prefix.as_ref(),
                s if s == shared::TOKEN_SECRET => shared.token_secret.as_ref(),
                s if s == trips::DATABASE_URL => shared.database_url.as_ref(),
                _ => None,
            };
            self = self.var(*setting, value);
        }
        if let Some(log) = &shared.log {
            self.command.env.push((shared::LOG, log.clone()));
        }
        self
    }
}

/// What every service of a deployment shares.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Shared {
    pub nats_url: String,
    /// For the trips service.
    pub database_url: Option<String>,
    /// For the trips service and the gateways.
    pub token_secret: Option<String>,
    pub subject_prefix: Option<String>,
    pub log: Option<String>,
}

impl Shared {
    /// Every shared setting that is set, as variables (for tools beside the services: the
    /// simulator, token minting).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let all = [
            shared::NATS_URL,
            trips::DATABASE_URL,
            shared::TOKEN_SECRET,
            shared::SUBJECT_PREFIX,
        ];
        Rendering::new("", Form::Env).shared(self, &all).command.env
    }
}

/// A trips replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Trips {
    pub http: SocketAddr,
    pub search_timeout_s: Option<u64>,
    pub schedule_lead_s: Option<u64>,
    /// Whether it applies pending migrations at startup.
    pub migrate: bool,
}

impl Trips {
    /// A replica serving HTTP on `http`, with the defaults otherwise.
    pub fn at(http: SocketAddr) -> Self {
        Self {
            http,
            search_timeout_s: None,
            schedule_lead_s: None,
            migrate: true,
        }
    }

    pub fn command(&self, shared: &Shared, form: Form) -> Command {
        use trips::*;
        Rendering::new(BINARY, form)
            .shared(
                shared,
                &[
                    shared::NATS_URL,
                    DATABASE_URL,
                    shared::TOKEN_SECRET,
                    shared::SUBJECT_PREFIX,
                ],
            )
            .set(HTTP, Some(&self.http))
            .set(SEARCH_TIMEOUT_S, self.search_timeout_s.as_ref())
            .set(SCHEDULE_LEAD_S, self.schedule_lead_s.as_ref())
            .switch(NO_MIGRATE, !self.migrate)
            .command
    }
}

/// Which regions a matcher serves.
#[derive(Debug, Clone, PartialEq)]
pub enum Serves {
    /// Every region within `radius_km` of (`lat`, `lng`).
    Area { lat: f64, lng: f64, radius_km: f64 },
    /// These regions (H3 cells).
    Regions(Vec<String>),
}

/// A matcher replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub serves: Serves,
    pub http: SocketAddr,
    /// `greedy` or `batched`; the matcher's default when `None`.
    pub strategy: Option<String>,
}

impl Matcher {
    pub fn command(&self, shared: &Shared, form: Form) -> Command {
        use matcher::*;
        let rendering = Rendering::new(BINARY, form)
            .shared(shared, &[shared::NATS_URL, shared::SUBJECT_PREFIX]);
        let rendering = match &self.serves {
            Serves::Area {
                lat,
                lng,
                radius_km,
            } => rendering.set(AREA, Some(&format!("{lat},{lng},{radius_km}"))),
            Serves::Regions(regions) => rendering.set(REGIONS, Some(&regions.join(","))),
        };
        rendering
            .set(HTTP, Some(&self.http))
            .set(STRATEGY, self.strategy.as_ref())
            .command
    }
}

/// A gateway replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    /// Unique among the deployment's gateways; random when `None`.
    pub id: Option<String>,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    pub dashboard_dir: Option<String>,
    /// The trips service's HTTP API, `http://host:port`.
    pub trips_api: Option<String>,
    /// The WebSocket URL the dashboard connects to, behind a proxy.
    pub public_ws_url: Option<String>,
    /// Where the dashboard's map opens: latitude, longitude, zoom.
    pub map: Option<(f64, f64, f64)>,
    pub max_connections: Option<usize>,
    /// Its own NATS URL instead of the shared one (a gateway that reaches NATS through a
    /// proxy, say).
    pub nats_url: Option<String>,
}

impl Gateway {
    /// A gateway on `ws` and `http`, with the defaults otherwise.
    pub fn at(ws: SocketAddr, http: SocketAddr) -> Self {
        Self {
            id: None,
            ws,
            http,
            dashboard_dir: None,
            trips_api: None,
            public_ws_url: None,
            map: None,
            max_connections: None,
            nats_url: None,
        }
    }

    pub fn command(&self, shared: &Shared, form: Form) -> Command {
        use gateway::*;
        Rendering::new(BINARY, form)
            .arg(SERVE)
            .shared(
                shared,
                &[
                    shared::NATS_URL,
                    shared::TOKEN_SECRET,
                    shared::SUBJECT_PREFIX,
                ],
            )
            .var(shared::NATS_URL, self.nats_url.as_ref())
            .set(ID, self.id.as_ref())
            .set(WS, Some(&self.ws))
            .set(HTTP, Some(&self.http))
            .set(DASHBOARD_DIR, self.dashboard_dir.as_ref())
            .set(TRIPS_API, self.trips_api.as_ref())
            .set(PUBLIC_WS_URL, self.public_ws_url.as_ref())
            .set(
                MAP_CENTER,
                self.map
                    .map(|(lat, lng, _)| format!("{lat},{lng}"))
                    .as_ref(),
            )
            .set(MAP_ZOOM, self.map.map(|(_, _, zoom)| zoom).as_ref())
            .set(MAX_CONNECTIONS, self.max_connections.as_ref())
            .command
    }
}

/// A whole deployment: every replica of every service, and what they share.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Deployment {
    pub shared: Shared,
    pub trips: Vec<Trips>,
    pub matchers: Vec<Matcher>,
    pub gateways: Vec<Gateway>,
}

/// Which service a replica belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Trips,
    Matcher,
    Gateway,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trips => "trips",
            Self::Matcher => "matcher",
            Self::Gateway => "gateway",
        }
    }
}

/// One replica as it is started.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    pub service: Service,
    /// `trips`, `matcher` or `gateway` when the deployment has one of that service, else
    /// `gateway-1`, `gateway-2`, and so on.
    pub name: String,
    /// Where its health, readiness and metrics are served.
    pub http: SocketAddr,
    pub command: Command,
}

impl Deployment {
    /// Every replica in start order: the trips service first (it applies migrations), then
    /// the matchers, then the gateways.
    pub fn replicas(&self, form: Form) -> Vec<Replica> {
        fn named<T>(
            service: Service,
            all: &[T],
            render: impl Fn(&T) -> (SocketAddr, Command),
        ) -> Vec<Replica> {
            all.iter()
                .enumerate()
                .map(|(i, spec)| {
                    let (http, command) = render(spec);
                    let name = if all.len() == 1 {
                        service.as_str().to_owned()
                    } else {
                        format!("{}-{}", service.as_str(), i + 1)
                    };
                    Replica {
                        service,
                        name,
                        http,
                        command,
                    }
                })
                .collect()
        }
        let shared = &self.shared;
        let mut all = named(Service::Trips, &self.trips, |t| {
            (t.http, t.command(shared, form))
        });
        all.extend(named(Service::Matcher, &self.matchers, |m| {
            (m.http, m.command(shared, form))
        }));
        all.extend(named(Service::Gateway, &self.gateways, |g| {
            (g.http, g.command(shared, form))
        }));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn shared() -> Shared {
        Shared {
            nats_url: "nats://n:4222".into(),
            database_url: Some("postgres://db".into()),
            token_secret: Some("secret".into()),
            subject_prefix: Some("demo".into()),
            log: Some("info".into()),
        }
    }

    #[test]
    fn flags_carry_a_services_own_settings_and_variables_what_all_share() {
        let gateway = Gateway {
            id: Some("g1".into()),
            map: Some((52.5, 13.4, 12.5)),
            nats_url: Some("nats://proxy:1".into()),
            ..Gateway::at(addr(8080), addr(8081))
        };
        let command = gateway.command(&shared(), Form::Flags);
        assert_eq!(command.program, "dispatch-gateway");
        assert_eq!(
            command.args,
            [
                "serve",
                "--id",
                "g1",
                "--ws",
                "127.0.0.1:8080",
                "--http",
                "127.0.0.1:8081",
                "--map-center",
                "52.5,13.4",
                "--map-zoom",
                "12.5"
            ]
        );
        assert_eq!(command.var("NATS_URL"), Some("nats://proxy:1"));
        assert_eq!(command.var("TOKEN_SECRET"), Some("secret"));
        assert_eq!(command.var("DATABASE_URL"), None, "only trips gets it");
        assert_eq!(command.var("RUST_LOG"), Some("info"));
    }

    #[test]
    fn the_env_form_sets_only_variables() {
        let trips = Trips {
            search_timeout_s: Some(30),
            migrate: false,
            ..Trips::at(addr(8082))
        };
        let command = trips.command(&shared(), Form::Env);
        assert!(command.args.is_empty());
        assert_eq!(command.var("TRIPS_HTTP"), Some("127.0.0.1:8082"));
        assert_eq!(command.var("TRIPS_SEARCH_TIMEOUT_S"), Some("30"));
        assert_eq!(command.var("TRIPS_NO_MIGRATE"), Some("true"));
        assert_eq!(command.var("DATABASE_URL"), Some("postgres://db"));
        let flags = trips.command(&shared(), Form::Flags);
        assert!(flags.args.contains(&"--no-migrate".to_owned()));
    }

    #[test]
    fn replicas_are_named_by_service_and_started_trips_first() {
        let deployment = Deployment {
            shared: shared(),
            trips: vec![Trips::at(addr(8082))],
            matchers: (0..2)
                .map(|i| Matcher {
                    serves: Serves::Regions(vec!["851f1d4bfffffff".into()]),
                    http: addr(8083 + 10 * i),
                    strategy: None,
                })
                .collect(),
            gateways: vec![Gateway::at(addr(8080), addr(8081))],
        };
        let names: Vec<String> = deployment
            .replicas(Form::Flags)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["trips", "matcher-1", "matcher-2", "gateway"]);
        let matcher = &deployment.replicas(Form::Flags)[1].command;
        assert_eq!(
            matcher.args,
            ["--regions", "851f1d4bfffffff", "--http", "127.0.0.1:8083"]
        );
    }
}
