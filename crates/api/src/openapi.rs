//! The OpenAPI document: pinned metadata here, operations collected from the router.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
