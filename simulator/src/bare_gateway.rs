//! `dispatch-sim-bare-gateway`: a stand-in gateway that does as little as the protocol allows,
//! so the simulator's own CPU can be measured against it (`cargo xtask bench city`).
//!
//! It answers a `hello` with a `welcome`, a ride request with a refusal (so riders keep asking
//! at the configured rate), every other command with an `ack`, and drops positions unread. It
//! checks no token and keeps no state: a benchmark tool that listens on loopback only.
//!
//! ```text
//! dispatch-sim-bare-gateway 18999
//! ```

use std::net::{Ipv4Addr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use protocol::ErrorCode;
use protocol::client::{Role, ServerMessage, SessionLimits};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// What a client frame asks of the stand-in.
#[derive(Debug, PartialEq)]
enum Answer {
    Nothing,
    Welcome,
    Ack(u64),
    Refuse(u64),
}

/// Reads just enough of a frame to answer it; positions are not parsed at all.
fn answer(text: &str) -> Answer {
    if text.contains("\"type\":\"location\"") {
        return Answer::Nothing;
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Answer::Nothing;
    };
    let id = value["id"].as_u64();
    match (value["type"].as_str(), id) {
        (Some("hello"), _) => Answer::Welcome,
        (Some("request_ride"), Some(id)) => Answer::Refuse(id),
        (Some(_), Some(id)) => Answer::Ack(id),
        _ => Answer::Nothing,
    }
}

async fn serve(stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    while let Some(frame) = ws.next().await {
        let Message::Text(text) = frame? else {
            continue;
        };
        let reply = match answer(&text) {
            Answer::Nothing => continue,
            Answer::Welcome => ServerMessage::Welcome {
                version: protocol::SUPPORTED_VERSIONS[0],
                // The token is not read, so neither is its role; the simulator does not
                // look at the welcome's.
                role: Role::Driver,
                subject: "bare".into(),
                limits: SessionLimits {
                    max_message_bytes: 16 * 1024,
                    messages_per_sec: 1_000,
                },
            },
            Answer::Ack(id) => ServerMessage::Ack {
                id,
                trip: None,
                changed: true,
            },
            Answer::Refuse(id) => ServerMessage::Error {
                id: Some(id),
                code: ErrorCode::OutsideServiceArea,
                message: "a bare gateway serves no area".into(),
            },
        };
        ws.send(Message::text(reply.to_json())).await?;
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: dispatch-sim-bare-gateway PORT"))?
        .parse()
        .map_err(|_| anyhow::anyhow!("PORT must be a port number"))?;
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = serve(stream).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_dropped_hello_welcomed_requests_refused_commands_acked() {
        let location = r#"{"accuracy":5.0,"heading":null,"lat":52.5,"lng":13.4,"seq":3,"speed":8.0,"ts":1,"type":"location"}"#;
        assert_eq!(answer(location), Answer::Nothing);
        assert_eq!(
            answer(r#"{"type":"hello","token":"t","versions":[1]}"#),
            Answer::Welcome
        );
        assert_eq!(
            answer(r#"{"id":7,"pickup":{},"type":"request_ride"}"#),
            Answer::Refuse(7)
        );
        assert_eq!(
            answer(r#"{"capacity":4,"id":1,"type":"go_online","vehicle_class":"standard"}"#),
            Answer::Ack(1)
        );
        assert_eq!(answer("not json"), Answer::Nothing);
    }
}
