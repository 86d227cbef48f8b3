//! Events for callers. Every state change writes its event to the outbox in its own
//! transaction; then, in this process:
//!
//! - the **sequencer** gives committed events their place in one commit-ordered sequence,
//!   renders their body once, and creates a delivery per subscribed endpoint;
//! - the **relay** delivers them to tenants' webhook endpoints (Standard Webhooks signatures,
//!   retries, leases with fencing tokens);
//! - the **listener** forwards Postgres notifications from every replica, on one connection, to
//!   this process's event streams (`GET /events`), relay and generation waiters.

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
        tokio::spawn(relay::run(service)),
    ]
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
/// requests. Reconnects after errors.
async fn forward_notifications(service: Service) {
    use store::notifications::Notification;
    loop {
        match service.store.listen().await {
            Ok(mut notifications) => loop {
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
            },
            Err(error) => tracing::warn!(%error, "listening for notifications"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
