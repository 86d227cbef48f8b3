//! `/training-archives/inspect`: check a caller's own training archive before training on it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::extract::AppJson;
use crate::problem::{ApiError, FieldLocation, Problem};
use crate::state::AppState;
use service::training_data::{self, ArchiveCheckError};

use crate::views::archives::ArchiveInspection;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InspectArchiveRequest {
    /// An https URL of a ZIP of photos (and optional caption `.txt` files).
    pub images_data_url: String,
}

/// Inspect a training archive.
///
/// Fetches the ZIP a training would use as `images_data_url` and checks it as fal cannot:
/// every entry against the photo rules, unsafe names, symlinks, nested archives, bombs. Costs
/// nothing on fal.
#[utoipa::path(
    post,
    path = "/training-archives/inspect",
    tag = "photos",
    operation_id = "inspect_training_archive",
    request_body = InspectArchiveRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The archive was read; `usable` says whether it can be trained from", body = ArchiveInspection),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The URL cannot be fetched (`errors[0].code` names why) or the archive is refused as a whole (`archive_rejected`, with `reason`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn inspect_training_archive(
    State(state): State<AppState>,
    _caller: Caller,
    AppJson(body): AppJson<InspectArchiveRequest>,
) -> Result<Json<ArchiveInspection>, ApiError> {
    match training_data::inspect_archive_url(&state, &body.images_data_url).await {
        Ok(inspection) => Ok(Json(inspection.into())),
        Err(ArchiveCheckError::Fetch(error)) => Err(ApiError::invalid_field(
            FieldLocation::Body,
            "images_data_url",
            error.code(),
            error.to_string(),
        )),
        Err(ArchiveCheckError::Archive(error)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "archive_rejected",
            error.message(),
        )
        .with_extension("reason", error.code())),
        Err(error) => Err(ApiError::internal(error)),
    }
}
