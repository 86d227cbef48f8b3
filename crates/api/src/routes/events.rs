//! `GET /events`: a tenant's events as Server-Sent Events, live from every replica and
//! resumable with `Last-Event-ID`.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Caller;
use crate::extract::AppQuery;
use crate::problem::ApiError;
use crate::state::AppState;
use service::event_streams;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events about this avatar.
    pub avatar_id: Option<Uuid>,
    /// Only events about this training or generation.
    pub job_id: Option<Uuid>,
    /// Only these types, comma-separated, e.g. `training.succeeded,training.failed`.
    #[param(value_type = Option<Vec<crate::openapi::EventType>>, style = Form, explode = false)]
    pub types: Option<String>,
}

/// One event of the stream as a client's SSE parser yields it (keep-alive comments aside).
/// Documentation only: the stream is written by axum's SSE encoder.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StreamedEvent {
    /// The event id: resume after it with `Last-Event-ID`.
    pub id: String,
    /// The event type, e.g. `training.succeeded`.
    pub event: String,
    /// The webhook body as JSON text: `{type, timestamp, data}`.
    pub data: String,
}

/// Stream events.
///
/// Server-Sent Events: each event has `id` (the event id, also the `webhook-id` of its
/// webhook deliveries), `event` (its type) and `data` (the same JSON body webhooks carry:
/// `{type, timestamp, data}`). Without `Last-Event-ID` the stream starts with the next event;
/// with it, it first replays every later event in order, so a reconnecting client misses
/// nothing. Comment lines keep idle streams open. Events from every replica arrive. A tenant
/// may hold only so many streams open at once; a stream ends within seconds of its key being
/// revoked.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    operation_id = "stream_events",
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<Uuid>, Header, description = "Resume after this event"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "An endless `text/event-stream`", content_type = "text/event-stream", body = StreamedEvent),
        crate::responses::Unauthorized,
        (status = 422, description = "Invalid filter, or unknown `Last-Event-ID` (`unknown_event_id`)", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The key's request rate (`rate_limited`) or the tenant's open streams (`event_stream_quota_exceeded`) are at their limit", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream_events(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(query): AppQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter =
        event_streams::event_filter(query.avatar_id, query.job_id, query.types.as_deref())?;
    // A header that is not text names no event of the caller's.
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or_default());
    let feed = event_streams::open_feed(
        &state,
        caller.tenant_id,
        caller.key_id,
        filter,
        last_event_id,
    )
    .await?;
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        let sse = Event::default()
            .id(event.id.to_string())
            .event(event.event_type.clone())
            .data(event.payload.to_string());
        Some((Ok(sse), feed))
    });
    let keep_alive = KeepAlive::new()
        .interval(state.settings.events.heartbeat)
        .text("keep-alive");
    Ok(Sse::new(stream).keep_alive(keep_alive))
}
