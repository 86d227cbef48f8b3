//! The client's error type: every failure class a caller must tell apart is its own variant.
//!
//! Nothing here ever holds the fal key: the key travels only in a sensitive header value, and
//! transport errors are stripped of their URL (which may carry a webhook token).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One entry of fal's 422 `detail` list.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationIssue {
    /// Location of the offending value, e.g. `["body", "prompt"]`.
    #[serde(default)]
    pub loc: Vec<serde_json::Value>,
    /// Human readable message.
    #[serde(default)]
    pub msg: String,
    /// Machine readable type, e.g. `value_error.missing`, `file_download_error`.
    #[serde(default, rename = "type")]
    pub kind: String,
    pub ctx: Option<serde_json::Value>,
    pub url: Option<String>,
    pub input: Option<serde_json::Value>,
}

/// Where a transport failure happened, which decides whether fal may have acted on the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportStage {
    /// No connection was made: nothing reached fal.
    Connect,
    /// The request may have been sent (timeout, reset, unreadable response).
    AfterSend,
}

impl TransportStage {
    /// Where `error` stopped a call: before a connection was made, or after.
    pub(crate) fn of(error: &reqwest::Error) -> Self {
        if error.is_connect() {
            TransportStage::Connect
        } else {
            TransportStage::AfterSend
        }
    }
}

/// A failed call to fal.
#[derive(Debug, thiserror::Error)]
pub enum FalError {
    /// 401: the key is unknown, revoked or malformed.
    #[error("fal rejected the API key (401): {detail}")]
    Unauthorized { detail: String },

    /// 403 "User is locked" / exhausted balance: permanent until the account is topped up.
    #[error("fal account is locked (403): {detail}")]
    BillingLocked { detail: String },

    /// Any other 403.
    #[error("fal refused the request (403): {detail}")]
    Forbidden { detail: String },

    /// 404: unknown endpoint or request id.
    #[error("fal has no such endpoint or request (404): {detail}")]
    NotFound { detail: String },

    /// 422: the input was rejected. `issues` is fal's `detail` list (a string `detail` becomes one
    /// issue at `["body"]`, as fal-js does).
    #[error("fal rejected the input (422): {}", summarize(issues))]
    Validation {
        issues: Vec<ValidationIssue>,
        request_id: Option<String>,
    },

    /// 429: queue length exceeded or concurrency limit.
    #[error("fal rate limited the request (429){}: {detail}", fmt_retry_after(*retry_after))]
    RateLimited {
        retry_after: Option<Duration>,
        detail: String,
    },

    /// 504 with `X-Fal-Request-Timeout-Type: user`: our own `X-Fal-Request-Timeout` fired before
    /// the request started. Never retried.
    #[error("fal request did not start before its requested timeout (504): {detail}")]
    UserTimeout { detail: String },

    /// 5xx: fal or the runner failed.
    #[error("fal server error ({status}{}): {detail}", fmt_type(error_type))]
    Server {
        status: u16,
        error_type: Option<String>,
        detail: String,
        request_id: Option<String>,
        /// fal's optional `X-Fal-Retryable` hint.
        retryable: Option<bool>,
    },

    /// Any other non-success status (e.g. 400 "Request is still in progress", 409, 499).
    #[error("fal answered {status}{}: {detail}", fmt_type(error_type))]
    Http {
        status: u16,
        error_type: Option<String>,
        detail: String,
    },

    /// Connecting, sending or reading failed.
    #[error("fal could not be reached ({stage:?}): {source}")]
    Transport {
        stage: TransportStage,
        #[source]
        source: reqwest::Error,
    },

    /// fal answered 2xx with a body we could not understand.
    #[error("fal response for {context} could not be decoded: {source}")]
    Decode {
        context: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// Reading the local file or stream to upload failed.
    #[error("reading the upload failed: {0}")]
    Io(#[from] std::io::Error),

    /// The call was malformed before anything was sent (bad endpoint id, bad option).
    #[error("invalid fal request: {0}")]
    InvalidRequest(String),
}

impl FalError {
    /// The HTTP status fal answered with, if it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            FalError::Unauthorized { .. } => Some(401),
            FalError::BillingLocked { .. } | FalError::Forbidden { .. } => Some(403),
            FalError::NotFound { .. } => Some(404),
            FalError::Validation { .. } => Some(422),
            FalError::RateLimited { .. } => Some(429),
            FalError::UserTimeout { .. } => Some(504),
            FalError::Server { status, .. } | FalError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn transport(stage: TransportStage, source: reqwest::Error) -> Self {
        FalError::Transport {
            stage,
            source: source.without_url(),
        }
    }

    /// A failed send, at the stage the error itself tells.
    pub(crate) fn send_failed(source: reqwest::Error) -> Self {
        Self::transport(TransportStage::of(&source), source)
    }
}

/// Why a submit failed, split by what it means for the caller.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// fal certainly did not enqueue the request: it is safe to submit again later.
    #[error("fal did not accept the submit: {0}")]
    NotAccepted(#[source] FalError),

    /// fal may have enqueued the request (timeout or reset after the body was sent, a gateway
    /// error that carried a request id, an unreadable 2xx). Never resubmit on this alone: resolve
    /// it by webhook, status lookup (when `request_id` is known) or deadline.
    #[error("the submit's outcome is unknown{}: {cause}", request_id.as_deref().map(|id| format!(" (request {id})")).unwrap_or_default())]
    OutcomeUnknown {
        request_id: Option<String>,
        #[source]
        cause: FalError,
    },
}

impl SubmitError {
    /// The underlying failure.
    pub fn cause(&self) -> &FalError {
        match self {
            SubmitError::NotAccepted(e) => e,
            SubmitError::OutcomeUnknown { cause, .. } => cause,
        }
    }
}

fn summarize(issues: &[ValidationIssue]) -> String {
    let parts: Vec<String> = issues
        .iter()
        .map(|i| {
            let loc: Vec<String> = i
                .loc
                .iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            format!("{}: {} ({})", loc.join("."), i.msg, i.kind)
        })
        .collect();
    parts.join("; ")
}

fn fmt_retry_after(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {}s", d.as_secs_f64()))
        .unwrap_or_default()
}

fn fmt_type(error_type: &Option<String>) -> String {
    error_type
        .as_deref()
        .map(|t| format!(", {t}"))
        .unwrap_or_default()
}
