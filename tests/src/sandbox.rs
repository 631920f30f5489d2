//! One builder for an in-process stack: a nats-server of its own, a fresh database, a subject
//! prefix, a bus client, and as many trips replicas, matchers and gateways as a test asks for,
//! each tuned before it starts. As in a deployment, every gateway's dashboard proxies `/api/`
//! to the first trips replica, and each service is ready when `start` returns.
//!
//! ```text
//! let stack = Sandbox::builder()
//!     .gateways(1)
//!     .tune_gateway(|config| config.limits.max_connections = 10)
//!     .start()
//!     .await;
//! ```

use h3o::CellIndex;
use kit::Bus;
use protocol::Subjects;

use crate::services::{
    Gateway, Running, gateway_config, matcher_config, start_gateway, start_matcher, start_trips,
    trips_config, wait_ready,
};
use crate::{NatsServer, TestDb, unique_prefix};

type Tune<C> = Box<dyn Fn(&mut C) + Send>;

/// What to start; see [`Sandbox::builder`].
pub struct SandboxBuilder {
    trips: usize,
    gateways: usize,
    matchers: Vec<Vec<CellIndex>>,
    tune_trips: Tune<trips::Config>,
    tune_gateway: Tune<gateway::Config>,
    tune_matcher: Tune<matcher::Config>,
}

impl std::fmt::Debug for SandboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBuilder")
            .field("trips", &self.trips)
            .field("gateways", &self.gateways)
            .field("matchers", &self.matchers.len())
            .finish_non_exhaustive()
    }
}

/// A running stack; everything in it stops when it is dropped.
#[derive(Debug)]
pub struct Sandbox {
    pub nats: NatsServer,
    pub db: TestDb,
    pub prefix: String,
    pub subjects: Subjects,
    /// A client of the stack's bus, under its prefix.
    pub bus: Bus,
    pub trips: Vec<Running>,
    pub matchers: Vec<Running>,
    pub gateways: Vec<Gateway>,
}

impl Sandbox {
    /// One trips replica, no matcher, no gateway, until told otherwise.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder {
            trips: 1,
            gateways: 0,
            matchers: Vec::new(),
            tune_trips: Box::new(|_| {}),
            tune_gateway: Box::new(|_| {}),
            tune_matcher: Box::new(|_| {}),
        }
    }

    /// A gateway's settings for this stack (to start one more, or one at a set address).
    pub fn gateway_config(&self) -> gateway::Config {
        let mut config = gateway_config(&self.nats.url(), &self.prefix);
        config.dashboard.trips_api = self.trips.first().map(|t| format!("http://{}", t.http));
        config
    }

    /// A trips replica's settings for this stack.
    pub fn trips_config(&self) -> trips::Config {
        trips_config(&self.db.url, &self.nats.url(), &self.prefix)
    }

    /// The first gateway.
    pub fn gateway(&self) -> &Gateway {
        self.gateways
            .first()
            .expect("the sandbox was built with a gateway")
    }
}

impl SandboxBuilder {
    /// How many trips replicas (1 by default).
    pub fn trips(mut self, replicas: usize) -> Self {
        self.trips = replicas;
        self
    }

    /// How many gateways (none by default).
    pub fn gateways(mut self, gateways: usize) -> Self {
        self.gateways = gateways;
        self
    }

    /// One more matcher, serving `regions`.
    pub fn matcher(mut self, regions: Vec<CellIndex>) -> Self {
        self.matchers.push(regions);
        self
    }

    pub fn tune_trips(mut self, tune: impl Fn(&mut trips::Config) + Send + 'static) -> Self {
        self.tune_trips = Box::new(tune);
        self
    }

    pub fn tune_gateway(mut self, tune: impl Fn(&mut gateway::Config) + Send + 'static) -> Self {
        self.tune_gateway = Box::new(tune);
        self
    }

    pub fn tune_matcher(mut self, tune: impl Fn(&mut matcher::Config) + Send + 'static) -> Self {
        self.tune_matcher = Box::new(tune);
        self
    }

    /// Starts everything, each gateway ready before this returns.
    pub async fn start(self) -> Sandbox {
        crate::init_logs();
        let nats = NatsServer::start();
        let db = TestDb::create().await;
        let prefix = unique_prefix();
        let subjects = Subjects::new(&prefix).expect("test prefixes are valid");
        let mut trips = Vec::new();
        for _ in 0..self.trips {
            let mut config = trips_config(&db.url, &nats.url(), &prefix);
            (self.tune_trips)(&mut config);
            trips.push(start_trips(config).await);
        }
        let mut matchers = Vec::new();
        for regions in self.matchers {
            let mut config = matcher_config(&nats.url(), &prefix, regions);
            (self.tune_matcher)(&mut config);
            let matcher = start_matcher(config).await;
            wait_ready(matcher.http).await;
            matchers.push(matcher);
        }
        let mut gateways = Vec::new();
        for _ in 0..self.gateways {
            let mut config = gateway_config(&nats.url(), &prefix);
            config.dashboard.trips_api = trips.first().map(|t| format!("http://{}", t.http));
            (self.tune_gateway)(&mut config);
            let gateway = start_gateway(config).await;
            wait_ready(gateway.running.http).await;
            gateways.push(gateway);
        }
        let bus = Bus::new(
            async_nats::connect(nats.url())
                .await
                .expect("connecting to the sandbox's nats-server"),
            subjects.clone(),
        );
        Sandbox {
            nats,
            db,
            prefix,
            subjects,
            bus,
            trips,
            matchers,
            gateways,
        }
    }
}
