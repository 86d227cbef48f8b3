//! Trainings: from the request to a job in the database, from fal's answers to transitions,
//! and cancellation. The workers and the webhook handler call into here, so every path applies
//! the same rules.

use chrono::Utc;
use domain::{JobEvent, JobStatus, Trainer, TrainingParams};
use serde_json::Value;
use store::{JobChanges, JobRecord};
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

/// A caller's cancel: recorded first (so it survives a failed call to fal), then carried out.
/// A job being uploaded is left to its worker, which sees the request before submitting or
/// cancels on fal right after.
pub async fn cancel_for_caller(
    service: &Service,
    tenant: domain::TenantId,
    id: Uuid,
) -> Result<JobRecord, ServiceError> {
    let job = service.store.request_cancel(tenant, id).await?;
    if job.status() == JobStatus::Uploading {
        return Ok(job);
    }
    cancel_job(service, &job, "cancelled by the caller").await
}

/// Cancels a job: at once when nothing was sent to fal yet, on fal otherwise. When fal says
/// the request already completed, its result wins.
#[tracing::instrument(skip_all, fields(job_id = %job.id, tenant_id = %job.tenant_id, avatar_id = ?job.avatar_id, kind = job.kind().as_str()))]
pub async fn cancel_job(
    service: &Service,
    job: &JobRecord,
    cause: &str,
) -> Result<JobRecord, ServiceError> {
    let status = job.status();
    // A finishing job is done at fal: as when fal answers that a request already completed,
    // its result wins.
    if status.is_terminal() || status == JobStatus::Finishing {
        return Ok(job.clone());
    }
    let request = request_ref(service, job);
    if let (Some(fal), Some(request)) = (service.fal.as_ref(), request) {
        match service
            .metrics
            .fal_call(
                crate::metrics::FalOperation::Cancel,
                fal.client.cancel(&request),
            )
            .await
        {
            Ok(fal::CancelOutcome::CancellationRequested) => {}
            Ok(fal::CancelOutcome::AlreadyCompleted) => {
                reconcile_job(service, job, None).await;
                return reload(service, job.id).await;
            }
            Err(fal::FalError::NotFound { .. }) => {}
            Err(error) => {
                return Err(ServiceError::unavailable(
                    "fal_unavailable",
                    "fal could not be reached to cancel the request; retry later",
                )
                .with_source(error))
            }
        }
    }
    service
        .store
        .apply_event(
            job.id,
            JobEvent::Cancelled,
            None,
            &JobChanges {
                error_code: Some("cancelled".into()),
                error_message: Some(cause.to_string()),
                ..JobChanges::default()
            },
            cause,
        )
        .await?;
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

/// Applies a terminal "timed out" after cancelling on fal.
#[tracing::instrument(skip_all, fields(job_id = %job.id, tenant_id = %job.tenant_id, avatar_id = ?job.avatar_id, kind = job.kind().as_str()))]
pub async fn time_out(service: &Service, job: &JobRecord, fence: i64) {
    if let (Some(fal), Some(request)) = (service.fal.as_ref(), request_ref(service, job)) {
        match service
            .metrics
            .fal_call(
                crate::metrics::FalOperation::Cancel,
                fal.client.cancel(&request),
            )
            .await
        {
            Ok(fal::CancelOutcome::AlreadyCompleted) => {
                // fal finished meanwhile: the result wins over the deadline.
                reconcile_job(service, job, Some(fence)).await;
                return;
            }
            Ok(fal::CancelOutcome::CancellationRequested) | Err(fal::FalError::NotFound { .. }) => {
            }
            Err(error) => {
                tracing::warn!(%error, "cancelling a timed-out job on fal")
            }
        }
    }
    let outcome = service
        .store
        .apply_event(
            job.id,
            JobEvent::TimedOut,
            Some(fence),
            &timed_out(job).changes(),
            "deadline passed",
        )
        .await;
    if let Err(error) = outcome {
        tracing::warn!(%error, "recording a timeout");
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
