//! Reading drivable ways out of an OpenStreetMap extract.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use osmpbf::{Element, ElementReader};
use protocol::Point;

use crate::Edge;

/// Speeds by road class, in km/h, used where a way has no usable `maxspeed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Speeds {
    pub by_class: Vec<(&'static str, f64)>,
    /// Multiplies every speed: below 1.0 where traffic keeps vehicles under the limits.
    pub factor: f64,
}

impl Default for Speeds {
    fn default() -> Self {
        Self {
            by_class: vec![
                ("motorway", 100.0),
                ("motorway_link", 60.0),
                ("trunk", 80.0),
                ("trunk_link", 50.0),
                ("primary", 60.0),
                ("primary_link", 40.0),
                ("secondary", 50.0),
                ("secondary_link", 40.0),
                ("tertiary", 40.0),
                ("tertiary_link", 30.0),
                ("unclassified", 30.0),
                ("residential", 30.0),
                ("road", 30.0),
                ("living_street", 10.0),
                ("service", 15.0),
            ],
            factor: 1.0,
        }
    }
}

impl Speeds {
    fn class(&self, highway: &str) -> Option<f64> {
        self.by_class
            .iter()
            .find(|(class, _)| *class == highway)
            .map(|(_, kmh)| *kmh)
    }
}

/// A `maxspeed` value in km/h: a number (`50`), with a unit (`30 mph`, `50 km/h`), the first of
/// several (`50;30`), `walk`, or a country's zone (`FI:urban`, `DE:zone30`). `None` for `none`,
/// `signals` and anything else unusable, where the road class decides.
pub fn parse_maxspeed(value: &str) -> Option<f64> {
    let value = value.split(';').next()?.trim();
    if value == "walk" {
        return Some(6.0);
    }
    if let Some((_, zone)) = value.split_once(':') {
        return match zone {
            "urban" => Some(50.0),
            "rural" | "trunk" => Some(80.0),
            "motorway" => Some(120.0),
            "living_street" => Some(20.0),
            "zone20" => Some(20.0),
            "zone30" => Some(30.0),
            _ => None,
        };
    }
    let (number, per_mile) = match value.strip_suffix("mph") {
        Some(number) => (number.trim(), true),
        None => (value.trim_end_matches("km/h").trim(), false),
    };
    let kmh: f64 = number.parse().ok()?;
    if !(1.0..=200.0).contains(&kmh) {
        return None;
    }
    Some(if per_mile { kmh * 1.609_344 } else { kmh })
}

/// How a way may be driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Both,
    Forward,
    Backward,
}

fn direction(tags: &HashMap<&str, &str>) -> Direction {
    match tags.get("oneway").copied() {
        Some("yes" | "true" | "1") => Direction::Forward,
        Some("-1" | "reverse") => Direction::Backward,
        Some("no" | "false" | "0") => Direction::Both,
        _ => {
            let implied = matches!(
                tags.get("highway").copied(),
                Some("motorway" | "motorway_link")
            ) || matches!(
                tags.get("junction").copied(),
                Some("roundabout" | "circular")
            );
            if implied {
                Direction::Forward
            } else {
                Direction::Both
            }
        }
    }
}

/// The way's speed in km/h if a car may drive it.
fn drivable(tags: &HashMap<&str, &str>, speeds: &Speeds) -> Option<f64> {
    let class = speeds.class(tags.get("highway")?)?;
    let closed = |key| matches!(tags.get(key).copied(), Some("no" | "private"));
    if closed("access") && !tags.contains_key("motor_vehicle") && !tags.contains_key("motorcar")
        || closed("motor_vehicle")
        || closed("motorcar")
        || tags.get("area").copied() == Some("yes")
    {
        return None;
    }
    let limit = tags.get("maxspeed").and_then(|v| parse_maxspeed(v));
    Some(limit.unwrap_or(class) * speeds.factor)
}

/// Milliseconds to cover `metres` at `speed_mps`; at least 1 (the hierarchy needs positive
/// weights).
pub(crate) fn millis(metres: f64, speed_mps: f64) -> u32 {
    ((metres / speed_mps * 1000.0).round() as u32).max(1)
}

/// What a network is built from: node coordinates and directed segments between them.
#[derive(Debug)]
pub(crate) struct Extract {
    pub ways: usize,
    pub points: Vec<Point>,
    pub arcs: Vec<(u32, Edge)>,
}

struct Way {
    refs: Vec<i64>,
    kmh: f64,
    direction: Direction,
}

/// Two passes over the file: the drivable ways, then the coordinates of their nodes.
pub(crate) fn read(path: &Path, speeds: &Speeds) -> anyhow::Result<Extract> {
    let open = || {
        ElementReader::from_path(path)
            .with_context(|| format!("cannot open the road extract {}", path.display()))
    };
    let mut ways = Vec::new();
    open()?
        .for_each(|element| {
            if let Element::Way(way) = element {
                let tags: HashMap<&str, &str> = way.tags().collect();
                if let Some(kmh) = drivable(&tags, speeds) {
                    ways.push(Way {
                        refs: way.refs().collect(),
                        kmh,
                        direction: direction(&tags),
                    });
                }
            }
        })
        .with_context(|| format!("{} is not a readable .osm.pbf file", path.display()))?;
    let mut ids: HashMap<i64, u32> = HashMap::new();
    for way in &ways {
        for r in &way.refs {
            let next = ids.len() as u32;
            ids.entry(*r).or_insert(next);
        }
    }
    let mut points = vec![None; ids.len()];
    let mut place = |id: i64, lat: f64, lng: f64| {
        if let Some(&n) = ids.get(&id) {
            points[n as usize] = Some(Point::new(lat, lng));
        }
    };
    open()?
        .for_each(|element| match element {
            Element::Node(node) => place(node.id(), node.lat(), node.lon()),
            Element::DenseNode(node) => place(node.id(), node.lat(), node.lon()),
            _ => {}
        })
        .with_context(|| format!("{} is not a readable .osm.pbf file", path.display()))?;
    let mut arcs = Vec::new();
    for way in &ways {
        let speed_mps = way.kmh / 3.6;
        for pair in way.refs.windows(2) {
            let (a, b) = (ids[&pair[0]], ids[&pair[1]]);
            let (Some(pa), Some(pb)) = (points[a as usize], points[b as usize]) else {
                continue; // a node outside the extract
            };
            if a == b {
                continue;
            }
            let ms = millis(pa.distance_m(&pb), speed_mps);
            if way.direction != Direction::Backward {
                arcs.push((a, Edge { to: b, ms }));
            }
            if way.direction != Direction::Forward {
                arcs.push((b, Edge { to: a, ms }));
            }
        }
    }
    // Nodes the file did not carry stay unplaced and unconnected: give them a position so
    // indices stay dense; no arc touches them, so they fall outside the kept component.
    let placed = points
        .iter()
        .flatten()
        .next()
        .copied()
        .unwrap_or(Point::new(0.0, 0.0));
    Ok(Extract {
        ways: ways.len(),
        points: points.into_iter().map(|p| p.unwrap_or(placed)).collect(),
        arcs,
    })
}
