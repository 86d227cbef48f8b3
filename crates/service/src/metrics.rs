//! The process's Prometheus registry: what the application records (job transitions, fal
//! callbacks and calls, webhook attempts), what it reads from the database when scraped (jobs
//! by state, backlogs, lags, overdue jobs) and the database pool. The transport adds its own
//! families with [`Metrics::register`] and serves [`Service::render_metrics`].
//!
//! Every label takes its values from a fixed set, so no caller can grow the series.
//! The database-derived gauges describe the whole database: every replica reports the same
//! values (alert on their `max`).

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

use domain::{JobKind, JobStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::context::Service;

type FloatGauge = Gauge<f64, AtomicU64>;

/// The statuses of jobs not finished yet: what `avatars_jobs` counts.
fn live_statuses() -> impl Iterator<Item = JobStatus> {
    JobStatus::ALL
        .into_iter()
        .filter(|status| status.is_active())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    kind: &'static str,
    from: &'static str,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FalCallLabels {
    operation: &'static str,
    /// `ok`, or the class of the error (see [`fal_error_class`]).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyCheckLabels {
    /// `cache` or `database`.
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

domain::named_enum! {
    /// What became of a fal callback.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CallbackResult {
        /// It changed its job.
        Applied => "applied",
        /// The same delivery was recorded before.
        Duplicate => "duplicate",
        /// Late, repeated or out of order for its job: nothing changed.
        Ignored => "ignored",
        /// No job matches its request.
        UnknownRequest => "unknown_request",
        /// Its signature is missing, malformed or made by no key of fal's.
        BadSignature => "bad_signature",
        /// Its signature's timestamp is outside the tolerance (a replay, or a skewed clock).
        Stale => "stale",
        /// Signed, but not a fal callback.
        Malformed => "malformed",
        /// Signed for another fal user than `FAL_WEBHOOK_USER_ID`.
        ForeignUser => "foreign_user",
        /// Its signed request id header names another request than its body.
        RequestIdMismatch => "request_id_mismatch",
        /// fal's keys could not be fetched to check it (it is refused so that fal retries).
        KeysUnavailable => "keys_unavailable",
        /// Verified, but recording it failed (it is refused so that fal retries).
        Error => "error",
    }
}

domain::named_enum! {
    /// A call this service makes to fal, as timed and counted.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FalOperation {
        Submit => "submit",
        Status => "status",
        Result => "result",
        Cancel => "cancel",
        /// A file sent to fal's storage (a training archive, a LoRA).
        Upload => "upload",
        /// A file fetched from fal's CDN (a LoRA, an image); timed until its body starts.
        Download => "download",
    }
}

/// The class of a fal error, as a label value.
pub fn fal_error_class(error: &fal::FalError) -> &'static str {
    use fal::FalError as E;
    match error {
        E::Unauthorized { .. } => "unauthorized",
        E::BillingLocked { .. } => "billing_locked",
        E::Forbidden { .. } => "forbidden",
        E::NotFound { .. } => "not_found",
        E::Validation { .. } => "validation",
        E::RateLimited { .. } => "rate_limited",
        E::UserTimeout { .. } => "timeout",
        E::Server { .. } => "server",
        E::Http { .. } => "http",
        E::Transport { .. } => "transport",
        E::Decode { .. } => "decode",
        _ => "other",
    }
}

/// Errors of calls to fal, classified for [`Metrics::fal_call`].
pub trait FalCallError {
    fn class(&self) -> &'static str;
}

impl FalCallError for fal::FalError {
    fn class(&self) -> &'static str {
        fal_error_class(self)
    }
}

impl FalCallError for fal::SubmitError {
    fn class(&self) -> &'static str {
        match self {
            fal::SubmitError::NotAccepted(error) => fal_error_class(error),
            // fal may have the request: whatever the cause, the outcome is what matters.
            fal::SubmitError::OutcomeUnknown { .. } => "outcome_unknown",
        }
    }
}

domain::named_enum! {
    /// What a webhook delivery attempt came to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum WebhookAttempt {
        /// The receiver answered 2xx.
        Delivered => "delivered",
        /// The receiver answered something else (it is retried on the schedule).
        Rejected => "rejected",
        /// The receiver answered 410 Gone: the endpoint is disabled.
        Gone => "gone",
        /// No answer: refused address, connection, timeout.
        Unreachable => "unreachable",
    }
}

/// The registry and every family the application records into.
pub struct Metrics {
    registry: Mutex<Registry>,
    jobs: Family<JobLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    overdue: Family<KindLabels, Gauge>,
    callbacks: Family<OutcomeLabels, Counter>,
    callback_batches: Histogram,
    callback_batch_seconds: Histogram,
    fal_calls: Family<FalCallLabels, Counter>,
    fal_call_seconds: Family<OperationLabels, Histogram>,
    fal_billing_locked: Gauge,
    fal_unauthorized: Gauge,
    relay_attempts: Family<OutcomeLabels, Counter>,
    deliveries_due: Gauge,
    delivery_lag: FloatGauge,
    sequencer_lag: FloatGauge,
    custody_backlog: Gauge,
    result_fetch_backlog: Gauge,
    custody_oldest: FloatGauge,
    pool_connections: Family<PoolLabels, Gauge>,
    retention_trimmed: Family<TableLabels, Counter>,
    blob_deletion_failures: Counter,
    pool_max: Gauge,
    pool_acquire_seconds: FloatGauge,
    collect_errors: Counter,
    key_checks: Family<KeyCheckLabels, Counter>,
    key_cache_entries: Gauge,
}

/// `metric`, after adding it to `registry` under `name`: every metric is named and described
/// where it is made.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            jobs: registered(
                &mut registry,
                "avatars_jobs",
                "Jobs (trainings and generation items) not finished yet, by kind and status",
                Family::default(),
            ),
            transitions: registered(
                &mut registry,
                "avatars_job_transitions",
                "Job status changes made by this process, by kind and the statuses left and entered",
                Family::default(),
            ),
            overdue: registered(
                &mut registry,
                "avatars_jobs_overdue",
                "Jobs still at fal past their deadline: no callback came and reconciliation has not settled them",
                Family::default(),
            ),
            callbacks: registered(
                &mut registry,
                "avatars_fal_callbacks",
                "fal callbacks received by this process, by outcome",
                Family::default(),
            ),
            callback_batches: registered(
                &mut registry,
                "avatars_fal_callback_batch_size",
                "fal callbacks committed together in one transaction (a batch that failed and was applied callback by callback counts once)",
                Histogram::new([
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
                ]),
            ),
            callback_batch_seconds: registered(
                &mut registry,
                "avatars_fal_callback_batch_duration_seconds",
                "Time of one batch's transaction, from taking its connection to the end of its COMMIT (of a batch that failed, until it was rolled back); every callback of the batch waits for it",
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            ),
            fal_calls: registered(
                &mut registry,
                "avatars_fal_calls",
                "Calls to fal by operation and result (ok or the error class), retries included",
                Family::default(),
            ),
            fal_call_seconds: registered(
                &mut registry,
                "avatars_fal_call_duration_seconds",
                "Time of calls to fal by operation, retries included",
                Family::new_with_constructor(|| {
                    Histogram::new([
                        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                    ])
                }),
            ),
            fal_billing_locked: registered(
                &mut registry,
                "avatars_fal_billing_locked",
                "1 while fal reports our account locked (billing): every submit is refused",
                Gauge::default(),
            ),
            fal_unauthorized: registered(
                &mut registry,
                "avatars_fal_unauthorized",
                "1 while fal rejects our API key",
                Gauge::default(),
            ),
            relay_attempts: registered(
                &mut registry,
                "avatars_webhook_attempts",
                "Outbound webhook delivery attempts made by this process, by outcome",
                Family::default(),
            ),
            deliveries_due: registered(
                &mut registry,
                "avatars_webhook_deliveries_due",
                "Webhook deliveries due now to enabled endpoints",
                Gauge::default(),
            ),
            delivery_lag: registered(
                &mut registry,
                "avatars_webhook_delivery_lag_seconds",
                "How long the oldest due webhook delivery has been due (0 when none is)",
                FloatGauge::default(),
            ),
            sequencer_lag: registered(
                &mut registry,
                "avatars_sequencer_lag_seconds",
                "Age of the oldest event not yet sequenced (0 when none waits)",
                FloatGauge::default(),
            ),
            custody_backlog: registered(
                &mut registry,
                "avatars_custody_backlog",
                "Finished jobs whose artifacts are still to be copied into our storage",
                Gauge::default(),
            ),
            result_fetch_backlog: registered(
                &mut registry,
                "avatars_result_fetch_backlog",
                "Finishing jobs whose result is still to be fetched from fal",
                Gauge::default(),
            ),
            custody_oldest: registered(
                &mut registry,
                "avatars_custody_oldest_seconds",
                "How long the oldest job of the custody and result-fetch backlogs has waited",
                FloatGauge::default(),
            ),
            retention_trimmed: registered(
                &mut registry,
                "avatars_retention_trimmed_rows",
                "Rows the janitor of this process deleted past their retention, by table",
                Family::default(),
            ),
            blob_deletion_failures: registered(
                &mut registry,
                "avatars_blob_deletion_failures",
                "Failed attempts of this process to delete a blob (each is retried later)",
                Counter::default(),
            ),
            pool_connections: registered(
                &mut registry,
                "avatars_db_pool_connections",
                "Database pool connections of this process, in use or idle",
                Family::default(),
            ),
            pool_max: registered(
                &mut registry,
                "avatars_db_pool_max_connections",
                "Most connections the database pool of this process opens",
                Gauge::default(),
            ),
            pool_acquire_seconds: registered(
                &mut registry,
                "avatars_db_pool_acquire_seconds",
                "Time the last scrape waited for a pool connection (requests wait as long when the pool is exhausted)",
                FloatGauge::default(),
            ),
            collect_errors: registered(
                &mut registry,
                "avatars_metrics_collect_errors",
                "Scrapes whose database-derived gauges could not be read (they keep their last values)",
                Counter::default(),
            ),
            key_checks: registered(
                &mut registry,
                "avatars_api_key_checks",
                "API keys checked, by where the answer came from: this process's key cache or the database",
                Family::default(),
            ),
            key_cache_entries: registered(
                &mut registry,
                "avatars_api_key_cache_entries",
                "Live API keys this process's key cache holds",
                Gauge::default(),
            ),
            registry: Mutex::new(registry),
        };
        // Every series of a fixed set exists from the start, at zero, so rates and alerts
        // see a value before the first event: live job states, every transition the domain allows,
        // successful fal calls, callback and attempt outcomes.
        for kind in JobKind::ALL {
            for status in live_statuses() {
                let _ = metrics.jobs.get_or_create(&JobLabels {
                    kind: kind.as_str(),
                    status: status.as_str(),
                });
            }
            let _ = metrics.overdue.get_or_create(&KindLabels {
                kind: kind.as_str(),
            });
        }
        for kind in JobKind::ALL {
            for from in JobStatus::ALL {
                for event in domain::JobEvent::ALL {
                    match domain::transition(from, event) {
                        domain::Transition::Apply { to } if to != from => {
                            let _ = metrics.transitions.get_or_create(&TransitionLabels {
                                kind: kind.as_str(),
                                from: from.as_str(),
                                to: to.as_str(),
                            });
                        }
                        _ => {}
                    }
                }
            }
        }
        for operation in FalOperation::ALL {
            let labels = OperationLabels {
                operation: operation.as_str(),
            };
            let _ = metrics.fal_call_seconds.get_or_create(&labels);
            let _ = metrics.fal_calls.get_or_create(&FalCallLabels {
                operation: operation.as_str(),
                result: "ok",
            });
        }
        for outcome in CallbackResult::ALL {
            let _ = metrics.callbacks.get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            });
        }
        for outcome in [
            WebhookAttempt::Delivered,
            WebhookAttempt::Rejected,
            WebhookAttempt::Gone,
            WebhookAttempt::Unreachable,
        ] {
            let _ = metrics.relay_attempts.get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            });
        }
        for table in store::Trim::TABLES {
            let _ = metrics
                .retention_trimmed
                .get_or_create(&TableLabels { table });
        }
        for source in ["cache", "database"] {
            let _ = metrics.key_checks.get_or_create(&KeyCheckLabels { source });
        }
        for state in ["in_use", "idle"] {
            let _ = metrics
                .pool_connections
                .get_or_create(&PoolLabels { state });
        }
        metrics
    }

    /// Adds a family of the caller's (the transport's) to the registry.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .register(name, help, metric);
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// The janitor deleted `rows` rows of `table` (one of [`store::Trim::TABLES`]).
    pub fn trimmed(&self, table: &'static str, rows: u64) {
        self.retention_trimmed
            .get_or_create(&TableLabels { table })
            .inc_by(rows);
    }

    pub fn blob_deletion_failed(&self) {
        self.blob_deletion_failures.inc();
    }

    /// A batch of `size` callbacks went to the database together.
    pub fn callback_batch(&self, size: usize) {
        self.callback_batches.observe(size as f64);
    }

    pub fn callback_batch_duration(&self, took: std::time::Duration) {
        self.callback_batch_seconds.observe(took.as_secs_f64());
    }

    pub fn fal_callback(&self, outcome: CallbackResult) {
        self.callbacks
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn webhook_attempt(&self, outcome: WebhookAttempt) {
        self.relay_attempts
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Times and counts one call to fal.
    pub async fn fal_call<T, E: FalCallError>(
        &self,
        operation: FalOperation,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = call.await;
        self.fal_call_seconds
            .get_or_create(&OperationLabels {
                operation: operation.as_str(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.fal_calls
            .get_or_create(&FalCallLabels {
                operation: operation.as_str(),
                result: match &result {
                    Ok(_) => "ok",
                    Err(error) => error.class(),
                },
            })
            .inc();
        result
    }

    fn set_snapshot(&self, snapshot: &store::WorkSnapshot) {
        for kind in JobKind::ALL {
            for status in live_statuses() {
                let count = snapshot
                    .live_jobs
                    .iter()
                    .find(|(k, s, _)| k == kind.as_str() && s == status.as_str())
                    .map_or(0, |(_, _, n)| *n);
                self.jobs
                    .get_or_create(&JobLabels {
                        kind: kind.as_str(),
                        status: status.as_str(),
                    })
                    .set(count);
            }
            let overdue = snapshot
                .overdue
                .iter()
                .find(|(k, _)| k == kind.as_str())
                .map_or(0, |(_, n)| *n);
            self.overdue
                .get_or_create(&KindLabels {
                    kind: kind.as_str(),
                })
                .set(overdue);
        }
        self.custody_backlog.set(snapshot.custody_backlog);
        self.result_fetch_backlog.set(snapshot.result_fetch_backlog);
        self.custody_oldest.set(snapshot.custody_oldest_seconds);
        self.sequencer_lag.set(snapshot.sequencer_lag_seconds);
        self.deliveries_due.set(snapshot.deliveries_due);
        self.delivery_lag.set(snapshot.delivery_lag_seconds);
    }
}

impl store::TransitionObserver for Metrics {
    fn transitioned(&self, kind: JobKind, from: JobStatus, to: JobStatus) {
        self.transitions
            .get_or_create(&TransitionLabels {
                kind: kind.as_str(),
                from: from.as_str(),
                to: to.as_str(),
            })
            .inc();
    }
}

impl Service {
    /// Reads the database-derived gauges and the pool, then renders every family. The reads
    /// are bounded by the pool's acquire timeout and the statement timeout; when they fail the
    /// gauges keep their last values and `avatars_metrics_collect_errors_total` grows.
    pub async fn render_metrics(&self) -> String {
        let metrics = &self.metrics;
        let pool = self.store.pool();
        let size = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        metrics
            .pool_connections
            .get_or_create(&PoolLabels { state: "in_use" })
            .set((size - idle).max(0));
        metrics
            .pool_connections
            .get_or_create(&PoolLabels { state: "idle" })
            .set(idle);
        metrics
            .pool_max
            .set(i64::from(pool.options().get_max_connections()));
        let keys = self.store.key_cache_stats();
        for (source, count) in [("cache", keys.hits), ("database", keys.reads)] {
            // The store counts; the counter shows its total.
            metrics
                .key_checks
                .get_or_create(&KeyCheckLabels { source })
                .inner()
                .store(count, std::sync::atomic::Ordering::Relaxed);
        }
        metrics
            .key_cache_entries
            .set(i64::try_from(keys.entries).unwrap_or(i64::MAX));
        if let Some(fal) = &self.fal {
            metrics
                .fal_unauthorized
                .set(i64::from(fal.health.key_rejected()));
            metrics
                .fal_billing_locked
                .set(i64::from(fal.health.billing_locked()));
        }
        let started = Instant::now();
        match self.store.work_snapshot().await {
            Ok(snapshot) => {
                metrics
                    .pool_acquire_seconds
                    .set(snapshot.acquired_in.as_secs_f64());
                metrics.set_snapshot(&snapshot);
            }
            Err(error) => {
                // Most often the pool had no connection to give within its acquire timeout.
                metrics
                    .pool_acquire_seconds
                    .set(started.elapsed().as_secs_f64());
                tracing::warn!(%error, "reading the gauges of /metrics");
                metrics.collect_errors.inc();
            }
        }
        metrics.render()
    }
}
