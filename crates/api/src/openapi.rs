//! The OpenAPI document: pinned metadata here, operations collected from the router.

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};

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
        (name = "usage", description = "What a tenant's trainings and generations came to, for billing"),
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
// their string fields (and their own validation errors); these types only name the values, taken
// from the domain's own lists where it has them, so the document cannot drift from the code.

/// Declares a documentation-only string enum with the given values.
macro_rules! closed_set {
    ($($(#[doc = $doc:literal])+ $name:ident = $values:expr;)+) => {$(
        $(#[doc = $doc])+
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                let description = [$($doc),+].map(str::trim).join("\n");
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some($values))
                    .description(Some(description))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    )+};
}

closed_set! {
    /// Where a training, or a generation's item (one fal request), is: `pending`, `uploading`,
    /// `submitted`, `in_progress`, `submit_unknown` (fal may or may not have the request; resolved
    /// by its callback, a status lookup or the deadline; never resubmitted), then `succeeded`,
    /// `failed`, `cancelled` or `timed_out`.
    JobStatus = domain::JobStatus::ALL.map(domain::JobStatus::as_str);

    /// A generation's status, from its items': `pending`, `in_progress`, `succeeded`, `failed` (no
    /// item succeeded) or `partially_succeeded`.
    GenerationStatus = domain::GenerationStatus::ALL.map(domain::GenerationStatus::as_str);

    /// A fal trainer: `portrait` (portrait LoRA), `pro` (FLUX.1 [pro] finetune) or `fast_lora`
    /// (general LoRA).
    Trainer = domain::Trainer::ALL.map(domain::Trainer::as_str);

    /// A training preset.
    TrainingPreset = domain::PresetName::ALL.map(domain::PresetName::as_str);

    /// A generation preset.
    GenerationPreset = domain::GenerationPresetName::ALL.map(domain::GenerationPresetName::as_str);

    /// What a training produces: `lora` (a weights file the service keeps) or `finetune` (a fal
    /// finetune id).
    ModelType = domain::ModelType::ALL.map(domain::ModelType::as_str);

    /// An image format, from the file's bytes.
    PhotoFormat = [domain::PhotoFormat::Jpeg, domain::PhotoFormat::Png, domain::PhotoFormat::Webp]
        .map(domain::PhotoFormat::as_str);

    /// The format of generated images.
    OutputFormat = ["jpeg", "png"];

    /// The aspect ratio of generated images.
    AspectRatio = domain::generation::ASPECT_RATIOS;

    /// fal's safety tolerance for finetuned avatars, `1` (strictest) to `6`, as a string.
    SafetyTolerance = ["1", "2", "3", "4", "5", "6"];

    /// One of fal's named image sizes.
    ImageSize = domain::ImageSizePreset::ALL.map(domain::ImageSizePreset::as_str);

    /// The type of an event, as sent to webhook endpoints and on the event stream.
    EventType = domain::EventType::NAMES;

    /// The outcome of one delivery attempt: `in_flight`, `succeeded`, `failed`, or `abandoned` (the
    /// sender stopped before recording the outcome; the event is sent again with the same
    /// `webhook-id`).
    AttemptOutcome = domain::delivery::AttemptOutcome::ALL.map(domain::delivery::AttemptOutcome::as_str);

    /// Why a webhook endpoint is disabled: `gone` (the endpoint answered 410), `failing` (every
    /// attempt failed for `WEBHOOK_DISABLE_AFTER`) or `disabled_by_caller`.
    DisabledReason = ["gone", "failing", "disabled_by_caller"];

    /// What became of a fal callback: `applied`, `ignored` (late, duplicate or out of order),
    /// `duplicate`, or `unknown_request` (kept for reconciliation).
    CallbackOutcome = ["applied", "ignored", "duplicate", "unknown_request"];

    /// `ok` from the liveness check, `ready` from the readiness check.
    HealthState = ["ok", "ready"];
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
