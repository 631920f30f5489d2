//! One client connection, from hello to close.
//!
//! - [`hello`]: the first message (token and version, within a timeout) and the refusals.
//! - this module: the session's task, which reads the client's frames and its feeds, checks
//!   each message against the role's rights ([`protocol::rights`]) and routes it; the client's
//!   own messages from the [`crate::inbox`]; the resync after NATS comes back.
//! - [`driver`]: a driver's situation and its positions.
//! - [`dispatcher`]: a dispatcher's trip feed and viewport.
//! - [`commands`]: commands and queries through the trips service, in the order sent.
//! - [`writer`]: drains the connection's [`Outbound`] queue to the socket.
//!
//! # Memory
//! A gateway holds many idle connections, so what an idle one keeps is kept small (under
//! 4 KiB, BENCHMARKS.md says where it goes):
//! - The handshake and the hello run in a task that ends after them; an accepted session gets
//!   a task of its own, so it is not sized for the states before it.
//! - The writer is a future polled in the session's task beside the reading, not a task of its
//!   own (which would cost every idle connection some 640 bytes). Nothing the reading awaits
//!   takes long (positions go to the publisher's queue, commands to their own task; only a
//!   dispatcher's subscriptions wait for the NATS client), so the writer is never held up for
//!   long, and while it waits for a slow client the reading goes on.
//! - Every brief state (handling a message, a write, the close) is boxed, so the idle state
//!   holds only what waits: the socket halves, the timer, the signal.
//! - A dispatcher's feeds are boxed and absent for drivers and riders; an idle session's
//!   command queue holds no allocation.
//! - The gateway's stop and NATS reconnects reach every session through one watch
//!   ([`crate::shared::Signal`]), and the session's only timer wakes it when a ping is due or its idle
//!   deadline may have passed: one wake-up per ping interval when idle.
//! - Several functions return an async block instead of being `async fn`: an async fn keeps
//!   its arguments twice in its state, once as passed and once as moved into its body.

mod commands;
mod dispatcher;
mod driver;
mod hello;
mod versions;
mod writer;

pub use hello::open;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::{Fuse, FusedFuture, FutureExt};
use futures_util::stream::SplitSink;
use protocol::ErrorCode;
use protocol::bus::{QueryReply, TripCommand, TripQuery};
use protocol::client::{self, Role, ServerMessage};
use protocol::rights::{self, Route, Sender};
use protocol::time::now_ms;
use protocol::trip::TripView;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::inbox::Recipient;
use crate::meters as m;
use crate::outbound::{Close, Key, Outbound};
use crate::shared::Shared;
use commands::Pending;
use dispatcher::Feeds;
use driver::DriverSession;
use kit::ratelimit::TokenBucket;
use versions::TripVersions;

/// After the close frame, how long the client's answer to it is waited for.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Longest a new session waits for its join to be announced before reading its session state
/// (announcements go out within a few milliseconds; longer only when NATS is away).
const JOIN_ANNOUNCED_WITHIN: Duration = Duration::from_millis(250);

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;
type Stream = futures_util::stream::SplitStream<WebSocketStream<TcpStream>>;

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    }))
}

/// An `error` for the client, counted by its code. `message` is written for people: never a
/// Rust error's text.
fn error_text(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> String {
    metrics::counter!(m::REJECTS, "reason" => code.as_str()).increment(1);
    ServerMessage::error(id, code, message).to_json()
}

/// A plain ack of message `id`: done, nothing to tell beyond that.
fn ack_text(id: u64) -> String {
    ServerMessage::Ack {
        id,
        trip: None,
        changed: true,
    }
    .to_json()
}

/// One authenticated client.
struct Session {
    shared: Arc<Shared>,
    /// Who the client is, from its token.
    sender: Sender,
    out: Arc<Outbound>,
    driver: Mutex<DriverSession>,
    /// The newest version of each trip told to the client.
    versions: Mutex<TripVersions>,
    commands: commands::Queue,
}

impl Session {
    fn new(shared: Arc<Shared>, sender: Sender, out: Arc<Outbound>) -> Self {
        Self {
            shared,
            sender,
            out,
            driver: Mutex::new(DriverSession::default()),
            versions: Mutex::new(TripVersions::default()),
            commands: Mutex::new(None),
        }
    }

    fn subjects(&self) -> &protocol::Subjects {
        &self.shared.config.subjects
    }

    /// Records the versions of `trips` the client is being told (by a reply or its session
    /// state), so that older updates still on their way are dropped.
    fn told<'a>(&self, trips: impl IntoIterator<Item = &'a TripView>) {
        let mut versions = self.versions.lock().expect("versions lock");
        for trip in trips {
            versions.tell(trip.trip_id, trip.version);
        }
    }
}

/// Serves an accepted session until it ends, then lets the writer finish.
#[allow(clippy::manual_async_fn)] // an async fn keeps its arguments twice
fn serve(
    session: Arc<Session>,
    mut stream: Stream,
    sink: Sink,
    gauge: metrics::Gauge,
) -> impl Future<Output = ()> {
    async move {
        let limits = &session.shared.config.limits;
        let write_timeout = limits.write_timeout;
        // (Made here, not passed in: an argument future would be kept twice in this one's state.)
        let writer = writer::write_loop(
            sink,
            session.out.clone(),
            write_timeout,
            limits.control_deadline,
        );
        let mut writer = std::pin::pin!(writer.fuse());
        session
            .clone()
            .read_loop(&mut stream, writer.as_mut())
            .await;
        session.out.close(Close::Normal);
        // The writer sends what is queued and the close frame, or gives up after its timeout;
        // then the client's last frames (its pongs, its own close frame) are read, so that closing
        // the socket does not reset it under the client before it has read the close frame.
        Box::pin(async {
            if !writer.is_terminated() {
                let _ = tokio::time::timeout(write_timeout * 2, writer).await;
            }
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Some(Ok(frame)) = stream.next().await {
                    if frame.is_close() {
                        break;
                    }
                }
            })
            .await;
        })
        .await;
        gauge.decrement(1.0);
    }
}

impl Recipient for Session {
    fn deliver(&self, payload: bytes::Bytes) {
        self.deliver_inbox(payload);
    }
}

impl Session {
    /// Opens the client's own feeds that are not open yet: its inbox, or a dispatcher's trip
    /// feed. One that cannot be opened now (NATS away) is opened on the next resync.
    async fn subscribe_feeds(self: &Arc<Self>, feeds: &mut Feeds) {
        match self.sender.role {
            Role::Driver | Role::Rider if feeds.inbox.is_none() => {
                let me: Arc<dyn Recipient> = self.clone();
                feeds.inbox = Some(self.shared.inboxes.register(
                    self.sender.role,
                    &self.sender.id,
                    Arc::downgrade(&me),
                ));
            }
            Role::Dispatcher => {
                let view = feeds.view.get_or_insert_with(Box::default);
                if view.trips.is_none() {
                    let subject = self.subjects().trip_events_all();
                    view.trips = self.shared.nats.subscribe(subject).await.ok();
                }
            }
            _ => {}
        }
    }

    /// Reads the client's frames and its feeds until the client leaves, the session is closed,
    /// or the writer gives up on the client.
    #[allow(clippy::manual_async_fn)] // an async fn keeps its arguments twice
    fn read_loop<'a, W: Future<Output = ()>>(
        self: Arc<Self>,
        stream: &'a mut Stream,
        mut writer: Pin<&'a mut Fuse<W>>,
    ) -> impl Future<Output = ()> + 'a {
        async move {
            let limits = &self.shared.config.limits;
            let mut feeds = Feeds::default();
            let mut signal = self.shared.signal.clone();
            if signal.borrow_and_update().stopping {
                // Let in as the gateway stops: the loop's first turn closes it.
                signal.mark_changed();
            }
            Box::pin(self.subscribe_feeds(&mut feeds)).await;
            // The session state is read once this client's join is announced, so that what
            // commits after it is addressed here, not to a gateway the client just left.
            let joined = self.shared.inboxes.changes_made();
            let session = self.clone();
            self.shared.tasks.spawn(async move {
                session
                    .shared
                    .inboxes
                    .wait_announced(joined, JOIN_ANNOUNCED_WITHIN)
                    .await;
                session.resume().await;
            });

            let mut bucket = TokenBucket::new(limits.messages_per_sec, limits.burst);
            let mut strikes = 0u32;
            let mut last_seen = Instant::now();
            let mut last_ping = Instant::now();
            // The session's only timer: it wakes when a ping is due or the connection may have
            // gone idle, so an idle connection costs a wake-up per ping interval.
            let housekeeping = tokio::time::sleep(limits.ping_interval.min(limits.idle_timeout));
            tokio::pin!(housekeeping);
            loop {
                tokio::select! {
                    // A slow or gone client: the writer closed the connection.
                    () = writer.as_mut() => break,
                    frame = stream.next() => {
                        last_seen = Instant::now();
                        let text = match frame {
                            None => break,
                            Some(Err(error)) => {
                                use tokio_tungstenite::tungstenite::Error;
                                match error {
                                    Error::Capacity(_) => {
                                        metrics::counter!(m::REJECTS, "reason" => "too_large").increment(1);
                                        self.out.close(Close::TooBig);
                                    }
                                    Error::Protocol(tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake)
                                    | Error::Io(_) | Error::ConnectionClosed | Error::AlreadyClosed => self.out.close(Close::Gone),
                                    Error::Protocol(_) | Error::Utf8(_) => self.out.close(Close::ProtocolError),
                                    _ => {}
                                }
                                break;
                            }
                            Some(Ok(Message::Text(text))) => text,
                            Some(Ok(Message::Binary(_))) => {
                                metrics::counter!(m::REJECTS, "reason" => "binary").increment(1);
                                self.out.control(error_text(None, ErrorCode::InvalidMessage, "binary frames are not accepted; send JSON text"));
                                self.out.close(Close::Binary);
                                break;
                            }
                            Some(Ok(Message::Close(_))) => break,
                            Some(Ok(_)) => continue, // pings are answered by the library; pongs keep us alive
                        };
                        if !bucket.allow() {
                            strikes += 1;
                            if strikes == 1 || strikes.is_multiple_of(50) {
                                self.out.control(error_text(None, ErrorCode::RateLimited, format!("more than {} messages per second", limits.messages_per_sec)));
                            } else {
                                metrics::counter!(m::REJECTS, "reason" => "rate_limited").increment(1);
                            }
                            if strikes >= limits.max_strikes {
                                self.out.close(Close::RateLimited);
                                break;
                            }
                            continue;
                        }
                        strikes = 0;
                        Box::pin(self.handle(&text, &mut feeds)).await;
                        if self.out.is_closing() {
                            break;
                        }
                    }
                    Ok(()) = signal.changed() => {
                        if signal.borrow_and_update().stopping {
                            self.out.close(Close::GoingAway);
                            break;
                        }
                        // NATS came back: what was published meanwhile is gone, so the client gets
                        // its state afresh (and the feeds that could not be opened then, now).
                        Box::pin(self.subscribe_feeds(&mut feeds)).await;
                        self.shared.tasks.spawn(self.clone().resume());
                    }
                    message = dispatcher::next_view(&mut feeds.view) => self.on_view(message),
                    () = &mut housekeeping => {
                        if last_seen.elapsed() >= limits.idle_timeout {
                            self.out.close(Close::Idle);
                            break;
                        }
                        if last_ping.elapsed() >= limits.ping_interval {
                            last_ping = Instant::now();
                            self.out.ping();
                        }
                        let next = (last_ping + limits.ping_interval).min(last_seen + limits.idle_timeout);
                        housekeeping.as_mut().reset(next.into());
                    }
                }
                if self.out.is_closing() {
                    break;
                }
            }
        }
    }

    /// One text frame from the client: decoded, checked against the role's rights, routed.
    async fn handle(self: &Arc<Self>, text: &str, feeds: &mut Feeds) {
        let message = match client::decode(text, now_ms()) {
            Ok(message) => message,
            Err(error) => {
                tracing::debug!(%error, "undecodable client message");
                // Answer with the id if the frame had one we can read.
                let id = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
                self.out
                    .control(error_text(id, error.code(), error.client_message()));
                return;
            }
        };
        let kind = message.kind();
        match message {
            client::ClientMessage::Location(_) => self.shared.hot.location_messages.increment(1),
            _ => metrics::counter!(m::MESSAGES, "kind" => kind).increment(1),
        }
        let hello = matches!(message, client::ClientMessage::Hello { .. });
        // When a driver's progress report says it was made, to check it against where the
        // driver was then; its route below drops the time.
        let reported_at = match &message {
            client::ClientMessage::TripProgress { ts, .. } => *ts,
            _ => None,
        };
        if !hello && !rights::allowed(self.sender.role, &message) {
            metrics::counter!(m::FORBIDDEN, "kind" => kind).increment(1);
            self.out.control(error_text(
                message.id(),
                ErrorCode::Forbidden,
                format!("a {} may not send {kind}", self.sender.role.as_str()),
            ));
            return;
        }
        match rights::route(message, &self.sender) {
            Route::Hello => self.out.control(error_text(
                None,
                ErrorCode::InvalidMessage,
                "already said hello",
            )),
            Route::Location(location) => self.location(location),
            Route::Viewport { id, viewport, zoom } => {
                self.viewport(id, viewport, zoom, feeds).await
            }
            Route::GetTrip { id, trip_id } => self.enqueue(Pending::GetTrip { id, trip_id }),
            Route::Command { id, mut command } => {
                if let TripCommand::Progress { position, .. } = &mut command {
                    *position = self
                        .driver
                        .lock()
                        .expect("driver lock")
                        .position_at(reported_at);
                }
                self.enqueue(Pending::Command { id, kind, command })
            }
        }
    }

    /// Brings a (re)connecting client up to date.
    async fn resume(self: Arc<Self>) {
        let role = self.sender.role;
        if role == Role::Dispatcher {
            self.out.control(
                ServerMessage::SessionState {
                    driver: None,
                    trips: vec![],
                }
                .to_json(),
            );
            return;
        }
        let query = TripQuery::SessionState {
            role,
            id: self.sender.id.clone(),
        };
        // The trips service may be restarting: retry retryable failures for a while.
        let timeout = self.shared.config.limits.command_timeout;
        let mut backoff = kit::Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let deadline = Instant::now() + timeout * 2;
        let reply = loop {
            let reply = self.shared.bus.query(&query, timeout).await;
            let retryable = matches!(&reply, QueryReply::Error(error) if error.code.is_retryable());
            let delay = backoff.next_delay();
            if !retryable || Instant::now() + delay > deadline || self.out.is_closing() {
                break reply;
            }
            tokio::time::sleep(delay).await;
        };
        match reply {
            QueryReply::SessionState { driver, trips } => {
                self.told(&trips);
                if role == Role::Driver {
                    let mut state = self.driver.lock().expect("driver lock");
                    if let Some(d) = &driver {
                        state.online = d.online;
                        state.vehicle_class = d.vehicle_class;
                        state.capacity = d.capacity.unwrap_or(1);
                    }
                    for trip in &trips {
                        state.observe(trip, &self.sender.id);
                    }
                }
                self.out
                    .control(ServerMessage::SessionState { driver, trips }.to_json());
            }
            QueryReply::Error(error) => self.out.control(error_text(
                None,
                error.code,
                format!("session state unavailable: {}", error.message),
            )),
            other => {
                tracing::warn!(reply = ?other, "unexpected reply to a session state query");
                self.out
                    .control(error_text(None, ErrorCode::Internal, "internal error"));
            }
        }
    }

    /// A message from this client's NATS inbox: JSON of a server message, forwarded as is.
    ///
    /// Two kinds are read on their way through, and only those (told by their `type`, which
    /// the JSON of a server message always starts with): a rider's `driver_position`, kept
    /// latest per driver rather than queued; and a driver's `offer` and `trip_update`, from
    /// which the session learns the trip its positions belong to (their status, the rider who
    /// sees them, the breadcrumbs). The messages carry no other form of that, and the command
    /// replies alone would miss a trip a dispatcher assigned or a rider cancelled.
    fn deliver_inbox(&self, payload: bytes::Bytes) {
        let Ok(text) = Utf8Bytes::try_from(payload) else {
            return;
        };
        match self.sender.role {
            Role::Rider if text.starts_with("{\"type\":\"driver_position\"") => {
                if let Ok(ServerMessage::DriverPosition { driver_id, .. }) =
                    serde_json::from_str::<ServerMessage>(&text)
                {
                    self.out.latest(Key::DriverPosition(driver_id), text);
                }
                return;
            }
            Role::Driver | Role::Rider
                if text.starts_with("{\"type\":\"offer\"")
                    || text.starts_with("{\"type\":\"trip_update\"") =>
            {
                let message = serde_json::from_str::<ServerMessage>(&text);
                let (kind, trip) = match &message {
                    Ok(ServerMessage::Offer { trip, .. }) => ("offer", trip),
                    Ok(ServerMessage::TripUpdate { trip }) => ("trip_update", trip),
                    _ => {
                        self.out.control(text);
                        return;
                    }
                };
                let newer = self
                    .versions
                    .lock()
                    .expect("versions lock")
                    .tell(trip.trip_id, trip.version);
                if !newer {
                    metrics::counter!(m::STALE_TRIP_UPDATES, "kind" => kind).increment(1);
                    return;
                }
                if self.sender.role == Role::Driver {
                    let age_ms = now_ms().saturating_sub(trip.updated_at).max(0);
                    metrics::histogram!(m::TRIP_DELIVERY_AGE, "kind" => kind)
                        .record(age_ms as f64 / 1000.0);
                    self.driver
                        .lock()
                        .expect("driver lock")
                        .observe(trip, &self.sender.id);
                }
            }
            _ => {}
        }
        self.out.control(text);
    }
}
