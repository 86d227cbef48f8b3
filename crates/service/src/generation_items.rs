//! Generations: their items' state, and waiting for them to finish.
//!
//! A generation is a row plus one job of kind `generation` per prompt; an item is its latest
//! attempt (a LoRA item is resubmitted once, as a new job, when fal could not fetch the LoRA).

use std::time::Duration;

use store::JobRecord;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::context::Service;

/// Whether the item's job is finished (the domain's rule).
pub fn item_finished(job: &JobRecord) -> bool {
    domain::item_finished(job.item_state())
}

/// The latest attempt of each item, in item order (`jobs` ordered by item, then attempt).
pub fn latest_attempts(jobs: Vec<JobRecord>) -> Vec<(JobRecord, i32)> {
    let mut items: Vec<(JobRecord, i32)> = Vec::new();
    for job in jobs {
        match items.last_mut() {
            Some((last, attempts)) if last.item_index == job.item_index => {
                *attempts += 1;
                *last = job;
            }
            _ => items.push((job, 1)),
        }
    }
    items
}

/// The generation's status from its items' (the domain's rule).
pub fn generation_status(items: &[&JobRecord]) -> &'static str {
    domain::generation_status(domain::ItemsSummary::of(
        items.iter().map(|job| job.item_state()),
    ))
    .as_str()
}

/// Tells waiters in this process that an item of `generation_id` finished.
pub fn announce(service: &Service, generation_id: Uuid) {
    // No receiver is normal: nobody is waiting.
    let _ = service.generation_events.send(generation_id);
}

/// Whether every item of the generation is finished.
async fn finished(service: &Service, generation_id: Uuid) -> bool {
    match service.store.generation_jobs(generation_id).await {
        Ok(jobs) => {
            let items = latest_attempts(jobs);
            !items.is_empty() && items.iter().all(|(job, _)| item_finished(job))
        }
        Err(error) => {
            tracing::warn!(%error, generation = %generation_id, "reading a generation while waiting");
            false
        }
    }
}

/// Waits up to `wait` for the generation to finish: woken by announcements, never by polling
/// the database. True when it finished in time.
pub async fn wait_finished(service: &Service, generation_id: Uuid, wait: Duration) -> bool {
    // Subscribe before the first look, so a completion between the two is not missed.
    let mut events = service.generation_events.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if finished(service, generation_id).await {
            return true;
        }
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) | Ok(Err(RecvError::Closed)) => return false,
                Ok(Ok(id)) if id != generation_id => continue,
                // Ours, or some announcements were missed: look again.
                Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => break,
            }
        }
    }
}
