//! Estimated travel times behind one interface, for every process that estimates them: the
//! matcher ranks drivers with it, the gateway tells riders when their driver will come. Both
//! load the same model from the same setting (`--roads`), so a rider is told what the
//! matcher assumed.

use std::path::Path;
use std::sync::Arc;

use protocol::Point;

use crate::RoadNetwork;

/// Estimated time to drive from one point to another: straight line ([`StraightLine`]) or
/// over a road network ([`Roads`]).
pub trait EtaModel: Send + Sync + std::fmt::Debug {
    /// Seconds from `from` to `to`.
    fn eta_s(&self, from: Point, to: Point) -> f64;

    /// Seconds from each of `froms` to one destination (a row of a matching round's matrix).
    /// Models with a faster way than one query per origin override it.
    fn etas_to_s(&self, froms: &[Point], to: Point) -> Vec<f64> {
        froms.iter().map(|from| self.eta_s(*from, to)).collect()
    }
}

/// Straight-line distance, lengthened by a detour factor, at a constant speed.
#[derive(Debug, Clone, Copy)]
pub struct StraightLine {
    pub speed_mps: f64,
    /// Road distance over straight-line distance, typically 1.3 to 1.4 in cities.
    pub detour: f64,
}

impl Default for StraightLine {
    fn default() -> Self {
        Self {
            speed_mps: 8.0,
            detour: 1.35,
        }
    }
}

impl EtaModel for StraightLine {
    fn eta_s(&self, from: Point, to: Point) -> f64 {
        from.distance_m(&to) * self.detour / self.speed_mps
    }
}

/// Travel time over a road network from an OpenStreetMap extract (`--roads FILE.osm.pbf`).
#[derive(Debug, Clone)]
pub struct Roads(pub Arc<RoadNetwork>);

impl EtaModel for Roads {
    fn eta_s(&self, from: Point, to: Point) -> f64 {
        self.0.travel_time_s(from, to)
    }

    /// One backward search from the destination settles every origin (BENCHMARKS.md compares
    /// it with a hierarchy query per origin).
    fn etas_to_s(&self, froms: &[Point], to: Point) -> Vec<f64> {
        self.0.travel_times_to(froms, to)
    }
}

/// The model a process is configured with: over the roads of `roads` when given, straight
/// line otherwise. `what` says what the estimates are for, in the log line.
pub fn load(roads: Option<&Path>, what: &str) -> anyhow::Result<Arc<dyn EtaModel>> {
    let Some(path) = roads else {
        return Ok(Arc::new(StraightLine::default()));
    };
    let started = std::time::Instant::now();
    let network = RoadNetwork::load(path)?;
    let summary = network.summary();
    tracing::info!(
        roads = %path.display(),
        nodes = summary.nodes,
        edges = summary.edges,
        took_ms = started.elapsed().as_millis() as u64,
        "{what} by road ETA"
    );
    Ok(Arc::new(Roads(Arc::new(network))))
}
