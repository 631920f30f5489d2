//! The hello: the first message of every connection, within the hello timeout, carrying a
//! token and the protocol versions the client speaks. A connection without a valid one is
//! told why and closed (4001, 4002, 4003); an accepted one gets `welcome`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::ErrorCode;
use protocol::client::{
    self, ClientMessage, DecodeError, ServerMessage, SessionLimits, close_code,
};
use protocol::rights::Sender;
use protocol::time::now_ms;
use protocol::token::Claims;
use protocol::validate::ValidationError;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{Session, Sink, Stream, close_frame, error_text};
use crate::meters as m;
use crate::outbound::Outbound;
use crate::shared::Shared;

/// Takes a connection through its hello after the WebSocket handshake. An accepted session is
/// returned as the future that serves it; a refused one has been answered and closed.
pub async fn open(
    ws: WebSocketStream<TcpStream>,
    shared: Arc<Shared>,
) -> Option<impl Future<Output = ()> + Send + use<>> {
    let (mut sink, mut stream) = ws.split();
    let limits = &shared.config.limits;

    let first = tokio::time::timeout(limits.hello_timeout, stream.next()).await;
    let text = match first {
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(Some(Ok(_))) => return refuse_no_hello(&mut sink).await,
        Ok(Some(Err(tungstenite::Error::Capacity(_)))) => {
            let told = error_text(
                None,
                ErrorCode::TooLarge,
                format!(
                    "the hello is larger than this server's {} bytes",
                    limits.max_message_bytes
                ),
            );
            let _ = sink.send(Message::text(told)).await;
            refuse::<()>(
                &mut sink,
                close_code::TOO_BIG,
                "message too big",
                "too_large",
            )
            .await;
            // The rest of the message may still be arriving: read it away, or closing the
            // socket with it unread would reset the connection and lose the close frame.
            linger(sink, stream).await;
            return None;
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
        Ok(_) => return refuse_no_hello(&mut sink).await,
        Err(error) if said_hello(&text) => {
            // A hello that fails its checks is told what is wrong with it.
            let told = error_text(None, error.code(), error.client_message());
            let _ = sink.send(Message::text(told)).await;
            let reason = match error {
                DecodeError::Invalid(ValidationError::TooLong { field: "token", .. }) => {
                    "token too long"
                }
                _ => "invalid hello",
            };
            return refuse(&mut sink, close_code::UNAUTHORIZED, reason, "invalid_hello").await;
        }
        Err(_) => return refuse_no_hello(&mut sink).await,
    };
    let claims = match shared.config.verifier.verify(&token, now_ms() / 1000) {
        Ok(claims) => claims,
        Err(error) => {
            let told = error_text(None, ErrorCode::Unauthorized, error.to_string());
            let _ = sink.send(Message::text(told)).await;
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
        let told = error_text(None, ErrorCode::UnsupportedVersion, message);
        let _ = sink.send(Message::text(told)).await;
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
    out.control(
        ServerMessage::Welcome {
            version,
            role,
            subject: sub.clone(),
            limits: SessionLimits {
                max_message_bytes: limits.max_message_bytes as u32,
                messages_per_sec: limits.messages_per_sec,
            },
        }
        .to_json(),
    );
    let sender = Sender {
        role,
        id: sub,
        name,
    };
    let session = Arc::new(Session::new(shared.clone(), sender, out));
    let gauge = metrics::gauge!(m::CONNECTIONS, "role" => role.as_str());
    gauge.increment(1.0);
    Some(super::serve(session, stream, sink, gauge))
}

async fn refuse_no_hello<T>(sink: &mut Sink) -> Option<T> {
    refuse(
        sink,
        close_code::UNAUTHORIZED,
        "the first message must be hello",
        "no_hello",
    )
    .await
}

/// Whether a frame that did not decode was meant as a hello (`"type": "hello"`).
fn said_hello(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .is_ok_and(|frame| frame.get("type").and_then(|t| t.as_str()) == Some("hello"))
}

/// Most time and bytes [`linger`] spends on a refused client's last data.
const LINGER_FOR: Duration = Duration::from_secs(2);
const LINGER_IDLE: Duration = Duration::from_millis(250);
const LINGER_BYTES: usize = 1024 * 1024;

/// Reads and discards what a refused client still sends, after the close frame, until it
/// stops (idle for [`LINGER_IDLE`]), closes, or [`LINGER_FOR`] or [`LINGER_BYTES`] is spent.
async fn linger(sink: Sink, stream: Stream) {
    let Ok(mut ws) = stream.reunite(sink) else {
        return;
    };
    let socket = ws.get_mut();
    let mut buffer = vec![0u8; 16 * 1024];
    let mut read = 0;
    let _ = tokio::time::timeout(LINGER_FOR, async {
        while read < LINGER_BYTES {
            match tokio::time::timeout(LINGER_IDLE, socket.read(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 => read += n,
                _ => break,
            }
        }
    })
    .await;
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
