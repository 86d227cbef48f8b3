//! Shared simulator state. The lock is a plain mutex, never held across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::accounts::Account;
use crate::config::SimConfig;
use crate::faults::{RequestFaults, SubmitFault};
use crate::jwks::SigningKeys;
use crate::record::{QueueState, ReceivedRequest, RequestReport, WebhookOutcome, WebhookReport};

/// Base URLs the simulator serves, without trailing slash.
#[derive(Debug, Clone)]
pub(crate) struct BaseUrls {
    pub root: String,
    pub queue: String,
    pub rest: String,
    pub cdn: String,
}

pub(crate) struct Sim {
    pub config: SimConfig,
    pub urls: BaseUrls,
    pub inner: Mutex<Inner>,
    /// Woken on every state change (waiters and status streams re-check).
    pub changed: Notify,
    /// Client for archive downloads and webhook deliveries; redirects are not followed
    /// (fal counts a 3xx from a webhook receiver as a permanent failure).
    pub http: reqwest::Client,
    pub keys: Mutex<SigningKeys>,
    pub shutdown: CancellationToken,
    /// Permits for submit answers held by a `HoldResponse` fault.
    pub held_submits: tokio::sync::Semaphore,
    /// Permits for upload bodies held by [`crate::FalSim::hold_next_uploads`].
    pub held_uploads: tokio::sync::Semaphore,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub accounts: HashMap<String, Account>,
    pub requests: HashMap<String, RequestRecord>,
    /// Waiting request ids per endpoint, in queue order.
    pub waiting: HashMap<String, VecDeque<String>>,
    pub running: HashMap<String, usize>,
    pub files: HashMap<String, StoredFile>,
    pub uploads: HashMap<String, PendingUpload>,
    pub finetunes: Vec<String>,
    pub log: Vec<ReceivedRequest>,
    pub next_seq: u64,
    pub submit_faults: VecDeque<SubmitFault>,
    /// Faults for status, result, cancel and stream calls.
    pub read_faults: VecDeque<SubmitFault>,
    pub request_faults: VecDeque<(Option<String>, RequestFaults)>,
    pub jwks_down: bool,
    pub held_webhooks: Vec<String>,
    /// Upload PUTs still to hold before storing their body.
    pub uploads_to_hold: u32,
    /// Upload PUTs held so far (held now or released).
    pub uploads_held: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct StoredFile {
    pub bytes: Bytes,
    pub content_type: String,
    pub expires_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct PendingUpload {
    /// CDN path the finished upload is served at.
    pub file_path: String,
    pub content_type: String,
    pub expires_at: Option<Instant>,
    /// Query token of the signed upload URL.
    pub signature: String,
    pub parts: HashMap<u32, (Bytes, String)>,
}

/// How a completed request ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Success {
        output: Value,
        inference_time: f64,
        /// Sent as `X-Fal-Billable-Units` with the result.
        billable_units: u64,
    },
    Failure {
        http_status: u16,
        body: Value,
        /// `error` on the status body.
        error: String,
        error_type: String,
        /// The 504 of an expired `X-Fal-Request-Timeout`.
        user_timeout: bool,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct LogLine {
    pub message: String,
    pub level: &'static str,
    pub timestamp: String,
}

#[derive(Debug)]
pub(crate) struct RequestRecord {
    pub id: String,
    pub endpoint: String,
    /// `owner/alias` (with namespace): the prefix status/result/cancel paths must use.
    pub app_path: String,
    pub user_id: String,
    pub input: Value,
    pub webhook_url: Option<String>,
    pub state: QueueState,
    pub logs: Vec<LogLine>,
    pub outcome: Option<Outcome>,
    pub cancel_requested: bool,
    pub faults: RequestFaults,
    pub webhook: WebhookReport,
    pub low_priority: bool,
    /// How long outputs stay on the CDN (`X-Fal-Object-Lifecycle-Preference`).
    pub output_expiry: Option<std::time::Duration>,
}

impl RequestRecord {
    pub fn report(&self) -> RequestReport {
        let billable_units = match &self.outcome {
            Some(Outcome::Success { billable_units, .. }) => Some(*billable_units),
            _ => None,
        };
        let (output, error_type, result_status) = match &self.outcome {
            Some(Outcome::Success { output, .. }) => (Some(output.clone()), None, Some(200)),
            Some(Outcome::Failure {
                http_status,
                error_type,
                ..
            }) => (None, Some(error_type.clone()), Some(*http_status)),
            None => (None, None, None),
        };
        RequestReport {
            request_id: self.id.clone(),
            endpoint: self.endpoint.clone(),
            state: self.state,
            webhook_url: self.webhook_url.clone(),
            input: self.input.clone(),
            output,
            error_type,
            result_status,
            billable_units,
            cancel_requested: self.cancel_requested,
            webhook: self.webhook.clone(),
        }
    }
}

impl Sim {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn notify(&self) {
        self.changed.notify_waiters();
    }

    pub fn new_webhook_report(has_url: bool) -> WebhookReport {
        WebhookReport {
            outcome: if has_url {
                WebhookOutcome::Pending
            } else {
                WebhookOutcome::None
            },
            attempts: Vec::new(),
            deliveries: 0,
        }
    }

    pub fn log_line(&self, id: &str, message: String) {
        let mut inner = self.lock();
        if let Some(record) = inner.requests.get_mut(id) {
            record.logs.push(LogLine {
                message,
                level: "INFO",
                timestamp: now_timestamp(),
            });
        }
        drop(inner);
        self.notify();
    }
}

pub(crate) type SharedSim = Arc<Sim>;

/// fal's log timestamp form, e.g. `2024-12-20T15:37:17.120314`.
pub(crate) fn now_timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string()
}
