//! A TCP proxy the test controls, to take a server away from a service and give it back:
//! `cut` closes every connection through it and refuses new ones; `stall` keeps them open but
//! carries nothing (a path gone silent, as in a partition: what the service sends waits in the
//! kernel's buffers and its writes succeed); `restore` lets everything through again.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Open, carrying nothing.
    Stalled,
    /// Closed, new ones refused.
    Down,
}

/// The link, and how many times it was cut: a connection made before a cut ends even when
/// the link is restored before it looked.
#[derive(Debug, Clone, Copy)]
struct State {
    link: Link,
    cuts: u64,
}

#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    state: watch::Sender<State>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("local address");
        let (state, watch) = watch::channel(State {
            link: Link::Up,
            cuts: 0,
        });
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let now = *watch.borrow();
                if now.link == Link::Down {
                    drop(client);
                    continue;
                }
                let link = Connection {
                    state: watch.clone(),
                    born: now.cuts,
                };
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (from_client, to_client) = client.into_split();
                    let (from_server, to_server) = server.into_split();
                    // Either direction ending ends both: the halves drop, the sockets close.
                    tokio::select! {
                        _ = pump(from_client, to_server, link.clone()) => {}
                        _ = pump(from_server, to_client, link) => {}
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.state.send_modify(|s| {
            s.link = Link::Down;
            s.cuts += 1;
        });
    }

    /// Keeps every connection open but carries nothing, either way, until [`TcpProxy::restore`].
    pub fn stall(&self) {
        self.state.send_modify(|s| s.link = Link::Stalled);
    }

    /// Lets connections through again (what a stall held goes on its way).
    pub fn restore(&self) {
        self.state.send_modify(|s| s.link = Link::Up);
    }
}

/// What one connection watches: the proxy's state, and the cuts before it was made.
#[derive(Clone)]
struct Connection {
    state: watch::Receiver<State>,
    born: u64,
}

impl Connection {
    /// Waits while the link is stalled; whether the connection may go on (not cut since).
    async fn flowing(&mut self) -> bool {
        let born = self.born;
        match self
            .state
            .wait_for(|s| s.cuts != born || s.link != Link::Stalled)
            .await
        {
            Ok(s) => s.cuts == born && s.link == Link::Up,
            Err(_) => false,
        }
    }
}

/// Copies one direction of a connection while the link is up; holds the bytes while it is
/// stalled, and returns once it is down or either side closes.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: Connection) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !link.flowing().await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = link.state.changed() => continue,
        };
        // Read just as the link stalled: held until it flows again.
        if !link.flowing().await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `host:port` a `postgres://` URL points at.
pub fn postgres_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:5432")
    };
    let authority = authority.replace("localhost", "127.0.0.1");
    authority
        .parse()
        .unwrap_or_else(|e| panic!("{url}: cannot proxy {authority}: {e}"))
}

/// `url` with its host and port replaced by `addr`.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (user, rest) = match rest.rsplit_once('@') {
        Some((user, rest)) => (format!("{user}@"), rest),
        None => (String::new(), rest),
    };
    let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
    format!("{scheme}://{user}{addr}{}", &rest[path_start..])
}
