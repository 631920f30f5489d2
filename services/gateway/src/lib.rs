//! The gateway: the only process clients talk to.
//!
//! It terminates WebSockets for drivers, riders and dispatchers, authenticates each connection
//! with a signed token in its hello, validates every message, enforces each role's rights and
//! the per-connection limits, publishes positions on H3-partitioned subjects, forwards commands
//! to the trips service with a deadline, and delivers to each client what NATS has for it.

pub mod config;
pub mod dashboard;
pub mod inbox;
pub mod meters;
pub mod outbound;
pub mod presence;
pub mod publisher;
pub mod session;
pub mod shared;
pub mod tracking;
pub mod viewport;

pub use config::{Config, Limits, Publishing};
pub use shared::{Shared, Signal};

use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kit::{Bus, Readiness};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::meters as m;

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
///
/// A reconnect is told by the client's count of connections, not by its state: moving to
/// another server can take less than one look at the state, and a resync missed leaves a
/// client without what was published to it meanwhile.
async fn signal_sessions(
    nats: async_nats::Client,
    signal: tokio::sync::watch::Sender<Signal>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut connects = kit::bus::connects(&nats);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                signal.send_modify(|s| s.stopping = true);
                break;
            }
            _ = tick.tick() => {
                let now = kit::bus::connects(&nats);
                // Also the first connection of a gateway that started without a server: the
                // sessions let in meanwhile could not read their state.
                if now > connects {
                    tracing::info!("nats is back: sessions re-read their state");
                    metrics::counter!(m::RESYNCS).increment(1);
                    signal.send_modify(|s| s.reconnects += 1);
                }
                connects = now;
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
    protocol::validate::id("gateway id", &config.id)?;
    let readiness = Readiness::new(&["nats"]);
    let nats = kit::bus::connect(&config.nats_url, "gateway").await?;
    let (signal_sender, signal) = tokio::sync::watch::channel(Signal::default());
    let tasks = TaskTracker::new();
    let (tracking, zone_events) = tracking::Tracking::new(config.tracking.clone());
    let tracking = Arc::new(tracking);
    let shared = Arc::new(Shared {
        tasks: tasks.clone(),
        bus: Bus::new(nats.clone(), config.subjects.clone()),
        nats: nats.clone(),
        signal,
        inboxes: Arc::default(),
        directory: Arc::new(
            kit::presence::Directory::new(
                config.subjects.clone(),
                &[
                    protocol::client::Role::Rider,
                    protocol::client::Role::Driver,
                ],
            )
            .of_others(&config.id),
        ),
        tracking: tracking.clone(),
        publisher: Arc::new(publisher::Publisher::new(config.publishing.queue)),
        hot: meters::Hot::look_up(),
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
    // Subscribed before the first client is let in, so no client's message is missed.
    let subjects = &shared.config.subjects;
    let targeted = nats
        .subscribe(subjects.gateway_users(&shared.config.id))
        .await
        .context("subscribing to this gateway's client messages")?;
    let broadcast = nats
        .subscribe(subjects.users_all())
        .await
        .context("subscribing to client messages")?;
    tasks.spawn(inbox::route(
        targeted,
        broadcast,
        nats.clone(),
        subjects.clone(),
        shared.config.id.clone(),
        shared.inboxes.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(kit::presence::follow(
        nats.clone(),
        shared.directory.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(tracking::follow(
        shared.bus.clone(),
        nats.clone(),
        tracking.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(tracking::sweep(
        tracking.clone(),
        shared.directory.clone(),
        shutdown.clone(),
    ));
    // Stopped after the sessions, so the zone events of their last positions are recorded.
    let recording_stop = CancellationToken::new();
    let recording = tokio::spawn(tracking::record(
        shared.bus.clone(),
        zone_events,
        recording_stop.clone(),
    ));
    // Stopped after the sessions, so that their leaving is announced before the gateway's.
    let announcing_stop = CancellationToken::new();
    let announcing = tokio::spawn(presence::announce(
        nats.clone(),
        subjects.clone(),
        shared.config.id.clone(),
        shared.inboxes.clone(),
        shared.config.announcing.clone(),
        announcing_stop.clone(),
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

    let app = kit::http::operator_routes(readiness).merge(dashboard::routes(
        shared.config.dashboard.clone(),
        ws.local_addr()?,
    ));
    tasks.spawn(kit::http::serve(http, app, shutdown.clone()));

    let limits = shared.config.limits.clone();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.max_message_bytes * 64)
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes));
    tracing::info!(ws = %ws.local_addr()?, prefix = shared.config.subjects.prefix(), id = shared.config.id, "gateway accepting connections");
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
                    let tracker = shared.tasks.clone();
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
    // Sessions close with 1001; commands in flight get their answers (or time out) first.
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(15), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections did not close within the grace period");
    }
    announcing_stop.cancel();
    let _ = announcing.await;
    recording_stop.cancel();
    let _ = recording.await;
    publishing_stop.cancel();
    let _ = publishing.await;
    nats.drain().await.context("draining nats")?;
    Ok(())
}
