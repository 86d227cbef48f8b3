//! Jobs sent to fal, their transitions, leases, and the webhook inbox.
//!
//! A job's status changes only in [`crate::transitions::apply_transitions`] (reached through
//! [`apply_event_in`] for one job): with the job's status read under a row lock, it asks the
//! domain's transition function what the event does, and writes the verdict with an
//! `UPDATE ... WHERE status = <the status the domain decided from>` that only guards it. An
//! event the domain ignores is recorded as ignored, with the domain's reason.

use chrono::{DateTime, Utc};
use domain::{
    allowed_from, AvatarChange, AvatarId, EventType, JobEvent, JobKind, JobStatus, TenantId,
};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::avatars::{avatar_page, change_avatar_status};
use crate::error::StoreError;
use crate::events::insert_training_event;
use crate::gauges::Changed;
use crate::models::NewModel;
use crate::records::{
    inserting_jobs_with_created_events, job_by_id, tenant_row, JobKindColumn, JobRecord,
    JobStatusColumn, JOB_COLUMNS,
};
use crate::transitions::{apply_transition, JobTransition};
use crate::{Quota, Store};

/// The unique index allowing one live training per avatar.
pub const ONE_ACTIVE_TRAINING: &str = "jobs_one_active_training_per_avatar";

/// The `SET` list of every claim: the job is leased to `$1` for `$2` seconds under a new
/// fence, so whoever held it before is fenced out.
const TAKE_LEASE: &str =
    "lease_owner = $1, lease_until = now() + make_interval(secs => $2), fence = fence + 1";

/// The statuses' names, to bind as a `text[]`.
fn names(statuses: impl IntoIterator<Item = JobStatus>) -> Vec<&'static str> {
    statuses.into_iter().map(JobStatus::as_str).collect()
}

/// A training to create.
#[derive(Debug, Clone)]
pub struct NewTraining {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub avatar_id: AvatarId,
    pub trainer: String,
    pub endpoint: String,
    pub preset: String,
    pub params: Value,
    pub trigger_phrase: String,
    pub input_blob_key: Option<String>,
    pub estimated_cost_usd: Option<f64>,
    /// The training's budget until it is submitted; from submission it gets one fitting its
    /// estimate (past it the job is cancelled as timed out).
    pub deadline_at: DateTime<Utc>,
    /// How long fal is expected to run it.
    pub estimated_seconds: f64,
    /// The W3C `traceparent` of the creating request, continued by the workers.
    pub traceparent: Option<String>,
}

/// Fields changed together with a transition; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct JobChanges {
    pub fal_request_id: Option<String>,
    pub status_url: Option<String>,
    pub response_url: Option<String>,
    pub cancel_url: Option<String>,
    pub queue_position: Option<i32>,
    pub clear_queue_position: bool,
    pub progress: Option<f64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub result: Option<Value>,
    pub result_fetch_needed: Option<bool>,
    pub custody_needed: Option<bool>,
    pub next_check_at: Option<DateTime<Utc>>,
    pub deadline_at: Option<DateTime<Utc>>,
    /// fal was just told or asked where the job stands (a submit's answer): live progress is
    /// not looked up again before the check interval passed.
    pub progress_checked: bool,
    /// A training's model, when the result itself is the whole model (a Pro finetune id):
    /// recorded with the transition, so nothing is left for the custody worker.
    pub model: Option<NewModel>,
    /// How the cancel owed to fal ended (see [`CancelOutcome`]): recorded with the transition,
    /// and the cancel is no longer owed.
    pub cancel_outcome: Option<CancelOutcome>,
}

domain::named_enum! {
    /// Why the service owes fal a cancel.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CancelCause {
        /// The caller cancelled the job.
        Caller => "caller",
        /// The job's deadline passed.
        Deadline => "deadline",
        /// The job's avatar was deleted.
        AvatarDeleted => "avatar_deleted",
    }
}

domain::named_enum! {
    /// How a cancel owed to fal ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CancelOutcome {
        /// fal accepted it (202).
        Requested => "requested",
        /// fal had already finished the request: its result stands.
        AlreadyCompleted => "already_completed",
        /// fal does not know the request (404): nothing runs there.
        NotFound => "not_found",
        /// Nothing was ever sent to fal.
        NotSubmitted => "not_submitted",
        /// fal never confirmed it within the configured attempts.
        Unconfirmed => "unconfirmed",
    }
}

/// Jobs someone watches: one job, a generation's items, or an avatar's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobWatch {
    /// A training, or a generation's items (the id a caller follows either by).
    Job(Uuid),
    Generation(Uuid),
    Avatar(AvatarId),
}

/// What applying an event did.
#[derive(Debug, Clone, PartialEq)]
pub enum EventOutcome {
    Applied(Box<JobRecord>),
    /// The job was not in a state the event applies to (late, duplicate, out of order) or the
    /// caller's fence is stale; nothing changed.
    Ignored {
        status: JobStatus,
        reason: String,
    },
    NotFound,
}

/// What a verified fal webhook delivery carried.
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub fal_request_id: String,
    pub body_sha256: String,
    pub fal_status: String,
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WebhookOutcome {
    /// The same delivery was recorded before; nothing changed.
    Duplicate,
    /// No job matches; kept in the inbox for reconciliation.
    UnknownRequest,
    /// No job matches, and the inbox already keeps as many unknown requests as allowed.
    UnknownRequestNotKept,
    Processed(EventOutcome),
}

/// A lease taken with a transition: a worker claiming the job.
pub(crate) struct Claim {
    pub(crate) owner: Uuid,
    pub(crate) lease: std::time::Duration,
}

/// Applies `transition` inside `tx`: the domain's verdict, the guarded update, the event
/// record, the avatar's side of a finished training, and the caller-visible event. A status
/// change is added to `changed`, for the caller to report once the transaction committed.
pub(crate) async fn apply_event_in(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    transition: JobTransition<'_>,
    changed: &mut Vec<Changed>,
) -> Result<EventOutcome, StoreError> {
    let Some(locked) = lock_job(tx, job_id).await? else {
        return Ok(EventOutcome::NotFound);
    };
    apply_transition(tx, transition.of(locked), changed).await
}

/// A job row locked by the caller's transaction, as it stands there.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub(crate) struct LockedJob {
    pub id: Uuid,
    #[sqlx(try_from = "JobKindColumn")]
    pub kind: JobKind,
    pub avatar_id: Option<Uuid>,
    #[sqlx(try_from = "JobStatusColumn")]
    pub status: JobStatus,
    pub progress: Option<f64>,
    pub fence: i64,
}

impl LockedJob {
    pub(crate) fn of(job: &JobRecord) -> Self {
        Self {
            id: job.id,
            kind: job.kind(),
            avatar_id: job.avatar_id,
            status: job.status(),
            progress: job.progress,
            fence: job.fence,
        }
    }
}

/// Reads and locks (until `tx` ends) what a transition of the job needs.
async fn lock_job(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
) -> Result<Option<LockedJob>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, kind, avatar_id, status, progress, fence FROM jobs WHERE id = $1 FOR UPDATE",
    )
    .bind(job_id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Applies what a recorded callback says to its job inside `tx`; the inbox row says `ignored`
/// when nothing applied. Returns the last event's outcome.
pub(crate) async fn apply_callback_in(
    tx: &mut Transaction<'_, Postgres>,
    inbox_id: i64,
    job_id: Uuid,
    events: &[(JobEvent, JobChanges)],
    cause: &str,
    changed: &mut Vec<Changed>,
) -> Result<EventOutcome, StoreError> {
    let Some(mut locked) = lock_job(tx, job_id).await? else {
        mark_ignored(tx, inbox_id).await?;
        return Ok(EventOutcome::NotFound);
    };
    apply_callback_locked(tx, inbox_id, &mut locked, events, cause, changed).await
}

/// [`apply_callback_in`] for a job the caller has locked in `tx`; `locked` follows what the
/// events change.
pub(crate) async fn apply_callback_locked(
    tx: &mut Transaction<'_, Postgres>,
    inbox_id: i64,
    locked: &mut LockedJob,
    events: &[(JobEvent, JobChanges)],
    cause: &str,
    changed: &mut Vec<Changed>,
) -> Result<EventOutcome, StoreError> {
    let mut last = EventOutcome::NotFound;
    let mut any_applied = false;
    for (event, changes) in events {
        let item = JobTransition::new(*event, changes, cause).of(*locked);
        last = apply_transition(tx, item, changed).await?;
        if let EventOutcome::Applied(job) = &last {
            any_applied = true;
            *locked = LockedJob::of(job);
        }
    }
    if !any_applied {
        mark_ignored(tx, inbox_id).await?;
    }
    Ok(last)
}

async fn mark_ignored(tx: &mut Transaction<'_, Postgres>, inbox_id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE webhook_inbox SET outcome = 'ignored' WHERE id = $1")
        .bind(inbox_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Ends custody of a `finishing` job inside `tx`: `completed`, under the lease holder's fence,
/// with its custody flags cleared (and a training's model recorded and made its avatar's). False
/// when the job is not the caller's to finish any more (lease lost, cancelled meanwhile); the
/// caller then rolls back whatever it wrote in `tx`.
pub(crate) async fn complete_custody_in(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    fence: i64,
    model: Option<NewModel>,
    changed: &mut Vec<Changed>,
) -> Result<bool, StoreError> {
    let changes = JobChanges {
        custody_needed: Some(false),
        result_fetch_needed: Some(false),
        model,
        ..JobChanges::default()
    };
    let transition =
        JobTransition::new(JobEvent::Completed, &changes, "custody complete").fenced(Some(fence));
    let outcome = apply_event_in(tx, job_id, transition, changed).await?;
    Ok(matches!(outcome, EventOutcome::Applied(_)))
}

/// How many callbacks for unknown requests the inbox keeps, counted up to `at_most`.
pub(crate) async fn unknown_callbacks_kept(
    tx: &mut Transaction<'_, Postgres>,
    at_most: i64,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM webhook_inbox
          WHERE outcome = 'unknown_request' LIMIT $1) kept",
    )
    .bind(at_most)
    .fetch_one(&mut **tx)
    .await?)
}

/// `status IN (...)` naming, as literals, the statuses the domain allows `event` from: a
/// condition the planner can match against the partial indexes written for those statuses
/// (a bound array it cannot).
fn status_in(event: JobEvent) -> String {
    let names: Vec<String> = allowed_from(event)
        .iter()
        .map(|status| format!("'{}'", status.as_str()))
        .collect();
    format!("status IN ({})", names.join(", "))
}

impl Store {
    /// Creates a pending training and marks the avatar as training, in one transaction. A live
    /// training of the same avatar is a `Conflict` on [`ONE_ACTIVE_TRAINING`].
    pub async fn insert_training(
        &self,
        new: &NewTraining,
        max_active: u32,
        idempotency: Option<&crate::IdempotencyHold>,
    ) -> Result<JobRecord, StoreError> {
        let mut tx = self.begin().await?;
        crate::tenants::check_quota(&mut tx, new.tenant_id, Quota::ActiveTrainings, max_active)
            .await?;
        let job: JobRecord = sqlx::query_as(&inserting_jobs_with_created_events(
            &format!(
                "INSERT INTO jobs (id, tenant_id, avatar_id, kind, status, trainer, endpoint,
                     preset, params, trigger_phrase, input_blob_key, estimated_cost_usd,
                     deadline_at, traceparent, estimated_seconds)
                 VALUES ($1, $2, $3, $12, $13, $4, $5, $6, $7, $8, $9, $10, $11, $14, $15)
                 RETURNING {JOB_COLUMNS}"
            ),
            "$16",
        ))
        .bind(new.id)
        .bind(new.tenant_id.0)
        .bind(new.avatar_id.0)
        .bind(&new.trainer)
        .bind(&new.endpoint)
        .bind(&new.preset)
        .bind(&new.params)
        .bind(&new.trigger_phrase)
        .bind(&new.input_blob_key)
        .bind(new.estimated_cost_usd)
        .bind(new.deadline_at)
        .bind(JobKind::Training.as_str())
        .bind(JobStatus::Pending.as_str())
        .bind(&new.traceparent)
        .bind(new.estimated_seconds)
        .bind("training requested")
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
        change_avatar_status(&mut tx, new.tenant_id, new.avatar_id, |_| {
            AvatarChange::TrainingStarted
        })
        .await?;
        insert_training_event(&mut tx, &job, EventType::TrainingQueued, None).await?;
        crate::idempotency::bind_resource_in(
            &mut tx,
            idempotency,
            crate::IdempotentResource::Training(job.id),
        )
        .await?;
        tx.commit().await?;
        Ok(job)
    }

    /// A tenant's job.
    pub async fn get_job(&self, tenant_id: TenantId, id: Uuid) -> Result<JobRecord, StoreError> {
        tenant_row(
            &self.pool,
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND id = $2"),
            tenant_id,
            id,
        )
        .await
    }

    /// Any job, for workers and webhooks (which are not tenant-scoped requests).
    pub async fn job_by_id(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        job_by_id(&self.pool, id).await
    }

    pub async fn job_by_request_id(
        &self,
        request_id: &str,
    ) -> Result<Option<JobRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE fal_request_id = $1"
        ))
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A page of an avatar's trainings, newest first. `None` when the avatar does not exist.
    pub async fn list_trainings(
        &self,
        tenant_id: TenantId,
        avatar_id: AvatarId,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Option<(Vec<JobRecord>, bool)>, StoreError> {
        let training = JobKind::Training.as_str();
        avatar_page(
            &self.pool,
            &format!("{JOB_COLUMNS} FROM jobs"),
            &format!("AND kind = '{training}'"),
            tenant_id,
            avatar_id,
            after,
            limit,
        )
        .await
    }

    /// The avatar's live jobs, trainings and generation items (to cancel them when it is
    /// deleted).
    pub async fn active_jobs_of_avatar(
        &self,
        tenant_id: TenantId,
        avatar_id: AvatarId,
    ) -> Result<Vec<JobRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE tenant_id = $1 AND avatar_id = $2 AND status = ANY($3)"
        ))
        .bind(tenant_id.0)
        .bind(avatar_id.0)
        .bind(names(JobStatus::ALL.into_iter().filter(|s| s.is_active())))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Applies an event to a job (see the module docs). With `fence`, only the lease holder's
    /// write lands.
    pub async fn apply_event(
        &self,
        job_id: Uuid,
        event: JobEvent,
        fence: Option<i64>,
        changes: &JobChanges,
        cause: &str,
    ) -> Result<EventOutcome, StoreError> {
        // Every statement of a transition finds its rows by key.
        let mut tx = self.begin_planned_once().await?;
        let mut changed = Vec::new();
        let transition = JobTransition::new(event, changes, cause).fenced(fence);
        let outcome = apply_event_in(&mut tx, job_id, transition, &mut changed).await?;
        tx.commit().await?;
        self.observer.committed(&changed);
        Ok(outcome)
    }

    /// Records a verified webhook and applies what it says, in one transaction: a redelivery is
    /// a no-op, an unknown request is kept for reconciliation. `job_id` is the job the delivery
    /// was correlated with, if any. Unknown requests are kept only while fewer than
    /// `unknown_kept_at_most` are (concurrent callbacks may pass that by a few).
    pub async fn apply_webhook(
        &self,
        delivery: &WebhookDelivery,
        job_id: Option<Uuid>,
        events: &[(JobEvent, JobChanges)],
        unknown_kept_at_most: i64,
    ) -> Result<WebhookOutcome, StoreError> {
        let mut tx = self.begin().await?;
        if job_id.is_none() {
            let kept = unknown_callbacks_kept(&mut tx, unknown_kept_at_most).await?;
            if kept >= unknown_kept_at_most {
                tx.commit().await?;
                return Ok(WebhookOutcome::UnknownRequestNotKept);
            }
        }
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO webhook_inbox (fal_request_id, body_sha256, job_id, fal_status, outcome, body)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (fal_request_id, body_sha256) DO NOTHING
             RETURNING id",
        )
        .bind(&delivery.fal_request_id)
        .bind(&delivery.body_sha256)
        .bind(job_id)
        .bind(&delivery.fal_status)
        .bind(if job_id.is_some() { "applied" } else { "unknown_request" })
        .bind(&delivery.body)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(inbox_id) = inserted else {
            tx.commit().await?;
            return Ok(WebhookOutcome::Duplicate);
        };
        let Some(job_id) = job_id else {
            tx.commit().await?;
            return Ok(WebhookOutcome::UnknownRequest);
        };
        let mut changed = Vec::new();
        let last = apply_callback_in(
            &mut tx,
            inbox_id,
            job_id,
            events,
            "fal webhook",
            &mut changed,
        )
        .await?;
        tx.commit().await?;
        self.observer.committed(&changed);
        Ok(WebhookOutcome::Processed(last))
    }

    /// Verified callbacks kept for `fal_request_id` while no job had that request id: inbox
    /// id and body, oldest first.
    pub async fn kept_callbacks(
        &self,
        fal_request_id: &str,
    ) -> Result<Vec<(i64, Value)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, body FROM webhook_inbox
             WHERE fal_request_id = $1 AND outcome = 'unknown_request' ORDER BY id",
        )
        .bind(fal_request_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Applies a kept callback to the job that now has its request id, in one transaction with
    /// marking it taken; `None` when another replica took it first.
    pub async fn adopt_kept_callback(
        &self,
        inbox_id: i64,
        job_id: Uuid,
        events: &[(JobEvent, JobChanges)],
    ) -> Result<Option<EventOutcome>, StoreError> {
        let mut tx = self.begin().await?;
        let taken = sqlx::query(
            "UPDATE webhook_inbox SET job_id = $2, outcome = 'applied'
             WHERE id = $1 AND outcome = 'unknown_request'",
        )
        .bind(inbox_id)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        if taken.rows_affected() != 1 {
            return Ok(None);
        }
        let mut changed = Vec::new();
        let cause = "fal webhook received before its request id was stored";
        let last =
            apply_callback_in(&mut tx, inbox_id, job_id, events, cause, &mut changed).await?;
        tx.commit().await?;
        self.observer.committed(&changed);
        Ok(Some(last))
    }

    /// Claims the oldest pending job (pending -> uploading) for `owner` until the lease ends, or
    /// re-claims an upload whose worker died before sending the submit. Returns it with its new
    /// fence. The claim is a transition like any other: the domain decides it.
    pub async fn claim_upload(
        &self,
        owner: Uuid,
        lease: std::time::Duration,
    ) -> Result<Option<JobRecord>, StoreError> {
        let mut tx = self.begin().await?;
        // Two probes, each an index scan of its own partial index (every callback wakes this
        // worker, so a scan of the whole table here is paid per callback): uploads whose
        // worker died first (they are the oldest), then pending jobs.
        let abandoned = format!(
            "SELECT id, status FROM jobs
             WHERE {} AND submit_started_at IS NULL AND lease_until < now()
             ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1",
            status_in(JobEvent::UploadReclaimed)
        );
        let pending = format!(
            "SELECT id, status FROM jobs
             WHERE {} AND cancel_requested_at IS NULL
             ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1",
            status_in(JobEvent::UploadStarted)
        );
        let mut candidate: Option<(Uuid, JobStatusColumn)> =
            sqlx::query_as(&abandoned).fetch_optional(&mut *tx).await?;
        if candidate.is_none() {
            candidate = sqlx::query_as(&pending).fetch_optional(&mut *tx).await?;
        }
        let Some((id, status)) = candidate else {
            tx.commit().await?;
            return Ok(None);
        };
        let event = if allowed_from(JobEvent::UploadStarted).contains(&JobStatus::from(status)) {
            JobEvent::UploadStarted
        } else {
            JobEvent::UploadReclaimed
        };
        let changes = JobChanges::default();
        let transition = JobTransition::new(event, &changes, "worker claimed the job")
            .claimed(Claim { owner, lease });
        let mut changed = Vec::new();
        let outcome = apply_event_in(&mut tx, id, transition, &mut changed).await?;
        tx.commit().await?;
        self.observer.committed(&changed);
        Ok(match outcome {
            EventOutcome::Applied(job) => Some(*job),
            EventOutcome::Ignored { .. } | EventOutcome::NotFound => None,
        })
    }

    /// Notes, before the submit leaves, that it is about to: from here on a crash means the
    /// outcome is unknown, never "retry". False when the lease was lost or a cancel arrived.
    pub async fn mark_submit_started(&self, job_id: Uuid, fence: i64) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE jobs SET submit_started_at = now(), updated_at = now()
             WHERE id = $1 AND fence = $2 AND status = $3 AND cancel_requested_at IS NULL
               AND cancel_due_at IS NULL",
        )
        .bind(job_id)
        .bind(fence)
        .bind(JobStatus::Uploading.as_str())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Leases up to `limit` jobs due for a safety-net status check and pushes their next
    /// check back: the `n`-th check (from 1) waits `gaps[n - 1]` for the next, the last gap
    /// repeating. A job at fal whose status was looked up less than `interval` ago waits for
    /// the interval to pass. Includes jobs past their deadline (unless a cancel owed to fal
    /// will end them) and uploads whose worker died after sending the submit.
    pub async fn claim_due_checks(
        &self,
        owner: Uuid,
        lease: std::time::Duration,
        gaps: &[std::time::Duration],
        interval: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let gaps: Vec<f64> = gaps.iter().map(|gap| gap.as_secs_f64()).collect();
        Ok(sqlx::query_as(&format!(
            "UPDATE jobs SET {TAKE_LEASE},
                 next_check_at = now() + make_interval(secs =>
                     $3[least(status_checks + 1, cardinality($3::float8[]))]),
                 status_checks = status_checks + 1,
                 progress_checked_at = now()
             WHERE id IN (
                 SELECT id FROM jobs
                 WHERE ((status = ANY($5) AND next_check_at <= now()
                         AND (progress_checked_at IS NULL
                              OR progress_checked_at <= now() - make_interval(secs => $8)))
                     OR (status = $6 AND submit_started_at IS NOT NULL AND lease_until < now())
                     OR (status = ANY($7) AND deadline_at <= now()
                         -- an owed cancel at fal decides how such a job ends
                         AND (cancel_due_at IS NULL OR fal_request_id IS NULL)))
                   AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY next_check_at NULLS FIRST
                 FOR UPDATE SKIP LOCKED
                 LIMIT $4)
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(gaps)
        .bind(limit)
        // At fal: where its result can arrive.
        .bind(names(allowed_from(JobEvent::FalSucceeded)))
        .bind(JobStatus::Uploading.as_str())
        .bind(names(allowed_from(JobEvent::TimedOut)))
        .bind(interval.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }

    /// Leases up to `limit` watched jobs at fal whose live progress was last looked up at
    /// least `interval` ago (or never), and marks them looked up now. The row lock and the
    /// re-checked condition make it at most one lookup per interval per job across replicas.
    pub async fn claim_progress_checks(
        &self,
        owner: Uuid,
        lease: std::time::Duration,
        interval: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<JobRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE jobs SET {TAKE_LEASE}, progress_checked_at = now()
             WHERE id IN (
                 SELECT id FROM jobs
                 WHERE status = ANY($5) AND watched_until > now() AND fal_request_id IS NOT NULL
                   AND (progress_checked_at IS NULL
                        OR progress_checked_at <= now() - make_interval(secs => $3))
                   AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY progress_checked_at NULLS FIRST
                 FOR UPDATE SKIP LOCKED
                 LIMIT $4)
               AND (progress_checked_at IS NULL
                    OR progress_checked_at <= now() - make_interval(secs => $3))
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(interval.as_secs_f64())
        .bind(limit)
        .bind(names([JobStatus::Submitted, JobStatus::InProgress]))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Notes that someone watches the tenant's jobs named by `watch` until `until` (a GET of
    /// one, or an event stream filtered to it or its avatar). Only unfinished jobs are marked.
    pub async fn watch_jobs(
        &self,
        tenant_id: TenantId,
        watch: JobWatch,
        until: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (job, generation, avatar) = match watch {
            JobWatch::Job(id) => (Some(id), Some(id), None),
            JobWatch::Generation(id) => (None, Some(id), None),
            JobWatch::Avatar(id) => (None, None, Some(id.0)),
        };
        sqlx::query(
            "UPDATE jobs SET watched_until = $5
             WHERE tenant_id = $1
               AND (id = $2 OR generation_id = $3 OR avatar_id = $4)
               AND status = ANY($6)
               AND (watched_until IS NULL OR watched_until < $5)",
        )
        .bind(tenant_id.0)
        .bind(job)
        .bind(generation)
        .bind(avatar)
        .bind(until)
        .bind(names(JobStatus::ALL.into_iter().filter(|s| s.is_active())))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives a lease back early (the work is done until the next check).
    pub async fn release_lease(&self, job_id: Uuid, fence: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE id = $1 AND fence = $2",
        )
        .bind(job_id)
        .bind(fence)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks that the caller asked to cancel, and (while the job is unfinished) records the
    /// cancel owed to fal. Returns the job as it is now.
    pub async fn request_cancel(
        &self,
        tenant_id: TenantId,
        id: Uuid,
    ) -> Result<JobRecord, StoreError> {
        let job: JobRecord = tenant_row(
            &self.pool,
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND id = $2"),
            tenant_id,
            id,
        )
        .await?;
        self.record_cancel_intent(job.id, CancelCause::Caller)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Records that the service owes fal a cancel of the job for `cause`, due now, unless one
    /// is already owed or was settled. A caller's cancel and an avatar's deletion also mark
    /// the job as cancel-requested, which stops a submit that has not left yet. Returns the
    /// job as it is now.
    pub async fn record_cancel_intent(
        &self,
        id: Uuid,
        cause: CancelCause,
    ) -> Result<Option<JobRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE jobs SET
                 cancel_requested_at = CASE WHEN $2 <> 'deadline'
                     THEN coalesce(cancel_requested_at, now()) ELSE cancel_requested_at END,
                 cancel_due_at = CASE WHEN status = ANY($3) AND cancel_outcome IS NULL
                     THEN coalesce(cancel_due_at, now()) ELSE cancel_due_at END,
                 cancel_cause = CASE WHEN status = ANY($3) AND cancel_outcome IS NULL
                     THEN coalesce(cancel_cause, $2) ELSE cancel_cause END,
                 updated_at = now()
             WHERE id = $1 RETURNING {JOB_COLUMNS}"
        ))
        .bind(id)
        .bind(cause.as_str())
        .bind(names(JobStatus::ALL.into_iter().filter(|s| s.is_active())))
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Leases up to `limit` jobs whose owed cancel is due and whose fal request is known, in
    /// any status (a job cancelled here before its submit's answer arrived is cancelled at fal
    /// once it does). The next attempt is pushed back by the lease, so a replica that dies
    /// mid-call leaves the cancel to another.
    pub async fn claim_due_cancels(
        &self,
        owner: Uuid,
        lease: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<JobRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE jobs SET {TAKE_LEASE},
                 cancel_due_at = now() + make_interval(secs => $2)
             WHERE id IN (
                 SELECT id FROM jobs
                 WHERE cancel_due_at <= now() AND fal_request_id IS NOT NULL
                   AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY cancel_due_at
                 FOR UPDATE SKIP LOCKED
                 LIMIT $3)
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Counts a failed attempt at an owed cancel and schedules the next: after `first_wait`
    /// the first time, twice as long after each further failure, at most 64 times
    /// `first_wait`. Returns the attempts failed so far, or `None` when no cancel is owed.
    pub async fn record_cancel_failure(
        &self,
        job_id: Uuid,
        first_wait: std::time::Duration,
    ) -> Result<Option<u32>, StoreError> {
        let attempts: Option<i32> = sqlx::query_scalar(
            "UPDATE jobs SET cancel_attempts = cancel_attempts + 1,
                 cancel_due_at = now() + make_interval(
                     secs => $2::float8 * power(2, least(cancel_attempts, 6))),
                 updated_at = now()
             WHERE id = $1 AND cancel_due_at IS NOT NULL
             RETURNING cancel_attempts",
        )
        .bind(job_id)
        .bind(first_wait.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        Ok(attempts.map(|n| n.max(0) as u32))
    }

    /// Ends an owed cancel with `outcome` without a transition (the job already ended, or
    /// fal's result decides how it ends). False when none was owed.
    pub async fn settle_cancel(
        &self,
        job_id: Uuid,
        outcome: CancelOutcome,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE jobs SET cancel_due_at = NULL, cancel_outcome = $2, updated_at = now()
             WHERE id = $1 AND cancel_due_at IS NOT NULL",
        )
        .bind(job_id)
        .bind(outcome.as_str())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Records the request a submit's late answer names on a job that has none (it ended
    /// here while the submit was in flight), so an owed cancel can reach fal. Not a
    /// transition: the job's status stays. Returns the job when the request was recorded.
    pub async fn record_late_request(
        &self,
        job_id: Uuid,
        changes: &JobChanges,
    ) -> Result<Option<JobRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE jobs SET fal_request_id = $2, status_url = coalesce($3, status_url),
                 response_url = coalesce($4, response_url), cancel_url = coalesce($5, cancel_url),
                 updated_at = now()
             WHERE id = $1 AND fal_request_id IS NULL
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(job_id)
        .bind(&changes.fal_request_id)
        .bind(&changes.status_url)
        .bind(&changes.response_url)
        .bind(&changes.cancel_url)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Extends the lease of a worker still working on the job (building, uploading,
    /// submitting) to `lease` from now. False when the lease is no longer the caller's.
    pub async fn renew_lease(
        &self,
        job_id: Uuid,
        owner: Uuid,
        fence: i64,
        lease: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => $4)
             WHERE id = $1 AND lease_owner = $2 AND fence = $3 AND lease_until IS NOT NULL",
        )
        .bind(job_id)
        .bind(owner)
        .bind(fence)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Leases a finishing job (its result must still be fetched or its artifacts copied into
    /// our storage), or a failed generation item awaiting a resubmit with our copy of its LoRA.
    pub async fn claim_custody(
        &self,
        owner: Uuid,
        lease: std::time::Duration,
    ) -> Result<Option<JobRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE jobs SET {TAKE_LEASE}
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE ((custody_needed OR result_fetch_needed) AND status = $3
                        -- a generation item to resubmit with a re-uploaded LoRA
                        OR (custody_needed AND status = $4 AND kind = $5))
                   AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY updated_at
                 FOR UPDATE SKIP LOCKED
                 LIMIT 1)
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(JobStatus::Finishing.as_str())
        .bind(JobStatus::Failed.as_str())
        .bind(JobKind::Generation.as_str())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Stores a result fetched from fal for a succeeded job.
    pub async fn store_fetched_result(
        &self,
        job_id: Uuid,
        fence: i64,
        result: &Value,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE jobs SET result = $3, result_fetch_needed = false, custody_needed = true, updated_at = now()
             WHERE id = $1 AND fence = $2",
        )
        .bind(job_id)
        .bind(fence)
        .bind(result)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }
}

impl Store {
    /// Gives a job back to be claimed again after `after` (a transient failure before the
    /// submit was sent, or while keeping its result).
    pub async fn defer_lease(
        &self,
        job_id: Uuid,
        fence: i64,
        after: std::time::Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => $3), lease_owner = NULL
             WHERE id = $1 AND fence = $2",
        )
        .bind(job_id)
        .bind(fence)
        .bind(after.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Counts a failed custody attempt (a result fetch or an artifact copy) and gives the job
    /// back to be claimed again: after `first_wait` the first time, twice as long after each
    /// further failure, at most 64 times `first_wait`. Returns the attempts failed so far, or
    /// `None` when the lease was lost.
    /// Queues for deletion the artifacts custody copied for a job that then ended without
    /// them (cancelled while finishing, say, because its avatar was deleted). Nothing is queued
    /// while the job is still finishing or succeeded: the keys are the job's own, and another
    /// worker may hold them.
    pub async fn discard_artifacts(&self, job_id: Uuid, keys: &[String]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO blob_deletions (blob_key)
             SELECT unnest($2::text[])
             WHERE EXISTS (SELECT 1 FROM jobs WHERE id = $1 AND status <> ALL($3))
             ON CONFLICT (blob_key) DO NOTHING",
        )
        .bind(job_id)
        .bind(keys)
        .bind(names([JobStatus::Finishing, JobStatus::Succeeded]))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn record_custody_failure(
        &self,
        job_id: Uuid,
        fence: i64,
        first_wait: std::time::Duration,
    ) -> Result<Option<u32>, StoreError> {
        let attempts: Option<i32> = sqlx::query_scalar(
            "UPDATE jobs SET custody_attempts = custody_attempts + 1,
                 lease_until = now() + make_interval(
                     secs => $3::float8 * power(2, least(custody_attempts, 6))),
                 lease_owner = NULL
             WHERE id = $1 AND fence = $2
             RETURNING custody_attempts",
        )
        .bind(job_id)
        .bind(fence)
        .bind(first_wait.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        Ok(attempts.map(|n| n.max(0) as u32))
    }
}
