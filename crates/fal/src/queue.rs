//! Queue API: submit, status, status stream, result, cancel.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::client::{decode, join_path, Answer, Failure, FalClient};
use crate::endpoint::EndpointId;
use crate::error::{FalError, SubmitError, TransportStage};
use crate::retry::{AttemptFailure, Operation};
use crate::status::{QueueStatus, StatusStream};

/// Smallest `X-Fal-Request-Timeout` both official clients accept (they require more than 1 s).
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// `X-Fal-Queue-Priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueuePriority {
    Normal,
    Low,
}

impl QueuePriority {
    fn as_header(self) -> &'static str {
        match self {
            QueuePriority::Normal => "normal",
            QueuePriority::Low => "low",
        }
    }
}

/// Options of a submit.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Sent as the `fal_webhook` query parameter (never in the body, where fal ignores it).
    pub webhook_url: Option<Url>,
    /// `X-Fal-Queue-Priority`; omitted when `None` (fal's default is `normal`).
    pub priority: Option<QueuePriority>,
    /// `X-Fal-Request-Timeout`: deadline for the request to *start*. Must exceed 1 s.
    pub request_timeout: Option<Duration>,
    /// `fal_max_queue_length` query parameter: fal answers 429 when more are waiting.
    pub max_queue_length: Option<u32>,
    /// `X-Fal-Object-Lifecycle-Preference`: how long fal keeps the generated media (the
    /// account's setting applies when `None`).
    pub output_lifecycle: Option<crate::storage::ObjectLifecycle>,
}

/// fal's answer to a submit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub request_id: String,
    #[serde(default)]
    pub gateway_request_id: Option<String>,
    pub status_url: Url,
    pub response_url: Url,
    pub cancel_url: Url,
    #[serde(default)]
    pub queue_position: Option<u64>,
    #[serde(default)]
    pub status: Option<String>,
}

impl Submitted {
    pub fn request_ref(&self) -> RequestRef {
        RequestRef {
            request_id: self.request_id.clone(),
            status_url: self.status_url.clone(),
            response_url: self.response_url.clone(),
            cancel_url: self.cancel_url.clone(),
        }
    }
}

/// Where to ask about one queued request. Store it with the job; rebuild it with
/// [`FalClient::request_ref`] when only the endpoint and request id are known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRef {
    pub request_id: String,
    pub status_url: Url,
    pub response_url: Url,
    pub cancel_url: Url,
}

/// Answer of a cancel that fal accepted or refused as too late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// 202 `CANCELLATION_REQUESTED` (or any 2xx): a queued request is removed, a running one is
    /// signalled and may still complete.
    CancellationRequested,
    /// 400 `ALREADY_COMPLETED`.
    AlreadyCompleted,
}

/// A completed request's output and what fal billed for it.
#[derive(Debug, Clone, PartialEq)]
pub struct BilledResult {
    pub output: serde_json::Value,
    /// The `X-Fal-Billable-Units` header: the units (steps, runs, megapixels, images; by
    /// endpoint) fal billed. `None` when fal sent none, or nothing readable.
    pub billable_units: Option<f64>,
}

impl FalClient {
    /// Submits `input` to `endpoint` (e.g. `fal-ai/flux-lora-portrait-trainer`).
    ///
    /// Retried only while fal certainly did not accept the request; see [`SubmitError`].
    #[tracing::instrument(skip_all, fields(endpoint = %endpoint))]
    pub async fn submit<I: Serialize + ?Sized>(
        &self,
        endpoint: &str,
        input: &I,
        options: &SubmitOptions,
    ) -> Result<Submitted, SubmitError> {
        let endpoint = EndpointId::parse(endpoint).map_err(SubmitError::NotAccepted)?;
        let body = serde_json::to_vec(input).map_err(|e| {
            SubmitError::NotAccepted(FalError::InvalidRequest(format!(
                "input does not serialise to JSON: {e}"
            )))
        })?;
        let timeout_header = match options.request_timeout {
            Some(t) if t <= MIN_REQUEST_TIMEOUT => {
                return Err(SubmitError::NotAccepted(FalError::InvalidRequest(
                    "request_timeout must be more than 1 second".into(),
                )))
            }
            Some(t) => Some(format_seconds(t)),
            None => None,
        };
        let output_lifecycle = match &options.output_lifecycle {
            Some(lifecycle) => Some(serde_json::to_string(lifecycle).map_err(|e| {
                SubmitError::NotAccepted(FalError::InvalidRequest(format!("lifecycle: {e}")))
            })?),
            None => None,
        };
        let mut url = join_path(&self.config.queue_url, endpoint.as_str());
        {
            let mut query = url.query_pairs_mut();
            if let Some(webhook) = &options.webhook_url {
                query.append_pair("fal_webhook", webhook.as_str());
            }
            if let Some(max) = options.max_queue_length {
                query.append_pair("fal_max_queue_length", &max.to_string());
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }

        let result = self
            .send_with_retry(Operation::Submit, || {
                let mut builder = self
                    .authorized(self.http.post(url.clone()))
                    .timeout(self.config.request_timeout)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
                if let Some(priority) = options.priority {
                    builder = builder.header("x-fal-queue-priority", priority.as_header());
                }
                if let Some(timeout) = &timeout_header {
                    builder = builder.header("x-fal-request-timeout", timeout.as_str());
                }
                if let Some(lifecycle) = &output_lifecycle {
                    builder =
                        builder.header("x-fal-object-lifecycle-preference", lifecycle.as_str());
                }
                Ok(builder)
            })
            .await;

        let answer = match result {
            Ok(answer) => answer,
            Err(failure) => return Err(submit_failure(failure)),
        };
        let submitted: Submitted = match decode(&answer.body, "submit") {
            Ok(s) => s,
            Err(cause) => {
                // fal answered 2xx: the request is most likely enqueued under an id we lost.
                return Err(SubmitError::OutcomeUnknown {
                    request_id: crate::classify::request_id_header(&answer.headers),
                    cause,
                });
            }
        };
        tracing::info!(request_id = %submitted.request_id, "fal accepted the submit");
        Ok(self.with_trusted_urls(&endpoint, submitted))
    }

    /// Status, result and cancel URLs for a request when only its id is known, by the
    /// owner/alias rule (the endpoint's subpath is dropped; `workflows/`/`comfy/` namespaces
    /// are kept).
    pub fn request_ref(&self, endpoint: &str, request_id: &str) -> Result<RequestRef, FalError> {
        let endpoint = EndpointId::parse(endpoint)?;
        Ok(self.rule_ref(&endpoint, request_id))
    }

    fn rule_ref(&self, endpoint: &EndpointId, request_id: &str) -> RequestRef {
        let base = format!("{}/requests/{}", endpoint.app_path(), request_id);
        RequestRef {
            request_id: request_id.to_owned(),
            status_url: join_path(&self.config.queue_url, &format!("{base}/status")),
            response_url: join_path(&self.config.queue_url, &base),
            cancel_url: join_path(&self.config.queue_url, &format!("{base}/cancel")),
        }
    }

    /// Keeps the URLs fal returned unless one points outside the configured queue base, in
    /// which case the owner/alias rule is used instead (the key is never sent elsewhere).
    fn with_trusted_urls(&self, endpoint: &EndpointId, mut submitted: Submitted) -> Submitted {
        let trusted = [
            &submitted.status_url,
            &submitted.response_url,
            &submitted.cancel_url,
        ]
        .iter()
        .all(|u| self.is_under_queue_base(u));
        if !trusted {
            tracing::warn!(
                request_id = %submitted.request_id,
                "fal returned request URLs outside the configured queue base; using the owner/alias rule"
            );
            let rule = self.rule_ref(endpoint, &submitted.request_id);
            submitted.status_url = rule.status_url;
            submitted.response_url = rule.response_url;
            submitted.cancel_url = rule.cancel_url;
        }
        submitted
    }

    /// Polls a request's status, with its logs when `with_logs`.
    #[tracing::instrument(skip_all, fields(request_id = %request.request_id))]
    pub async fn status(
        &self,
        request: &RequestRef,
        with_logs: bool,
    ) -> Result<QueueStatus, FalError> {
        let mut url = request.status_url.clone();
        url.set_query(Some(if with_logs { "logs=1" } else { "logs=0" }));
        let answer = self
            .send_bodiless(Operation::Status, reqwest::Method::GET, &url)
            .await
            .map_err(|f| f.error)?;
        decode(&answer.body, "status")
    }

    /// The bare model output of a completed request. A failed request re-emits the model's
    /// error with fal's status and body, classified like any other error.
    pub async fn result(&self, request: &RequestRef) -> Result<serde_json::Value, FalError> {
        Ok(self.billed_result(request).await?.output)
    }

    /// [`FalClient::result`] with what fal billed for the request, when it said.
    #[tracing::instrument(skip_all, fields(request_id = %request.request_id))]
    pub async fn billed_result(&self, request: &RequestRef) -> Result<BilledResult, FalError> {
        let answer = self
            .send_bodiless(
                Operation::Result,
                reqwest::Method::GET,
                &request.response_url,
            )
            .await
            .map_err(|f| f.error)?;
        Ok(BilledResult {
            output: decode(&answer.body, "result")?,
            billable_units: crate::classify::billable_units(&answer.headers),
        })
    }

    /// [`FalClient::result`] parsed into a model output type.
    pub async fn result_as<T: DeserializeOwned>(
        &self,
        request: &RequestRef,
    ) -> Result<T, FalError> {
        let value = self.result(request).await?;
        serde_json::from_value(value).map_err(|source| FalError::Decode {
            context: "result",
            source,
        })
    }

    /// Asks fal to cancel a request (PUT without a body).
    #[tracing::instrument(skip_all, fields(request_id = %request.request_id))]
    pub async fn cancel(&self, request: &RequestRef) -> Result<CancelOutcome, FalError> {
        let result = self
            .send_bodiless(Operation::Cancel, reqwest::Method::PUT, &request.cancel_url)
            .await;
        match result {
            Ok(_) => Ok(CancelOutcome::CancellationRequested),
            Err(Failure {
                error:
                    FalError::Http {
                        status: 400,
                        detail,
                        ..
                    },
                ..
            }) if detail == "ALREADY_COMPLETED" => Ok(CancelOutcome::AlreadyCompleted),
            Err(f) => Err(f.error),
        }
    }

    /// Sends a queue call without a body (status, result, cancel) to `url` with the key,
    /// retried by `op`'s policy.
    async fn send_bodiless(
        &self,
        op: Operation,
        method: reqwest::Method,
        url: &Url,
    ) -> Result<Answer, Failure> {
        self.send_with_retry(op, || {
            Ok(self
                .authorized(self.http.request(method.clone(), url.clone()))
                .timeout(self.config.request_timeout))
        })
        .await
    }

    /// Follows a request's status over server-sent events until it completes.
    #[tracing::instrument(skip_all, fields(request_id = %request.request_id))]
    pub async fn status_stream(
        &self,
        request: &RequestRef,
        with_logs: bool,
    ) -> Result<StatusStream, FalError> {
        let mut url = request.status_url.clone();
        let path = format!("{}/stream", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_query(Some(if with_logs { "logs=1" } else { "logs=0" }));
        let response = self
            .with_extra_headers(self.authorized_accepting(self.http.get(url), "text/event-stream"))
            .send()
            .await
            .map_err(FalError::send_failed)?;
        let status = response.status();
        if !status.is_success() {
            let headers = response.headers().clone();
            let body = response
                .bytes()
                .await
                .map_err(|e| FalError::transport(TransportStage::AfterSend, e))?;
            return Err(crate::classify::classify(status, &headers, &body));
        }
        Ok(crate::sse::status_events(response))
    }
}

/// Maps a failed submit to "certainly not accepted" or "outcome unknown".
fn submit_failure(failure: Failure) -> SubmitError {
    match failure.attempt {
        Some(AttemptFailure::Transport {
            stage: TransportStage::AfterSend,
        }) => SubmitError::OutcomeUnknown {
            request_id: None,
            cause: failure.error,
        },
        Some(AttemptFailure::Status {
            status: 502..=504,
            has_request_id: true,
            user_timeout: false,
            ..
        }) => {
            let request_id = match &failure.error {
                FalError::Server { request_id, .. } => request_id.clone(),
                _ => None,
            };
            SubmitError::OutcomeUnknown {
                request_id,
                cause: failure.error,
            }
        }
        _ => SubmitError::NotAccepted(failure.error),
    }
}

/// Whole seconds as `"30"` (as fal-js sends them), fractions as `"30.5"`.
fn format_seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_formatted_like_fal_js() {
        assert_eq!(format_seconds(Duration::from_secs(30)), "30");
        assert_eq!(format_seconds(Duration::from_millis(2500)), "2.5");
    }
}
