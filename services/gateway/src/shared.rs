//! What every session of a gateway shares: the configuration, the NATS client, the signals,
//! the inbox router, the position publisher and the tracker of the gateway's tasks.

use std::sync::Arc;

use kit::Bus;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::{inbox, publisher};

/// What every session listens for besides its client, in one watch so that an idle session
/// waits on one signal rather than two.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signal {
    /// Bumped each time the NATS connection comes back; sessions then re-read their state.
    pub reconnects: u64,
    /// The gateway is stopping: sessions close with 1001.
    pub stopping: bool,
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub nats: async_nats::Client,
    pub bus: Bus,
    /// What every session listens for besides its client.
    pub signal: tokio::sync::watch::Receiver<Signal>,
    /// Where each client's messages go.
    pub inboxes: Arc<inbox::Inboxes>,
    /// Which gateway holds each rider (so a driver's position goes to its rider's gateway)
    /// and each driver (so a driver that moved to another gateway is left to it).
    pub directory: Arc<kit::presence::Directory>,
    /// The zones and the drivers' places in them.
    pub tracking: Arc<crate::tracking::Tracking>,
    /// Where sessions hand their positions for NATS.
    pub publisher: Arc<publisher::Publisher>,
    /// The metrics every position moves.
    pub hot: crate::meters::Hot,
    /// Every task of the gateway's (sessions, their commands, their resyncs): the gateway's
    /// stop waits for them all.
    pub tasks: TaskTracker,
}
