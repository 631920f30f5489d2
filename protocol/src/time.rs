//! Wall-clock timestamps as carried on the wire: milliseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMillis = i64;

/// The current wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> UnixMillis {
    now_us() / 1000
}

/// The current wall-clock time in microseconds since the Unix epoch (for latency measurements).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
