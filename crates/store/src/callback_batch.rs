//! fal callbacks applied together: one transaction for a batch of verified callbacks.
//!
//! Every callback of a batch is correlated and locked by one statement, recorded in the inbox
//! by another, and applied through the one transition function; the batch commits once. A
//! duplicate inside the batch is answered like a duplicate across batches: the first delivery
//! of a (request id, body) pair is recorded, the others are not. When anything in the
//! transaction fails, nothing of the batch is kept and the caller applies its callbacks one by
//! one ([`Store::apply_webhook`]), so one bad callback never fails the others.

use std::collections::{HashMap, HashSet, VecDeque};

use domain::JobEvent;
use uuid::Uuid;

use crate::jobs::{
    unknown_callbacks_kept, EventOutcome, JobChanges, LockedJob, WebhookDelivery, WebhookOutcome,
};
use crate::records::{JobRecord, JOB_COLUMNS};
use crate::transitions::{apply_transitions, JobTransition, TransitionItem};
use crate::{Store, StoreError};

/// One verified callback of a batch.
#[derive(Debug, Clone)]
pub struct BatchedCallback {
    pub delivery: WebhookDelivery,
    /// The job the callback's URL names, when its token was genuine: it is the callback's
    /// job unless that job already has another request id.
    pub named_job: Option<Uuid>,
    /// What the inbox keeps instead of the body when no job matches (`None`: the body).
    pub unknown_body: Option<serde_json::Value>,
}

/// What one callback of a batch became, with the job it was for as the batch found it.
#[derive(Debug, Clone)]
pub struct BatchedOutcome {
    pub job: Option<JobRecord>,
    pub outcome: WebhookOutcome,
}

impl Store {
    /// Applies `callbacks` in one transaction and returns an outcome for each, in order.
    /// `events_for(i, job)` says what callback `i` means for its job (called inside the
    /// transaction, with the job locked, once per callback that is recorded for a job).
    /// Callbacks for no job are kept while fewer than `unknown_kept_at_most` are.
    pub async fn apply_webhook_batch(
        &self,
        callbacks: &[BatchedCallback],
        unknown_kept_at_most: i64,
        mut events_for: impl FnMut(usize, &JobRecord) -> Vec<(JobEvent, JobChanges)> + Send,
    ) -> Result<Vec<BatchedOutcome>, StoreError> {
        let mut tx = self.begin_planned_once().await?;
        let jobs = lock_jobs(&mut tx, callbacks).await?;
        let job_of: Vec<Option<&JobRecord>> =
            callbacks.iter().map(|c| correlate(&jobs, c)).collect();

        // Which callbacks are recorded: the first of each delivery, and unknown ones while
        // there is room for them.
        let mut seen = HashSet::new();
        let mut outcomes: Vec<Option<WebhookOutcome>> = vec![None; callbacks.len()];
        for (i, callback) in callbacks.iter().enumerate() {
            let key = (
                &callback.delivery.fal_request_id,
                &callback.delivery.body_sha256,
            );
            if !seen.insert(key) {
                outcomes[i] = Some(WebhookOutcome::Duplicate);
            }
        }
        let unknown: Vec<usize> = (0..callbacks.len())
            .filter(|&i| outcomes[i].is_none() && job_of[i].is_none())
            .collect();
        if !unknown.is_empty() {
            let kept = unknown_callbacks_kept(&mut tx, unknown_kept_at_most).await?;
            let room = usize::try_from((unknown_kept_at_most - kept).max(0)).unwrap_or(0);
            for &i in unknown.iter().skip(room) {
                outcomes[i] = Some(WebhookOutcome::UnknownRequestNotKept);
            }
        }

        let inbox_ids = record_deliveries(&mut tx, callbacks, &job_of, &outcomes).await?;
        // What each recorded callback means for its job, in arrival order per job.
        let mut recorded: Vec<Recorded> = Vec::new();
        for (i, callback) in callbacks.iter().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            let key = (
                callback.delivery.fal_request_id.clone(),
                callback.delivery.body_sha256.clone(),
            );
            let Some(&inbox_id) = inbox_ids.get(&key) else {
                // Recorded by an earlier batch or request.
                outcomes[i] = Some(WebhookOutcome::Duplicate);
                continue;
            };
            let Some(job) = job_of[i] else {
                outcomes[i] = Some(WebhookOutcome::UnknownRequest);
                continue;
            };
            recorded.push(Recorded {
                callback: i,
                inbox_id,
                job: job.id,
                events: events_for(i, job),
            });
        }
        let mut changed = Vec::new();
        let results = apply_in_rounds(&mut tx, &jobs, &recorded, &mut changed).await?;
        let ignored: Vec<i64> = recorded
            .iter()
            .zip(&results)
            .filter(|(_, result)| !result.any_applied)
            .map(|(callback, _)| callback.inbox_id)
            .collect();
        mark_ignored(&mut tx, &ignored).await?;
        for (callback, result) in recorded.iter().zip(results) {
            outcomes[callback.callback] = Some(WebhookOutcome::Processed(result.last));
        }
        tx.commit().await?;
        self.observer.committed(&changed);
        Ok(outcomes
            .into_iter()
            .zip(job_of)
            .map(|(outcome, job)| BatchedOutcome {
                job: job.cloned(),
                outcome: outcome.unwrap_or(WebhookOutcome::Duplicate),
            })
            .collect())
    }
}

/// A callback recorded in the inbox for a job, with what it means for the job.
struct Recorded {
    callback: usize,
    inbox_id: i64,
    job: Uuid,
    events: Vec<(JobEvent, JobChanges)>,
}

/// What a recorded callback's events did to its job.
struct Applied {
    last: EventOutcome,
    any_applied: bool,
}

/// Applies the recorded callbacks' events with set-based statements. Each round takes the next
/// event of every job (a job's events apply in arrival order, each seeing the job as the one
/// before left it), so a batch whose callbacks each carry one event is one round.
async fn apply_in_rounds(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    jobs: &[JobRecord],
    recorded: &[Recorded],
    changed: &mut Vec<crate::gauges::Changed>,
) -> Result<Vec<Applied>, StoreError> {
    let mut locked: HashMap<Uuid, LockedJob> = jobs
        .iter()
        .map(|job| (job.id, LockedJob::of(job)))
        .collect();
    // Per job, its pending (callback, event) pairs, oldest first.
    let mut pending: Vec<(Uuid, VecDeque<(usize, usize)>)> = Vec::new();
    for (r, callback) in recorded.iter().enumerate() {
        let queue = match pending.iter_mut().find(|(job, _)| *job == callback.job) {
            Some((_, queue)) => queue,
            None => {
                pending.push((callback.job, VecDeque::new()));
                &mut pending.last_mut().expect("just pushed").1
            }
        };
        queue.extend((0..callback.events.len()).map(|e| (r, e)));
    }
    let mut results: Vec<Applied> = recorded
        .iter()
        .map(|_| Applied {
            last: EventOutcome::NotFound,
            any_applied: false,
        })
        .collect();
    loop {
        let round: Vec<(usize, usize)> = pending
            .iter_mut()
            .filter_map(|(_, queue)| queue.pop_front())
            .collect();
        if round.is_empty() {
            return Ok(results);
        }
        let items: Vec<TransitionItem<'_>> = round
            .iter()
            .map(|&(r, e)| {
                let callback = &recorded[r];
                let (event, changes) = &callback.events[e];
                JobTransition::new(*event, changes, "fal webhook").of(locked[&callback.job])
            })
            .collect();
        let outcomes = apply_transitions(tx, &items, changed).await?;
        for (&(r, _), outcome) in round.iter().zip(outcomes) {
            if let EventOutcome::Applied(job) = &outcome {
                results[r].any_applied = true;
                locked.insert(job.id, LockedJob::of(job));
            }
            results[r].last = outcome;
        }
    }
}

/// Marks recorded callbacks whose events all changed nothing as `ignored` in the inbox.
async fn mark_ignored(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    inbox_ids: &[i64],
) -> Result<(), StoreError> {
    if inbox_ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE webhook_inbox SET outcome = 'ignored' WHERE id = ANY($1)")
        .bind(inbox_ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// The job one callback is for (read, not locked): the same choice a batch makes.
    pub async fn job_for_callback(
        &self,
        callback: &BatchedCallback,
    ) -> Result<Option<JobRecord>, StoreError> {
        let candidates: Vec<JobRecord> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 OR fal_request_id = $2"
        ))
        .bind(callback.named_job)
        .bind(&callback.delivery.fal_request_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(correlate(&candidates, callback).cloned())
    }
}

/// Locks every job the callbacks may be for (by the job their URL names or by request id),
/// in id order so that concurrent batches take their locks in the same order.
async fn lock_jobs(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    callbacks: &[BatchedCallback],
) -> Result<Vec<JobRecord>, StoreError> {
    let named: Vec<Uuid> = callbacks.iter().filter_map(|c| c.named_job).collect();
    let request_ids: Vec<&str> = callbacks
        .iter()
        .map(|c| c.delivery.fal_request_id.as_str())
        .collect();
    Ok(sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs
         WHERE id = ANY($1) OR fal_request_id = ANY($2)
         ORDER BY id FOR UPDATE"
    ))
    .bind(&named)
    .bind(&request_ids)
    .fetch_all(&mut **tx)
    .await?)
}

/// The job a callback is for: the one its URL names unless that job has another request id
/// (works before the request id is stored), else the one with its request id.
fn correlate<'a>(jobs: &'a [JobRecord], callback: &BatchedCallback) -> Option<&'a JobRecord> {
    let request_id = callback.delivery.fal_request_id.as_str();
    callback
        .named_job
        .and_then(|id| jobs.iter().find(|job| job.id == id))
        .filter(|job| {
            job.fal_request_id
                .as_deref()
                .is_none_or(|known| known == request_id)
        })
        .or_else(|| {
            jobs.iter()
                .find(|job| job.fal_request_id.as_deref() == Some(request_id))
        })
}

/// Records in the inbox, with one statement, every callback without an outcome yet; returns
/// the inbox id of each delivery that was new.
async fn record_deliveries(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    callbacks: &[BatchedCallback],
    job_of: &[Option<&JobRecord>],
    outcomes: &[Option<WebhookOutcome>],
) -> Result<HashMap<(String, String), i64>, StoreError> {
    let mut request_ids = Vec::new();
    let mut hashes = Vec::new();
    let mut job_ids = Vec::new();
    let mut statuses = Vec::new();
    let mut results = Vec::new();
    let mut bodies = Vec::new();
    for (i, callback) in callbacks.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        let delivery = &callback.delivery;
        request_ids.push(delivery.fal_request_id.as_str());
        hashes.push(delivery.body_sha256.as_str());
        job_ids.push(job_of[i].map(|job| job.id));
        statuses.push(delivery.fal_status.as_str());
        results.push(if job_of[i].is_some() {
            "applied"
        } else {
            "unknown_request"
        });
        bodies.push(match (job_of[i], &callback.unknown_body) {
            (None, Some(kept)) => kept,
            _ => &delivery.body,
        });
    }
    if request_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let inserted: Vec<(i64, String, String)> = sqlx::query_as(
        "INSERT INTO webhook_inbox (fal_request_id, body_sha256, job_id, fal_status, outcome, body)
         SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::jsonb[])
         ON CONFLICT (fal_request_id, body_sha256) DO NOTHING
         RETURNING id, fal_request_id, body_sha256",
    )
    .bind(&request_ids)
    .bind(&hashes)
    .bind(&job_ids)
    .bind(&statuses)
    .bind(&results)
    .bind(&bodies)
    .fetch_all(&mut **tx)
    .await?;
    Ok(inserted
        .into_iter()
        .map(|(id, request_id, hash)| ((request_id, hash), id))
        .collect())
}
