//! Token buckets: a gateway's per connection, the HTTP API's per API key.

use tokio::time::Instant;

/// Allows `rate` messages per second on average and bursts of `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes a token if one is left.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is back, as the seconds of a `Retry-After` (at least 1).
    pub fn retry_after_s(&self) -> u64 {
        let missing = (1.0 - self.tokens).max(0.0);
        (missing / self.rate.max(1e-3)).ceil().clamp(1.0, 3600.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refills_at_the_rate() {
        let mut bucket = TokenBucket::new(10, 5);
        assert_eq!((0..20).filter(|_| bucket.allow()).count(), 5);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!((0..20).filter(|_| bucket.allow()).count(), 5);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(bucket.allow());
        assert!(!bucket.allow());
        assert_eq!(bucket.retry_after_s(), 1);
        let mut slow = TokenBucket::new(1, 1);
        assert!(slow.allow());
        assert!(!slow.allow());
        assert_eq!(slow.retry_after_s(), 1);
    }
}
