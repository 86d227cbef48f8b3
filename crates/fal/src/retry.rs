//! Retry policy as data: which failures of which operation may be repeated, and after how long.
//!
//! Submitting is not idempotent (a repeated submit after a lost answer is a second billed job),
//! so a submit is repeated only when fal certainly did not accept it. Status, result and cancel
//! are safe to repeat and are retried more freely.

use std::time::Duration;

use crate::error::TransportStage;

/// Statuses that are never retried, whatever a policy lists.
const NEVER_RETRY: [u16; 5] = [400, 401, 403, 404, 422];

/// The kind of call being made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Submit,
    Status,
    Result,
    Cancel,
    /// Storage initiate, part uploads of a file and multipart completion.
    Upload,
}

/// What one failed attempt looked like, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// fal answered with a non-success status.
    Status {
        status: u16,
        /// The answer carried `x-fal-request-id`: the request reached fal's queue.
        has_request_id: bool,
        /// 504 with `X-Fal-Request-Timeout-Type: user`.
        user_timeout: bool,
        retry_after: Option<Duration>,
    },
    /// No answer.
    Transport { stage: TransportStage },
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    RetryAfter(Duration),
    GiveUp,
}

/// Backoff and retryable failures for one operation.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry; doubled for each further retry.
    pub base_delay: Duration,
    /// Cap of the backoff. A `Retry-After` longer than this makes the call give up and report
    /// the rate limit instead of holding the caller.
    pub max_delay: Duration,
    /// Relative jitter: 0.25 spreads each delay over +/-25 %.
    pub jitter: f64,
    /// Statuses worth another attempt.
    pub retry_statuses: Vec<u16>,
    /// Whether transport failures after sending are retried (never for submits).
    pub retry_transport: bool,
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            jitter: 0.0,
            retry_statuses: Vec::new(),
            retry_transport: false,
        }
    }

    /// fal-js queue submit defaults: 3 retries, 1 s base, 60 s cap, 429/502/503/504.
    pub fn submit_default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            jitter: 0.25,
            retry_statuses: vec![429, 502, 503, 504],
            retry_transport: false,
        }
    }

    /// Idempotent reads and cancels: 5 retries, 1 s base, 30 s cap, also 500.
    pub fn idempotent_default() -> Self {
        Self {
            max_retries: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            jitter: 0.25,
            retry_statuses: vec![429, 500, 502, 503, 504],
            retry_transport: true,
        }
    }

    /// The same shape with short delays, for tests against the simulator.
    pub fn with_delays(mut self, base: Duration, max: Duration) -> Self {
        self.base_delay = base;
        self.max_delay = max;
        self
    }

    /// Backoff before retry number `retry` (0-based): `min(base * 2^retry, max)` with jitter.
    /// `jitter_sample` is uniform in `[0, 1)`.
    pub fn backoff(&self, retry: u32, jitter_sample: f64) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.min(30)))
            .min(self.max_delay);
        let factor = 1.0 + self.jitter * (2.0 * jitter_sample.clamp(0.0, 1.0) - 1.0);
        exp.mul_f64(factor.max(0.0)).min(self.max_delay)
    }

    /// Decides whether to retry `op` after `failure`, given `retries_done` retries so far.
    pub fn decide(
        &self,
        op: Operation,
        failure: &AttemptFailure,
        retries_done: u32,
        jitter_sample: f64,
    ) -> RetryDecision {
        if retries_done >= self.max_retries {
            return RetryDecision::GiveUp;
        }
        let backoff = self.backoff(retries_done, jitter_sample);
        match *failure {
            AttemptFailure::Status {
                status,
                has_request_id,
                user_timeout,
                retry_after,
            } => {
                if NEVER_RETRY.contains(&status) || user_timeout {
                    return RetryDecision::GiveUp;
                }
                // A submit answered with a request id reached the queue: it may be enqueued.
                if op == Operation::Submit && has_request_id {
                    return RetryDecision::GiveUp;
                }
                if !self.retry_statuses.contains(&status) {
                    return RetryDecision::GiveUp;
                }
                match retry_after {
                    Some(wait) if wait > self.max_delay => RetryDecision::GiveUp,
                    Some(wait) => RetryDecision::RetryAfter(wait.max(backoff)),
                    None => RetryDecision::RetryAfter(backoff),
                }
            }
            AttemptFailure::Transport { stage } => {
                let retry = match (op, stage) {
                    // Nothing reached fal: safe for every operation.
                    (_, TransportStage::Connect) => true,
                    // The submit may have been accepted: its outcome is unknown, never repeat.
                    (Operation::Submit, TransportStage::AfterSend) => false,
                    (_, TransportStage::AfterSend) => self.retry_transport,
                };
                if retry {
                    RetryDecision::RetryAfter(backoff)
                } else {
                    RetryDecision::GiveUp
                }
            }
        }
    }
}

/// One policy per operation.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicies {
    pub submit: RetryPolicy,
    pub status: RetryPolicy,
    pub result: RetryPolicy,
    pub cancel: RetryPolicy,
    pub upload: RetryPolicy,
}

impl Default for RetryPolicies {
    fn default() -> Self {
        Self {
            submit: RetryPolicy::submit_default(),
            status: RetryPolicy::idempotent_default(),
            result: RetryPolicy::idempotent_default(),
            cancel: RetryPolicy::idempotent_default(),
            upload: RetryPolicy {
                max_retries: 3,
                ..RetryPolicy::idempotent_default()
            },
        }
    }
}

impl RetryPolicies {
    /// No retries for any operation.
    pub fn none() -> Self {
        Self {
            submit: RetryPolicy::none(),
            status: RetryPolicy::none(),
            result: RetryPolicy::none(),
            cancel: RetryPolicy::none(),
            upload: RetryPolicy::none(),
        }
    }

    /// The default shapes with every delay replaced, for tests.
    pub fn with_delays(base: Duration, max: Duration) -> Self {
        let d = Self::default();
        Self {
            submit: d.submit.with_delays(base, max),
            status: d.status.with_delays(base, max),
            result: d.result.with_delays(base, max),
            cancel: d.cancel.with_delays(base, max),
            upload: d.upload.with_delays(base, max),
        }
    }

    pub fn for_operation(&self, op: Operation) -> &RetryPolicy {
        match op {
            Operation::Submit => &self.submit,
            Operation::Status => &self.status,
            Operation::Result => &self.result,
            Operation::Cancel => &self.cancel,
            Operation::Upload => &self.upload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed answer with `status`, whether it carried fal's request id, whether fal marked
    /// it as the caller's own request timeout, and its `Retry-After`.
    fn answer(
        status: u16,
        has_request_id: bool,
        user_timeout: bool,
        retry_after: Option<Duration>,
    ) -> AttemptFailure {
        AttemptFailure::Status {
            status,
            has_request_id,
            user_timeout,
            retry_after,
        }
    }

    fn status(status: u16) -> AttemptFailure {
        answer(status, false, false, None)
    }

    #[test]
    fn submit_retries_only_gateway_statuses_without_request_id() {
        let p = RetryPolicy::submit_default();
        for code in [429, 502, 503, 504] {
            assert!(
                matches!(
                    p.decide(Operation::Submit, &status(code), 0, 0.5),
                    RetryDecision::RetryAfter(_)
                ),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 422, 500] {
            assert_eq!(
                p.decide(Operation::Submit, &status(code), 0, 0.5),
                RetryDecision::GiveUp,
                "{code}"
            );
        }
        let with_id = answer(503, true, false, None);
        assert_eq!(
            p.decide(Operation::Submit, &with_id, 0, 0.5),
            RetryDecision::GiveUp
        );
    }

    #[test]
    fn submit_transport_retries_only_when_nothing_was_sent() {
        let p = RetryPolicy::submit_default();
        let connect = AttemptFailure::Transport {
            stage: TransportStage::Connect,
        };
        let after = AttemptFailure::Transport {
            stage: TransportStage::AfterSend,
        };
        assert!(matches!(
            p.decide(Operation::Submit, &connect, 0, 0.5),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(
            p.decide(Operation::Submit, &after, 0, 0.5),
            RetryDecision::GiveUp
        );
        let q = RetryPolicy::idempotent_default();
        assert!(matches!(
            q.decide(Operation::Status, &after, 0, 0.5),
            RetryDecision::RetryAfter(_)
        ));
    }

    #[test]
    fn status_also_retries_500_but_never_client_errors_or_user_timeouts() {
        let p = RetryPolicy::idempotent_default();
        assert!(matches!(
            p.decide(Operation::Status, &status(500), 0, 0.5),
            RetryDecision::RetryAfter(_)
        ));
        for code in [400, 401, 403, 404, 422] {
            assert_eq!(
                p.decide(Operation::Result, &status(code), 0, 0.5),
                RetryDecision::GiveUp
            );
        }
        let user_timeout = answer(504, false, true, None);
        assert_eq!(
            p.decide(Operation::Status, &user_timeout, 0, 0.5),
            RetryDecision::GiveUp
        );
    }

    #[test]
    fn retry_count_is_bounded() {
        let p = RetryPolicy::submit_default();
        assert!(matches!(
            p.decide(Operation::Submit, &status(503), 2, 0.5),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(
            p.decide(Operation::Submit, &status(503), 3, 0.5),
            RetryDecision::GiveUp
        );
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_cap() {
        let p = RetryPolicy::submit_default();
        assert_eq!(p.backoff(0, 0.5), Duration::from_secs(1));
        assert_eq!(p.backoff(1, 0.5), Duration::from_secs(2));
        assert_eq!(p.backoff(2, 0.5), Duration::from_secs(4));
        assert_eq!(p.backoff(0, 0.0), Duration::from_millis(750));
        assert_eq!(p.backoff(0, 1.0), Duration::from_millis(1250));
        assert_eq!(p.backoff(20, 0.5), Duration::from_secs(60));
    }

    #[test]
    fn retry_after_is_honoured_or_reported_when_too_long() {
        let p = RetryPolicy::submit_default();
        let wait = |secs| answer(429, false, false, Some(Duration::from_secs(secs)));
        assert_eq!(
            p.decide(Operation::Submit, &wait(10), 0, 0.5),
            RetryDecision::RetryAfter(Duration::from_secs(10))
        );
        assert_eq!(
            p.decide(Operation::Submit, &wait(600), 0, 0.5),
            RetryDecision::GiveUp
        );
    }
}
