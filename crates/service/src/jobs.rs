//! Trainings: from the request to a job in the database, from fal's answers to transitions,
//! and cancellation. The workers and the webhook handler call into here, so every path applies
//! the same rules.

use chrono::Utc;
use domain::{JobEvent, JobStatus, Trainer, TrainingParams};
use serde_json::Value;
use store::{CancelCause, CancelOutcome, JobChanges, JobRecord};
use uuid::Uuid;

use crate::context::Service;
use crate::error::{JobFailure, ServiceError};

/// The model a Pro training's result names, or `None` when the job is not a finetune training
/// or the result has no finetune id (then the custody worker reports it).
pub fn finetune_model(job: &JobRecord, result: &Value) -> Option<store::NewModel> {
    if job.kind() != domain::JobKind::Training
        || job_params(job)?.trainer().model_type() != domain::ModelType::Finetune
    {
        return None;
    }
    let output = serde_json::from_value::<fal::models::ProTrainerOutput>(result.clone()).ok()?;
    Some(store::NewModel {
        model_type: domain::ModelType::Finetune,
        trigger_phrase: job.trigger_phrase.clone().unwrap_or_default(),
        artifact_key: None,
        artifact_sha256: None,
        artifact_bytes: None,
        config_key: None,
        fal_artifact_url: None,
        finetune_id: Some(output.finetune_id),
    })
}

/// The parameters a job was created with, typed.
pub fn job_params(job: &JobRecord) -> Option<TrainingParams> {
    let trainer = Trainer::parse(job.trainer.as_deref()?)?;
    TrainingParams::from_json(trainer, job.params.as_object()?)
}

/// What a finished fal request said.
pub enum FalOutcome {
    Succeeded(Value),
    /// fal says it succeeded but the webhook carried no payload: fetch it.
    SucceededWithoutPayload,
    Failed {
        code: String,
        message: String,
    },
}

/// The events that record a finished request: a job still waiting for its submit to be
/// recorded learns its request id first.
pub fn completion_events(
    job: &JobRecord,
    request_id: &str,
    outcome: FalOutcome,
) -> Vec<(JobEvent, JobChanges)> {
    let mut events = Vec::new();
    if matches!(job.status(), JobStatus::Uploading) {
        events.push((
            JobEvent::Submitted,
            JobChanges {
                fal_request_id: Some(request_id.to_string()),
                ..JobChanges::default()
            },
        ));
    }
    let request_known = JobChanges {
        fal_request_id: job.fal_request_id.is_none().then(|| request_id.to_string()),
        clear_queue_position: true,
        ..JobChanges::default()
    };
    match outcome {
        FalOutcome::Succeeded(result) => {
            // A finetune id is the whole model: recorded now, nothing to keep. Anything else
            // (LoRA weights, images) finishes in custody.
            let model = finetune_model(job, &result);
            let event = if model.is_some() {
                JobEvent::Completed
            } else {
                JobEvent::FalSucceeded
            };
            events.push((
                event,
                JobChanges {
                    result: Some(result),
                    custody_needed: Some(model.is_none()),
                    progress: Some(1.0),
                    model,
                    ..request_known
                },
            ))
        }
        FalOutcome::SucceededWithoutPayload => events.push((
            JobEvent::FalSucceeded,
            JobChanges {
                result_fetch_needed: Some(true),
                progress: Some(1.0),
                ..request_known
            },
        )),
        FalOutcome::Failed { code, message } => events.push(match ended_by_us(job) {
            // We cancelled the request (its deadline passed, or the caller asked) and fal ended
            // it: the cancel took effect (fal answers a cancelled request as failed, 499),
            // whichever of our own record and fal's callback comes first.
            Some((event, failure)) => (
                event,
                JobChanges {
                    error_code: Some(failure.code),
                    error_message: Some(failure.message),
                    // The cancel we owed fal took effect: it is no longer owed.
                    cancel_outcome: job
                        .cancel_due_at
                        .is_some()
                        .then_some(CancelOutcome::Requested),
                    ..request_known
                },
            ),
            None => (
                JobEvent::FalFailed,
                JobChanges {
                    // Marks the item for the custody worker, which re-uploads the LoRA and
                    // resubmits it once.
                    custody_needed: (code == crate::fal_errors::LORA_UNAVAILABLE
                        && job.kind() == domain::JobKind::Generation
                        && job.attempt < 2)
                        .then_some(true),
                    error_code: Some(code),
                    error_message: Some(message),
                    ..request_known
                },
            ),
        }),
    }
    events
}

/// Why a job we asked fal to stop ends: past its deadline it timed out, otherwise the caller
/// cancelled it. `None` when we did not ask.
fn ended_by_us(job: &JobRecord) -> Option<(JobEvent, JobFailure)> {
    if job
        .deadline_at
        .is_some_and(|deadline| deadline <= Utc::now())
    {
        Some((JobEvent::TimedOut, timed_out(job)))
    } else if job.cancel_requested_at.is_some() {
        Some((
            JobEvent::Cancelled,
            JobFailure::new("cancelled", "cancelled by the caller"),
        ))
    } else {
        None
    }
}

/// How a job past its deadline fails.
fn timed_out(job: &JobRecord) -> JobFailure {
    let kind = job.kind().as_str();
    JobFailure::new(
        format!("{kind}_timeout"),
        format!("the {kind} did not finish in time"),
    )
}

/// A caller's cancel: recorded first as a cancel owed to fal (so it survives a failed call
/// to fal or a restart: the reconciler retries it), then carried out. A job being uploaded
/// is left to its worker, which sees the request before submitting or cancels on fal right
/// after.
pub async fn cancel_for_caller(
    service: &Service,
    tenant: domain::TenantId,
    id: Uuid,
) -> Result<JobRecord, ServiceError> {
    let job = service.store.request_cancel(tenant, id).await?;
    if job.status() == JobStatus::Uploading && job.fal_request_id.is_none() {
        return Ok(job);
    }
    carry_out_cancel(service, &job, CancelCause::Caller, None).await
}

/// The event that ends a job whose owed cancel took effect (or was given up), and the
/// failure it records.
fn cancel_ending(job: &JobRecord, cause: CancelCause) -> (JobEvent, JobFailure) {
    match cause {
        CancelCause::Deadline => (JobEvent::TimedOut, timed_out(job)),
        CancelCause::AvatarDeleted => (
            JobEvent::Cancelled,
            JobFailure::new("cancelled", "the avatar was deleted"),
        ),
        CancelCause::Caller => (
            JobEvent::Cancelled,
            JobFailure::new("cancelled", "cancelled by the caller"),
        ),
    }
}

/// Carries out the cancel a job is owed (`fallback` says why when the job records no cause):
/// at once when nothing was sent to fal, on fal otherwise. The job ends as fal answers: a
/// 202 or 404 ends it cancelled (timed out, past its deadline); when fal says the request
/// already completed, its result wins. A server or transport error leaves the cancel owed,
/// to be retried by the reconciler after a growing wait (`CANCEL_RETRY_INTERVAL`); after
/// `CANCEL_MAX_ATTEMPTS` failures the job ends anyway, with `cancel_unconfirmed`. A job that
/// already ended here (its avatar was deleted mid-submit) only has the cancel sent.
/// `fence` is the reconciler's lease; `None` from request handlers.
#[tracing::instrument(skip_all, fields(job_id = %job.id, tenant_id = %job.tenant_id, avatar_id = ?job.avatar_id, kind = job.kind().as_str()))]
pub async fn carry_out_cancel(
    service: &Service,
    job: &JobRecord,
    fallback: CancelCause,
    fence: Option<i64>,
) -> Result<JobRecord, ServiceError> {
    let status = job.status();
    let cause = job
        .cancel_cause
        .as_deref()
        .and_then(CancelCause::parse)
        .unwrap_or(fallback);
    // A finishing job is done at fal: as when fal answers that a request already completed,
    // its result wins.
    if status == JobStatus::Finishing {
        service
            .store
            .settle_cancel(job.id, CancelOutcome::AlreadyCompleted)
            .await?;
        return reload(service, job.id).await;
    }
    let (fal, request) = match (service.fal.as_ref(), request_ref(service, job)) {
        (Some(fal), Some(request)) => (fal, request),
        _ => {
            // Nothing reached fal, or the submit's answer has not arrived yet: the job ends
            // here. A cancel stays owed while a submit may have left, so the request is
            // cancelled once its id is known.
            if status.is_active() {
                let (event, failure) = cancel_ending(job, cause);
                let changes = JobChanges {
                    cancel_outcome: job
                        .submit_started_at
                        .is_none()
                        .then_some(CancelOutcome::NotSubmitted),
                    ..failure.changes()
                };
                service
                    .store
                    .apply_event(job.id, event, fence, &changes, cause.as_str())
                    .await?;
            }
            return reload(service, job.id).await;
        }
    };
    let answer = service
        .metrics
        .fal_call(
            crate::metrics::FalOperation::Cancel,
            fal.client.cancel(&request),
        )
        .await;
    let (outcome, failure) = match answer {
        Ok(fal::CancelOutcome::CancellationRequested) => (CancelOutcome::Requested, None),
        Err(fal::FalError::NotFound { .. }) => (CancelOutcome::NotFound, None),
        Ok(fal::CancelOutcome::AlreadyCompleted) => {
            service
                .store
                .settle_cancel(job.id, CancelOutcome::AlreadyCompleted)
                .await?;
            if status.is_active() {
                // fal finished meanwhile: the result wins over the cancel.
                reconcile_job(service, job, fence).await;
            }
            return reload(service, job.id).await;
        }
        Err(error) => {
            let settings = &service.settings.jobs;
            let attempts = service
                .store
                .record_cancel_failure(job.id, settings.cancel_retry_interval)
                .await?
                .unwrap_or(0);
            if attempts < settings.cancel_max_attempts {
                tracing::warn!(%error, attempts, "cancelling on fal failed; it is tried again later");
                return reload(service, job.id).await;
            }
            tracing::error!(%error, attempts, "fal never confirmed the cancel; giving up");
            (CancelOutcome::Unconfirmed, Some(attempts))
        }
    };
    if status.is_terminal() {
        service.store.settle_cancel(job.id, outcome).await?;
        return reload(service, job.id).await;
    }
    let (event, mut ending) = cancel_ending(job, cause);
    if let Some(attempts) = failure {
        ending = JobFailure::new(
            "cancel_unconfirmed",
            format!(
                "{}; fal did not confirm the cancel after {attempts} attempts, so the request \
                 may still run there",
                ending.message
            ),
        );
    }
    let changes = JobChanges {
        cancel_outcome: Some(outcome),
        ..ending.changes()
    };
    let applied = service
        .store
        .apply_event(job.id, event, fence, &changes, cause.as_str())
        .await?;
    if !matches!(applied, store::EventOutcome::Applied(_)) {
        // The job moved on meanwhile (fal's callback ended it, say): the cancel is settled
        // all the same.
        service.store.settle_cancel(job.id, outcome).await?;
    }
    reload(service, job.id).await
}

async fn reload(service: &Service, id: Uuid) -> Result<JobRecord, ServiceError> {
    service
        .store
        .job_by_id(id)
        .await?
        .ok_or_else(|| ServiceError::training_not_found(id))
}

/// The fal URLs of a submitted job, from what submit returned or, when only the request id is
/// known, from fal's URL rule.
pub fn request_ref(service: &Service, job: &JobRecord) -> Option<fal::RequestRef> {
    let request_id = job.fal_request_id.as_deref()?;
    let parse = |u: &Option<String>| u.as_deref().and_then(|u| url::Url::parse(u).ok());
    match (
        parse(&job.status_url),
        parse(&job.response_url),
        parse(&job.cancel_url),
    ) {
        (Some(status_url), Some(response_url), Some(cancel_url)) => Some(fal::RequestRef {
            request_id: request_id.to_string(),
            status_url,
            response_url,
            cancel_url,
        }),
        _ => service
            .fal
            .as_ref()?
            .client
            .request_ref(&job.endpoint, request_id)
            .ok(),
    }
}

/// Asks fal where a submitted job stands and applies the answer. `fence` is the reconciler's
/// lease; `None` from request handlers.
#[tracing::instrument(skip_all, fields(job_id = %job.id, tenant_id = %job.tenant_id, avatar_id = ?job.avatar_id, kind = job.kind().as_str()))]
pub async fn reconcile_job(service: &Service, job: &JobRecord, fence: Option<i64>) {
    let Some(fal) = service.fal.as_ref() else {
        return;
    };
    let Some(request) = request_ref(service, job) else {
        return;
    };
    let status = match service
        .metrics
        .fal_call(
            crate::metrics::FalOperation::Status,
            fal.client.status(&request, true),
        )
        .await
    {
        Ok(status) => status,
        Err(error) => {
            tracing::warn!(%error, "status lookup failed");
            return;
        }
    };
    let apply = |event: JobEvent, changes: JobChanges| async move {
        if let Err(error) = service
            .store
            .apply_event(job.id, event, fence, &changes, "status lookup")
            .await
        {
            tracing::warn!(%error, "recording a status lookup");
        }
    };
    match status {
        fal::QueueStatus::InQueue { queue_position } => {
            apply(
                JobEvent::Queued,
                JobChanges {
                    queue_position: queue_position.map(|p| p as i32),
                    ..JobChanges::default()
                },
            )
            .await
        }
        fal::QueueStatus::InProgress { logs } => {
            let progress = logs
                .as_ref()
                .and_then(|l| domain::progress_from_logs(l.iter().map(|e| e.message.as_str())));
            apply(
                JobEvent::Started,
                JobChanges {
                    progress,
                    clear_queue_position: true,
                    ..JobChanges::default()
                },
            )
            .await
        }
        fal::QueueStatus::Completed { error, .. } => {
            let outcome = match service
                .metrics
                .fal_call(
                    crate::metrics::FalOperation::Result,
                    fal.client.billed_result(&request),
                )
                .await
                .map(|billed| (billed.output, billed.billable_units))
            {
                Ok((result, units)) if error.is_none() => {
                    crate::usage::record_billing(service, job, units).await;
                    FalOutcome::Succeeded(result)
                }
                Ok((result, _)) => {
                    let (code, message) =
                        crate::fal_errors::failure_code(error.as_deref(), Some(&result));
                    FalOutcome::Failed { code, message }
                }
                Err(fal::FalError::Validation { issues, .. }) => FalOutcome::Failed {
                    code: crate::fal_errors::issue_code(
                        issues
                            .iter()
                            .map(|i| (i.kind.as_str(), Value::from(i.loc.clone()))),
                    )
                    .into(),
                    message: format!("fal rejected the input: {issues:?}"),
                },
                Err(fal::FalError::Server {
                    detail, error_type, ..
                }) if error.is_some() => FalOutcome::Failed {
                    code: "fal_failed".into(),
                    message: format!("{detail} ({})", error_type.unwrap_or_default()),
                },
                Err(error) => {
                    tracing::warn!(%error, "result lookup failed");
                    return;
                }
            };
            for (event, changes) in completion_events(job, &request.request_id, outcome) {
                apply(event, changes).await;
            }
        }
    }
}

/// A job past its deadline: the cancel it is owed is recorded, then carried out (see
/// [`carry_out_cancel`]). It ends `timed_out` once fal confirms the cancel, or with fal's
/// result when fal says the request already completed; while fal cannot be reached it stays
/// as it is and the reconciler retries the cancel.
#[tracing::instrument(skip_all, fields(job_id = %job.id, tenant_id = %job.tenant_id, avatar_id = ?job.avatar_id, kind = job.kind().as_str()))]
pub async fn time_out(service: &Service, job: &JobRecord, fence: i64) {
    let job = match service
        .store
        .record_cancel_intent(job.id, CancelCause::Deadline)
        .await
    {
        Ok(Some(job)) => job,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, "recording a timeout's cancel");
            return;
        }
    };
    if let Err(error) = carry_out_cancel(service, &job, CancelCause::Deadline, Some(fence)).await {
        tracing::warn!(?error, "timing out a job");
    }
}

/// The URL fal calls back for `job`: the job id and its token, derived from the id under the
/// primary key of the ring (never stored).
pub fn webhook_url(
    base: &str,
    job: &JobRecord,
    ring: &crate::secrets::KeyRing,
) -> Result<url::Url, url::ParseError> {
    use secrecy::ExposeSecret;
    let mut url = url::Url::parse(&format!("{}/webhooks/fal", base.trim_end_matches('/')))?;
    url.query_pairs_mut()
        .append_pair("job", &job.id.to_string())
        .append_pair("token", ring.job_token(job.id).expose_secret());
    Ok(url)
}

pub fn deadline_from_now(settings: &crate::context::JobSettings) -> chrono::DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(settings.timeout).unwrap_or(chrono::Duration::hours(1))
}

/// `now` plus `duration`, saturating.
pub fn after(now: chrono::DateTime<Utc>, duration: std::time::Duration) -> chrono::DateTime<Utc> {
    now + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::days(365))
}

/// What a submit records besides the request: the first safety-net check, once the job's
/// webhook is overdue (its expected duration plus the grace), and the deadline fitting its
/// work, both counted from now (the submission); and that fal's answer was just heard.
pub fn submission_schedule(service: &Service, job: &JobRecord) -> JobChanges {
    let settings = &service.settings.jobs;
    let schedule = settings.schedule();
    let cap = settings.timeout_of(job.kind());
    let expected = job
        .estimated_seconds
        .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
        .unwrap_or(cap);
    let now = Utc::now();
    JobChanges {
        next_check_at: Some(after(now, schedule.first_check_after(expected))),
        deadline_at: Some(after(now, schedule.deadline_after(expected, cap))),
        progress_checked: true,
        ..JobChanges::default()
    }
}

/// Notes that the caller watches these jobs for the next check interval: while watched, their
/// live progress is looked up at fal (at most once per interval). A failure only means less
/// fresh progress, so it is logged, not returned.
pub async fn watch(service: &Service, tenant: domain::TenantId, watch: store::JobWatch) {
    let until = after(Utc::now(), service.settings.jobs.status_check_interval);
    if let Err(error) = service.store.watch_jobs(tenant, watch, until).await {
        tracing::warn!(%error, ?watch, "noting a watcher");
    }
}

/// The tenant's avatar a job is for, or `avatar_not_found`.
pub(crate) async fn tenant_avatar(
    service: &Service,
    tenant: domain::TenantId,
    avatar_id: domain::AvatarId,
) -> Result<domain::Avatar, ServiceError> {
    match service.store.get_avatar(tenant, avatar_id).await {
        Ok(avatar) => Ok(avatar),
        Err(store::StoreError::NotFound) => Err(ServiceError::avatar_not_found(avatar_id)),
        Err(error) => Err(error.into()),
    }
}

/// A page of an avatar's records from the store (`None`: no such avatar), each loaded with what
/// callers see of it, and whether more follow.
pub(crate) async fn load_page<R, T, Fut>(
    avatar_id: domain::AvatarId,
    page: Option<(Vec<R>, bool)>,
    load: impl Fn(R) -> Fut,
) -> Result<(Vec<T>, bool), ServiceError>
where
    Fut: std::future::Future<Output = Result<T, ServiceError>>,
{
    let (records, more) = page.ok_or_else(|| ServiceError::avatar_not_found(avatar_id))?;
    let mut loaded = Vec::with_capacity(records.len());
    for record in records {
        loaded.push(load(record).await?);
    }
    Ok((loaded, more))
}
