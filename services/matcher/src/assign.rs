//! Matching strategies over a table of candidates: each waiting request with its eligible
//! drivers and their estimated pickup times.

use std::collections::HashSet;

use pathfinding::kuhn_munkres::kuhn_munkres_min;
use pathfinding::matrix::Matrix;

pub use roads::eta::{EtaModel, Roads, StraightLine};

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

/// How the batched strategy keeps a request far from every driver from losing round after
/// round to nearer ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fairness {
    /// Seconds of pickup ETA that each second of waiting is worth: a request that has waited
    /// `t` competes for drivers as if they were `wait_weight * t` seconds nearer to it. It only
    /// decides which requests a round serves when drivers are too few for all of them.
    pub wait_weight: f64,
    /// A request that has waited this long, in seconds, is served first and greedily (in
    /// arrival order, its nearest free candidate) before the rest of the batch is solved.
    pub max_wait_s: f64,
}

impl Fairness {
    /// Pickup ETA alone, no bound on waiting.
    pub const NONE: Self = Self {
        wait_weight: 0.0,
        max_wait_s: f64::INFINITY,
    };
}

impl Default for Fairness {
    /// Chosen from the sweeps of `cargo xtask bench matching` (BENCHMARKS.md, "Fair
    /// batching"): at high load the weight barely moves either figure, while the bound sets
    /// the request-to-offer p99. At 10 s that p99 stayed under greedy's in four runs of four,
    /// with mean pickup time 35 to 38% below greedy's.
    fn default() -> Self {
        Self {
            wait_weight: 1.0,
            max_wait_s: 10.0,
        }
    }
}

/// Assigns drivers to requests; `result[i]` is request i's driver and ETA, if any. No driver
/// is given to two requests. `waited_s[i]` is how long request i has waited, and `table` is in
/// arrival order (the greedy strategy serves it in that order).
pub fn assign(
    strategy: Strategy,
    table: &[Candidates],
    waited_s: &[f64],
    fairness: Fairness,
) -> Vec<Option<(String, f64)>> {
    assert_eq!(table.len(), waited_s.len(), "one wait per request");
    match strategy {
        Strategy::Greedy => {
            let mut taken = HashSet::new();
            table.iter().map(|c| nearest_free(c, &mut taken)).collect()
        }
        Strategy::Batched => batched(table, waited_s, fairness),
    }
}

/// The nearest candidate not yet taken, which it takes.
fn nearest_free<'a>(
    candidates: &'a Candidates,
    taken: &mut HashSet<&'a str>,
) -> Option<(String, f64)> {
    let best = candidates
        .iter()
        .filter(|(driver, _)| !taken.contains(driver.as_str()))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    taken.insert(best.0.as_str());
    Some(best.clone())
}

/// Cost of leaving a request unmatched (or of an impossible pair): larger than any sum of real
/// costs, so the solver first matches as many requests as it can, then minimises time.
const INFEASIBLE: i64 = 1 << 40;

/// Waits beyond this add nothing more to a request's weight (keeps costs far below
/// [`INFEASIBLE`]).
const WAIT_CAP_S: f64 = 3_600.0;

fn batched(
    table: &[Candidates],
    waited_s: &[f64],
    fairness: Fairness,
) -> Vec<Option<(String, f64)>> {
    let mut result = vec![None; table.len()];
    // Requests past the bound first, greedily in arrival order.
    let mut taken = HashSet::new();
    let mut rows = Vec::new();
    for (row, candidates) in table.iter().enumerate() {
        if waited_s[row] >= fairness.max_wait_s {
            result[row] = nearest_free(candidates, &mut taken);
        } else {
            rows.push(row);
        }
    }
    let mut drivers: Vec<&str> = rows
        .iter()
        .flat_map(|&row| table[row].iter().map(|(d, _)| d.as_str()))
        .filter(|driver| !taken.contains(driver))
        .collect();
    drivers.sort_unstable();
    drivers.dedup();
    if drivers.is_empty() || rows.is_empty() {
        return result;
    }
    // Costs in milliseconds: the pickup ETA less the request's waiting bonus, shifted by the
    // largest bonus so that none is negative. A shift common to every pair changes no choice
    // among matchings of the same size, which is all the solver compares.
    let bonus: Vec<i64> = rows
        .iter()
        .map(|&row| {
            let weight = fairness.wait_weight.max(0.0);
            (weight * waited_s[row].clamp(0.0, WAIT_CAP_S) * 1000.0).round() as i64
        })
        .collect();
    let shift = bonus.iter().copied().max().unwrap_or(0);
    let column = |driver: &str| drivers.binary_search(&driver).ok();
    let mut cost = Matrix::new(rows.len(), drivers.len(), INFEASIBLE);
    for (i, &row) in rows.iter().enumerate() {
        for (driver, eta) in &table[row] {
            let Some(j) = column(driver) else { continue };
            let c = (eta * 1000.0).round() as i64 - bonus[i] + shift;
            let cell = &mut cost[(i, j)];
            *cell = (*cell).min(c);
        }
    }
    // The solver needs at least as many columns as rows: transpose when requests outnumber
    // drivers.
    let pairs: Vec<(usize, usize)> = if rows.len() <= drivers.len() {
        let (_, columns) = kuhn_munkres_min(&cost);
        columns.into_iter().enumerate().collect()
    } else {
        let (_, matched) = kuhn_munkres_min(&cost.transposed());
        matched
            .into_iter()
            .enumerate()
            .map(|(driver, request)| (request, driver))
            .collect()
    };
    for (i, j) in pairs {
        let c = cost[(i, j)];
        if c < INFEASIBLE {
            let eta_ms = c + bonus[i] - shift;
            result[rows[i]] = Some((drivers[j].to_owned(), eta_ms as f64 / 1000.0));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::{Candidates, Fairness, Strategy, assign};
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

    /// Pickup ETA alone, as if every request had just arrived.
    fn plain(strategy: Strategy, table: &[Candidates]) -> Vec<Option<(String, f64)>> {
        assign(strategy, table, &vec![0.0; table.len()], Fairness::NONE)
    }

    fn summary(result: &[Option<(String, f64)>]) -> (usize, f64) {
        let matched: Vec<_> = result.iter().flatten().collect();
        (matched.len(), matched.iter().map(|(_, eta)| eta).sum())
    }

    proptest! {
        #[test]
        fn batched_matches_brute_force(table in table()) {
            let result = plain(Strategy::Batched, &table);
            let (n, cost) = summary(&result);
            let (best_n, best_cost) = brute_force(&table);
            prop_assert_eq!(n, best_n);
            prop_assert!((cost - best_cost).abs() < 1e-6, "{} vs {}", cost, best_cost);
        }

        #[test]
        fn no_driver_gets_two_requests(table in table(), batched in any::<bool>()) {
            let strategy = if batched { Strategy::Batched } else { Strategy::Greedy };
            let result = plain(strategy, &table);
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
        assert_eq!(summary(&plain(Strategy::Greedy, &table)).1, 310.0);
        assert_eq!(summary(&plain(Strategy::Batched, &table)).1, 35.0);
        // More requests than drivers, and the reverse.
        let more_requests = vec![vec![("d0".to_owned(), 5.0)]; 3];
        assert_eq!(summary(&plain(Strategy::Batched, &more_requests)).0, 1);
        let more_drivers = vec![vec![
            ("d0".to_owned(), 5.0),
            ("d1".to_owned(), 1.0),
            ("d2".to_owned(), 9.0),
        ]];
        assert_eq!(
            plain(Strategy::Batched, &more_drivers)[0]
                .as_ref()
                .unwrap()
                .0,
            "d1"
        );
    }

    proptest! {
        #[test]
        fn with_waits_no_driver_gets_two_requests_and_every_pair_is_a_candidate(
            table in table(),
            waits in proptest::collection::vec(0.0..60.0f64, 5),
            weight in 0.0..5.0f64,
            bound in 1.0..60.0f64,
        ) {
            let waited = &waits[..table.len()];
            let fairness = Fairness { wait_weight: weight, max_wait_s: bound };
            let result = assign(Strategy::Batched, &table, waited, fairness);
            let mut seen = HashSet::new();
            for (i, pair) in result.iter().enumerate() {
                if let Some((driver, eta)) = pair {
                    prop_assert!(seen.insert(driver.clone()), "{} assigned twice", driver);
                    prop_assert!(table[i].iter().any(|(d, e)| d == driver && e == eta), "not a candidate");
                }
            }
            // Waiting changes who is served, never how many when no request is overdue.
            if waited.iter().all(|w| *w < bound) {
                prop_assert_eq!(summary(&result).0, brute_force(&table).0);
            }
        }
    }

    fn contested() -> Vec<Candidates> {
        // One driver, two requests: request 0 near it, request 1 far.
        vec![
            vec![("d0".to_owned(), 10.0)],
            vec![("d0".to_owned(), 100.0)],
        ]
    }

    #[test]
    fn a_request_that_has_waited_long_enough_outbids_a_nearer_one() {
        let table = contested();
        let fresh = assign(Strategy::Batched, &table, &[0.0, 60.0], Fairness::NONE);
        assert!(
            fresh[0].is_some() && fresh[1].is_none(),
            "ETA alone: the near one"
        );
        let weighted = Fairness {
            wait_weight: 2.0,
            max_wait_s: f64::INFINITY,
        };
        // 60 s of waiting at 2 s per second is worth 120 s of ETA, more than the 90 s between them.
        let result = assign(Strategy::Batched, &table, &[0.0, 60.0], weighted);
        assert!(result[0].is_none());
        assert_eq!(
            result[1],
            Some(("d0".to_owned(), 100.0)),
            "the real ETA is reported"
        );
        // 30 s is worth only 60 s: the near request still wins.
        let result = assign(Strategy::Batched, &table, &[0.0, 30.0], weighted);
        assert!(result[0].is_some() && result[1].is_none());
    }

    #[test]
    fn an_overdue_request_takes_its_nearest_driver_before_the_batch_is_solved() {
        // Solved together, request 1 would get d1 so that request 0 keeps d0 (30 s in all);
        // overdue, request 1 takes d0, its nearest, and request 0 gets what is left.
        let table = vec![
            vec![("d0".to_owned(), 10.0), ("d1".to_owned(), 200.0)],
            vec![("d0".to_owned(), 5.0), ("d1".to_owned(), 20.0)],
        ];
        let bound = Fairness {
            wait_weight: 0.0,
            max_wait_s: 30.0,
        };
        let calm = assign(Strategy::Batched, &table, &[0.0, 29.0], bound);
        assert_eq!(calm[1].as_ref().unwrap().0, "d1");
        let overdue = assign(Strategy::Batched, &table, &[0.0, 30.0], bound);
        assert_eq!(overdue[1], Some(("d0".to_owned(), 5.0)));
        assert_eq!(overdue[0], Some(("d1".to_owned(), 200.0)));
    }
}
