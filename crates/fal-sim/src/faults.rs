//! Fault knobs: how the simulator misbehaves the way fal does. Settable from Rust
//! ([`crate::FalSim`]) or over the `/_sim/` control API (the same types as JSON).

use serde::{Deserialize, Serialize};

/// What the next submit(s) suffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SubmitFault {
    /// Answer with `status` instead of accepting. The body defaults to fal's shape for that
    /// status; `with_request_id` adds an `x-fal-request-id` header (the request looks like it
    /// reached the queue).
    Respond {
        status: u16,
        #[serde(default)]
        body: Option<serde_json::Value>,
        #[serde(default)]
        error_type: Option<String>,
        #[serde(default)]
        retry_after_secs: Option<u64>,
        #[serde(default)]
        with_request_id: bool,
        /// Sets `X-Fal-Request-Timeout-Type: user` (meaningful with 504).
        #[serde(default)]
        user_timeout: bool,
    },
    /// Read the submit, then close the connection without answering. With `enqueue` the request
    /// is accepted and runs (the client cannot know): the outcome is unknown to the caller.
    CloseConnection {
        #[serde(default = "default_true")]
        enqueue: bool,
    },
    /// Accept the request (it runs, and calls back), but hold the answer to the submit until
    /// [`crate::FalSim::release_held_submits`]: the caller does not know the request id yet.
    HoldResponse,
}

/// How a request fails instead of producing output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailSpec {
    /// Status the result call re-emits (e.g. 503, 500, 422).
    #[serde(default = "default_fail_status")]
    pub status: u16,
    /// Human string shown as `error` on the COMPLETED status.
    #[serde(default = "default_fail_error")]
    pub error: String,
    /// Machine type shown as `error_type` (e.g. `runner_disconnected`).
    #[serde(default = "default_fail_error_type")]
    pub error_type: String,
    /// Result body; defaults to `{"detail": error, "error_type": error_type}`.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

/// How a webhook is signed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignatureFault {
    #[default]
    None,
    /// Sign with a key that is not in the JWKS.
    WrongKey,
    /// Put a timestamp this many seconds in the past (negative: future).
    StaleTimestamp { seconds: i64 },
}

/// How the webhook of a request is delivered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookFaults {
    /// Never deliver it (exercises the polling fallback).
    #[serde(default)]
    pub drop: bool,
    /// Wait this long (not scaled) before the first attempt.
    #[serde(default)]
    pub delay_ms: u64,
    /// Deliver it this many extra times after a successful delivery.
    #[serde(default)]
    pub duplicates: u32,
    /// Hold it until [`crate::FalSim::release_held_webhooks`]; releasing several in reverse
    /// order reorders them.
    #[serde(default)]
    pub hold: bool,
    #[serde(default)]
    pub signature: SignatureFault,
    /// Send the body pretty-printed with unusual key order and `\u00e9`-style escapes (still
    /// valid JSON; signature over those exact bytes).
    #[serde(default)]
    pub pretty_escaped_body: bool,
    /// Send `payload: null` with `payload_error`, as fal does for unserialisable results.
    #[serde(default)]
    pub null_payload: bool,
}

/// Faults attached to one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestFaults {
    /// Keep the request IN_QUEUE until released.
    #[serde(default)]
    pub stall: bool,
    /// Fail the request when it runs.
    #[serde(default)]
    pub fail: Option<FailSpec>,
    #[serde(default)]
    pub webhook: WebhookFaults,
}

/// Order in which held webhooks are released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldWebhookOrder {
    #[default]
    Fifo,
    Reverse,
}

fn default_true() -> bool {
    true
}

fn default_fail_status() -> u16 {
    503
}

fn default_fail_error() -> String {
    "Runner disconnected".into()
}

fn default_fail_error_type() -> String {
    "runner_disconnected".into()
}
