//! Photo refusals and caller-archive inspections.

use serde::Serialize;
use utoipa::ToSchema;

use crate::views::photos::Warning;

/// A file the service refused, and why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RejectedFile {
    /// The uploaded file's name, or the URL it was fetched from.
    pub file_name: String,
    /// Stable machine code, e.g. `unsupported_format`, `too_small`, `duplicate_photo`.
    pub code: String,
    pub message: String,
}

impl From<service::photos::RejectedFile> for RejectedFile {
    fn from(file: service::photos::RejectedFile) -> Self {
        let service::photos::RejectedFile {
            file_name,
            code,
            message,
        } = file;
        Self {
            file_name,
            code,
            message,
        }
    }
}

/// An image found in a caller's archive.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ArchiveImage {
    pub entry_name: String,
    #[schema(value_type = crate::openapi::PhotoFormat)]
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    pub warnings: Vec<Warning>,
    /// What face detection found on the image.
    pub faces: crate::views::photos::FaceReport,
    /// Whether the image counts toward `min_photos` under `face_policy`.
    pub counts: bool,
}

/// An entry of a caller's archive that fal must not be given.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ArchiveEntryProblem {
    pub entry_name: String,
    /// e.g. `unsafe_path`, `symlink`, `nested_archive`, `corrupt_image`, `duplicate_photo`.
    pub code: String,
    pub message: String,
}

/// What a caller's training archive holds, and whether it can be trained from.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ArchiveInspection {
    /// True when every entry is acceptable and the image count is within the limits.
    pub usable: bool,
    /// Why it is not usable, in words; empty when usable.
    pub problems: Vec<String>,
    pub images: Vec<ArchiveImage>,
    pub rejected: Vec<ArchiveEntryProblem>,
    /// Caption `.txt` files found (allowed).
    pub captions: u32,
    pub decompressed_bytes: u64,
    pub min_photos: u32,
    pub max_photos: u32,
    /// The face policy applied: that of the `kind` asked about (`PHOTO_FACE_POLICY`), `off`
    /// when none was given.
    pub face_policy: String,
    /// Images that count toward `min_photos` under `face_policy`.
    pub usable_images: u32,
}

impl From<service::training_data::ArchiveInspection> for ArchiveInspection {
    fn from(inspection: service::training_data::ArchiveInspection) -> Self {
        Self {
            usable: inspection.usable(),
            problems: inspection.problems,
            images: inspection
                .images
                .into_iter()
                .map(|image| ArchiveImage {
                    entry_name: image.entry_name,
                    format: image.format,
                    width: image.width,
                    height: image.height,
                    bytes: image.bytes,
                    warnings: image.warnings.into_iter().map(Warning::from).collect(),
                    faces: image.faces.into(),
                    counts: image.counts,
                })
                .collect(),
            rejected: inspection
                .rejected
                .into_iter()
                .map(|problem| ArchiveEntryProblem {
                    entry_name: problem.entry_name,
                    code: problem.code,
                    message: problem.message,
                })
                .collect(),
            captions: inspection.captions,
            decompressed_bytes: inspection.decompressed_bytes,
            min_photos: inspection.rules.min_photos,
            max_photos: inspection.rules.max_photos,
            face_policy: inspection.face_policy.as_str().to_string(),
            usable_images: inspection.usable_images,
        }
    }
}
