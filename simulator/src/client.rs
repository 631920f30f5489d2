//! One WebSocket session speaking the client protocol.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::client::ServerMessage;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The chunk a read asks the socket for: server messages are a few hundred bytes.
const READ_BUFFER_BYTES: usize = 4096;

/// Opens a TCP connection to the gateway in `url`, from `source` when given: several loopback
/// source addresses lift the limit of about 64k ephemeral ports per (source, destination) pair.
async fn open(url: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
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
pub async fn connect(url: &str, token: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let mut ws = tokio::time::timeout(Duration::from_secs(10), open(url, source)).await??;
    let hello = serde_json::json!({"type": "hello", "token": token, "versions": protocol::SUPPORTED_VERSIONS});
    ws.send(Message::text(hello.to_string())).await?;
    match next(&mut ws).await? {
        Some(ServerMessage::Welcome { .. }) => Ok(ws),
        other => anyhow::bail!("no welcome: {other:?}"),
    }
}

/// The next server message; `None` when the connection closed.
pub async fn next(ws: &mut Ws) -> anyhow::Result<Option<ServerMessage>> {
    loop {
        match ws.next().await {
            None => return Ok(None),
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(Message::Text(text))) => return Ok(Some(serde_json::from_str(&text)?)),
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(_)) => continue,
        }
    }
}

pub async fn send(ws: &mut Ws, value: serde_json::Value) -> anyhow::Result<()> {
    ws.send(Message::text(value.to_string())).await?;
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
