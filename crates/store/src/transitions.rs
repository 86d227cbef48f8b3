//! Job transitions written for many jobs at once: the verdicts of the domain's transition
//! function, applied with set-based statements.
//!
//! A group of callbacks committed together would otherwise pay three or four single-row
//! statements per callback (the job, its model, its avatar, its event). Here one statement
//! updates every job of the group, records their job events and locks the avatars whose
//! status may move; one inserts their models, moves the avatars and writes the
//! caller-visible events. A single transition is the same call with one item, so there is one
//! way a job's status changes.

use std::collections::HashMap;

use domain::{
    progress_step_crossed, transition, AvatarChange, AvatarStatus, EventType, JobEvent, JobKind,
    JobStatus, Transition,
};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::avatars::LockedAvatar;
use crate::error::StoreError;
use crate::events::EventSnapshot;
use crate::gauges::Changed;
use crate::generations::announce_if_finished;
use crate::jobs::{CancelOutcome, Claim, EventOutcome, JobChanges, LockedJob};
use crate::records::{parse_column, JobRecord, ModelRecord, JOB_COLUMNS};

/// Why an event the domain would apply changed nothing: the caller's lease is stale.
pub(crate) const REASON_STALE_FENCE: &str = "stale fence: another worker owns the job";

/// An event for one job, with what changes with it.
pub(crate) struct JobTransition<'a> {
    pub event: JobEvent,
    /// The caller's lease fence, when the caller must still hold the job.
    pub fence: Option<i64>,
    pub changes: &'a JobChanges,
    pub cause: &'a str,
    /// A lease taken with the transition (a worker claiming the job).
    pub claim: Option<Claim>,
}

impl<'a> JobTransition<'a> {
    /// `event`, recorded with `cause`, changing `changes` along: whoever holds the job.
    pub(crate) fn new(event: JobEvent, changes: &'a JobChanges, cause: &'a str) -> Self {
        Self {
            event,
            fence: None,
            changes,
            cause,
            claim: None,
        }
    }

    /// Only while the caller's lease `fence` is the job's.
    pub(crate) fn fenced(self, fence: Option<i64>) -> Self {
        Self { fence, ..self }
    }

    /// Leasing the job to `claim`'s owner under a new fence.
    pub(crate) fn claimed(self, claim: Claim) -> Self {
        Self {
            claim: Some(claim),
            ..self
        }
    }

    /// The transition of the job `locked` stands for.
    pub(crate) fn of(self, locked: LockedJob) -> TransitionItem<'a> {
        TransitionItem {
            locked,
            transition: self,
        }
    }
}

/// One event for one job the caller's transaction has locked.
pub(crate) struct TransitionItem<'a> {
    pub locked: LockedJob,
    pub transition: JobTransition<'a>,
}

/// What the domain decided for one item.
#[derive(Clone, Copy)]
enum Verdict {
    Apply { to: JobStatus },
    Ignore { reason: &'static str },
}

impl TransitionItem<'_> {
    fn verdict(&self) -> Verdict {
        match transition(self.locked.status, self.transition.event) {
            Transition::Ignore { reason } => Verdict::Ignore { reason },
            Transition::Apply { .. }
                if self
                    .transition
                    .fence
                    .is_some_and(|f| f != self.locked.fence) =>
            {
                Verdict::Ignore {
                    reason: REASON_STALE_FENCE,
                }
            }
            Transition::Apply { to } => Verdict::Apply { to },
        }
    }

    /// Whether applying the item may move its avatar's status (so the avatar is locked with
    /// the job's update): a training that ends, unless it succeeds without a model yet.
    fn moves_avatar(&self, to: JobStatus) -> bool {
        self.locked.kind == JobKind::Training
            && to.is_terminal()
            && (to != JobStatus::Succeeded || self.transition.changes.model.is_some())
    }
}

/// [`apply_transitions`] for one item.
pub(crate) async fn apply_transition(
    tx: &mut Transaction<'_, Postgres>,
    item: TransitionItem<'_>,
    changed: &mut Vec<Changed>,
) -> Result<EventOutcome, StoreError> {
    let mut outcomes = apply_transitions(tx, std::slice::from_ref(&item), changed).await?;
    Ok(outcomes.pop().unwrap_or(EventOutcome::NotFound))
}

/// Applies `items` (at most one per job) inside `tx` and returns each one's outcome, in order.
/// Status changes are added to `changed`, for the caller to report once the transaction
/// committed.
pub(crate) async fn apply_transitions(
    tx: &mut Transaction<'_, Postgres>,
    items: &[TransitionItem<'_>],
    changed: &mut Vec<Changed>,
) -> Result<Vec<EventOutcome>, StoreError> {
    let verdicts: Vec<Verdict> = items.iter().map(TransitionItem::verdict).collect();
    let rows = update_jobs(tx, items, &verdicts).await?;

    let mut outcomes: Vec<Option<EventOutcome>> = verdicts
        .iter()
        .zip(items)
        .map(|(verdict, item)| match verdict {
            Verdict::Ignore { reason } => Some(EventOutcome::Ignored {
                status: item.locked.status,
                reason: (*reason).to_string(),
            }),
            Verdict::Apply { .. } => None,
        })
        .collect();
    let mut effects = Effects::default();
    for row in rows {
        // The statement returns the input's own indexes, all below `items.len()`.
        let index = row.in_idx as usize;
        let item = &items[index];
        let job = row.job;
        if let (Some(avatar_id), Some(status)) = (job.avatar_id, row.avatar_status.as_deref()) {
            let locked = LockedAvatar {
                status: parse_column("avatars", "status", status, AvatarStatus::parse)?,
                has_model: row.avatar_has_model.unwrap_or(false),
            };
            effects.avatars.entry(avatar_id).or_insert(AvatarMove {
                before: locked.status,
                now: locked,
                model_id: None,
            });
        }
        effects.after_update(tx, item, &job, changed).await?;
        outcomes[index] = Some(EventOutcome::Applied(Box::new(job)));
    }
    // An applied verdict whose guarded update found no row: the guard is a guard (the caller
    // holds the row lock), so this is a stale fence in all but name.
    for (index, outcome) in outcomes.iter_mut().enumerate() {
        if outcome.is_none() {
            let item = &items[index];
            record_ignored(tx, item, REASON_STALE_FENCE).await?;
            *outcome = Some(EventOutcome::Ignored {
                status: item.locked.status,
                reason: REASON_STALE_FENCE.to_string(),
            });
        }
    }
    effects.prepare_models()?;
    effects.write(tx).await?;
    Ok(outcomes.into_iter().flatten().collect())
}

/// A job row as the group's update left it, with its avatar as locked by the same statement.
#[derive(sqlx::FromRow)]
struct UpdatedJob {
    #[sqlx(flatten)]
    job: JobRecord,
    in_idx: i32,
    avatar_status: Option<String>,
    avatar_has_model: Option<bool>,
}

/// The guarded update of every applied item, their job events (ignored items included) and the
/// lock on the avatars that may move: one statement. Returns the updated rows in item order.
async fn update_jobs(
    tx: &mut Transaction<'_, Postgres>,
    items: &[TransitionItem<'_>],
    verdicts: &[Verdict],
) -> Result<Vec<UpdatedJob>, StoreError> {
    let mut input = Input::default();
    for (index, (item, verdict)) in items.iter().zip(verdicts).enumerate() {
        input.push(index, item, *verdict);
    }
    // `id = ANY(<the ids>)` beside each join on an input array: without it the planner, which
    // cannot see how short the arrays are, joins them to a scan of the whole table.
    let rows: Vec<UpdatedJob> = sqlx::query_as(&format!(
        "WITH input AS (
             SELECT * FROM unnest($1::int4[], $2::uuid[], $3::bool[], $4::text[], $5::text[],
                 $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int4[],
                 $12::bool[], $13::float8[], $14::text[], $15::text[], $16::jsonb[], $17::bool[],
                 $18::bool[], $19::timestamptz[], $20::uuid[], $21::float8[], $22::timestamptz[],
                 $23::bool[], $24::text[], $25::text[], $26::text[], $27::bool[], $28::bool[],
                 $29::bool[], $30::bool[])
             AS t(in_idx, in_job, in_apply, in_to, in_from,
                 in_fence, in_request_id, in_status_url, in_response_url, in_cancel_url, in_queue_position,
                 in_clear_queue, in_progress, in_error_code, in_error_message, in_result, in_fetch_needed,
                 in_custody_needed, in_next_check_at, in_lease_owner, in_lease_secs, in_deadline_at,
                 in_progress_checked, in_cancel_outcome, in_event, in_cause, in_terminal, in_enters_submitted,
                 in_enters_progress, in_lock_avatar)),
         updated AS (UPDATE jobs SET
             status = i.in_to,
             fal_request_id = coalesce(i.in_request_id, fal_request_id),
             status_url = coalesce(i.in_status_url, status_url),
             response_url = coalesce(i.in_response_url, response_url),
             cancel_url = coalesce(i.in_cancel_url, cancel_url),
             queue_position = CASE WHEN i.in_clear_queue THEN NULL
                                   ELSE coalesce(i.in_queue_position, queue_position) END,
             progress = coalesce(i.in_progress, progress),
             error_code = coalesce(i.in_error_code, error_code),
             error_message = coalesce(i.in_error_message, error_message),
             result = coalesce(i.in_result, result),
             result_fetch_needed = coalesce(i.in_fetch_needed, result_fetch_needed),
             custody_needed = coalesce(i.in_custody_needed, custody_needed),
             next_check_at = coalesce(i.in_next_check_at, next_check_at),
             submitted_at = CASE WHEN i.in_enters_submitted THEN coalesce(submitted_at, now())
                                 ELSE submitted_at END,
             started_at = CASE WHEN i.in_enters_progress THEN coalesce(started_at, now())
                               ELSE started_at END,
             finished_at = CASE WHEN i.in_terminal THEN now() ELSE finished_at END,
             lease_owner = CASE WHEN i.in_lease_owner IS NOT NULL THEN i.in_lease_owner
                                WHEN i.in_terminal OR i.in_fence IS NOT NULL THEN NULL
                                ELSE lease_owner END,
             lease_until = CASE WHEN i.in_lease_owner IS NOT NULL
                                     THEN now() + make_interval(secs => i.in_lease_secs)
                                WHEN i.in_terminal OR i.in_fence IS NOT NULL THEN NULL
                                ELSE lease_until END,
             fence = CASE WHEN i.in_lease_owner IS NOT NULL THEN fence + 1 ELSE fence END,
             deadline_at = coalesce(i.in_deadline_at, deadline_at),
             progress_checked_at = CASE WHEN i.in_progress_checked THEN now()
                                        ELSE progress_checked_at END,
             cancel_outcome = coalesce(i.in_cancel_outcome, cancel_outcome),
             cancel_due_at = CASE WHEN i.in_cancel_outcome IS NOT NULL THEN NULL
                                  ELSE cancel_due_at END,
             updated_at = now()
           FROM input i
           WHERE jobs.id = i.in_job AND jobs.id = ANY($2) AND i.in_apply AND jobs.status = i.in_from
             AND (i.in_fence IS NULL OR jobs.fence = i.in_fence)
           RETURNING {JOB_COLUMNS}, i.in_idx, i.in_lock_avatar),
         recorded AS (
             INSERT INTO job_events (job_id, event, from_status, to_status, applied, cause)
             SELECT i.in_job, i.in_event, i.in_from, i.in_to, true, i.in_cause
               FROM updated u JOIN input i ON i.in_idx = u.in_idx
              WHERE i.in_to <> i.in_from
             UNION ALL
             SELECT i.in_job, i.in_event, i.in_from, NULL, false, i.in_cause
               FROM input i WHERE NOT i.in_apply),
         avatar_locks AS (
             SELECT id AS locked_avatar, status AS avatar_status,
                    current_model_id IS NOT NULL AS avatar_has_model
               FROM avatars
              WHERE id = ANY($31) ORDER BY id FOR UPDATE)
         SELECT u.*, a.avatar_status, a.avatar_has_model
           FROM updated u
           LEFT JOIN avatar_locks a ON a.locked_avatar = u.avatar_id AND u.in_lock_avatar
          ORDER BY u.in_idx"
    ))
    .bind(&input.idx)
    .bind(&input.job)
    .bind(&input.apply)
    .bind(&input.to)
    .bind(&input.from)
    .bind(&input.fence)
    .bind(&input.request_id)
    .bind(&input.status_url)
    .bind(&input.response_url)
    .bind(&input.cancel_url)
    .bind(&input.queue_position)
    .bind(&input.clear_queue)
    .bind(&input.progress)
    .bind(&input.error_code)
    .bind(&input.error_message)
    .bind(&input.result)
    .bind(&input.fetch_needed)
    .bind(&input.custody_needed)
    .bind(&input.next_check_at)
    .bind(&input.lease_owner)
    .bind(&input.lease_secs)
    .bind(&input.deadline_at)
    .bind(&input.progress_checked)
    .bind(&input.cancel_outcome)
    .bind(&input.event)
    .bind(&input.cause)
    .bind(&input.terminal)
    .bind(&input.enters_submitted)
    .bind(&input.enters_progress)
    .bind(&input.lock_avatar)
    .bind(&input.avatars_to_lock)
    .fetch_all(&mut **tx)
    .await
    .map_err(StoreError::from_write)?;
    Ok(rows)
}

/// The items as columns, one array per column of the update's input.
#[derive(Default)]
struct Input<'a> {
    idx: Vec<i32>,
    job: Vec<Uuid>,
    apply: Vec<bool>,
    to: Vec<Option<&'static str>>,
    from: Vec<&'static str>,
    fence: Vec<Option<i64>>,
    request_id: Vec<Option<&'a str>>,
    status_url: Vec<Option<&'a str>>,
    response_url: Vec<Option<&'a str>>,
    cancel_url: Vec<Option<&'a str>>,
    queue_position: Vec<Option<i32>>,
    clear_queue: Vec<bool>,
    progress: Vec<Option<f64>>,
    error_code: Vec<Option<&'a str>>,
    error_message: Vec<Option<&'a str>>,
    result: Vec<Option<&'a Value>>,
    fetch_needed: Vec<Option<bool>>,
    custody_needed: Vec<Option<bool>>,
    next_check_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    lease_owner: Vec<Option<Uuid>>,
    lease_secs: Vec<Option<f64>>,
    deadline_at: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    progress_checked: Vec<bool>,
    cancel_outcome: Vec<Option<&'static str>>,
    event: Vec<&'static str>,
    cause: Vec<String>,
    terminal: Vec<bool>,
    enters_submitted: Vec<bool>,
    enters_progress: Vec<bool>,
    lock_avatar: Vec<bool>,
    avatars_to_lock: Vec<Uuid>,
}

impl<'a> Input<'a> {
    fn push(&mut self, index: usize, item: &TransitionItem<'a>, verdict: Verdict) {
        let changes = item.transition.changes;
        let to = match verdict {
            Verdict::Apply { to } => Some(to),
            Verdict::Ignore { .. } => None,
        };
        self.idx.push(i32::try_from(index).unwrap_or(i32::MAX));
        self.job.push(item.locked.id);
        self.apply.push(to.is_some());
        self.to.push(to.map(JobStatus::as_str));
        self.from.push(item.locked.status.as_str());
        self.fence.push(item.transition.fence);
        self.request_id.push(changes.fal_request_id.as_deref());
        self.status_url.push(changes.status_url.as_deref());
        self.response_url.push(changes.response_url.as_deref());
        self.cancel_url.push(changes.cancel_url.as_deref());
        self.queue_position.push(changes.queue_position);
        self.clear_queue.push(changes.clear_queue_position);
        self.progress.push(changes.progress);
        self.error_code.push(changes.error_code.as_deref());
        self.error_message.push(changes.error_message.as_deref());
        self.result.push(changes.result.as_ref());
        self.fetch_needed.push(changes.result_fetch_needed);
        self.custody_needed.push(changes.custody_needed);
        self.next_check_at.push(changes.next_check_at);
        self.lease_owner
            .push(item.transition.claim.as_ref().map(|claim| claim.owner));
        self.lease_secs.push(
            item.transition
                .claim
                .as_ref()
                .map(|claim| claim.lease.as_secs_f64()),
        );
        self.deadline_at.push(changes.deadline_at);
        self.progress_checked.push(changes.progress_checked);
        self.cancel_outcome
            .push(changes.cancel_outcome.map(CancelOutcome::as_str));
        self.event.push(item.transition.event.as_str());
        self.cause.push(match verdict {
            Verdict::Apply { .. } => item.transition.cause.to_string(),
            Verdict::Ignore { reason } => ignored_cause(item.transition.cause, reason),
        });
        self.terminal.push(to.is_some_and(JobStatus::is_terminal));
        self.enters_submitted.push(to == Some(JobStatus::Submitted));
        self.enters_progress.push(to == Some(JobStatus::InProgress));
        let lock_avatar = to.is_some_and(|to| item.moves_avatar(to));
        self.lock_avatar.push(lock_avatar);
        if let (true, Some(avatar_id)) = (lock_avatar, item.locked.avatar_id) {
            self.avatars_to_lock.push(avatar_id);
        }
    }
}

fn ignored_cause(cause: &str, reason: &str) -> String {
    format!("{cause}; ignored: {reason}")
}

/// Records that `item` changed nothing, and why (one row, for the rare guard that missed).
async fn record_ignored(
    tx: &mut Transaction<'_, Postgres>,
    item: &TransitionItem<'_>,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO job_events (job_id, event, from_status, to_status, applied, cause)
         VALUES ($1, $2, $3, NULL, false, $4)",
    )
    .bind(item.locked.id)
    .bind(item.transition.event.as_str())
    .bind(item.locked.status.as_str())
    .bind(ignored_cause(item.transition.cause, reason))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An avatar whose status the group may move, as locked and as it now stands.
struct AvatarMove {
    before: AvatarStatus,
    now: LockedAvatar,
    /// A model that becomes its current one.
    model_id: Option<Uuid>,
}

/// An event for the outbox.
struct NewEvent {
    tenant_id: Uuid,
    event_type: EventType,
    job_id: Option<Uuid>,
    avatar_id: Option<Uuid>,
    data: Value,
    /// The new model the event announces: written only with it.
    model_id: Option<Uuid>,
}

/// What the group's transitions cause beyond the job rows, written after them in bulk.
#[derive(Default)]
struct Effects {
    avatars: HashMap<Uuid, AvatarMove>,
    /// Trainings that succeeded with a model, and the model.
    models: Vec<(JobRecord, crate::models::NewModel)>,
    /// Those models as they are written, with their tenant.
    recorded_models: Vec<(Uuid, ModelRecord)>,
    events: Vec<NewEvent>,
}

impl Effects {
    /// What one applied transition causes: gauges, the avatar's side of an ended training,
    /// a finished generation, the caller-visible event, a model to record.
    async fn after_update(
        &mut self,
        tx: &mut Transaction<'_, Postgres>,
        item: &TransitionItem<'_>,
        job: &JobRecord,
        changed: &mut Vec<Changed>,
    ) -> Result<(), StoreError> {
        let (from, to) = (item.locked.status, job.status);
        if from == to {
            if job.kind == JobKind::Training
                && to == JobStatus::InProgress
                && progress_step_crossed(item.locked.progress, job.progress)
            {
                self.training_event(job, EventType::TrainingProgress, None)?;
            }
            return Ok(());
        }
        changed.push(Changed {
            kind: job.kind,
            from,
            to,
        });
        if job.kind == JobKind::Training && to.is_terminal() && to != JobStatus::Succeeded {
            if let Some(avatar) = job.avatar_id.and_then(|id| self.avatars.get_mut(&id)) {
                let change = AvatarChange::TrainingEnded {
                    cancelled: to == JobStatus::Cancelled,
                    has_model: avatar.now.has_model,
                };
                avatar.now.status = avatar.now.status.after(change);
            }
        }
        announce_if_finished(tx, job).await?;
        if job.kind == JobKind::Training {
            if let Some(event_type) = EventType::training_entered(to) {
                self.training_event(job, event_type, None)?;
            }
        }
        if let (JobStatus::Succeeded, Some(model)) = (to, &item.transition.changes.model) {
            self.models.push((job.clone(), model.clone()));
        }
        Ok(())
    }

    fn training_event(
        &mut self,
        job: &JobRecord,
        event_type: EventType,
        model: Option<ModelRecord>,
    ) -> Result<(), StoreError> {
        let model_id = model.as_ref().map(|model| model.id);
        let snapshot = EventSnapshot::Training {
            job: Box::new(job.clone()),
            model,
        };
        self.events.push(NewEvent {
            tenant_id: job.tenant_id,
            event_type,
            job_id: Some(job.id),
            avatar_id: job.avatar_id,
            data: serde_json::to_value(&snapshot).map_err(|e| StoreError::Encode(e.to_string()))?,
            model_id,
        });
        Ok(())
    }

    /// The succeeded trainings' models: each becomes its avatar's current model and is
    /// announced with `training.succeeded`. They are written by [`Effects::write`], in the
    /// statement that moves the avatars and writes the events.
    fn prepare_models(&mut self) -> Result<(), StoreError> {
        for (job, new) in std::mem::take(&mut self.models) {
            let model = ModelRecord {
                id: Uuid::now_v7(),
                avatar_id: job.avatar_id,
                training_id: job.id,
                model_type: new.model_type,
                trigger_phrase: new.trigger_phrase,
                artifact_key: new.artifact_key,
                artifact_sha256: new.artifact_sha256,
                artifact_bytes: new.artifact_bytes.map(|bytes| bytes as i64),
                config_key: new.config_key,
                fal_artifact_url: new.fal_artifact_url,
                finetune_id: new.finetune_id,
            };
            if let Some(avatar) = job.avatar_id.and_then(|id| self.avatars.get_mut(&id)) {
                avatar.now.status = avatar.now.status.after(AvatarChange::TrainingSucceeded);
                avatar.now.has_model = true;
                avatar.model_id = Some(model.id);
            }
            self.training_event(&job, EventType::TrainingSucceeded, Some(model.clone()))?;
            self.recorded_models.push((job.tenant_id, model));
        }
        Ok(())
    }

    /// The models, the avatars' new status and model, and the outbox events: one statement.
    ///
    /// A training enters `succeeded` once, so its model is new; should one exist all the same
    /// (unique on the training), the insert keeps the stored one and nothing that names the
    /// new one is written: neither the avatar's move to it nor its `training.succeeded`.
    async fn write(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        let moved: Vec<(&Uuid, &AvatarMove)> = self
            .avatars
            .iter()
            .filter(|(_, avatar)| avatar.model_id.is_some() || avatar.now.status != avatar.before)
            .collect();
        if moved.is_empty() && self.events.is_empty() {
            return Ok(());
        }
        let models = &self.recorded_models;
        sqlx::query(
            "WITH recorded_models AS (
                 INSERT INTO models (id, tenant_id, avatar_id, training_id, model_type,
                     trigger_phrase, artifact_key, artifact_sha256, artifact_bytes, config_key,
                     fal_artifact_url, finetune_id)
                 SELECT * FROM unnest($11::uuid[], $12::uuid[], $13::uuid[], $14::uuid[],
                     $15::text[], $16::text[], $17::text[], $18::text[], $19::int8[],
                     $20::text[], $21::text[], $22::text[])
                 ON CONFLICT (training_id) DO NOTHING
                 RETURNING id),
             moved AS (
                 UPDATE avatars a SET status = m.status,
                     current_model_id = coalesce(m.model_id, a.current_model_id),
                     updated_at = now()
                 FROM unnest($8::uuid[], $9::text[], $10::uuid[]) AS m(id, status, model_id)
                 WHERE a.id = m.id AND a.id = ANY($8)
                   AND (m.model_id IS NULL OR m.model_id IN (SELECT id FROM recorded_models)))
             INSERT INTO outbox_events (id, tenant_id, event_type, job_id, avatar_id, data)
             SELECT e.id, e.tenant_id, e.event_type, e.job_id, e.avatar_id, e.data
               FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[],
                   $6::jsonb[], $7::uuid[])
                 AS e(id, tenant_id, event_type, job_id, avatar_id, data, model_id)
              WHERE e.model_id IS NULL OR e.model_id IN (SELECT id FROM recorded_models)",
        )
        .bind(column(&self.events, |_| Uuid::now_v7()))
        .bind(column(&self.events, |e| e.tenant_id))
        .bind(column(&self.events, |e| e.event_type.as_str()))
        .bind(column(&self.events, |e| e.job_id))
        .bind(column(&self.events, |e| e.avatar_id))
        .bind(column(&self.events, |e| &e.data))
        .bind(column(&self.events, |e| e.model_id))
        .bind(column(&moved, |(id, _)| **id))
        .bind(column(&moved, |(_, avatar)| avatar.now.status.as_str()))
        .bind(column(&moved, |(_, avatar)| avatar.model_id))
        .bind(column(models, |(_, m)| m.id))
        .bind(column(models, |(tenant_id, _)| *tenant_id))
        .bind(column(models, |(_, m)| m.avatar_id))
        .bind(column(models, |(_, m)| m.training_id))
        .bind(column(models, |(_, m)| m.model_type.as_str()))
        .bind(column(models, |(_, m)| m.trigger_phrase.as_str()))
        .bind(column(models, |(_, m)| m.artifact_key.as_deref()))
        .bind(column(models, |(_, m)| m.artifact_sha256.as_deref()))
        .bind(column(models, |(_, m)| m.artifact_bytes))
        .bind(column(models, |(_, m)| m.config_key.as_deref()))
        .bind(column(models, |(_, m)| m.fal_artifact_url.as_deref()))
        .bind(column(models, |(_, m)| m.finetune_id.as_deref()))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// One field of every row, as the array a statement binds.
fn column<'a, T, U>(rows: &'a [T], field: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(field).collect()
}
