//! Webhook endpoints and their delivery log as callers see them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use service::webhook_endpoints;
use store::webhooks::{AttemptRecord, EndpointRecord};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointResponse {
    pub id: Uuid,
    pub url: String,
    pub description: Option<String>,
    /// `training.queued`, `training.submitted`, `training.started`, `training.progress`,
    /// `training.succeeded`, `training.failed`, `training.cancelled`, `training.timed_out`,
    /// `generation.queued`, `generation.succeeded`, `generation.failed`, `avatar.deleted`,
    /// `webhook_endpoint.disabled`;
    /// `null` means every type.
    #[schema(value_type = Option<Vec<crate::openapi::EventType>>)]
    pub event_types: Option<Vec<String>>,
    pub enabled: bool,
    /// `gone` (the endpoint answered 410), `failing` (every attempt failed for
    /// `WEBHOOK_DISABLE_AFTER`) or `disabled_by_caller`.
    #[schema(value_type = Option<crate::openapi::DisabledReason>)]
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<EndpointRecord> for EndpointResponse {
    fn from(e: EndpointRecord) -> Self {
        Self {
            id: e.id,
            url: e.url,
            description: e.description,
            event_types: e.event_types,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// The endpoint and its signing secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEndpointResponse {
    #[serde(flatten)]
    pub endpoint: EndpointResponse,
    /// `whsec_...`: verify deliveries with it (Standard Webhooks `v1`). Not shown again.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecretResponse {
    /// The new secret, shown this once. Deliveries are signed with it from now on.
    pub secret: String,
    /// Until then the previous secrets sign too (one `v1,` signature each).
    pub previous_secrets_expire_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointPage {
    pub items: Vec<EndpointResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptResponse {
    pub number: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `in_flight`, `succeeded`, `failed`, or `abandoned` (the sender stopped before recording
    /// the outcome; the event is sent again with the same `webhook-id`).
    #[schema(value_type = crate::openapi::AttemptOutcome)]
    pub outcome: String,
    pub status_code: Option<i32>,
    pub latency_ms: Option<i32>,
    pub error: Option<String>,
    /// The start of the endpoint's answer.
    pub response_snippet: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryResponse {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    /// The `webhook-id` header: the same on every attempt and replay.
    pub event_id: Uuid,
    #[schema(value_type = crate::openapi::EventType)]
    pub event_type: String,
    /// `pending`, `delivered` or `failed` (retries exhausted, or the endpoint is gone).
    #[schema(value_type = DeliveryStatus)]
    pub status: String,
    pub attempt_count: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// Oldest first.
    pub attempts: Vec<AttemptResponse>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryResponse>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl From<webhook_endpoints::Delivery> for DeliveryResponse {
    fn from(d: webhook_endpoints::Delivery) -> Self {
        let webhook_endpoints::Delivery { delivery, attempts } = d;
        Self {
            id: delivery.id,
            endpoint_id: delivery.endpoint_id,
            event_id: delivery.event_id,
            event_type: delivery.event_type,
            status: delivery.status.as_str().to_string(),
            attempt_count: delivery.attempt_count,
            next_attempt_at: delivery.next_attempt_at,
            last_status_code: delivery.last_status_code,
            created_at: delivery.created_at,
            delivered_at: delivery.delivered_at,
            attempts: attempts.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<AttemptRecord> for AttemptResponse {
    fn from(a: AttemptRecord) -> Self {
        Self {
            number: a.number,
            started_at: a.started_at,
            finished_at: a.finished_at,
            outcome: a.outcome.as_str().to_string(),
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            error: a.error,
            response_snippet: a.response_snippet,
        }
    }
}
