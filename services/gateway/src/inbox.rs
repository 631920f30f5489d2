//! Messages for connected clients, routed here to the sessions of that client.
//!
//! A gateway has two subscriptions for them, not one per session (the client library gives
//! every subscription a queue of its own, several kilobytes, which an idle connection cannot
//! afford): its own subject, `{p}.gw.{gateway}.>`, where publishers that know the client is
//! here address its messages ([`kit::presence`]); and every client's subject, `{p}.user.>`,
//! where they address the messages of clients they do not know the gateway of. So a gateway
//! receives its own clients' messages plus those few, not every client's. The inboxes tell
//! which clients join and leave this gateway ([`Inboxes::take_changes`]), which the gateway
//! announces ([`crate::presence`]). A message that reaches this gateway's own subject for a
//! client that has left (it reconnected elsewhere before the publisher heard) is forwarded
//! once to every client's subject, so the client's new gateway gets it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use protocol::Subjects;
use protocol::bus::PresenceChange;
use protocol::client::Role;
use protocol::time::now_ms;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::meters as m;

/// A session that receives its client's messages.
pub trait Recipient: Send + Sync {
    /// One message for this client: the payload as published.
    fn deliver(&self, payload: bytes::Bytes);
}

/// One client's sessions here, and when the first of them opened.
struct Client {
    sessions: ClientSessions,
    since: i64,
}

/// A client's sessions: nearly always one, kept inline (a gateway holds one of these per
/// client, idle or not); two or more briefly, while a client reconnects.
enum ClientSessions {
    One(Weak<dyn Recipient>),
    Many(Vec<Weak<dyn Recipient>>),
}

impl ClientSessions {
    fn push(&mut self, recipient: Weak<dyn Recipient>) {
        match self {
            Self::One(first) => *self = Self::Many(vec![first.clone(), recipient]),
            Self::Many(all) => all.push(recipient),
        }
    }

    fn as_slice(&self) -> &[Weak<dyn Recipient>] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(all) => all,
        }
    }

    /// Drops `gone` and sessions already ended; whether any is left.
    fn remove(&mut self, gone: &Weak<dyn Recipient>) -> bool {
        let keep = |r: &Weak<dyn Recipient>| !r.ptr_eq(gone) && r.strong_count() > 0;
        match self {
            Self::One(one) => keep(one),
            Self::Many(all) => {
                all.retain(keep);
                let left = !all.is_empty();
                if let [one] = all.as_slice() {
                    *self = Self::One(one.clone());
                }
                left
            }
        }
    }
}

type Sessions = HashMap<String, Client>;

/// Which sessions each client has on this gateway (usually one; briefly two while a client
/// reconnects), by role and id: looking a message's client up takes no allocation.
#[derive(Default)]
pub struct Inboxes {
    drivers: Mutex<Sessions>,
    riders: Mutex<Sessions>,
    /// Clients that joined or left since the announcer last took them, in order.
    changes: Mutex<Vec<PresenceChange>>,
    changed: Notify,
    /// Changes made so far, and how many of them the announcer took last.
    made: AtomicU64,
    taken: AtomicU64,
    /// How many changes have been announced, for sessions that wait for their join to be.
    announced: watch::Sender<u64>,
}

impl std::fmt::Debug for Inboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inboxes")
            .field("clients", &self.len())
            .finish()
    }
}

/// Keeps a session registered; dropping it unregisters the session.
pub struct Registration {
    inboxes: Arc<Inboxes>,
    role: Role,
    id: String,
    recipient: Weak<dyn Recipient>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("role", &self.role)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Inboxes {
    fn of(&self, role: Role) -> &Mutex<Sessions> {
        match role {
            Role::Driver => &self.drivers,
            // Dispatchers have no inbox; they never register.
            Role::Rider | Role::Dispatcher => &self.riders,
        }
    }

    /// Routes the messages for (`role`, `id`) to `recipient` until the registration is dropped.
    pub fn register(
        self: &Arc<Self>,
        role: Role,
        id: &str,
        recipient: Weak<dyn Recipient>,
    ) -> Registration {
        let mut sessions = self.of(role).lock().expect("inbox lock");
        match sessions.get_mut(id) {
            Some(client) => client.sessions.push(recipient.clone()),
            None => {
                let since = now_ms();
                sessions.insert(
                    id.to_owned(),
                    Client {
                        sessions: ClientSessions::One(recipient.clone()),
                        since,
                    },
                );
                self.changed(role, id, true, since);
            }
        }
        drop(sessions);
        Registration {
            inboxes: self.clone(),
            role,
            id: id.to_owned(),
            recipient,
        }
    }

    fn changed(&self, role: Role, id: &str, joined: bool, since: i64) {
        let mut changes = self.changes.lock().expect("changes lock");
        changes.push(PresenceChange {
            role,
            id: id.to_owned(),
            joined,
            since,
        });
        self.made.fetch_add(1, Ordering::Relaxed);
        drop(changes);
        self.changed.notify_one();
    }

    /// The joins and leaves since the last call, in order.
    pub fn take_changes(&self) -> Vec<PresenceChange> {
        let mut changes = self.changes.lock().expect("changes lock");
        self.taken
            .store(self.made.load(Ordering::Relaxed), Ordering::Relaxed);
        std::mem::take(&mut *changes)
    }

    /// How many joins and leaves have happened here so far.
    pub fn changes_made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Called by the announcer once what it last took is published.
    pub fn announced(&self) {
        self.announced
            .send_replace(self.taken.load(Ordering::Relaxed));
    }

    /// Waits (at most `within`) until the first `made` changes have been announced, so that
    /// publishers address a client's messages here before its session state is read.
    pub async fn wait_announced(&self, made: u64, within: Duration) {
        let mut announced = self.announced.subscribe();
        let _ = tokio::time::timeout(within, announced.wait_for(|n| *n >= made)).await;
    }

    /// Resolves when a client has joined or left since [`Self::take_changes`] last ran.
    pub async fn wait_changes(&self) {
        self.changed.notified().await;
    }

    /// Every client here, as joins: what a snapshot announces.
    pub fn snapshot(&self) -> Vec<PresenceChange> {
        let mut all = Vec::new();
        for role in [Role::Driver, Role::Rider] {
            let sessions = self.of(role).lock().expect("inbox lock");
            all.extend(sessions.iter().map(|(id, client)| PresenceChange {
                role,
                id: id.clone(),
                joined: true,
                since: client.since,
            }));
        }
        all
    }

    /// Whether (`role`, `id`) has a session here.
    pub fn holds(&self, role: Role, id: &str) -> bool {
        self.of(role).lock().expect("inbox lock").contains_key(id)
    }

    /// Clients with at least one session here.
    pub fn len(&self) -> usize {
        [Role::Driver, Role::Rider]
            .map(|role| self.of(role).lock().expect("inbox lock").len())
            .iter()
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands a message to every session of the client it is for; returns how many got it.
    pub fn deliver(&self, role: Role, id: &str, payload: bytes::Bytes) -> usize {
        let recipients: Vec<Arc<dyn Recipient>> = {
            let sessions = self.of(role).lock().expect("inbox lock");
            match sessions.get(id) {
                Some(client) => client
                    .sessions
                    .as_slice()
                    .iter()
                    .filter_map(Weak::upgrade)
                    .collect(),
                None => return 0,
            }
        };
        for recipient in &recipients {
            recipient.deliver(payload.clone());
        }
        recipients.len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut sessions = self.inboxes.of(self.role).lock().expect("inbox lock");
        if let Some(client) = sessions.get_mut(&self.id)
            && !client.sessions.remove(&self.recipient)
        {
            let since = client.since;
            sessions.remove(&self.id);
            drop(sessions);
            self.inboxes.changed(self.role, &self.id, false, since);
        }
    }
}

/// Hands every client's message this gateway receives to its sessions, until `stop`: those on
/// its own subject (`targeted`, [`Subjects::gateway_users`]) and those on every client's
/// (`broadcast`, [`Subjects::users_all`]). A targeted message for a client no longer here is
/// forwarded once to every client's subject.
pub async fn route(
    mut targeted: async_nats::Subscriber,
    mut broadcast: async_nats::Subscriber,
    nats: async_nats::Client,
    subjects: Subjects,
    gateway: String,
    inboxes: Arc<Inboxes>,
    stop: CancellationToken,
) {
    let count = |via: &'static str, outcome: &'static str| metrics::counter!(m::CLIENT_MESSAGES, "gateway" => gateway.clone(), "via" => via, "outcome" => outcome);
    let (delivered, forwarded) = (
        count("targeted", "delivered"),
        count("targeted", "forwarded"),
    );
    let (found, not_here) = (
        count("broadcast", "delivered"),
        count("broadcast", "not_here"),
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            message = targeted.next() => {
                let Some(message) = message else { return };
                let Some((role, id)) = subjects.parse_gateway_user(&gateway, &message.subject) else {
                    continue;
                };
                if inboxes.deliver(role, id, message.payload.clone()) > 0 {
                    delivered.increment(1);
                } else {
                    forwarded.increment(1);
                    let _ = nats.publish(subjects.user(role, id), message.payload).await;
                }
            }
            message = broadcast.next() => {
                let Some(message) = message else { return };
                let Some((role, id)) = subjects.parse_user(&message.subject) else {
                    continue;
                };
                if inboxes.deliver(role, id, message.payload) > 0 {
                    found.increment(1);
                } else {
                    not_here.increment(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<bytes::Bytes>>);

    impl Recipient for Collect {
        fn deliver(&self, payload: bytes::Bytes) {
            self.0.lock().unwrap().push(payload);
        }
    }

    fn weak(c: &Arc<Collect>) -> Weak<dyn Recipient> {
        let c: Arc<dyn Recipient> = c.clone();
        Arc::downgrade(&c)
    }

    #[test]
    fn messages_reach_every_session_of_their_client_and_no_other() {
        let inboxes = Arc::new(Inboxes::default());
        let (first, second, other) = (
            Arc::new(Collect::default()),
            Arc::new(Collect::default()),
            Arc::new(Collect::default()),
        );
        let a = inboxes.register(Role::Rider, "r1", weak(&first));
        let b = inboxes.register(Role::Rider, "r1", weak(&second));
        let _c = inboxes.register(Role::Driver, "r1", weak(&other));
        assert_eq!(inboxes.deliver(Role::Rider, "r1", "one".into()), 2);
        assert_eq!(inboxes.deliver(Role::Rider, "r2", "none".into()), 0);
        drop(a);
        assert_eq!(inboxes.deliver(Role::Rider, "r1", "two".into()), 1);
        assert_eq!(first.0.lock().unwrap().len(), 1);
        assert_eq!(second.0.lock().unwrap().len(), 2);
        assert!(other.0.lock().unwrap().is_empty());
        drop(b);
        assert_eq!(inboxes.len(), 1, "a client without sessions is forgotten");
        // The first session of a client is its join, the last one's end its leave.
        let changes: Vec<(Role, String, bool)> = inboxes
            .take_changes()
            .into_iter()
            .map(|c| (c.role, c.id, c.joined))
            .collect();
        assert_eq!(
            changes,
            [
                (Role::Rider, "r1".to_owned(), true),
                (Role::Driver, "r1".to_owned(), true),
                (Role::Rider, "r1".to_owned(), false),
            ]
        );
        assert_eq!(inboxes.snapshot().len(), 1);
        // One session is kept inline: no allocation of its own per idle client.
        assert!(size_of::<ClientSessions>() <= 24);
    }
}
