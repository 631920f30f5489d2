//! Where clients are connected: the directory that publishers of client messages read so that a
//! message goes only to the gateway holding its client (`{p}.gw.{gateway}.{role}.{id}`).
//!
//! Gateways announce on `{p}.presence` ([`Presence`]) the clients that join and leave them, a
//! heartbeat when nothing changes, and all their clients now and then and when asked on
//! `{p}.presence.sync`. [`follow`] keeps a [`Directory`] current from those announcements.
//! A client the directory does not know, or whose gateway has gone silent past its word, is
//! addressed as before on `{p}.user.{role}.{id}`, which every gateway receives: so a lost
//! announcement, a publisher that just started or a gateway that died costs bandwidth for a
//! while, never a message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use protocol::bus::Presence;
use protocol::client::Role;
use protocol::{Subjects, codec};
use tokio_util::sync::CancellationToken;

/// Where one client is.
#[derive(Debug, Clone)]
struct Entry {
    gateway: Arc<str>,
    since: i64,
}

#[derive(Debug, Default)]
struct Inner {
    /// By role, then id: a lookup borrows the id rather than building a key.
    clients: HashMap<Role, HashMap<Box<str>, Entry>>,
    /// Until when each gateway's word holds.
    gateways: HashMap<Arc<str>, Instant>,
}

/// Which gateway holds each client (of the roles followed), as last announced.
#[derive(Debug)]
pub struct Directory {
    subjects: Subjects,
    roles: Vec<Role>,
    /// A gateway's own announcements, which it need not remember (it knows its clients).
    own: Option<String>,
    inner: Mutex<Inner>,
}

/// How long entries of a gateway that went silent are kept before they are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60);

impl Directory {
    /// A directory of the clients of `roles` (a publisher that only ever writes to riders
    /// need not remember drivers).
    pub fn new(subjects: Subjects, roles: &[Role]) -> Self {
        Self {
            subjects,
            roles: roles.to_vec(),
            own: None,
            inner: Mutex::default(),
        }
    }

    /// A directory that leaves out the announcements of `gateway`: the gateway's own, which
    /// knows its clients without them.
    pub fn of_others(mut self, gateway: &str) -> Self {
        self.own = Some(gateway.to_owned());
        self
    }

    /// The subjects it addresses messages with.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Takes in one announcement.
    pub fn apply(&self, presence: &Presence, now: Instant) {
        if self.own.as_deref() == Some(presence.gateway.as_str()) {
            return;
        }
        let mut inner = self.inner.lock().expect("directory lock");
        let gateway: Arc<str> = match inner.gateways.get_key_value(presence.gateway.as_str()) {
            Some((name, _)) => name.clone(),
            None => presence.gateway.as_str().into(),
        };
        if presence.stopping {
            inner.gateways.remove(&gateway);
            for clients in inner.clients.values_mut() {
                clients.retain(|_, entry| entry.gateway != gateway);
            }
            return;
        }
        let valid = now + Duration::from_millis(u64::from(presence.valid_for_ms));
        inner.gateways.insert(gateway.clone(), valid);
        for change in &presence.changes {
            if !self.roles.contains(&change.role) {
                continue;
            }
            let clients = inner.clients.entry(change.role).or_default();
            match clients.get(change.id.as_str()) {
                // A later connection elsewhere holds the client; this word is older news.
                Some(entry) if entry.gateway != gateway && entry.since > change.since => {}
                Some(entry) if !change.joined && entry.gateway != gateway => {}
                _ if change.joined => {
                    let entry = Entry {
                        gateway: gateway.clone(),
                        since: change.since,
                    };
                    clients.insert(change.id.as_str().into(), entry);
                }
                _ => {
                    clients.remove(change.id.as_str());
                }
            }
        }
    }

    /// The gateway holding (`role`, `id`), if it is known and its gateway is alive.
    pub fn gateway_of(&self, role: Role, id: &str, now: Instant) -> Option<Arc<str>> {
        let inner = self.inner.lock().expect("directory lock");
        let entry = inner.clients.get(&role)?.get(id)?;
        let alive = inner
            .gateways
            .get(&entry.gateway)
            .is_some_and(|until| *until > now);
        alive.then(|| entry.gateway.clone())
    }

    /// The subject of a message for (`role`, `id`): its gateway's, or everyone's.
    pub fn subject(&self, role: Role, id: &str, now: Instant) -> String {
        match self.gateway_of(role, id, now) {
            Some(gateway) => self.subjects.gateway_user(&gateway, role, id),
            None => self.subjects.user(role, id),
        }
    }

    /// `subject` readdressed to its client's gateway when it is a client's subject
    /// (`{p}.user.{role}.{id}`) and the directory knows where that client is; as it is
    /// otherwise.
    pub fn route(&self, subject: String, now: Instant) -> String {
        match self.subjects.parse_user(&subject) {
            Some((role, id)) if self.roles.contains(&role) => {
                match self.gateway_of(role, id, now) {
                    Some(gateway) => self.subjects.gateway_user(&gateway, role, id),
                    None => subject,
                }
            }
            _ => subject,
        }
    }

    /// Forgets the clients of gateways silent for long.
    pub fn purge(&self, now: Instant) {
        let mut inner = self.inner.lock().expect("directory lock");
        let Some(cutoff) = now.checked_sub(FORGET_AFTER) else {
            return;
        };
        let gone: Vec<Arc<str>> = inner
            .gateways
            .iter()
            .filter(|(_, until)| **until < cutoff)
            .map(|(name, _)| name.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        for name in &gone {
            inner.gateways.remove(name);
        }
        for clients in inner.clients.values_mut() {
            clients.retain(|_, entry| !gone.contains(&entry.gateway));
        }
    }

    /// Clients known.
    pub fn len(&self) -> usize {
        let inner = self.inner.lock().expect("directory lock");
        inner.clients.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps `directory` current from the gateways' announcements until `stop`; asks every
/// gateway for all its clients at the start and each time the NATS connection comes back
/// (announcements made meanwhile are gone).
pub async fn follow(
    client: async_nats::Client,
    directory: Arc<Directory>,
    stop: CancellationToken,
) {
    let subjects = directory.subjects.clone();
    let mut announcements = loop {
        match client.subscribe(subjects.presence()).await {
            Ok(subscription) => break subscription,
            Err(error) => {
                tracing::warn!(%error, "cannot follow presence yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let ask = || async {
        let _ = client.flush().await;
        let _ = client
            .publish(subjects.presence_sync(), bytes::Bytes::new())
            .await;
    };
    ask().await;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // A new connection is told by the count of connections: a reconnect can be quicker than
    // any look at the connection's state.
    let mut connects = crate::bus::connects(&client);
    let mut last_purge = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            message = announcements.next() => match message {
                Some(message) => match codec::decode::<Presence>(&message.payload) {
                    Ok(presence) => directory.apply(&presence, Instant::now()),
                    Err(error) => tracing::warn!(%error, "malformed presence announcement"),
                },
                None => break,
            },
            _ = tick.tick() => {
                let now = crate::bus::connects(&client);
                if now > connects {
                    ask().await;
                }
                connects = now;
                if last_purge.elapsed() >= Duration::from_secs(10) {
                    last_purge = Instant::now();
                    directory.purge(last_purge);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::bus::PresenceChange;

    fn announce(gateway: &str, changes: &[(&str, bool, i64)]) -> Presence {
        Presence {
            gateway: gateway.into(),
            changes: changes
                .iter()
                .map(|(id, joined, since)| PresenceChange {
                    role: Role::Rider,
                    id: (*id).into(),
                    joined: *joined,
                    since: *since,
                })
                .collect(),
            snapshot: false,
            stopping: false,
            valid_for_ms: 6_000,
        }
    }

    fn directory() -> Directory {
        Directory::new(Subjects::new("t").unwrap(), &[Role::Rider])
    }

    #[test]
    fn a_known_client_is_addressed_at_its_gateway_and_an_unknown_one_everywhere() {
        let d = directory();
        let now = Instant::now();
        d.apply(&announce("g1", &[("r1", true, 10)]), now);
        assert_eq!(d.subject(Role::Rider, "r1", now), "t.gw.g1.rider.r1");
        assert_eq!(d.subject(Role::Rider, "r2", now), "t.user.rider.r2");
        assert_eq!(d.route("t.user.rider.r1".into(), now), "t.gw.g1.rider.r1");
        assert_eq!(d.route("t.evt.x".into(), now), "t.evt.x");
        // Drivers are not followed here.
        assert_eq!(d.route("t.user.driver.r1".into(), now), "t.user.driver.r1");
    }

    #[test]
    fn the_latest_connection_holds_the_client_whatever_order_the_news_arrives_in() {
        let d = directory();
        let now = Instant::now();
        d.apply(&announce("g2", &[("r1", true, 20)]), now);
        // The old gateway's join, late, and its leave: neither takes the client back.
        d.apply(&announce("g1", &[("r1", true, 10)]), now);
        assert_eq!(d.gateway_of(Role::Rider, "r1", now).as_deref(), Some("g2"));
        d.apply(&announce("g1", &[("r1", false, 10)]), now);
        assert_eq!(d.gateway_of(Role::Rider, "r1", now).as_deref(), Some("g2"));
        d.apply(&announce("g2", &[("r1", false, 20)]), now);
        assert_eq!(d.gateway_of(Role::Rider, "r1", now), None);
    }

    #[test]
    fn a_gateway_leaves_its_own_clients_out() {
        let d = directory().of_others("g1");
        let now = Instant::now();
        d.apply(&announce("g1", &[("r1", true, 10)]), now);
        d.apply(&announce("g2", &[("r2", true, 10)]), now);
        assert_eq!(d.len(), 1);
        assert_eq!(d.gateway_of(Role::Rider, "r2", now).as_deref(), Some("g2"));
    }

    #[test]
    fn a_silent_or_stopping_gateway_is_not_addressed() {
        let d = directory();
        let now = Instant::now();
        d.apply(&announce("g1", &[("r1", true, 10), ("r2", true, 10)]), now);
        let later = now + Duration::from_secs(7);
        assert_eq!(d.subject(Role::Rider, "r1", later), "t.user.rider.r1");
        // A heartbeat revives its word.
        d.apply(&announce("g1", &[]), later);
        assert_eq!(d.subject(Role::Rider, "r1", later), "t.gw.g1.rider.r1");
        d.purge(later + FORGET_AFTER + Duration::from_secs(7));
        assert!(d.is_empty(), "a gateway silent for long is forgotten");
        d.apply(&announce("g1", &[("r1", true, 10)]), now);
        let mut stopping = announce("g1", &[]);
        stopping.stopping = true;
        d.apply(&stopping, now);
        assert!(d.is_empty());
    }
}
