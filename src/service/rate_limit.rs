//! Per-key rate limits of the device side: writes per device
//! (`devices.max_writes_per_minute`: inventory, status reports, command
//! results, EnOS results) and enrollments per enrollment token
//! (`devices.max_enrollments_per_minute`). A refusal is
//! [`Error::TooManyRequests`] with the seconds to wait (HTTP 429 with
//! `Retry-After`).
//!
//! The limiter is governor's GCRA, keyed by device or token id, per
//! process: each `serve` replica counts on its own, so N replicas behind a
//! load balancer allow up to N times the figure. A burst of the whole
//! per-minute quota is allowed, then one more per 60 / quota seconds.
//!
//! Rule: a device call is charged once, where it enters the service (a
//! public function the transport calls), never again by the internal steps
//! it takes; internal callers use the uncharged variants.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::config::DevicesConfig;
use crate::error::{Error, Result};

/// How many checks go by between two sweeps of keys that are back to a
/// full quota (they need no state).
const SWEEP_EVERY: u64 = 10_000;

/// One keyed limiter; `None` when its quota is 0 (no limit).
struct Keyed {
    limiter: Option<DefaultKeyedRateLimiter<Uuid>>,
    checks: AtomicU64,
}

impl Keyed {
    fn new(per_minute: u32) -> Self {
        Self {
            limiter: NonZeroU32::new(per_minute).map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            checks: AtomicU64::new(0),
        }
    }

    fn check(&self, key: Uuid) -> Result<()> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            // Whole seconds, rounded up: the next call after that passes.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            Error::TooManyRequests { retry_after_secs: secs.max(1) }
        })
    }
}

/// The device side's limiters (one per process, in `App`).
pub struct RateLimits {
    device_writes: Keyed,
    enrollments: Keyed,
}

impl RateLimits {
    pub fn new(config: &DevicesConfig) -> Self {
        Self {
            device_writes: Keyed::new(config.max_writes_per_minute),
            enrollments: Keyed::new(config.max_enrollments_per_minute),
        }
    }

    /// Charge one write to `device` (the device acted for, when a gateway
    /// acts for a sub-device).
    pub fn device_write(&self, device: Uuid) -> Result<()> {
        self.device_writes.check(device)
    }

    /// Charge one enrollment to the enrollment token `token`.
    pub fn enrollment(&self, token: Uuid) -> Result<()> {
        self.enrollments.check(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(writes: u32) -> DevicesConfig {
        DevicesConfig { max_writes_per_minute: writes, ..crate::config::Config::default().devices }
    }

    #[test]
    fn the_quota_is_per_key_and_a_refusal_says_when_to_retry() {
        let limits = RateLimits::new(&config(3));
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        for _ in 0..3 {
            assert!(limits.device_write(a).is_ok());
        }
        match limits.device_write(a) {
            Err(Error::TooManyRequests { retry_after_secs }) => assert!((1..=20).contains(&retry_after_secs)),
            other => panic!("expected TooManyRequests, got {other:?}"),
        }
        assert!(limits.device_write(b).is_ok(), "another device has its own quota");
    }

    #[test]
    fn zero_means_no_limit() {
        let limits = RateLimits::new(&config(0));
        let a = Uuid::now_v7();
        assert!((0..1000).all(|_| limits.device_write(a).is_ok()));
    }
}
