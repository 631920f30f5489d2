//! The trip state machine as a pure function: given a trip as stored and a command, what
//! changes. The store writes the result only if the trip still has the version it was decided
//! on (deciding again otherwise); the database's unique index settles races for drivers.

use protocol::ErrorCode;
use protocol::bus::{CommandError, TripCommand};
use protocol::time::UnixMillis;
use protocol::trip::{Actor, TripStage, TripState, TripView, VehicleClass};

/// A trip as the store holds it: what clients see plus the matching bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct TripRecord {
    pub view: TripView,
    /// Drivers that were offered this trip and declined or let the offer expire.
    pub excluded_drivers: Vec<String>,
    pub search_deadline: UnixMillis,
    pub offer_expires_at: Option<UnixMillis>,
    pub dispatch_attempts: i32,
}

/// A driver as far as matching rules care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverRecord {
    pub online: bool,
    pub vehicle_class: Option<VehicleClass>,
    pub capacity: Option<u16>,
}

/// How an offer ended, recorded in the offers table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferOutcome {
    Accepted,
    Declined,
    Expired,
    Cancelled,
    Superseded,
}

impl OfferOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Declined => "declined",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Superseded => "superseded",
        }
    }
}

/// The effect of a command that changes the trip.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub to: TripState,
    pub driver_id: Option<String>,
    pub excluded_drivers: Vec<String>,
    pub offer_expires_at: Option<UnixMillis>,
    pub ended_by: Option<Actor>,
    pub end_reason: Option<String>,
    pub actor: Actor,
    pub actor_id: Option<String>,
    /// A new offer to record: (driver, expiry, pickup ETA).
    pub new_offer: Option<(String, UnixMillis, u32)>,
    /// The open offer of this driver ends so.
    pub closed_offer: Option<(String, OfferOutcome)>,
}

/// What a command does to a trip.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Apply the change.
    Apply(Change),
    /// The command was already carried out; nothing to do, and the caller is told so.
    AlreadyDone,
    Reject(CommandError),
}

fn reject(code: ErrorCode, message: impl Into<String>) -> Decision {
    Decision::Reject(CommandError::new(code, message))
}

fn base(trip: &TripRecord, to: TripState, actor: Actor, actor_id: Option<&str>) -> Change {
    Change {
        to,
        driver_id: trip.view.driver_id.clone(),
        excluded_drivers: trip.excluded_drivers.clone(),
        offer_expires_at: None,
        ended_by: None,
        end_reason: None,
        actor,
        actor_id: actor_id.map(str::to_owned),
        new_offer: None,
        closed_offer: None,
    }
}

/// Whether a driver's vehicle suits the trip.
pub fn vehicle_fits(trip: &TripView, driver: &DriverRecord) -> bool {
    let class_ok = match trip.vehicle_class {
        Some(required) => driver.vehicle_class == Some(required),
        None => true,
    };
    let capacity_ok = match trip.min_capacity {
        Some(required) => driver.capacity.is_some_and(|c| c >= required),
        None => true,
    };
    class_ok && capacity_ok
}

/// Order of the states a driver moves a trip through, for telling repeats from skips.
fn progress_rank(state: TripState) -> u8 {
    match state {
        TripState::Requested | TripState::Offered => 0,
        TripState::Accepted => 1,
        TripState::Arrived => 2,
        TripState::InProgress => 3,
        TripState::Completed => 4,
        TripState::Cancelled | TripState::Expired => 5,
    }
}

/// Decides what `command` does to `trip`. `driver` is the driver the command names, if it
/// names one; `now` bounds offer expiry.
pub fn decide(
    trip: &TripRecord,
    command: &TripCommand,
    driver: Option<&DriverRecord>,
    now: UnixMillis,
) -> Decision {
    let state = trip.view.state;
    let holder = trip.view.driver_id.as_deref();
    match command {
        TripCommand::CreateTrip { .. } | TripCommand::SetDriverStatus { .. } => {
            reject(ErrorCode::Internal, "not a transition of an existing trip")
        }
        TripCommand::Offer {
            driver_id,
            expires_at,
            pickup_eta_s,
            ..
        } => {
            if state == TripState::Offered && holder == Some(driver_id.as_str()) {
                return Decision::AlreadyDone;
            }
            if state != TripState::Requested {
                return reject(
                    ErrorCode::InvalidTransition,
                    format!("trip is {state}, not requested"),
                );
            }
            if trip.excluded_drivers.iter().any(|d| d == driver_id) {
                return reject(ErrorCode::Conflict, "driver was already offered this trip");
            }
            match driver {
                None => return reject(ErrorCode::NotFound, "unknown driver"),
                Some(d) if !d.online => return reject(ErrorCode::Conflict, "driver is offline"),
                Some(d) if !vehicle_fits(&trip.view, d) => {
                    return reject(
                        ErrorCode::Conflict,
                        "driver's vehicle does not fit the trip",
                    );
                }
                Some(_) => {}
            }
            if *expires_at <= now {
                return reject(ErrorCode::InvalidField, "offer expiry lies in the past");
            }
            let mut change = base(trip, TripState::Offered, Actor::System, None);
            change.driver_id = Some(driver_id.clone());
            change.offer_expires_at = Some(*expires_at);
            change.new_offer = Some((driver_id.clone(), *expires_at, *pickup_eta_s));
            Decision::Apply(change)
        }
        TripCommand::AnswerOffer {
            driver_id, accept, ..
        } => {
            let offered_to_me = state == TripState::Offered && holder == Some(driver_id.as_str());
            if *accept {
                if holder == Some(driver_id.as_str()) && progress_rank(state) >= 1 {
                    return if state.is_terminal() {
                        reject(ErrorCode::InvalidTransition, format!("trip is {state}"))
                    } else {
                        Decision::AlreadyDone
                    };
                }
                if !offered_to_me {
                    return reject_not_offered(trip, driver_id);
                }
                if trip.offer_expires_at.is_some_and(|at| at <= now) {
                    return reject(ErrorCode::InvalidTransition, "offer expired");
                }
                let mut change = base(trip, TripState::Accepted, Actor::Driver, Some(driver_id));
                change.closed_offer = Some((driver_id.clone(), OfferOutcome::Accepted));
                Decision::Apply(change)
            } else {
                if trip.excluded_drivers.iter().any(|d| d == driver_id) {
                    return Decision::AlreadyDone;
                }
                if !offered_to_me {
                    return reject_not_offered(trip, driver_id);
                }
                Decision::Apply(release_offer(
                    trip,
                    driver_id,
                    OfferOutcome::Declined,
                    Actor::Driver,
                ))
            }
        }
        TripCommand::ExpireOffer { driver_id, .. } => {
            if state == TripState::Offered && holder == Some(driver_id.as_str()) {
                Decision::Apply(release_offer(
                    trip,
                    driver_id,
                    OfferOutcome::Expired,
                    Actor::System,
                ))
            } else if trip.excluded_drivers.iter().any(|d| d == driver_id) {
                Decision::AlreadyDone
            } else {
                reject(
                    ErrorCode::InvalidTransition,
                    "no open offer for this driver",
                )
            }
        }
        TripCommand::Progress {
            driver_id, stage, ..
        } => {
            if holder != Some(driver_id.as_str()) || state == TripState::Offered {
                return reject(ErrorCode::Forbidden, "trip is not assigned to this driver");
            }
            let target = stage.target_state();
            if state == target
                || (!state.is_terminal() && progress_rank(state) > progress_rank(target))
            {
                return Decision::AlreadyDone;
            }
            let from = match stage {
                TripStage::Arrived => TripState::Accepted,
                TripStage::Started => TripState::Arrived,
                TripStage::Completed => TripState::InProgress,
            };
            if state != from {
                return reject(
                    ErrorCode::InvalidTransition,
                    format!("cannot go from {state} to {target}"),
                );
            }
            Decision::Apply(base(trip, target, Actor::Driver, Some(driver_id)))
        }
        TripCommand::Cancel {
            actor,
            actor_id,
            reason,
            ..
        } => {
            let allowed = match actor {
                Actor::Rider => trip.view.rider_id == *actor_id,
                Actor::Driver => holder == Some(actor_id.as_str()) && state != TripState::Offered,
                Actor::Dispatcher | Actor::System => true,
            };
            if !allowed {
                return reject(ErrorCode::Forbidden, "not your trip to cancel");
            }
            if state == TripState::Cancelled {
                return Decision::AlreadyDone;
            }
            if state.is_terminal() {
                return reject(
                    ErrorCode::InvalidTransition,
                    format!("trip is already {state}"),
                );
            }
            let mut change = base(trip, TripState::Cancelled, *actor, Some(actor_id));
            change.ended_by = Some(*actor);
            change.end_reason = Some(reason.clone().unwrap_or_else(|| "cancelled".into()));
            if state == TripState::Offered
                && let Some(holder) = holder
            {
                change.closed_offer = Some((holder.to_owned(), OfferOutcome::Cancelled));
            }
            Decision::Apply(change)
        }
        TripCommand::Assign {
            driver_id,
            dispatcher_id,
            ..
        } => {
            if holder == Some(driver_id.as_str()) && state == TripState::Accepted {
                return Decision::AlreadyDone;
            }
            if !matches!(state, TripState::Requested | TripState::Offered) {
                return reject(
                    ErrorCode::InvalidTransition,
                    format!("trip is {state}; only waiting trips can be assigned"),
                );
            }
            match driver {
                None => return reject(ErrorCode::NotFound, "unknown driver"),
                Some(d) if !d.online => return reject(ErrorCode::Conflict, "driver is offline"),
                Some(_) => {}
            }
            let mut change = base(
                trip,
                TripState::Accepted,
                Actor::Dispatcher,
                Some(dispatcher_id),
            );
            if state == TripState::Offered
                && let Some(holder) = holder
            {
                change.closed_offer = Some((holder.to_owned(), OfferOutcome::Superseded));
            }
            change.driver_id = Some(driver_id.clone());
            // A dispatcher may override an earlier decline.
            change.excluded_drivers.retain(|d| d != driver_id);
            Decision::Apply(change)
        }
        TripCommand::Expire { reason, .. } => {
            if state == TripState::Expired {
                return Decision::AlreadyDone;
            }
            if state != TripState::Requested {
                return reject(ErrorCode::InvalidTransition, format!("trip is {state}"));
            }
            let mut change = base(trip, TripState::Expired, Actor::System, None);
            change.ended_by = Some(Actor::System);
            change.end_reason = Some(reason.clone());
            Decision::Apply(change)
        }
    }
}

fn reject_not_offered(trip: &TripRecord, driver_id: &str) -> Decision {
    if trip.excluded_drivers.iter().any(|d| d == driver_id) {
        reject(ErrorCode::InvalidTransition, "offer is no longer open")
    } else {
        reject(ErrorCode::Forbidden, "trip is not offered to this driver")
    }
}

fn release_offer(
    trip: &TripRecord,
    driver_id: &str,
    outcome: OfferOutcome,
    actor: Actor,
) -> Change {
    let mut change = base(trip, TripState::Requested, actor, Some(driver_id));
    change.driver_id = None;
    change.excluded_drivers.push(driver_id.to_owned());
    change.closed_offer = Some((driver_id.to_owned(), outcome));
    change
}

/// Applies a change to an in-memory record (what the store's UPDATE does), for tests and
/// for building the reply.
pub fn apply(trip: &mut TripRecord, change: &Change, now: UnixMillis) {
    trip.view.state = change.to;
    trip.view.driver_id = change.driver_id.clone();
    trip.excluded_drivers = change.excluded_drivers.clone();
    trip.offer_expires_at = change.offer_expires_at;
    trip.view.ended_by = change.ended_by;
    trip.view.end_reason = change.end_reason.clone();
    trip.view.version += 1;
    trip.view.updated_at = now;
    if change.to == TripState::Requested {
        trip.dispatch_attempts += 1;
    }
}

/// The invariants every stored trip satisfies.
pub fn check_invariants(trip: &TripRecord) -> Result<(), String> {
    let state = trip.view.state;
    if state.holds_driver() && trip.view.driver_id.is_none() {
        return Err(format!("{state} trip without a driver"));
    }
    if (state == TripState::Offered) != trip.offer_expires_at.is_some() {
        return Err(format!(
            "{state} trip with offer expiry {:?}",
            trip.offer_expires_at
        ));
    }
    if state == TripState::Requested && trip.view.driver_id.is_some() {
        return Err("requested trip still names a driver".into());
    }
    if matches!(state, TripState::Cancelled | TripState::Expired) != trip.view.ended_by.is_some() {
        return Err(format!(
            "{state} trip with ended_by {:?}",
            trip.view.ended_by
        ));
    }
    if let Some(driver) = &trip.view.driver_id
        && state.holds_driver()
        && trip.excluded_drivers.contains(driver)
    {
        return Err("trip held by an excluded driver".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use protocol::Point;
    use uuid::Uuid;

    const NOW: UnixMillis = 1_800_000_000_000;

    fn requested() -> TripRecord {
        TripRecord {
            view: TripView {
                trip_id: Uuid::nil(),
                state: TripState::Requested,
                rider_id: "r1".into(),
                driver_id: None,
                pickup: Point::new(1.0, 1.0),
                dropoff: Point::new(1.1, 1.1),
                vehicle_class: None,
                min_capacity: None,
                region: protocol::GeoConfig::default()
                    .region_of(Point::new(1.0, 1.0))
                    .unwrap(),
                created_at: NOW,
                updated_at: NOW,
                version: 1,
                ended_by: None,
                end_reason: None,
            },
            excluded_drivers: vec![],
            search_deadline: NOW + 60_000,
            offer_expires_at: None,
            dispatch_attempts: 1,
        }
    }

    fn online() -> DriverRecord {
        DriverRecord {
            online: true,
            vehicle_class: Some(VehicleClass::Standard),
            capacity: Some(4),
        }
    }

    fn run(trip: &mut TripRecord, command: TripCommand) -> Decision {
        let decision = decide(trip, &command, Some(&online()), NOW);
        if let Decision::Apply(change) = &decision {
            apply(trip, change, NOW);
        }
        decision
    }

    fn offer(driver: &str) -> TripCommand {
        TripCommand::Offer {
            trip_id: Uuid::nil(),
            driver_id: driver.into(),
            expires_at: NOW + 10_000,
            pickup_eta_s: 60,
        }
    }

    fn answer(driver: &str, accept: bool) -> TripCommand {
        TripCommand::AnswerOffer {
            trip_id: Uuid::nil(),
            driver_id: driver.into(),
            accept,
        }
    }

    fn progress(driver: &str, stage: TripStage) -> TripCommand {
        TripCommand::Progress {
            trip_id: Uuid::nil(),
            driver_id: driver.into(),
            stage,
            position: None,
        }
    }

    #[test]
    fn happy_path_and_repeats() {
        let mut trip = requested();
        assert!(matches!(run(&mut trip, offer("d1")), Decision::Apply(_)));
        assert_eq!(run(&mut trip, offer("d1")), Decision::AlreadyDone);
        assert!(matches!(
            run(&mut trip, answer("d1", true)),
            Decision::Apply(_)
        ));
        assert_eq!(run(&mut trip, answer("d1", true)), Decision::AlreadyDone);
        for stage in [TripStage::Arrived, TripStage::Started, TripStage::Completed] {
            assert!(matches!(
                run(&mut trip, progress("d1", stage)),
                Decision::Apply(_)
            ));
            assert_eq!(run(&mut trip, progress("d1", stage)), Decision::AlreadyDone);
        }
        assert_eq!(trip.view.state, TripState::Completed);
        assert_eq!(trip.view.version, 6);
    }

    #[test]
    fn decline_excludes_the_driver() {
        let mut trip = requested();
        run(&mut trip, offer("d1"));
        assert!(matches!(
            run(&mut trip, answer("d1", false)),
            Decision::Apply(_)
        ));
        assert_eq!(trip.view.state, TripState::Requested);
        assert_eq!(trip.excluded_drivers, ["d1"]);
        assert!(matches!(
            run(&mut trip, offer("d1")),
            Decision::Reject(CommandError {
                code: ErrorCode::Conflict,
                ..
            })
        ));
        assert_eq!(run(&mut trip, answer("d1", false)), Decision::AlreadyDone);
        assert!(matches!(
            run(&mut trip, answer("d1", true)),
            Decision::Reject(CommandError {
                code: ErrorCode::InvalidTransition,
                ..
            })
        ));
    }

    #[test]
    fn wrong_actors_are_refused() {
        let mut trip = requested();
        run(&mut trip, offer("d1"));
        assert!(matches!(
            run(&mut trip, answer("d2", true)),
            Decision::Reject(CommandError {
                code: ErrorCode::Forbidden,
                ..
            })
        ));
        run(&mut trip, answer("d1", true));
        assert!(matches!(
            run(&mut trip, progress("d2", TripStage::Arrived)),
            Decision::Reject(CommandError {
                code: ErrorCode::Forbidden,
                ..
            })
        ));
        let cancel = |actor, id: &str| TripCommand::Cancel {
            trip_id: Uuid::nil(),
            actor,
            actor_id: id.into(),
            reason: None,
        };
        assert!(matches!(
            run(&mut trip, cancel(Actor::Rider, "r2")),
            Decision::Reject(CommandError {
                code: ErrorCode::Forbidden,
                ..
            })
        ));
        assert!(matches!(
            run(&mut trip, cancel(Actor::Rider, "r1")),
            Decision::Apply(_)
        ));
        assert_eq!(
            run(&mut trip, cancel(Actor::Rider, "r1")),
            Decision::AlreadyDone
        );
        assert!(matches!(
            run(&mut trip, progress("d1", TripStage::Arrived)),
            Decision::Reject(CommandError {
                code: ErrorCode::InvalidTransition,
                ..
            })
        ));
    }

    #[test]
    fn expired_offers_cannot_be_accepted() {
        let mut trip = requested();
        run(&mut trip, offer("d1"));
        let late = decide(&trip, &answer("d1", true), Some(&online()), NOW + 10_000);
        assert!(matches!(
            late,
            Decision::Reject(CommandError {
                code: ErrorCode::InvalidTransition,
                ..
            })
        ));
    }

    #[test]
    fn vehicle_requirements() {
        let mut trip = requested();
        trip.view.vehicle_class = Some(VehicleClass::Van);
        let d = decide(&trip, &offer("d1"), Some(&online()), NOW);
        assert!(matches!(
            d,
            Decision::Reject(CommandError {
                code: ErrorCode::Conflict,
                ..
            })
        ));
        trip.view.vehicle_class = None;
        trip.view.min_capacity = Some(6);
        let d = decide(&trip, &offer("d1"), Some(&online()), NOW);
        assert!(matches!(
            d,
            Decision::Reject(CommandError {
                code: ErrorCode::Conflict,
                ..
            })
        ));
    }

    fn any_command() -> impl Strategy<Value = TripCommand> {
        let driver = || proptest::sample::select(vec!["d1", "d2", "d3"]).prop_map(String::from);
        let actor = proptest::sample::select(vec![
            Actor::Rider,
            Actor::Driver,
            Actor::Dispatcher,
            Actor::System,
        ]);
        let id = Uuid::nil();
        prop_oneof![
            driver().prop_map(move |d| TripCommand::Offer {
                trip_id: id,
                driver_id: d,
                expires_at: NOW + 5_000,
                pickup_eta_s: 30
            }),
            (driver(), any::<bool>()).prop_map(move |(d, accept)| TripCommand::AnswerOffer {
                trip_id: id,
                driver_id: d,
                accept
            }),
            driver().prop_map(move |d| TripCommand::ExpireOffer {
                trip_id: id,
                driver_id: d
            }),
            (
                driver(),
                proptest::sample::select(vec![
                    TripStage::Arrived,
                    TripStage::Started,
                    TripStage::Completed
                ])
            )
                .prop_map(move |(d, stage)| TripCommand::Progress {
                    trip_id: id,
                    driver_id: d,
                    stage,
                    position: None
                }),
            (
                actor,
                proptest::sample::select(vec!["r1", "r2", "d1", "d2", "ops"])
            )
                .prop_map(move |(actor, who)| TripCommand::Cancel {
                    trip_id: id,
                    actor,
                    actor_id: who.into(),
                    reason: None
                }),
            driver().prop_map(move |d| TripCommand::Assign {
                trip_id: id,
                driver_id: d,
                dispatcher_id: "ops".into()
            }),
            Just(TripCommand::Expire {
                trip_id: id,
                reason: "no driver".into()
            }),
        ]
    }

    proptest! {
        #[test]
        fn random_command_sequences_keep_trips_valid(commands in proptest::collection::vec(any_command(), 1..40)) {
            let mut trip = requested();
            for command in commands {
                let before = trip.clone();
                let decision = run(&mut trip, command);
                prop_assert!(check_invariants(&trip).is_ok(), "{:?}", check_invariants(&trip));
                if before.view.state.is_terminal() {
                    prop_assert_eq!(&trip, &before, "a terminal trip changed");
                }
                if let Decision::Apply(change) = decision {
                    prop_assert!(before.view.state.can_become(change.to),
                        "{} -> {} is not an edge", before.view.state, change.to);
                } else {
                    prop_assert_eq!(&trip, &before);
                }
            }
        }
    }
}
