//! Why NATS payloads are postcard: encode and decode a driver position both ways; and what
//! reading a client's location frame costs.
#![allow(clippy::print_stdout)] // a benchmark reports on stdout
//!
//! Run with `cargo bench -p protocol --bench codec`.

use criterion::{Criterion, criterion_group, criterion_main};
use protocol::bus::Position;
use protocol::client::VehicleStatus;
use protocol::codec;
use std::hint::black_box;

fn position() -> Position {
    Position {
        driver_id: "driver-123456".into(),
        lat: 52.520_008,
        lng: 13.404_954,
        heading: Some(87.5),
        speed: Some(11.2),
        accuracy: Some(4.0),
        ts: 1_800_000_000_000,
        seq: 123_456,
        status: VehicleStatus::Available,
        vehicle_class: Some(protocol::VehicleClass::Standard),
        capacity: 4,
        trip_id: None,
        received_us: 1_800_000_000_000_123,
    }
}

fn bench(c: &mut Criterion) {
    let position = position();
    let json = serde_json::to_vec(&position).unwrap();
    let binary = codec::encode(&position);
    println!(
        "payload bytes: json {} postcard {}",
        json.len(),
        binary.len()
    );
    let mut group = c.benchmark_group("position");
    group.bench_function("json_encode", |b| {
        b.iter(|| serde_json::to_vec(black_box(&position)).unwrap())
    });
    group.bench_function("postcard_encode", |b| {
        b.iter(|| codec::encode(black_box(&position)))
    });
    group.bench_function("json_decode", |b| {
        b.iter(|| serde_json::from_slice::<Position>(black_box(&json)).unwrap())
    });
    group.bench_function("postcard_decode", |b| {
        b.iter(|| codec::decode::<Position>(black_box(&binary)).unwrap())
    });
    group.finish();

    // A driver's location frame as a gateway reads it: `client::decode` (read straight into a
    // location) beside reading it through the tagged enum, as `decode` did before.
    let frame = r#"{"type":"location","lat":52.520008,"lng":13.404954,"heading":87.5,"speed":11.2,"accuracy":4,"ts":1800000000000,"seq":123456}"#;
    let now = 1_800_000_000_000;
    let mut group = c.benchmark_group("location_frame");
    group.bench_function("decode", |b| {
        b.iter(|| protocol::client::decode(black_box(frame), now).unwrap())
    });
    group.bench_function("through_the_enum", |b| {
        b.iter(|| {
            serde_json::from_str::<protocol::client::ClientMessage>(black_box(frame)).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
