//! Jobs sent to fal, their transitions, leases, and the webhook inbox.
//!
//! A job's status changes only through [`Store::apply_event`], which turns the domain's
//! transition function into one conditional `UPDATE ... WHERE status = ANY(allowed)`: Postgres
//! decides races, and an event that no longer applies is recorded as ignored.

use chrono::{DateTime, Utc};
use domain::{AvatarId, JobEvent, JobKind, JobStatus, TenantId};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::{Store, StoreError};

/// The unique index allowing one live training per avatar.
pub const ONE_ACTIVE_TRAINING: &str = "jobs_one_active_training_per_avatar";

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub avatar_id: Option<Uuid>,
    pub kind: String,
    pub status: String,
    pub trainer: Option<String>,
    pub endpoint: String,
    pub preset: Option<String>,
    pub params: Value,
    pub trigger_phrase: Option<String>,
    pub input_blob_key: Option<String>,
    pub estimated_cost_usd: Option<f64>,
    /// Never leaves the service: not even in event snapshots.
    #[serde(skip, default)]
    pub webhook_token: String,
    pub fal_request_id: Option<String>,
    pub status_url: Option<String>,
    pub response_url: Option<String>,
    pub cancel_url: Option<String>,
    pub queue_position: Option<i32>,
    pub progress: Option<f64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub result: Option<Value>,
    pub result_fetch_needed: bool,
    pub custody_needed: bool,
    pub fence: i64,
    pub submit_started_at: Option<DateTime<Utc>>,
    pub next_check_at: Option<DateTime<Utc>>,
    pub check_failures: i32,
    pub deadline_at: Option<DateTime<Utc>>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The generation an item belongs to (generation jobs only).
    pub generation_id: Option<Uuid>,
    /// The prompt's position in its generation.
    pub item_index: Option<i32>,
    /// 1, or 2 for a generation item resubmitted after fal could not fetch the LoRA.
    pub attempt: i32,
}

impl JobRecord {
    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Failed)
    }

    pub fn kind(&self) -> JobKind {
        JobKind::parse(&self.kind).unwrap_or(JobKind::Training)
    }
}

pub(crate) const JOB_COLUMNS: &str = "id, tenant_id, avatar_id, kind, status, trainer, endpoint, preset, params, \
    trigger_phrase, input_blob_key, estimated_cost_usd, webhook_token, fal_request_id, status_url, \
    response_url, cancel_url, queue_position, progress, error_code, error_message, result, \
    result_fetch_needed, custody_needed, fence, submit_started_at, next_check_at, check_failures, \
    deadline_at, cancel_requested_at, created_at, updated_at, submitted_at, started_at, finished_at, \
    generation_id, item_index, attempt";

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
    pub webhook_token: String,
    /// The training's whole budget, from creation: past it the job is cancelled as timed out.
    pub deadline_at: DateTime<Utc>,
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
    /// A training's model, when the result itself is the whole model (a Pro finetune id):
    /// recorded with the transition, so nothing is left for the custody worker.
    pub model: Option<crate::NewModel>,
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
    Processed(EventOutcome),
}

pub(crate) async fn record_event(
    conn: &mut PgConnection,
    job_id: Uuid,
    event: JobEvent,
    from: Option<JobStatus>,
    to: Option<JobStatus>,
    applied: bool,
    cause: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO job_events (job_id, event, from_status, to_status, applied, cause)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(job_id)
    .bind(event.as_str())
    .bind(from.map(JobStatus::as_str))
    .bind(to.map(JobStatus::as_str))
    .bind(applied)
    .bind(cause)
    .execute(conn)
    .await?;
    Ok(())
}

/// The channel on which a finished generation item is announced (payload: generation id).
pub const GENERATION_CHANNEL: &str = "avatars_generation_items";

pub(crate) async fn notify_generation(
    conn: &mut PgConnection,
    generation_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(GENERATION_CHANNEL)
        .bind(generation_id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// The event a training's move to `to` announces. Success is announced only once the model is
/// in the service's custody (`complete_training`).
fn training_event_type(job: &JobRecord, to: JobStatus) -> Option<&'static str> {
    if job.kind() != JobKind::Training {
        return None;
    }
    Some(match to {
        JobStatus::Submitted => "training.submitted",
        JobStatus::InProgress => "training.started",
        JobStatus::Failed => "training.failed",
        JobStatus::Cancelled => "training.cancelled",
        JobStatus::TimedOut => "training.timed_out",
        _ => return None,
    })
}

/// Progress in tenths: `training.progress` is announced once per step, not per log line.
fn progress_step(progress: Option<f64>) -> i64 {
    progress.map_or(0, |p| (p.clamp(0.0, 1.0) * 10.0).floor() as i64)
}

pub(crate) async fn insert_training_event(
    conn: &mut PgConnection,
    job: &JobRecord,
    event_type: &str,
    model: Option<crate::ModelRecord>,
) -> Result<(), StoreError> {
    crate::events::insert_event(
        conn,
        job.tenant_id,
        event_type,
        Some(job.id),
        job.avatar_id,
        &crate::events::EventSnapshot::Training {
            job: Box::new(job.clone()),
            model,
        },
    )
    .await
}

fn statuses(list: &[JobStatus]) -> Vec<String> {
    list.iter().map(|s| s.as_str().to_string()).collect()
}

/// Applies `event` inside `tx`: the conditional update, the event record, the avatar's side of
/// a finished training, and the caller-visible event.
async fn apply_event_in(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    event: JobEvent,
    fence: Option<i64>,
    changes: &JobChanges,
    cause: &str,
) -> Result<EventOutcome, StoreError> {
    let current: Option<(String, Option<f64>)> =
        sqlx::query_as("SELECT status, progress FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(job_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((current, old_progress)) = current else {
        return Ok(EventOutcome::NotFound);
    };
    let from = JobStatus::parse(&current).unwrap_or(JobStatus::Failed);
    let to = domain::target(event);
    let allowed = statuses(&domain::allowed_from(event));
    let row: Option<JobRecord> = sqlx::query_as(&format!(
        "UPDATE jobs SET
             status = $2,
             fal_request_id = coalesce($5, fal_request_id),
             status_url = coalesce($6, status_url),
             response_url = coalesce($7, response_url),
             cancel_url = coalesce($8, cancel_url),
             queue_position = CASE WHEN $19 THEN NULL ELSE coalesce($9, queue_position) END,
             progress = coalesce($10, progress),
             error_code = coalesce($11, error_code),
             error_message = coalesce($12, error_message),
             result = coalesce($13, result),
             result_fetch_needed = coalesce($14, result_fetch_needed),
             custody_needed = coalesce($15, custody_needed),
             next_check_at = coalesce($16, next_check_at),
             submitted_at = CASE WHEN $2 = 'submitted' THEN coalesce(submitted_at, now()) ELSE submitted_at END,
             started_at = CASE WHEN $2 = 'in_progress' THEN coalesce(started_at, now()) ELSE started_at END,
             finished_at = CASE WHEN $17 THEN now() ELSE finished_at END,
             lease_owner = CASE WHEN $17 OR $4::bigint IS NOT NULL THEN NULL ELSE lease_owner END,
             lease_until = CASE WHEN $17 OR $4::bigint IS NOT NULL THEN NULL ELSE lease_until END,
             updated_at = now()
         WHERE id = $1 AND status = ANY($3) AND ($4::bigint IS NULL OR fence = $4) AND $18
         RETURNING {JOB_COLUMNS}"
    ))
    .bind(job_id)
    .bind(to.as_str())
    .bind(&allowed)
    .bind(fence)
    .bind(&changes.fal_request_id)
    .bind(&changes.status_url)
    .bind(&changes.response_url)
    .bind(&changes.cancel_url)
    .bind(changes.queue_position)
    .bind(changes.progress)
    .bind(&changes.error_code)
    .bind(&changes.error_message)
    .bind(&changes.result)
    .bind(changes.result_fetch_needed)
    .bind(changes.custody_needed)
    .bind(changes.next_check_at)
    .bind(to.is_terminal())
    .bind(matches!(domain::transition(from, event), domain::Transition::Apply { .. }))
    .bind(changes.clear_queue_position)
    .fetch_optional(&mut **tx)
    .await
    .map_err(StoreError::from_write)?;
    let Some(job) = row else {
        let reason = match domain::transition(from, event) {
            domain::Transition::Ignore { reason } => reason.to_string(),
            domain::Transition::Apply { .. } => {
                "stale fence: another worker owns the job".to_string()
            }
        };
        record_event(
            tx,
            job_id,
            event,
            Some(from),
            None,
            false,
            &format!("{cause}; ignored: {reason}"),
        )
        .await?;
        return Ok(EventOutcome::Ignored {
            status: from,
            reason,
        });
    };
    if from != to {
        record_event(tx, job_id, event, Some(from), Some(to), true, cause).await?;
        if job.kind() == JobKind::Training && to.is_terminal() && to != JobStatus::Succeeded {
            // A failed retraining leaves a trained avatar trained: its old model still works.
            sqlx::query(
                "UPDATE avatars SET
                     status = CASE WHEN current_model_id IS NOT NULL THEN 'trained'
                                   WHEN $2 = 'cancelled' THEN 'cancelled' ELSE 'failed' END,
                     updated_at = now()
                 WHERE id = $1 AND status = 'training'",
            )
            .bind(job.avatar_id)
            .bind(to.as_str())
            .execute(&mut **tx)
            .await?;
        }
        if let (Some(generation), true) = (job.generation_id, to.is_terminal()) {
            if !job.custody_needed && !job.result_fetch_needed {
                // Wakes callers waiting on the generation, in this replica or another.
                notify_generation(tx, generation).await?;
                crate::generations::settle_generation(tx, generation).await?;
            }
        }
        if let Some(event_type) = training_event_type(&job, to) {
            insert_training_event(tx, &job, event_type, None).await?;
        }
        if let (JobStatus::Succeeded, Some(model)) = (to, &changes.model) {
            crate::models::record_model_in(tx, &job, model).await?;
        }
    } else if job.kind() == JobKind::Training
        && to == JobStatus::InProgress
        && progress_step(job.progress) > progress_step(old_progress)
    {
        insert_training_event(tx, &job, "training.progress", None).await?;
    }
    Ok(EventOutcome::Applied(Box::new(job)))
}

impl Store {
    /// Creates a pending training and marks the avatar as training, in one transaction. A live
    /// training of the same avatar is a `Conflict` on [`ONE_ACTIVE_TRAINING`].
    pub async fn insert_training(&self, new: &NewTraining) -> Result<JobRecord, StoreError> {
        let mut tx = self.pool.begin().await?;
        let job: JobRecord = sqlx::query_as(&format!(
            "INSERT INTO jobs (id, tenant_id, avatar_id, kind, status, trainer, endpoint, preset, params,
                 trigger_phrase, input_blob_key, estimated_cost_usd, webhook_token, deadline_at)
             VALUES ($1, $2, $3, 'training', 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12)
             RETURNING {JOB_COLUMNS}"
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
        .bind(&new.webhook_token)
        .bind(new.deadline_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from_write)?;
        sqlx::query(
            "INSERT INTO job_events (job_id, event, to_status, applied, cause)
             VALUES ($1, 'created', 'pending', true, 'training requested')",
        )
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE avatars SET status = 'training', updated_at = now() WHERE id = $1 AND tenant_id = $2")
            .bind(new.avatar_id.0)
            .bind(new.tenant_id.0)
            .execute(&mut *tx)
            .await?;
        insert_training_event(&mut tx, &job, "training.queued", None).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// A tenant's job.
    pub async fn get_job(&self, tenant_id: TenantId, id: Uuid) -> Result<JobRecord, StoreError> {
        sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant_id.0)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// Any job, for workers and webhooks (which are not tenant-scoped requests).
    pub async fn job_by_id(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        Ok(
            sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
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
        if !crate::avatars::avatar_exists(&self.pool, tenant_id, avatar_id).await? {
            return Ok(None);
        }
        let mut rows: Vec<JobRecord> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE tenant_id = $1 AND avatar_id = $2 AND kind = 'training' AND ($3::uuid IS NULL OR id < $3)
             ORDER BY id DESC LIMIT $4"
        ))
        .bind(tenant_id.0)
        .bind(avatar_id.0)
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        Ok(Some((rows, more)))
    }

    /// The avatar's live trainings (to cancel them when it is deleted).
    pub async fn active_trainings(
        &self,
        tenant_id: TenantId,
        avatar_id: AvatarId,
    ) -> Result<Vec<JobRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE tenant_id = $1 AND avatar_id = $2 AND kind = 'training'
               AND status IN ('pending', 'uploading', 'submitted', 'in_progress', 'submit_unknown')"
        ))
        .bind(tenant_id.0)
        .bind(avatar_id.0)
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
        let mut tx = self.pool.begin().await?;
        let outcome = apply_event_in(&mut tx, job_id, event, fence, changes, cause).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Records a verified webhook and applies what it says, in one transaction: a redelivery is
    /// a no-op, an unknown request is kept for reconciliation. `job_id` is the job the delivery
    /// was correlated with, if any.
    pub async fn apply_webhook(
        &self,
        delivery: &WebhookDelivery,
        job_id: Option<Uuid>,
        events: &[(JobEvent, JobChanges)],
    ) -> Result<WebhookOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
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
        let mut last = EventOutcome::NotFound;
        let mut any_applied = false;
        for (event, changes) in events {
            last = apply_event_in(&mut tx, job_id, *event, None, changes, "fal webhook").await?;
            any_applied |= matches!(last, EventOutcome::Applied(_));
        }
        if !any_applied {
            sqlx::query("UPDATE webhook_inbox SET outcome = 'ignored' WHERE id = $1")
                .bind(inbox_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(WebhookOutcome::Processed(last))
    }

    /// Claims the oldest pending job (pending -> uploading) for `owner` until the lease ends, or
    /// re-claims an upload whose worker died before sending the submit. Returns it with its new
    /// fence.
    pub async fn claim_upload(
        &self,
        owner: Uuid,
        lease: std::time::Duration,
    ) -> Result<Option<JobRecord>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<JobRecord> = sqlx::query_as(&format!(
            "UPDATE jobs SET status = 'uploading', lease_owner = $1,
                 lease_until = now() + make_interval(secs => $2), fence = fence + 1, updated_at = now()
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE (status = 'pending' AND cancel_requested_at IS NULL)
                    OR (status = 'uploading' AND submit_started_at IS NULL AND lease_until < now())
                 ORDER BY created_at
                 FOR UPDATE SKIP LOCKED
                 LIMIT 1)
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(owner)
        .bind(lease.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(job) = &row {
            if job.fence == 1 {
                record_event(
                    &mut tx,
                    job.id,
                    JobEvent::UploadStarted,
                    Some(JobStatus::Pending),
                    Some(JobStatus::Uploading),
                    true,
                    "worker claimed the job",
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(row)
    }

    /// Notes, before the submit leaves, that it is about to: from here on a crash means the
    /// outcome is unknown, never "retry". False when the lease was lost or a cancel arrived.
    pub async fn mark_submit_started(&self, job_id: Uuid, fence: i64) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE jobs SET submit_started_at = now(), updated_at = now()
             WHERE id = $1 AND fence = $2 AND status = 'uploading' AND cancel_requested_at IS NULL",
        )
        .bind(job_id)
        .bind(fence)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Leases up to `limit` jobs due for a status check and pushes their next check to
    /// `next_check_in` from now. Includes uploads whose worker died after sending the submit.
    pub async fn claim_due_checks(
        &self,
        owner: Uuid,
        lease: std::time::Duration,
        next_check_in: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<JobRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE jobs SET lease_owner = $1, lease_until = now() + make_interval(secs => $2),
                 fence = fence + 1, next_check_at = now() + make_interval(secs => $3)
             WHERE id IN (
                 SELECT id FROM jobs
                 WHERE ((status IN ('submitted', 'in_progress', 'submit_unknown') AND next_check_at <= now())
                     OR (status = 'uploading' AND submit_started_at IS NOT NULL AND lease_until < now())
                     OR (status IN ('submitted', 'in_progress', 'submit_unknown', 'uploading') AND deadline_at <= now()))
                   AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY next_check_at NULLS FIRST
                 FOR UPDATE SKIP LOCKED
                 LIMIT $4)
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(next_check_in.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
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

    /// Marks that the caller asked to cancel. Returns the job as it is now.
    pub async fn request_cancel(
        &self,
        tenant_id: TenantId,
        id: Uuid,
    ) -> Result<JobRecord, StoreError> {
        sqlx::query_as(&format!(
            "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, now()), updated_at = now()
             WHERE tenant_id = $1 AND id = $2 RETURNING {JOB_COLUMNS}"
        ))
        .bind(tenant_id.0)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)
    }

    /// Leases a succeeded job whose result must still be fetched or whose artifacts must still
    /// be copied into our storage.
    pub async fn claim_custody(
        &self,
        owner: Uuid,
        lease: std::time::Duration,
    ) -> Result<Option<JobRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "UPDATE jobs SET lease_owner = $1, lease_until = now() + make_interval(secs => $2), fence = fence + 1
             WHERE id = (
                 SELECT id FROM jobs
                 WHERE ((custody_needed OR result_fetch_needed) AND status = 'succeeded'
                        -- a generation item to resubmit with a re-uploaded LoRA
                        OR (custody_needed AND status = 'failed' AND kind = 'generation'))
                   AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY updated_at
                 FOR UPDATE SKIP LOCKED
                 LIMIT 1)
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(owner)
        .bind(lease.as_secs_f64())
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
}
