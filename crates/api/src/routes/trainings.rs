//! Trainings: start one (`POST /avatars/{id}/train`), follow it, cancel it; and the presets.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::training::TrainingInput;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::extract::PathId;
use crate::idempotency::AvatarCommand;
use crate::pagination::Listing;
use crate::problem::{ApiError, Problem};
use crate::responses::{
    AvatarNotFound, AvatarPath, FalNotConfigured, MalformedJson, NotJson, TrainingNotFound,
    TrainingPath, Unauthorized,
};
use crate::state::AppState;
use crate::views::trainings::{
    accepted_training, generation_preset_view, training_preset_view, training_view,
    PresetsResponse, TrainingPage, TrainingResponse,
};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// `fast`, `balanced` (default) or `quality`.
    #[schema(value_type = Option<crate::openapi::TrainingPreset>)]
    pub preset: Option<String>,
    /// `portrait`, `pro` or `fast_lora`; chosen from the avatar's kind when absent and
    /// automatic selection is on.
    #[schema(value_type = Option<crate::openapi::Trainer>)]
    pub trainer: Option<String>,
    /// Trainer parameters overriding the preset (e.g. `{"steps": 1200}`), checked against the
    /// trainer's schema.
    #[schema(value_type = Option<Object>)]
    pub overrides: Option<Map<String, Value>>,
    /// The token the model learns; the avatar's trigger phrase when absent.
    pub trigger_phrase: Option<String>,
    /// Train from your own ZIP of photos instead of the uploaded ones; fetched and checked
    /// before anything is spent.
    pub images_data_url: Option<String>,
}

impl From<TrainRequest> for TrainingInput {
    fn from(request: TrainRequest) -> Self {
        TrainingInput {
            preset: request.preset,
            trainer: request.trainer,
            overrides: request.overrides,
            trigger_phrase: request.trigger_phrase,
            images_data_url: request.images_data_url,
        }
    }
}

/// Start a training.
///
/// Checks the photo set (or your archive), picks the trainer and preset, stores the job and
/// answers 202 at once; the upload to fal and the submit happen in the background. Send an
/// `Idempotency-Key` to make retries safe: the same key and body replay the first answer.
#[utoipa::path(
    post,
    path = "/avatars/{id}/train",
    tag = "trainings",
    operation_id = "train_avatar",
    params(
        AvatarPath,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe (1-255 printable ASCII)"),
    ),
    request_body = TrainRequest,
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Accepted; follow the training at its Location", body = TrainingResponse,
            headers(("location" = String, description = "URL of the training"))),
        MalformedJson,
        Unauthorized,
        AvatarNotFound,
        (status = 409, description = "Photo set not trainable (`photo_set_not_trainable`, with counts), a training already running (`training_in_progress`), or the same Idempotency-Key in flight (`idempotency_key_in_use`)", body = Problem, content_type = "application/problem+json"),
        NotJson,
        (status = 422, description = "Invalid fields (`validation_failed`), an unusable archive (`archive_unusable`, with `inspection`: the archive as `POST /training-archives/inspect` shows it), a training expected to run longer than `FAL_TRAINING_TIMEOUT` (`estimate_exceeds_timeout`, naming `overrides.steps`, `overrides.iterations` or `preset`), or an Idempotency-Key reused with another body (`idempotency_key_mismatch`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The key's request rate (`rate_limited`, with `Retry-After`) or the tenant's running trainings (`training_quota_exceeded`) are at their limit", body = Problem, content_type = "application/problem+json"),
        FalNotConfigured,
    )
)]
pub async fn train_avatar(
    State(state): State<AppState>,
    command: AvatarCommand,
) -> Result<Response, ApiError> {
    let (state, tenant, avatar) = (&state, command.tenant, command.avatar);
    command
        .run(state, |request: TrainRequest, hold| async move {
            let input = TrainingInput::from(request);
            let training =
                service::trainings::create(state, tenant, avatar, &input, hold.as_ref()).await?;
            accepted_training(training)
        })
        .await
}

/// Get a training.
#[utoipa::path(
    get,
    path = "/trainings/{id}",
    tag = "trainings",
    operation_id = "get_training",
    params(TrainingPath),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The training", body = TrainingResponse),
        Unauthorized,
        TrainingNotFound,
    )
)]
pub async fn get_training(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<TrainingResponse>, ApiError> {
    let training = service::trainings::get(&state, caller.tenant_id, id).await?;
    Ok(Json(training_view(training)))
}

/// List an avatar's trainings.
#[utoipa::path(
    get,
    path = "/avatars/{id}/trainings",
    tag = "trainings",
    operation_id = "list_trainings",
    params(Listing),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Newest first", body = TrainingPage),
        Listing,
    )
)]
pub async fn list_trainings(
    State(state): State<AppState>,
    Listing(listing): Listing,
) -> Result<Json<TrainingPage>, ApiError> {
    let found = service::trainings::list(&state, listing).await?;
    let (items, next_cursor) = crate::pagination::render(found, |t| t.job.id, training_view);
    Ok(Json(TrainingPage { items, next_cursor }))
}

/// Cancel a training.
///
/// A training not yet submitted is cancelled at once; a submitted one is cancelled on fal.
/// If fal already finished it, its result wins and the answer shows it. When fal cannot be
/// reached now, the cancel is recorded (`cancel_requested: true`) and retried until fal
/// answers or `CANCEL_MAX_ATTEMPTS` run out.
#[utoipa::path(
    post,
    path = "/trainings/{id}/cancel",
    tag = "trainings",
    operation_id = "cancel_training",
    params(TrainingPath),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "The training after the cancel request", body = TrainingResponse),
        Unauthorized,
        TrainingNotFound,
        (status = 409, description = "The training already finished (`training_finished`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_training(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let training = service::trainings::cancel(&state, caller.tenant_id, id).await?;
    Ok((StatusCode::ACCEPTED, Json(training_view(training))).into_response())
}

/// List presets.
///
/// Every training and generation preset with its effective parameters, endpoint, typical
/// duration and estimated cost.
#[utoipa::path(
    get,
    path = "/presets",
    tag = "trainings",
    operation_id = "list_presets",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The presets", body = PresetsResponse),
        Unauthorized,
    )
)]
pub async fn list_presets(State(state): State<AppState>, _caller: Caller) -> Json<PresetsResponse> {
    let presets = service::trainings::presets(&state);
    Json(PresetsResponse {
        training: presets
            .training
            .into_iter()
            .map(training_preset_view)
            .collect(),
        generation: presets
            .generation
            .into_iter()
            .map(generation_preset_view)
            .collect(),
    })
}
