//! Custody: results fetched and artifacts (LoRA weights, generated images) copied from fal's
//! CDN into our storage, because fal's copies expire.

use std::fmt::Display;

use domain::{JobEvent, JobKind, JobStatus};
use futures_util::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use store::{JobChanges, JobRecord, NewModel};
use tokio::io::AsyncWriteExt;

use super::defer;
use super::submitter::{generation_model, upload_lora};
use crate::context::Service;
use crate::fal_link::FalLink;
use crate::jobs;

/// Fetches a missing result and copies a LoRA's files into our storage (fal's CDN copy
/// expires), then records the model.
/// Runs in the job's span (see `job_span!`).
pub(super) async fn take_custody(service: &Service, job: JobRecord) {
    let fence = job.fence;
    let Some(fal) = service.fal.as_ref() else {
        return;
    };
    if job.kind() == JobKind::Generation && job.status() == JobStatus::Failed {
        resubmit_with_our_lora(service, fal, job).await;
        return;
    }
    let mut job = job;
    if job.result_fetch_needed {
        let Some(request) = jobs::request_ref(service, &job) else {
            return;
        };
        match service
            .metrics
            .fal_call(
                crate::metrics::FalOperation::Result,
                fal.client.billed_result(&request),
            )
            .await
        {
            Ok(fal::BilledResult {
                output: result,
                billable_units,
            }) => {
                crate::usage::record_billing(service, &job, billable_units).await;
                if let Err(error) = service
                    .store
                    .store_fetched_result(job.id, fence, &result)
                    .await
                {
                    retry_or_fail(service, &job, "storing a fetched result", &error).await;
                    return;
                }
                job.result = Some(result);
            }
            Err(error) => {
                retry_or_fail(service, &job, "fetching the result", &error).await;
                return;
            }
        }
    }
    if job.kind() == JobKind::Generation {
        keep_images(service, fal, job).await;
        return;
    }
    let Some(params) = jobs::job_params(&job) else {
        return;
    };
    let result = job.result.clone().unwrap_or(Value::Null);
    let trigger_phrase = job.trigger_phrase.clone().unwrap_or_default();
    let model = match params.trainer().model_type() {
        // Reached after a result fetch (the webhook carried none); with the result in hand the
        // finetune id is recorded at once.
        domain::ModelType::Finetune => match jobs::finetune_model(&job, &result) {
            Some(model) => model,
            None => {
                fail_custody(service, &job, "the trainer's result has no finetune id").await;
                return;
            }
        },
        domain::ModelType::Lora => {
            let missing = "the trainer's result has no weights file";
            let Some(output) =
                result_as::<fal::models::LoraTrainingOutput>(service, &job, missing).await
            else {
                return;
            };
            let prefix = format!("tenants/{}/models/{}", job.tenant_id, job.id);
            let weights_key = format!("{prefix}/pytorch_lora_weights.safetensors");
            let (sha256, bytes) =
                match copy_to_blob(service, fal, &output.diffusers_lora_file.url, &weights_key)
                    .await
                {
                    Ok(copied) => copied,
                    Err(error) => {
                        retry_or_fail(service, &job, "copying the LoRA weights", &error).await;
                        return;
                    }
                };
            let config_key = match &output.config_file {
                Some(file) => {
                    let key = format!("{prefix}/config.json");
                    match copy_to_blob(service, fal, &file.url, &key).await {
                        Ok(_) => Some(key),
                        Err(error) => {
                            retry_or_fail(service, &job, "copying the LoRA config", &error).await;
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
    match service.store.complete_training(job.id, fence, &model).await {
        Ok(true) => {}
        Ok(false) => {
            let copied = [model.artifact_key, model.config_key];
            discard(service, &job, copied.into_iter().flatten().collect()).await;
        }
        Err(error) => retry_or_fail(service, &job, "recording the model", &error).await,
    }
}

/// Custody copied artifacts for a job that ended meanwhile without them (cancelled because its
/// avatar was deleted, say): they are queued for deletion, unless the job is still someone's.
async fn discard(service: &Service, job: &JobRecord, keys: Vec<String>) {
    if keys.is_empty() {
        return;
    }
    if let Err(error) = service.store.discard_artifacts(job.id, &keys).await {
        tracing::warn!(%error, "queueing discarded artifacts for deletion");
    }
    crate::workers::janitor::purge_deleted_blobs(service).await;
}

/// A custody attempt failed: the job is tried again after a growing wait
/// (`CUSTODY_RETRY_INTERVAL`, doubling) until `CUSTODY_MAX_ATTEMPTS` attempts failed, and then
/// ends `failed` with `artifact_unavailable`.
async fn retry_or_fail(
    service: &Service,
    job: &JobRecord,
    what: &str,
    error: &(dyn Display + Sync),
) {
    let settings = &service.settings.jobs;
    let attempts = match service
        .store
        .record_custody_failure(job.id, job.fence, settings.custody_retry_interval)
        .await
    {
        Ok(Some(attempts)) => attempts,
        // Another worker holds the job now.
        Ok(None) => return,
        Err(store_error) => {
            tracing::warn!(%error, %store_error, what, "custody failed and could not be counted");
            defer(service, job, settings.custody_retry_interval).await;
            return;
        }
    };
    if attempts < settings.custody_max_attempts {
        tracing::warn!(%error, what, attempts, "custody failed; will retry");
        return;
    }
    tracing::warn!(%error, what, attempts, "custody failed for the last time");
    fail_custody(
        service,
        job,
        &format!("{what} failed {attempts} times; last error: {error}"),
    )
    .await;
}

/// The job's result read as fal's `T`; when it is not one, the custody fails saying what is
/// `missing`.
async fn result_as<T: serde::de::DeserializeOwned>(
    service: &Service,
    job: &JobRecord,
    missing: &str,
) -> Option<T> {
    let result = job.result.clone().unwrap_or(Value::Null);
    match serde_json::from_value(result) {
        Ok(output) => Some(output),
        Err(error) => {
            tracing::error!(%error, "{missing}");
            fail_custody(service, job, missing).await;
            None
        }
    }
}

/// Ends a job whose result or artifacts cannot be taken into custody: `failed` with
/// `artifact_unavailable`. A training's avatar is released (it keeps its previous model or
/// returns to `ready`) and `training.failed` is emitted, in the same transaction; a generation
/// item closes and its generation is announced when it was the last.
async fn fail_custody(service: &Service, job: &JobRecord, message: &str) {
    if job.status() != JobStatus::Finishing {
        // A failed generation item that was to be resubmitted with our copy of the LoRA.
        give_up(service, job).await;
        return;
    }
    let changes = JobChanges {
        error_code: Some(ARTIFACT_UNAVAILABLE.to_string()),
        error_message: Some(format!(
            "fal finished, but its result could not be kept: {message}"
        )),
        custody_needed: Some(false),
        result_fetch_needed: Some(false),
        ..JobChanges::default()
    };
    super::record(
        service,
        job,
        JobEvent::ArtifactUnavailable,
        job.fence,
        changes,
        "custody attempts exhausted",
    )
    .await;
    if let Some(generation) = job.generation_id {
        crate::generation_items::announce(service, generation);
    }
}

/// The code of a job whose result or artifacts could not be taken into custody.
pub const ARTIFACT_UNAVAILABLE: &str = "artifact_unavailable";

/// Streams a file from fal's CDN into the blob store, hashing it on the way.
pub(super) async fn copy_to_blob(
    service: &Service,
    fal: &FalLink,
    url: &str,
    key: &str,
) -> anyhow::Result<(String, u64)> {
    let url = url::Url::parse(url)?;
    let mut stream = service
        .metrics
        .fal_call(
            crate::metrics::FalOperation::Download,
            fal.client.download(&url),
        )
        .await?;
    let scratch = service.scratch_file("artifact")?;
    // Buffered: each write of a file is handed to a blocking thread.
    let mut file = tokio::io::BufWriter::with_capacity(
        store::FILE_CHUNK_BYTES,
        tokio::fs::File::from_std(scratch.reopen()?),
    );
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
    service.blobs.put_file(key, scratch.path()).await?;
    Ok((hex::encode(hasher.finalize()), bytes))
}

/// A LoRA item failed because fal could not fetch the LoRA (its CDN copy expired). That
/// request certainly failed, so sending it again cannot double anything: upload our own copy,
/// remember its URL on the model, and create the next attempt.
pub(super) async fn resubmit_with_our_lora(service: &Service, fal: &FalLink, job: JobRecord) {
    let model = match generation_model(service, &job).await {
        Ok(model) => model,
        Err((_, message)) => {
            tracing::warn!(message, "no model to resubmit with");
            give_up(service, &job).await;
            return;
        }
    };
    let url = match upload_lora(service, fal, &model).await {
        Ok(url) => url,
        Err(error) => {
            retry_or_fail(service, &job, "re-uploading the LoRA", &error).await;
            return;
        }
    };
    match service
        .store
        .resubmit_generation_item(job.id, job.fence, model.id, &url)
        .await
    {
        Ok(Some(next)) => {
            tracing::info!(next = %next, "resubmitting with the re-uploaded LoRA");
            service.work.notify_waiters();
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "recording a resubmit"),
    }
}

pub(super) async fn give_up(service: &Service, job: &JobRecord) {
    match service
        .store
        .finish_generation_item(job.id, job.fence)
        .await
    {
        Ok(true) => {
            if let Some(generation) = job.generation_id {
                crate::generation_items::announce(service, generation);
            }
        }
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, "closing a generation item"),
    }
}

/// Copies a succeeded item's images from fal's CDN into our storage and records them.
pub(super) async fn keep_images(service: &Service, fal: &FalLink, job: JobRecord) {
    let Some(generation_id) = job.generation_id else {
        return;
    };
    let missing = "the result has no images";
    let Some(output) = result_as::<fal::models::ImagesOutput>(service, &job, missing).await else {
        return;
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
        let bytes = match copy_to_blob(service, fal, &image.url, &key).await {
            Ok((_, bytes)) => bytes,
            Err(error) => {
                retry_or_fail(service, &job, "copying a generated image", &error).await;
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
    match service
        .store
        .complete_generation_item(job.id, job.fence, &images)
        .await
    {
        Ok(true) => crate::generation_items::announce(service, generation_id),
        Ok(false) => {
            let copied = images.into_iter().map(|image| image.blob_key).collect();
            discard(service, &job, copied).await;
        }
        Err(error) => retry_or_fail(service, &job, "recording generated images", &error).await,
    }
}
