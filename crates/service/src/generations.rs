//! Generations: images from a trained avatar. Starting one (checked request to fal inputs, cost,
//! one job per prompt), waiting for it, reading it back and serving its stored images.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use domain::generation::{prompt_with_trigger, GenerationInput, GenerationRequest, LoraImageSize};
use domain::{AvatarId, ModelType, TenantId, TrainedModel};
use futures_util::stream::BoxStream;
use serde_json::{json, Value};
use store::{GenerationImage, GenerationRecord, JobRecord, NewGeneration, NewGenerationItem};
use uuid::Uuid;

use crate::context::Service;
use crate::error::ServiceError;
use crate::generation_items::latest_attempts;
use crate::jobs;
use crate::{AvatarListing, PageRequest};

/// A generation with what callers see of it: its items' jobs (every attempt) and its images.
#[derive(Debug)]
pub struct Generation {
    pub record: GenerationRecord,
    pub jobs: Vec<JobRecord>,
    pub images: Vec<GenerationImage>,
}

/// A generation just started.
#[derive(Debug)]
pub struct Started {
    pub generation: Generation,
    /// It finished within the wait asked for.
    pub finished: bool,
}

/// What a request resolves to for the avatar's model.
struct Plan {
    endpoint: &'static str,
    model_type: ModelType,
    /// fal's input without the prompt.
    input: Value,
    cost_per_prompt: f64,
}

/// Starts a generation with the avatar's trained model: one fal request per prompt, submitted
/// by the workers. With `wait`, answers once it finished or the wait is over.
#[tracing::instrument(
    skip_all,
    fields(tenant_id = %tenant, avatar_id = %avatar_id, generation_id = tracing::field::Empty)
)]
pub async fn create(
    service: &Service,
    tenant: TenantId,
    avatar_id: AvatarId,
    input: &GenerationInput,
    wait: Option<Duration>,
    idempotency: Option<&store::IdempotencyHold>,
) -> Result<Started, ServiceError> {
    let avatar = jobs::tenant_avatar(service, tenant, avatar_id).await?;
    let settings = &service.settings.jobs;
    let model_type = avatar.model.as_ref().map(|m| m.model_type);
    let request = GenerationRequest::parse(input, model_type, settings.generation_max_prompts)?;
    let Some(model) = avatar.model else {
        return Err(ServiceError::conflict(
            "avatar_not_trained",
            "the avatar has no trained model yet; train it first",
        )
        .with_extension("avatar_status", avatar.status.as_str()));
    };
    service.require_fal()?;
    let plan = plan(service, &request, &model).await?;
    let new = new_generation(service, tenant, avatar_id, &request, &model, &plan);
    tracing::Span::current().record("generation_id", tracing::field::display(new.id));
    let limit = service.settings.tenants.max_active_generations;
    let (record, jobs) = match service
        .store
        .insert_generation(&new, limit, idempotency)
        .await
    {
        Err(store::StoreError::QuotaReached { limit }) => {
            return Err(ServiceError::limit_reached(
                "generation_quota_exceeded",
                format!(
                "{limit} generations are already running for this tenant; wait for one to finish"
            ),
                limit,
            ))
        }
        other => other?,
    };
    service.work.notify_waiters();
    let Some(wait) = wait else {
        // As this request created it; the submitter may have moved it on since (GET shows it).
        let generation = Generation {
            record,
            jobs,
            images: Vec::new(),
        };
        return Ok(Started {
            generation,
            finished: false,
        });
    };
    let finished = wait_until_finished(service, record.id, wait).await;
    Ok(Started {
        generation: load(service, record).await?,
        finished,
    })
}

/// Waits up to `wait` for every item of the generation to finish; true when they did.
pub async fn wait_until_finished(service: &Service, generation_id: Uuid, wait: Duration) -> bool {
    crate::generation_items::wait_finished(service, generation_id, wait).await
}

/// fal's input, endpoint and price per prompt for the avatar's model.
async fn plan(
    service: &Service,
    request: &GenerationRequest,
    model: &TrainedModel,
) -> Result<Plan, ServiceError> {
    let (endpoint, input) = match model.model_type {
        ModelType::Lora => (domain::LORA_GENERATION_ENDPOINT, lora_input(request)),
        ModelType::Finetune => {
            let finetune_id = model_finetune_id(service, model.training_id).await?;
            (
                domain::FINETUNE_GENERATION_ENDPOINT,
                finetune_input(request, finetune_id),
            )
        }
    };
    Ok(Plan {
        endpoint,
        model_type: model.model_type,
        input: input.map_err(ServiceError::internal)?,
        cost_per_prompt: request
            .cost_per_prompt(model.model_type, &service.settings.jobs.generation_prices),
    })
}

fn lora_input(request: &GenerationRequest) -> Result<Value, serde_json::Error> {
    let image_size = match request.lora_image_size() {
        LoraImageSize::Named(named) => fal::models::ImageSize::Preset(named.as_str().into()),
        LoraImageSize::Exact { width, height } => fal::models::ImageSize::Custom {
            width: Some(width),
            height: Some(height),
        },
    };
    serde_json::to_value(fal::models::FluxLoraInput {
        prompt: String::new(),
        image_size: Some(image_size),
        num_inference_steps: Some(request.preset.num_inference_steps),
        seed: request.seed,
        // The URL is the model's at submit time (it changes when re-uploaded).
        loras: vec![fal::models::LoraWeight {
            path: String::new(),
            scale: Some(request.lora_scale),
        }],
        guidance_scale: Some(request.preset.guidance_scale),
        num_images: Some(request.num_images),
        enable_safety_checker: request.enable_safety_checker,
        output_format: request.output_format.clone(),
        ..Default::default()
    })
}

fn finetune_input(
    request: &GenerationRequest,
    finetune_id: String,
) -> Result<Value, serde_json::Error> {
    serde_json::to_value(fal::models::UltraFinetunedInput {
        prompt: String::new(),
        finetune_id,
        finetune_strength: request.finetune_strength,
        aspect_ratio: Some(request.finetune_aspect_ratio().to_string()),
        num_images: Some(request.num_images),
        seed: request.seed,
        safety_tolerance: request.safety_tolerance.clone(),
        output_format: request.output_format.clone(),
        enable_safety_checker: request.enable_safety_checker,
        ..Default::default()
    })
}

async fn model_finetune_id(service: &Service, training_id: Uuid) -> Result<String, ServiceError> {
    service
        .store
        .model_of_training(training_id)
        .await?
        .and_then(|m| m.finetune_id)
        .ok_or_else(|| {
            ServiceError::conflict(
                "avatar_not_trained",
                "the avatar's model has no finetune id",
            )
        })
}

/// The generation row and one item per prompt, each with its own fal input.
fn new_generation(
    service: &Service,
    tenant: TenantId,
    avatar_id: AvatarId,
    request: &GenerationRequest,
    model: &TrainedModel,
    plan: &Plan,
) -> NewGeneration {
    let settings = &service.settings.jobs;
    let trigger = &model.trigger_phrase;
    let items: Vec<NewGenerationItem> = request
        .prompts
        .iter()
        .map(|prompt| {
            let mut params = plan.input.clone();
            params["prompt"] = json!(prompt_with_trigger(prompt, trigger));
            NewGenerationItem {
                job_id: Uuid::now_v7(),
                params,
                trigger_phrase: trigger.clone(),
                estimated_cost_usd: Some(plan.cost_per_prompt),
            }
        })
        .collect();
    NewGeneration {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        avatar_id,
        model_id: model.id,
        model_type: plan.model_type,
        endpoint: plan.endpoint.to_string(),
        preset: request.preset.name.as_str().to_string(),
        num_images: request.num_images,
        request: summary(request, plan),
        estimated_cost_usd: Some(request.total_cost(plan.cost_per_prompt)),
        deadline_at: Utc::now()
            + chrono::Duration::from_std(settings.generation_timeout)
                .unwrap_or(chrono::Duration::minutes(10)),
        estimated_seconds: domain::generation_duration(
            plan.model_type,
            request.num_images,
            request.preset.num_inference_steps,
            request.lora_image_size().dimensions(),
        )
        .as_secs_f64(),
        items,
        traceparent: crate::trace_context::current_traceparent(),
    }
}

/// The request as understood, for callers: fal's input without the per-item and secret parts,
/// with the prompts and (LoRA) the effective scale.
fn summary(request: &GenerationRequest, plan: &Plan) -> Value {
    let mut summary = plan.input.clone();
    if let Some(object) = summary.as_object_mut() {
        object.remove("prompt");
        object.remove("loras");
        object.remove("finetune_id");
        object.insert("prompts".into(), json!(request.prompts));
        if plan.model_type == ModelType::Lora {
            object.insert("lora_scale".into(), json!(request.lora_scale));
        }
    }
    summary
}

/// A generation with its items and images.
async fn load(service: &Service, record: GenerationRecord) -> Result<Generation, ServiceError> {
    let jobs = service.store.generation_jobs(record.id).await?;
    let images = service.store.generation_images(record.id).await?;
    Ok(Generation {
        record,
        jobs,
        images,
    })
}

async fn record(
    service: &Service,
    tenant: TenantId,
    id: Uuid,
) -> Result<GenerationRecord, ServiceError> {
    match service.store.get_generation(tenant, id).await {
        Ok(generation) => Ok(generation),
        Err(store::StoreError::NotFound) => Err(ServiceError::generation_not_found(id)),
        Err(error) => Err(error.into()),
    }
}

/// One of the tenant's generations.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant, generation_id = %id))]
pub async fn get(
    service: &Service,
    tenant: TenantId,
    id: Uuid,
) -> Result<Generation, ServiceError> {
    let generation = load(service, record(service, tenant, id).await?).await?;
    if generation.jobs.iter().any(|job| job.status().is_active()) {
        jobs::watch(service, tenant, store::JobWatch::Generation(id)).await;
    }
    Ok(generation)
}

/// Cancels every unfinished item: at once when not yet sent to fal, on fal otherwise. An item
/// fal already finished keeps its result, so a cancel never throws away a paid image.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant, generation_id = %id))]
pub async fn cancel(
    service: &Service,
    tenant: TenantId,
    id: Uuid,
) -> Result<Generation, ServiceError> {
    let generation = load(service, record(service, tenant, id).await?).await?;
    let unfinished: Vec<JobRecord> = latest_attempts(generation.jobs)
        .into_iter()
        .map(|(job, _)| job)
        .filter(|job| !job.status().is_terminal())
        .collect();
    if unfinished.is_empty() {
        return Err(ServiceError::conflict(
            "generation_finished",
            "every item of the generation has already ended",
        ));
    }
    for item in unfinished {
        jobs::cancel_for_caller(service, tenant, item.id).await?;
    }
    get(service, tenant, id).await
}

/// A page of an avatar's generations, newest first, and whether more follow.
#[tracing::instrument(skip_all, fields(tenant_id = %of.tenant, avatar_id = %of.avatar))]
pub async fn list(
    service: &Service,
    of: AvatarListing,
) -> Result<(Vec<Generation>, bool), ServiceError> {
    let PageRequest { after, limit } = of.page;
    let found = service
        .store
        .list_generations(of.tenant, of.avatar, after, limit);
    jobs::load_page(of.avatar, found.await?, |record| load(service, record)).await
}

/// A stored image, ready to stream.
pub struct ImageDownload {
    pub image: GenerationImage,
    pub bytes: BoxStream<'static, Result<Bytes, store::BlobError>>,
}

/// The image at `index` (as in the generation's `images`: item * num_images + image).
#[tracing::instrument(skip_all, fields(tenant_id = %tenant, generation_id = %id, index = %index))]
pub async fn image(
    service: &Service,
    tenant: TenantId,
    id: Uuid,
    index: &str,
) -> Result<ImageDownload, ServiceError> {
    let not_an_image = || {
        ServiceError::not_found(
            "image_not_found",
            format!("no image {index:?} in this generation"),
        )
    };
    let n: i32 = index.parse().map_err(|_| not_an_image())?;
    let generation = record(service, tenant, id).await?;
    let per_item = generation.num_images.max(1);
    let image = service
        .store
        .generation_images(id)
        .await?
        .into_iter()
        .find(|image| image.item_index * per_item + image.image_index == n)
        .ok_or_else(not_an_image)?;
    let bytes = service
        .blobs
        .get_stream(&image.blob_key)
        .await
        .map_err(|e| {
            ServiceError::unavailable(
                "storage_unavailable",
                "the image cannot be read now; retry later",
            )
            .with_source(e)
        })?;
    Ok(ImageDownload { image, bytes })
}
