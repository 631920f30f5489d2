//! The gateway's configuration: addresses and secrets, per-connection limits, and how
//! positions are batched on their way to NATS.

use std::sync::Arc;
use std::time::Duration;

use protocol::{GeoConfig, Subjects};
use roads::eta::EtaModel;

use crate::dashboard;

/// Limits applied to every connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections held at once; more are refused with HTTP 503.
    pub max_connections: usize,
    /// Largest message or frame accepted, bytes; larger closes the connection with 1009.
    pub max_message_bytes: usize,
    /// Sustained messages per second per connection.
    pub messages_per_sec: u32,
    /// Messages a connection may send in a burst.
    pub burst: u32,
    /// Rate-limited messages in a row after which the connection is closed.
    pub max_strikes: u32,
    /// Time allowed for the WebSocket handshake and for the hello message.
    pub hello_timeout: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    /// A client that does not take a write within this long is closed.
    pub write_timeout: Duration,
    /// Control messages (acks, errors, offers, trip updates) queued per connection before it
    /// is closed as a slow consumer.
    pub control_queue: usize,
    /// A control message still unsent after this long closes the connection as a slow consumer.
    pub control_deadline: Duration,
    /// Coalesced entries (vehicles, positions, trips) held per connection.
    pub coalesced_queue: usize,
    /// Deadline for a command through the trips service.
    pub command_timeout: Duration,
    /// Commands awaiting an answer per connection.
    pub max_commands_in_flight: usize,
    /// Dispatcher zoom from which individual vehicles are shown rather than cell counts.
    pub detail_zoom: f32,
    /// Most cells a detailed viewport may cover.
    pub max_viewport_cells: usize,
    /// Most regions an aggregated viewport may cover.
    pub max_viewport_regions: usize,
    /// Read buffer of each connection, bytes: every connection holds one, idle or not, so it
    /// is sized for the small frames clients send; a bigger frame grows it as needed.
    pub read_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_message_bytes: 16 * 1024,
            messages_per_sec: 20,
            burst: 40,
            max_strikes: 200,
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(20),
            write_timeout: Duration::from_secs(10),
            control_queue: 1_024,
            control_deadline: Duration::from_secs(5),
            coalesced_queue: 5_000,
            command_timeout: Duration::from_secs(5),
            max_commands_in_flight: 8,
            detail_zoom: 11.0,
            max_viewport_cells: 400,
            max_viewport_regions: 1_024,
            read_buffer_bytes: 256,
        }
    }
}

/// Everything the gateway needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// This gateway's id, unique among the deployment's gateways: its clients' messages are
    /// addressed to `{p}.gw.{id}.>`. Letters, digits and `_ : -`.
    pub id: String,
    pub nats_url: String,
    pub subjects: Subjects,
    pub geo: GeoConfig,
    /// Checks clients' tokens.
    pub verifier: protocol::token::Verifier,
    pub limits: Limits,
    /// The dispatcher's web page on the HTTP listener.
    pub dashboard: dashboard::Dashboard,
    pub publishing: Publishing,
    /// How this gateway announces its clients (see [`crate::presence`]).
    pub announcing: crate::presence::Announcing,
    /// Estimates the ETA a rider is told with its driver's positions: the matcher's model, so
    /// a rider is told what the matcher assumed.
    pub eta: Arc<dyn EtaModel>,
    /// How zone events are detected and sent (see [`crate::tracking`]).
    pub tracking: TrackingSettings,
}

impl Config {
    /// Defaults for everything but the bus and how tokens are checked: a fresh id, the default
    /// grid, limits, publishing and tracking, no dashboard, straight-line ETAs. Callers set
    /// what they configure on the result, as every service's configuration is built.
    pub fn new(nats_url: &str, subjects: Subjects, verifier: protocol::token::Verifier) -> Self {
        Self {
            id: new_id(),
            nats_url: nats_url.into(),
            subjects,
            geo: GeoConfig::default(),
            verifier,
            limits: Limits::default(),
            dashboard: dashboard::Dashboard::default(),
            publishing: Publishing::default(),
            announcing: Default::default(),
            eta: Arc::new(roads::eta::StraightLine::default()),
            tracking: TrackingSettings::default(),
        }
    }
}

/// A fresh gateway id: `gw-` and eight random hexadecimal digits.
pub fn new_id() -> String {
    format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// How positions are gathered into batches on their way to NATS (see [`crate::publisher`]).
#[derive(Debug, Clone)]
pub struct Publishing {
    /// Batches of positions go to NATS at most one per `linger`; a position after a quiet
    /// spell goes at once. Zero publishes each batch as soon as the publishing task runs.
    pub linger: Duration,
    /// Publications held while NATS cannot take them; more are dropped and counted.
    pub queue: usize,
}

impl Default for Publishing {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(1),
            queue: 65_536,
        }
    }
}

/// How zone events are detected and sent.
#[derive(Debug, Clone)]
pub struct TrackingSettings {
    /// Time inside a zone after which `dwell` is sent, once per stay.
    pub dwell: Duration,
    /// A driver silent this long leaves the zones it was in (`exit`, reason `stale`).
    pub stale_after: Duration,
    /// How often the zones' generation is asked for, in case a change notice was lost.
    pub reload_every: Duration,
    /// Events held while the trips service cannot take them; more are dropped and counted.
    pub queue: usize,
}

impl Default for TrackingSettings {
    fn default() -> Self {
        Self {
            dwell: Duration::from_secs(300),
            stale_after: Duration::from_secs(60),
            reload_every: Duration::from_millis(500),
            queue: 100_000,
        }
    }
}
