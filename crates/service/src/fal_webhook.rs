//! fal's completion callbacks.
//!
//! The raw bytes are verified (ED25519 over fal's signed message) before anything is parsed;
//! the delivery is recorded in the inbox and applied through the one transition function in a
//! single transaction; success is reported only after the commit, so fal retries anything we
//! did not durably take.

use opentelemetry::trace::TraceContextExt;
use sha2::{Digest, Sha256};
use store::{BatchedCallback, JobRecord, WebhookDelivery, WebhookOutcome};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::callback_batch::{Committed, Pending};
use crate::context::Service;
use crate::error::ServiceError;
use crate::jobs::{self, FalOutcome};
use crate::metrics::CallbackResult;

/// The job a callback names in the URL given to fal at submit.
#[derive(Debug, Clone, Default)]
pub struct CallbackTarget {
    pub job: Option<Uuid>,
    /// The job's callback token.
    pub token: Option<String>,
}

/// What became of a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackOutcome {
    Applied,
    /// Late, duplicate or out of order for its job.
    Ignored,
    /// The same delivery was recorded before.
    Duplicate,
    /// No job matches; kept while fewer than the configured number are, and applied when a job
    /// learns its request id.
    UnknownRequest,
}

impl CallbackOutcome {
    pub fn as_str(self) -> &'static str {
        self.counted().as_str()
    }

    fn counted(self) -> CallbackResult {
        match self {
            Self::Applied => CallbackResult::Applied,
            Self::Ignored => CallbackResult::Ignored,
            Self::Duplicate => CallbackResult::Duplicate,
            Self::UnknownRequest => CallbackResult::UnknownRequest,
        }
    }
}

/// Verifies one fal callback, then records and applies it in the next batch commit.
#[tracing::instrument(
    skip_all,
    fields(
        job_id = tracing::field::Empty,
        tenant_id = tracing::field::Empty,
        avatar_id = tracing::field::Empty,
    )
)]
pub async fn receive_callback(
    service: &Service,
    target: &CallbackTarget,
    headers: &fal::SignatureHeaders,
    body: &[u8],
) -> Result<CallbackOutcome, ServiceError> {
    // Counted from here until queued, so a committer about to commit waits for it.
    let arriving = service.callbacks.arriving();
    // `verify` counts the callbacks it refuses.
    let payload = verify(service, headers, body).await?;
    let named_job = target.job.filter(|&id| {
        target
            .token
            .as_deref()
            .is_some_and(|token| service.settings.secrets.job_token_matches(id, token))
    });
    let callback = BatchedCallback {
        delivery: delivery_of(&payload, body),
        named_job,
        unknown_body: unknown_body(service, body),
    };
    let span = tracing::Span::current();
    let link = span.context().span().span_context().clone();
    let committed = service
        .callbacks
        .commit(service, arriving, |reply| Pending {
            callback,
            payload,
            link,
            reply,
        })
        .await;
    if let Some(job) = committed.as_ref().ok().and_then(|c| c.job.as_ref()) {
        span.record("job_id", tracing::field::display(job.id));
        span.record("tenant_id", tracing::field::display(job.tenant_id));
        span.record("avatar_id", tracing::field::debug(job.avatar_id));
    }
    service.metrics.fal_callback(match &committed {
        Ok(committed) => committed.outcome.counted(),
        Err(_) => CallbackResult::Error,
    });
    committed.map(|committed| committed.outcome)
}

/// The span a callback is applied in: in the trace of the request that created its job,
/// linked to the callback's own request (or, for a job without a trace, under the callback's).
pub(crate) fn apply_span(
    job: &JobRecord,
    request_id: &str,
    callback: &opentelemetry::trace::SpanContext,
) -> tracing::Span {
    let span = tracing::info_span!(parent: None, "apply_callback", fal_request_id = %request_id);
    if job.traceparent.is_some() {
        crate::trace_context::continue_trace(&span, job.traceparent.as_deref());
        span.add_link(callback.clone());
    } else if callback.is_valid() {
        let _ = span
            .set_parent(opentelemetry::Context::new().with_remote_span_context(callback.clone()));
    }
    span
}

/// What a callback means for `job`: the events to apply, in order.
pub(crate) fn events_for(
    job: &JobRecord,
    request_id: &str,
    payload: &fal::WebhookBody,
) -> Vec<(domain::JobEvent, store::JobChanges)> {
    jobs::completion_events(job, request_id, fal_outcome(payload.clone()))
}

/// Applies a callback in a transaction of its own (after its batch failed).
pub(crate) async fn apply_alone(
    service: &Service,
    callback: BatchedCallback,
    payload: fal::WebhookBody,
    link: &opentelemetry::trace::SpanContext,
) -> Result<Committed, ServiceError> {
    let request_id = callback.delivery.fal_request_id.clone();
    let job = service.store.job_for_callback(&callback).await?;
    let span = match &job {
        Some(job) => apply_span(job, &request_id, link),
        None => tracing::Span::none(),
    };
    async {
        let mut delivery = callback.delivery;
        if job.is_none() {
            if let Some(kept) = callback.unknown_body {
                delivery.body = kept;
            }
        }
        let events = match &job {
            Some(job) => events_for(job, &request_id, &payload),
            None => Vec::new(),
        };
        let outcome = service
            .store
            .apply_webhook(
                &delivery,
                job.as_ref().map(|j| j.id),
                &events,
                i64::from(service.settings.unknown_callbacks.max_kept),
            )
            .await?;
        if matches!(outcome, WebhookOutcome::Processed(_)) {
            if let Some(generation) = job.as_ref().and_then(|j| j.generation_id) {
                crate::generation_items::announce(service, generation);
            }
        }
        Ok(Committed {
            outcome: outcome_of(&outcome, &request_id),
            job,
        })
    }
    .instrument(span)
    .await
}

/// What the store's outcome means to fal.
pub(crate) fn outcome_of(outcome: &WebhookOutcome, request_id: &str) -> CallbackOutcome {
    match outcome {
        WebhookOutcome::Duplicate => CallbackOutcome::Duplicate,
        WebhookOutcome::UnknownRequest => {
            tracing::warn!(request_id = %request_id, "fal callback for an unknown request kept for reconciliation");
            CallbackOutcome::UnknownRequest
        }
        WebhookOutcome::UnknownRequestNotKept => {
            tracing::warn!(request_id = %request_id, "fal callback for an unknown request not kept: as many as allowed are kept already");
            CallbackOutcome::UnknownRequest
        }
        WebhookOutcome::Processed(store::EventOutcome::Applied(_)) => CallbackOutcome::Applied,
        WebhookOutcome::Processed(_) => CallbackOutcome::Ignored,
    }
}

/// The delivery as the inbox records it.
fn delivery_of(payload: &fal::WebhookBody, body: &[u8]) -> WebhookDelivery {
    WebhookDelivery {
        fal_request_id: payload.request_id.clone(),
        body_sha256: hex::encode(Sha256::digest(body)),
        fal_status: match payload.status {
            fal::WebhookStatus::Ok => "OK".into(),
            fal::WebhookStatus::Error => "ERROR".into(),
        },
        body: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
    }
}

/// What the inbox keeps instead of the body if the callback names no job of ours: anyone
/// with a fal account can send them, and what they say is not ours, so a large body is not
/// kept.
fn unknown_body(service: &Service, body: &[u8]) -> Option<serde_json::Value> {
    (body.len() > service.settings.unknown_callbacks.max_body_bytes)
        .then(|| serde_json::json!({ "omitted_bytes": body.len() }))
}

/// Checks fal's signature over the raw bytes, then parses them.
async fn verify(
    service: &Service,
    headers: &fal::SignatureHeaders,
    body: &[u8],
) -> Result<fal::WebhookBody, ServiceError> {
    let Some(fal) = service.fal.as_ref() else {
        return Err(ServiceError::unavailable(
            "fal_not_configured",
            "this service has no fal connection",
        ));
    };
    let verified = fal
        .verifier
        .verify_headers(headers, body)
        .await
        .inspect_err(|error| service.metrics.fal_callback(refusal(error)))
        .map_err(|error| match error {
            fal::WebhookError::JwksUnavailable(_) => ServiceError::unavailable(
                "jwks_unavailable",
                "fal's signing keys cannot be fetched now; retry later",
            )
            .with_source(error),
            fal::WebhookError::MalformedBody(_) => {
                ServiceError::bad_request("malformed_webhook", "the body is not a fal callback")
                    .with_source(error)
            }
            other => ServiceError::new(
                crate::ErrorKind::Unauthenticated,
                "invalid_signature",
                "the callback's signature is missing, stale or invalid",
            )
            .with_source(other),
        })?;
    if let Some(expected) = &service.settings.fal_webhook_user_id {
        if &verified.user_id != expected {
            service.metrics.fal_callback(CallbackResult::ForeignUser);
            return Err(ServiceError::new(
                crate::ErrorKind::Forbidden,
                "foreign_fal_user",
                "the callback is signed for another fal user than FAL_WEBHOOK_USER_ID",
            ));
        }
    }
    // The signed header names the request; a body naming another one was not what fal signed
    // for it. (Whether fal puts `request_id` or `gateway_request_id` there is not documented.)
    let body_ids = [
        Some(verified.body.request_id.as_str()),
        verified.body.gateway_request_id.as_deref(),
    ];
    if !body_ids.contains(&Some(verified.header_request_id.as_str())) {
        service
            .metrics
            .fal_callback(CallbackResult::RequestIdMismatch);
        return Err(ServiceError::bad_request(
            "request_id_mismatch",
            "the callback's X-Fal-Webhook-Request-Id differs from the request id in its body",
        ));
    }
    Ok(verified.body)
}

/// Applies the callbacks kept for `job`'s request id while no job had it (fal called back
/// before the submit's answer was stored). Called once the id is stored.
pub async fn apply_kept_callbacks(service: &Service, job: &JobRecord) {
    let Some(request_id) = job.fal_request_id.clone() else {
        return;
    };
    let kept = match service.store.kept_callbacks(&request_id).await {
        Ok(kept) => kept,
        Err(error) => {
            tracing::warn!(%error, "reading callbacks kept for a request id");
            return;
        }
    };
    for (inbox_id, body) in kept {
        let payload = match serde_json::from_value::<fal::WebhookBody>(body) {
            Ok(payload) => payload,
            Err(_) => {
                // Kept without its body (too large for an unknown request): the status
                // lookup at the job's next check learns the same.
                tracing::warn!(inbox_id, "a kept callback has no body to apply");
                continue;
            }
        };
        let events = jobs::completion_events(job, &request_id, fal_outcome(payload));
        match service
            .store
            .adopt_kept_callback(inbox_id, job.id, &events)
            .await
        {
            Ok(Some(outcome)) => {
                tracing::info!(
                    inbox_id,
                    applied = matches!(outcome, store::EventOutcome::Applied(_)),
                    "applied a callback kept before its request id was stored"
                );
                service.work.notify_waiters();
                if let Some(generation) = job.generation_id {
                    crate::generation_items::announce(service, generation);
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, inbox_id, "applying a kept callback"),
        }
    }
}

/// Why a callback was refused, as counted.
fn refusal(error: &fal::WebhookError) -> CallbackResult {
    match error {
        fal::WebhookError::StaleTimestamp { .. } => CallbackResult::Stale,
        fal::WebhookError::JwksUnavailable(_) => CallbackResult::KeysUnavailable,
        fal::WebhookError::MalformedBody(_) => CallbackResult::Malformed,
        fal::WebhookError::MissingHeader(_)
        | fal::WebhookError::InvalidHeader(_)
        | fal::WebhookError::MalformedSignature
        | fal::WebhookError::BadSignature => CallbackResult::BadSignature,
    }
}

/// What fal reports about the request.
fn fal_outcome(payload: fal::WebhookBody) -> FalOutcome {
    match (payload.status, payload.payload) {
        (fal::WebhookStatus::Ok, Some(result)) if !result.is_null() => {
            FalOutcome::Succeeded(result)
        }
        (fal::WebhookStatus::Ok, _) => FalOutcome::SucceededWithoutPayload,
        (fal::WebhookStatus::Error, result) => {
            let (code, message) =
                crate::fal_errors::failure_code(payload.error.as_deref(), result.as_ref());
            FalOutcome::Failed { code, message }
        }
    }
}
