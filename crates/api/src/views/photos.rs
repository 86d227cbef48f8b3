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

/// A face's box relative to the photo as displayed (EXIF orientation applied): 0..1 on each
/// axis from the top left corner. Multiply by the displayed width and height to draw it.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct FaceBox {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

/// The largest face found.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct LargestFace {
    #[serde(rename = "box")]
    pub bbox: FaceBox,
    /// The box's share of the photo's area (0..1).
    pub share: f64,
    /// The detector's confidence; faces scoring below 2.0 are not reported.
    pub score: f64,
}

/// What face detection found on a photo.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FaceReport {
    /// Number of faces found.
    pub count: u32,
    pub largest: Option<LargestFace>,
    /// `no_face`, `several_faces`, `face_too_small` (under 2% of the photo),
    /// `face_cut_off` (box touching the frame's edge); empty for one usable face.
    pub findings: Vec<String>,
}

impl From<domain::FaceCheck> for FaceReport {
    fn from(check: domain::FaceCheck) -> Self {
        Self {
            count: check.faces,
            largest: check.largest.map(|f| LargestFace {
                bbox: FaceBox {
                    x: f.bbox.x,
                    y: f.bbox.y,
                    width: f.bbox.width,
                    height: f.bbox.height,
                },
                share: f.share,
                score: f.score,
            }),
            findings: check
                .findings()
                .into_iter()
                .map(|f| f.code().to_string())
                .collect(),
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
    /// Faces found at upload; null for photos stored before faces were checked.
    pub faces: Option<FaceReport>,
    pub created_at: DateTime<Utc>,
}

impl From<PhotoRecord> for PhotoResponse {
    fn from(record: PhotoRecord) -> Self {
        let p = record.facts;
        Self {
            id: record.id.0,
            file_name: p.file_name,
            format: p.format.as_str().to_string(),
            width: p.width,
            height: p.height,
            orientation: p.orientation,
            bytes: p.bytes,
            sha256: p.sha256,
            warnings: p.warnings.into_iter().map(Into::into).collect(),
            faces: p.faces.map(Into::into),
            created_at: record.created_at,
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

/// A photo with face findings.
#[derive(Debug, Serialize, ToSchema)]
pub struct PhotoFindings {
    pub photo_id: Uuid,
    pub file_name: String,
    /// `no_face`, `several_faces`, `face_too_small`, `face_cut_off`.
    pub findings: Vec<String>,
    /// Whether the photo counts toward `min_photos` under the face policy.
    pub counts: bool,
}

impl From<service::photo_set::PhotoFindings> for PhotoFindings {
    fn from(photo: service::photo_set::PhotoFindings) -> Self {
        Self {
            photo_id: photo.photo_id.0,
            file_name: photo.file_name,
            findings: photo.findings.into_iter().map(str::to_string).collect(),
            counts: photo.counts,
        }
    }
}

/// Smallest, median and largest face share (0..1 of the photo) of the photos with a face.
#[derive(Debug, Serialize, ToSchema)]
pub struct FaceShareSpread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// A summary of an avatar's photo set, and whether a training may start from it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PhotoSetReport {
    pub photo_count: u32,
    /// Photos that count toward `min_photos` under `face_policy`.
    pub usable_photos: u32,
    pub min_photos: u32,
    pub max_photos: u32,
    /// `require` (only photos with exactly one usable face count), `warn` or `off`, set per
    /// avatar kind by `PHOTO_FACE_POLICY`.
    pub face_policy: String,
    /// Whether `POST /avatars/{id}/train` would accept the set.
    pub trainable: bool,
    /// The trainer a request naming none gets; null when requests must name one.
    pub trainer: Option<String>,
    /// How many photos have each face finding.
    pub findings: std::collections::BTreeMap<String, u32>,
    pub photos_with_findings: Vec<PhotoFindings>,
    /// Groups of photo ids that look almost the same.
    pub near_duplicate_groups: Vec<Vec<Uuid>>,
    /// Null when no photo shows a face.
    pub face_share: Option<FaceShareSpread>,
}

impl From<service::photo_set::PhotoSetReport> for PhotoSetReport {
    fn from(r: service::photo_set::PhotoSetReport) -> Self {
        Self {
            photo_count: r.photo_count,
            usable_photos: r.usable_photos,
            min_photos: r.min_photos,
            max_photos: r.max_photos,
            face_policy: r.face_policy.as_str().to_string(),
            trainable: r.trainable,
            trainer: r.trainer.map(str::to_string),
            findings: r
                .findings
                .into_iter()
                .map(|(code, n)| (code.to_string(), n))
                .collect(),
            photos_with_findings: r
                .photos_with_findings
                .into_iter()
                .map(PhotoFindings::from)
                .collect(),
            near_duplicate_groups: r
                .near_duplicate_groups
                .into_iter()
                .map(|g| g.into_iter().map(|id| id.0).collect())
                .collect(),
            face_share: r.face_share.map(|s| FaceShareSpread {
                min: s.min,
                median: s.median,
                max: s.max,
            }),
        }
    }
}
