//! `POST /webhooks/fal`: fal's completion callbacks.
//!
//! The raw bytes are verified (ED25519 over fal's signed message) before anything is parsed;
//! the delivery is recorded in the inbox and applied through the one transition function in a
//! single transaction; 2xx is answered only after the commit, so fal retries anything we did
//! not durably take.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use store::{WebhookDelivery, WebhookOutcome};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::problem::{ApiError, Problem};
use crate::state::AppState;
use service::jobs::{self, FalOutcome};

/// The largest callback accepted.
pub const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WebhookTarget {
    /// The job this callback is for, as given to fal at submit.
    pub job: Option<Uuid>,
    /// The job's callback token.
    pub token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    /// `applied`, `ignored` (late, duplicate or out of order), `duplicate`, or
    /// `unknown_request` (kept for reconciliation).
    #[schema(value_type = crate::openapi::CallbackOutcome)]
    pub outcome: String,
}

/// fal webhook receiver.
///
/// Called by fal, not by API clients: authenticated by fal's ED25519 signature headers.
#[utoipa::path(
    post,
    path = "/webhooks/fal",
    tag = "webhooks",
    operation_id = "fal_webhook",
    params(WebhookTarget),
    request_body(content = String, description = "fal's callback body, verified byte for byte"),
    responses(
        (status = 200, description = "Recorded", body = WebhookAck),
        (status = 400, description = "Not a fal callback body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, stale or invalid signature (`invalid_signature`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 1 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "fal's signing keys cannot be fetched now (`jwks_unavailable`); fal retries", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn fal_webhook(
    State(state): State<AppState>,
    Query(target): Query<WebhookTarget>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookAck>, ApiError> {
    let Some(fal) = state.fal.as_ref() else {
        return Err(ApiError::unavailable(
            "fal_not_configured",
            "this service has no fal connection",
        ));
    };
    let verified = fal
        .verifier
        .verify(&headers, &body)
        .await
        .map_err(|error| match error {
            fal::WebhookError::JwksUnavailable(_) => ApiError::unavailable(
                "jwks_unavailable",
                "fal's signing keys cannot be fetched now; retry later",
            )
            .with_source(error),
            fal::WebhookError::MalformedBody(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_webhook",
                "the body is not a fal callback",
            )
            .with_source(error),
            other => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                "the callback's signature is missing, stale or invalid",
            )
            .with_source(other),
        })?;
    let payload = verified.body;
    let request_id = payload.request_id.clone();

    // Correlate by our job id and token first (works before the request id is stored), then
    // by fal's request id.
    let mut job = None;
    if let (Some(id), Some(token)) = (target.job, target.token.as_deref()) {
        if let Some(candidate) = state.store.job_by_id(id).await? {
            let same_request = candidate
                .fal_request_id
                .as_deref()
                .is_none_or(|known| known == request_id);
            if jobs::token_matches(token, &candidate.webhook_token) && same_request {
                job = Some(candidate);
            }
        }
    }
    if job.is_none() {
        job = state.store.job_by_request_id(&request_id).await?;
    }
    let body_json: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let delivery = WebhookDelivery {
        fal_request_id: request_id.clone(),
        body_sha256: hex::encode(Sha256::digest(&body)),
        fal_status: match payload.status {
            fal::WebhookStatus::Ok => "OK".into(),
            fal::WebhookStatus::Error => "ERROR".into(),
        },
        body: body_json,
    };
    let events = match &job {
        Some(job) => {
            let outcome = match (payload.status, payload.payload) {
                (fal::WebhookStatus::Ok, Some(result)) if !result.is_null() => {
                    FalOutcome::Succeeded(result)
                }
                (fal::WebhookStatus::Ok, _) => FalOutcome::SucceededWithoutPayload,
                (fal::WebhookStatus::Error, result) => {
                    let (code, message) = service::fal_errors::failure_code(
                        payload.error.as_deref(),
                        result.as_ref(),
                    );
                    FalOutcome::Failed { code, message }
                }
            };
            jobs::completion_events(job, &request_id, outcome)
        }
        None => Vec::new(),
    };
    let outcome = state
        .store
        .apply_webhook(&delivery, job.as_ref().map(|j| j.id), &events)
        .await?;
    let outcome = match outcome {
        WebhookOutcome::Duplicate => "duplicate",
        WebhookOutcome::UnknownRequest => {
            tracing::warn!(request_id = %request_id, "fal callback for an unknown request kept for reconciliation");
            "unknown_request"
        }
        WebhookOutcome::Processed(store::EventOutcome::Applied(_)) => "applied",
        WebhookOutcome::Processed(_) => "ignored",
    };
    state.work.notify_waiters();
    if let Some(generation) = job.as_ref().and_then(|j| j.generation_id) {
        service::generation_items::announce(&state, generation);
    }
    Ok(Json(WebhookAck {
        outcome: outcome.to_string(),
    }))
}
