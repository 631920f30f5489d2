//! One WebSocket session speaking the client protocol.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::client::ServerMessage;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects and says hello; returns the socket after the welcome.
pub async fn connect(url: &str, token: &str) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await??;
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
