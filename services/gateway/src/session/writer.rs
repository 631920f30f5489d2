//! The writer: drains a connection's [`Outbound`] queue to its socket, and gives up on a
//! client that does not read.
//!
//! It is polled in the session's own task, beside the reading (see [`super`]), so its idle
//! state is kept small: only the socket half, the queue and a pointer to the write in progress
//! live across its awaits.

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use protocol::client::ServerMessage;
use tokio_tungstenite::tungstenite::Message;

use super::{Sink, close_frame};
use crate::meters as m;
use crate::outbound::{Batch, Close, Outbound};

/// Drains the connection's outbound queue to its socket. A client that does not take a batch
/// within `write_timeout`, or leaves a control message queued behind it for longer than
/// `control_deadline`, is closed as a slow consumer. Only a writer in the middle of a write
/// can fall behind (otherwise it takes what is queued at once), so only then does it check.
///
/// (A function returning an async block rather than an async fn: an async fn's arguments are
/// kept twice in its state, once as passed and once as moved into its body.)
pub(super) fn write_loop(
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
    batch: Batch,
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
            out.close(Close::WriteFailed);
            Written::GaveUp
        }
        None => {
            // The client does not read: give up on it.
            out.close(Close::SlowConsumer);
            Written::GaveUp
        }
    }
}

/// Writes one batch from the outbound queue, in order: control messages, the latest states,
/// vehicles, a ping, the close frame.
async fn write_batch(
    sink: &mut Sink,
    batch: Batch,
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
        sink.feed(close_frame(close.code(), close.reason())).await?;
    }
    sink.flush().await
}
