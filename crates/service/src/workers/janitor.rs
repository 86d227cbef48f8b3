//! Background clean-up: blobs whose rows were deleted, uploads abandoned mid-way, and fal
//! callbacks for unknown requests past their retention.

use std::time::Duration;

use crate::context::Service;

/// A pending upload older than this belongs to a process that died.
const ABANDONED_AFTER: Duration = Duration::from_secs(15 * 60);
const BATCH: i64 = 100;

/// Deletes queued blobs; a failure leaves the entry for the next round.
pub async fn purge_deleted_blobs(service: &Service) {
    let keys = match service.store.pending_blob_deletions(BATCH).await {
        Ok(keys) => keys,
        Err(error) => {
            tracing::warn!(%error, "listing blobs to delete");
            return;
        }
    };
    for key in keys {
        let deleted = match service.blobs.delete(&key).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, blob = %key, "deleting a blob");
                false
            }
        };
        if let Err(error) = service.store.finish_blob_deletion(&key, deleted).await {
            tracing::warn!(%error, "recording a blob deletion");
        }
    }
}

/// One round of clean-up.
pub async fn run_once(service: &Service) {
    match service.store.sweep_abandoned_uploads(ABANDONED_AFTER).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(uploads = n, "swept abandoned uploads"),
        Err(error) => tracing::warn!(%error, "sweeping abandoned uploads"),
    }
    purge_deleted_blobs(service).await;
    let retention = service.settings.unknown_callbacks.retention;
    match service.store.purge_unknown_callbacks(retention).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(callbacks = n, "forgot fal callbacks for unknown requests"),
        Err(error) => tracing::warn!(%error, "forgetting fal callbacks for unknown requests"),
    }
}

/// Runs clean-up rounds every `interval` until the task is dropped.
pub async fn run(service: Service, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        run_once(&service).await;
    }
}
