//! Trainings and presets as callers see them.

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use domain::Trainer;
use serde::Serialize;
use serde_json::Value;
use service::trainings::{GenerationPresetOffer, Training, TrainingPresetOffer};
use store::JobRecord;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::problem::ApiError;
use crate::responses::located;

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
    /// resubmitted), `succeeded`, `failed`, `cancelled`, `timed_out`. A training fal finished
    /// stays `in_progress` (progress 1) until its model is in the service's storage; if it
    /// cannot be kept it ends `failed` with `artifact_unavailable`.
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
    /// How long fal is expected to run this training, in seconds: what `GET /presets` shows
    /// for its trainer, preset and steps (or iterations). Its first status check and its
    /// deadline are derived from it.
    pub estimated_duration_seconds: Option<u64>,
    /// When the training is cancelled as `timed_out` if it has not finished. From submission:
    /// `submitted_at` + min(`FAL_DEADLINE_FACTOR` x the estimate + `FAL_WEBHOOK_GRACE`,
    /// `FAL_TRAINING_TIMEOUT`). Before submission: `created_at` + `FAL_TRAINING_TIMEOUT`.
    pub deadline_at: Option<DateTime<Utc>>,
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

/// A started training (or the one a replayed key created): 202 at its Location.
pub fn accepted_training(training: Training) -> Result<Response, ApiError> {
    let location = format!("/trainings/{}", training.job.id);
    located(StatusCode::ACCEPTED, &location, training_view(training))
}

/// The training as callers see it.
pub fn training_view(training: Training) -> TrainingResponse {
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
        status: job.status().as_seen().as_str().to_string(),
        trainer: job.trainer,
        endpoint: job.endpoint,
        preset: job.preset,
        parameters: job.params,
        trigger_phrase: job.trigger_phrase,
        estimated_cost_usd: job.estimated_cost_usd,
        estimated_duration_seconds: job
            .estimated_seconds
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| s.ceil() as u64),
        deadline_at: job.deadline_at,
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

#[derive(Debug, Serialize, ToSchema)]
pub struct TrainingPage {
    pub items: Vec<TrainingResponse>,
    pub next_cursor: Option<String>,
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
    /// How long fal is expected to run a training with these parameters; a training's first
    /// status check and its deadline are derived from it.
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

pub fn training_preset_view(offer: TrainingPresetOffer) -> TrainingPresetResponse {
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

pub fn generation_preset_view(offer: GenerationPresetOffer) -> GenerationPresetResponse {
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
