//! Road networks from OpenStreetMap extracts (`.osm.pbf`): travel times from each road's class
//! and `maxspeed`, one-way streets respected, shortest paths by contraction hierarchies
//! (`fast_paths`), and points snapped to the nearest road node.
//!
//! A network keeps only its largest strongly connected component, so that every snapped point
//! can reach every other: fragments (a car park's lanes, a road cut by the extract's border) are
//! dropped when loaded. Times are free-flow: the road's legal or typical speed, no traffic.

pub mod eta;
mod osm;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::Mutex;

use fast_paths::{FastGraph, InputGraph, PathCalculator};
use protocol::Point;
use rstar::RTree;
use rstar::primitives::GeomWithData;

pub use osm::{Speeds, parse_maxspeed};

const METRES_PER_DEGREE: f64 = 111_320.0;

/// Speed over the gap between a point and the road node it snaps to (a vehicle leaving a kerb
/// or a courtyard), in metres per second.
pub const ACCESS_SPEED_MPS: f64 = 4.0;

/// One directed road segment between two nodes.
#[derive(Debug, Clone, Copy)]
struct Edge {
    to: u32,
    ms: u32,
}

/// Adjacency in compressed sparse rows: node `n`'s edges are `edges[first[n]..first[n + 1]]`.
#[derive(Debug, Default)]
struct Csr {
    first: Vec<u32>,
    edges: Vec<Edge>,
}

impl Csr {
    fn new(nodes: usize, mut arcs: Vec<(u32, Edge)>) -> Self {
        arcs.sort_by_key(|(from, e)| (*from, e.to, e.ms));
        let mut first = vec![0u32; nodes + 1];
        for (from, _) in &arcs {
            first[*from as usize + 1] += 1;
        }
        for n in 0..nodes {
            first[n + 1] += first[n];
        }
        Self {
            first,
            edges: arcs.into_iter().map(|(_, e)| e).collect(),
        }
    }

    fn out(&self, node: u32) -> &[Edge] {
        &self.edges[self.first[node as usize] as usize..self.first[node as usize + 1] as usize]
    }
}

/// A point's place on the network: its nearest node and how far it is from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snap {
    pub node: u32,
    pub offset_m: f64,
}

impl Snap {
    fn access_s(&self) -> f64 {
        self.offset_m / ACCESS_SPEED_MPS
    }
}

/// One stretch of a route: drive to `to` at `speed_mps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Leg {
    pub to: Point,
    pub speed_mps: f64,
}

/// Sizes of a loaded network, for logs and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub ways: usize,
    pub nodes: usize,
    pub edges: usize,
    /// Nodes outside the largest strongly connected component, dropped.
    pub dropped_nodes: usize,
}

/// A drivable road network, ready for queries from any number of threads.
pub struct RoadNetwork {
    points: Vec<Point>,
    forward: Csr,
    backward: Csr,
    hierarchy: FastGraph,
    calculators: Mutex<Vec<PathCalculator>>,
    searches: Mutex<Vec<Search>>,
    tree: RTree<GeomWithData<[f64; 2], u32>>,
    origin: Point,
    summary: Summary,
}

impl std::fmt::Debug for RoadNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoadNetwork")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl RoadNetwork {
    /// Reads an OpenStreetMap extract with the default speeds.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::load_with(path, &Speeds::default())
    }

    pub fn load_with(path: &Path, speeds: &Speeds) -> anyhow::Result<Self> {
        let extract = osm::read(path, speeds)?;
        Self::build(extract)
    }

    fn build(extract: osm::Extract) -> anyhow::Result<Self> {
        let osm::Extract { ways, points, arcs } = extract;
        anyhow::ensure!(!arcs.is_empty(), "the extract holds no drivable road");
        // The largest strongly connected component, renumbered densely.
        let all = Csr::new(points.len(), arcs.clone());
        let nodes: Vec<u32> = (0..points.len() as u32).collect();
        let components =
            pathfinding::directed::strongly_connected_components::strongly_connected_components(
                &nodes,
                |n| all.out(*n).iter().map(|e| e.to).collect::<Vec<_>>(),
            );
        let largest = components
            .into_iter()
            .max_by_key(Vec::len)
            .unwrap_or_default();
        let mut renumber = vec![u32::MAX; points.len()];
        let mut kept = Vec::with_capacity(largest.len());
        let mut sorted = largest;
        sorted.sort_unstable();
        for old in sorted {
            renumber[old as usize] = kept.len() as u32;
            kept.push(points[old as usize]);
        }
        let arcs: Vec<(u32, Edge)> = arcs
            .into_iter()
            .filter_map(|(from, e)| {
                let (from, to) = (renumber[from as usize], renumber[e.to as usize]);
                (from != u32::MAX && to != u32::MAX).then_some((from, Edge { to, ms: e.ms }))
            })
            .collect();
        anyhow::ensure!(kept.len() >= 2, "the extract's roads do not connect");
        let reversed = arcs
            .iter()
            .map(|(from, e)| {
                (
                    e.to,
                    Edge {
                        to: *from,
                        ms: e.ms,
                    },
                )
            })
            .collect();
        let mut input = InputGraph::new();
        for (from, e) in &arcs {
            input.add_edge(*from as usize, e.to as usize, e.ms as usize);
        }
        input.freeze();
        let hierarchy = fast_paths::prepare(&input);
        let origin = kept[0];
        let tree = RTree::bulk_load(
            kept.iter()
                .enumerate()
                .map(|(i, p)| GeomWithData::new(project(origin, *p), i as u32))
                .collect(),
        );
        let summary = Summary {
            ways,
            nodes: kept.len(),
            edges: arcs.len(),
            dropped_nodes: points.len() - kept.len(),
        };
        tracing::info!(?summary, "road network ready");
        Ok(Self {
            forward: Csr::new(kept.len(), arcs),
            backward: Csr::new(kept.len(), reversed),
            points: kept,
            hierarchy,
            calculators: Mutex::new(Vec::new()),
            searches: Mutex::new(Vec::new()),
            tree,
            origin,
            summary,
        })
    }

    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// The south-west and north-east corners of the box around every node.
    pub fn bounds(&self) -> (Point, Point) {
        let mut sw = self.points[0];
        let mut ne = sw;
        for p in &self.points {
            sw = Point::new(sw.lat.min(p.lat), sw.lng.min(p.lng));
            ne = Point::new(ne.lat.max(p.lat), ne.lng.max(p.lng));
        }
        (sw, ne)
    }

    /// The node's position.
    pub fn point(&self, node: u32) -> Point {
        self.points[node as usize]
    }

    /// The nearest road node to `point`.
    pub fn snap(&self, point: Point) -> Snap {
        let nearest = self
            .tree
            .nearest_neighbor(&project(self.origin, point))
            .expect("a network has nodes");
        Snap {
            node: nearest.data,
            offset_m: point.distance_m(&self.points[nearest.data as usize]),
        }
    }

    /// Travel time from `from` to `to` in seconds, by the hierarchy: snapped at both ends.
    pub fn travel_time_s(&self, from: Point, to: Point) -> f64 {
        let (a, b) = (self.snap(from), self.snap(to));
        a.access_s() + self.node_time_ms(a.node, b.node) as f64 / 1000.0 + b.access_s()
    }

    fn node_time_ms(&self, a: u32, b: u32) -> u64 {
        if a == b {
            return 0;
        }
        // One strongly connected component: every node reaches every other.
        self.path(a, b)
            .map_or(u64::MAX / 4, |p| p.get_weight() as u64)
    }

    /// The shortest path between two nodes by the hierarchy, with a calculator from the pool.
    fn path(&self, a: u32, b: u32) -> Option<fast_paths::ShortestPath> {
        let mut calculator = self
            .calculators
            .lock()
            .expect("pool")
            .pop()
            .unwrap_or_else(|| fast_paths::create_calculator(&self.hierarchy));
        let path = calculator.calc_path(&self.hierarchy, a as usize, b as usize);
        self.calculators.lock().expect("pool").push(calculator);
        path
    }

    /// Travel times in seconds from each of `froms` to `to`, in one backward search from `to`
    /// that stops once every origin is settled: a row of a matrix, without a query per pair.
    pub fn travel_times_to(&self, froms: &[Point], to: Point) -> Vec<f64> {
        let snaps: Vec<Snap> = froms.iter().map(|p| self.snap(*p)).collect();
        let nodes: Vec<u32> = snaps.iter().map(|s| s.node).collect();
        self.row(&snaps, &nodes, self.snap(to))
    }

    /// Travel times in seconds, `result[j][i]` from `froms[i]` to `tos[j]`: every point snapped
    /// once, then one backward search per destination.
    pub fn matrix(&self, froms: &[Point], tos: &[Point]) -> Vec<Vec<f64>> {
        let snaps: Vec<Snap> = froms.iter().map(|p| self.snap(*p)).collect();
        let nodes: Vec<u32> = snaps.iter().map(|s| s.node).collect();
        tos.iter()
            .map(|to| self.row(&snaps, &nodes, self.snap(*to)))
            .collect()
    }

    fn row(&self, snaps: &[Snap], nodes: &[u32], target: Snap) -> Vec<f64> {
        let mut search = self
            .searches
            .lock()
            .expect("pool")
            .pop()
            .unwrap_or_else(|| Search::new(self.points.len()));
        search.run(&self.backward, target.node, nodes);
        let times = snaps
            .iter()
            .map(|s| s.access_s() + f64::from(search.ms(s.node)) / 1000.0 + target.access_s())
            .collect();
        search.reset();
        self.searches.lock().expect("pool").push(search);
        times
    }

    /// The way to drive from `from` to `to`: to the nearest road node, along the shortest path
    /// at each segment's speed, then to `to`. Never empty; its last leg ends at `to`.
    pub fn route(&self, from: Point, to: Point) -> Vec<Leg> {
        let (a, b) = (self.snap(from), self.snap(to));
        let access = |to| Leg {
            to,
            speed_mps: ACCESS_SPEED_MPS,
        };
        let mut legs = vec![access(self.point(a.node))];
        let path = (a.node != b.node)
            .then(|| self.path(a.node, b.node))
            .flatten();
        for pair in path.iter().flat_map(|p| p.get_nodes().windows(2)) {
            let (x, y) = (pair[0] as u32, pair[1] as u32);
            let ms = self
                .forward
                .out(x)
                .iter()
                .filter(|e| e.to == y)
                .map(|e| e.ms)
                .min()
                .unwrap_or(1)
                .max(1);
            let metres = self.point(x).distance_m(&self.point(y));
            legs.push(Leg {
                to: self.point(y),
                // Nodes a hair apart still move the vehicle on.
                speed_mps: (metres / (f64::from(ms) / 1000.0)).max(0.5),
            });
        }
        legs.push(access(to));
        legs
    }
}

/// Reusable state of a backward Dijkstra search over the network. Heap entries pack the
/// time (high 32 bits, milliseconds) and the node (low 32 bits) into one `u64`, so the heap
/// compares one integer.
#[derive(Debug)]
struct Search {
    ms: Vec<u32>,
    touched: Vec<u32>,
    wanted: Vec<bool>,
    heap: BinaryHeap<Reverse<u64>>,
}

const UNREACHED: u32 = u32::MAX;

impl Search {
    fn new(nodes: usize) -> Self {
        Self {
            ms: vec![UNREACHED; nodes],
            touched: Vec::new(),
            wanted: vec![false; nodes],
            heap: BinaryHeap::new(),
        }
    }

    fn run(&mut self, graph: &Csr, source: u32, until: &[u32]) {
        let mut remaining = 0usize;
        for &n in until {
            if !self.wanted[n as usize] {
                self.wanted[n as usize] = true;
                remaining += 1;
            }
        }
        self.set(source, 0);
        self.heap.push(Reverse(u64::from(source)));
        while let Some(Reverse(entry)) = self.heap.pop() {
            let (d, n) = ((entry >> 32) as u32, entry as u32);
            if d > self.ms[n as usize] {
                continue;
            }
            if self.wanted[n as usize] {
                self.wanted[n as usize] = false;
                remaining -= 1;
                if remaining == 0 {
                    break;
                }
            }
            for e in graph.out(n) {
                let next = d.saturating_add(e.ms);
                if next < self.ms[e.to as usize] {
                    self.set(e.to, next);
                    self.heap
                        .push(Reverse((u64::from(next) << 32) | u64::from(e.to)));
                }
            }
        }
        for &n in until {
            self.wanted[n as usize] = false;
        }
    }

    fn set(&mut self, node: u32, ms: u32) {
        if self.ms[node as usize] == UNREACHED {
            self.touched.push(node);
        }
        self.ms[node as usize] = ms;
    }

    fn ms(&self, node: u32) -> u32 {
        self.ms[node as usize]
    }

    fn reset(&mut self) {
        for n in self.touched.drain(..) {
            self.ms[n as usize] = UNREACHED;
        }
        self.heap.clear();
    }
}

/// Local planar coordinates in metres around `origin`, for the nearest-node index.
fn project(origin: Point, p: Point) -> [f64; 2] {
    [
        (p.lng - origin.lng) * METRES_PER_DEGREE * origin.lat.to_radians().cos(),
        (p.lat - origin.lat) * METRES_PER_DEGREE,
    ]
}

/// Builds a network from a hand-made list of nodes and one-way segments, for tests.
#[doc(hidden)]
pub fn from_segments(
    points: Vec<Point>,
    segments: &[(u32, u32, f64)],
) -> anyhow::Result<RoadNetwork> {
    let arcs = segments
        .iter()
        .map(|&(a, b, speed_mps)| {
            let metres = points[a as usize].distance_m(&points[b as usize]);
            (
                a,
                Edge {
                    to: b,
                    ms: osm::millis(metres, speed_mps),
                },
            )
        })
        .collect();
    RoadNetwork::build(osm::Extract {
        ways: segments.len(),
        points,
        arcs,
    })
}

#[cfg(test)]
mod tests;
