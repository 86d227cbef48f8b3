//! `/avatars/{id}/photos`: the avatar's training photos.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::{AvatarId, PhotoId};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::avatar_in_path::AvatarInPath;
use crate::extract::parse_json;
use crate::paced_body::PacedBody;
use crate::problem::{ApiError, Problem};
use crate::responses::{AvatarPath, AvatarTraining, Unauthorized};

use crate::state::AppState;
use crate::views::photos::{PhotoBatchReport, PhotoList, PhotoSetReport};
use service::photos::{self, PhotoBatch};

/// Photo files, uploaded as `multipart/form-data`.
#[derive(Debug, ToSchema)]
pub struct PhotoUpload {
    /// One file part per photo (JPEG, PNG or WebP). Any part name is accepted; `files` is the
    /// conventional one.
    #[schema(value_type = Vec<String>, format = Binary)]
    pub files: Vec<Vec<u8>>,
}

/// Photos to fetch from the caller's own storage instead of uploading them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhotoUrls {
    /// https URLs (at most the avatar's photo limit).
    pub urls: Vec<String>,
}

/// Add photos.
///
/// Send `multipart/form-data` with one or more file parts (any field name), or JSON
/// `{"urls": [...]}` to have the service fetch them. Each file is checked (format by content,
/// size, dimensions, a full decode, the short side, duplicates) and either accepted, with
/// quality warnings, or rejected with a code. Good files of a mixed batch are kept. Answers 201
/// when at least one file was accepted, else 422 with the rejections.
#[utoipa::path(
    post,
    path = "/avatars/{id}/photos",
    tag = "photos",
    operation_id = "add_photos",
    params(AvatarInPath),
    request_body(
        description = "Photo files as multipart/form-data, or `{\"urls\": [...]}` as JSON",
        content(
            (PhotoUpload = "multipart/form-data"),
            (PhotoUrls = "application/json"),
        )
    ),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "At least one photo accepted; the report lists every file", body = PhotoBatchReport),
        (status = 400, description = "Malformed multipart or JSON body", body = Problem, content_type = "application/problem+json"),
        AvatarInPath,
        AvatarTraining,
        (status = 413, description = "The whole request is larger than a full set of photos (`payload_too_large`), or carries more parts than `PHOTO_MAX_PARTS` (`too_many_parts`, with `limit`)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither multipart/form-data nor JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No file part (`no_files`), or every file rejected (`photos_rejected`, with `rejected`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_photos(
    State(state): State<AppState>,
    at: AvatarInPath,
    request: Request,
) -> Result<Response, ApiError> {
    let mut batch = PhotoBatch::open(&state, at.tenant, at.avatar).await?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence.to_ascii_lowercase().as_str() {
        "multipart/form-data" => upload_parts(&mut batch, &content_type, request).await?,
        "application/json" => {
            let PhotoUrls { urls } = read_json(&state, request).await?;
            batch.fetch_urls(urls).await?;
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send photos as multipart/form-data, or JSON {\"urls\": [...]}",
            ))
        }
    }
    let report = batch.finish().await?;
    Ok((StatusCode::CREATED, Json(PhotoBatchReport::from(report))).into_response())
}

/// Hands each multipart part to the batch as it streams in: form fields are refused, files
/// spooled chunk by chunk.
async fn upload_parts(
    batch: &mut PhotoBatch,
    content_type: &str,
    request: Request,
) -> Result<(), ApiError> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_multipart",
            "multipart/form-data needs a boundary parameter",
        )
    })?;
    // Requests larger than a whole set are refused outright.
    let whole_stream = multer::SizeLimit::new().whole_stream(batch.max_upload_bytes());
    let constraints = multer::Constraints::new().size_limit(whole_stream);
    let body = PacedBody::new(request.into_body().into_data_stream());
    let mut multipart = multer::Multipart::with_constraints(body, boundary, constraints);
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.file_name().or(field.name()).map(str::to_string);
        if field.file_name().is_none() && field.content_type().is_none() {
            // Drain it: a text field is not a photo.
            while field.chunk().await.map_err(multipart_error)?.is_some() {}
            batch.refuse_form_field(name.as_deref())?;
            continue;
        }
        let mut file = batch.receive(name.as_deref())?;
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            file.write(&chunk).await?;
        }
        batch.add(file).await?;
    }
    Ok(())
}

fn multipart_error(error: multer::Error) -> ApiError {
    match error {
        multer::Error::StreamSizeExceeded { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request is larger than a full set of photos",
        ),
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_multipart",
            format!("the multipart body is malformed: {other}"),
        ),
    }
}

/// Reads a JSON body up to the service's body limit.
async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    request: Request,
) -> Result<T, ApiError> {
    let limit = state.settings.http.max_body_bytes;
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than this endpoint accepts",
            )
        })?;
    parse_json(&bytes)
}

/// List photos.
#[utoipa::path(
    get,
    path = "/avatars/{id}/photos",
    tag = "photos",
    operation_id = "list_photos",
    params(AvatarInPath),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The avatar's photos, oldest first", body = PhotoList),
        AvatarInPath,
    )
)]
pub async fn list_photos(
    State(state): State<AppState>,
    at: AvatarInPath,
) -> Result<Json<PhotoList>, ApiError> {
    let photos = photos::list_photos(&state, at.tenant, at.avatar).await?;
    Ok(Json(PhotoList {
        items: photos.into_iter().map(Into::into).collect(),
    }))
}

/// Photo set report.
///
/// Summarises the set before anyone pays: photos that count toward the minimum under the
/// avatar kind's face policy, face findings per photo and by code, near-duplicate groups, the
/// spread of face sizes, and whether a training may start and with which trainer. A refused
/// `POST /avatars/{id}/train` carries the same summary as `photo_set`.
#[utoipa::path(
    get,
    path = "/avatars/{id}/photo-set",
    tag = "photos",
    operation_id = "get_photo_set",
    params(AvatarInPath),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The avatar's photo set summary", body = PhotoSetReport),
        AvatarInPath,
    )
)]
pub async fn get_photo_set(
    State(state): State<AppState>,
    at: AvatarInPath,
) -> Result<Json<PhotoSetReport>, ApiError> {
    let report = service::photo_set::photo_set(&state, at.tenant, at.avatar).await?;
    Ok(Json(report.into()))
}

/// Delete a photo.
///
/// The avatar goes back to `draft` when its set is no longer trainable.
#[utoipa::path(
    delete,
    path = "/avatars/{id}/photos/{photo_id}",
    tag = "photos",
    operation_id = "delete_photo",
    params(
        AvatarPath,
        ("photo_id" = Uuid, Path, description = "Photo id"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Deleted"),
        Unauthorized,
        (status = 404, description = "No such avatar or photo (`avatar_not_found`, `photo_not_found`)", body = Problem, content_type = "application/problem+json"),
        AvatarTraining,
    )
)]
pub async fn delete_photo(
    State(state): State<AppState>,
    caller: Caller,
    crate::extract::PathIds(id, photo_id): crate::extract::PathIds,
) -> Result<StatusCode, ApiError> {
    photos::delete_photo(&state, caller.tenant_id, AvatarId(id), PhotoId(photo_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
