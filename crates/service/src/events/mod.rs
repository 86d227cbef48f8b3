//! Events for callers. Every state change writes its event to the outbox in its own
//! transaction; then, in this process:
//!
//! - the **sequencer** gives committed events their place in one commit-ordered sequence,
//!   renders their body once, and creates a delivery per subscribed endpoint;
//! - the **relay** delivers them to tenants' webhook endpoints (Standard Webhooks signatures,
//!   retries, leases with fencing tokens);
//! - the **listener** forwards Postgres notifications from every replica, on one connection, to
//!   this process's event streams (`GET /events`), relay and generation waiters;
//! - the **stream router** learns, with one query per wake-up for the whole process, which
//!   tenants have new events and wakes only their streams; it also ends streams whose key was
//!   revoked.

pub mod relay;
pub mod signing;

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::context::Service;

pub use crate::context::EventBodies;

/// Every event type the service emits, for validation and documentation.
pub const EVENT_TYPES: &[&str] = &domain::EventType::NAMES;

/// Events sequenced in one transaction at most.
const SEQUENCER_BATCH: i64 = 500;

/// Starts the event workers of this process.
pub fn spawn(service: Service) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(run_sequencer(service.clone())),
        tokio::spawn(forward_notifications(service.clone())),
        tokio::spawn(route_to_streams(service.clone())),
        tokio::spawn(relay::run(service)),
    ]
}

/// Looks for new events this often even without a notification, in case one was missed
/// (say, while the listener reconnected): one query for the whole process.
const STREAM_SAFETY_POLL: Duration = Duration::from_secs(5);

/// Wakes the streams of the tenants whose events were sequenced, and ends the streams of
/// revoked keys.
async fn route_to_streams(service: Service) {
    let mut positions = service.sequenced_events.subscribe();
    let latest = service.store.latest_event_position().await.unwrap_or(0);
    // Streams may have opened before that read (requests are served while this task waits
    // for a connection). What was sequenced after they started is theirs to be woken for;
    // streams opened later start after it anyway.
    let mut routed = service
        .streams
        .earliest_start()
        .map_or(latest, |start| start.min(latest));
    let mut safety = tokio::time::interval(STREAM_SAFETY_POLL);
    let mut key_check = tokio::time::interval(service.settings.events.stream_key_check);
    loop {
        let upto = tokio::select! {
            received = positions.recv() => match received {
                Ok(position) => Some(position),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = safety.tick() => None,
            _ = key_check.tick() => {
                end_revoked_streams(&service).await;
                continue;
            }
        };
        if service.streams.is_empty() {
            routed = routed.max(upto.unwrap_or(0));
            continue;
        }
        let upto = match upto {
            Some(position) => position,
            None => match service.store.latest_event_position().await {
                Ok(position) => position,
                Err(error) => {
                    tracing::warn!(%error, "reading the latest event position");
                    service.streams.wake_all();
                    continue;
                }
            },
        };
        if upto <= routed {
            continue;
        }
        match service.store.tenants_with_events(routed, upto).await {
            Ok(tenants) => {
                service.streams.wake(&tenants);
                routed = upto;
            }
            Err(error) => {
                tracing::warn!(%error, "finding whose streams to wake");
                service.streams.wake_all();
            }
        }
    }
}

/// Ends the streams opened with keys that were revoked (on any replica) since.
async fn end_revoked_streams(service: &Service) {
    let keys = service.streams.keys();
    if keys.is_empty() {
        return;
    }
    match service.store.live_api_keys(&keys).await {
        Ok(live) => service.streams.end_all_but(&live),
        Err(error) => tracing::warn!(%error, "checking the keys of open streams"),
    }
}

/// Sequences events as they are committed: polls cheaply (one indexed probe), and drains
/// whole backlogs batch by batch.
async fn run_sequencer(service: Service) {
    loop {
        loop {
            match sequence_batch(&service).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(error) => {
                    tracing::warn!(%error, "sequencing events");
                    break;
                }
            }
        }
        tokio::time::sleep(service.settings.events.sequencer_poll).await;
    }
}

/// One batch; true when it sequenced anything.
async fn sequence_batch(service: &Service) -> Result<bool, store::StoreError> {
    let Some(position) = service
        .store
        .sequence_events(SEQUENCER_BATCH, service.event_bodies)
        .await?
    else {
        return Ok(false);
    };
    // Streams and the relay of this process hear it through NOTIFY too; this is sooner.
    let _ = service.sequenced_events.send(position);
    service.relay_wake.notify_one();
    Ok(true)
}

/// Feeds this process's waiters from its one listening connection: sequenced events (from
/// any replica) to streams and the relay, finished generation items to `Prefer: wait`
/// requests. The store drops revoked keys from its key cache as their notifications pass.
/// Listens again at once when the connection is lost, then every second until it is back
/// (the key cache is bypassed meanwhile).
async fn forward_notifications(service: Service) {
    use store::notifications::Notification;
    let mut retry_at_once = true;
    loop {
        match service.store.listen().await {
            Ok(mut notifications) => {
                retry_at_once = true;
                loop {
                    match notifications.recv().await {
                        Ok(Notification::EventsSequenced(position)) => {
                            let _ = service.sequenced_events.send(position);
                            service.relay_wake.notify_one();
                        }
                        Ok(Notification::GenerationItemFinished(generation)) => {
                            crate::generation_items::announce(&service, generation);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "notifications interrupted");
                            break;
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "listening for notifications"),
        }
        if !std::mem::replace(&mut retry_at_once, false) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
