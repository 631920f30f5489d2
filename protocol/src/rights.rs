//! What each role may send, and what a client's command becomes on the bus.
//!
//! The gateway applies both to every message after decoding it: [`allowed`] is the table of
//! rights, and [`route`] says where a message goes (published as a position, a dispatcher's
//! viewport, a query, or a [`TripCommand`] for the trips service). The sender's identity comes
//! only from its token ([`Sender`]): no client message names who sends it.

use uuid::Uuid;

use crate::bus::TripCommand;
use crate::client::{ClientMessage, Location, MessageId, Role, Viewport};
use crate::trip::Actor;

/// Who sends a message, from its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub role: Role,
    /// The token's subject: the driver's, rider's or dispatcher's id.
    pub id: String,
    /// Display name from the token.
    pub name: Option<String>,
}

/// Whether `role` may send `message`. `hello` is never allowed after the session's first
/// message; the gateway answers it separately.
pub fn allowed(role: Role, message: &ClientMessage) -> bool {
    match message {
        ClientMessage::Hello { .. } => false,
        ClientMessage::Location(_)
        | ClientMessage::GoOnline { .. }
        | ClientMessage::GoOffline { .. }
        | ClientMessage::AcceptOffer { .. }
        | ClientMessage::DeclineOffer { .. }
        | ClientMessage::TripProgress { .. } => role == Role::Driver,
        ClientMessage::RequestRide { .. } => role == Role::Rider,
        ClientMessage::SubscribeViewport { .. } | ClientMessage::AssignDriver { .. } => {
            role == Role::Dispatcher
        }
        ClientMessage::CancelTrip { .. } | ClientMessage::GetTrip { .. } => true,
    }
}

/// Where a client message goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// A second hello: refused.
    Hello,
    /// A driver's position, published on its cell's subject.
    Location(Location),
    /// A dispatcher's viewport: the gateway subscribes to what it covers.
    Viewport {
        id: MessageId,
        viewport: Viewport,
        zoom: f32,
    },
    /// Where a trip stands, asked of the trips service.
    GetTrip { id: MessageId, trip_id: Uuid },
    /// A command for the trips service, answered with an ack or an error for `id`.
    Command { id: MessageId, command: TripCommand },
}

/// The actor a role acts as in the trip's event log.
pub fn actor(role: Role) -> Actor {
    match role {
        Role::Driver => Actor::Driver,
        Role::Rider => Actor::Rider,
        Role::Dispatcher => Actor::Dispatcher,
    }
}

/// Where `message` from `sender` goes. Call after [`allowed`]: the command names the sender
/// as the token says, whatever role sends it.
pub fn route(message: ClientMessage, sender: &Sender) -> Route {
    let me = || sender.id.clone();
    let command = |id, command| Route::Command { id, command };
    match message {
        ClientMessage::Hello { .. } => Route::Hello,
        ClientMessage::Location(location) => Route::Location(location),
        ClientMessage::SubscribeViewport { id, viewport, zoom } => {
            Route::Viewport { id, viewport, zoom }
        }
        ClientMessage::GetTrip { id, trip_id } => Route::GetTrip { id, trip_id },
        ClientMessage::GoOnline {
            id,
            vehicle_class,
            capacity,
        } => command(
            id,
            TripCommand::SetDriverStatus {
                driver_id: me(),
                online: true,
                vehicle_class: Some(vehicle_class),
                capacity: Some(capacity),
                name: sender.name.clone(),
            },
        ),
        ClientMessage::GoOffline { id } => command(
            id,
            TripCommand::SetDriverStatus {
                driver_id: me(),
                online: false,
                vehicle_class: None,
                capacity: None,
                name: None,
            },
        ),
        ClientMessage::AcceptOffer { id, trip_id } => command(
            id,
            TripCommand::AnswerOffer {
                trip_id,
                driver_id: me(),
                accept: true,
            },
        ),
        ClientMessage::DeclineOffer { id, trip_id } => command(
            id,
            TripCommand::AnswerOffer {
                trip_id,
                driver_id: me(),
                accept: false,
            },
        ),
        ClientMessage::TripProgress {
            id, trip_id, stage, ..
        } => command(
            id,
            TripCommand::Progress {
                trip_id,
                driver_id: me(),
                stage,
                position: None,
            },
        ),
        ClientMessage::RequestRide {
            id,
            pickup,
            dropoff,
            vehicle_class,
            min_capacity,
            idempotency_key,
        } => command(
            id,
            TripCommand::CreateTrip {
                rider_id: me(),
                idempotency_key,
                pickup,
                dropoff,
                vehicle_class,
                min_capacity,
            },
        ),
        ClientMessage::CancelTrip {
            id,
            trip_id,
            reason,
        } => command(
            id,
            TripCommand::Cancel {
                trip_id,
                actor: actor(sender.role),
                actor_id: me(),
                reason,
            },
        ),
        ClientMessage::AssignDriver {
            id,
            trip_id,
            driver_id,
        } => command(
            id,
            TripCommand::Assign {
                trip_id,
                driver_id,
                dispatcher_id: me(),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Point;
    use crate::trip::TripStage;
    use crate::trip::VehicleClass;

    const ROLES: [Role; 3] = [Role::Driver, Role::Rider, Role::Dispatcher];

    fn one_of_each() -> Vec<ClientMessage> {
        let trip_id = Uuid::from_u128(7);
        let point = Point::new(52.52, 13.405);
        vec![
            ClientMessage::Hello {
                token: "t".into(),
                versions: vec![1],
            },
            ClientMessage::Location(Location {
                id: None,
                lat: point.lat,
                lng: point.lng,
                ts: 1,
                seq: 1,
                heading: None,
                speed: None,
                accuracy: None,
            }),
            ClientMessage::GoOnline {
                id: 1,
                vehicle_class: VehicleClass::Standard,
                capacity: 4,
            },
            ClientMessage::GoOffline { id: 2 },
            ClientMessage::AcceptOffer { id: 3, trip_id },
            ClientMessage::DeclineOffer { id: 4, trip_id },
            ClientMessage::TripProgress {
                id: 5,
                trip_id,
                stage: TripStage::Arrived,
                ts: None,
            },
            ClientMessage::RequestRide {
                id: 6,
                pickup: point,
                dropoff: point,
                vehicle_class: None,
                min_capacity: None,
                idempotency_key: "k".into(),
            },
            ClientMessage::CancelTrip {
                id: 7,
                trip_id,
                reason: None,
            },
            ClientMessage::SubscribeViewport {
                id: 8,
                viewport: Viewport {
                    south: 52.5,
                    west: 13.3,
                    north: 52.6,
                    east: 13.5,
                },
                zoom: 12.0,
            },
            ClientMessage::AssignDriver {
                id: 9,
                trip_id,
                driver_id: "d2".into(),
            },
            ClientMessage::GetTrip { id: 10, trip_id },
        ]
    }

    #[test]
    fn the_table_of_rights() {
        let table: Vec<String> = one_of_each()
            .iter()
            .map(|message| {
                let who: Vec<&str> = ROLES
                    .iter()
                    .filter(|role| allowed(**role, message))
                    .map(|role| role.as_str())
                    .collect();
                format!("{}: {}", message.kind(), who.join(" "))
            })
            .collect();
        assert_eq!(
            table,
            [
                "hello: ",
                "location: driver",
                "go_online: driver",
                "go_offline: driver",
                "accept_offer: driver",
                "decline_offer: driver",
                "trip_progress: driver",
                "request_ride: rider",
                "cancel_trip: driver rider dispatcher",
                "subscribe_viewport: dispatcher",
                "assign_driver: dispatcher",
                "get_trip: driver rider dispatcher",
            ]
        );
    }

    #[test]
    fn commands_name_the_sender_from_its_token() {
        for role in ROLES {
            let sender = Sender {
                role,
                id: "me-1".into(),
                name: Some("Me".into()),
            };
            for message in one_of_each() {
                let kind = message.kind();
                let id = message.id();
                let Route::Command {
                    id: routed,
                    command,
                } = route(message, &sender)
                else {
                    continue;
                };
                assert_eq!(Some(routed), id, "{kind}");
                let named = match &command {
                    TripCommand::CreateTrip { rider_id, .. } => rider_id,
                    TripCommand::SetDriverStatus { driver_id, .. }
                    | TripCommand::AnswerOffer { driver_id, .. }
                    | TripCommand::Progress { driver_id, .. } => driver_id,
                    TripCommand::Cancel {
                        actor, actor_id, ..
                    } => {
                        assert_eq!(*actor, super::actor(role));
                        actor_id
                    }
                    TripCommand::Assign {
                        dispatcher_id,
                        driver_id,
                        ..
                    } => {
                        assert_eq!(driver_id, "d2", "the dispatcher names the driver");
                        dispatcher_id
                    }
                    other => panic!("{kind} became {other:?}"),
                };
                assert_eq!(named, "me-1", "{kind}");
            }
        }
    }

    #[test]
    fn going_online_carries_the_vehicle_and_name_offline_clears_nothing() {
        let sender = Sender {
            role: Role::Driver,
            id: "d1".into(),
            name: Some("Ada".into()),
        };
        let messages = one_of_each();
        let online = route(messages[2].clone(), &sender);
        assert_eq!(
            online,
            Route::Command {
                id: 1,
                command: TripCommand::SetDriverStatus {
                    driver_id: "d1".into(),
                    online: true,
                    vehicle_class: Some(VehicleClass::Standard),
                    capacity: Some(4),
                    name: Some("Ada".into()),
                }
            }
        );
        let Route::Command {
            command:
                TripCommand::SetDriverStatus {
                    online,
                    vehicle_class,
                    capacity,
                    name,
                    ..
                },
            ..
        } = route(messages[3].clone(), &sender)
        else {
            panic!("go_offline is a status command");
        };
        assert!(!online);
        assert_eq!((vehicle_class, capacity, name), (None, None, None));
        assert!(matches!(route(messages[0].clone(), &sender), Route::Hello));
        assert!(matches!(
            route(messages[1].clone(), &sender),
            Route::Location(_)
        ));
        assert!(matches!(
            route(messages[11].clone(), &sender),
            Route::GetTrip { id: 10, .. }
        ));
    }
}
