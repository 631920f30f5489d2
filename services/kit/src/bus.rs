//! NATS connections and typed request/reply between services.

use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event};
use protocol::bus::{CommandError, QueryReply, TripCommand, TripQuery, TripReply};
use protocol::{ErrorCode, Subjects, codec};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How often the client pings its server. A server that answers none of three pings in a row
/// is given up for another: a partitioned node is left after about 15 s, not the three minutes
/// of the client's default interval.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// How many messages a subscription buffers before NATS drops for it (a slow consumer).
pub const SUBSCRIPTION_CAPACITY: usize = 1 << 16;
/// How many outgoing messages may queue before publishing waits.
pub const CLIENT_CAPACITY: usize = 1 << 14;

/// The header that carries a request's deadline, in Unix milliseconds: past it the requester
/// has stopped waiting and told its own caller the outcome is unknown.
pub const DEADLINE_HEADER: &str = "Dispatch-Deadline";

/// How far past a request's deadline it is still carried out. Hosts' clocks must agree within
/// this (NTP keeps them within milliseconds); beyond it a request is dropped unanswered.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// Whether a request arrived after its requester gave up on it: a request that waited in a
/// disconnected client's buffer (or a partitioned socket) and reached the server after the
/// link healed. Acting on it would carry out an intent its sender has since moved on from (a
/// driver's accept, sent on a connection the driver left long ago). A request with no deadline
/// header is never stale.
pub fn stale(message: &async_nats::Message, now_ms: i64) -> bool {
    let deadline = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(DEADLINE_HEADER))
        .and_then(|value| value.as_str().parse::<i64>().ok());
    deadline.is_some_and(|deadline| now_ms > deadline + DEADLINE_SLACK.as_millis() as i64)
}

/// Why a request to another service failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("no service is listening on {0}")]
    NoResponders(String),
    #[error("no reply from {0} in time")]
    Timeout(String),
    #[error("nats: {0}")]
    Nats(String),
    #[error("reply is malformed: {0}")]
    Malformed(#[from] codec::CodecError),
}

impl BusError {
    /// What a client is told: every bus failure is retryable.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Timeout(_) => ErrorCode::Timeout,
            Self::Malformed(_) => ErrorCode::Internal,
            Self::NoResponders(_) | Self::Nats(_) => ErrorCode::Unavailable,
        }
    }

    /// What a caller, and through it a client, is told: the code and a message written for
    /// people. The detail (subjects, the NATS client's own error) goes to the log only.
    pub fn into_command_error(self) -> CommandError {
        tracing::debug!(error = %self, "request over the bus failed");
        let message = match &self {
            Self::NoResponders(_) => "the service is not running right now; retry shortly",
            Self::Timeout(_) => "the service did not answer in time; retry",
            Self::Nats(_) => "the bus is unavailable; retry shortly",
            Self::Malformed(_) => "internal error",
        };
        CommandError::new(self.code(), message)
    }
}

/// The servers of a comma-separated list of NATS URLs (the client tries them all and learns
/// the rest of a cluster from whichever answers).
pub fn servers(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Connects to NATS as `name`, retrying in the background until the server answers, counting
/// connection events and slow-consumer drops in `{service}_nats_events_total`.
pub async fn connect(url: &str, service: &'static str) -> anyhow::Result<Client> {
    let events = format!("{service}_nats_events_total");
    let _ = crate::telemetry::metrics_handle();
    metrics::describe_counter!(
        events.clone(),
        "NATS connection events (connected, disconnected, slow_consumer...), by event"
    );
    metrics::counter!(events.clone(), "event" => "connected").increment(0);
    metrics::describe_histogram!(
        "bus_request_duration_seconds",
        "Time for a request over NATS to be answered"
    );
    let client = ConnectOptions::new()
        .name(service)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .ping_interval(PING_INTERVAL)
        .client_capacity(CLIENT_CAPACITY)
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let kind = match &event {
                    Event::Connected => "connected",
                    Event::Disconnected => "disconnected",
                    Event::SlowConsumer(_) => "slow_consumer",
                    Event::ServerError(_) => "server_error",
                    Event::ClientError(_) => "client_error",
                    _ => "other",
                };
                match &event {
                    Event::Connected => tracing::info!("nats connected"),
                    Event::Disconnected => tracing::warn!("nats disconnected"),
                    other => tracing::warn!(event = %other, "nats event"),
                }
                metrics::counter!(events, "event" => kind).increment(1);
            }
        })
        .connect(servers(url))
        .await?;
    Ok(client)
}

/// A NATS client with the deployment's subjects.
#[derive(Debug, Clone)]
pub struct Bus {
    pub client: Client,
    pub subjects: Subjects,
}

impl Bus {
    pub fn new(client: Client, subjects: Subjects) -> Self {
        Self { client, subjects }
    }

    /// Publishes an encoded payload; a full or disconnected client counts as unavailable.
    pub async fn publish<T: Serialize>(&self, subject: String, value: &T) -> Result<(), BusError> {
        self.client
            .publish(subject, codec::encode(value).into())
            .await
            .map_err(|err| BusError::Nats(err.to_string()))
    }

    /// Sends `request` to `subject` and decodes the reply, giving up after `timeout`.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        subject: String,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, BusError> {
        let started = Instant::now();
        let mut headers = async_nats::HeaderMap::new();
        let deadline = protocol::time::now_ms() + timeout.as_millis() as i64;
        headers.insert(DEADLINE_HEADER, deadline.to_string().as_str());
        let sent = self.client.request_with_headers(
            subject.clone(),
            headers,
            codec::encode(request).into(),
        );
        let reply = match tokio::time::timeout(timeout, sent).await {
            Err(_) => return Err(BusError::Timeout(subject)),
            Ok(Err(err)) => {
                return Err(match err.kind() {
                    async_nats::RequestErrorKind::NoResponders => BusError::NoResponders(subject),
                    async_nats::RequestErrorKind::TimedOut => BusError::Timeout(subject),
                    _ => BusError::Nats(err.to_string()),
                });
            }
            Ok(Ok(reply)) => reply,
        };
        metrics::histogram!("bus_request_duration_seconds").record(started.elapsed());
        Ok(codec::decode(&reply.payload)?)
    }

    /// Sends `command` to the trips service; a bus failure becomes the reply's error.
    pub async fn command(&self, command: &TripCommand, timeout: Duration) -> TripReply {
        self.request::<_, TripReply>(self.subjects.trip_commands(), command, timeout)
            .await
            .map_err(BusError::into_command_error)
            .and_then(|reply| reply)
    }

    /// Asks the trips service `query`; a bus failure becomes [`QueryReply::Error`].
    pub async fn query(&self, query: &TripQuery, timeout: Duration) -> QueryReply {
        self.request::<_, QueryReply>(self.subjects.trip_queries(), query, timeout)
            .await
            .unwrap_or_else(|error| QueryReply::Error(error.into_command_error()))
    }
}

/// Tells when the server has read what a client published.
///
/// `flush` only hands the bytes to the kernel: on a connection to a server that vanished
/// without closing it, they are gone although `flush` succeeded. A request to an echo on the
/// same client is answered only after the server has read everything sent before it on that
/// connection (NATS keeps one connection's messages in order); a reconnect in between fails the
/// receipt, since what went out before may have died with the old connection.
#[derive(Debug, Clone)]
pub struct Receipts {
    client: Client,
    echo: String,
}

/// Where a client's connection stood when publishing began (see [`Receipts::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark(u64);

impl Receipts {
    /// Starts the echo, which answers on `client` until the client closes.
    pub async fn start(client: Client) -> anyhow::Result<Self> {
        use futures_util::StreamExt;
        let echo = client.new_inbox();
        let mut requests = client.subscribe(echo.clone()).await?;
        let answering = client.clone();
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    let _ = answering.publish(reply, bytes::Bytes::new()).await;
                }
            }
        });
        Ok(Self { client, echo })
    }

    /// The client it vouches for; publish on this one.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Taken before publishing what [`Receipts::confirm`] is to vouch for.
    pub fn mark(&self) -> Mark {
        Mark(connects(&self.client))
    }

    /// Returns once the server has read everything published on the client since `mark`, or
    /// fails (then publish it all again).
    pub async fn confirm(&self, mark: Mark, timeout: Duration) -> Result<(), BusError> {
        let asked = self.client.request(self.echo.clone(), bytes::Bytes::new());
        match tokio::time::timeout(timeout, asked).await {
            Err(_) => return Err(BusError::Timeout(self.echo.clone())),
            Ok(Err(error)) => return Err(BusError::Nats(error.to_string())),
            Ok(Ok(_)) => {}
        }
        if connects(&self.client) != mark.0 {
            return Err(BusError::Nats(
                "reconnected while publishing: what went out before may be lost".to_owned(),
            ));
        }
        Ok(())
    }
}

/// How many times `client` has connected: it changes on every reconnect.
pub fn connects(client: &Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Keeps readiness condition `name` equal to "the NATS client is connected", until `stop`.
pub async fn track_readiness(
    client: Client,
    readiness: crate::Readiness,
    name: &'static str,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => readiness.set(
                name,
                client.connection_state() == async_nats::connection::State::Connected,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use async_nats::{HeaderMap, Message};

    use super::{DEADLINE_HEADER, DEADLINE_SLACK, stale};

    fn request(deadline: Option<&str>) -> Message {
        let headers = deadline.map(|value| {
            let mut headers = HeaderMap::new();
            headers.insert(DEADLINE_HEADER, value);
            headers
        });
        Message {
            subject: "trips.commands".into(),
            reply: Some("_INBOX.1".into()),
            payload: bytes::Bytes::new(),
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn a_request_is_stale_only_past_its_deadline_and_the_clock_allowance() {
        let slack = DEADLINE_SLACK.as_millis() as i64;
        let deadline = 1_000_000;
        let late = request(Some("1000000"));
        assert!(!stale(&late, deadline));
        assert!(!stale(&late, deadline + slack));
        assert!(stale(&late, deadline + slack + 1));
        // Without a deadline (or with one that is not a number) nothing is dropped.
        assert!(!stale(&request(None), i64::MAX));
        assert!(!stale(&request(Some("soon")), i64::MAX));
    }
}
