//! `/training-archives/inspect`: check a caller's own training archive before training on it.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::extract::AppJson;
use crate::problem::{ApiError, Problem};
use crate::responses::Unauthorized;
use crate::state::AppState;
use service::training_data;

use crate::views::archives::ArchiveInspection;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InspectArchiveRequest {
    /// An https URL of a ZIP of photos (and optional caption `.txt` files).
    pub images_data_url: String,
    /// The avatar kind the archive is for: its face policy (`PHOTO_FACE_POLICY`) decides which
    /// images count toward the minimum, as for a training. Without it no face policy applies.
    pub kind: Option<crate::views::avatars::Kind>,
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
        Unauthorized,
        (status = 422, description = "The URL cannot be fetched (`errors[0].code` names why) or the archive is refused as a whole (`archive_rejected`, with `reason`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn inspect_training_archive(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<InspectArchiveRequest>,
) -> Result<Json<ArchiveInspection>, ApiError> {
    let inspection = training_data::inspect_archive_url(
        &state,
        caller.tenant_id,
        &body.images_data_url,
        body.kind.map(Into::into),
    )
    .await?;
    Ok(Json(inspection.into()))
}
