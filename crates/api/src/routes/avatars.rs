//! `/avatars`: create, list, read, rename and delete a tenant's avatars.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use domain::{Avatar, AvatarId, AvatarKind, AvatarStatus, NewAvatar, TriggerPhrase, Violations};
use serde::{Deserialize, Serialize};
use store::{AvatarFilter, AvatarPatch};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Caller;
use crate::extract::{AppJson, AppQuery, PathId};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// What an avatar depicts. `character` avatars (people) train with the portrait trainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Character,
    Style,
    Product,
    General,
}

impl From<Kind> for AvatarKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Character => AvatarKind::Character,
            Kind::Style => AvatarKind::Style,
            Kind::Product => AvatarKind::Product,
            Kind::General => AvatarKind::General,
        }
    }
}

impl From<AvatarKind> for Kind {
    fn from(kind: AvatarKind) -> Self {
        match kind {
            AvatarKind::Character => Kind::Character,
            AvatarKind::Style => Kind::Style,
            AvatarKind::Product => Kind::Product,
            AvatarKind::General => Kind::General,
        }
    }
}

/// Where the avatar is in its life: `draft` (collecting photos), `ready` (photo set valid),
/// `training`, `trained`, `failed`, `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Ready,
    Training,
    Trained,
    Failed,
    Cancelled,
}

impl From<Status> for AvatarStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Draft => AvatarStatus::Draft,
            Status::Ready => AvatarStatus::Ready,
            Status::Training => AvatarStatus::Training,
            Status::Trained => AvatarStatus::Trained,
            Status::Failed => AvatarStatus::Failed,
            Status::Cancelled => AvatarStatus::Cancelled,
        }
    }
}

impl From<AvatarStatus> for Status {
    fn from(status: AvatarStatus) -> Self {
        match status {
            AvatarStatus::Draft => Status::Draft,
            AvatarStatus::Ready => Status::Ready,
            AvatarStatus::Training => Status::Training,
            AvatarStatus::Trained => Status::Trained,
            AvatarStatus::Failed => Status::Failed,
            AvatarStatus::Cancelled => Status::Cancelled,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAvatarRequest {
    /// Display name, 1-100 characters.
    #[schema(example = "Anna, summer shoot")]
    pub name: String,
    pub kind: Kind,
    /// Your own id for the person this avatar belongs to (e.g. your user id), for filtering.
    #[schema(example = "user-4711")]
    pub owner_ref: Option<String>,
    /// The token that names the subject in prompts: 3-40 ASCII letters, digits or underscores,
    /// starting with a letter, unique within your tenant. Generated when absent.
    #[schema(example = "ohwx_anna")]
    pub trigger_phrase: Option<String>,
}

/// Fields to change; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAvatarRequest {
    pub name: Option<String>,
    /// May change only while the avatar is untrained (`draft` or `ready`).
    pub trigger_phrase: Option<String>,
}

/// The model an avatar was trained into; null until a training succeeds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrainedModel {
    /// `lora` (a weights file we keep) or `finetune` (a fal finetune id).
    #[schema(value_type = crate::openapi::ModelType)]
    pub model_type: String,
    pub trigger_phrase: String,
    pub trained_at: DateTime<Utc>,
    /// The training that produced it.
    pub training_id: Uuid,
    /// SHA-256 of the LoRA weights the service keeps (LoRA models).
    pub artifact_sha256: Option<String>,
    /// fal's finetune id (finetune models).
    pub finetune_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AvatarResponse {
    pub id: Uuid,
    pub name: String,
    pub kind: Kind,
    pub owner_ref: Option<String>,
    pub trigger_phrase: String,
    pub status: Status,
    /// Accepted photos in the avatar's training set.
    pub photo_count: u32,
    pub trained_model: Option<TrainedModel>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Avatar> for AvatarResponse {
    fn from(avatar: Avatar) -> Self {
        Self {
            id: avatar.id.0,
            name: avatar.name,
            kind: avatar.kind.into(),
            owner_ref: avatar.owner_ref,
            trigger_phrase: avatar.trigger_phrase,
            status: avatar.status.into(),
            photo_count: avatar.photo_count,
            trained_model: avatar.model.map(|m| TrainedModel {
                model_type: m.model_type.as_str().to_string(),
                trigger_phrase: m.trigger_phrase,
                trained_at: m.trained_at,
                training_id: m.training_id,
                artifact_sha256: m.artifact_sha256,
                finetune_id: m.finetune_id,
            }),
            created_at: avatar.created_at,
            updated_at: avatar.updated_at,
        }
    }
}

/// One page of avatars, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AvatarPage {
    pub items: Vec<AvatarResponse>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListAvatarsQuery {
    /// Page size, 1-100 (default 20).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only avatars with this owner_ref.
    pub owner_ref: Option<String>,
    /// Only avatars in this status.
    pub status: Option<Status>,
}

/// Create an avatar.
///
/// The avatar starts as `draft`; upload photos to make it `ready` for training.
#[utoipa::path(
    post,
    path = "/avatars",
    tag = "avatars",
    operation_id = "create_avatar",
    request_body = CreateAvatarRequest,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created", body = AvatarResponse,
            headers(("location" = String, description = "URL of the new avatar"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Trigger phrase already used (`trigger_phrase_taken`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each listed in `errors`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_avatar(
    State(state): State<AppState>,
    caller: Caller,
    AppJson(body): AppJson<CreateAvatarRequest>,
) -> Result<Response, ApiError> {
    let new = NewAvatar::parse(
        &body.name,
        body.kind.into(),
        body.owner_ref.as_deref(),
        body.trigger_phrase.as_deref(),
    )?;
    let avatar = service::avatars::create_avatar(&state, caller.tenant_id, new).await?;
    let location =
        HeaderValue::from_str(&format!("/avatars/{}", avatar.id)).map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(AvatarResponse::from(avatar)),
    )
        .into_response())
}

/// List avatars.
///
/// Newest first, one page at a time; follow `next_cursor` until it is null.
#[utoipa::path(
    get,
    path = "/avatars",
    tag = "avatars",
    operation_id = "list_avatars",
    params(ListAvatarsQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "A page of avatars", body = AvatarPage),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid query parameter", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_avatars(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(query): AppQuery<ListAvatarsQuery>,
) -> Result<Json<AvatarPage>, ApiError> {
    let page = crate::pagination::page(query.limit, query.cursor.as_deref())?;
    let filter = AvatarFilter {
        owner_ref: query.owner_ref,
        status: query.status.map(Into::into),
    };
    let (avatars, has_more) = service::avatars::list_avatars(
        &state,
        caller.tenant_id,
        &filter,
        page.after.map(AvatarId),
        page.limit,
    )
    .await?;
    let next_cursor = crate::pagination::next_cursor(has_more, avatars.last().map(|a| a.id.0));
    Ok(Json(AvatarPage {
        items: avatars.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// Get an avatar.
#[utoipa::path(
    get,
    path = "/avatars/{id}",
    tag = "avatars",
    operation_id = "get_avatar",
    params(("id" = Uuid, Path, description = "Avatar id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The avatar", body = AvatarResponse),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such avatar (`avatar_not_found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_avatar(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<AvatarResponse>, ApiError> {
    let avatar = service::avatars::get_avatar(&state, caller.tenant_id, AvatarId(id)).await?;
    Ok(Json(avatar.into()))
}

/// Update an avatar.
///
/// Rename it, or change its trigger phrase while it is untrained.
#[utoipa::path(
    patch,
    path = "/avatars/{id}",
    tag = "avatars",
    operation_id = "update_avatar",
    params(("id" = Uuid, Path, description = "Avatar id")),
    request_body = UpdateAvatarRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The updated avatar", body = AvatarResponse),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such avatar (`avatar_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Trigger phrase taken (`trigger_phrase_taken`) or fixed by training (`trigger_phrase_locked`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields, each listed in `errors`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn update_avatar(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    AppJson(body): AppJson<UpdateAvatarRequest>,
) -> Result<Json<AvatarResponse>, ApiError> {
    let mut violations = Violations::default();
    let patch = AvatarPatch {
        name: body
            .name
            .as_deref()
            .and_then(|n| violations.check(domain::AvatarName::parse("name", n))),
        trigger_phrase: body
            .trigger_phrase
            .as_deref()
            .and_then(|t| violations.check(TriggerPhrase::parse("trigger_phrase", t))),
    };
    violations.into_result()?;
    let avatar =
        service::avatars::update_avatar(&state, caller.tenant_id, AvatarId(id), &patch).await?;
    Ok(Json(avatar.into()))
}

/// Delete an avatar.
#[utoipa::path(
    delete,
    path = "/avatars/{id}",
    tag = "avatars",
    operation_id = "delete_avatar",
    params(("id" = Uuid, Path, description = "Avatar id")),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such avatar (`avatar_not_found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_avatar(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    service::deletion::delete_avatar(&state, caller.tenant_id, AvatarId(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
