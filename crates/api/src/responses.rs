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

#[derive(IntoResponses)]
#[response(
    status = 401,
    description = "Missing, unknown or revoked API key",
    content_type = "application/problem+json"
)]
pub struct Unauthorized(pub Problem);

#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "No such avatar (`avatar_not_found`)",
    content_type = "application/problem+json"
)]
pub struct AvatarNotFound(pub Problem);

#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "No such training (`training_not_found`)",
    content_type = "application/problem+json"
)]
pub struct TrainingNotFound(pub Problem);

#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "No such generation (`generation_not_found`)",
    content_type = "application/problem+json"
)]
pub struct GenerationNotFound(pub Problem);

#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "No such endpoint (`webhook_endpoint_not_found`)",
    content_type = "application/problem+json"
)]
pub struct EndpointNotFound(pub Problem);

#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "No such endpoint or delivery",
    content_type = "application/problem+json"
)]
pub struct DeliveryNotFound(pub Problem);

#[derive(IntoResponses)]
#[response(
    status = 400,
    description = "Malformed JSON",
    content_type = "application/problem+json"
)]
pub struct MalformedJson(pub Problem);

#[derive(IntoResponses)]
#[response(
    status = 415,
    description = "Body is not JSON",
    content_type = "application/problem+json"
)]
pub struct NotJson(pub Problem);

#[derive(IntoResponses)]
#[response(
    status = 422,
    description = "Invalid query parameter",
    content_type = "application/problem+json"
)]
pub struct InvalidQuery(pub Problem);

#[derive(IntoResponses)]
#[response(
    status = 422,
    description = "Invalid fields, each listed in `errors`",
    content_type = "application/problem+json"
)]
pub struct InvalidFields(pub Problem);

#[derive(IntoResponses)]
#[response(
    status = 409,
    description = "The avatar is training (`avatar_training`)",
    content_type = "application/problem+json"
)]
pub struct AvatarTraining(pub Problem);

#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "fal is not configured (`fal_not_configured`)",
    content_type = "application/problem+json"
)]
pub struct FalNotConfigured(pub Problem);

/// The avatar an operation's path names (`{id}`), as documented.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AvatarPath {
    /// Avatar id
    pub id: uuid::Uuid,
}

/// The endpoint an operation's path names (`{id}`), as documented.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EndpointPath {
    /// Endpoint id
    pub id: uuid::Uuid,
}

/// The generation an operation's path names (`{id}`), as documented.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct GenerationPath {
    /// Generation id
    pub id: uuid::Uuid,
}

/// The training an operation's path names (`{id}`), as documented.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TrainingPath {
    /// Training id
    pub id: uuid::Uuid,
}
