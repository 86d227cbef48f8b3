//! What the simulator reports about itself: received requests and per-request state.

use serde::{Deserialize, Serialize};

/// One HTTP request the simulator received (control API calls excluded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedRequest {
    pub seq: u64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names in lowercase. `authorization` is masked to `Key <key_id>:***`.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// The body when it is UTF-8 and at most 64 KiB.
    pub body_text: Option<String>,
}

impl ReceivedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.body_text.as_deref()?).ok()
    }
}

/// Queue state of a request, as fal reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QueueState {
    InQueue,
    InProgress,
    Completed,
}

/// One webhook delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// The receiver's status, or `None` when it could not be reached or timed out.
    pub status: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookOutcome {
    /// The request has no webhook URL.
    None,
    /// Not yet attempted or between attempts.
    Pending,
    /// Held by a fault until released.
    Held,
    /// A 2xx was received.
    Delivered,
    /// Every attempt failed, or a 3xx ended delivery.
    Failed,
    /// Dropped by a fault.
    Dropped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookReport {
    pub outcome: WebhookOutcome,
    pub attempts: Vec<DeliveryAttempt>,
    /// Deliveries answered 2xx (more than one with the duplicate fault).
    pub deliveries: u32,
}

/// Everything the simulator knows about one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestReport {
    pub request_id: String,
    pub endpoint: String,
    pub state: QueueState,
    pub webhook_url: Option<String>,
    pub input: serde_json::Value,
    /// Set once completed: the model output, or `None` for a failed request.
    pub output: Option<serde_json::Value>,
    /// Set once completed with an error.
    pub error_type: Option<String>,
    /// Status the result call answers with once completed.
    pub result_status: Option<u16>,
    /// Set once completed successfully: the `X-Fal-Billable-Units` the result call sends.
    #[serde(default)]
    pub billable_units: Option<u64>,
    pub cancel_requested: bool,
    pub webhook: WebhookReport,
}
