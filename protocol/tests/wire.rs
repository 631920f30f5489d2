//! The wire format under test: snapshots of every message, the checked-in JSON Schema, and
//! property tests that round-trip messages and that validation rejects out-of-range values.

use proptest::prelude::*;
use protocol::bus::{self, TripCommand};
use protocol::client::{
    self, CellAggregate, ClientMessage, DriverState, Eta, EtaTo, Location, Role, ServerMessage,
    SessionLimits, VehicleStatus, VehicleView, Viewport,
};
use protocol::trip::{Actor, TripStage, TripState, TripView, VehicleClass};
use protocol::{ErrorCode, Point, codec};
use uuid::Uuid;

const NOW: i64 = 1_800_000_000_000;

fn trip_id() -> Uuid {
    Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001)
}

fn trip() -> TripView {
    TripView {
        trip_id: trip_id(),
        state: TripState::Accepted,
        rider_id: "rider-1".into(),
        driver_id: Some("driver-1".into()),
        pickup: Point::new(52.52, 13.405),
        dropoff: Point::new(52.5, 13.45),
        vehicle_class: Some(VehicleClass::Standard),
        min_capacity: None,
        region: "851f1d4bfffffff".parse().unwrap(),
        created_at: NOW - 60_000,
        updated_at: NOW,
        version: 3,
        ended_by: None,
        end_reason: None,
    }
}

fn client_examples() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Hello {
            token: "eyJyb2xlIjoiZHJpdmVyIn0.c2ln".into(),
            versions: vec![1],
        },
        ClientMessage::Location(Location {
            id: None,
            lat: 52.52,
            lng: 13.405,
            heading: Some(90.0),
            speed: Some(8.5),
            accuracy: Some(5.0),
            ts: NOW,
            seq: 17,
        }),
        ClientMessage::GoOnline {
            id: 1,
            vehicle_class: VehicleClass::Van,
            capacity: 3,
        },
        ClientMessage::GoOffline { id: 2 },
        ClientMessage::AcceptOffer {
            id: 3,
            trip_id: trip_id(),
        },
        ClientMessage::DeclineOffer {
            id: 4,
            trip_id: trip_id(),
        },
        ClientMessage::TripProgress {
            id: 5,
            trip_id: trip_id(),
            stage: TripStage::Arrived,
            ts: Some(NOW - 2_000),
        },
        ClientMessage::RequestRide {
            id: 6,
            pickup: Point::new(52.52, 13.405),
            dropoff: Point::new(52.5, 13.45),
            vehicle_class: None,
            min_capacity: Some(2),
            idempotency_key: "req-1".into(),
        },
        ClientMessage::CancelTrip {
            id: 7,
            trip_id: trip_id(),
            reason: Some("changed my mind".into()),
        },
        ClientMessage::SubscribeViewport {
            id: 8,
            viewport: Viewport {
                south: 52.4,
                west: 13.2,
                north: 52.6,
                east: 13.6,
            },
            zoom: 12.5,
        },
        ClientMessage::GetTrip {
            id: 10,
            trip_id: trip_id(),
        },
        ClientMessage::AssignDriver {
            id: 9,
            trip_id: trip_id(),
            driver_id: "driver-2".into(),
        },
    ]
}

fn server_examples() -> Vec<ServerMessage> {
    vec![
        ServerMessage::Welcome {
            version: 1,
            role: Role::Rider,
            subject: "rider-1".into(),
            limits: SessionLimits {
                max_message_bytes: 4096,
                messages_per_sec: 20,
            },
        },
        ServerMessage::SessionState {
            driver: Some(DriverState {
                online: true,
                vehicle_class: Some(VehicleClass::Comfort),
                capacity: Some(4),
            }),
            trips: vec![trip()],
        },
        ServerMessage::Ack {
            id: 6,
            trip: Some(trip()),
            changed: true,
        },
        ServerMessage::error(
            Some(6),
            ErrorCode::InvalidCoordinates,
            "lat must be between -90 and 90",
        ),
        ServerMessage::Offer {
            trip: trip(),
            expires_at: NOW + 15_000,
            pickup_eta_s: 240,
        },
        ServerMessage::TripUpdate { trip: trip() },
        ServerMessage::DriverPosition {
            trip_id: trip_id(),
            driver_id: "driver-1".into(),
            lat: 52.51,
            lng: 13.41,
            heading: None,
            ts: NOW,
            eta: Some(Eta {
                to: EtaTo::Pickup,
                seconds: 185,
            }),
        },
        ServerMessage::Vehicles {
            vehicles: vec![VehicleView {
                driver_id: "driver-1".into(),
                lat: 52.51,
                lng: 13.41,
                heading: Some(180.0),
                status: VehicleStatus::OnTrip,
                ts: NOW,
            }],
        },
        ServerMessage::CellAggregates {
            resolution: 7,
            cells: vec![CellAggregate {
                cell: "871f1d4a8ffffff".into(),
                vehicles: 12,
                available: 7,
                open_requests: 2,
            }],
        },
        ServerMessage::QueuePlace {
            zone_id: trip_id(),
            zone_name: "Airport rank".into(),
            place: 3,
            length: 11,
        },
    ]
}

#[test]
fn client_messages_wire_format() {
    let lines: Vec<String> = client_examples()
        .iter()
        .map(|m| serde_json::to_string(m).unwrap())
        .collect();
    insta::assert_snapshot!(lines.join("\n"));
    for (message, line) in client_examples().into_iter().zip(&lines) {
        assert_eq!(client::decode(line, NOW).unwrap(), message);
    }
}

#[test]
fn server_messages_wire_format() {
    let lines: Vec<String> = server_examples()
        .iter()
        .map(ServerMessage::to_json)
        .collect();
    insta::assert_snapshot!(lines.join("\n"));
    for (message, line) in server_examples().into_iter().zip(&lines) {
        assert_eq!(
            serde_json::from_str::<ServerMessage>(line).unwrap(),
            message
        );
    }
}

#[test]
fn checked_in_schema_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/client-protocol.json");
    let generated = serde_json::to_string_pretty(&client::json_schema()).unwrap() + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "protocol/schema/client-protocol.json is out of date with the protocol types; \
         regenerate it with `UPDATE_SCHEMA=1 cargo test -p protocol --test wire`"
    );
}

#[test]
fn malformed_frames_are_refused_with_invalid_message() {
    for frame in [
        "",
        "null",
        "[]",
        "{}",
        r#"{"type":"teleport"}"#,
        r#"{"type":"go_offline"}"#,
        r#"{"type":"go_offline","id":-1}"#,
        r#"{"type":"go_offline","id":1,"extra":true}"#,
        r#"{"type":"location","lat":"52","lng":13,"ts":1,"seq":1}"#,
        r#"{"type":"location","lat":1e999,"lng":13,"ts":1,"seq":1}"#,
        r#"{"type":"go_online","id":1,"vehicle_class":"spaceship","capacity":4}"#,
        "\u{0}\u{1}\u{2}",
    ] {
        let err = client::decode(frame, NOW).expect_err(frame);
        assert_eq!(err.code(), ErrorCode::InvalidMessage, "{frame}: {err}");
        // What the client reads is ours, not the JSON parser's (which names lines, columns
        // and Rust's idea of the fields).
        let told = err.client_message();
        for internal in ["line ", "column", "`", "expected", "missing field"] {
            assert!(!told.contains(internal), "{frame}: {told}");
        }
    }
    let nested = "[".repeat(10_000) + &"]".repeat(10_000);
    assert_eq!(
        client::decode(&nested, NOW).unwrap_err().code(),
        ErrorCode::InvalidMessage
    );
}

#[test]
fn bus_payloads_round_trip() {
    let command = TripCommand::Cancel {
        trip_id: trip_id(),
        actor: Actor::Dispatcher,
        actor_id: "ops-1".into(),
        reason: Some("<script>alert(1)</script>".into()),
    };
    let bytes = codec::encode(&command);
    assert_eq!(bytes[0], codec::FORMAT_V1);
    assert_eq!(codec::decode::<TripCommand>(&bytes).unwrap(), command);
    let reply: bus::TripReply = Err(bus::CommandError::new(ErrorCode::Conflict, "driver busy"));
    assert_eq!(
        codec::decode::<bus::TripReply>(&codec::encode(&reply)).unwrap(),
        reply
    );
    assert!(codec::decode::<TripCommand>(&[]).is_err());
    assert!(codec::decode::<TripCommand>(&[9, 0]).is_err());
    assert!(codec::decode::<TripCommand>(&[codec::FORMAT_V1, 200, 1]).is_err());
}

fn valid_location() -> impl Strategy<Value = Location> {
    (
        -90.0..=90.0f64,
        -180.0..=180.0f64,
        proptest::option::of(0.0..360.0f32),
        proptest::option::of(0.0..=80.0f32),
        proptest::option::of(0.0..=1000.0f32),
        -3_600_000..=60_000i64,
        any::<u64>(),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(
            |(lat, lng, heading, speed, accuracy, dt, seq, id)| Location {
                id,
                lat,
                lng,
                heading,
                speed,
                accuracy,
                ts: NOW + dt,
                seq,
            },
        )
}

fn valid_message() -> impl Strategy<Value = ClientMessage> {
    let point = || (-90.0..=90.0f64, -180.0..=180.0f64).prop_map(|(a, b)| Point::new(a, b));
    let class = || proptest::sample::select(VehicleClass::ALL.to_vec());
    let id_string = || "[A-Za-z0-9_:-]{1,64}";
    prop_oneof![
        valid_location().prop_map(ClientMessage::Location),
        (any::<u64>(), class(), 1..=64u16).prop_map(|(id, vehicle_class, capacity)| {
            ClientMessage::GoOnline {
                id,
                vehicle_class,
                capacity,
            }
        }),
        (
            any::<u64>(),
            point(),
            point(),
            proptest::option::of(class()),
            proptest::option::of(1..=64u16),
            id_string()
        )
            .prop_filter("distinct points", |(_, p, d, ..)| p != d)
            .prop_map(|(id, pickup, dropoff, vehicle_class, min_capacity, key)| {
                ClientMessage::RequestRide {
                    id,
                    pickup,
                    dropoff,
                    vehicle_class,
                    min_capacity,
                    idempotency_key: key,
                }
            }),
        (any::<u64>(), any::<u128>(), proptest::option::of(".{0,70}")).prop_map(
            |(id, trip, reason)| ClientMessage::CancelTrip {
                id,
                trip_id: Uuid::from_u128(trip),
                reason,
            }
        ),
        (any::<u64>(), any::<u128>()).prop_map(|(id, trip)| ClientMessage::GetTrip {
            id,
            trip_id: Uuid::from_u128(trip),
        }),
        (any::<u64>(), any::<u128>(), id_string()).prop_map(|(id, trip, driver_id)| {
            ClientMessage::AssignDriver {
                id,
                trip_id: Uuid::from_u128(trip),
                driver_id,
            }
        }),
    ]
}

/// A value outside what validation accepts for a latitude, including NaN and infinities.
fn bad_latitude() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        (90.000_000_1..f64::MAX),
        (f64::MIN..-90.000_000_1),
    ]
}

fn bad_longitude() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        (180.000_000_1..f64::MAX),
        (f64::MIN..-180.000_000_1),
    ]
}

proptest! {
    #[test]
    fn valid_messages_round_trip_through_json(message in valid_message()) {
        let text = serde_json::to_string(&message).unwrap();
        prop_assert_eq!(client::decode(&text, NOW).unwrap(), message);
    }

    #[test]
    fn positions_round_trip_through_the_codec(location in valid_location(), trip in any::<Option<u128>>()) {
        let position = bus::Position {
            driver_id: "driver-1".into(),
            lat: location.lat,
            lng: location.lng,
            heading: location.heading,
            speed: location.speed,
            accuracy: location.accuracy,
            ts: location.ts,
            seq: location.seq,
            status: VehicleStatus::Available,
            vehicle_class: None,
            capacity: 4,
            trip_id: trip.map(Uuid::from_u128),
            received_us: location.ts * 1000,
        };
        prop_assert_eq!(codec::decode::<bus::Position>(&codec::encode(&position)).unwrap(), position);
    }

    #[test]
    fn out_of_range_latitude_is_rejected(location in valid_location(), lat in bad_latitude()) {
        let message = ClientMessage::Location(Location { lat, ..location });
        prop_assert_eq!(message.validate(NOW).unwrap_err().code(), ErrorCode::InvalidCoordinates);
    }

    #[test]
    fn out_of_range_longitude_is_rejected(location in valid_location(), lng in bad_longitude()) {
        let message = ClientMessage::Location(Location { lng, ..location });
        prop_assert_eq!(message.validate(NOW).unwrap_err().code(), ErrorCode::InvalidCoordinates);
    }

    #[test]
    fn out_of_range_pickup_is_rejected(lat in bad_latitude(), lng in -180.0..180.0f64) {
        let message = ClientMessage::RequestRide {
            id: 1,
            pickup: Point::new(lat, lng),
            dropoff: Point::new(0.0, 0.0),
            vehicle_class: None,
            min_capacity: None,
            idempotency_key: "k".into(),
        };
        prop_assert_eq!(message.validate(NOW).unwrap_err().code(), ErrorCode::InvalidCoordinates);
    }

    #[test]
    fn out_of_range_extras_are_rejected(
        location in valid_location(),
        heading in prop_oneof![Just(f32::NAN), 360.0..f32::MAX, f32::MIN..-0.001f32],
        speed in prop_oneof![Just(f32::INFINITY), 83.001..f32::MAX, f32::MIN..-0.001f32],
        accuracy in prop_oneof![10_000.01..f32::MAX, f32::MIN..-0.001f32],
        ts in prop_oneof![i64::MIN..NOW - 86_400_001, NOW + 300_001..i64::MAX],
        capacity in prop_oneof![Just(0u16), 65..=u16::MAX],
    ) {
        for bad in [
            Location { heading: Some(heading), ..location.clone() },
            Location { speed: Some(speed), ..location.clone() },
            Location { accuracy: Some(accuracy), ..location.clone() },
            Location { ts, ..location.clone() },
        ] {
            prop_assert!(ClientMessage::Location(bad).validate(NOW).is_err());
        }
        let online = ClientMessage::GoOnline { id: 1, vehicle_class: VehicleClass::Standard, capacity };
        prop_assert!(online.validate(NOW).is_err());
    }

    #[test]
    fn bad_ids_are_rejected(id in prop_oneof!["", ".{65,80}", "[a-z]{0,5}[ .*>/<'\"][a-z]{0,5}"]) {
        let message = ClientMessage::AssignDriver { id: 1, trip_id: Uuid::nil(), driver_id: id };
        prop_assert_eq!(message.validate(NOW).unwrap_err().code(), ErrorCode::InvalidField);
    }

    #[test]
    fn arbitrary_text_never_panics_the_decoder(text in ".{0,200}") {
        let _ = client::decode(&text, NOW);
    }

    #[test]
    fn terminal_states_have_no_way_out(from in proptest::sample::select(TripState::ALL.to_vec()),
                                       to in proptest::sample::select(TripState::ALL.to_vec())) {
        if from.is_terminal() {
            prop_assert!(!from.can_become(to));
        }
    }
}
