//! The gateway's publications to NATS, gathered into batches.
//!
//! Sessions hand their positions (and what follows from them: breadcrumbs, a rider's view of
//! its driver) to one [`Publisher`] per gateway, which never blocks them. One task publishes
//! what has gathered, at most one batch per `linger`: a publication after a quiet spell goes
//! out at once, and those that follow within `linger` of a batch go out together after it.
//! Under load they reach NATS, and go on from NATS to the matchers, many to a write instead of
//! a write (and a wake-up of each process on the way) each, which halves the NATS server's
//! work per position (BENCHMARKS.md). Order is kept: one queue, one task.
//!
//! The queue is bounded: while NATS cannot take publications (it is down and the client's own
//! buffer is full), those beyond `capacity` are dropped and counted, as positions are while
//! NATS is down. Positions are the latest-wins kind, so the next one replaces a dropped one.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::meters as m;

/// Publications waiting for the publishing task.
#[derive(Debug)]
pub struct Publisher {
    queue: Mutex<Vec<(String, Bytes)>>,
    ready: Notify,
    capacity: usize,
    batches: AtomicU64,
}

impl Publisher {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            ready: Notify::new(),
            capacity,
            batches: AtomicU64::new(0),
        }
    }

    /// Queues a publication; `false` when the queue is full and it was dropped.
    pub fn publish(&self, subject: String, payload: Bytes) -> bool {
        let mut queue = self.queue.lock().expect("publisher lock");
        if queue.len() >= self.capacity {
            return false;
        }
        queue.push((subject, payload));
        let first = queue.len() == 1;
        drop(queue);
        if first {
            self.ready.notify_one();
        }
        true
    }

    /// Batches handed to the NATS client so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Publishes what is queued until `stop`, then what is left. Batches go out at most one
    /// per `linger`: a publication after a quiet spell goes at once, one within `linger` of
    /// the last batch waits for the rest of it.
    pub async fn run(&self, nats: async_nats::Client, linger: Duration, stop: CancellationToken) {
        let mut batch = Vec::new();
        let mut last_batch: Option<tokio::time::Instant> = None;
        loop {
            let stopping = tokio::select! {
                _ = self.ready.notified() => false,
                _ = stop.cancelled() => true,
            };
            if let Some(last) = last_batch
                && !stopping
                && !linger.is_zero()
            {
                // Let the batch gather; what comes meanwhile joins it.
                tokio::select! {
                    _ = tokio::time::sleep_until(last + linger) => {}
                    _ = stop.cancelled() => {}
                }
            }
            std::mem::swap(&mut batch, &mut *self.queue.lock().expect("publisher lock"));
            if !batch.is_empty() {
                last_batch = Some(tokio::time::Instant::now());
                self.batches.fetch_add(1, Ordering::Relaxed);
                metrics::histogram!(m::PUBLISH_BATCH).record(batch.len() as f64);
            }
            for (subject, payload) in batch.drain(..) {
                if nats.publish(subject, payload).await.is_err() {
                    metrics::counter!(m::POSITIONS_DROPPED, "reason" => "nats_down").increment(1);
                }
            }
            if stopping {
                return;
            }
        }
    }
}
