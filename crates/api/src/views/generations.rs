//! Generations as callers see them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use service::generation_items::{generation_status, item_finished, latest_attempts};
use service::generations::Generation;
use store::GenerationRecord;
use utoipa::ToSchema;
use uuid::Uuid;

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

/// The generation as callers see it.
pub fn generation_view(generation: Generation) -> GenerationResponse {
    render_generation(generation.record, generation.jobs, generation.images)
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
                status: job.status().as_seen().as_str().to_string(),
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

#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationPage {
    pub items: Vec<GenerationResponse>,
    pub next_cursor: Option<String>,
}
