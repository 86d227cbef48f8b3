//! Background clean-up: rows past their retention, blobs whose rows were deleted, and uploads
//! abandoned mid-way.
//!
//! Every replica runs the janitor. Trims delete in small batches of rows no other transaction
//! holds (see `store::retention`), and blob deletions are claimed for a while before they are
//! attempted, so janitors share the work instead of repeating it.

use std::time::Duration;

use futures_util::StreamExt;
use store::Trim;

use crate::config::RetentionSettings;
use crate::context::Service;

/// Blob deletions claimed at once.
const BLOB_BATCH: i64 = 100;
/// Blob deletions in flight at once.
const BLOB_CONCURRENCY: usize = 8;
/// How long a claimed blob deletion is left to its janitor; one that died mid-way leaves it to
/// another after this.
const BLOB_CLAIM: Duration = Duration::from_secs(5 * 60);

/// The wait after the `failures`-th failed attempt to delete a blob: the base, doubled with
/// each further failure, at most the maximum.
pub fn blob_retry_after(failures: u32, settings: &RetentionSettings) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    settings
        .blob_retry_base
        .saturating_mul(1u32 << doublings)
        .min(settings.blob_retry_max)
}

/// Deletes one batch of queued blobs that are due. A failure is counted and the blob tried
/// again after a wait that grows with its failures, so blobs that keep failing never hold up
/// the others. Returns how many deletions were attempted.
pub async fn purge_deleted_blobs(service: &Service) -> usize {
    let claim = service.store.claim_blob_deletions(BLOB_BATCH, BLOB_CLAIM);
    let Some(claimed) = super::claimed(claim.await, "blobs to delete") else {
        return 0;
    };
    let attempted = claimed.len();
    futures_util::stream::iter(claimed)
        .for_each_concurrent(BLOB_CONCURRENCY, |(key, attempts)| async move {
            let recorded = match service.blobs.delete(&key).await {
                Ok(()) => service.store.blob_deleted(&key).await,
                Err(error) => {
                    let failures = u32::try_from(attempts).unwrap_or(0).saturating_add(1);
                    let retry_after = blob_retry_after(failures, &service.settings.retention);
                    tracing::warn!(
                        %error, blob = %key, failures, retry_in_s = retry_after.as_secs(),
                        "deleting a blob failed; it is tried again later"
                    );
                    service.metrics.blob_deletion_failed();
                    service
                        .store
                        .blob_deletion_failed(&key, retry_after, &error.to_string())
                        .await
                }
            };
            if let Err(error) = recorded {
                tracing::warn!(%error, blob = %key, "recording a blob deletion");
            }
        })
        .await;
    attempted
}

/// The trims of one round, each with its horizon.
pub fn trims(service: &Service) -> [Trim; 6] {
    let retention = &service.settings.retention;
    [
        Trim::OutboxEvents {
            delivered: retention.delivered_events,
            failed: retention.failed_events,
        },
        Trim::FalCallbacks(retention.fal_callbacks),
        Trim::UnknownCallbacks(service.settings.unknown_callbacks.retention),
        Trim::IdempotencyKeys(retention.idempotency_keys),
        Trim::JobEvents(retention.job_events),
        Trim::ExpiredSecrets(retention.expired_secrets),
    ]
}

/// Deletes every row past its retention, table by table, in batches.
pub async fn trim_expired(service: &Service) {
    let batches = service.settings.retention.batches();
    for trim in trims(service) {
        let table = trim.table();
        match service.store.trim(trim, batches).await {
            Ok(report) => {
                if report.rows > 0 {
                    service.metrics.trimmed(table, report.rows);
                    tracing::info!(
                        table,
                        rows = report.rows,
                        batches = report.batches,
                        longest_batch_ms = report.longest_batch.as_millis() as u64,
                        "trimmed rows past their retention"
                    );
                }
                if report.lock_timed_out {
                    tracing::info!(
                        table,
                        "a trim waited too long for a lock; the rest waits for the next round"
                    );
                }
            }
            Err(error) => tracing::warn!(%error, table, "trimming rows past their retention"),
        }
    }
}

/// Removes what processes that died mid-work left in the scratch directory: entries named
/// `avatars-*` (uploads being checked, training archives, model files) untouched for longer
/// than `RETENTION_SCRATCH_FILES`. One in use lives for a request or a submit; one this old has
/// no owner left, and may hold a person's photos. Returns how many entries were removed.
pub async fn sweep_scratch(service: &Service) -> usize {
    let dir = service.settings.scratch_dir.clone();
    let horizon = service.settings.retention.scratch_files;
    let swept = tokio::task::spawn_blocking(move || remove_stale_scratch(&dir, horizon)).await;
    match swept {
        Ok(Ok(0)) => 0,
        Ok(Ok(removed)) => {
            tracing::info!(
                entries = removed,
                "removed scratch files a stopped process left"
            );
            removed
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "sweeping the scratch directory");
            0
        }
        Err(error) => {
            tracing::warn!(%error, "the scratch sweep failed");
            0
        }
    }
}

fn remove_stale_scratch(dir: &std::path::Path, horizon: Duration) -> std::io::Result<usize> {
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(crate::context::SCRATCH_PREFIX)
        {
            continue;
        }
        // Not followed: a link is removed as a link, never what it points to.
        let Ok(metadata) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let untouched = metadata
            .modified()
            .ok()
            .and_then(|modified| now.duration_since(modified).ok());
        if untouched.is_none_or(|age| age <= horizon) {
            continue;
        }
        let gone = if metadata.is_dir() {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        match gone {
            Ok(()) => removed += 1,
            // Another replica sharing the directory removed it first.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%error, path = %entry.path().display(), "removing a scratch entry");
            }
        }
    }
    Ok(removed)
}

/// One round of clean-up.
pub async fn run_once(service: &Service) {
    // A photo stays pending only while its request stores the bytes; one pending for longer
    // than a lease (`JOB_LEASE`, the time after which work of a process that died is taken
    // over) belongs to a process that died, and blocks the same file from being sent again.
    match service
        .store
        .sweep_abandoned_uploads(service.settings.jobs.lease)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(uploads = n, "swept abandoned uploads"),
        Err(error) => tracing::warn!(%error, "sweeping abandoned uploads"),
    }
    // Each claimed blob is deleted or moved to a later attempt, so this ends.
    while purge_deleted_blobs(service).await as i64 == BLOB_BATCH {}
    trim_expired(service).await;
    sweep_scratch(service).await;
}

/// Runs clean-up rounds every `interval` until the task is dropped.
pub async fn run(service: Service, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        run_once(&service).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_retries_back_off_exponentially_up_to_the_maximum() {
        let settings = RetentionSettings {
            blob_retry_base: Duration::from_secs(30),
            blob_retry_max: Duration::from_secs(3600),
            ..RetentionSettings::default()
        };
        let waits: Vec<u64> = (1..=9)
            .map(|failures| blob_retry_after(failures, &settings).as_secs())
            .collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(
            blob_retry_after(u32::MAX, &settings),
            Duration::from_secs(3600)
        );
        assert_eq!(blob_retry_after(0, &settings), Duration::from_secs(30));
    }
}
