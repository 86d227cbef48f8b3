//! fal callbacks applied together: one transaction for a batch of verified callbacks.
//!
//! Every callback of a batch is correlated and locked by one statement, recorded in the inbox
//! by another, and applied through the one transition function; the batch commits once. A
//! duplicate inside the batch is answered like a duplicate across batches: the first delivery
//! of a (request id, body) pair is recorded, the others are not. When anything in the
//! transaction fails, nothing of the batch is kept and the caller applies its callbacks one by
//! one ([`Store::apply_webhook`]), so one bad callback never fails the others.

use std::collections::{HashMap, HashSet};

use domain::JobEvent;
use uuid::Uuid;

use crate::jobs::{
    apply_callback_locked, unknown_callbacks_kept, JobChanges, LockedJob, WebhookDelivery,
    WebhookOutcome,
};
use crate::records::{JobRecord, JOB_COLUMNS};
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
        let mut tx = self.pool.begin().await?;
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
        // Each job as this transaction has it: callbacks for the same job apply in turn.
        let mut locked: HashMap<Uuid, LockedJob> = jobs
            .iter()
            .map(|job| (job.id, LockedJob::of(job)))
            .collect();
        let mut changed = Vec::new();
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
            let events = events_for(i, job);
            let Some(state) = locked.get_mut(&job.id) else {
                unreachable!("every correlated job was locked");
            };
            let last = apply_callback_locked(
                &mut tx,
                inbox_id,
                state,
                &events,
                "fal webhook",
                &mut changed,
            )
            .await?;
            outcomes[i] = Some(WebhookOutcome::Processed(last));
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
