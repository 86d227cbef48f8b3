//! Trainings: starting one (checked request, photo set or the caller's archive, one job),
//! reading them back, cancelling; and the presets callers choose from.

use domain::training::{TrainingContext, TrainingInput, TrainingRequest};
use domain::{AvatarId, FieldViolation, JobKind, JobStatus, TenantId};
use serde_json::Value;
use store::{JobRecord, ModelRecord, NewTraining, ONE_ACTIVE_TRAINING};
use uuid::Uuid;

use crate::context::Service;
use crate::error::{Attachment, ErrorKind, InputLocation, ServiceError};
use crate::jobs;
use crate::training_data::{self, ArchiveCheckError};
use crate::{AvatarListing, PageRequest};

/// A training with its model, once that is in the service's custody.
#[derive(Debug)]
pub struct Training {
    pub job: JobRecord,
    pub model: Option<ModelRecord>,
}

/// Starts a training of the avatar: checks the request and the photo set (or fetches, checks and
/// keeps the caller's archive), and stores the job; the workers upload and submit it.
#[tracing::instrument(
    skip_all,
    fields(tenant_id = %tenant, avatar_id = %avatar_id, training_id = tracing::field::Empty)
)]
pub async fn create(
    service: &Service,
    tenant: TenantId,
    avatar_id: AvatarId,
    input: &TrainingInput,
    idempotency: Option<&store::IdempotencyHold>,
) -> Result<Training, ServiceError> {
    let avatar = jobs::tenant_avatar(service, tenant, avatar_id).await?;
    let settings = &service.settings.jobs;
    let context = TrainingContext {
        kind: avatar.kind,
        selection: &settings.selection,
        portrait_defaults: &settings.portrait_defaults,
    };
    let request = TrainingRequest::parse(input, context, |url| check_archive_url(service, url))?;
    let expected = domain::training_duration(&request.params);
    check_fits_timeout(input, expected, settings.timeout)?;
    service.require_fal()?;
    if avatar.status == domain::AvatarStatus::Training {
        return Err(training_in_progress());
    }
    let job_id = Uuid::now_v7();
    tracing::Span::current().record("training_id", tracing::field::display(job_id));
    let input_blob_key = match &request.images_data_url {
        Some(url) => {
            let policy = service.settings.photos.face_policy.for_kind(avatar.kind);
            Some(store_callers_archive(service, tenant, job_id, url, policy).await?)
        }
        None => {
            check_photo_set(service, tenant, &avatar).await?;
            None
        }
    };
    let trainer = request.trainer;
    if let Some(deprecation) = trainer.deprecation() {
        tracing::warn!(
            trainer = trainer.as_str(),
            deprecation,
            "training with a deprecated trainer"
        );
    }
    let new = NewTraining {
        id: job_id,
        tenant_id: tenant,
        avatar_id,
        trainer: trainer.as_str().to_string(),
        endpoint: trainer.endpoint().to_string(),
        preset: request.preset.as_str().to_string(),
        params: Value::Object(request.params.to_json()),
        trigger_phrase: request
            .trigger_phrase
            .map(|t| t.as_str().to_string())
            .unwrap_or(avatar.trigger_phrase),
        input_blob_key,
        estimated_cost_usd: domain::estimate_training_cost(&request.params, &settings.prices),
        deadline_at: jobs::deadline_from_now(settings),
        traceparent: crate::trace_context::current_traceparent(),
        estimated_seconds: expected.as_secs_f64(),
    };
    let job = insert(service, &new, idempotency).await?;
    service.work.notify_waiters();
    load(service, job).await
}

/// A training expected to run longer than `FAL_TRAINING_TIMEOUT` would be paid and then
/// cancelled as timed out: it is refused before anything is stored or sent. The field at fault
/// is the override that set the amount of work, or else the preset.
fn check_fits_timeout(
    input: &TrainingInput,
    expected: std::time::Duration,
    cap: std::time::Duration,
) -> Result<(), ServiceError> {
    if domain::fits_deadline(expected, cap) {
        return Ok(());
    }
    let overrides = input.overrides.as_ref();
    let field = ["steps", "iterations"]
        .into_iter()
        .find(|key| overrides.is_some_and(|o| o.contains_key(*key)))
        .map_or_else(|| "preset".to_string(), |key| format!("overrides.{key}"));
    Err(ServiceError::refused_field(
        "estimate_exceeds_timeout",
        InputLocation::Body,
        field,
        format!(
            "makes a training expected to run {} s, longer than the {} s a training may take \
             (FAL_TRAINING_TIMEOUT); ask for less work",
            expected.as_secs(),
            cap.as_secs()
        ),
    )
    .with_extension("estimated_duration_seconds", expected.as_secs())
    .with_extension("timeout_seconds", cap.as_secs()))
}

/// `images_data_url` must be one the archive fetcher may fetch.
fn check_archive_url(service: &Service, url: &str) -> Result<(), FieldViolation> {
    match service.archive_fetcher.check_url(url) {
        Ok(_) => Ok(()),
        Err(error) => Err(FieldViolation::new(
            "images_data_url",
            error.code(),
            error.to_string(),
        )),
    }
}

/// The set must hold enough photos that count under the avatar kind's face policy; the
/// refusal names the photos at fault and carries the whole set report.
async fn check_photo_set(
    service: &Service,
    tenant: TenantId,
    avatar: &domain::Avatar,
) -> Result<(), ServiceError> {
    let photos = service.store.photos_of(tenant, avatar.id).await?;
    let report = crate::photo_set::report_for(service, avatar, &photos);
    if report.trainable {
        return Ok(());
    }
    let (count, usable) = (report.photo_count, report.usable_photos);
    let detail = if usable == count {
        format!(
            "the avatar has {count} photos; a training needs {} to {}",
            report.min_photos, report.max_photos
        )
    } else {
        format!(
            "the avatar has {count} photos but only {usable} show exactly one usable face; \
             a {} avatar's training needs {} to {} such photos (see `photos`)",
            avatar.kind.as_str(),
            report.min_photos,
            report.max_photos
        )
    };
    let (min_photos, max_photos) = (report.min_photos, report.max_photos);
    Err(ServiceError::conflict("photo_set_not_trainable", detail)
        .with_extension("photo_count", count)
        .with_extension("usable_photos", usable)
        .with_extension("min_photos", min_photos)
        .with_extension("max_photos", max_photos)
        .with_attachment(Attachment::PhotoSet(Box::new(report))))
}

/// Stores the job; a kept archive is removed again when that fails.
async fn insert(
    service: &Service,
    new: &NewTraining,
    idempotency: Option<&store::IdempotencyHold>,
) -> Result<JobRecord, ServiceError> {
    let limit = service.settings.tenants.max_active_trainings;
    match service.store.insert_training(new, limit, idempotency).await {
        Ok(job) => Ok(job),
        Err(error) => {
            if let Some(key) = &new.input_blob_key {
                let _ = service.blobs.delete(key).await;
            }
            if error.is_conflict_on(ONE_ACTIVE_TRAINING) {
                return Err(training_in_progress());
            }
            if let store::StoreError::QuotaReached { limit } = error {
                return Err(ServiceError::limit_reached(
                    "training_quota_exceeded",
                    format!("{limit} trainings are already running for this tenant; wait for one to finish"),
                    limit,
                ));
            }
            Err(error.into())
        }
    }
}

fn training_in_progress() -> ServiceError {
    ServiceError::conflict(
        "training_in_progress",
        "a training of this avatar is already running; wait for it or cancel it",
    )
}

fn archive_unusable(detail: impl Into<String>) -> ServiceError {
    ServiceError::new(ErrorKind::Invalid, "archive_unusable", detail)
}

/// Fetches and checks a caller's archive and keeps it for the worker, so fal trains on exactly
/// the bytes that were checked. Returns its blob key.
async fn store_callers_archive(
    service: &Service,
    tenant: TenantId,
    job_id: Uuid,
    url: &str,
    policy: domain::FacePolicy,
) -> Result<String, ServiceError> {
    let checked = training_data::fetch_and_inspect(service, url, policy).await;
    let (inspection, scratch, path) = match checked {
        Ok(checked) => checked,
        Err(ArchiveCheckError::Fetch(error)) => {
            return Err(ServiceError::invalid_field(
                InputLocation::Body,
                "images_data_url",
                error.code(),
                error.to_string(),
            ))
        }
        Err(ArchiveCheckError::Archive(error)) => {
            return Err(archive_unusable(error.message()).with_extension("reason", error.code()))
        }
        Err(error) => return Err(ServiceError::internal(error)),
    };
    if !inspection.usable() {
        let detail = inspection.problems.join("; ");
        let attachment = Attachment::ArchiveInspection(Box::new(inspection));
        return Err(archive_unusable(detail).with_attachment(attachment));
    }
    let key = format!("tenants/{tenant}/jobs/{job_id}/input.zip");
    service.blobs.put_file(&key, &path).await.map_err(|e| {
        ServiceError::unavailable(
            "storage_unavailable",
            "the archive could not be stored; retry later",
        )
        .with_source(e)
    })?;
    drop(scratch);
    Ok(key)
}

/// A training with its model (read only once it succeeded).
async fn load(service: &Service, job: JobRecord) -> Result<Training, ServiceError> {
    let model = if job.status() == JobStatus::Succeeded {
        service.store.model_of_training(job.id).await?
    } else {
        None
    };
    Ok(Training { job, model })
}

/// The tenant's training `id` (a job of another kind is no training).
async fn training_job(
    service: &Service,
    tenant: TenantId,
    id: Uuid,
) -> Result<JobRecord, ServiceError> {
    match service.store.get_job(tenant, id).await {
        Ok(job) if job.kind() == JobKind::Training => Ok(job),
        Ok(_) | Err(store::StoreError::NotFound) => Err(ServiceError::training_not_found(id)),
        Err(error) => Err(error.into()),
    }
}

/// One of the tenant's trainings.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant, training_id = %id))]
pub async fn get(service: &Service, tenant: TenantId, id: Uuid) -> Result<Training, ServiceError> {
    let job = training_job(service, tenant, id).await?;
    if job.status().is_active() {
        jobs::watch(service, tenant, store::JobWatch::Job(id)).await;
    }
    load(service, job).await
}

/// A page of an avatar's trainings, newest first, and whether more follow.
#[tracing::instrument(skip_all, fields(tenant_id = %of.tenant, avatar_id = %of.avatar))]
pub async fn list(
    service: &Service,
    of: AvatarListing,
) -> Result<(Vec<Training>, bool), ServiceError> {
    let PageRequest { after, limit } = of.page;
    let found = service
        .store
        .list_trainings(of.tenant, of.avatar, after, limit);
    jobs::load_page(of.avatar, found.await?, |job| load(service, job)).await
}

/// Cancels a training: at once when not yet submitted, on fal otherwise. If fal already
/// finished it, its result wins and the training returned shows it.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant, training_id = %id))]
pub async fn cancel(
    service: &Service,
    tenant: TenantId,
    id: Uuid,
) -> Result<Training, ServiceError> {
    let job = training_job(service, tenant, id).await?;
    if job.status().is_terminal() {
        return Err(ServiceError::conflict(
            "training_finished",
            format!("the training already ended as {}", job.status.as_str()),
        )
        .with_extension("training_status", job.status.as_str()));
    }
    let job = jobs::cancel_for_caller(service, tenant, id).await?;
    load(service, job).await
}

/// A training preset with its price under this service's configuration.
#[derive(Debug, Clone)]
pub struct TrainingPresetOffer {
    pub preset: domain::TrainingPreset,
    /// `None` when the price is unknown.
    pub estimated_cost_usd: Option<f64>,
}

/// A generation preset with the price of one image per model type.
#[derive(Debug, Clone)]
pub struct GenerationPresetOffer {
    pub preset: domain::GenerationPreset,
    pub estimated_lora_cost_usd: f64,
    pub estimated_finetune_cost_usd: f64,
}

/// Every preset callers may choose from.
#[derive(Debug, Clone)]
pub struct Presets {
    pub training: Vec<TrainingPresetOffer>,
    pub generation: Vec<GenerationPresetOffer>,
}

/// Every training and generation preset, with effective parameters and estimated costs.
pub fn presets(service: &Service) -> Presets {
    let settings = &service.settings.jobs;
    let training = domain::training_presets(&settings.portrait_defaults)
        .into_iter()
        .map(|preset| TrainingPresetOffer {
            estimated_cost_usd: domain::estimate_training_cost(&preset.params, &settings.prices),
            preset,
        })
        .collect();
    let prices = domain::GenerationPrices::default();
    let generation = domain::generation_presets()
        .into_iter()
        .map(|preset| {
            let (width, height) = preset.image_size.dimensions();
            GenerationPresetOffer {
                estimated_lora_cost_usd: domain::estimate_lora_generation_cost(
                    width, height, 1, &prices,
                ),
                estimated_finetune_cost_usd: domain::estimate_finetune_generation_cost(1, &prices),
                preset,
            }
        })
        .collect();
    Presets {
        training,
        generation,
    }
}
