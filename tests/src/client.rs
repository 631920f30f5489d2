//! A WebSocket client speaking the client protocol, for system tests.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::client::{Role, ServerMessage};
use protocol::token::{self, Claims};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::services::TOKEN_SECRET;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A token for `role` and `sub`, valid for an hour, signed with the tests' secret.
pub fn token(role: Role, sub: &str) -> String {
    token_with(role, sub, None, 3600)
}

/// A token with a name and a validity in seconds (negative for an expired one).
pub fn token_with(role: Role, sub: &str, name: Option<&str>, ttl_s: i64) -> String {
    token::mint(
        TOKEN_SECRET,
        &Claims {
            role,
            sub: sub.into(),
            exp: protocol::time::now_ms() / 1000 + ttl_s,
            name: name.map(str::to_owned),
        },
    )
    .expect("valid claims")
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(Option<u16>),
    Dropped,
}

/// One client.
#[derive(Debug)]
pub struct Client {
    pub ws: Ws,
}

impl Client {
    /// Opens a WebSocket without saying hello.
    pub async fn open(addr: SocketAddr) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("websocket handshake");
        Self { ws }
    }

    /// Connects and says hello with `token`, returning the client and the first answer.
    pub async fn hello(addr: SocketAddr, token: &str, versions: &[u16]) -> (Self, ServerMessage) {
        let mut client = Self::open(addr).await;
        client
            .send_json(&serde_json::json!({"type": "hello", "token": token, "versions": versions}))
            .await;
        let first = client.recv().await;
        (client, first)
    }

    /// Connects as `role`/`sub` and waits for the welcome and the session state.
    pub async fn connect(addr: SocketAddr, role: Role, sub: &str) -> Self {
        let (mut client, welcome) = Self::hello(addr, &token(role, sub), &[1]).await;
        assert!(
            matches!(welcome, ServerMessage::Welcome { .. }),
            "{welcome:?}"
        );
        client
            .recv_until(|m| matches!(m, ServerMessage::SessionState { .. }))
            .await;
        client
    }

    pub async fn send_json(&mut self, value: &serde_json::Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("sending a frame");
    }

    /// The next server message (within 15 s); panics if the connection ends.
    pub async fn recv(&mut self) -> ServerMessage {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(15), self.ws.next())
                .await
                .expect("a message within 15 s")
                .expect("connection open")
                .expect("a frame");
            match frame {
                Message::Text(text) => {
                    return serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("server sent invalid JSON {text}: {e}"));
                }
                Message::Close(frame) => panic!("connection closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Skips messages until one matches, returning it.
    pub async fn recv_until(&mut self, matches: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let message = tokio::time::timeout_at(deadline, self.recv())
                .await
                .expect("the awaited message within 15 s");
            if matches(&message) {
                return message;
            }
        }
    }

    /// The error answering message `id`, skipping other traffic.
    pub async fn error_for(&mut self, id: u64) -> protocol::ErrorCode {
        match self
            .recv_until(|m| matches!(m, ServerMessage::Error { id: Some(i), .. } | ServerMessage::Ack { id: i, .. } if *i == id))
            .await
        {
            ServerMessage::Error { code, .. } => code,
            other => panic!("expected an error for {id}, got {other:?}"),
        }
    }

    /// The ack of message `id`, panicking on an error.
    pub async fn ack_for(&mut self, id: u64) -> ServerMessage {
        let answer = self
            .recv_until(|m| matches!(m, ServerMessage::Error { id: Some(i), .. } | ServerMessage::Ack { id: i, .. } if *i == id))
            .await;
        assert!(
            matches!(answer, ServerMessage::Ack { .. }),
            "expected an ack for {id}, got {answer:?}"
        );
        answer
    }

    /// The trip carried by the ack of message `id`, panicking on an error or an ack without one.
    pub async fn ack_trip(&mut self, id: u64) -> protocol::trip::TripView {
        match self.ack_for(id).await {
            ServerMessage::Ack {
                trip: Some(trip), ..
            } => trip,
            other => panic!("no trip in the answer to {id}: {other:?}"),
        }
    }

    /// Says hello with `token` (a driver's), goes online with a standard car and reports one
    /// position at `at`, waiting for each answer.
    pub async fn driver_online_at(addr: SocketAddr, token: &str, at: protocol::Point) -> Self {
        let (mut driver, welcome) = Self::hello(addr, token, &[1]).await;
        assert!(
            matches!(welcome, ServerMessage::Welcome { .. }),
            "{welcome:?}"
        );
        driver
            .send_json(&serde_json::json!({"type": "go_online", "id": 1,
                "vehicle_class": "standard", "capacity": 4}))
            .await;
        driver.ack_for(1).await;
        driver
            .send_json(
                &serde_json::json!({"type": "location", "id": 2, "lat": at.lat,
                "lng": at.lng, "ts": protocol::time::now_ms(), "seq": 1}),
            )
            .await;
        driver.ack_for(2).await;
        driver
    }

    /// Reads until the connection ends (within 15 s), returning how.
    pub async fn ended(&mut self) -> Ended {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("connection still open after 15 s"),
                Ok(None) | Ok(Some(Err(_))) => return Ended::Dropped,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Ended::Closed(frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// Close codes as numbers, for comparisons.
pub fn code(code: CloseCode) -> u16 {
    code.into()
}
