//! Every metric the gateway exports, in one place. Labels are bounded: roles, message kinds,
//! error codes and reasons, never a client id.

/// Open client connections, by `role`.
pub const CONNECTIONS: &str = "gateway_connections";
/// Connection attempts, by `outcome` (accepted, over_capacity, handshake_failed, unauthorized,
/// unsupported_version, hello_timeout).
pub const CONNECTION_ATTEMPTS: &str = "gateway_connection_attempts_total";
/// Connections closed by the server, by `reason`.
pub const CLOSES: &str = "gateway_closes_total";
/// Client messages received, by `kind`.
pub const MESSAGES: &str = "gateway_messages_total";
/// Client messages refused, by `reason` (an error code).
pub const REJECTS: &str = "gateway_rejects_total";
/// Role violations (a message the client's role may not send), by `kind`.
pub const FORBIDDEN: &str = "gateway_forbidden_total";
/// Positions published to NATS.
pub const POSITIONS_PUBLISHED: &str = "gateway_positions_published_total";
/// Positions not published, by `reason` (stale, nats_down).
pub const POSITIONS_DROPPED: &str = "gateway_positions_dropped_total";
/// Time to hand a position to the NATS client.
pub const PUBLISH_DURATION: &str = "gateway_publish_duration_seconds";
/// Time to carry out a client command through the trips service, by `kind`.
pub const COMMAND_DURATION: &str = "gateway_command_duration_seconds";
/// Outbound messages dropped or replaced for slow clients, by `kind` (coalesced, dropped).
pub const QUEUE_DROPS: &str = "gateway_queue_drops_total";
/// Frames sent to clients, by `kind`.
pub const FRAMES_SENT: &str = "gateway_frames_sent_total";
/// Dashboard API calls the trips service did not answer.
pub const API_PROXY_FAILURES: &str = "gateway_api_proxy_failures_total";
