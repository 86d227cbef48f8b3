//! Request rates per API key: each key has its own token bucket (GCRA), so one busy client
//! slows only itself. Buckets are kept per replica, and only for keys that authenticated, so
//! their number is bounded by the keys that exist.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use domain::ApiKeyId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use service::config::TenantLimits;

use crate::problem::ApiError;

/// The policy's name in `RateLimit-Policy` and `RateLimit` headers.
const POLICY: &str = "per-key";

pub struct KeyRateLimits {
    limiter: DefaultKeyedRateLimiter<ApiKeyId>,
    clock: DefaultClock,
    rate: u32,
    burst: u32,
    /// How long a drained bucket takes to fill again.
    window: Duration,
}

impl KeyRateLimits {
    pub fn new(limits: &TenantLimits) -> Self {
        let rate = NonZeroU32::new(limits.key_requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.key_request_burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
            rate: rate.get(),
            burst: burst.get(),
            window: quota.burst_size_replenished_in(),
        }
    }

    /// Counts one request of `key`; a 429 when its bucket is empty.
    pub fn check(&self, key: ApiKeyId) -> Result<(), ApiError> {
        let Err(not_until) = self.limiter.check_key(&key) else {
            return Ok(());
        };
        // Whole seconds, rounded up: a client that waits `Retry-After` is let in.
        let wait = not_until.wait_time_from(self.clock.now());
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let seconds = seconds.max(1);
        let window = self.window.as_secs().max(1);
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this API key may make {} requests at once and then {} per second; retry in {seconds} s",
                self.burst, self.rate
            ),
        )
        .with_extension("limit", self.burst)
        .with_extension("retry_after_seconds", seconds)
        .with_header(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(seconds),
        )
        .with_header(
            HeaderName::from_static("ratelimit-policy"),
            header_value(format!("\"{POLICY}\";q={};w={window}", self.burst)),
        )
        .with_header(
            HeaderName::from_static("ratelimit"),
            header_value(format!("\"{POLICY}\";r=0;t={seconds}")),
        ))
    }
}

fn header_value(text: String) -> HeaderValue {
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}
