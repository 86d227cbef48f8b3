//! Generations: images from a trained avatar (`POST /avatars/{id}/generations`), following them,
//! and serving the stored images.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use domain::generation::{lora_size_for_aspect_ratio, prompt_with_trigger, LoraImageSize};
use domain::{AvatarId, GenerationPresetName, ModelType, Violations};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use store::{GenerationRecord, NewGeneration, NewGenerationItem, StoreError};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::extract::{parse_json, AppQuery, PathId};
use crate::pagination::PageQuery;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;
use service::generation_items::{generation_status, item_finished, latest_attempts};
use service::jobs;

/// The longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 2000;
/// The longest `Prefer: wait` honoured, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// One prompt. The avatar's trigger phrase is put first unless the prompt holds it.
    pub prompt: Option<String>,
    /// A batch: one fal request per prompt (up to `GENERATION_MAX_PROMPTS`). Give `prompt` or
    /// `prompts`, not both.
    pub prompts: Option<Vec<String>>,
    /// `fast`, `balanced` (default), `quality`, `ultra` or `portrait`.
    #[schema(value_type = Option<crate::openapi::GenerationPreset>)]
    pub preset: Option<String>,
    /// Images per prompt, 1-4 (default 1).
    pub num_images: Option<u32>,
    /// `1:1`, `3:4`, `4:3`, `9:16`, `16:9`, `2:3`, `3:2`, `21:9` or `9:21`; the preset's size
    /// when absent.
    #[schema(value_type = Option<crate::openapi::AspectRatio>)]
    pub aspect_ratio: Option<String>,
    /// Exact width in pixels, 256-2048, with `height` (LoRA avatars only).
    pub width: Option<u32>,
    /// Exact height in pixels, 256-2048, with `width` (LoRA avatars only).
    pub height: Option<u32>,
    /// Makes the output reproducible; every prompt of a batch uses it.
    pub seed: Option<u64>,
    /// `jpeg` (default) or `png`.
    #[schema(value_type = Option<crate::openapi::OutputFormat>)]
    pub output_format: Option<String>,
    /// The LoRA's scale, 0-4, overriding the preset (LoRA avatars).
    pub lora_scale: Option<f64>,
    /// `finetune_strength`, 0-2, overriding the preset (finetuned avatars).
    pub finetune_strength: Option<f64>,
    /// fal's safety checker (default on).
    pub enable_safety_checker: Option<bool>,
    /// `1` (strictest) to `6` (finetuned avatars).
    #[schema(value_type = Option<crate::openapi::SafetyTolerance>)]
    pub safety_tolerance: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationError {
    /// e.g. `content_policy_violation`, `fal_rejected_input`, `lora_unavailable`, `fal_failed`,
    /// `fal_unavailable`, `submit_unknown`, `generation_timeout`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratedImage {
    /// Position in the generation: item * num_images + image.
    pub index: i32,
    /// Where the service serves it (`GET /generations/{id}/images/{index}`).
    pub url: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub content_type: String,
    pub bytes: i64,
    /// The seed fal used for the item.
    pub seed: Option<u64>,
    /// fal's NSFW flag for this image.
    pub nsfw: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationItem {
    pub index: i32,
    /// The prompt sent to fal (with the trigger phrase).
    pub prompt: String,
    /// The job's status: `pending` ... `succeeded`, `failed`, `cancelled`, `timed_out`.
    #[schema(value_type = crate::openapi::JobStatus)]
    pub status: String,
    /// False while images are still being copied or a resubmit is due.
    pub finished: bool,
    /// 2 when the item was resubmitted with the service's own copy of the LoRA.
    pub attempts: i32,
    pub fal_request_id: Option<String>,
    pub error: Option<GenerationError>,
    pub images: Vec<GeneratedImage>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationResponse {
    pub id: Uuid,
    pub avatar_id: Option<Uuid>,
    /// `pending`, `in_progress`, `succeeded`, `failed` or `partially_succeeded`.
    #[schema(value_type = crate::openapi::GenerationStatus)]
    pub status: String,
    /// `lora` or `finetune`.
    #[schema(value_type = crate::openapi::ModelType)]
    pub model_type: String,
    /// The fal endpoint.
    pub endpoint: String,
    #[schema(value_type = crate::openapi::GenerationPreset)]
    pub preset: String,
    pub num_images: i32,
    /// The request as understood (sizes resolved, overrides applied).
    #[schema(value_type = Object)]
    pub request: Value,
    pub estimated_cost_usd: Option<f64>,
    pub items: Vec<GenerationItem>,
    pub created_at: DateTime<Utc>,
}

fn avatar_not_found(id: Uuid) -> ApiError {
    ApiError::not_found("avatar_not_found", format!("no avatar with id {id}"))
}

fn generation_not_found(id: Uuid) -> ApiError {
    ApiError::not_found(
        "generation_not_found",
        format!("no generation with id {id}"),
    )
}

fn field(field: &str, code: &'static str, message: impl Into<String>) -> domain::FieldViolation {
    domain::FieldViolation::new(field, code, message)
}

pub async fn generation_response(
    state: &AppState,
    generation: GenerationRecord,
) -> Result<GenerationResponse, ApiError> {
    let jobs = state.store.generation_jobs(generation.id).await?;
    let images = state.store.generation_images(generation.id).await?;
    Ok(render_generation(generation, jobs, images))
}

/// The generation as callers see it, from its row, its items' jobs and its stored images.
pub fn render_generation(
    generation: GenerationRecord,
    jobs: Vec<store::JobRecord>,
    images: Vec<store::GenerationImage>,
) -> GenerationResponse {
    let items = latest_attempts(jobs);
    let status = generation_status(&items.iter().map(|(job, _)| job).collect::<Vec<_>>());
    let per_item = generation.num_images;
    let items = items
        .into_iter()
        .map(|(job, attempts)| {
            let index = job.item_index.unwrap_or(0);
            GenerationItem {
                index,
                prompt: job.params["prompt"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                status: job.status.as_str().to_string(),
                finished: item_finished(&job),
                attempts,
                fal_request_id: job.fal_request_id.clone(),
                error: job
                    .error_code
                    .clone()
                    .filter(|_| job.status != domain::JobStatus::Succeeded)
                    .map(|code| GenerationError {
                        code,
                        message: job.error_message.clone().unwrap_or_default(),
                    }),
                images: images
                    .iter()
                    .filter(|image| image.item_index == index)
                    .map(|image| {
                        let n = index * per_item + image.image_index;
                        GeneratedImage {
                            index: n,
                            url: format!("/generations/{}/images/{n}", generation.id),
                            width: image.width,
                            height: image.height,
                            content_type: image.content_type.clone(),
                            bytes: image.bytes,
                            seed: image.seed.as_deref().and_then(|s| s.parse().ok()),
                            nsfw: image.nsfw,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    GenerationResponse {
        id: generation.id,
        avatar_id: generation.avatar_id,
        status: status.to_string(),
        model_type: generation.model_type.as_str().to_string(),
        endpoint: generation.endpoint,
        preset: generation.preset,
        num_images: generation.num_images,
        request: generation.request,
        estimated_cost_usd: generation.estimated_cost_usd,
        items,
        created_at: generation.created_at,
    }
}

/// `Prefer: wait=N`, capped at [`MAX_WAIT_SECS`]; other preferences are ignored (RFC 7240).
fn preferred_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|pref| {
            let (name, value) = pref.trim().split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let secs: u64 = value.trim().trim_matches('"').parse().ok()?;
            Some(Duration::from_secs(secs.min(MAX_WAIT_SECS)))
        })
}

/// Generate images with a trained avatar.
///
/// One fal request per prompt: `fal-ai/flux-lora` with the avatar's LoRA, or
/// `fal-ai/flux-pro/v1.1-ultra-finetuned` with its finetune. Answers 202 at once, or, with
/// `Prefer: wait=N` (N up to 60), 200 with the finished generation if it finishes within N
/// seconds. Send an `Idempotency-Key` to make retries safe.
#[utoipa::path(
    post,
    path = "/avatars/{id}/generations",
    tag = "generations",
    operation_id = "create_generation",
    params(
        ("id" = Uuid, Path, description = "Avatar id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe (1-255 printable ASCII)"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N <= 60): answer when the generation finishes, up to N seconds"),
    ),
    request_body = GenerateRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Finished within the `Prefer: wait` time", body = GenerationResponse,
            headers(("location" = String, description = "URL of the generation"))),
        (status = 202, description = "Accepted; follow the generation at its Location", body = GenerationResponse,
            headers(("location" = String, description = "URL of the generation"))),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such avatar (`avatar_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The avatar has no trained model (`avatar_not_trained`), or the same Idempotency-Key in flight (`idempotency_key_in_use`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (`validation_failed`), or an Idempotency-Key reused with another body (`idempotency_key_mismatch`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "fal is not configured (`fal_not_configured`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_generation(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    crate::extract::require_json(&headers)?;
    let wait = preferred_wait(&headers);
    crate::idempotency::idempotent(
        &state,
        caller.tenant_id,
        &headers,
        &format!("POST /avatars/{id}/generations"),
        &body,
        || start_generation(&state, caller, AvatarId(id), &body, wait),
    )
    .await
}

/// What a request resolves to, per model type.
struct Plan {
    endpoint: &'static str,
    model_type: ModelType,
    /// fal's input without the prompt.
    input: Value,
    cost_per_prompt: f64,
}

async fn start_generation(
    state: &AppState,
    caller: Caller,
    avatar_id: AvatarId,
    body: &[u8],
    wait: Option<Duration>,
) -> Result<Response, ApiError> {
    let request: GenerateRequest = parse_json(body)?;
    let avatar = match state.store.get_avatar(caller.tenant_id, avatar_id).await {
        Ok(avatar) => avatar,
        Err(StoreError::NotFound) => return Err(avatar_not_found(avatar_id.0)),
        Err(error) => return Err(error.into()),
    };
    let settings = &state.settings.jobs;
    let mut violations = Violations::default();
    let prompts: Vec<(String, String)> = match (&request.prompt, &request.prompts) {
        (Some(_), Some(_)) => {
            violations.push(field(
                "prompts",
                "conflicting_fields",
                "give prompt or prompts, not both",
            ));
            Vec::new()
        }
        (None, None) => {
            violations.push(field("prompt", "required", "give prompt or prompts"));
            Vec::new()
        }
        (Some(prompt), None) => vec![("prompt".to_string(), prompt.clone())],
        (None, Some(prompts)) => {
            if prompts.is_empty() || prompts.len() > settings.generation_max_prompts {
                violations.push(field(
                    "prompts",
                    "out_of_range",
                    format!("must hold 1 to {} prompts", settings.generation_max_prompts),
                ));
            }
            prompts
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("prompts[{i}]"), p.clone()))
                .collect()
        }
    };
    for (name, prompt) in &prompts {
        let length = prompt.trim().chars().count();
        if length == 0 {
            violations.push(field(name, "empty", "must not be empty"));
        } else if length > MAX_PROMPT_CHARS {
            violations.push(field(
                name,
                "too_long",
                format!("must be at most {MAX_PROMPT_CHARS} characters"),
            ));
        }
    }
    let preset = match request.preset.as_deref() {
        None => Some(GenerationPresetName::default()),
        Some(name) => violations.check(GenerationPresetName::parse(name).ok_or_else(|| {
            field(
                "preset",
                "invalid_value",
                "must be fast, balanced, quality, ultra or portrait",
            )
        })),
    };
    let num_images = request.num_images.unwrap_or(1);
    if !(1..=4).contains(&num_images) {
        violations.push(field("num_images", "out_of_range", "must be from 1 to 4"));
    }
    if let Some(ratio) = &request.aspect_ratio {
        if lora_size_for_aspect_ratio(ratio).is_none() {
            violations.push(field(
                "aspect_ratio",
                "invalid_value",
                format!(
                    "must be one of {}",
                    domain::generation::ASPECT_RATIOS.join(", ")
                ),
            ));
        }
        if request.width.is_some() || request.height.is_some() {
            violations.push(field(
                "width",
                "conflicting_fields",
                "give aspect_ratio or width and height, not both",
            ));
        }
    }
    let model = avatar.model.clone();
    let model_type = model.as_ref().map(|m| m.model_type);
    match (request.width, request.height) {
        (None, None) => {}
        (Some(_), None) => violations.push(field("height", "required", "give it with width")),
        (None, Some(_)) => violations.push(field("width", "required", "give it with height")),
        (Some(width), Some(height)) => {
            for (name, value) in [("width", width), ("height", height)] {
                if !(256..=2048).contains(&value) {
                    violations.push(field(name, "out_of_range", "must be from 256 to 2048"));
                }
            }
            if model_type == Some(ModelType::Finetune) {
                violations.push(field(
                    "width",
                    "not_supported",
                    "finetuned avatars take aspect_ratio, not exact sizes",
                ));
            }
        }
    }
    if let Some(format) = &request.output_format {
        if !["jpeg", "png"].contains(&format.as_str()) {
            violations.push(field(
                "output_format",
                "invalid_value",
                "must be jpeg or png",
            ));
        }
    }
    if let Some(seed) = request.seed {
        // fal validates seeds as signed 64-bit integers.
        if seed > i64::MAX as u64 {
            violations.push(field(
                "seed",
                "out_of_range",
                format!("must be at most {}", i64::MAX),
            ));
        }
    }
    if let Some(scale) = request.lora_scale {
        if !(0.0..=4.0).contains(&scale) {
            violations.push(field("lora_scale", "out_of_range", "must be from 0 to 4"));
        }
        if model_type == Some(ModelType::Finetune) {
            violations.push(field(
                "lora_scale",
                "not_supported",
                "finetuned avatars take finetune_strength",
            ));
        }
    }
    if let Some(strength) = request.finetune_strength {
        if !(0.0..=2.0).contains(&strength) {
            violations.push(field(
                "finetune_strength",
                "out_of_range",
                "must be from 0 to 2",
            ));
        }
        if model_type == Some(ModelType::Lora) {
            violations.push(field(
                "finetune_strength",
                "not_supported",
                "LoRA avatars take lora_scale",
            ));
        }
    }
    if let Some(tolerance) = &request.safety_tolerance {
        if !["1", "2", "3", "4", "5", "6"].contains(&tolerance.as_str()) {
            violations.push(field(
                "safety_tolerance",
                "invalid_value",
                "must be \"1\" to \"6\"",
            ));
        } else if model_type == Some(ModelType::Lora) {
            violations.push(field(
                "safety_tolerance",
                "not_supported",
                "LoRA avatars take enable_safety_checker",
            ));
        }
    }
    violations.into_result()?;
    let preset = domain::generation_preset(preset.expect("checked"));
    let Some(model) = model else {
        return Err(ApiError::conflict(
            "avatar_not_trained",
            "the avatar has no trained model yet; train it first",
        )
        .with_extension("avatar_status", avatar.status.as_str()));
    };
    if state.fal.is_none() || settings.public_base_url.is_none() {
        return Err(ApiError::unavailable(
            "fal_not_configured",
            "this service has no fal connection (FAL_KEY and PUBLIC_BASE_URL); generations cannot start",
        ));
    }
    let prices = &settings.generation_prices;
    let plan = match model.model_type {
        ModelType::Lora => {
            let size = match (&request.aspect_ratio, request.width, request.height) {
                (Some(ratio), _, _) => lora_size_for_aspect_ratio(ratio).expect("checked"),
                (None, Some(width), Some(height)) => LoraImageSize::Exact { width, height },
                _ => LoraImageSize::Named(preset.image_size),
            };
            let (width, height) = size.dimensions();
            let image_size = match size {
                LoraImageSize::Named(named) => {
                    fal::models::ImageSize::Preset(named.as_str().into())
                }
                LoraImageSize::Exact { width, height } => fal::models::ImageSize::Custom {
                    width: Some(width),
                    height: Some(height),
                },
            };
            let input = fal::models::FluxLoraInput {
                prompt: String::new(),
                image_size: Some(image_size),
                num_inference_steps: Some(preset.num_inference_steps),
                seed: request.seed,
                // The URL is the model's at submit time (it changes when re-uploaded).
                loras: vec![fal::models::LoraWeight {
                    path: String::new(),
                    scale: Some(request.lora_scale.unwrap_or(preset.lora_scale)),
                }],
                guidance_scale: Some(preset.guidance_scale),
                num_images: Some(num_images),
                enable_safety_checker: request.enable_safety_checker,
                output_format: request.output_format.clone(),
                ..Default::default()
            };
            Plan {
                endpoint: domain::LORA_GENERATION_ENDPOINT,
                model_type: ModelType::Lora,
                input: serde_json::to_value(input).map_err(ApiError::internal)?,
                cost_per_prompt: domain::estimate_lora_generation_cost(
                    width, height, num_images, prices,
                ),
            }
        }
        ModelType::Finetune => {
            let finetune_id = model_finetune_id(state, model.training_id).await?;
            let aspect_ratio = request.aspect_ratio.clone().unwrap_or_else(|| {
                // The preset's size as a ratio: portrait presets stay portrait.
                match preset.image_size {
                    domain::ImageSizePreset::Portrait4x3 => "3:4",
                    domain::ImageSizePreset::Portrait16x9 => "9:16",
                    domain::ImageSizePreset::Landscape4x3 => "4:3",
                    domain::ImageSizePreset::Landscape16x9 => "16:9",
                    _ => "1:1",
                }
                .to_string()
            });
            let input = fal::models::UltraFinetunedInput {
                prompt: String::new(),
                finetune_id,
                finetune_strength: request
                    .finetune_strength
                    .unwrap_or(preset.finetune_strength),
                aspect_ratio: Some(aspect_ratio),
                num_images: Some(num_images),
                seed: request.seed,
                safety_tolerance: request.safety_tolerance.clone(),
                output_format: request.output_format.clone(),
                enable_safety_checker: request.enable_safety_checker,
                ..Default::default()
            };
            Plan {
                endpoint: domain::FINETUNE_GENERATION_ENDPOINT,
                model_type: ModelType::Finetune,
                input: serde_json::to_value(input).map_err(ApiError::internal)?,
                cost_per_prompt: domain::estimate_finetune_generation_cost(num_images, prices),
            }
        }
    };
    let generation_id = Uuid::now_v7();
    let trigger = model.trigger_phrase.clone();
    let items: Vec<NewGenerationItem> = prompts
        .iter()
        .map(|(_, prompt)| {
            let mut params = plan.input.clone();
            params["prompt"] = json!(prompt_with_trigger(prompt, &trigger));
            NewGenerationItem {
                job_id: Uuid::now_v7(),
                params,
                trigger_phrase: trigger.clone(),
                estimated_cost_usd: Some(plan.cost_per_prompt),
                webhook_token: jobs::new_webhook_token(),
            }
        })
        .collect();
    let mut summary = plan.input.clone();
    if let Some(object) = summary.as_object_mut() {
        object.remove("prompt");
        object.remove("loras");
        object.remove("finetune_id");
        object.insert(
            "prompts".into(),
            json!(prompts.iter().map(|(_, p)| p.trim()).collect::<Vec<_>>()),
        );
        if plan.model_type == ModelType::Lora {
            object.insert(
                "lora_scale".into(),
                json!(request.lora_scale.unwrap_or(preset.lora_scale)),
            );
        }
    }
    let total_cost = (plan.cost_per_prompt * items.len() as f64 * 10_000.0).round() / 10_000.0;
    let new = NewGeneration {
        id: generation_id,
        tenant_id: caller.tenant_id,
        avatar_id,
        model_id: model.id,
        model_type: plan.model_type,
        endpoint: plan.endpoint.to_string(),
        preset: preset.name.as_str().to_string(),
        num_images,
        request: summary,
        estimated_cost_usd: Some(total_cost),
        deadline_at: Utc::now()
            + chrono::Duration::from_std(settings.generation_timeout)
                .unwrap_or(chrono::Duration::minutes(10)),
        items,
    };
    let generation = state.store.insert_generation(&new).await?;
    state.work.notify_waiters();
    let mut status = StatusCode::ACCEPTED;
    if let Some(wait) = wait {
        if service::generation_items::wait_finished(state, generation.id, wait).await {
            status = StatusCode::OK;
        }
    }
    let location = HeaderValue::from_str(&format!("/generations/{}", generation.id))
        .map_err(ApiError::internal)?;
    let body = generation_response(state, generation).await?;
    let mut response = (status, [(header::LOCATION, location)], Json(body)).into_response();
    if let Some(wait) = wait {
        // RFC 7240: say which preference was honoured (and with what cap).
        if let Ok(value) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
            response.headers_mut().insert("preference-applied", value);
        }
    }
    Ok(response)
}

async fn model_finetune_id(state: &AppState, training_id: Uuid) -> Result<String, ApiError> {
    state
        .store
        .model_of_training(training_id)
        .await?
        .and_then(|m| m.finetune_id)
        .ok_or_else(|| {
            ApiError::conflict(
                "avatar_not_trained",
                "the avatar's model has no finetune id",
            )
        })
}

/// Get a generation.
#[utoipa::path(
    get,
    path = "/generations/{id}",
    tag = "generations",
    operation_id = "get_generation",
    params(("id" = Uuid, Path, description = "Generation id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The generation and its items", body = GenerationResponse),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such generation (`generation_not_found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_generation(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<GenerationResponse>, ApiError> {
    let generation = match state.store.get_generation(caller.tenant_id, id).await {
        Ok(generation) => generation,
        Err(StoreError::NotFound) => return Err(generation_not_found(id)),
        Err(error) => return Err(error.into()),
    };
    Ok(Json(generation_response(&state, generation).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationPage {
    pub items: Vec<GenerationResponse>,
    pub next_cursor: Option<String>,
}

/// List an avatar's generations.
#[utoipa::path(
    get,
    path = "/avatars/{id}/generations",
    tag = "generations",
    operation_id = "list_generations",
    params(("id" = Uuid, Path, description = "Avatar id"), PageQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Newest first", body = GenerationPage),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such avatar (`avatar_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid query parameter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_generations(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<Json<GenerationPage>, ApiError> {
    let page = crate::pagination::page(query.limit, query.cursor.as_deref())?;
    let (generations, more) = state
        .store
        .list_generations(caller.tenant_id, AvatarId(id), page.after, page.limit)
        .await?
        .ok_or_else(|| avatar_not_found(id))?;
    let next_cursor = crate::pagination::next_cursor(more, generations.last().map(|g| g.id));
    let mut items = Vec::with_capacity(generations.len());
    for generation in generations {
        items.push(generation_response(&state, generation).await?);
    }
    Ok(Json(GenerationPage { items, next_cursor }))
}

/// Get a generated image.
///
/// The image's bytes as kept by the service (fal's own copies expire), with its content type.
#[utoipa::path(
    get,
    path = "/generations/{id}/images/{index}",
    tag = "generations",
    operation_id = "get_generation_image",
    params(
        ("id" = Uuid, Path, description = "Generation id"),
        ("index" = u32, Path, description = "The image's `index` in the generation"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The image", content_type = "image/*", body = Vec<u8>),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such generation or image (`generation_not_found`, `image_not_found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_generation_image(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path((id, index)): axum::extract::Path<(String, String)>,
) -> Result<Response, ApiError> {
    let not_an_image = || {
        ApiError::not_found(
            "image_not_found",
            format!("no image {index:?} in this generation"),
        )
    };
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::not_found("not_found", format!("{id:?} is not a valid id")))?;
    let n: i32 = index.parse().map_err(|_| not_an_image())?;
    let generation = match state.store.get_generation(caller.tenant_id, id).await {
        Ok(generation) => generation,
        Err(StoreError::NotFound) => return Err(generation_not_found(id)),
        Err(error) => return Err(error.into()),
    };
    let per_item = generation.num_images.max(1);
    let image = state
        .store
        .generation_images(id)
        .await?
        .into_iter()
        .find(|image| image.item_index * per_item + image.image_index == n)
        .ok_or_else(not_an_image)?;
    let stream = state.blobs.get_stream(&image.blob_key).await.map_err(|e| {
        ApiError::unavailable(
            "storage_unavailable",
            "the image cannot be read now; retry later",
        )
        .with_source(e)
    })?;
    let content_type = HeaderValue::from_str(&image.content_type).map_err(ApiError::internal)?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, HeaderValue::from(image.bytes)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=31536000, immutable"),
            ),
        ],
        Body::from_stream(stream.map(|chunk| chunk.map_err(std::io::Error::other))),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_of(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("prefer", HeaderValue::from_str(value).unwrap());
        preferred_wait(&headers)
    }

    #[test]
    fn prefer_wait_is_read_and_capped() {
        assert_eq!(wait_of("wait=5"), Some(Duration::from_secs(5)));
        assert_eq!(
            wait_of("respond-async, Wait=10"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            wait_of("wait=600"),
            Some(Duration::from_secs(MAX_WAIT_SECS))
        );
        assert_eq!(wait_of("wait=soon"), None);
        assert_eq!(wait_of("return=minimal"), None);
        assert_eq!(preferred_wait(&HeaderMap::new()), None);
    }
}
