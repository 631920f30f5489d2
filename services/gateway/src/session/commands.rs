//! A session's commands and queries, carried out through the trips service one at a time in
//! the order the client sent them, each answered with an ack or an error for its id.
//!
//! They run in a task of their own (tracked by the gateway, so its stop waits for them), not
//! in the session's: a slow reply never stalls reading. The task exists only while the session
//! has commands to carry out, and an idle session's queue holds no allocation.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::ErrorCode;
use protocol::bus::{QueryReply, TripCommand, TripQuery};
use protocol::client::{MessageId, Role, ServerMessage};
use protocol::trip::TripView;
use uuid::Uuid;

use super::{Session, error_text};
use crate::meters as m;

/// A command or query waiting its turn.
#[derive(Debug)]
pub(super) enum Pending {
    Command {
        id: MessageId,
        kind: &'static str,
        command: TripCommand,
    },
    GetTrip {
        id: MessageId,
        trip_id: Uuid,
    },
}

impl Pending {
    fn kind(&self) -> &'static str {
        match self {
            Self::Command { kind, .. } => kind,
            Self::GetTrip { .. } => "get_trip",
        }
    }

    fn id(&self) -> MessageId {
        match self {
            Self::Command { id, .. } | Self::GetTrip { id, .. } => *id,
        }
    }
}

/// Commands waiting behind the one being carried out; `None` while none is.
pub(super) type Queue = Mutex<Option<Box<VecDeque<Pending>>>>;

impl Session {
    /// Queues a command behind the session's earlier ones; refused when too many wait.
    pub(super) fn enqueue(self: &Arc<Self>, pending: Pending) {
        let mut queue = self.commands.lock().expect("command queue lock");
        match queue.as_mut() {
            // One is being carried out: this one waits its turn, if there is room.
            Some(waiting) => {
                if waiting.len() + 1 >= self.shared.config.limits.max_commands_in_flight {
                    drop(queue);
                    self.out.control(error_text(
                        Some(pending.id()),
                        ErrorCode::RateLimited,
                        "too many commands in flight; wait for answers",
                    ));
                    return;
                }
                waiting.push_back(pending);
            }
            None => {
                *queue = Some(Box::default());
                drop(queue);
                self.shared
                    .tasks
                    .spawn(self.clone().carry_out_in_order(pending));
            }
        }
    }

    /// Carries out `first`, then every command queued meanwhile, in order.
    async fn carry_out_in_order(self: Arc<Self>, first: Pending) {
        let mut next = first;
        loop {
            let kind = next.kind();
            let started = Instant::now();
            let answer = match next {
                Pending::Command { id, command, .. } => self.command(id, command).await,
                Pending::GetTrip { id, trip_id } => self.get_trip(id, trip_id).await,
            };
            metrics::histogram!(m::COMMAND_DURATION, "kind" => kind).record(started.elapsed());
            self.out.control(answer);
            let mut queue = self.commands.lock().expect("command queue lock");
            match queue.as_mut().and_then(|waiting| waiting.pop_front()) {
                Some(pending) => next = pending,
                None => {
                    *queue = None;
                    return;
                }
            }
        }
    }

    /// Whether this client may see `trip`: its rider, its driver, or any dispatcher.
    fn takes_part(&self, trip: &TripView) -> bool {
        let me = self.sender.id.as_str();
        match self.sender.role {
            Role::Rider => trip.rider_id == me,
            Role::Driver => trip.driver_id.as_deref() == Some(me),
            Role::Dispatcher => true,
        }
    }

    /// Where a trip stands, for a client that may have missed its updates.
    async fn get_trip(&self, id: MessageId, trip_id: Uuid) -> String {
        let timeout = self.shared.config.limits.command_timeout;
        match self
            .shared
            .bus
            .query(&TripQuery::Trip { trip_id }, timeout)
            .await
        {
            QueryReply::Trip(Some(trip)) if self.takes_part(&trip) => {
                self.told([&trip]);
                ServerMessage::Ack {
                    id,
                    trip: Some(trip),
                    changed: false,
                }
                .to_json()
            }
            QueryReply::Trip(found) => {
                if found.is_some() {
                    metrics::counter!(m::FORBIDDEN, "kind" => "get_trip").increment(1);
                }
                // Someone else's trip answers like a missing one: nothing to learn from it.
                error_text(Some(id), ErrorCode::NotFound, "no such trip")
            }
            QueryReply::Error(error) => error_text(Some(id), error.code, error.message),
            other => {
                tracing::warn!(reply = ?other, "unexpected reply to a trip query");
                error_text(Some(id), ErrorCode::Internal, "internal error")
            }
        }
    }

    /// Carries out a command and returns the answer for the client.
    async fn command(&self, id: MessageId, command: TripCommand) -> String {
        let online_change = match &command {
            TripCommand::SetDriverStatus {
                online,
                vehicle_class,
                capacity,
                ..
            } => Some((*online, *vehicle_class, *capacity)),
            _ => None,
        };
        if self.shared.nats.connection_state() != async_nats::connection::State::Connected {
            return error_text(
                Some(id),
                ErrorCode::Unavailable,
                "bus unavailable; retry shortly",
            );
        }
        let timeout = self.shared.config.limits.command_timeout;
        match self.shared.bus.command(&command, timeout).await {
            Ok(outcome) => {
                self.told(&outcome.trip);
                if self.sender.role == Role::Driver {
                    let mut state = self.driver.lock().expect("driver lock");
                    if let Some((online, class, capacity)) = online_change {
                        state.online = online;
                        if class.is_some() {
                            state.vehicle_class = class;
                        }
                        if let Some(capacity) = capacity {
                            state.capacity = capacity;
                        }
                    }
                    if let Some(trip) = &outcome.trip {
                        state.observe(trip, &self.sender.id);
                    }
                }
                ServerMessage::Ack {
                    id,
                    trip: outcome.trip,
                    changed: outcome.changed,
                }
                .to_json()
            }
            Err(error) => error_text(Some(id), error.code, error.message),
        }
    }
}
