//! The OpenAPI document: pinned metadata here, operations collected from the router.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "avatars",
        version = "0.1.0",
        description = "Trains personal FLUX avatars on fal.ai from a person's photos and generates images with them. \
Authenticate with `Authorization: Bearer <api key>`. Errors are RFC 9457 problem documents with a stable `code`.",
        license(name = "MIT")
    ),
    tags(
        (name = "avatars", description = "Avatars and their life cycle"),
        (name = "photos", description = "The photos an avatar is trained from"),
        (name = "trainings", description = "Training avatars on fal.ai, and the presets"),
        (name = "generations", description = "Generating images with trained avatars"),
        (name = "webhook endpoints", description = "Where the service sends your events, signed per Standard Webhooks, and the delivery log"),
        (name = "events", description = "Live events as Server-Sent Events"),
        (name = "webhooks", description = "Callbacks from fal.ai"),
        (name = "operations", description = "Health, readiness and metrics")
    ),
    modifiers(&BearerAuth),
    components(schemas(crate::problem::Problem, crate::problem::FieldError))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key created with `avatars api-keys create`"))
                    .build(),
            ),
        );
    }
}

// Closed value sets the API sends and accepts as strings, documented as enums. The handlers keep
// their string fields (and their own validation errors); these types only name the values, and
// serialise exactly as the wire strings.

/// Where a training, or a generation's item (one fal request), is: `pending`, `uploading`,
/// `submitted`, `in_progress`, `submit_unknown` (fal may or may not have the request; resolved
/// by its callback, a status lookup or the deadline; never resubmitted), then `succeeded`,
/// `failed`, `cancelled` or `timed_out`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Uploading,
    Submitted,
    InProgress,
    SubmitUnknown,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

/// A generation's status, from its items': `pending`, `in_progress`, `succeeded`, `failed` (no
/// item succeeded) or `partially_succeeded`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GenerationStatus {
    Pending,
    InProgress,
    Succeeded,
    Failed,
    PartiallySucceeded,
}

/// A fal trainer: `portrait` (portrait LoRA), `pro` (FLUX.1 [pro] finetune) or `fast_lora`
/// (general LoRA).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trainer {
    Portrait,
    Pro,
    FastLora,
}

/// A training preset.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrainingPreset {
    Fast,
    Balanced,
    Quality,
}

/// A generation preset.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GenerationPreset {
    Fast,
    Balanced,
    Quality,
    Ultra,
    Portrait,
}

/// What a training produces: `lora` (a weights file the service keeps) or `finetune` (a fal
/// finetune id).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    Lora,
    Finetune,
}

/// An image format, from the file's bytes.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PhotoFormat {
    Jpeg,
    Png,
    Webp,
}

/// The format of generated images.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    Jpeg,
    Png,
}

/// The aspect ratio of generated images.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum AspectRatio {
    #[serde(rename = "1:1")]
    Square,
    #[serde(rename = "3:4")]
    Portrait3x4,
    #[serde(rename = "4:3")]
    Landscape4x3,
    #[serde(rename = "9:16")]
    Portrait9x16,
    #[serde(rename = "16:9")]
    Landscape16x9,
    #[serde(rename = "2:3")]
    Portrait2x3,
    #[serde(rename = "3:2")]
    Landscape3x2,
    #[serde(rename = "21:9")]
    Landscape21x9,
    #[serde(rename = "9:21")]
    Portrait9x21,
}

/// fal's safety tolerance for finetuned avatars, `1` (strictest) to `6`, as a string.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum SafetyTolerance {
    #[serde(rename = "1")]
    One,
    #[serde(rename = "2")]
    Two,
    #[serde(rename = "3")]
    Three,
    #[serde(rename = "4")]
    Four,
    #[serde(rename = "5")]
    Five,
    #[serde(rename = "6")]
    Six,
}

/// One of fal's named image sizes.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageSize {
    Square,
    SquareHd,
    #[serde(rename = "portrait_4_3")]
    Portrait4x3,
    #[serde(rename = "portrait_16_9")]
    Portrait16x9,
    #[serde(rename = "landscape_4_3")]
    Landscape4x3,
    #[serde(rename = "landscape_16_9")]
    Landscape16x9,
}

/// The type of an event, as sent to webhook endpoints and on the event stream.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "training.queued")]
    TrainingQueued,
    #[serde(rename = "training.submitted")]
    TrainingSubmitted,
    #[serde(rename = "training.started")]
    TrainingStarted,
    #[serde(rename = "training.progress")]
    TrainingProgress,
    #[serde(rename = "training.succeeded")]
    TrainingSucceeded,
    #[serde(rename = "training.failed")]
    TrainingFailed,
    #[serde(rename = "training.cancelled")]
    TrainingCancelled,
    #[serde(rename = "training.timed_out")]
    TrainingTimedOut,
    #[serde(rename = "generation.queued")]
    GenerationQueued,
    #[serde(rename = "generation.succeeded")]
    GenerationSucceeded,
    #[serde(rename = "generation.failed")]
    GenerationFailed,
    #[serde(rename = "avatar.deleted")]
    AvatarDeleted,
    #[serde(rename = "webhook_endpoint.disabled")]
    WebhookEndpointDisabled,
}

/// The outcome of one delivery attempt: `in_flight`, `succeeded`, `failed`, or `abandoned` (the
/// sender stopped before recording the outcome; the event is sent again with the same
/// `webhook-id`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    InFlight,
    Succeeded,
    Failed,
    Abandoned,
}

/// Why a webhook endpoint is disabled: `gone` (the endpoint answered 410), `failing` (every
/// attempt failed for `WEBHOOK_DISABLE_AFTER`) or `disabled_by_caller`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DisabledReason {
    Gone,
    Failing,
    DisabledByCaller,
}

/// What became of a fal callback: `applied`, `ignored` (late, duplicate or out of order),
/// `duplicate`, or `unknown_request` (kept for reconciliation).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallbackOutcome {
    Applied,
    Ignored,
    Duplicate,
    UnknownRequest,
}

/// `ok` from the liveness check, `ready` from the readiness check.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Ok,
    Ready,
}

/// Adds the 429 every authenticated operation may answer (the key's request rate, see
/// [`crate::rate_limit`]) to those that do not document their own.
pub fn document_rate_limits(mut spec: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::header::Header;
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder, Type};
    let integer = || Header::new(utoipa::openapi::ObjectBuilder::new().schema_type(Type::Integer));
    let text = || Header::new(utoipa::openapi::ObjectBuilder::new().schema_type(Type::String));
    let response = ResponseBuilder::new()
        .description(
            "The key's request rate is at its limit (`rate_limited`); retry after `Retry-After` seconds",
        )
        .header("Retry-After", integer())
        .header("RateLimit", text())
        .header("RateLimit-Policy", text())
        .content(
            crate::problem::PROBLEM_CONTENT_TYPE,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build();
    for item in spec.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let authenticated = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            if authenticated {
                operation
                    .responses
                    .responses
                    .entry("429".to_string())
                    .or_insert_with(|| response.clone().into());
            }
        }
    }
    spec
}
