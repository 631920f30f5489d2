//! Matching strategies over a table of candidates: each waiting request with its eligible
//! drivers and their estimated pickup times.

use pathfinding::kuhn_munkres::kuhn_munkres_min;
use pathfinding::matrix::Matrix;
use protocol::Point;

/// Estimated time for a driver to reach a pickup; pluggable for a road-network ETA.
pub trait EtaModel: Send + Sync + std::fmt::Debug {
    fn pickup_eta_s(&self, driver: Point, pickup: Point) -> f64;
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
    fn pickup_eta_s(&self, driver: Point, pickup: Point) -> f64 {
        driver.distance_m(&pickup) * self.detour / self.speed_mps
    }
}

/// How waiting requests are given drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Each request, in arrival order, takes its nearest free driver at once: lowest latency.
    Greedy,
    /// Requests gathered over a short window are solved together as a minimum-cost bipartite
    /// matching (Kuhn-Munkres): lower pickup times overall when drivers are scarce.
    Batched,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "greedy" => Ok(Self::Greedy),
            "batched" => Ok(Self::Batched),
            other => Err(format!("unknown strategy {other:?}: greedy or batched")),
        }
    }
}

/// One request's candidates: (driver, pickup ETA in seconds), any order.
pub type Candidates = Vec<(String, f64)>;

/// Assigns drivers to requests; `result[i]` is request i's driver and ETA, if any. No driver
/// is given to two requests.
pub fn assign(strategy: Strategy, table: &[Candidates]) -> Vec<Option<(String, f64)>> {
    match strategy {
        Strategy::Greedy => greedy(table),
        Strategy::Batched => batched(table),
    }
}

fn greedy(table: &[Candidates]) -> Vec<Option<(String, f64)>> {
    let mut taken = std::collections::HashSet::new();
    table
        .iter()
        .map(|candidates| {
            let best = candidates
                .iter()
                .filter(|(driver, _)| !taken.contains(driver.as_str()))
                .min_by(|a, b| a.1.total_cmp(&b.1))?;
            taken.insert(best.0.as_str());
            Some(best.clone())
        })
        .collect()
}

/// Cost of leaving a request unmatched (or of an impossible pair): larger than any sum of real
/// costs, so the solver first matches as many requests as it can, then minimises time.
const INFEASIBLE: i64 = 1 << 40;

fn batched(table: &[Candidates]) -> Vec<Option<(String, f64)>> {
    let mut drivers: Vec<&str> = table
        .iter()
        .flat_map(|c| c.iter().map(|(d, _)| d.as_str()))
        .collect();
    drivers.sort_unstable();
    drivers.dedup();
    if drivers.is_empty() || table.is_empty() {
        return vec![None; table.len()];
    }
    let column = |driver: &str| drivers.binary_search(&driver).expect("driver is listed");
    // Costs in milliseconds of ETA.
    let mut cost = Matrix::new(table.len(), drivers.len(), INFEASIBLE);
    for (row, candidates) in table.iter().enumerate() {
        for (driver, eta) in candidates {
            let c = (eta * 1000.0).round() as i64;
            let cell = &mut cost[(row, column(driver))];
            *cell = (*cell).min(c);
        }
    }
    // The solver needs at least as many columns as rows: transpose when requests outnumber
    // drivers.
    let pairs: Vec<(usize, usize)> = if table.len() <= drivers.len() {
        let (_, columns) = kuhn_munkres_min(&cost);
        columns.into_iter().enumerate().collect()
    } else {
        let (_, rows) = kuhn_munkres_min(&cost.transposed());
        rows.into_iter()
            .enumerate()
            .map(|(driver, request)| (request, driver))
            .collect()
    };
    let mut result = vec![None; table.len()];
    for (request, driver) in pairs {
        let c = cost[(request, driver)];
        if c < INFEASIBLE {
            result[request] = Some((drivers[driver].to_owned(), c as f64 / 1000.0));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::{Candidates, Strategy, assign};
    use proptest::prelude::{Strategy as _, any, prop_assert, prop_assert_eq, proptest};
    use std::collections::HashSet;

    fn table() -> impl proptest::strategy::Strategy<Value = Vec<Candidates>> {
        // Up to 5 requests and 5 drivers with sparse candidate lists.
        proptest::collection::vec(
            proptest::collection::vec((0..5usize, 1..1_000u32), 0..5).prop_map(|pairs| {
                let mut seen = HashSet::new();
                pairs
                    .into_iter()
                    .filter(|(d, _)| seen.insert(*d))
                    .map(|(d, eta)| (format!("d{d}"), f64::from(eta)))
                    .collect::<Candidates>()
            }),
            0..5,
        )
    }

    /// Best (most matches, then least total ETA) by trying every assignment.
    fn brute_force(table: &[Candidates]) -> (usize, f64) {
        fn go(table: &[Candidates], i: usize, used: &mut HashSet<String>) -> (usize, f64) {
            if i == table.len() {
                return (0, 0.0);
            }
            let mut best = go(table, i + 1, used);
            for (driver, eta) in &table[i] {
                if used.insert(driver.clone()) {
                    let (n, cost) = go(table, i + 1, used);
                    let candidate = (n + 1, cost + eta);
                    if candidate.0 > best.0 || (candidate.0 == best.0 && candidate.1 < best.1) {
                        best = candidate;
                    }
                    used.remove(driver);
                }
            }
            best
        }
        go(table, 0, &mut HashSet::new())
    }

    fn summary(result: &[Option<(String, f64)>]) -> (usize, f64) {
        let matched: Vec<_> = result.iter().flatten().collect();
        (matched.len(), matched.iter().map(|(_, eta)| eta).sum())
    }

    proptest! {
        #[test]
        fn batched_matches_brute_force(table in table()) {
            let result = assign(Strategy::Batched, &table);
            let (n, cost) = summary(&result);
            let (best_n, best_cost) = brute_force(&table);
            prop_assert_eq!(n, best_n);
            prop_assert!((cost - best_cost).abs() < 1e-6, "{} vs {}", cost, best_cost);
        }

        #[test]
        fn no_driver_gets_two_requests(table in table(), batched in any::<bool>()) {
            let strategy = if batched { Strategy::Batched } else { Strategy::Greedy };
            let result = assign(strategy, &table);
            prop_assert_eq!(result.len(), table.len());
            let mut seen = HashSet::new();
            for (i, pair) in result.iter().enumerate() {
                if let Some((driver, eta)) = pair {
                    prop_assert!(seen.insert(driver.clone()), "{} assigned twice", driver);
                    prop_assert!(table[i].iter().any(|(d, e)| d == driver && e == eta), "not a candidate");
                }
            }
        }
    }

    #[test]
    fn batched_beats_greedy_when_greedy_is_short_sighted() {
        // Request 0 grabs d0 (its nearest), leaving request 1 a long way from d1.
        let table = vec![
            vec![("d0".to_owned(), 10.0), ("d1".to_owned(), 20.0)],
            vec![("d0".to_owned(), 15.0), ("d1".to_owned(), 300.0)],
        ];
        assert_eq!(summary(&assign(Strategy::Greedy, &table)).1, 310.0);
        assert_eq!(summary(&assign(Strategy::Batched, &table)).1, 35.0);
        // More requests than drivers, and the reverse.
        let more_requests = vec![vec![("d0".to_owned(), 5.0)]; 3];
        assert_eq!(summary(&assign(Strategy::Batched, &more_requests)).0, 1);
        let more_drivers = vec![vec![
            ("d0".to_owned(), 5.0),
            ("d1".to_owned(), 1.0),
            ("d2".to_owned(), 9.0),
        ]];
        assert_eq!(
            assign(Strategy::Batched, &more_drivers)[0]
                .as_ref()
                .unwrap()
                .0,
            "d1"
        );
    }
}
