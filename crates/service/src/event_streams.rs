//! A tenant's events as a live feed, from every replica and resumable from an event id. The
//! transport frames them (Server-Sent Events in the HTTP API).

use std::collections::VecDeque;
use std::time::Duration;

use domain::TenantId;
use store::events::{EventFilter, SequencedEvent};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::context::Service;
use crate::error::{InputLocation, ServiceError};
use crate::events::EVENT_TYPES;

/// Events read per query.
const PAGE: i64 = 100;
/// A feed looks for events this often even without a notification, in case one was missed
/// (say, while the listener reconnected).
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// Which events a feed carries, from the caller's filters; `types` is comma-separated.
pub fn event_filter(
    avatar_id: Option<Uuid>,
    job_id: Option<Uuid>,
    types: Option<&str>,
) -> Result<EventFilter, ServiceError> {
    Ok(EventFilter {
        avatar_id,
        job_id,
        types: parse_types(types)?,
    })
}

fn parse_types(types: Option<&str>) -> Result<Option<Vec<String>>, ServiceError> {
    let Some(types) = types else {
        return Ok(None);
    };
    let list: Vec<String> = types
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(unknown) = list.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
        return Err(ServiceError::invalid_field(
            InputLocation::Query,
            "types",
            "unknown_event_type",
            format!("{unknown:?} is not one of {}", EVENT_TYPES.join(", ")),
        ));
    }
    if list.is_empty() {
        return Err(ServiceError::invalid_field(
            InputLocation::Query,
            "types",
            "empty",
            "must list at least one type, or be omitted",
        ));
    }
    Ok(Some(list))
}

/// Where a feed starts: after the event named by `last_event_id` (the `Last-Event-ID` a
/// reconnecting client sends), or after everything so far.
async fn start_position(
    service: &Service,
    tenant_id: TenantId,
    last_event_id: Option<&str>,
) -> Result<i64, ServiceError> {
    let Some(raw) = last_event_id else {
        return Ok(service.store.latest_event_position().await?);
    };
    let unknown = || {
        ServiceError::invalid_field(
            InputLocation::Header,
            "Last-Event-ID",
            "unknown_event_id",
            "is not the id of one of your events",
        )
    };
    let id = Uuid::parse_str(raw.trim()).map_err(|_| unknown())?;
    service
        .store
        .event_position(tenant_id, id)
        .await?
        .ok_or_else(unknown)
}

/// Opens a tenant's feed: every later event matching `filter`, in sequence order, then live.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
pub async fn open_feed(
    service: &Service,
    tenant_id: TenantId,
    filter: EventFilter,
    last_event_id: Option<&str>,
) -> Result<Feed, ServiceError> {
    // Subscribed before the first read, so nothing sequenced in between is missed.
    let wake = service.sequenced_events.subscribe();
    let closing = service.stopping();
    let after = start_position(service, tenant_id, last_event_id).await?;
    Ok(Feed {
        service: service.clone(),
        tenant_id,
        filter,
        after,
        buffered: VecDeque::new(),
        wake,
        closing,
    })
}

/// One client's position in the tenant's events.
pub struct Feed {
    service: Service,
    tenant_id: TenantId,
    filter: EventFilter,
    after: i64,
    buffered: VecDeque<SequencedEvent>,
    wake: broadcast::Receiver<i64>,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl Feed {
    /// The next event; `None` ends the feed (shutdown, or the database failed: the client
    /// reconnects from its last event and misses nothing).
    pub async fn next(&mut self) -> Option<SequencedEvent> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                self.after = event.position;
                return Some(event);
            }
            if *self.closing.borrow() {
                return None;
            }
            match self
                .service
                .store
                .events_after(self.tenant_id, self.after, &self.filter, PAGE)
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
