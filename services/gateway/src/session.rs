//! One client connection, from hello to close.
//!
//! The session task reads the client's frames and its NATS subscriptions and, polled beside
//! them, the writer drains the connection's [`Outbound`] queue to the socket. Commands to the trips service run as
//! their own tasks (a few per connection at most), so a slow reply never stalls reading.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::future::{Fuse, FusedFuture, FutureExt};
use futures_util::stream::{SelectAll, SplitSink};
use futures_util::{SinkExt, StreamExt};
use protocol::bus::{
    CellCounts, Position, QueryReply, TripCommand, TripEvent, TripQuery, TripReply,
};
use protocol::client::{
    self, CellAggregate, ClientMessage, Location, MessageId, Role, ServerMessage, SessionLimits,
    VehicleStatus, VehicleView, close_code,
};
use protocol::time::{now_ms, now_us};
use protocol::token::{self, Claims};
use protocol::trip::{Actor, TripState, TripView, VehicleClass};
use protocol::{ErrorCode, codec};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use uuid::Uuid;

use crate::inbox::{Recipient, Registration};
use crate::meters as m;
use crate::outbound::{Key, Outbound};
use crate::ratelimit::TokenBucket;
use crate::{Shared, viewport};

/// After the close frame, how long the client's answer to it is waited for.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;
type Stream = futures_util::stream::SplitStream<WebSocketStream<TcpStream>>;

fn close_frame(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    }))
}

fn error_text(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> String {
    metrics::counter!(m::REJECTS, "reason" => code.as_str()).increment(1);
    ServerMessage::error(id, code, message).to_json()
}

/// What the gateway knows of a driver's situation, to label its positions and route them.
#[derive(Debug, Default)]
struct DriverSession {
    online: bool,
    vehicle_class: Option<VehicleClass>,
    capacity: u16,
    /// The trip the driver is offered or carrying out, and the version last seen of it.
    trip: Option<(Uuid, String, TripState)>,
    trip_version: i64,
    last_seq: Option<u64>,
    last_ts: i64,
}

impl DriverSession {
    fn status(&self) -> VehicleStatus {
        match (&self.trip, self.online) {
            (Some((_, _, TripState::Offered)), _) => VehicleStatus::Offered,
            (Some(_), _) => VehicleStatus::OnTrip,
            (None, true) => VehicleStatus::Available,
            (None, false) => VehicleStatus::Offline,
        }
    }

    /// Follows a trip this driver takes part in.
    fn observe(&mut self, trip: &TripView, me: &str) {
        let current = self
            .trip
            .as_ref()
            .is_some_and(|(id, ..)| *id == trip.trip_id);
        if current && trip.version < self.trip_version {
            // Updates reach us by several paths (command replies, the inbox): older ones lose.
            return;
        }
        let mine = trip.driver_id.as_deref() == Some(me);
        if mine && trip.state.holds_driver() {
            self.trip = Some((trip.trip_id, trip.rider_id.clone(), trip.state));
            self.trip_version = trip.version;
        } else if current {
            self.trip = None;
        }
    }
}

/// One authenticated client.
struct Session {
    shared: Arc<Shared>,
    role: Role,
    subject: String,
    name: Option<String>,
    out: Arc<Outbound>,
    driver: Mutex<DriverSession>,
    in_flight: AtomicUsize,
}

/// Takes a connection through its hello after the WebSocket handshake. An accepted session is
/// returned as the future that serves it; a refused one has been answered and closed.
pub async fn open(
    ws: WebSocketStream<TcpStream>,
    shared: Arc<Shared>,
) -> Option<impl Future<Output = ()> + Send + use<>> {
    let (mut sink, mut stream) = ws.split();
    let limits = &shared.config.limits;

    // Hello: the first message, within the hello timeout.
    let first = tokio::time::timeout(limits.hello_timeout, stream.next()).await;
    let text = match first {
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(Some(Ok(_))) => {
            return refuse(
                &mut sink,
                close_code::UNAUTHORIZED,
                "the first message must be hello",
                "no_hello",
            )
            .await;
        }
        Ok(_) => return None,
        Err(_) => {
            return refuse(
                &mut sink,
                close_code::HELLO_TIMEOUT,
                "no hello in time",
                "hello_timeout",
            )
            .await;
        }
    };
    let (token, versions) = match client::decode(&text, now_ms()) {
        Ok(ClientMessage::Hello { token, versions }) => (token, versions),
        _ => {
            return refuse(
                &mut sink,
                close_code::UNAUTHORIZED,
                "the first message must be hello",
                "no_hello",
            )
            .await;
        }
    };
    let claims = match token::verify(&shared.config.token_secret, &token, now_ms() / 1000) {
        Ok(claims) => claims,
        Err(error) => {
            let _ = sink
                .send(Message::text(error_text(
                    None,
                    ErrorCode::Unauthorized,
                    error.to_string(),
                )))
                .await;
            return refuse(
                &mut sink,
                close_code::UNAUTHORIZED,
                "unauthorized",
                "unauthorized",
            )
            .await;
        }
    };
    let Some(version) = protocol::negotiate_version(&versions) else {
        let message = format!(
            "none of the offered versions {versions:?} is supported; this server speaks {:?}",
            protocol::SUPPORTED_VERSIONS
        );
        let _ = sink
            .send(Message::text(error_text(
                None,
                ErrorCode::UnsupportedVersion,
                message,
            )))
            .await;
        return refuse(
            &mut sink,
            close_code::UNSUPPORTED_VERSION,
            "unsupported protocol version",
            "unsupported_version",
        )
        .await;
    };
    metrics::counter!(m::CONNECTION_ATTEMPTS, "outcome" => "accepted").increment(1);
    let Claims {
        role, sub, name, ..
    } = claims;
    let out = Arc::new(Outbound::new(limits.control_queue, limits.coalesced_queue));
    let session = Arc::new(Session {
        shared: shared.clone(),
        role,
        subject: sub,
        name,
        out: out.clone(),
        driver: Mutex::new(DriverSession::default()),
        in_flight: AtomicUsize::new(0),
    });
    let gauge = metrics::gauge!(m::CONNECTIONS, "role" => role.as_str());
    gauge.increment(1.0);
    out.control(
        ServerMessage::Welcome {
            version,
            role,
            subject: session.subject.clone(),
            limits: SessionLimits {
                max_message_bytes: limits.max_message_bytes as u32,
                messages_per_sec: limits.messages_per_sec,
            },
        }
        .to_json(),
    );
    Some(serve(session, stream, sink, gauge))
}

/// Serves an accepted session until it ends, then lets the writer finish.
///
/// The writer runs in the session's task, polled beside the reading, rather than in a task of
/// its own, which would cost every idle connection some 640 bytes more. Nothing the reading
/// awaits takes long (positions go to the publisher's queue, commands run in tasks of their
/// own; only a dispatcher's subscriptions wait for the NATS client), so the writer is never
/// held up for long, and while it waits for a slow client the reading goes on.
///
/// (Like [`write_loop`], a function returning an async block, so that its arguments are not
/// kept twice.)
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
        let writer = write_loop(
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
        session.out.close(1000, "bye");
        // The writer sends what is queued and the close frame, or gives up after its timeout;
        // then the client's last frames (its pongs, its own close frame) are read, so that closing
        // the socket does not reset it under the client before it has read the close frame.
        // (Boxed, like every brief state here, so that an idle session's task stays small.)
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

/// Closes a connection that was not let in; never a session, whatever the caller's type.
async fn refuse<T>(sink: &mut Sink, code: u16, reason: &str, outcome: &'static str) -> Option<T> {
    metrics::counter!(m::CONNECTION_ATTEMPTS, "outcome" => outcome).increment(1);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = sink.send(close_frame(code, reason)).await;
        let _ = sink.close().await;
    })
    .await;
    None
}

/// Drains the connection's outbound queue to its socket. A client that does not take a batch
/// within `write_timeout`, or leaves a control message queued behind it for longer than
/// `control_deadline`, is closed as a slow consumer. Only a writer in the middle of a write
/// can fall behind (otherwise it takes what is queued at once), so only then does it check.
///
/// (A function returning an async block rather than an async fn: an async fn's arguments are
/// kept twice in its state, once as passed and once as moved into its body.)
fn write_loop(
    mut sink: Sink,
    out: Arc<Outbound>,
    write_timeout: Duration,
    control_deadline: Duration,
) -> impl Future<Output = ()> {
    let check_every = Duration::from_secs(1).min(control_deadline);
    async move {
        loop {
            // Only the socket half, the queue and a pointer to the write in progress are kept
            // across the awaits: the batch and the write's state (its frames' futures, its timers)
            // are boxed, and the batch is gone from here (the block ends) before the write is
            // awaited. So an idle writer, polled in every idle connection's task, stays small.
            let write = {
                let batch = out.next_batch().await;
                Box::pin(write_within(
                    &mut sink,
                    &out,
                    batch,
                    write_timeout,
                    control_deadline,
                    check_every,
                ))
            };
            match write.await {
                Written::More => {}
                Written::Closing => break,
                Written::GaveUp => return,
            }
        }
        let _ = Box::pin(tokio::time::timeout(write_timeout, sink.close())).await;
    }
}

/// How writing a batch went.
enum Written {
    /// Written; more may follow.
    More,
    /// The close frame was written: the writer closes the socket and ends.
    Closing,
    /// The write failed or the client fell behind; the queue is closed with the reason.
    GaveUp,
}

/// Writes one batch within `write_timeout`, giving up early if a control message has been
/// queued behind it for longer than `control_deadline` (checked every `check_every`).
async fn write_within(
    sink: &mut Sink,
    out: &Outbound,
    batch: crate::outbound::Batch,
    write_timeout: Duration,
    control_deadline: Duration,
    check_every: Duration,
) -> Written {
    let closing = batch.close.is_some();
    let write = tokio::time::timeout(write_timeout, write_batch(sink, batch));
    let check = tokio::time::sleep(check_every);
    tokio::pin!(write, check);
    let written = loop {
        tokio::select! {
            written = &mut write => break written.ok(),
            () = &mut check => {
                if out.oldest_control_age().is_some_and(|age| age > control_deadline) {
                    break None;
                }
                check.as_mut().reset(tokio::time::Instant::now() + check_every);
            }
        }
    };
    match written {
        Some(Ok(())) if closing => Written::Closing,
        Some(Ok(())) => Written::More,
        Some(Err(_)) => {
            out.close(1011, "write failed");
            Written::GaveUp
        }
        None => {
            // The client does not read: give up on it.
            metrics::counter!(m::CLOSES, "reason" => "write_timeout").increment(1);
            out.close(close_code::SLOW_CONSUMER, "too slow to receive messages");
            Written::GaveUp
        }
    }
}

/// Writes one batch from the outbound queue, in order: control messages, the latest states,
/// vehicles, a ping, the close frame.
async fn write_batch(
    sink: &mut Sink,
    batch: crate::outbound::Batch,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    for text in batch.control {
        sink.feed(Message::Text(text)).await?;
        metrics::counter!(m::FRAMES_SENT, "kind" => "control").increment(1);
    }
    for text in batch.latest {
        sink.feed(Message::Text(text)).await?;
        metrics::counter!(m::FRAMES_SENT, "kind" => "latest").increment(1);
    }
    for chunk in batch.vehicles.chunks(500) {
        let frame = ServerMessage::Vehicles {
            vehicles: chunk.to_vec(),
        };
        sink.feed(Message::text(frame.to_json())).await?;
        metrics::counter!(m::FRAMES_SENT, "kind" => "vehicles").increment(1);
    }
    if batch.ping {
        sink.feed(Message::Ping(Default::default())).await?;
    }
    if let Some(close) = &batch.close {
        metrics::counter!(m::CLOSES, "reason" => close.reason).increment(1);
        sink.feed(close_frame(close.code, close.reason)).await?;
    }
    sink.flush().await
}

/// The NATS subscriptions feeding one session.
#[derive(Default)]
struct Feeds {
    /// This client's messages, routed by [`crate::inbox`].
    inbox: Option<Registration>,
    /// A dispatcher's feeds. Boxed, and `None` for drivers and riders: they are most sessions,
    /// and these would cost each some 400 bytes (an empty `SelectAll` already allocates).
    view: Option<Box<ViewFeeds>>,
}

/// A dispatcher's feeds: every trip's events, and the viewport's vehicles cell by cell or
/// counts region by region.
#[derive(Default)]
struct ViewFeeds {
    trips: Option<async_nats::Subscriber>,
    cells: SelectAll<async_nats::Subscriber>,
    aggregates: SelectAll<async_nats::Subscriber>,
}

/// A message from one of a dispatcher's feeds.
enum ViewMessage {
    Trip(async_nats::Message),
    Vehicle(async_nats::Message),
    Counts(async_nats::Message),
}

/// The next message from a dispatcher's feeds; never, for a session without them. One select
/// branch for all three, so that every other session's select holds one future fewer.
async fn next_view(view: &mut Option<Box<ViewFeeds>>) -> ViewMessage {
    let Some(view) = view else {
        return std::future::pending().await;
    };
    std::future::poll_fn(|cx| {
        if let Some(trips) = &mut view.trips {
            match trips.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => return Poll::Ready(ViewMessage::Trip(message)),
                // Ended (the NATS client closed it): opened again on the next resync.
                Poll::Ready(None) => view.trips = None,
                Poll::Pending => {}
            }
        }
        // An empty `SelectAll` is ready with `None`: nothing to wait for until a viewport adds
        // subscriptions, which happens in the session's own loop.
        if let Poll::Ready(Some(message)) = view.cells.poll_next_unpin(cx) {
            return Poll::Ready(ViewMessage::Vehicle(message));
        }
        if let Poll::Ready(Some(message)) = view.aggregates.poll_next_unpin(cx) {
            return Poll::Ready(ViewMessage::Counts(message));
        }
        Poll::Pending
    })
    .await
}

impl Recipient for Session {
    fn deliver(&self, payload: bytes::Bytes) {
        self.deliver_inbox(payload);
    }
}

impl Session {
    fn subjects(&self) -> &protocol::Subjects {
        &self.shared.config.subjects
    }

    /// Opens the client's own feeds that are not open yet: its inbox, or a dispatcher's trip
    /// feed. One that cannot be opened now (NATS away) is opened on the next resync.
    async fn subscribe_feeds(self: &Arc<Self>, feeds: &mut Feeds) {
        let nats = &self.shared.nats;
        match self.role {
            Role::Driver | Role::Rider if feeds.inbox.is_none() => {
                let me: Arc<dyn Recipient> = self.clone();
                feeds.inbox = Some(self.shared.inboxes.register(
                    self.role,
                    &self.subject,
                    Arc::downgrade(&me),
                ));
            }
            Role::Dispatcher => {
                let view = feeds.view.get_or_insert_with(Box::default);
                if view.trips.is_none() {
                    view.trips = nats.subscribe(self.subjects().trip_events_all()).await.ok();
                }
            }
            _ => {}
        }
    }

    /// Reads the client's frames and its feeds until the client leaves, the session is closed,
    /// or the writer gives up on the client.
    ///
    /// (A function returning an async block, so that its arguments are not kept twice.)
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
            tokio::spawn(self.clone().resume());

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
                                        self.out.close(1009, "message too big");
                                    }
                                    Error::Protocol(_) | Error::Utf8(_) => self.out.close(1002, "protocol error"),
                                    _ => {}
                                }
                                break;
                            }
                            Some(Ok(Message::Text(text))) => text,
                            Some(Ok(Message::Binary(_))) => {
                                metrics::counter!(m::REJECTS, "reason" => "binary").increment(1);
                                self.out.control(error_text(None, ErrorCode::InvalidMessage, "binary frames are not accepted; send JSON text"));
                                self.out.close(1003, "binary frames are not accepted");
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
                                self.out.close(close_code::RATE_LIMITED, "rate limit exceeded");
                                break;
                            }
                            continue;
                        }
                        strikes = 0;
                        // Boxed: handling is brief, and inline its state would enlarge every idle
                        // connection's.
                        Box::pin(self.clone().handle(&text, &mut feeds)).await;
                        if self.out.is_closing() {
                            break;
                        }
                    }
                    Ok(()) = signal.changed() => {
                        if signal.borrow_and_update().stopping {
                            self.out.close(1001, "server going away");
                            break;
                        }
                        // NATS came back: what was published meanwhile is gone, so the client gets
                        // its state afresh (and the feeds that could not be opened then, now).
                        Box::pin(self.subscribe_feeds(&mut feeds)).await;
                        tokio::spawn(self.clone().resume());
                    }
                    message = next_view(&mut feeds.view) => match message {
                        ViewMessage::Trip(message) => {
                            if let Ok(event) = codec::decode::<TripEvent>(&message.payload) {
                                self.out.latest(Key::Trip(event.trip.trip_id), ServerMessage::TripUpdate { trip: event.trip }.to_json());
                            }
                    }
                        ViewMessage::Vehicle(message) => {
                            if let Ok(p) = codec::decode::<Position>(&message.payload) {
                                self.out.vehicle(VehicleView { driver_id: p.driver_id, lat: p.lat, lng: p.lng, heading: p.heading, status: p.status, ts: p.ts });
                            }
                    }
                        ViewMessage::Counts(message) => {
                            if let Ok(counts) = codec::decode::<CellCounts>(&message.payload) {
                                let cells = counts.cells.iter().map(|c| CellAggregate {
                                    cell: format!("{:x}", c.cell),
                                    vehicles: c.vehicles,
                                    available: c.available,
                                    open_requests: c.open_requests,
                                }).collect();
                                self.out.latest(Key::Aggregates(counts.region), ServerMessage::CellAggregates { resolution: counts.resolution, cells }.to_json());
                            }
                    }
                    },
                    () = &mut housekeeping => {
                        if last_seen.elapsed() >= limits.idle_timeout {
                            metrics::counter!(m::CLOSES, "reason" => "idle").increment(1);
                            self.out.close(1001, "idle timeout");
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

    /// Brings a (re)connecting client up to date.
    async fn resume(self: Arc<Self>) {
        if self.role == Role::Dispatcher {
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
            role: self.role,
            id: self.subject.clone(),
        };
        // The trips service may be restarting: retry retryable failures for a while.
        let mut delay = Duration::from_millis(100);
        let deadline = Instant::now() + self.shared.config.limits.command_timeout * 2;
        let reply = loop {
            let reply = self
                .shared
                .bus
                .request::<_, QueryReply>(
                    self.subjects().trip_queries(),
                    &query,
                    self.shared.config.limits.command_timeout,
                )
                .await;
            let retryable = match &reply {
                Ok(QueryReply::Error(error)) => error.code.is_retryable(),
                Err(error) => error.code().is_retryable(),
                Ok(_) => false,
            };
            if !retryable || Instant::now() + delay > deadline || self.out.is_closing() {
                break reply;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        };
        match reply {
            Ok(QueryReply::SessionState { driver, trips }) => {
                if self.role == Role::Driver {
                    let mut state = self.driver.lock().expect("driver lock");
                    if let Some(d) = &driver {
                        state.online = d.online;
                        state.vehicle_class = d.vehicle_class;
                        state.capacity = d.capacity.unwrap_or(1);
                    }
                    for trip in &trips {
                        state.observe(trip, &self.subject);
                    }
                }
                self.out
                    .control(ServerMessage::SessionState { driver, trips }.to_json());
            }
            Ok(QueryReply::Error(error)) => self.out.control(error_text(
                None,
                error.code,
                format!("session state unavailable: {}", error.message),
            )),
            Ok(_) => self
                .out
                .control(error_text(None, ErrorCode::Internal, "unexpected reply")),
            Err(error) => self.out.control(error_text(
                None,
                error.code(),
                format!("session state unavailable: {error}"),
            )),
        }
    }

    /// A message from this client's NATS inbox: JSON of a server message, forwarded as is.
    fn deliver_inbox(&self, payload: bytes::Bytes) {
        let Ok(text) = Utf8Bytes::try_from(payload) else {
            return;
        };
        if self.role == Role::Rider && text.starts_with("{\"type\":\"driver_position\"") {
            // Latest position per driver; older ones are worthless to a slow client.
            let driver = serde_json::from_str::<ServerMessage>(&text)
                .ok()
                .and_then(|m| match m {
                    ServerMessage::DriverPosition { driver_id, .. } => Some(driver_id),
                    _ => None,
                });
            if let Some(driver) = driver {
                self.out.latest(Key::DriverPosition(driver), text);
            }
            return;
        }
        if self.role == Role::Driver
            && let Ok(ServerMessage::Offer { trip, .. } | ServerMessage::TripUpdate { trip }) =
                serde_json::from_str::<ServerMessage>(&text)
        {
            self.driver
                .lock()
                .expect("driver lock")
                .observe(&trip, &self.subject);
        }
        self.out.control(text);
    }

    async fn handle(self: Arc<Self>, text: &str, feeds: &mut Feeds) {
        let message = match client::decode(text, now_ms()) {
            Ok(message) => message,
            Err(error) => {
                // Answer with the id if the frame had one we can read.
                let id = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
                self.out
                    .control(error_text(id, error.code(), error.to_string()));
                return;
            }
        };
        metrics::counter!(m::MESSAGES, "kind" => message.kind()).increment(1);
        let id = message.id();
        let allowed = match &message {
            ClientMessage::Hello { .. } => {
                self.out.control(error_text(
                    None,
                    ErrorCode::InvalidMessage,
                    "already said hello",
                ));
                return;
            }
            ClientMessage::Location(_)
            | ClientMessage::GoOnline { .. }
            | ClientMessage::GoOffline { .. }
            | ClientMessage::AcceptOffer { .. }
            | ClientMessage::DeclineOffer { .. }
            | ClientMessage::TripProgress { .. } => self.role == Role::Driver,
            ClientMessage::RequestRide { .. } => self.role == Role::Rider,
            ClientMessage::SubscribeViewport { .. } | ClientMessage::AssignDriver { .. } => {
                self.role == Role::Dispatcher
            }
            ClientMessage::CancelTrip { .. } | ClientMessage::GetTrip { .. } => true,
        };
        if !allowed {
            metrics::counter!(m::FORBIDDEN, "kind" => message.kind()).increment(1);
            self.out.control(error_text(
                id,
                ErrorCode::Forbidden,
                format!("a {} may not send {}", self.role.as_str(), message.kind()),
            ));
            return;
        }
        match message {
            ClientMessage::Location(location) => self.location(location).await,
            ClientMessage::SubscribeViewport { id, viewport, zoom } => {
                self.viewport(id, viewport, zoom, feeds).await
            }
            command => self.spawn_command(command),
        }
    }

    async fn location(&self, location: Location) {
        let shared = &self.shared;
        let (region, cell) = match shared.config.geo.locate(location.point()) {
            Ok(found) => found,
            Err(error) => {
                self.out
                    .control(error_text(location.id, error.code(), error.to_string()));
                return;
            }
        };
        let (status, class, capacity, trip) = {
            let mut state = self.driver.lock().expect("driver lock");
            let stale = state.last_seq.is_some_and(|seq| location.seq <= seq)
                || location.ts < state.last_ts;
            if stale {
                drop(state);
                metrics::counter!(m::POSITIONS_DROPPED, "reason" => "stale").increment(1);
                if location.id.is_some() {
                    self.out.control(error_text(
                        location.id,
                        ErrorCode::StaleUpdate,
                        "older than an update already accepted",
                    ));
                }
                return;
            }
            state.last_seq = Some(location.seq);
            state.last_ts = location.ts;
            (
                state.status(),
                state.vehicle_class,
                state.capacity,
                state.trip.clone(),
            )
        };
        if shared.nats.connection_state() != async_nats::connection::State::Connected {
            metrics::counter!(m::POSITIONS_DROPPED, "reason" => "nats_down").increment(1);
            if location.id.is_some() {
                self.out.control(error_text(
                    location.id,
                    ErrorCode::Unavailable,
                    "bus unavailable; positions are dropped until it returns",
                ));
            }
            return;
        }
        let on_trip = trip
            .as_ref()
            .filter(|(_, _, state)| *state != TripState::Offered);
        let position = Position {
            driver_id: self.subject.clone(),
            lat: location.lat,
            lng: location.lng,
            heading: location.heading,
            speed: location.speed,
            accuracy: location.accuracy,
            ts: location.ts,
            seq: location.seq,
            status,
            vehicle_class: class,
            capacity,
            trip_id: on_trip.map(|(id, ..)| *id),
            received_us: now_us(),
        };
        let payload: bytes::Bytes = codec::encode(&position).into();
        let subjects = self.subjects();
        let publisher = &shared.publisher;
        let mut published = publisher.publish(subjects.location(region, cell), payload.clone());
        if let Some((trip_id, rider_id, _)) = on_trip {
            published &= publisher.publish(subjects.breadcrumbs(), payload);
            let for_rider = ServerMessage::DriverPosition {
                trip_id: *trip_id,
                driver_id: self.subject.clone(),
                lat: location.lat,
                lng: location.lng,
                heading: location.heading,
                ts: location.ts,
            };
            published &= publisher.publish(
                subjects.user(Role::Rider, rider_id),
                for_rider.to_json().into(),
            );
        }
        if published {
            metrics::counter!(m::POSITIONS_PUBLISHED).increment(1);
            if let Some(id) = location.id {
                self.out.control(
                    ServerMessage::Ack {
                        id,
                        trip: None,
                        changed: true,
                    }
                    .to_json(),
                );
            }
        } else {
            metrics::counter!(m::POSITIONS_DROPPED, "reason" => "backlog").increment(1);
            if location.id.is_some() {
                self.out.control(error_text(
                    location.id,
                    ErrorCode::Unavailable,
                    "the gateway is behind with publishing; this position was dropped",
                ));
            }
        }
    }

    async fn viewport(&self, id: u64, viewport: client::Viewport, zoom: f32, feeds: &mut Feeds) {
        let config = &self.shared.config;
        let nats = &self.shared.nats;
        let view = feeds.view.get_or_insert_with(Box::default);
        view.cells = SelectAll::new();
        view.aggregates = SelectAll::new();
        let detailed = if zoom >= config.limits.detail_zoom {
            viewport::cells(
                &viewport,
                config.geo.cell_res,
                config.limits.max_viewport_cells,
            )
        } else {
            None
        };
        match detailed {
            Some(cells) => {
                for cell in cells {
                    let subject = self
                        .subjects()
                        .location(config.geo.region_of_cell(cell), cell);
                    if let Ok(sub) = nats.subscribe(subject).await {
                        view.cells.push(sub);
                    }
                }
            }
            None => {
                let Some(regions) = viewport::cells(
                    &viewport,
                    config.geo.region_res,
                    config.limits.max_viewport_regions,
                ) else {
                    self.out.control(error_text(
                        Some(id),
                        ErrorCode::InvalidField,
                        "viewport too large; zoom in",
                    ));
                    return;
                };
                for region in regions {
                    if let Ok(sub) = nats.subscribe(self.subjects().cell_counts(region)).await {
                        view.aggregates.push(sub);
                    }
                }
            }
        }
        self.out.control(
            ServerMessage::Ack {
                id,
                trip: None,
                changed: true,
            }
            .to_json(),
        );
    }

    fn spawn_command(self: Arc<Self>, message: ClientMessage) {
        let id = message.id();
        if self.in_flight.fetch_add(1, Ordering::SeqCst)
            >= self.shared.config.limits.max_commands_in_flight
        {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.out.control(error_text(
                id,
                ErrorCode::RateLimited,
                "too many commands in flight; wait for answers",
            ));
            return;
        }
        tokio::spawn(async move {
            let kind = message.kind();
            let started = Instant::now();
            let answer = self.command(message).await;
            metrics::histogram!(m::COMMAND_DURATION, "kind" => kind).record(started.elapsed());
            self.out.control(answer);
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Whether this client may see `trip`: its rider, its driver, or any dispatcher.
    fn takes_part(&self, trip: &TripView) -> bool {
        match self.role {
            Role::Rider => trip.rider_id == self.subject,
            Role::Driver => trip.driver_id.as_deref() == Some(self.subject.as_str()),
            Role::Dispatcher => true,
        }
    }

    /// Where a trip stands, for a client that may have missed its updates.
    async fn get_trip(&self, id: MessageId, trip_id: Uuid) -> String {
        let reply = self
            .shared
            .bus
            .request::<_, QueryReply>(
                self.subjects().trip_queries(),
                &TripQuery::Trip { trip_id },
                self.shared.config.limits.command_timeout,
            )
            .await;
        match reply {
            Ok(QueryReply::Trip(Some(trip))) if self.takes_part(&trip) => ServerMessage::Ack {
                id,
                trip: Some(trip),
                changed: false,
            }
            .to_json(),
            Ok(QueryReply::Trip(found)) => {
                if found.is_some() {
                    metrics::counter!(m::FORBIDDEN, "kind" => "get_trip").increment(1);
                }
                // Someone else's trip answers like a missing one: nothing to learn from it.
                error_text(Some(id), ErrorCode::NotFound, "no such trip")
            }
            Ok(QueryReply::Error(error)) => error_text(Some(id), error.code, error.message),
            Ok(_) => error_text(Some(id), ErrorCode::Internal, "unexpected reply"),
            Err(error) => error_text(Some(id), error.code(), error.to_string()),
        }
    }

    /// Carries out a command and returns the answer for the client.
    async fn command(&self, message: ClientMessage) -> String {
        let id = message.id().expect("commands carry an id");
        if let ClientMessage::GetTrip { trip_id, .. } = message {
            return self.get_trip(id, trip_id).await;
        }
        let me = self.subject.clone();
        let actor = match self.role {
            Role::Driver => Actor::Driver,
            Role::Rider => Actor::Rider,
            Role::Dispatcher => Actor::Dispatcher,
        };
        let command = match message {
            ClientMessage::GoOnline {
                vehicle_class,
                capacity,
                ..
            } => TripCommand::SetDriverStatus {
                driver_id: me,
                online: true,
                vehicle_class: Some(vehicle_class),
                capacity: Some(capacity),
                name: self.name.clone(),
            },
            ClientMessage::GoOffline { .. } => TripCommand::SetDriverStatus {
                driver_id: me,
                online: false,
                vehicle_class: None,
                capacity: None,
                name: None,
            },
            ClientMessage::AcceptOffer { trip_id, .. } => TripCommand::AnswerOffer {
                trip_id,
                driver_id: me,
                accept: true,
            },
            ClientMessage::DeclineOffer { trip_id, .. } => TripCommand::AnswerOffer {
                trip_id,
                driver_id: me,
                accept: false,
            },
            ClientMessage::TripProgress { trip_id, stage, .. } => TripCommand::Progress {
                trip_id,
                driver_id: me,
                stage,
                position: None,
            },
            ClientMessage::RequestRide {
                pickup,
                dropoff,
                vehicle_class,
                min_capacity,
                idempotency_key,
                ..
            } => TripCommand::CreateTrip {
                rider_id: me,
                idempotency_key,
                pickup,
                dropoff,
                vehicle_class,
                min_capacity,
            },
            ClientMessage::CancelTrip {
                trip_id, reason, ..
            } => TripCommand::Cancel {
                trip_id,
                actor,
                actor_id: me,
                reason,
            },
            ClientMessage::AssignDriver {
                trip_id, driver_id, ..
            } => TripCommand::Assign {
                trip_id,
                driver_id,
                dispatcher_id: me,
            },
            ClientMessage::Hello { .. }
            | ClientMessage::Location(_)
            | ClientMessage::SubscribeViewport { .. }
            | ClientMessage::GetTrip { .. } => {
                unreachable!("handled before commands")
            }
        };
        let online_change = match &command {
            TripCommand::SetDriverStatus {
                online,
                vehicle_class,
                capacity,
                ..
            } => Some((*online, *vehicle_class, *capacity)),
            _ => None,
        };
        if self.shared.nats.connection_state() != async_nats::connection::State::Connected {
            return error_text(
                Some(id),
                ErrorCode::Unavailable,
                "bus unavailable; retry shortly",
            );
        }
        let reply = self
            .shared
            .bus
            .request::<_, TripReply>(
                self.subjects().trip_commands(),
                &command,
                self.shared.config.limits.command_timeout,
            )
            .await;
        match reply {
            Ok(Ok(outcome)) => {
                if let Some((online, class, capacity)) = online_change {
                    let mut state = self.driver.lock().expect("driver lock");
                    state.online = online;
                    if class.is_some() {
                        state.vehicle_class = class;
                    }
                    if let Some(capacity) = capacity {
                        state.capacity = capacity;
                    }
                }
                if self.role == Role::Driver
                    && let Some(trip) = &outcome.trip
                {
                    self.driver
                        .lock()
                        .expect("driver lock")
                        .observe(trip, &self.subject);
                }
                ServerMessage::Ack {
                    id,
                    trip: outcome.trip,
                    changed: outcome.changed,
                }
                .to_json()
            }
            Ok(Err(error)) => error_text(Some(id), error.code, error.message),
            Err(error) => error_text(Some(id), error.code(), error.to_string()),
        }
    }
}
