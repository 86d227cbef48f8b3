//! `POST /webhooks/fal`: fal's completion callbacks.
//!
//! The raw body and fal's signature headers go to [`service::fal_webhook`] as received; 2xx is
//! answered only after the delivery is committed, so fal retries anything we did not durably
//! take.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::problem::{ApiError, Problem};
use crate::state::AppState;
use service::fal_webhook::{self, CallbackTarget};

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
        (status = 400, description = "Not a fal callback body (`malformed_webhook`), or its signed request id header names another request than its body (`request_id_mismatch`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, stale or invalid signature (`invalid_signature`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Signed for another fal user than `FAL_WEBHOOK_USER_ID` (`foreign_fal_user`)", body = Problem, content_type = "application/problem+json"),
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
    let target = CallbackTarget {
        job: target.job,
        token: target.token,
    };
    let signature = fal::SignatureHeaders::from_header_map(&headers);
    let outcome = fal_webhook::receive_callback(&state, &target, &signature, &body).await?;
    Ok(Json(WebhookAck {
        outcome: outcome.as_str().to_string(),
    }))
}
