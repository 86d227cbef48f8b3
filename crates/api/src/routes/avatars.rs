//! `/avatars`: create, list, read, rename and delete a tenant's avatars.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use domain::{NewAvatar, TriggerPhrase, Violations};
use serde::Deserialize;
use store::{AvatarFilter, AvatarPatch};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::avatar_in_path::AvatarInPath;
use crate::extract::{AppJson, AppQuery};
use crate::problem::{ApiError, Problem};
use crate::responses::{
    located, InvalidFields, InvalidQuery, MalformedJson, NotJson, Unauthorized,
};
use crate::state::AppState;
use crate::views::avatars::{AvatarPage, AvatarResponse, Kind, Status};

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
        MalformedJson,
        Unauthorized,
        (status = 409, description = "Trigger phrase already used (`trigger_phrase_taken`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        NotJson,
        InvalidFields,
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
    let location = format!("/avatars/{}", avatar.id);
    located(StatusCode::CREATED, &location, AvatarResponse::from(avatar))
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
        Unauthorized,
        InvalidQuery,
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
    let found = service::avatars::list_avatars(&state, caller.tenant_id, &filter, page).await?;
    let (items, next_cursor) = crate::pagination::render(found, |a| a.id.0, Into::into);
    Ok(Json(AvatarPage { items, next_cursor }))
}

/// Get an avatar.
#[utoipa::path(
    get,
    path = "/avatars/{id}",
    tag = "avatars",
    operation_id = "get_avatar",
    params(AvatarInPath),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The avatar", body = AvatarResponse),
        AvatarInPath,
    )
)]
pub async fn get_avatar(
    State(state): State<AppState>,
    at: AvatarInPath,
) -> Result<Json<AvatarResponse>, ApiError> {
    let avatar = service::avatars::get_avatar(&state, at.tenant, at.avatar).await?;
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
    params(AvatarInPath),
    request_body = UpdateAvatarRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The updated avatar", body = AvatarResponse),
        MalformedJson,
        AvatarInPath,
        (status = 409, description = "Trigger phrase taken (`trigger_phrase_taken`) or fixed by training (`trigger_phrase_locked`)", body = Problem, content_type = "application/problem+json"),
        NotJson,
        InvalidFields,
    )
)]
pub async fn update_avatar(
    State(state): State<AppState>,
    at: AvatarInPath,
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
    let avatar = service::avatars::update_avatar(&state, at.tenant, at.avatar, &patch).await?;
    Ok(Json(avatar.into()))
}

/// Delete an avatar.
#[utoipa::path(
    delete,
    path = "/avatars/{id}",
    tag = "avatars",
    operation_id = "delete_avatar",
    params(AvatarInPath),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Deleted"),
        AvatarInPath,
    )
)]
pub async fn delete_avatar(
    State(state): State<AppState>,
    at: AvatarInPath,
) -> Result<StatusCode, ApiError> {
    service::deletion::delete_avatar(&state, at.tenant, at.avatar).await?;
    Ok(StatusCode::NO_CONTENT)
}
