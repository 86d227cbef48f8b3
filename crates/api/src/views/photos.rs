//! Photos and photo batches as callers see them.

use chrono::{DateTime, Utc};
use domain::PhotoWarning;
use serde::Serialize;
use service::photos;
use store::PhotoRecord;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::views::avatars::AvatarResponse;

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

impl From<photos::PhotoBatchReport> for PhotoBatchReport {
    fn from(report: photos::PhotoBatchReport) -> Self {
        Self {
            accepted: report.accepted.into_iter().map(Into::into).collect(),
            rejected: report.rejected.into_iter().map(Into::into).collect(),
            avatar: report.avatar.into(),
            min_photos: report.min_photos,
            max_photos: report.max_photos,
        }
    }
}
