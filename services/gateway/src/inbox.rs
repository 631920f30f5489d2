//! Messages for connected clients: one NATS subscription per gateway on every client's subject
//! (`users_all`), routed here to the sessions of that client. A subscription per session
//! would cost each idle connection several kilobytes (the client library gives every
//! subscription a queue of its own); the price of one shared subscription is that every
//! gateway receives the messages of every client, including those connected elsewhere, and
//! drops them. Client messages (offers, trip updates, the assigned driver's position) are a
//! small share of the traffic, so this is cheap until gateways number in the dozens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt;
use protocol::Subjects;
use protocol::client::Role;
use tokio_util::sync::CancellationToken;

/// A session that receives its client's messages.
pub trait Recipient: Send + Sync {
    /// One message for this client: the payload as published.
    fn deliver(&self, payload: bytes::Bytes);
}

type Sessions = HashMap<String, Vec<Weak<dyn Recipient>>>;

/// Which sessions each client has on this gateway (usually one; briefly two while a client
/// reconnects), by role and id: looking a message's client up takes no allocation.
#[derive(Default)]
pub struct Inboxes {
    drivers: Mutex<Sessions>,
    riders: Mutex<Sessions>,
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
        self.of(role)
            .lock()
            .expect("inbox lock")
            .entry(id.to_owned())
            .or_default()
            .push(recipient.clone());
        Registration {
            inboxes: self.clone(),
            role,
            id: id.to_owned(),
            recipient,
        }
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
                Some(list) => list.iter().filter_map(Weak::upgrade).collect(),
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
        if let Some(list) = sessions.get_mut(&self.id) {
            list.retain(|r| !r.ptr_eq(&self.recipient) && r.strong_count() > 0);
            if list.is_empty() {
                sessions.remove(&self.id);
            }
        }
    }
}

/// Hands every client's message received on `messages` (the [`Subjects::users_all`]
/// subscription) to this gateway's sessions, until `stop`.
pub async fn route(
    mut messages: async_nats::Subscriber,
    subjects: Subjects,
    inboxes: Arc<Inboxes>,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return,
            message = messages.next() => match message {
                Some(message) => message,
                None => return,
            },
        };
        if let Some((role, id)) = subjects.parse_user(&message.subject) {
            inboxes.deliver(role, id, message.payload);
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
    }
}
