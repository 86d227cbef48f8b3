//! Trainings: start one (`POST /avatars/{id}/train`), follow it, cancel it; and the presets.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use domain::training::TrainingInput;
use domain::{AvatarId, Trainer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use service::trainings::{GenerationPresetOffer, Training, TrainingPresetOffer};
use store::JobRecord;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::extract::{parse_json, AppQuery, PathId};
use crate::pagination::PageQuery;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// `fast`, `balanced` (default) or `quality`.
    #[schema(value_type = Option<crate::openapi::TrainingPreset>)]
    pub preset: Option<String>,
    /// `portrait`, `pro` or `fast_lora`; chosen from the avatar's kind when absent and
    /// automatic selection is on.
    #[schema(value_type = Option<crate::openapi::Trainer>)]
    pub trainer: Option<String>,
    /// Trainer parameters overriding the preset (e.g. `{"steps": 1200}`), checked against the
    /// trainer's schema.
    #[schema(value_type = Option<Object>)]
    pub overrides: Option<Map<String, Value>>,
    /// The token the model learns; the avatar's trigger phrase when absent.
    pub trigger_phrase: Option<String>,
    /// Train from your own ZIP of photos instead of the uploaded ones; fetched and checked
    /// before anything is spent.
    pub images_data_url: Option<String>,
}

impl From<TrainRequest> for TrainingInput {
    fn from(request: TrainRequest) -> Self {
        TrainingInput {
            preset: request.preset,
            trainer: request.trainer,
            overrides: request.overrides,
            trigger_phrase: request.trigger_phrase,
            images_data_url: request.images_data_url,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingError {
    /// e.g. `fal_rejected_input`, `fal_unauthorized`, `fal_billing_locked`, `fal_unavailable`,
    /// `submit_unknown`, `training_timeout`, `cancelled`.
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingModel {
    /// `lora` or `finetune`.
    #[schema(value_type = crate::openapi::ModelType)]
    pub model_type: String,
    pub trigger_phrase: String,
    /// SHA-256 of the LoRA weights kept by the service.
    pub artifact_sha256: Option<String>,
    pub artifact_bytes: Option<i64>,
    pub finetune_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingResponse {
    pub id: Uuid,
    pub avatar_id: Option<Uuid>,
    /// `pending`, `uploading`, `submitted`, `in_progress`, `submit_unknown` (fal may or may not
    /// have the request; resolved by its callback, a status lookup or the deadline; never
    /// resubmitted), `succeeded`, `failed`, `cancelled`, `timed_out`.
    #[schema(value_type = crate::openapi::JobStatus)]
    pub status: String,
    #[schema(value_type = Option<crate::openapi::Trainer>)]
    pub trainer: Option<String>,
    /// The fal endpoint.
    pub endpoint: String,
    #[schema(value_type = Option<crate::openapi::TrainingPreset>)]
    pub preset: Option<String>,
    /// The effective parameters sent to fal.
    #[schema(value_type = Object)]
    pub parameters: Value,
    pub trigger_phrase: Option<String>,
    pub estimated_cost_usd: Option<f64>,
    pub queue_position: Option<i32>,
    /// 0-1, read from fal's logs while running.
    pub progress: Option<f64>,
    pub fal_request_id: Option<String>,
    pub cancel_requested: bool,
    pub error: Option<TrainingError>,
    /// The trained model, once its artifacts are in the service's custody.
    pub model: Option<TrainingModel>,
    /// Set when the trainer is deprecated by fal.
    pub deprecation: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub submitted_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// The training as callers see it.
fn training_view(training: Training) -> TrainingResponse {
    render_training(training.job, training.model)
}

/// The training as callers see it, from its row and (once in custody) its model.
pub fn render_training(job: JobRecord, model: Option<store::ModelRecord>) -> TrainingResponse {
    let model = model.map(|m| TrainingModel {
        model_type: m.model_type.as_str().to_string(),
        trigger_phrase: m.trigger_phrase,
        artifact_sha256: m.artifact_sha256,
        artifact_bytes: m.artifact_bytes,
        finetune_id: m.finetune_id,
    });
    let deprecation = job
        .trainer
        .as_deref()
        .and_then(Trainer::parse)
        .and_then(Trainer::deprecation)
        .map(str::to_string);
    TrainingResponse {
        id: job.id,
        avatar_id: job.avatar_id,
        status: job.status.as_str().to_string(),
        trainer: job.trainer,
        endpoint: job.endpoint,
        preset: job.preset,
        parameters: job.params,
        trigger_phrase: job.trigger_phrase,
        estimated_cost_usd: job.estimated_cost_usd,
        queue_position: job.queue_position,
        progress: job.progress,
        fal_request_id: job.fal_request_id,
        cancel_requested: job.cancel_requested_at.is_some(),
        error: job.error_code.map(|code| TrainingError {
            code,
            message: job.error_message.unwrap_or_default(),
        }),
        model,
        deprecation,
        created_at: job.created_at,
        updated_at: job.updated_at,
        submitted_at: job.submitted_at,
        started_at: job.started_at,
        finished_at: job.finished_at,
    }
}

/// Start a training.
///
/// Checks the photo set (or your archive), picks the trainer and preset, stores the job and
/// answers 202 at once; the upload to fal and the submit happen in the background. Send an
/// `Idempotency-Key` to make retries safe: the same key and body replay the first answer.
#[utoipa::path(
    post,
    path = "/avatars/{id}/train",
    tag = "trainings",
    operation_id = "train_avatar",
    params(
        ("id" = Uuid, Path, description = "Avatar id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe (1-255 printable ASCII)"),
    ),
    request_body = TrainRequest,
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Accepted; follow the training at its Location", body = TrainingResponse,
            headers(("location" = String, description = "URL of the training"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such avatar (`avatar_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Photo set not trainable (`photo_set_not_trainable`, with counts), a training already running (`training_in_progress`), or the same Idempotency-Key in flight (`idempotency_key_in_use`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (`validation_failed`), an unusable archive (`archive_unusable`), or an Idempotency-Key reused with another body (`idempotency_key_mismatch`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "fal is not configured (`fal_not_configured`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn train_avatar(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    crate::extract::require_json(&headers)?;
    crate::idempotency::idempotent(
        &state,
        caller.tenant_id,
        &headers,
        &format!("POST /avatars/{id}/train"),
        &body,
        || async {
            let request: TrainRequest = parse_json(&body)?;
            let input = TrainingInput::from(request);
            let training =
                service::trainings::create(&state, caller.tenant_id, AvatarId(id), &input).await?;
            let location = HeaderValue::from_str(&format!("/trainings/{}", training.job.id))
                .map_err(ApiError::internal)?;
            let body = Json(training_view(training));
            Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], body).into_response())
        },
    )
    .await
}

/// Get a training.
#[utoipa::path(
    get,
    path = "/trainings/{id}",
    tag = "trainings",
    operation_id = "get_training",
    params(("id" = Uuid, Path, description = "Training id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The training", body = TrainingResponse),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such training (`training_not_found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_training(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<TrainingResponse>, ApiError> {
    let training = service::trainings::get(&state, caller.tenant_id, id).await?;
    Ok(Json(training_view(training)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingPage {
    pub items: Vec<TrainingResponse>,
    pub next_cursor: Option<String>,
}

/// List an avatar's trainings.
#[utoipa::path(
    get,
    path = "/avatars/{id}/trainings",
    tag = "trainings",
    operation_id = "list_trainings",
    params(("id" = Uuid, Path, description = "Avatar id"), PageQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Newest first", body = TrainingPage),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such avatar (`avatar_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid query parameter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_trainings(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<Json<TrainingPage>, ApiError> {
    let page = crate::pagination::page(query.limit, query.cursor.as_deref())?;
    let (trainings, more) = service::trainings::list(
        &state,
        caller.tenant_id,
        AvatarId(id),
        page.after,
        page.limit,
    )
    .await?;
    let last = trainings.last().map(|t| t.job.id);
    Ok(Json(TrainingPage {
        next_cursor: crate::pagination::next_cursor(more, last),
        items: trainings.into_iter().map(training_view).collect(),
    }))
}

/// Cancel a training.
///
/// A training not yet submitted is cancelled at once; a submitted one is cancelled on fal.
/// If fal already finished it, its result wins and the answer shows it.
#[utoipa::path(
    post,
    path = "/trainings/{id}/cancel",
    tag = "trainings",
    operation_id = "cancel_training",
    params(("id" = Uuid, Path, description = "Training id")),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "The training after the cancel request", body = TrainingResponse),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such training (`training_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The training already finished (`training_finished`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "fal could not be reached (`fal_unavailable`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_training(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let training = service::trainings::cancel(&state, caller.tenant_id, id).await?;
    Ok((StatusCode::ACCEPTED, Json(training_view(training))).into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingPresetResponse {
    #[schema(value_type = crate::openapi::Trainer)]
    pub trainer: String,
    #[schema(value_type = crate::openapi::TrainingPreset)]
    pub preset: String,
    pub endpoint: String,
    /// `lora` or `finetune`.
    #[schema(value_type = crate::openapi::ModelType)]
    pub model_type: String,
    #[schema(value_type = Object)]
    pub parameters: Value,
    pub typical_duration_seconds: u64,
    /// null when the price is unknown.
    pub estimated_cost_usd: Option<f64>,
    pub deprecation: Option<String>,
    pub description: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationPresetResponse {
    #[schema(value_type = crate::openapi::GenerationPreset)]
    pub preset: String,
    pub lora_endpoint: String,
    pub finetune_endpoint: String,
    pub num_inference_steps: u32,
    pub guidance_scale: f64,
    #[schema(value_type = crate::openapi::ImageSize)]
    pub image_size: String,
    pub width: u32,
    pub height: u32,
    pub lora_scale: f64,
    pub finetune_strength: f64,
    /// One image with a LoRA avatar.
    pub estimated_lora_cost_usd: f64,
    /// One image with a finetuned avatar.
    pub estimated_finetune_cost_usd: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PresetsResponse {
    pub training: Vec<TrainingPresetResponse>,
    pub generation: Vec<GenerationPresetResponse>,
}

/// List presets.
///
/// Every training and generation preset with its effective parameters, endpoint, typical
/// duration and estimated cost.
#[utoipa::path(
    get,
    path = "/presets",
    tag = "trainings",
    operation_id = "list_presets",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The presets", body = PresetsResponse),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_presets(State(state): State<AppState>, _caller: Caller) -> Json<PresetsResponse> {
    let presets = service::trainings::presets(&state);
    Json(PresetsResponse {
        training: presets
            .training
            .into_iter()
            .map(training_preset_view)
            .collect(),
        generation: presets
            .generation
            .into_iter()
            .map(generation_preset_view)
            .collect(),
    })
}

fn training_preset_view(offer: TrainingPresetOffer) -> TrainingPresetResponse {
    let TrainingPresetOffer {
        preset,
        estimated_cost_usd,
    } = offer;
    TrainingPresetResponse {
        trainer: preset.trainer.as_str().to_string(),
        preset: preset.name.as_str().to_string(),
        endpoint: preset.trainer.endpoint().to_string(),
        model_type: preset.trainer.model_type().as_str().to_string(),
        estimated_cost_usd,
        parameters: Value::Object(preset.params.to_json()),
        typical_duration_seconds: preset.typical_duration.as_secs(),
        deprecation: preset.trainer.deprecation().map(str::to_string),
        description: preset.description.to_string(),
    }
}

fn generation_preset_view(offer: GenerationPresetOffer) -> GenerationPresetResponse {
    let preset = offer.preset;
    let (width, height) = preset.image_size.dimensions();
    GenerationPresetResponse {
        preset: preset.name.as_str().to_string(),
        lora_endpoint: domain::LORA_GENERATION_ENDPOINT.to_string(),
        finetune_endpoint: domain::FINETUNE_GENERATION_ENDPOINT.to_string(),
        num_inference_steps: preset.num_inference_steps,
        guidance_scale: preset.guidance_scale,
        image_size: preset.image_size.as_str().to_string(),
        width,
        height,
        lora_scale: preset.lora_scale,
        finetune_strength: preset.finetune_strength,
        estimated_lora_cost_usd: offer.estimated_lora_cost_usd,
        estimated_finetune_cost_usd: offer.estimated_finetune_cost_usd,
    }
}
