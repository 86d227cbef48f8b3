//! Generations: images from a trained avatar (`POST /avatars/{id}/generations`), following them,
//! and serving the stored images.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::generation::GenerationInput;
use futures_util::StreamExt;
use serde::Deserialize;
use service::generations::{ImageDownload, Started};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::extract::PathId;
use crate::idempotency::AvatarCommand;
use crate::pagination::Listing;
use crate::problem::{ApiError, Problem};
use crate::responses::{
    located, AvatarNotFound, AvatarPath, FalNotConfigured, GenerationNotFound, GenerationPath,
    NotJson, Unauthorized,
};
use crate::state::AppState;
use crate::views::generations::{generation_view, GenerationPage, GenerationResponse};

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

impl From<GenerateRequest> for GenerationInput {
    fn from(request: GenerateRequest) -> Self {
        GenerationInput {
            prompt: request.prompt,
            prompts: request.prompts,
            preset: request.preset,
            num_images: request.num_images,
            aspect_ratio: request.aspect_ratio,
            width: request.width,
            height: request.height,
            seed: request.seed,
            output_format: request.output_format,
            lora_scale: request.lora_scale,
            finetune_strength: request.finetune_strength,
            enable_safety_checker: request.enable_safety_checker,
            safety_tolerance: request.safety_tolerance,
        }
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
        AvatarPath,
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
        Unauthorized,
        AvatarNotFound,
        (status = 409, description = "The avatar has no trained model (`avatar_not_trained`), or the same Idempotency-Key in flight (`idempotency_key_in_use`)", body = Problem, content_type = "application/problem+json"),
        NotJson,
        (status = 422, description = "Invalid fields (`validation_failed`), or an Idempotency-Key reused with another body (`idempotency_key_mismatch`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The key's request rate (`rate_limited`, with `Retry-After`) or the tenant's running generations (`generation_quota_exceeded`) are at their limit", body = Problem, content_type = "application/problem+json"),
        FalNotConfigured,
    )
)]
pub async fn create_generation(
    State(state): State<AppState>,
    command: AvatarCommand,
) -> Result<Response, ApiError> {
    let (state, tenant, avatar) = (&state, command.tenant, command.avatar);
    let wait = preferred_wait(command.headers());
    command
        .run(state, |request: GenerateRequest, hold| async move {
            let input = GenerationInput::from(request);
            let started =
                service::generations::create(state, tenant, avatar, &input, wait, hold.as_ref())
                    .await?;
            started_response(started, wait)
        })
        .await
}

/// 200 when the generation finished within the wait, else 202; at its Location either way.
fn started_response(started: Started, wait: Option<Duration>) -> Result<Response, ApiError> {
    let status = if started.finished {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/generations/{}", started.generation.record.id);
    let mut response = located(status, &location, generation_view(started.generation))?;
    if let Some(wait) = wait {
        // RFC 7240: say which preference was honoured (and with what cap).
        if let Ok(value) = HeaderValue::from_str(&format!("wait={}", wait.as_secs())) {
            response.headers_mut().insert("preference-applied", value);
        }
    }
    Ok(response)
}

/// Get a generation.
#[utoipa::path(
    get,
    path = "/generations/{id}",
    tag = "generations",
    operation_id = "get_generation",
    params(GenerationPath),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The generation and its items", body = GenerationResponse),
        Unauthorized,
        GenerationNotFound,
    )
)]
pub async fn get_generation(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<GenerationResponse>, ApiError> {
    let generation = service::generations::get(&state, caller.tenant_id, id).await?;
    Ok(Json(generation_view(generation)))
}

/// Cancel a generation.
///
/// Every item not yet finished is cancelled: at once when it was not sent to fal yet, on fal
/// otherwise (recorded and retried while fal cannot be reached). Items fal already finished
/// keep their images.
#[utoipa::path(
    post,
    path = "/generations/{id}/cancel",
    tag = "generations",
    operation_id = "cancel_generation",
    params(GenerationPath),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Cancelled, or being cancelled on fal; the generation as it is now", body = GenerationResponse),
        Unauthorized,
        GenerationNotFound,
        (status = 409, description = "Every item already ended (`generation_finished`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_generation(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let generation = service::generations::cancel(&state, caller.tenant_id, id).await?;
    Ok((StatusCode::ACCEPTED, Json(generation_view(generation))).into_response())
}

/// List an avatar's generations.
#[utoipa::path(
    get,
    path = "/avatars/{id}/generations",
    tag = "generations",
    operation_id = "list_generations",
    params(Listing),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Newest first", body = GenerationPage),
        Listing,
    )
)]
pub async fn list_generations(
    State(state): State<AppState>,
    Listing(listing): Listing,
) -> Result<Json<GenerationPage>, ApiError> {
    let found = service::generations::list(&state, listing).await?;
    let (items, next_cursor) = crate::pagination::render(found, |g| g.record.id, generation_view);
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
        Unauthorized,
        (status = 404, description = "No such generation or image (`generation_not_found`, `image_not_found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_generation_image(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path((id, index)): axum::extract::Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::not_found("not_found", format!("{id:?} is not a valid id")))?;
    let download = service::generations::image(&state, caller.tenant_id, id, &index).await?;
    image_response(download)
}

/// The image's bytes, streamed, with its type and length; generated images never change.
fn image_response(download: ImageDownload) -> Result<Response, ApiError> {
    let ImageDownload { image, bytes } = download;
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
        Body::from_stream(bytes.map(|chunk| chunk.map_err(std::io::Error::other))),
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
