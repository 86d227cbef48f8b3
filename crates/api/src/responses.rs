//! What the routes answer and document alike: a created or accepted resource at its
//! `Location`; the error responses many operations document in the same words (for the
//! `responses(...)` of `#[utoipa::path]`; each is a problem document,
//! `application/problem+json`); and the `{id}` path parameters (for its `params(...)`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::{IntoParams, IntoResponses};

use crate::problem::{ApiError, Problem};

/// `body` as JSON with `status`, at `location`.
pub fn located(
    status: StatusCode,
    location: &str,
    body: impl Serialize,
) -> Result<Response, ApiError> {
    let location = HeaderValue::from_str(location).map_err(ApiError::internal)?;
    Ok((status, [(header::LOCATION, location)], Json(body)).into_response())
}

/// Declares error responses, each documented in the same words wherever an operation lists it.
macro_rules! problem_responses {
    ($($name:ident = $status:literal, $description:literal;)*) => {$(
        #[derive(IntoResponses)]
        #[response(
            status = $status,
            description = $description,
            content_type = "application/problem+json"
        )]
        pub struct $name(pub Problem);
    )*};
}

problem_responses! {
    Unauthorized = 401, "Missing, unknown or revoked API key";
    AvatarNotFound = 404, "No such avatar (`avatar_not_found`)";
    TrainingNotFound = 404, "No such training (`training_not_found`)";
    GenerationNotFound = 404, "No such generation (`generation_not_found`)";
    EndpointNotFound = 404, "No such endpoint (`webhook_endpoint_not_found`)";
    DeliveryNotFound = 404, "No such endpoint or delivery";
    MalformedJson = 400, "Malformed JSON";
    NotJson = 415, "Body is not JSON";
    InvalidQuery = 422, "Invalid query parameter";
    InvalidFields = 422, "Invalid fields, each listed in `errors`";
    AvatarTraining = 409, "The avatar is training (`avatar_training`)";
    FalNotConfigured = 503, "fal is not configured (`fal_not_configured`)";
}

/// Declares the `{id}` path parameter of the operations on each kind of resource.
macro_rules! id_paths {
    ($($name:ident, $description:literal;)*) => {$(
        #[derive(IntoParams)]
        #[into_params(parameter_in = Path)]
        pub struct $name {
            #[doc = $description]
            pub id: uuid::Uuid,
        }
    )*};
}

id_paths! {
    AvatarPath, "Avatar id";
    EndpointPath, "Endpoint id";
    GenerationPath, "Generation id";
    TrainingPath, "Training id";
}
