//! A webhook receiver on loopback, as an integrator would run one: it checks each request's
//! signature and keeps what it was sent. It can be told to answer 503, to hang, or be stopped
//! and started again on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use protocol::events::{self, Event, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use tokio_util::sync::CancellationToken;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 204 to a request whose signature verifies, 401 otherwise.
    Up,
    /// 503 to everything.
    Failing,
    /// Never answers.
    Hanging,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: Vec<u8>,
    pub event: Event,
    /// When it arrived, milliseconds since the epoch.
    pub received_ms: i64,
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    /// Requests answered 204, in the order they arrived.
    accepted: Vec<Received>,
    /// Requests whose signature did not verify.
    forged: usize,
    /// Every request, whatever the answer.
    attempts: usize,
}

/// A receiver; stops serving when dropped.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    secret: Arc<Mutex<Vec<u8>>>,
    inner: Arc<Mutex<Inner>>,
    stop: Arc<Mutex<CancellationToken>>,
}

impl Receiver {
    /// Starts on a free loopback port.
    pub async fn start(mode: Mode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            addr: listener.local_addr().unwrap(),
            secret: Arc::default(),
            inner: Arc::new(Mutex::new(Inner {
                mode,
                accepted: Vec::new(),
                forged: 0,
                attempts: 0,
            })),
            stop: Arc::default(),
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let stop = CancellationToken::new();
        *self.stop.lock().unwrap() = stop.clone();
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
    }

    /// The URL to register.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The secret signatures are checked with.
    pub fn set_secret(&self, secret: &str) {
        *self.secret.lock().unwrap() = secret.as_bytes().to_vec();
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().unwrap().mode = mode;
    }

    /// Stops listening: connections are refused until [`Self::restart`].
    pub fn stop(&self) {
        self.stop.lock().unwrap().cancel();
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "port not free yet");
                    tokio::task::yield_now().await;
                }
                Err(error) => panic!("rebinding {}: {error}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// What was accepted so far.
    pub fn accepted(&self) -> Vec<Received> {
        self.inner.lock().unwrap().accepted.clone()
    }

    /// How many were accepted so far.
    pub fn accepted_count(&self) -> usize {
        self.inner.lock().unwrap().accepted.len()
    }

    pub fn forged(&self) -> usize {
        self.inner.lock().unwrap().forged
    }

    pub fn attempts(&self) -> usize {
        self.inner.lock().unwrap().attempts
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let received_ms = protocol::time::now_ms();
    let mode = {
        let mut inner = receiver.inner.lock().unwrap();
        inner.attempts += 1;
        inner.mode
    };
    match mode {
        Mode::Failing => return StatusCode::SERVICE_UNAVAILABLE,
        Mode::Hanging => std::future::pending::<()>().await,
        Mode::Up => {}
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (Some(id), Some(timestamp), Some(signature)) = (
        header(ID_HEADER),
        header(TIMESTAMP_HEADER).and_then(|t| t.parse::<i64>().ok()),
        header(SIGNATURE_HEADER),
    ) else {
        receiver.inner.lock().unwrap().forged += 1;
        return StatusCode::BAD_REQUEST;
    };
    let secret = receiver.secret.lock().unwrap().clone();
    let now_s = protocol::time::now_ms() / 1000;
    if events::verify(&secret, timestamp, &signature, &body, now_s, 300).is_err() {
        receiver.inner.lock().unwrap().forged += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(event) = serde_json::from_slice::<Event>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    receiver.inner.lock().unwrap().accepted.push(Received {
        id,
        timestamp,
        signature,
        body: body.to_vec(),
        event,
        received_ms,
    });
    StatusCode::NO_CONTENT
}
