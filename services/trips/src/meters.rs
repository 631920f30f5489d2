//! Every metric the trips service exports, in one place.

kit::meters! {
    /// Commands handled, by `command` and `outcome` (changed, unchanged or an error code).
    counter COMMANDS = "trips_commands_total" [command = "create_trip", outcome = "changed"];
    /// Time to carry out a command, by `command`.
    histogram COMMAND_DURATION = "trips_command_duration_seconds" [command = "create_trip"];
    /// Transitions written by one statement.
    histogram WRITE_BATCH = "trips_write_batch_size";
    /// Decided transitions not written because their command had given up waiting (the
    /// database did not answer in time); the caller retries.
    counter WRITES_ABANDONED = "trips_writes_abandoned_total";
    /// Queries answered, by `query` and `outcome`.
    counter QUERIES = "trips_queries_total" [query = "session_state", outcome = "ok"];
    /// Outbox messages published.
    counter OUTBOX_PUBLISHED = "trips_outbox_published_total";
    /// Outbox publish attempts that failed (the messages stay and are retried).
    counter OUTBOX_FAILURES = "trips_outbox_failures_total";
    /// Transitions whose messages wait in the outbox (checked every second).
    gauge OUTBOX_BACKLOG = "trips_outbox_backlog";
    /// Trips the sweeper re-published, expired or cancelled.
    counter SWEPT = "trips_swept_total";
    /// Quiet requests re-published to matchers.
    counter REDISPATCHED = "trips_redispatched_total";
    /// Breadcrumb rows written.
    counter BREADCRUMBS_WRITTEN = "trips_breadcrumbs_written_total";
    /// Breadcrumb rows dropped (buffer full or write failed).
    counter BREADCRUMBS_DROPPED = "trips_breadcrumbs_dropped_total";
    /// Breadcrumb rows deleted by retention.
    counter BREADCRUMBS_DELETED = "trips_breadcrumbs_deleted_total";
    /// Messages on the bus that could not be decoded.
    counter MALFORMED = "trips_malformed_messages_total" [subject = "command"];
    /// Requests dropped unanswered because they arrived after their requester gave up, by
    /// `subject` (`command` or `query`).
    counter STALE_REQUESTS = "trips_stale_requests_total" [subject = "command"];
    /// Drivers' progress reports checked against their position, by `stage` and `outcome`
    /// (`near`, `flagged` for a completion far from the dropoff, `refused` for an arrival far
    /// from the pickup, `unchecked` without a position).
    counter PROGRESS_CHECKS = "trips_progress_checks_total" [stage = "arrived", outcome = "near"];
    /// Zones in force in this process.
    gauge ZONES = "trips_zones";
    /// Zones created, changed or deleted through this process.
    counter ZONE_CHANGES = "trips_zone_changes_total";
    /// Zone events from gateways, by `type` and `outcome` (`recorded`, or `repeated` when it
    /// repeated what was known and was dropped).
    counter ZONE_EVENTS = "trips_zone_events_total" [type = "zone.enter", outcome = "recorded"];
    /// Webhook deliveries queued by the outbox.
    counter WEBHOOKS_QUEUED = "trips_webhook_queued_total";
    /// Webhook attempts, by `outcome`: `delivered`, `failed` (to be retried) or `dead`.
    counter WEBHOOK_DELIVERIES = "trips_webhook_deliveries_total" [outcome = "delivered"];
    /// From an event to its delivery to an endpoint, for delivered events.
    histogram WEBHOOK_LAG = "trips_webhook_delivery_lag_seconds";
    /// One webhook request, answered or not.
    histogram WEBHOOK_ATTEMPT_DURATION = "trips_webhook_attempt_duration_seconds";
    /// Deliveries waiting (retries included), and dead, measured by the delivering replica.
    gauge WEBHOOK_BACKLOG = "trips_webhook_backlog";
    gauge WEBHOOK_DEAD = "trips_webhook_dead";
    /// 1 while this replica delivers webhooks.
    gauge WEBHOOK_LEADER = "trips_webhook_leader";
    /// HTTP API requests, by `route` and `status`.
    counter HTTP_REQUESTS = "trips_http_requests_total" [route = "trips", status = "200"];
    /// Integrator API requests refused because their key went past its rate.
    counter API_RATE_LIMITED = "trips_api_rate_limited_total";
    /// Keys in the identity provider's key set, when it is fetched from a URL.
    gauge JWKS_KEYS = "trips_jwks_keys";
    /// Fetches of the identity provider's key set that failed.
    counter JWKS_FAILURES = "trips_jwks_failures_total";
}
