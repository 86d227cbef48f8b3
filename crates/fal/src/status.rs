//! What fal says of a queued request: its status, log lines and metrics, one at a time or as a
//! stream. Read by the queue calls and by the status-stream parser alike.

use std::pin::Pin;

use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::error::FalError;

/// A log line of a running or completed request. Only `message` is always present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub message: String,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Seconds.
    #[serde(default)]
    pub inference_time: Option<f64>,
}

/// A request's queue status. There is no failed or cancelled state: both are `Completed` with
/// `error`/`error_type` set; the model's error itself comes from the result call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QueueStatus {
    InQueue {
        #[serde(default)]
        queue_position: Option<u64>,
    },
    InProgress {
        #[serde(default)]
        logs: Option<Vec<LogEntry>>,
    },
    Completed {
        #[serde(default)]
        logs: Option<Vec<LogEntry>>,
        #[serde(default)]
        metrics: Option<Metrics>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        error_type: Option<String>,
    },
}

impl QueueStatus {
    pub fn is_completed(&self) -> bool {
        matches!(self, QueueStatus::Completed { .. })
    }

    pub fn logs(&self) -> &[LogEntry] {
        match self {
            QueueStatus::InProgress { logs } | QueueStatus::Completed { logs, .. } => {
                logs.as_deref().unwrap_or_default()
            }
            QueueStatus::InQueue { .. } => &[],
        }
    }
}

/// Status events of [`crate::FalClient::status_stream`]; it ends after `Completed`.
pub type StatusStream = Pin<Box<dyn Stream<Item = Result<QueueStatus, FalError>> + Send>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bodies_parse_leniently() {
        let q: QueueStatus = serde_json::from_str(
            r#"{"status":"IN_QUEUE","request_id":"r","response_url":"u","queue_position":3,"extra":1}"#,
        )
        .unwrap();
        assert_eq!(
            q,
            QueueStatus::InQueue {
                queue_position: Some(3)
            }
        );
        let p: QueueStatus =
            serde_json::from_str(r#"{"status":"IN_PROGRESS","logs":null}"#).unwrap();
        assert_eq!(p.logs(), &[]);
        let c: QueueStatus = serde_json::from_str(
            r#"{"status":"COMPLETED","logs":[{"message":"m","timestamp":"t","labels":{}}],"metrics":{},"error":"Runner disconnected","error_type":"runner_disconnected"}"#,
        )
        .unwrap();
        let QueueStatus::Completed { error_type, .. } = &c else {
            panic!()
        };
        assert_eq!(error_type.as_deref(), Some("runner_disconnected"));
        assert_eq!(c.logs()[0].message, "m");
        assert!(serde_json::from_str::<QueueStatus>(r#"{"status":"FAILED"}"#).is_err());
    }
}
