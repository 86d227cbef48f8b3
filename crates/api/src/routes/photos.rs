//! `/avatars/{id}/photos`: the avatar's training photos.

use std::collections::VecDeque;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use domain::{AvatarId, PhotoId, PhotoWarning};
use serde::{Deserialize, Serialize};
use store::{PhotoRecord, PhotoRemoval, StoreError};
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::extract::{parse_json, PathId};
use crate::problem::{ApiError, FieldLocation, Problem};
use crate::routes::avatars::AvatarResponse;
use crate::state::AppState;
use service::photos::{self, RejectedFile};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Warning {
    /// `too_dark`, `too_bright`, `low_contrast`, `blurry`, `near_duplicate`.
    pub code: String,
    pub message: String,
}

impl From<PhotoWarning> for Warning {
    fn from(w: PhotoWarning) -> Self {
        Self {
            code: w.code,
            message: w.message,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PhotoResponse {
    pub id: Uuid,
    pub file_name: String,
    /// `jpeg`, `png` or `webp`, from the file's bytes.
    #[schema(value_type = crate::openapi::PhotoFormat)]
    pub format: String,
    /// As stored, before EXIF orientation.
    pub width: u32,
    pub height: u32,
    /// EXIF orientation (1-8), applied when the training archive is built.
    pub orientation: u8,
    pub bytes: u64,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    pub warnings: Vec<Warning>,
    pub created_at: DateTime<Utc>,
}

impl From<PhotoRecord> for PhotoResponse {
    fn from(p: PhotoRecord) -> Self {
        Self {
            id: p.id.0,
            file_name: p.file_name,
            format: p.format.as_str().to_string(),
            width: p.width,
            height: p.height,
            orientation: p.orientation,
            bytes: p.bytes,
            sha256: p.sha256,
            warnings: p.warnings.into_iter().map(Into::into).collect(),
            created_at: p.created_at,
        }
    }
}

/// What happened to each file of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct PhotoBatchReport {
    pub accepted: Vec<PhotoResponse>,
    pub rejected: Vec<crate::views::archives::RejectedFile>,
    /// The avatar after the batch: `photo_count` and `status` (`ready` once trainable).
    pub avatar: AvatarResponse,
    pub min_photos: u32,
    pub max_photos: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PhotoList {
    pub items: Vec<PhotoResponse>,
}

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

fn photo_not_found(id: Uuid) -> ApiError {
    ApiError::not_found("photo_not_found", format!("no photo with id {id}"))
}

fn avatar_not_found(id: Uuid) -> ApiError {
    ApiError::not_found("avatar_not_found", format!("no avatar with id {id}"))
}

/// A fresh spool file in the scratch directory, removed when dropped.
fn spool_file(state: &AppState) -> Result<tempfile::NamedTempFile, ApiError> {
    tempfile::Builder::new()
        .prefix("avatars-upload-")
        .tempfile_in(&state.settings.scratch_dir)
        .map_err(ApiError::internal)
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
    params(("id" = Uuid, Path, description = "Avatar id")),
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
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such avatar (`avatar_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The avatar is training (`avatar_training`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The whole request is larger than a full set of photos", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Neither multipart/form-data nor JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "No file part (`no_files`), or every file rejected (`photos_rejected`, with `rejected`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_photos(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    request: Request,
) -> Result<Response, ApiError> {
    let avatar_id = AvatarId(id);
    let avatar = match state.store.get_avatar(caller.tenant_id, avatar_id).await {
        Ok(avatar) => avatar,
        Err(StoreError::NotFound) => return Err(avatar_not_found(id)),
        Err(error) => return Err(error.into()),
    };
    if avatar.status == domain::AvatarStatus::Training {
        return Err(service::ServiceError::avatar_training().into());
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (accepted, rejected) = match essence.as_str() {
        "multipart/form-data" => {
            upload_parts(&state, caller, avatar_id, &content_type, request).await?
        }
        "application/json" => fetch_urls(&state, caller, avatar_id, request).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send photos as multipart/form-data, or JSON {\"urls\": [...]}",
            ))
        }
    };
    if accepted.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "photos_rejected",
            format!(
                "none of the {} files was accepted; see `rejected`",
                rejected.len()
            ),
        )
        .with_extension(
            "rejected",
            serde_json::to_value(&rejected).map_err(ApiError::internal)?,
        ));
    }
    let avatar = state.store.get_avatar(caller.tenant_id, avatar_id).await?;
    let report = PhotoBatchReport {
        accepted: accepted.into_iter().map(Into::into).collect(),
        rejected: rejected.into_iter().map(Into::into).collect(),
        avatar: avatar.into(),
        min_photos: state.settings.photos.min_photos,
        max_photos: state.settings.photos.max_photos,
    };
    Ok((StatusCode::CREATED, Json(report)).into_response())
}

type Batch = (Vec<PhotoRecord>, Vec<RejectedFile>);

fn no_files(location: FieldLocation, field: &str) -> ApiError {
    ApiError::invalid_field(location, field, "no_files", "the request holds no photo")
}

/// Streams each multipart file part to a spool file (memory does not grow with the upload) and
/// ingests it before reading the next.
async fn upload_parts(
    state: &AppState,
    caller: Caller,
    avatar_id: AvatarId,
    content_type: &str,
    request: Request,
) -> Result<Batch, ApiError> {
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_multipart",
            "multipart/form-data needs a boundary parameter",
        )
    })?;
    let photos = state.settings.photos;
    // A whole set plus room for the multipart framing; larger requests are refused outright.
    let whole_limit = photos
        .max_photo_bytes
        .saturating_mul(u64::from(photos.max_photos))
        + 1024 * 1024;
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(whole_limit));
    let mut multipart = multer::Multipart::with_constraints(
        request.into_body().into_data_stream(),
        boundary,
        constraints,
    );
    let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
    let mut parts = 0usize;
    // Files are checked on blocking threads while the next part is received; outcomes are
    // taken in upload order, so limits and duplicates apply as the caller sent the files.
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let in_flight_limit = std::thread::available_parallelism().map_or(2, |n| n.get());
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
        parts += 1;
        let file_name = field
            .file_name()
            .or(field.name())
            .map(str::to_string)
            .unwrap_or_else(|| format!("part-{parts}"));
        if field.file_name().is_none() && field.content_type().is_none() {
            // Drain it: a text field is not a photo.
            while field.chunk().await.map_err(multipart_error)?.is_some() {}
            pending.push_back(Pending::Decided(RejectedFile::new(
                &file_name,
                "not_a_file",
                "this part is a form field, not a file",
            )));
            continue;
        }
        let spool = spool_file(state)?;
        let mut file = tokio::fs::File::from_std(spool.reopen().map_err(ApiError::internal)?);
        let mut size = 0u64;
        let mut too_large = false;
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            size += chunk.len() as u64;
            if size > photos.max_photo_bytes {
                too_large = true;
                continue;
            }
            file.write_all(&chunk).await.map_err(ApiError::internal)?;
        }
        file.flush().await.map_err(ApiError::internal)?;
        drop(file);
        if too_large {
            pending.push_back(Pending::Decided(RejectedFile::new(
                &file_name,
                "file_too_large",
                format!(
                    "the file is larger than the {} MB limit",
                    photos.max_photo_bytes / (1024 * 1024)
                ),
            )));
            continue;
        }
        let inspection = photos::inspect(state, spool.path().to_path_buf());
        pending.push_back(Pending::Inspecting(file_name, spool, inspection));
        while pending
            .iter()
            .filter(|p| matches!(p, Pending::Inspecting(..)))
            .count()
            >= in_flight_limit
        {
            settle_next(
                state,
                caller,
                avatar_id,
                &mut pending,
                &mut accepted,
                &mut rejected,
            )
            .await?;
        }
    }
    while !pending.is_empty() {
        settle_next(
            state,
            caller,
            avatar_id,
            &mut pending,
            &mut accepted,
            &mut rejected,
        )
        .await?;
    }
    if parts == 0 {
        return Err(no_files(FieldLocation::Body, "files"));
    }
    if accepted.is_empty() && rejected.iter().all(|r| r.code == "not_a_file") {
        return Err(no_files(FieldLocation::Body, "files"));
    }
    Ok((accepted, rejected))
}

/// A file of a batch whose outcome is not taken yet.
enum Pending {
    Inspecting(
        String,
        tempfile::NamedTempFile,
        tokio::task::JoinHandle<Result<media::PhotoInspection, media::InspectError>>,
    ),
    Decided(RejectedFile),
}

/// Takes the oldest pending file's outcome: admits it to the set when its checks passed.
async fn settle_next(
    state: &AppState,
    caller: Caller,
    avatar_id: AvatarId,
    pending: &mut VecDeque<Pending>,
    accepted: &mut Vec<PhotoRecord>,
    rejected: &mut Vec<RejectedFile>,
) -> Result<(), ApiError> {
    match pending.pop_front() {
        Some(Pending::Decided(rejection)) => rejected.push(rejection),
        Some(Pending::Inspecting(file_name, spool, inspection)) => {
            match photos::admit(
                state,
                caller.tenant_id,
                avatar_id,
                &file_name,
                spool.path(),
                inspection,
            )
            .await?
            {
                Ok(photo) => accepted.push(photo),
                Err(rejection) => rejected.push(rejection),
            }
        }
        None => {}
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

/// Fetches each URL through the safe fetcher into a spool file and ingests it.
async fn fetch_urls(
    state: &AppState,
    caller: Caller,
    avatar_id: AvatarId,
    request: Request,
) -> Result<Batch, ApiError> {
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
    let PhotoUrls { urls } = parse_json(&bytes)?;
    if urls.is_empty() {
        return Err(no_files(FieldLocation::Body, "urls"));
    }
    let max = state.settings.photos.max_photos as usize;
    if urls.len() > max {
        return Err(ApiError::invalid_field(
            FieldLocation::Body,
            "urls",
            "too_many",
            format!("at most {max} URLs"),
        ));
    }
    let (mut accepted, mut rejected) = (Vec::new(), Vec::new());
    for url in urls {
        let spool = spool_file(state)?;
        match state.photo_fetcher.fetch_to_file(&url, spool.path()).await {
            Ok(_) => {}
            Err(error) => {
                rejected.push(RejectedFile::new(&url, error.code(), error.to_string()));
                continue;
            }
        }
        match photos::ingest_file(state, caller.tenant_id, avatar_id, &url, spool.path()).await? {
            Ok(photo) => accepted.push(photo),
            Err(rejection) => rejected.push(rejection),
        }
    }
    Ok((accepted, rejected))
}

/// List photos.
#[utoipa::path(
    get,
    path = "/avatars/{id}/photos",
    tag = "photos",
    operation_id = "list_photos",
    params(("id" = Uuid, Path, description = "Avatar id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The avatar's photos, oldest first", body = PhotoList),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such avatar (`avatar_not_found`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_photos(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<PhotoList>, ApiError> {
    let photos = state
        .store
        .list_photos(caller.tenant_id, AvatarId(id))
        .await?
        .ok_or_else(|| avatar_not_found(id))?;
    Ok(Json(PhotoList {
        items: photos.into_iter().map(Into::into).collect(),
    }))
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
        ("id" = Uuid, Path, description = "Avatar id"),
        ("photo_id" = Uuid, Path, description = "Photo id"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing, unknown or revoked API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such avatar or photo (`avatar_not_found`, `photo_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The avatar is training (`avatar_training`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_photo(
    State(state): State<AppState>,
    caller: Caller,
    crate::extract::PathIds(id, photo_id): crate::extract::PathIds,
) -> Result<StatusCode, ApiError> {
    let removal = state
        .store
        .delete_photo(
            caller.tenant_id,
            AvatarId(id),
            PhotoId(photo_id),
            state.photo_set_rules(),
        )
        .await?;
    match removal {
        PhotoRemoval::Removed(_) => {
            service::workers::janitor::purge_deleted_blobs(&state).await;
            Ok(StatusCode::NO_CONTENT)
        }
        PhotoRemoval::AvatarNotFound => Err(avatar_not_found(id)),
        PhotoRemoval::PhotoNotFound => Err(photo_not_found(photo_id)),
        PhotoRemoval::AvatarBusy(_) => Err(service::ServiceError::avatar_training().into()),
    }
}
