//! Every metric the matcher exports, in one place.

kit::meters! {
    /// Position updates applied to the index, by `outcome` (inserted, moved, updated, stale).
    counter POSITIONS = "matcher_positions_total" [outcome = "updated"];
    /// Positions dropped because the engine was behind.
    counter POSITIONS_DROPPED = "matcher_positions_dropped_total";
    /// Drivers in the index.
    gauge INDEXED_DRIVERS = "matcher_index_drivers";
    /// Requests waiting for a driver.
    gauge WAITING = "matcher_waiting_requests";
    /// Ride requests received.
    counter REQUESTS = "matcher_requests_total";
    /// Offer claims, by `outcome` (offered, conflict, gone, error).
    counter CLAIMS = "matcher_claims_total" [outcome = "offered"];
    /// Time from receiving a request to its offer being stored, by `strategy`.
    histogram MATCH_LATENCY = "matcher_match_latency_seconds" [strategy = "greedy"];
    /// Estimated pickup time of offers made, by `strategy`.
    histogram PICKUP_ETA = "matcher_pickup_eta_seconds" [strategy = "greedy"];
    /// Offers the matcher expired for lack of an answer.
    counter OFFERS_EXPIRED = "matcher_offers_expired_total";
    /// Requests that ran out of search time.
    counter SEARCHES_EXPIRED = "matcher_searches_expired_total";
    /// Drivers evicted for silence.
    counter EVICTED = "matcher_evicted_total";
    /// Time from a position's arrival at its gateway to its arrival here (gateway, NATS,
    /// matcher's subscription). Wall clocks: across hosts it includes their clocks' difference.
    histogram POSITION_AGE = "matcher_position_age_seconds";
    /// Time from a request's creation (its commit in the trips service) to its first arrival
    /// here: the trips service's outbox and NATS. Wall clocks, as above.
    histogram REQUEST_AGE = "matcher_request_age_seconds";
    /// Time to solve one matching round, by `strategy`.
    histogram ROUND_DURATION = "matcher_round_duration_seconds" [strategy = "greedy"];
}
