//! Events for callers. Every state change writes its event to the outbox in its own
//! transaction; then, in this process:
//!
//! - the **sequencer** gives committed events their place in one commit-ordered sequence,
//!   renders their body once, and creates a delivery per subscribed endpoint;
//! - the **relay** delivers them to tenants' webhook endpoints (Standard Webhooks signatures,
//!   retries, leases with fencing tokens);
//! - the **listener** forwards the sequencer's Postgres notifications from every replica to
//!   this process's event streams (`GET /events`) and relay.

pub mod relay;
pub mod render;
pub mod signing;

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::state::AppState;

/// Events sequenced in one transaction at most.
const SEQUENCER_BATCH: i64 = 500;

/// Starts the event workers of this process.
pub fn spawn(state: AppState) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(run_sequencer(state.clone())),
        tokio::spawn(forward_notifications(state.clone())),
        tokio::spawn(relay::run(state)),
    ]
}

/// Sequences events as they are committed: polls cheaply (one indexed probe), and drains
/// whole backlogs batch by batch.
async fn run_sequencer(state: AppState) {
    loop {
        loop {
            match sequence_batch(&state).await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(error) => {
                    tracing::warn!(%error, "sequencing events");
                    break;
                }
            }
        }
        tokio::time::sleep(state.settings.events.sequencer_poll).await;
    }
}

/// One batch; true when it sequenced anything.
async fn sequence_batch(state: &AppState) -> Result<bool, store::StoreError> {
    let Some(position) = state
        .store
        .sequence_events(SEQUENCER_BATCH, render::render)
        .await?
    else {
        return Ok(false);
    };
    // Streams and the relay of this process hear it through NOTIFY too; this is sooner.
    let _ = state.sequenced_events.send(position);
    state.relay_wake.notify_one();
    Ok(true)
}

/// Forwards the sequencer's notifications (from any replica) to this process's streams and
/// relay, reconnecting after errors.
async fn forward_notifications(state: AppState) {
    loop {
        match state.store.listen_events().await {
            Ok(mut listener) => loop {
                match listener.recv().await {
                    Ok(notification) => {
                        if let Ok(position) = notification.payload().parse::<i64>() {
                            let _ = state.sequenced_events.send(position);
                        }
                        state.relay_wake.notify_one();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "event notifications interrupted");
                        break;
                    }
                }
            },
            Err(error) => tracing::warn!(%error, "listening for event notifications"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
