//! Tenants' webhook endpoints: where the service sends their events, signed per Standard
//! Webhooks, and the log of every delivery.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use secrecy::ExposeSecret;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::extract::{AppJson, AppQuery, PathId, PathIds};
use crate::pagination::{PageQuery, Paged};
use crate::problem::{ApiError, Problem};
use crate::responses::{
    located, DeliveryNotFound, EndpointNotFound, EndpointPath, InvalidQuery, MalformedJson,
    Unauthorized,
};
use crate::state::AppState;
use crate::views::webhook_endpoints::{
    CreatedEndpointResponse, DeliveryPage, DeliveryResponse, DeliveryStatus, EndpointPage,
    EndpointResponse, RotatedSecretResponse,
};
use service::webhook_endpoints::{self, EndpointChanges, EndpointSpec};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpointRequest {
    /// Where events are POSTed: https (http only where the service allows it), on a public
    /// address.
    pub url: String,
    /// The event types to send (see `EndpointResponse.event_types`); every type when absent.
    #[schema(value_type = Option<Vec<crate::openapi::EventType>>)]
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpointRequest {
    pub url: Option<String>,
    /// `null` subscribes to every type.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<crate::openapi::EventType>>)]
    pub event_types: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// `false` stops deliveries (new events are not queued for it); `true` resumes them.
    pub enabled: Option<bool>,
}

/// Tells an explicit `null` (`Some(None)`) from an absent field (`None`).
fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecretRequest {
    /// How long the previous secrets keep signing, 0-604800 seconds (default 86400).
    pub overlap_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListDeliveriesQuery {
    /// Page size, 1-100 (default 20).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only deliveries in this status.
    pub status: Option<DeliveryStatus>,
}

/// Register a webhook endpoint.
///
/// Returns the signing secret (`whsec_...`) once. Every event of the subscribed types is then
/// POSTed as `{type, timestamp, data}` with Standard Webhooks headers: `webhook-id` (the event
/// id, the same on every retry), `webhook-timestamp` and `webhook-signature` (`v1`,
/// HMAC-SHA256 over `{id}.{timestamp}.{body}`). A 2xx answer is success; anything else,
/// redirects included, is retried after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h (±20%);
/// 410 disables the endpoint.
#[utoipa::path(
    post,
    path = "/webhook-endpoints",
    tag = "webhook endpoints",
    operation_id = "create_webhook_endpoint",
    request_body = CreateEndpointRequest,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Registered; the secret is shown only now", body = CreatedEndpointResponse,
            headers(("location" = String, description = "URL of the new endpoint"))),
        MalformedJson,
        Unauthorized,
        (status = 422, description = "Invalid fields (`forbidden_address`, `scheme_not_allowed`, `unknown_event_type`, ...)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The key's request rate (`rate_limited`, with `Retry-After`) or the tenant's endpoints (`webhook_endpoint_quota_exceeded`) are at their limit", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_webhook_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<CreateEndpointRequest>,
) -> Result<Response, ApiError> {
    let spec = EndpointSpec {
        url: body.url,
        event_types: body.event_types,
        description: body.description,
    };
    let (endpoint, secret) =
        webhook_endpoints::create_endpoint(&state, caller.tenant_id, spec).await?;
    let location = format!("/webhook-endpoints/{}", endpoint.id);
    let body = CreatedEndpointResponse {
        endpoint: endpoint.into(),
        secret: secret.expose_secret().to_string(),
    };
    located(StatusCode::CREATED, &location, body)
}

/// List webhook endpoints.
///
/// Newest first. Secrets are never listed.
#[utoipa::path(
    get,
    path = "/webhook-endpoints",
    tag = "webhook endpoints",
    operation_id = "list_webhook_endpoints",
    params(PageQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "A page of endpoints", body = EndpointPage),
        Unauthorized,
        InvalidQuery,
    )
)]
pub async fn list_webhook_endpoints(
    State(state): State<AppState>,
    caller: Caller,
    Paged(page): Paged,
) -> Result<Json<EndpointPage>, ApiError> {
    let found = webhook_endpoints::list_endpoints(&state, caller.tenant_id, page).await?;
    let (items, next_cursor) = crate::pagination::render(found, |e| e.id, Into::into);
    Ok(Json(EndpointPage { items, next_cursor }))
}

/// Get a webhook endpoint.
#[utoipa::path(
    get,
    path = "/webhook-endpoints/{id}",
    tag = "webhook endpoints",
    operation_id = "get_webhook_endpoint",
    params(EndpointPath),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The endpoint", body = EndpointResponse),
        Unauthorized,
        EndpointNotFound,
    )
)]
pub async fn get_webhook_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<EndpointResponse>, ApiError> {
    let endpoint = webhook_endpoints::get_endpoint(&state, caller.tenant_id, id).await?;
    Ok(Json(endpoint.into()))
}

/// Change a webhook endpoint.
///
/// `enabled: false` stops deliveries: events are not queued for a disabled endpoint, and its
/// pending deliveries wait. `enabled: true` resumes them (also after a 410 disabled it).
#[utoipa::path(
    patch,
    path = "/webhook-endpoints/{id}",
    tag = "webhook endpoints",
    operation_id = "update_webhook_endpoint",
    params(EndpointPath),
    request_body = UpdateEndpointRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The endpoint as changed", body = EndpointResponse),
        MalformedJson,
        Unauthorized,
        EndpointNotFound,
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_webhook_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    AppJson(body): AppJson<UpdateEndpointRequest>,
) -> Result<Json<EndpointResponse>, ApiError> {
    let changes = EndpointChanges {
        url: body.url,
        event_types: body.event_types,
        description: body.description,
        enabled: body.enabled,
    };
    let endpoint =
        webhook_endpoints::update_endpoint(&state, caller.tenant_id, id, changes).await?;
    Ok(Json(endpoint.into()))
}

/// Delete a webhook endpoint, with its secrets and delivery log.
#[utoipa::path(
    delete,
    path = "/webhook-endpoints/{id}",
    tag = "webhook endpoints",
    operation_id = "delete_webhook_endpoint",
    params(EndpointPath),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Deleted"),
        Unauthorized,
        EndpointNotFound,
    )
)]
pub async fn delete_webhook_endpoint(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    webhook_endpoints::delete_endpoint(&state, caller.tenant_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate an endpoint's signing secret.
///
/// Returns the new secret once. During the overlap every delivery carries one `v1,` signature
/// per live secret, so receivers can switch without losing events.
#[utoipa::path(
    post,
    path = "/webhook-endpoints/{id}/rotate-secret",
    tag = "webhook endpoints",
    operation_id = "rotate_webhook_secret",
    params(EndpointPath),
    request_body(content = Option<RotateSecretRequest>, description = "Optional; an empty body keeps the default overlap"),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Rotated", body = RotatedSecretResponse),
        MalformedJson,
        Unauthorized,
        EndpointNotFound,
        (status = 422, description = "Invalid `overlap_seconds`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rotate_webhook_secret(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<RotatedSecretResponse>, ApiError> {
    let request: RotateSecretRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateSecretRequest::default()
    } else {
        crate::extract::require_json(&headers)?;
        crate::extract::parse_json(&body)?
    };
    let rotated =
        webhook_endpoints::rotate_secret(&state, caller.tenant_id, id, request.overlap_seconds)
            .await?;
    Ok(Json(RotatedSecretResponse {
        secret: rotated.secret.expose_secret().to_string(),
        previous_secrets_expire_at: rotated.previous_secrets_expire_at,
    }))
}

/// List an endpoint's deliveries.
///
/// Newest first, each with its attempts (status, latency, the start of the answer).
#[utoipa::path(
    get,
    path = "/webhook-endpoints/{id}/deliveries",
    tag = "webhook endpoints",
    operation_id = "list_webhook_deliveries",
    params(EndpointPath, ListDeliveriesQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryPage),
        Unauthorized,
        EndpointNotFound,
        InvalidQuery,
    )
)]
pub async fn list_webhook_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    AppQuery(query): AppQuery<ListDeliveriesQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let page = crate::pagination::page(query.limit, query.cursor.as_deref())?;
    let status = query.status.map(|s| match s {
        DeliveryStatus::Pending => "pending",
        DeliveryStatus::Delivered => "delivered",
        DeliveryStatus::Failed => "failed",
    });
    let found =
        webhook_endpoints::list_deliveries(&state, caller.tenant_id, id, status, page).await?;
    let (items, next_cursor) = crate::pagination::render(found, |d| d.delivery.id, Into::into);
    Ok(Json(DeliveryPage { items, next_cursor }))
}

/// Get one delivery of an endpoint, with its attempts.
#[utoipa::path(
    get,
    path = "/webhook-endpoints/{id}/deliveries/{delivery_id}",
    tag = "webhook endpoints",
    operation_id = "get_webhook_delivery",
    params(
        EndpointPath,
        ("delivery_id" = Uuid, Path, description = "Delivery id"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The delivery", body = DeliveryResponse),
        Unauthorized,
        DeliveryNotFound,
    )
)]
pub async fn get_webhook_delivery(
    State(state): State<AppState>,
    caller: Caller,
    PathIds(id, delivery_id): PathIds,
) -> Result<Json<DeliveryResponse>, ApiError> {
    let delivery =
        webhook_endpoints::get_delivery(&state, caller.tenant_id, id, delivery_id).await?;
    Ok(Json(delivery.into()))
}

/// Send a delivery again.
///
/// Whatever became of it, the event is sent again now with the same `webhook-id` (receivers
/// deduplicate on it), and retried on the usual schedule if it fails.
#[utoipa::path(
    post,
    path = "/webhook-endpoints/{id}/deliveries/{delivery_id}/replay",
    tag = "webhook endpoints",
    operation_id = "replay_webhook_delivery",
    params(
        EndpointPath,
        ("delivery_id" = Uuid, Path, description = "Delivery id"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Queued to be sent now", body = DeliveryResponse),
        Unauthorized,
        DeliveryNotFound,
        (status = 409, description = "The endpoint is disabled (`webhook_endpoint_disabled`); enable it first", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn replay_webhook_delivery(
    State(state): State<AppState>,
    caller: Caller,
    PathIds(id, delivery_id): PathIds,
) -> Result<Response, ApiError> {
    let delivery =
        webhook_endpoints::replay_delivery(&state, caller.tenant_id, id, delivery_id).await?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryResponse::from(delivery))).into_response())
}
