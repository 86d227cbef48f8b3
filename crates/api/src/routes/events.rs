//! `GET /events`: a tenant's events as Server-Sent Events, live from every replica and
//! resumable with `Last-Event-ID`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use store::events::{EventFilter, SequencedEvent};
use tokio::sync::broadcast;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Caller;
use crate::event_bodies::EVENT_TYPES;
use crate::extract::AppQuery;
use crate::problem::{ApiError, FieldLocation};
use crate::state::AppState;

/// Events read per query.
const PAGE: i64 = 100;
/// A stream looks for events this often even without a notification, in case one was missed
/// (say, while the listener reconnected).
const SAFETY_POLL: Duration = Duration::from_secs(1);

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

fn parse_types(types: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(types) = types else {
        return Ok(None);
    };
    let list: Vec<String> = types
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(unknown) = list.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
        return Err(ApiError::invalid_field(
            FieldLocation::Query,
            "types",
            "unknown_event_type",
            format!("{unknown:?} is not one of {}", EVENT_TYPES.join(", ")),
        ));
    }
    if list.is_empty() {
        return Err(ApiError::invalid_field(
            FieldLocation::Query,
            "types",
            "empty",
            "must list at least one type, or be omitted",
        ));
    }
    Ok(Some(list))
}

/// Where the stream starts: after the event named by `Last-Event-ID`, or after everything so
/// far.
async fn start_position(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<i64, ApiError> {
    let Some(raw) = headers.get("last-event-id") else {
        return Ok(state.store.latest_event_position().await?);
    };
    let unknown = || {
        ApiError::invalid_field(
            FieldLocation::Header,
            "Last-Event-ID",
            "unknown_event_id",
            "is not the id of one of your events",
        )
    };
    let id = raw
        .to_str()
        .ok()
        .and_then(|v| Uuid::parse_str(v.trim()).ok())
        .ok_or_else(unknown)?;
    state
        .store
        .event_position(caller.tenant_id, id)
        .await?
        .ok_or_else(unknown)
}

/// Stream events.
///
/// Server-Sent Events: each event has `id` (the event id, also the `webhook-id` of its
/// webhook deliveries), `event` (its type) and `data` (the same JSON body webhooks carry:
/// `{type, timestamp, data}`). Without `Last-Event-ID` the stream starts with the next event;
/// with it, it first replays every later event in order, so a reconnecting client misses
/// nothing. Comment lines keep idle streams open. Events from every replica arrive.
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
        (status = 200, description = "An endless `text/event-stream`", content_type = "text/event-stream", body = String),
        (status = 401, description = "Missing, unknown or revoked API key", body = crate::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid filter, or unknown `Last-Event-ID` (`unknown_event_id`)", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn stream_events(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(query): AppQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let filter = EventFilter {
        avatar_id: query.avatar_id,
        job_id: query.job_id,
        types: parse_types(query.types.as_deref())?,
    };
    // Subscribed before the first read, so nothing sequenced in between is missed.
    let wake = state.sequenced_events.subscribe();
    let closing = state.closing_streams();
    let after = start_position(&state, &caller, &headers).await?;
    let heartbeat = state.settings.events.heartbeat;
    let feed = Feed {
        state,
        tenant: caller.tenant_id,
        filter,
        after,
        buffered: VecDeque::new(),
        wake,
        closing,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        let sse = Event::default()
            .id(event.id.to_string())
            .event(event.event_type.clone())
            .data(event.payload.to_string());
        Some((Ok(sse), feed))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(heartbeat).text("keep-alive")))
}

/// One client's position in the tenant's events.
struct Feed {
    state: AppState,
    tenant: domain::TenantId,
    filter: EventFilter,
    after: i64,
    buffered: VecDeque<SequencedEvent>,
    wake: broadcast::Receiver<i64>,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl Feed {
    /// The next event; `None` ends the stream (shutdown, or the database failed: the client
    /// reconnects with `Last-Event-ID` and misses nothing).
    async fn next(&mut self) -> Option<SequencedEvent> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                self.after = event.position;
                return Some(event);
            }
            if *self.closing.borrow() {
                return None;
            }
            match self
                .state
                .store
                .events_after(self.tenant, self.after, &self.filter, PAGE)
                .await
            {
                Ok(events) if !events.is_empty() => {
                    self.buffered.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "reading events for a stream");
                    return None;
                }
            }
            tokio::select! {
                received = self.wake.recv() => {
                    if let Err(broadcast::error::RecvError::Closed) = received {
                        return None;
                    }
                }
                _ = self.closing.changed() => return None,
                _ = tokio::time::sleep(SAFETY_POLL) => {}
            }
        }
    }
}
