//! A tenant's events as a live feed, from every replica and resumable from an event id. The
//! transport frames them (Server-Sent Events in the HTTP API).
//!
//! Feeds do not poll the database on their own: the process's one router
//! ([`crate::events`]) learns which tenants have new events and wakes only their feeds, and
//! checks the keys of open feeds, ending those whose key was revoked.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use domain::{ApiKeyId, TenantId};
use store::events::{EventFilter, SequencedEvent};
use tokio::sync::watch;
use uuid::Uuid;

use crate::context::Service;
use crate::error::{InputLocation, ServiceError};
use crate::events::EVENT_TYPES;

/// Events read per query.
const PAGE: i64 = 100;

/// The open feeds of this process, by tenant.
#[derive(Default)]
pub struct StreamRegistry {
    tenants: Mutex<HashMap<TenantId, TenantStreams>>,
    next_id: std::sync::atomic::AtomicU64,
}

struct TenantStreams {
    /// Bumped when the tenant has new events.
    wake: watch::Sender<u64>,
    open: HashMap<u64, OpenFeed>,
}

struct OpenFeed {
    key: ApiKeyId,
    /// The position the feed started after.
    start: i64,
    /// Set to end the feed.
    end: watch::Sender<bool>,
}

impl StreamRegistry {
    fn register(
        self: &Arc<Self>,
        tenant: TenantId,
        key: ApiKeyId,
        start: i64,
        limit: u32,
    ) -> Result<Registration, ServiceError> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let streams = tenants.entry(tenant).or_insert_with(|| TenantStreams {
            wake: watch::channel(0).0,
            open: HashMap::new(),
        });
        if streams.open.len() >= limit as usize {
            return Err(ServiceError::limit_reached(
                "event_stream_quota_exceeded",
                format!("this tenant already has {limit} open event streams; close one first"),
                limit,
            ));
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (end, ended) = watch::channel(false);
        streams.open.insert(id, OpenFeed { key, start, end });
        Ok(Registration {
            ticket: StreamTicket {
                registry: self.clone(),
                tenant,
                id,
            },
            wake: streams.wake.subscribe(),
            ended,
        })
    }

    /// Wakes the feeds of these tenants.
    pub fn wake(&self, tenants: &[TenantId]) {
        let registered = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        for tenant in tenants {
            if let Some(streams) = registered.get(tenant) {
                streams.wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Wakes every feed (after notifications may have been missed).
    pub fn wake_all(&self) {
        let registered = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        for streams in registered.values() {
            streams.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The earliest position an open feed started after; `None` when none is open.
    pub fn earliest_start(&self) -> Option<i64> {
        let registered = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        registered
            .values()
            .flat_map(|s| s.open.values().map(|feed| feed.start))
            .min()
    }

    /// Whether any feed is open: otherwise nobody needs waking.
    pub fn is_empty(&self) -> bool {
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// How many times this tenant's feeds were woken (0 when none is open).
    pub fn wakeups(&self, tenant: TenantId) -> u64 {
        let registered = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        registered.get(&tenant).map_or(0, |s| *s.wake.borrow())
    }

    /// The keys of every open feed.
    pub fn keys(&self) -> Vec<ApiKeyId> {
        let registered = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let keys: HashSet<ApiKeyId> = registered
            .values()
            .flat_map(|s| s.open.values().map(|feed| feed.key))
            .collect();
        keys.into_iter().collect()
    }

    /// Ends the feeds opened with a key not in `live`.
    pub fn end_all_but(&self, live: &[ApiKeyId]) {
        let registered = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        for feed in registered.values().flat_map(|s| s.open.values()) {
            if !live.contains(&feed.key) {
                feed.end.send_replace(true);
            }
        }
    }

    fn unregister(&self, tenant: TenantId, id: u64) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(streams) = tenants.get_mut(&tenant) {
            streams.open.remove(&id);
            if streams.open.is_empty() {
                tenants.remove(&tenant);
            }
        }
    }
}

struct Registration {
    ticket: StreamTicket,
    wake: watch::Receiver<u64>,
    ended: watch::Receiver<bool>,
}

/// A feed's place in the registry, given back when the feed is dropped.
struct StreamTicket {
    registry: Arc<StreamRegistry>,
    tenant: TenantId,
    id: u64,
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        self.registry.unregister(self.tenant, self.id);
    }
}

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
/// It ends when `key` is revoked. A tenant has at most its limit of feeds open per replica.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
pub async fn open_feed(
    service: &Service,
    tenant_id: TenantId,
    key: ApiKeyId,
    filter: EventFilter,
    last_event_id: Option<&str>,
) -> Result<Feed, ServiceError> {
    let after = start_position(service, tenant_id, last_event_id).await?;
    // Registered before the first read: what is sequenced before that read, the read finds;
    // what is sequenced later wakes the feed.
    let registration = service.streams.register(
        tenant_id,
        key,
        after,
        service.settings.tenants.max_event_streams,
    )?;
    let closing = service.stopping();
    // A feed filtered to a job or an avatar watches its jobs while it is open.
    let watching = match (filter.job_id, filter.avatar_id) {
        (Some(job), _) => Some(store::JobWatch::Job(job)),
        (None, Some(avatar)) => Some(store::JobWatch::Avatar(domain::AvatarId(avatar))),
        (None, None) => None,
    };
    if let Some(watch) = watching {
        crate::jobs::watch(service, tenant_id, watch).await;
    }
    Ok(Feed {
        watching,
        next_watch: tokio::time::Instant::now() + watch_refresh(service),
        service: service.clone(),
        tenant_id,
        filter,
        after,
        buffered: VecDeque::new(),
        wake: registration.wake,
        ended: registration.ended,
        _ticket: registration.ticket,
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
    wake: watch::Receiver<u64>,
    /// Set when the feed's key was revoked.
    ended: watch::Receiver<bool>,
    _ticket: StreamTicket,
    closing: watch::Receiver<bool>,
    /// The jobs this feed watches, renewed every half check interval while it is open.
    watching: Option<store::JobWatch>,
    next_watch: tokio::time::Instant,
}

/// How often an open feed renews its watch: twice per check interval, so the watch never
/// lapses between two renewals.
fn watch_refresh(service: &Service) -> std::time::Duration {
    service.settings.jobs.status_check_interval / 2
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
            if *self.closing.borrow() || *self.ended.borrow() {
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
                woken = self.wake.changed() => {
                    if woken.is_err() {
                        return None;
                    }
                }
                _ = self.ended.changed() => return None,
                _ = self.closing.changed() => return None,
                _ = tokio::time::sleep_until(self.next_watch), if self.watching.is_some() => {
                    if let Some(watch) = self.watching {
                        crate::jobs::watch(&self.service, self.tenant_id, watch).await;
                    }
                    self.next_watch = tokio::time::Instant::now() + watch_refresh(&self.service);
                }
            }
        }
    }
}
