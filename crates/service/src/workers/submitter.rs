//! The submitter: pending jobs -> fal. A submit is sent at most once: the job is marked
//! before the request leaves, so a crash after that is an unknown outcome, never a retry.

use std::time::Duration;

use chrono::Utc;

use domain::{JobEvent, JobKind, Trainer, TrainingParams};
use serde_json::{json, Value};
use store::{JobChanges, JobRecord};

use super::{defer, fail, record};
use crate::context::Service;
use crate::error::JobFailure;
use crate::fal_link::FalLink;
use crate::jobs;

/// Uploads the training data and submits the job to fal. The submit is sent at most once: the
/// job is marked before it leaves, so a crash after that is an unknown outcome, not a retry.
/// Runs in the job's span (see `job_span!`).
pub(super) async fn submit(service: &Service, job: JobRecord) {
    if job.cancel_requested_at.is_some() {
        cancel_before_submission(service, &job).await;
        return;
    }
    let (Some(fal), Some(base)) = (
        service.fal.as_ref(),
        service.settings.jobs.public_base_url.as_deref(),
    ) else {
        let failure = JobFailure::new("fal_not_configured", "the service has no fal connection");
        reject(service, &job, failure, "no fal").await;
        return;
    };
    if job.kind() == JobKind::Generation {
        submit_generation(service, fal, base, job).await;
        return;
    }
    let Some(params) = jobs::job_params(&job) else {
        let failure = JobFailure::new("invalid_job", "the job's parameters cannot be read");
        reject(service, &job, failure, "bad params").await;
        return;
    };
    let scratch = match service.scratch_directory("submit") {
        Ok(dir) => dir,
        Err(error) => {
            tracing::error!(%error, "creating a scratch directory");
            defer(service, &job, Duration::from_secs(10)).await;
            return;
        }
    };
    let archive = scratch.path().join("training.zip");
    if let Err((code, message)) = prepare_archive(service, &job, &archive).await {
        let failure = JobFailure::new(code, message);
        reject(service, &job, failure, "training data").await;
        return;
    }
    let lifecycle = fal::ObjectLifecycle::expires_after(
        service.settings.jobs.timeout + Duration::from_secs(3600),
    );
    let uploaded = match service
        .metrics
        .fal_call(
            crate::metrics::FalOperation::Upload,
            fal.client
                .upload_file(&archive, "application/zip", Some(&lifecycle)),
        )
        .await
    {
        Ok(uploaded) => uploaded,
        Err(error @ (fal::FalError::Unauthorized { .. } | fal::FalError::BillingLocked { .. })) => {
            refused(service, fal, &job, &error, "upload refused").await;
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "uploading the training archive; will retry");
            defer(service, &job, Duration::from_secs(10)).await;
            return;
        }
    };
    drop(scratch);
    let kind = match job.avatar_id {
        Some(avatar) => service
            .store
            .get_avatar(domain::TenantId(job.tenant_id), domain::AvatarId(avatar))
            .await
            .map(|a| a.kind)
            .ok(),
        None => None,
    };
    let input = fal_input(&job, &params, uploaded.file_url.as_str(), kind);
    if params.trainer() == Trainer::Pro {
        tracing::warn!("submitting to fal-ai/flux-pro-trainer, which fal has deprecated");
    }
    send(service, fal, base, &job, &input).await;
}

/// Submits `input` for `job` (at most once: the submit is marked before it leaves) and records
/// the outcome.
pub(super) async fn send(
    service: &Service,
    fal: &FalLink,
    base: &str,
    job: &JobRecord,
    input: &Value,
) {
    let fence = job.fence;
    let job = job.clone();
    let webhook = match jobs::webhook_url(base, &job, &service.settings.secrets) {
        Ok(url) => url,
        Err(error) => {
            let failure = JobFailure::new("invalid_public_base_url", error.to_string());
            reject(service, &job, failure, "webhook url").await;
            return;
        }
    };
    match service.store.mark_submit_started(job.id, fence).await {
        Ok(true) => {}
        Ok(false) => {
            // Lost the lease, or a cancel arrived: the reloaded job says which.
            if let Ok(Some(current)) = service.store.job_by_id(job.id).await {
                if current.cancel_requested_at.is_some() && current.fence == fence {
                    cancel_before_submission(service, &current).await;
                }
            }
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "marking the submit");
            return;
        }
    }
    let options = fal::SubmitOptions {
        webhook_url: Some(webhook),
        ..fal::SubmitOptions::default()
    };
    match service
        .metrics
        .fal_call(
            crate::metrics::FalOperation::Submit,
            fal.client.submit(&job.endpoint, input, &options),
        )
        .await
    {
        Ok(submitted) => {
            fal.health.record_refusal(None);
            let changes = JobChanges {
                fal_request_id: Some(submitted.request_id.clone()),
                status_url: Some(submitted.status_url.to_string()),
                response_url: Some(submitted.response_url.to_string()),
                cancel_url: Some(submitted.cancel_url.to_string()),
                queue_position: submitted.queue_position.map(|p| p as i32),
                ..jobs::submission_schedule(service, &job)
            };
            record_submitted(service, &job, fence, changes).await;
            // A cancel owed meanwhile (the caller's, arriving while the submit was in flight,
            // or the avatar's deletion) is carried out now; the reconciler retries it if fal
            // does not answer.
            if let Ok(Some(current)) = service.store.job_by_id(job.id).await {
                if current.cancel_due_at.is_some() {
                    if let Err(error) =
                        jobs::carry_out_cancel(service, &current, store::CancelCause::Caller, None)
                            .await
                    {
                        tracing::warn!(?error, "cancelling after submit");
                    }
                }
            }
        }
        Err(fal::SubmitError::NotAccepted(error)) => {
            refused(service, fal, &job, &error, "fal refused the submit").await;
        }
        Err(fal::SubmitError::OutcomeUnknown { request_id, cause }) => {
            // Whether fal has it is learnt from a lookup one interval from now; its deadline
            // counts from this submission like any other.
            let next_check = jobs::after(Utc::now(), service.settings.jobs.status_check_interval);
            let changes = JobChanges {
                fal_request_id: request_id,
                next_check_at: Some(next_check),
                deadline_at: jobs::submission_schedule(service, &job).deadline_at,
                ..JobFailure::new(
                    "submit_unknown",
                    format!("fal may or may not have accepted the submit: {cause}"),
                )
                .changes()
            };
            record(
                service,
                &job,
                JobEvent::SubmitOutcomeUnknown,
                fence,
                changes,
                "submit outcome unknown",
            )
            .await;
        }
    }
}

/// Ends a job whose cancel arrived before its submit left: nothing reached fal, so the cancel
/// it owes is settled with it.
async fn cancel_before_submission(service: &Service, job: &JobRecord) {
    let changes = JobChanges {
        cancel_outcome: Some(store::CancelOutcome::NotSubmitted),
        ..JobFailure::new("cancelled", "cancelled before submission").changes()
    };
    record(
        service,
        job,
        JobEvent::Cancelled,
        job.fence,
        changes,
        "cancel requested",
    )
    .await;
}

/// Records that fal accepted the submit. The request is never lost: when this worker's lease
/// ran out meanwhile and the job went `submit_unknown`, the answer still resolves it (no
/// other worker can have learnt the request id); when the job ended here meanwhile
/// (cancelled mid-submit), its request is recorded so the cancel it owes reaches fal.
async fn record_submitted(service: &Service, job: &JobRecord, fence: i64, changes: JobChanges) {
    let cause = "fal accepted the submit";
    let outcome = match service
        .store
        .apply_event(job.id, JobEvent::Submitted, Some(fence), &changes, cause)
        .await
    {
        Ok(outcome) => outcome,
        Err(error) => {
            tracing::warn!(%error, "recording the submit");
            return;
        }
    };
    let outcome = match outcome {
        store::EventOutcome::Ignored { .. } => {
            let current = match service.store.job_by_id(job.id).await {
                Ok(Some(current)) if current.fal_request_id.is_none() => current,
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, "reloading a job after its submit");
                    return;
                }
            };
            let recorded = if current.status() == domain::JobStatus::SubmitUnknown {
                service
                    .store
                    .apply_event(
                        job.id,
                        JobEvent::Submitted,
                        None,
                        &changes,
                        "fal accepted the submit after the lease ran out",
                    )
                    .await
            } else {
                service
                    .store
                    .record_late_request(job.id, &changes)
                    .await
                    .map(|job| match job {
                        Some(job) => store::EventOutcome::Applied(Box::new(job)),
                        None => store::EventOutcome::NotFound,
                    })
            };
            match recorded {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::warn!(%error, "recording a late submit answer");
                    return;
                }
            }
        }
        outcome => outcome,
    };
    // fal may have called back before its request id was stored here.
    if let store::EventOutcome::Applied(now) = outcome {
        if job.fal_request_id.is_none() && now.fal_request_id.is_some() {
            crate::fal_webhook::apply_kept_callbacks(service, &now).await;
        }
    }
}

/// Writes the archive fal trains from: the caller's own (checked at request time) or one built
/// from the avatar's photos.
pub(super) async fn prepare_archive(
    service: &Service,
    job: &JobRecord,
    path: &std::path::Path,
) -> Result<(), (&'static str, String)> {
    if let Some(key) = &job.input_blob_key {
        return service
            .blobs
            .get_to_file(key, path)
            .await
            .map(|_| ())
            .map_err(|e| ("training_data_unavailable", e.to_string()));
    }
    let Some(avatar) = job.avatar_id else {
        return Err(("avatar_deleted", "the avatar was deleted".to_string()));
    };
    let tenant = domain::TenantId(job.tenant_id);
    // Empty when the avatar is gone meanwhile: the set is then not trainable.
    let photos = service
        .store
        .photos_of(tenant, domain::AvatarId(avatar))
        .await
        .map_err(|e| ("training_data_unavailable", e.to_string()))?;
    let rules = service.photo_set_rules();
    if !rules.is_trainable(photos.len() as u32) {
        return Err((
            "photo_set_not_trainable",
            format!(
                "{} photos; a training needs {} to {}",
                photos.len(),
                rules.min_photos,
                rules.max_photos
            ),
        ));
    }
    crate::training_data::build_training_archive(service, &photos, job.trigger_phrase.clone(), path)
        .await
        .map(|_| ())
        .map_err(|e| ("training_data_unavailable", e.to_string()))
}

/// The input fal's trainer expects.
pub(super) fn fal_input(
    job: &JobRecord,
    params: &TrainingParams,
    data_url: &str,
    kind: Option<domain::AvatarKind>,
) -> Value {
    let mut input = params.to_json();
    let trigger = job.trigger_phrase.clone().unwrap_or_default();
    match params.trainer() {
        Trainer::Portrait => {
            input.insert("images_data_url".into(), json!(data_url));
            input.insert("trigger_phrase".into(), json!(trigger));
        }
        Trainer::FastLora => {
            input.insert("images_data_url".into(), json!(data_url));
            input.insert("trigger_word".into(), json!(trigger));
        }
        Trainer::Pro => {
            input.insert("data_url".into(), json!(data_url));
            input.insert("trigger_word".into(), json!(trigger));
            input.insert(
                "finetune_comment".into(),
                json!(format!("avatars training {}", job.id)),
            );
            input.insert(
                "mode".into(),
                json!(kind.map(|k| k.as_str()).unwrap_or("general")),
            );
        }
    }
    Value::Object(input)
}

/// Submits one generation item: the stored fal input, with the model's current LoRA URL.
pub(super) async fn submit_generation(
    service: &Service,
    fal: &FalLink,
    base: &str,
    job: JobRecord,
) {
    let mut input = job.params.clone();
    if job.endpoint == domain::LORA_GENERATION_ENDPOINT {
        let model = match generation_model(service, &job).await {
            Ok(model) => model,
            Err((code, message)) => {
                reject(service, &job, JobFailure::new(code, message), "no model").await;
                return;
            }
        };
        let url = match model.fal_artifact_url.clone() {
            Some(url) => url,
            None => match upload_lora(service, fal, &model).await {
                Ok(url) => url,
                Err(error) => {
                    tracing::warn!(%error, "uploading the LoRA; will retry");
                    defer(service, &job, Duration::from_secs(10)).await;
                    return;
                }
            },
        };
        if let Some(lora) = input
            .get_mut("loras")
            .and_then(Value::as_array_mut)
            .and_then(|loras| loras.first_mut())
        {
            lora["path"] = json!(url);
        }
    }
    send(service, fal, base, &job, &input).await;
}

/// The model a generation item uses.
pub(super) async fn generation_model(
    service: &Service,
    job: &JobRecord,
) -> Result<store::ModelRecord, (&'static str, String)> {
    let generation = match job.generation_id {
        Some(id) => service.store.generation_by_id(id).await.ok().flatten(),
        None => None,
    };
    let model_id = generation.and_then(|g| g.model_id);
    let model = match model_id {
        Some(id) => service
            .store
            .model_by_id(id)
            .await
            .map_err(|e| ("model_unavailable", e.to_string()))?,
        None => None,
    };
    model.ok_or_else(|| {
        (
            "model_deleted",
            "the avatar's model was deleted".to_string(),
        )
    })
}

/// Uploads our copy of the model's LoRA to fal storage and returns its URL.
pub(super) async fn upload_lora(
    service: &Service,
    fal: &FalLink,
    model: &store::ModelRecord,
) -> anyhow::Result<String> {
    let key = model
        .artifact_key
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("the model has no stored LoRA"))?;
    let scratch = service.scratch_file("lora")?;
    service.blobs.get_to_file(key, scratch.path()).await?;
    let uploaded = service
        .metrics
        .fal_call(
            crate::metrics::FalOperation::Upload,
            fal.client
                .upload_file(scratch.path(), "application/octet-stream", None),
        )
        .await?;
    Ok(uploaded.file_url.to_string())
}

/// fal certainly refused the job (nothing runs there): it fails with fal's reason, and a
/// refused key is remembered for `/readyz`.
async fn refused(
    service: &Service,
    fal: &FalLink,
    job: &JobRecord,
    error: &fal::FalError,
    cause: &str,
) {
    let failure = crate::fal_errors::submit_refusal(job.kind(), &job.endpoint, error);
    fal.health.record_refusal(Some(error));
    reject(service, job, failure, cause).await;
}

/// Ends a job fal never got: its submit is refused before it leaves.
async fn reject(service: &Service, job: &JobRecord, failure: JobFailure, cause: &str) {
    fail(service, job, JobEvent::SubmitRejected, failure, cause).await;
}
