//! Every metric the gateway exports, in one place. Labels are bounded: roles, message kinds,
//! error codes and reasons, never a client id.

kit::meters! {
    /// Keys in the identity provider's key set, when it is fetched from a URL.
    gauge JWKS_KEYS = "gateway_jwks_keys";
    /// Fetches of the identity provider's key set that failed.
    counter JWKS_FAILURES = "gateway_jwks_failures_total";
    /// Open client connections, by `role`.
    gauge CONNECTIONS = "gateway_connections" [role = "driver"];
    /// Connection attempts, by `outcome` (accepted, over_capacity, handshake_failed, unauthorized,
    /// unsupported_version, hello_timeout).
    counter CONNECTION_ATTEMPTS = "gateway_connection_attempts_total" [outcome = "accepted"];
    /// Connections closed by the server, by `reason`.
    counter CLOSES = "gateway_closes_total" [reason = "normal"];
    /// Client messages received, by `kind`.
    counter MESSAGES = "gateway_messages_total" [kind = "location"];
    /// Client messages refused, by `reason` (an error code).
    counter REJECTS = "gateway_rejects_total" [reason = "invalid_message"];
    /// Role violations (a message the client's role may not send), by `kind`.
    counter FORBIDDEN = "gateway_forbidden_total" [kind = "request_ride"];
    /// Positions accepted for publishing to NATS (see `publisher`).
    counter POSITIONS_PUBLISHED = "gateway_positions_published_total";
    /// Positions not published, by `reason` (stale, nats_down, backlog).
    counter POSITIONS_DROPPED = "gateway_positions_dropped_total" [reason = "stale"];
    /// What follows from a position on a trip and was dropped (the publishing queue was full),
    /// by `what` (breadcrumb, rider); the position itself was published.
    counter FOLLOW_UPS_DROPPED = "gateway_position_follow_ups_dropped_total" [what = "rider"];
    /// Client messages received from NATS, by `gateway` (this process's id), `via`
    /// (targeted: on this gateway's subject; broadcast: on every client's) and `outcome`
    /// (delivered, forwarded: the client left, sent on to every gateway; not_here).
    counter CLIENT_MESSAGES = "gateway_client_messages_total" [];
    /// Zone events detected, by `type` (zone.enter, zone.exit, zone.dwell).
    counter ZONE_EVENTS = "gateway_zone_events_total" [type = "zone.enter"];
    /// Zone events dropped because the queue to the trips service was full.
    counter ZONE_EVENTS_DROPPED = "gateway_zone_events_dropped_total";
    /// Batches of zone events the trips service did not take (retried).
    counter ZONE_RECORD_FAILURES = "gateway_zone_record_failures_total";
    /// Zones in force in this gateway.
    gauge ZONES = "gateway_zones";
    /// Publications handed to the NATS client together (see `publisher`).
    histogram PUBLISH_BATCH = "gateway_publish_batch_size";
    /// Time from a trip's change being committed (its `updated_at`) to its update reaching this
    /// gateway for a driver, by `kind` (offer, trip_update): the trips service's outbox, NATS
    /// and the gateway's inbox. Measured on wall clocks, so across hosts it includes their
    /// clocks' difference.
    histogram TRIP_DELIVERY_AGE = "gateway_trip_delivery_age_seconds" [kind = "offer"];
    /// Trip updates and offers dropped because the client had already been told a newer
    /// version of the trip, by `kind` (offer, trip_update).
    counter STALE_TRIP_UPDATES = "gateway_stale_trip_updates_total" [kind = "trip_update"];
    /// Time to carry out a client command through the trips service, by `kind`.
    histogram COMMAND_DURATION = "gateway_command_duration_seconds" [kind = "go_online"];
    /// Outbound messages dropped or replaced for slow clients, by `kind` (coalesced, dropped).
    counter QUEUE_DROPS = "gateway_queue_drops_total" [kind = "coalesced"];
    /// Frames sent to clients, by `kind`.
    counter FRAMES_SENT = "gateway_frames_sent_total" [kind = "control"];
    /// Dashboard API calls the trips service did not answer.
    counter API_PROXY_FAILURES = "gateway_api_proxy_failures_total";
    /// Dashboard API calls refused before forwarding: a path that is not a plain one under
    /// `/api/` (dot segments, encoded slashes, backslashes, double encodings).
    counter API_PROXY_REFUSED = "gateway_api_proxy_refused_total";
    /// Times the NATS connection came back and every session re-read its state.
    counter RESYNCS = "gateway_resyncs_total";
}

/// The metrics every position moves, looked up once: finding a metric by name and labels
/// costs more than the increment, and a gateway takes positions by the hundred thousand a
/// second. Made after [`register`] (which installs the recorder), or they would count nowhere.
#[derive(Debug, Clone)]
pub struct Hot {
    pub location_messages: metrics::Counter,
    pub positions_published: metrics::Counter,
}

impl Hot {
    /// Looks the handles up in the recorder [`register`] installed.
    pub fn look_up() -> Self {
        Self {
            location_messages: metrics::counter!(MESSAGES, "kind" => "location"),
            positions_published: metrics::counter!(POSITIONS_PUBLISHED),
        }
    }
}
