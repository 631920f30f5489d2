//! Every metric the trips service exports, in one place.

/// Commands handled, by `command` and `outcome` (changed, unchanged or an error code).
pub const COMMANDS: &str = "trips_commands_total";
/// Time to carry out a command, by `command`.
pub const COMMAND_DURATION: &str = "trips_command_duration_seconds";
/// Queries answered, by `query` and `outcome`.
pub const QUERIES: &str = "trips_queries_total";
/// Outbox messages published.
pub const OUTBOX_PUBLISHED: &str = "trips_outbox_published_total";
/// Outbox publish attempts that failed (the messages stay and are retried).
pub const OUTBOX_FAILURES: &str = "trips_outbox_failures_total";
/// Messages waiting in the outbox after the last publish round.
pub const OUTBOX_BACKLOG: &str = "trips_outbox_backlog";
/// Trips the sweeper re-published, expired or cancelled.
pub const SWEPT: &str = "trips_swept_total";
/// Quiet requests re-published to matchers.
pub const REDISPATCHED: &str = "trips_redispatched_total";
/// Breadcrumb rows written.
pub const BREADCRUMBS_WRITTEN: &str = "trips_breadcrumbs_written_total";
/// Breadcrumb rows dropped (buffer full or write failed).
pub const BREADCRUMBS_DROPPED: &str = "trips_breadcrumbs_dropped_total";
/// Breadcrumb rows deleted by retention.
pub const BREADCRUMBS_DELETED: &str = "trips_breadcrumbs_deleted_total";
/// Messages on the bus that could not be decoded.
pub const MALFORMED: &str = "trips_malformed_messages_total";
/// HTTP API requests, by `route` and `status`.
pub const HTTP_REQUESTS: &str = "trips_http_requests_total";
