//! Background workers: the submitter (pending jobs -> fal), the reconciler (overdue webhooks,
//! deadlines, progress) and custody (results and artifacts into our storage). Each claims work
//! with a lease and a fencing token, so any number of replicas can run them.

use std::time::Duration;

use chrono::Utc;
use domain::{JobEvent, JobKind, JobStatus, Trainer, TrainingParams};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use store::{JobChanges, JobRecord, NewModel};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::state::AppState;
use crate::training;

/// How often idle workers look for work they were not woken for.
#[derive(Debug, Clone, Copy)]
pub struct WorkerIntervals {
    pub idle_poll: Duration,
    pub reconcile_tick: Duration,
}

impl Default for WorkerIntervals {
    fn default() -> Self {
        Self {
            idle_poll: Duration::from_secs(1),
            reconcile_tick: Duration::from_secs(1),
        }
    }
}

/// The running workers; dropping this stops them.
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
    }
}

pub fn spawn(state: AppState, intervals: WorkerIntervals) -> Workers {
    let state_for_events = state.clone();
    let submitter = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                loop {
                    match state
                        .store
                        .claim_upload(state.worker_id, state.training.lease)
                        .await
                    {
                        Ok(Some(job)) => submit(&state, job).await,
                        Ok(None) => break,
                        Err(error) => {
                            tracing::warn!(%error, "claiming a job to submit");
                            break;
                        }
                    }
                }
                wait(&state, intervals.idle_poll).await;
            }
        })
    };
    let custody = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                loop {
                    match state
                        .store
                        .claim_custody(state.worker_id, state.training.lease)
                        .await
                    {
                        Ok(Some(job)) => take_custody(&state, job).await,
                        Ok(None) => break,
                        Err(error) => {
                            tracing::warn!(%error, "claiming a result to keep");
                            break;
                        }
                    }
                }
                wait(&state, intervals.idle_poll).await;
            }
        })
    };
    let notifications = tokio::spawn(crate::generation::forward_notifications(state.clone()));
    let reconciler = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(intervals.reconcile_tick);
        loop {
            ticker.tick().await;
            reconcile_due(&state).await;
        }
    });
    let mut handles = vec![submitter, custody, reconciler, notifications];
    handles.extend(crate::events::spawn(state_for_events));
    Workers { handles }
}

/// Only the workers that move events to callers (sequencer, webhook relay, stream feed): for
/// a service without fal, which still has avatars to announce.
pub fn spawn_event_workers(state: AppState) -> Workers {
    Workers {
        handles: crate::events::spawn(state),
    }
}

async fn wait(state: &AppState, poll: Duration) {
    tokio::select! {
        _ = state.work.notified() => {},
        _ = tokio::time::sleep(poll) => {},
    }
}

async fn record(
    state: &AppState,
    job: &JobRecord,
    event: JobEvent,
    fence: i64,
    changes: JobChanges,
    cause: &str,
) {
    if let Err(error) = state
        .store
        .apply_event(job.id, event, Some(fence), &changes, cause)
        .await
    {
        tracing::warn!(job = %job.id, %error, cause, "recording a job event");
    }
}

fn failure(code: &str, message: impl Into<String>) -> JobChanges {
    JobChanges {
        error_code: Some(code.to_string()),
        error_message: Some(message.into()),
        ..JobChanges::default()
    }
}

/// The stable code of a submit fal certainly did not accept.
fn rejection_code(error: &fal::FalError) -> &'static str {
    match error {
        fal::FalError::Unauthorized { .. } => "fal_unauthorized",
        fal::FalError::BillingLocked { .. } => "fal_billing_locked",
        fal::FalError::Validation { .. } => "fal_rejected_input",
        fal::FalError::RateLimited { .. }
        | fal::FalError::Server { .. }
        | fal::FalError::Transport { .. } => "fal_unavailable",
        _ => "fal_error",
    }
}

/// Uploads the training data and submits the job to fal. The submit is sent at most once: the
/// job is marked before it leaves, so a crash after that is an unknown outcome, not a retry.
async fn submit(state: &AppState, job: JobRecord) {
    let fence = job.fence;
    if job.cancel_requested_at.is_some() {
        record(
            state,
            &job,
            JobEvent::Cancelled,
            fence,
            failure("cancelled", "cancelled before submission"),
            "cancel requested",
        )
        .await;
        return;
    }
    let (Some(fal), Some(base)) = (
        state.fal.as_ref(),
        state.training.public_base_url.as_deref(),
    ) else {
        record(
            state,
            &job,
            JobEvent::SubmitRejected,
            fence,
            failure("fal_not_configured", "the service has no fal connection"),
            "no fal",
        )
        .await;
        return;
    };
    if job.kind() == JobKind::Generation {
        submit_generation(state, fal, base, job).await;
        return;
    }
    let Some(params) = training::job_params(&job) else {
        record(
            state,
            &job,
            JobEvent::SubmitRejected,
            fence,
            failure("invalid_job", "the job's parameters cannot be read"),
            "bad params",
        )
        .await;
        return;
    };
    let scratch = match tempfile::Builder::new()
        .prefix("avatars-submit-")
        .tempdir_in(&state.settings.scratch_dir)
    {
        Ok(dir) => dir,
        Err(error) => {
            tracing::error!(%error, "creating a scratch directory");
            defer(state, &job, Duration::from_secs(10)).await;
            return;
        }
    };
    let archive = scratch.path().join("training.zip");
    if let Err((code, message)) = prepare_archive(state, &job, &archive).await {
        record(
            state,
            &job,
            JobEvent::SubmitRejected,
            fence,
            failure(code, message),
            "training data",
        )
        .await;
        return;
    }
    let lifecycle =
        fal::ObjectLifecycle::expires_after(state.training.timeout + Duration::from_secs(3600));
    let uploaded = match fal
        .client
        .upload_file(&archive, "application/zip", Some(&lifecycle))
        .await
    {
        Ok(uploaded) => uploaded,
        Err(error @ (fal::FalError::Unauthorized { .. } | fal::FalError::BillingLocked { .. })) => {
            let code = rejection_code(&error);
            fal.health.set_key_rejected(code == "fal_unauthorized");
            record(
                state,
                &job,
                JobEvent::SubmitRejected,
                fence,
                failure(code, error.to_string()),
                "upload refused",
            )
            .await;
            return;
        }
        Err(error) => {
            tracing::warn!(job = %job.id, %error, "uploading the training archive; will retry");
            defer(state, &job, Duration::from_secs(10)).await;
            return;
        }
    };
    drop(scratch);
    let kind = match job.avatar_id {
        Some(avatar) => state
            .store
            .get_avatar(domain::TenantId(job.tenant_id), domain::AvatarId(avatar))
            .await
            .map(|a| a.kind)
            .ok(),
        None => None,
    };
    let input = fal_input(&job, &params, uploaded.file_url.as_str(), kind);
    if params.trainer() == Trainer::Pro {
        tracing::warn!(job = %job.id, "submitting to fal-ai/flux-pro-trainer, which fal has deprecated");
    }
    send(state, fal, base, &job, &input).await;
}

/// Submits `input` for `job` (at most once: the submit is marked before it leaves) and records
/// the outcome.
async fn send(
    state: &AppState,
    fal: &crate::fal_runtime::FalRuntime,
    base: &str,
    job: &JobRecord,
    input: &Value,
) {
    let fence = job.fence;
    let job = job.clone();
    let webhook = match training::webhook_url(base, &job) {
        Ok(url) => url,
        Err(error) => {
            record(
                state,
                &job,
                JobEvent::SubmitRejected,
                fence,
                failure("invalid_public_base_url", error.to_string()),
                "webhook url",
            )
            .await;
            return;
        }
    };
    match state.store.mark_submit_started(job.id, fence).await {
        Ok(true) => {}
        Ok(false) => {
            // Lost the lease, or a cancel arrived: the reloaded job says which.
            if let Ok(Some(current)) = state.store.job_by_id(job.id).await {
                if current.cancel_requested_at.is_some() && current.fence == fence {
                    record(
                        state,
                        &current,
                        JobEvent::Cancelled,
                        fence,
                        failure("cancelled", "cancelled before submission"),
                        "cancel requested",
                    )
                    .await;
                }
            }
            return;
        }
        Err(error) => {
            tracing::warn!(job = %job.id, %error, "marking the submit");
            return;
        }
    }
    let options = fal::SubmitOptions {
        webhook_url: Some(webhook),
        ..fal::SubmitOptions::default()
    };
    let next_check = Utc::now()
        + chrono::Duration::from_std(state.training.status_check_interval).unwrap_or_default();
    match fal.client.submit(&job.endpoint, input, &options).await {
        Ok(submitted) => {
            fal.health.set_key_rejected(false);
            record(
                state,
                &job,
                JobEvent::Submitted,
                fence,
                JobChanges {
                    fal_request_id: Some(submitted.request_id.clone()),
                    status_url: Some(submitted.status_url.to_string()),
                    response_url: Some(submitted.response_url.to_string()),
                    cancel_url: Some(submitted.cancel_url.to_string()),
                    queue_position: submitted.queue_position.map(|p| p as i32),
                    next_check_at: Some(next_check),
                    ..JobChanges::default()
                },
                "fal accepted the submit",
            )
            .await;
            // A cancel that arrived while the submit was in flight is carried out now.
            if let Ok(Some(current)) = state.store.job_by_id(job.id).await {
                if current.cancel_requested_at.is_some() && !current.status().is_terminal() {
                    if let Err(error) =
                        training::cancel_job(state, &current, "cancelled by the caller").await
                    {
                        tracing::warn!(job = %job.id, ?error, "cancelling after submit");
                    }
                }
            }
        }
        Err(fal::SubmitError::NotAccepted(error)) => {
            let code = rejection_code(&error);
            fal.health.set_key_rejected(code == "fal_unauthorized");
            record(
                state,
                &job,
                JobEvent::SubmitRejected,
                fence,
                failure(code, error.to_string()),
                "fal refused the submit",
            )
            .await;
        }
        Err(fal::SubmitError::OutcomeUnknown { request_id, cause }) => {
            let changes = JobChanges {
                fal_request_id: request_id,
                next_check_at: Some(next_check),
                ..failure(
                    "submit_unknown",
                    format!("fal may or may not have accepted the submit: {cause}"),
                )
            };
            record(
                state,
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

/// Gives the job back for a later attempt (nothing was sent to fal).
async fn defer(state: &AppState, job: &JobRecord, after: Duration) {
    if let Err(error) = state.store.defer_lease(job.id, job.fence, after).await {
        tracing::warn!(job = %job.id, %error, "deferring a job");
    }
}

/// Writes the archive fal trains from: the caller's own (checked at request time) or one built
/// from the avatar's photos.
async fn prepare_archive(
    state: &AppState,
    job: &JobRecord,
    path: &std::path::Path,
) -> Result<(), (&'static str, String)> {
    if let Some(key) = &job.input_blob_key {
        return state
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
    let photos = state
        .store
        .list_photos(tenant, domain::AvatarId(avatar))
        .await
        .map_err(|e| ("training_data_unavailable", e.to_string()))?
        .unwrap_or_default();
    let rules = state.photo_set_rules();
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
    crate::training_data::build_training_archive(
        state,
        tenant,
        domain::AvatarId(avatar),
        job.trigger_phrase.clone(),
        path,
    )
    .await
    .map(|_| ())
    .map_err(|e| ("training_data_unavailable", e.to_string()))
}

/// The input fal's trainer expects.
fn fal_input(
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

/// Checks the jobs whose webhook is overdue or whose deadline passed.
async fn reconcile_due(state: &AppState) {
    let jobs = match state
        .store
        .claim_due_checks(
            state.worker_id,
            state.training.lease,
            state.training.status_check_interval,
            20,
        )
        .await
    {
        Ok(jobs) => jobs,
        Err(error) => {
            tracing::warn!(%error, "claiming jobs to check");
            return;
        }
    };
    for job in jobs {
        let fence = job.fence;
        let past_deadline = job.deadline_at.is_some_and(|d| d <= Utc::now());
        if past_deadline {
            training::time_out(state, &job, fence).await;
        } else if job.status() == JobStatus::Uploading {
            // Its worker died after sending the submit: fal may have the request.
            record(
                state,
                &job,
                JobEvent::SubmitOutcomeUnknown,
                fence,
                failure(
                    "submit_unknown",
                    "the worker stopped after sending the submit",
                ),
                "submit interrupted",
            )
            .await;
        } else {
            training::reconcile_job(state, &job, Some(fence)).await;
        }
        let _ = state.store.release_lease(job.id, fence).await;
    }
}

/// Fetches a missing result and copies a LoRA's files into our storage (fal's CDN copy
/// expires), then records the model.
async fn take_custody(state: &AppState, job: JobRecord) {
    let fence = job.fence;
    let Some(fal) = state.fal.as_ref() else {
        return;
    };
    if job.kind() == JobKind::Generation && job.status() == JobStatus::Failed {
        resubmit_with_our_lora(state, fal, job).await;
        return;
    }
    let mut job = job;
    if job.result_fetch_needed {
        let Some(request) = training::request_ref(state, &job) else {
            return;
        };
        match fal.client.result(&request).await {
            Ok(result) => {
                if let Err(error) = state
                    .store
                    .store_fetched_result(job.id, fence, &result)
                    .await
                {
                    tracing::warn!(job = %job.id, %error, "storing a fetched result");
                    return;
                }
                job.result = Some(result);
            }
            Err(error) => {
                tracing::warn!(job = %job.id, %error, "fetching a result; will retry");
                defer(state, &job, Duration::from_secs(10)).await;
                return;
            }
        }
    }
    if job.kind() == JobKind::Generation {
        keep_images(state, fal, job).await;
        return;
    }
    let Some(params) = training::job_params(&job) else {
        return;
    };
    let result = job.result.clone().unwrap_or(Value::Null);
    let trigger_phrase = job.trigger_phrase.clone().unwrap_or_default();
    let model = match params.trainer().model_type() {
        // Reached after a result fetch (the webhook carried none); with the result in hand the
        // finetune id is recorded at once.
        domain::ModelType::Finetune => match training::finetune_model(&job, &result) {
            Some(model) => model,
            None => {
                tracing::error!(job = %job.id, "the Pro trainer's result has no finetune id");
                return;
            }
        },
        domain::ModelType::Lora => {
            let output = match serde_json::from_value::<fal::models::LoraTrainingOutput>(result) {
                Ok(output) => output,
                Err(error) => {
                    tracing::error!(job = %job.id, %error, "the LoRA trainer's result has no weights file");
                    return;
                }
            };
            let prefix = format!("tenants/{}/models/{}", job.tenant_id, job.id);
            let weights_key = format!("{prefix}/pytorch_lora_weights.safetensors");
            let (sha256, bytes) = match copy_to_blob(
                state,
                fal,
                &output.diffusers_lora_file.url,
                &weights_key,
            )
            .await
            {
                Ok(copied) => copied,
                Err(error) => {
                    tracing::warn!(job = %job.id, %error, "copying the LoRA weights; will retry");
                    defer(state, &job, Duration::from_secs(10)).await;
                    return;
                }
            };
            let config_key = match &output.config_file {
                Some(file) => {
                    let key = format!("{prefix}/config.json");
                    match copy_to_blob(state, fal, &file.url, &key).await {
                        Ok(_) => Some(key),
                        Err(error) => {
                            tracing::warn!(job = %job.id, %error, "copying the LoRA config; will retry");
                            defer(state, &job, Duration::from_secs(10)).await;
                            return;
                        }
                    }
                }
                None => None,
            };
            NewModel {
                model_type: domain::ModelType::Lora,
                trigger_phrase,
                artifact_key: Some(weights_key),
                artifact_sha256: Some(sha256),
                artifact_bytes: Some(bytes),
                config_key,
                fal_artifact_url: Some(output.diffusers_lora_file.url.clone()),
                finetune_id: None,
            }
        }
    };
    if let Err(error) = state.store.complete_training(job.id, fence, &model).await {
        tracing::warn!(job = %job.id, %error, "recording the model");
    }
}

/// Streams a file from fal's CDN into the blob store, hashing it on the way.
async fn copy_to_blob(
    state: &AppState,
    fal: &crate::fal_runtime::FalRuntime,
    url: &str,
    key: &str,
) -> anyhow::Result<(String, u64)> {
    let url = url::Url::parse(url)?;
    let mut stream = fal.client.download(&url).await?;
    let scratch = tempfile::Builder::new()
        .prefix("avatars-artifact-")
        .tempfile_in(&state.settings.scratch_dir)?;
    let mut file = tokio::fs::File::from_std(scratch.reopen()?);
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    drop(file);
    state.blobs.put_file(key, scratch.path()).await?;
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// Submits one generation item: the stored fal input, with the model's current LoRA URL.
async fn submit_generation(
    state: &AppState,
    fal: &crate::fal_runtime::FalRuntime,
    base: &str,
    job: JobRecord,
) {
    let fence = job.fence;
    let mut input = job.params.clone();
    if job.endpoint == domain::LORA_GENERATION_ENDPOINT {
        let model = match generation_model(state, &job).await {
            Ok(model) => model,
            Err((code, message)) => {
                record(
                    state,
                    &job,
                    JobEvent::SubmitRejected,
                    fence,
                    failure(code, message),
                    "no model",
                )
                .await;
                return;
            }
        };
        let url = match model.fal_artifact_url.clone() {
            Some(url) => url,
            None => match upload_lora(state, fal, &model).await {
                Ok(url) => url,
                Err(error) => {
                    tracing::warn!(job = %job.id, %error, "uploading the LoRA; will retry");
                    defer(state, &job, Duration::from_secs(10)).await;
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
    send(state, fal, base, &job, &input).await;
}

/// The model a generation item uses.
async fn generation_model(
    state: &AppState,
    job: &JobRecord,
) -> Result<store::ModelRecord, (&'static str, String)> {
    let generation = match job.generation_id {
        Some(id) => state.store.generation_by_id(id).await.ok().flatten(),
        None => None,
    };
    let model_id = generation.and_then(|g| g.model_id);
    let model = match model_id {
        Some(id) => state
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
async fn upload_lora(
    state: &AppState,
    fal: &crate::fal_runtime::FalRuntime,
    model: &store::ModelRecord,
) -> anyhow::Result<String> {
    let key = model
        .artifact_key
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("the model has no stored LoRA"))?;
    let scratch = tempfile::Builder::new()
        .prefix("avatars-lora-")
        .tempfile_in(&state.settings.scratch_dir)?;
    state.blobs.get_to_file(key, scratch.path()).await?;
    let uploaded = fal
        .client
        .upload_file(scratch.path(), "application/octet-stream", None)
        .await?;
    Ok(uploaded.file_url.to_string())
}

/// A LoRA item failed because fal could not fetch the LoRA (its CDN copy expired). That
/// request certainly failed, so sending it again cannot double anything: upload our own copy,
/// remember its URL on the model, and create the next attempt.
async fn resubmit_with_our_lora(
    state: &AppState,
    fal: &crate::fal_runtime::FalRuntime,
    job: JobRecord,
) {
    let model = match generation_model(state, &job).await {
        Ok(model) => model,
        Err((_, message)) => {
            tracing::warn!(job = %job.id, message, "no model to resubmit with");
            give_up(state, &job).await;
            return;
        }
    };
    let url = match upload_lora(state, fal, &model).await {
        Ok(url) => url,
        Err(error) => {
            tracing::warn!(job = %job.id, %error, "re-uploading the LoRA; will retry");
            defer(state, &job, Duration::from_secs(10)).await;
            return;
        }
    };
    match state
        .store
        .resubmit_generation_item(
            job.id,
            job.fence,
            model.id,
            &url,
            &training::new_webhook_token(),
        )
        .await
    {
        Ok(Some(next)) => {
            tracing::info!(job = %job.id, next = %next, "resubmitting with the re-uploaded LoRA");
            state.work.notify_waiters();
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(job = %job.id, %error, "recording a resubmit"),
    }
}

async fn give_up(state: &AppState, job: &JobRecord) {
    match state.store.finish_generation_item(job.id, job.fence).await {
        Ok(true) => {
            if let Some(generation) = job.generation_id {
                crate::generation::announce(state, generation);
            }
        }
        Ok(false) => {}
        Err(error) => tracing::warn!(job = %job.id, %error, "closing a generation item"),
    }
}

/// Copies a succeeded item's images from fal's CDN into our storage and records them.
async fn keep_images(state: &AppState, fal: &crate::fal_runtime::FalRuntime, job: JobRecord) {
    let Some(generation_id) = job.generation_id else {
        return;
    };
    let result = job.result.clone().unwrap_or(Value::Null);
    let output = match serde_json::from_value::<fal::models::ImagesOutput>(result) {
        Ok(output) => output,
        Err(error) => {
            tracing::error!(job = %job.id, %error, "the generation's result has no images");
            give_up(state, &job).await;
            return;
        }
    };
    let item = job.item_index.unwrap_or(0);
    let mut images = Vec::with_capacity(output.images.len());
    for (index, image) in output.images.iter().enumerate() {
        let content_type = image
            .content_type
            .clone()
            .filter(|t| t.starts_with("image/"))
            .unwrap_or_else(|| {
                if image.url.ends_with(".png") {
                    "image/png".into()
                } else {
                    "image/jpeg".into()
                }
            });
        let extension = match content_type.as_str() {
            "image/png" => "png",
            "image/webp" => "webp",
            _ => "jpg",
        };
        let key = format!(
            "tenants/{}/generations/{generation_id}/{item}-{index}.{extension}",
            job.tenant_id
        );
        let bytes = match copy_to_blob(state, fal, &image.url, &key).await {
            Ok((_, bytes)) => bytes,
            Err(error) => {
                tracing::warn!(job = %job.id, %error, "copying a generated image; will retry");
                defer(state, &job, Duration::from_secs(10)).await;
                return;
            }
        };
        images.push(store::GenerationImage {
            generation_id,
            job_id: job.id,
            item_index: item,
            image_index: index as i32,
            blob_key: key,
            content_type,
            width: image.width.map(|w| w as i32),
            height: image.height.map(|h| h as i32),
            bytes: bytes as i64,
            seed: output.seed.map(|s| s.to_string()),
            nsfw: output.has_nsfw_concepts.get(index).copied(),
        });
    }
    match state
        .store
        .complete_generation_item(job.id, job.fence, &images)
        .await
    {
        Ok(true) => crate::generation::announce(state, generation_id),
        Ok(false) => {}
        Err(error) => tracing::warn!(job = %job.id, %error, "recording generated images"),
    }
}
