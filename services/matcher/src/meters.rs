//! Every metric the matcher exports, in one place.

/// Position updates applied to the index, by `outcome` (inserted, moved, updated, stale).
pub const POSITIONS: &str = "matcher_positions_total";
/// Positions dropped because the engine was behind.
pub const POSITIONS_DROPPED: &str = "matcher_positions_dropped_total";
/// Drivers in the index.
pub const INDEXED_DRIVERS: &str = "matcher_index_drivers";
/// Requests waiting for a driver.
pub const WAITING: &str = "matcher_waiting_requests";
/// Ride requests received.
pub const REQUESTS: &str = "matcher_requests_total";
/// Offer claims, by `outcome` (offered, conflict, gone, error).
pub const CLAIMS: &str = "matcher_claims_total";
/// Time from receiving a request to its offer being stored, by `strategy`.
pub const MATCH_LATENCY: &str = "matcher_match_latency_seconds";
/// Estimated pickup time of offers made, by `strategy`.
pub const PICKUP_ETA: &str = "matcher_pickup_eta_seconds";
/// Offers the matcher expired for lack of an answer.
pub const OFFERS_EXPIRED: &str = "matcher_offers_expired_total";
/// Requests that ran out of search time.
pub const SEARCHES_EXPIRED: &str = "matcher_searches_expired_total";
/// Drivers evicted for silence.
pub const EVICTED: &str = "matcher_evicted_total";
/// Time to solve one matching round, by `strategy`.
pub const ROUND_DURATION: &str = "matcher_round_duration_seconds";
