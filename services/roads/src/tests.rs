//! The road network's tests: one-way streets, snapping, fragments, `maxspeed`, the Helsinki extract, matrices.

use std::path::PathBuf;

use super::*;

fn helsinki() -> RoadNetwork {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/helsinki.osm.pbf");
    RoadNetwork::load(&path).expect("the Helsinki extract loads")
}

/// Deterministic points spread over the extract's central area.
fn points_in(network: &RoadNetwork, count: usize) -> Vec<Point> {
    let (sw, ne) = network.bounds();
    let (lat0, lat1, lng0, lng1) = (sw.lat, ne.lat, sw.lng, ne.lng);
    let mut state = 0x2545_f491_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 10_000) as f64 / 10_000.0
    };
    (0..count)
        .map(|_| {
            Point::new(
                lat0 + (lat1 - lat0) * (0.2 + 0.6 * next()),
                lng0 + (lng1 - lng0) * (0.2 + 0.6 * next()),
            )
        })
        .collect()
}

/// A 100 m square, corners 0 (south-west), 1 (north-west), 2 (north-east), 3 (south-east):
/// every side two-way except 0 → 3, which is one-way eastbound.
fn square() -> RoadNetwork {
    let sw = Point::new(60.0, 25.0);
    let north = 100.0 / METRES_PER_DEGREE;
    let east = 100.0 / (METRES_PER_DEGREE * 60f64.to_radians().cos());
    let points = vec![
        sw,
        Point::new(sw.lat + north, sw.lng),
        Point::new(sw.lat + north, sw.lng + east),
        Point::new(sw.lat, sw.lng + east),
    ];
    let v = 10.0;
    from_segments(
        points,
        &[
            (0, 1, v),
            (1, 0, v),
            (1, 2, v),
            (2, 1, v),
            (2, 3, v),
            (3, 2, v),
            (0, 3, v),
        ],
    )
    .expect("a square")
}

#[test]
fn one_way_streets_are_driven_one_way() {
    let network = square();
    let (sw, se) = (network.point(0), network.point(3));
    let east = network.travel_time_s(sw, se);
    let west = network.travel_time_s(se, sw);
    assert!(
        (east - 10.0).abs() < 0.1,
        "straight along the one-way: {east}"
    );
    assert!((west - 30.0).abs() < 0.2, "around three sides: {west}");
    let route = network.route(se, sw);
    let corners: Vec<Point> = route.iter().map(|leg| leg.to).collect();
    assert_eq!(
        corners,
        vec![se, network.point(2), network.point(1), sw, sw],
        "against the one-way the route goes round"
    );
}

#[test]
fn a_point_off_the_road_snaps_to_the_nearest_node_and_pays_for_the_gap() {
    let network = square();
    let sw = network.point(0);
    let off = Point::new(sw.lat - 20.0 / METRES_PER_DEGREE, sw.lng);
    let snap = network.snap(off);
    assert_eq!(snap.node, 0);
    assert!((snap.offset_m - 20.0).abs() < 0.5);
    let time = network.travel_time_s(off, network.point(3));
    assert!(
        (time - (10.0 + 20.0 / ACCESS_SPEED_MPS)).abs() < 0.2,
        "{time}"
    );
}

#[test]
fn fragments_that_cannot_reach_the_rest_are_dropped() {
    let mut points = square().points.clone();
    points.push(Point::new(60.01, 25.01));
    points.push(Point::new(60.0101, 25.01));
    // A dead-end pair joined one way only to the square, and to each other.
    let network = from_segments(
        points,
        &[
            (0, 1, 10.0),
            (1, 0, 10.0),
            (0, 3, 10.0),
            (3, 0, 10.0),
            (4, 5, 10.0),
            (3, 4, 10.0),
        ],
    )
    .expect("a network");
    assert_eq!(network.summary().nodes, 3);
    assert_eq!(
        network.summary().dropped_nodes,
        3,
        "node 2 has no road, 4 and 5 no way back"
    );
}

#[test]
fn maxspeed_values_are_read_as_mappers_write_them() {
    assert_eq!(parse_maxspeed("50"), Some(50.0));
    assert_eq!(parse_maxspeed("50 km/h"), Some(50.0));
    assert_eq!(parse_maxspeed("40;30"), Some(40.0));
    assert!((parse_maxspeed("30 mph").unwrap() - 48.28).abs() < 0.01);
    assert_eq!(parse_maxspeed("FI:urban"), Some(50.0));
    assert_eq!(parse_maxspeed("DE:zone30"), Some(30.0));
    assert_eq!(parse_maxspeed("walk"), Some(6.0));
    assert_eq!(parse_maxspeed("none"), None);
    assert_eq!(parse_maxspeed("signals"), None);
    assert_eq!(parse_maxspeed("0"), None);
    assert_eq!(parse_maxspeed("-5"), None);
}

#[test]
fn a_missing_or_unreadable_extract_is_a_clear_error() {
    let missing = RoadNetwork::load(Path::new("/nonexistent/city.osm.pbf")).unwrap_err();
    assert!(
        format!("{missing:#}").contains("cannot open the road extract"),
        "{missing:#}"
    );
    let dir = std::env::temp_dir().join(format!("roads-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.osm.pbf");
    std::fs::write(&junk, b"this is not a protobuf file at all").unwrap();
    let error = RoadNetwork::load(&junk).unwrap_err();
    assert!(
        format!("{error:#}").contains("is not a readable .osm.pbf file"),
        "{error:#}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_helsinki_extract_becomes_one_connected_network() {
    let network = helsinki();
    let summary = network.summary();
    assert!(summary.ways > 300, "{summary:?}");
    assert!(summary.nodes > 1_000, "{summary:?}");
    // Every pair of points has a finite time, no faster than 130 km/h as the crow flies.
    let points = points_in(&network, 30);
    for a in &points {
        for b in &points {
            let t = network.travel_time_s(*a, *b);
            assert!(t.is_finite() && t < 3_600.0, "{a:?} → {b:?}: {t}");
            assert!(t * 36.2 >= a.distance_m(b) - 1.0, "{a:?} → {b:?}: {t}");
        }
    }
}

#[test]
fn a_matrix_row_equals_the_pairwise_queries() {
    let network = helsinki();
    let points = points_in(&network, 40);
    let (froms, tos) = points.split_at(20);
    let matrix = network.matrix(froms, tos);
    for (to, whole) in tos.iter().zip(&matrix) {
        let row = network.travel_times_to(froms, *to);
        assert_eq!(&row, whole, "a matrix's row is the row on its own");
        for (from, t) in froms.iter().zip(&row) {
            let pairwise = network.travel_time_s(*from, *to);
            assert!(
                (t - pairwise).abs() < 1e-6,
                "{from:?} → {to:?}: {t} against {pairwise}"
            );
        }
    }
}

#[test]
fn a_route_takes_as_long_as_its_travel_time_and_ends_at_the_destination() {
    let network = helsinki();
    let points = points_in(&network, 10);
    for pair in points.windows(2) {
        let (from, to) = (pair[0], pair[1]);
        let legs = network.route(from, to);
        assert_eq!(legs.last().map(|leg| leg.to), Some(to));
        let mut at = from;
        let mut seconds = 0.0;
        for leg in &legs {
            assert!(leg.speed_mps > 0.5 && leg.speed_mps < 40.0, "{leg:?}");
            seconds += at.distance_m(&leg.to) / leg.speed_mps;
            at = leg.to;
        }
        let expected = network.travel_time_s(from, to);
        // Segment times are rounded to the millisecond.
        assert!(
            (seconds - expected).abs() < 0.01 * legs.len() as f64 + 0.01,
            "{from:?} → {to:?}: driven {seconds} s, estimated {expected} s"
        );
    }
}
