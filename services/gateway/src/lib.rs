//! The gateway: the only process clients talk to.
//!
//! It terminates WebSockets for drivers, riders and dispatchers, authenticates each connection
//! with a signed token in its hello, validates every message, enforces each role's rights and
//! the per-connection limits, publishes positions on H3-partitioned subjects, forwards commands
//! to the trips service with a deadline, and delivers to each client what NATS has for it.

pub mod dashboard;
pub mod inbox;
pub mod meters;
pub mod outbound;
pub mod publisher;
pub mod ratelimit;
pub mod session;
pub mod viewport;

use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kit::{Bus, Readiness};
use protocol::{GeoConfig, Subjects};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::meters as m;

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
    pub nats_url: String,
    pub subjects: Subjects,
    pub geo: GeoConfig,
    pub token_secret: Vec<u8>,
    pub limits: Limits,
    /// The dispatcher's web page on the HTTP listener.
    pub dashboard: dashboard::Dashboard,
    pub publishing: Publishing,
}

/// How positions are gathered into batches on their way to NATS (see [`publisher`]).
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

/// What every session listens for besides its client, in one watch so that an idle session
/// waits on one signal rather than two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signal {
    /// Bumped each time the NATS connection comes back; sessions then re-read their state.
    pub reconnects: u64,
    /// The gateway is stopping: sessions close with 1001.
    pub stopping: bool,
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub nats: async_nats::Client,
    pub bus: Bus,
    /// What every session listens for besides its client.
    pub signal: tokio::sync::watch::Receiver<Signal>,
    /// Where each client's messages go.
    pub inboxes: Arc<inbox::Inboxes>,
    /// Where sessions hand their positions for NATS.
    pub publisher: Arc<publisher::Publisher>,
}

/// Accepts or refuses a WebSocket upgrade: only on `/ws`, and only below the connection cap.
#[allow(clippy::result_large_err)] // the signature is tungstenite's handshake callback
fn check_upgrade(
    full: bool,
    request: &Request,
    response: Response,
) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, body: &str| {
        let mut response = ErrorResponse::new(Some(body.to_owned()));
        *response.status_mut() = status;
        Err(response)
    };
    if full {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached; try another gateway",
        );
    }
    if request.uri().path() != "/ws" {
        return refuse(StatusCode::NOT_FOUND, "websocket endpoint is /ws");
    }
    Ok(response)
}

/// Signals every session: a reconnect each time the NATS connection comes back after losing
/// it (core NATS does not keep what was published while a subscriber was away, so every
/// session re-reads its state from the trips service), and `stopping` on `stop`.
async fn signal_sessions(
    nats: async_nats::Client,
    signal: tokio::sync::watch::Sender<Signal>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut was_connected = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                signal.send_modify(|s| s.stopping = true);
                break;
            }
            _ = tick.tick() => {
                let connected =
                    nats.connection_state() == async_nats::connection::State::Connected;
                if connected && !was_connected {
                    tracing::info!("nats is back: sessions re-read their state");
                    metrics::counter!(m::RESYNCS).increment(1);
                    signal.send_modify(|s| s.reconnects += 1);
                }
                was_connected = connected;
            }
        }
    }
}

/// Runs the gateway until `shutdown`: WebSockets on `ws`; operator endpoints and the
/// dispatcher's dashboard on `http`.
pub async fn run(
    config: Config,
    ws: TcpListener,
    http: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    meters::register();
    let readiness = Readiness::new(&["nats"]);
    let nats = kit::bus::connect(&config.nats_url, "gateway").await?;
    let (signal_sender, signal) = tokio::sync::watch::channel(Signal::default());
    let shared = Arc::new(Shared {
        bus: Bus::new(nats.clone(), config.subjects.clone()),
        nats: nats.clone(),
        signal,
        inboxes: Arc::default(),
        publisher: Arc::new(publisher::Publisher::new(config.publishing.queue)),
        config,
    });
    // Stopped after the sessions, so what they published on their way out still goes out.
    let publishing_stop = CancellationToken::new();
    let publishing = tokio::spawn({
        let (publisher, nats, stop) = (
            shared.publisher.clone(),
            nats.clone(),
            publishing_stop.clone(),
        );
        let linger = shared.config.publishing.linger;
        async move { publisher.run(nats, linger, stop).await }
    });
    let tasks = TaskTracker::new();
    // Subscribed before the first client is let in, so no client's message is missed.
    let messages = nats
        .subscribe(shared.config.subjects.users_all())
        .await
        .context("subscribing to client messages")?;
    tasks.spawn(inbox::route(
        messages,
        shared.config.subjects.clone(),
        shared.inboxes.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(signal_sessions(
        nats.clone(),
        signal_sender,
        shutdown.clone(),
    ));

    tasks.spawn(kit::bus::track_readiness(
        nats.clone(),
        readiness.clone(),
        "nats",
        shutdown.clone(),
    ));

    let http_stop = shutdown.clone();
    let app = kit::http::operator_routes(readiness).merge(dashboard::routes(
        shared.config.dashboard.clone(),
        ws.local_addr()?,
    ));
    tasks.spawn(async move {
        let served = axum::serve(http, app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "http server failed");
        }
    });

    let limits = shared.config.limits.clone();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_message_bytes * 64)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes));
    tracing::info!(ws = %ws.local_addr()?, prefix = shared.config.subjects.prefix(), "gateway accepting connections");
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = ws.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let permit = permits.clone().try_acquire_owned().ok();
        let shared = shared.clone();
        let handshake_timeout = limits.hello_timeout;
        let tracker = tasks.clone();
        // The handshake and the hello run in a task that ends after them; an accepted session
        // goes on in a task of its own, so its memory is not sized for the states before it.
        tasks.spawn(async move {
            let full = permit.is_none();
            #[allow(clippy::result_large_err)] // tungstenite's callback signature
            let callback =
                move |request: &Request, response: Response| check_upgrade(full, request, response);
            let handshake =
                tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config));
            match tokio::time::timeout(handshake_timeout, Box::pin(handshake)).await {
                Ok(Ok(ws)) => {
                    if let Some(session) = session::open(ws, shared).await {
                        // (`map`, not an async block: awaiting a captured future would keep
                        // two copies of its state in the task.)
                        tracker.spawn(session.map(move |()| drop(permit)));
                        return;
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    let outcome = if full {
                        "over_capacity"
                    } else {
                        "handshake_failed"
                    };
                    metrics::counter!(m::CONNECTION_ATTEMPTS, "outcome" => outcome).increment(1);
                }
            }
            drop(permit);
        });
    }
    tracing::info!("gateway stopping: closing client connections");
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(15), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections did not close within the grace period");
    }
    publishing_stop.cancel();
    let _ = publishing.await;
    nats.drain().await.context("draining nats")?;
    Ok(())
}
