//! Photo intake: every file a caller sends (uploaded or fetched from a URL) is spooled to a
//! temporary file, inspected, reserved in the avatar's set, stored as a blob and only then
//! counted. Nothing is stored for a rejected file, and a crash mid-way leaves a pending row the
//! janitor cleans up, never an unknown blob.

use std::path::Path;

use domain::{AvatarId, PhotoFormat, PhotoWarning, TenantId};
use serde::Serialize;
use store::{NewPhoto, PhotoRecord, Reservation};

use crate::context::Service;
use crate::error::ServiceError;

/// A file the service refused, and why.
#[derive(Debug, Clone, Serialize)]
pub struct RejectedFile {
    /// The uploaded file's name, or the URL it was fetched from.
    pub file_name: String,
    /// Stable machine code, e.g. `unsupported_format`, `too_small`, `duplicate_photo`.
    pub code: String,
    pub message: String,
}

impl RejectedFile {
    pub fn new(file_name: &str, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file_name: file_name.to_string(),
            code: code.into(),
            message: message.into(),
        }
    }
}

fn format_of(format: media::PhotoFormat) -> PhotoFormat {
    match format {
        media::PhotoFormat::Jpeg => PhotoFormat::Jpeg,
        media::PhotoFormat::Png => PhotoFormat::Png,
        media::PhotoFormat::Webp => PhotoFormat::Webp,
    }
}

/// Checks the file at `path` and, when it passes, adds it to the avatar's set.
/// `Ok(Err(_))` is a refusal of this one file; `Err(_)` stops the whole request.
pub async fn ingest_file(
    service: &Service,
    tenant_id: TenantId,
    avatar_id: AvatarId,
    file_name: &str,
    path: &Path,
) -> Result<Result<PhotoRecord, RejectedFile>, ServiceError> {
    let inspection = inspect(service, path.to_path_buf());
    admit(service, tenant_id, avatar_id, file_name, path, inspection).await
}

/// The photo checks of one file, on a blocking thread (decoding is CPU work). Returns a handle
/// so a batch can check the next file while this one is being admitted.
pub fn inspect(
    service: &Service,
    path: std::path::PathBuf,
) -> tokio::task::JoinHandle<Result<media::PhotoInspection, media::InspectError>> {
    let rules = service.photo_rules();
    tokio::task::spawn_blocking(move || media::inspect_photo_path(&path, &rules))
}

/// Adds an inspected file to the avatar's set: reserve, store the bytes, count.
pub async fn admit(
    service: &Service,
    tenant_id: TenantId,
    avatar_id: AvatarId,
    file_name: &str,
    path: &Path,
    inspection: tokio::task::JoinHandle<Result<media::PhotoInspection, media::InspectError>>,
) -> Result<Result<PhotoRecord, RejectedFile>, ServiceError> {
    let inspection = match inspection.await.map_err(ServiceError::internal)? {
        Ok(inspection) => inspection,
        Err(media::InspectError::Rejected(rejection)) => {
            return Ok(Err(RejectedFile::new(
                file_name,
                rejection.code(),
                rejection.message(),
            )))
        }
        Err(media::InspectError::Io(error)) => return Err(ServiceError::internal(error)),
    };
    let new = NewPhoto {
        file_name: file_name.to_string(),
        format: format_of(inspection.format),
        width: inspection.width,
        height: inspection.height,
        orientation: inspection.orientation,
        bytes: inspection.bytes,
        sha256: inspection.sha256.clone(),
        perceptual_hash: inspection.perceptual_hash,
        warnings: inspection
            .warnings
            .iter()
            .map(|w| PhotoWarning {
                code: w.code.to_string(),
                message: w.message.clone(),
            })
            .collect(),
    };
    let rules = service.photo_set_rules();
    let photo = match service
        .store
        .reserve_photo(tenant_id, avatar_id, new, rules, media::is_near_duplicate)
        .await?
    {
        Reservation::Reserved(photo) => photo,
        Reservation::AvatarNotFound => return Err(ServiceError::avatar_not_found(avatar_id)),
        Reservation::AvatarBusy(_) => return Err(ServiceError::avatar_training()),
        Reservation::LimitReached { max } => {
            return Ok(Err(RejectedFile::new(
                file_name,
                "photo_limit_reached",
                format!(
                "the avatar already holds the maximum of {max} photos; delete one to add another"
            ),
            )))
        }
        Reservation::Duplicate { existing } => {
            return Ok(Err(RejectedFile::new(
                file_name,
                "duplicate_photo",
                format!("the same file is already in the avatar's set as photo {existing}"),
            )))
        }
    };
    if let Err(error) = service.blobs.put_file(&photo.blob_key, path).await {
        service.store.discard_pending_photo(photo.id).await?;
        crate::workers::janitor::purge_deleted_blobs(service).await;
        return Err(ServiceError::unavailable(
            "storage_unavailable",
            "the photo could not be stored; retry later",
        )
        .with_source(error));
    }
    service
        .store
        .mark_photo_stored(tenant_id, avatar_id, photo.id, rules)
        .await?;
    Ok(Ok(photo))
}
