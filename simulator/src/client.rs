//! One WebSocket session speaking the client protocol.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::{SinkExt, StreamExt};
use protocol::client::ServerMessage;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A connection to a gateway, and how long the client waits to hear from it.
///
/// With a liveness deadline, a gateway silent for that long is taken for dead and the
/// connection fails, as a phone app must do: a gateway cut off by the network closes nothing,
/// and the socket would otherwise wait for the kernel's retransmission timeout (minutes). The
/// client pings the gateway after a third of the deadline without a word from it, so a quiet
/// but live gateway always has something to say.
#[derive(Debug)]
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    liveness: Option<Duration>,
    heard: Instant,
    pinged: Instant,
}

/// The chunk a read asks the socket for: server messages are a few hundred bytes.
const READ_BUFFER_BYTES: usize = 4096;

/// Opens a TCP connection to the gateway in `url`, from `source` when given: several loopback
/// source addresses lift the limit of about 64k ephemeral ports per (source, destination) pair.
async fn open(
    url: &str,
    source: Option<IpAddr>,
) -> anyhow::Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
    let uri: Uri = url.parse()?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("{url} names no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let target = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host} does not resolve"))?;
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    // Each read zero-fills a buffer of this size first: the default (128 KiB) made that
    // zero-filling most of the simulator's CPU. Larger frames are still read whole.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        url,
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await?;
    Ok(ws)
}

/// Connects (from `source` when given) and says hello; returns the socket after the welcome.
/// With `liveness`, the connection fails once the gateway has been silent that long.
pub async fn connect(
    url: &str,
    token: &str,
    source: Option<IpAddr>,
    liveness: Option<Duration>,
) -> anyhow::Result<Ws> {
    let stream = tokio::time::timeout(Duration::from_secs(10), open(url, source)).await??;
    let mut ws = Ws {
        stream,
        liveness,
        heard: Instant::now(),
        pinged: Instant::now(),
    };
    let hello = serde_json::json!({"type": "hello", "token": token, "versions": protocol::SUPPORTED_VERSIONS});
    ws.stream.send(Message::text(hello.to_string())).await?;
    match tokio::time::timeout(Duration::from_secs(10), next(&mut ws)).await?? {
        Some(ServerMessage::Welcome { .. }) => Ok(ws),
        other => anyhow::bail!("no welcome: {other:?}"),
    }
}

/// The next server message; `None` when the connection closed. Fails when the gateway has
/// been silent past the liveness deadline (pinging it on the way).
pub async fn next(ws: &mut Ws) -> anyhow::Result<Option<ServerMessage>> {
    loop {
        let frame = match ws.liveness {
            None => ws.stream.next().await,
            Some(liveness) => {
                let dead_at = ws.heard + liveness;
                let ping_at = ws.heard.max(ws.pinged) + liveness / 3;
                tokio::select! {
                    frame = ws.stream.next() => frame,
                    _ = tokio::time::sleep_until(ping_at) => {
                        ws.pinged = Instant::now();
                        ws.stream.send(Message::Ping(Default::default())).await?;
                        continue;
                    }
                    _ = tokio::time::sleep_until(dead_at) => {
                        anyhow::bail!("the gateway has been silent for {liveness:?}")
                    }
                }
            }
        };
        ws.heard = Instant::now();
        match frame {
            None => return Ok(None),
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(Message::Text(text))) => return Ok(Some(serde_json::from_str(&text)?)),
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(_)) => continue,
        }
    }
}

pub async fn send(ws: &mut Ws, value: serde_json::Value) -> anyhow::Result<()> {
    ws.stream.send(Message::text(value.to_string())).await?;
    Ok(())
}

/// Exponential backoff with a cap, for reconnecting.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use protocol::client::{Role, ServerMessage, SessionLimits};
    use tokio_tungstenite::tungstenite::Message;

    /// A gateway that welcomes one client, then either keeps reading (so it answers pings) or
    /// goes silent, reading nothing, as one cut off by the network. Returns its URL.
    async fn gateway(answers: bool) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let _hello = ws.next().await;
            let welcome = ServerMessage::Welcome {
                version: 1,
                role: Role::Rider,
                subject: "r1".into(),
                limits: SessionLimits {
                    max_message_bytes: 16_384,
                    messages_per_sec: 50,
                },
            };
            ws.send(Message::text(welcome.to_json())).await.unwrap();
            if answers {
                // Reading answers the client's pings.
                while let Some(Ok(_)) = ws.next().await {}
            } else {
                std::future::pending::<()>().await;
            }
        });
        url
    }

    #[tokio::test]
    async fn a_silent_gateway_is_taken_for_dead_after_the_liveness_deadline() {
        let liveness = Duration::from_secs(1);
        let mut ws = super::connect(&gateway(false).await, "t", None, Some(liveness))
            .await
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), super::next(&mut ws))
            .await
            .expect("the deadline ends the wait");
        assert!(outcome.is_err(), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_quiet_live_gateway_is_kept_by_the_clients_pings() {
        let liveness = Duration::from_secs(1);
        let mut ws = super::connect(&gateway(true).await, "t", None, Some(liveness))
            .await
            .unwrap();
        // Three deadlines with no message: the pongs keep the connection.
        let outcome = tokio::time::timeout(liveness * 3, super::next(&mut ws)).await;
        assert!(outcome.is_err(), "the connection ended: {outcome:?}");
    }

    #[tokio::test]
    async fn connections_come_from_the_chosen_loopback_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let source: IpAddr = "127.0.0.7".parse().unwrap();
        let accept = tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            let _ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            peer
        });
        let _ws = super::open(&url, Some(source)).await.unwrap();
        assert_eq!(accept.await.unwrap().ip(), source);
    }
}
