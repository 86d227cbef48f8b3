//! What a training is fed: the archive built from an avatar's accepted photos, or a caller's
//! own archive (`images_data_url`) checked before any money is spent.

use std::path::Path;

use domain::TenantId;

use crate::context::Service;
use crate::error::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum TrainingDataError {
    #[error("copying a photo from blob storage: {0}")]
    Blob(#[from] store::BlobError),
    #[error("writing the training archive: {0}")]
    Archive(#[from] media::ArchiveWriteError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("building the archive failed: {0}")]
    Task(#[from] crate::check_pool::CheckPanicked),
}

/// Writes the ZIP fal trains from: an avatar's stored `photos` in upload order, EXIF orientation
/// applied, with a caption file per image carrying `caption` when given. Photos are read from
/// files one by one, so memory stays flat: a local store's own files, a remote store's copied
/// to a scratch directory first.
pub async fn build_training_archive(
    service: &Service,
    photos: &[store::PhotoRecord],
    caption: Option<String>,
    destination: &Path,
) -> Result<media::TrainingArchiveSummary, TrainingDataError> {
    let scratch = service.scratch_directory("archive")?;
    let mut sources = Vec::with_capacity(photos.len());
    for (index, photo) in photos.iter().enumerate() {
        let copy = scratch.path().join(format!("{index:04}"));
        let path = service.blobs.readable_path(&photo.blob_key, &copy).await?;
        sources.push((path, photo.facts.format, photo.facts.orientation));
    }
    let options = media::TrainingArchiveOptions {
        caption,
        rules: service.photo_rules(),
        ..media::TrainingArchiveOptions::default()
    };
    let destination = destination.to_path_buf();
    let summary = service
        .check_pool
        .run(move || {
            let photos = sources.into_iter().map(|(path, format, orientation)| {
                std::fs::File::open(&path).map(|reader| media::TrainingPhoto {
                    reader,
                    format,
                    orientation,
                })
            });
            media::write_training_archive_to_path(&destination, photos, &options)
        })
        .await??;
    drop(scratch);
    Ok(summary)
}

/// An image found in a caller's archive.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    pub entry_name: String,
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    pub warnings: Vec<domain::PhotoWarning>,
    pub faces: domain::FaceCheck,
    /// Whether the image counts toward the minimum under the face policy applied.
    pub counts: bool,
}

/// An entry of a caller's archive that fal must not be given.
#[derive(Debug, Clone)]
pub struct ArchiveEntryProblem {
    pub entry_name: String,
    /// e.g. `unsafe_path`, `symlink`, `nested_archive`, `corrupt_image`, `duplicate_photo`.
    pub code: String,
    pub message: String,
}

/// What a caller's training archive holds, and whether it can be trained from.
#[derive(Debug, Clone)]
pub struct ArchiveInspection {
    /// Why it cannot be trained from, in words; empty when it can.
    pub problems: Vec<String>,
    pub images: Vec<ArchiveImage>,
    pub rejected: Vec<ArchiveEntryProblem>,
    /// Caption `.txt` files found (allowed).
    pub captions: u32,
    pub decompressed_bytes: u64,
    /// How many usable images a training needs, and takes at most.
    pub rules: domain::PhotoSetRules,
    /// The face policy applied (that of the avatar kind asked about; `off` when none).
    pub face_policy: domain::FacePolicy,
    /// Images that count toward the minimum under `face_policy`.
    pub usable_images: u32,
}

impl ArchiveInspection {
    /// Every entry is acceptable and the image count is within the limits.
    pub fn usable(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Why a caller's archive could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveCheckError {
    #[error("fetching the archive: {0}")]
    Fetch(#[from] safe_fetch::FetchError),
    #[error("{}", .0.message())]
    Archive(media::ArchiveError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the inspection task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ArchiveCheckError {
    /// The caller's error: an unfetchable `images_data_url` names the fetch failure, an archive
    /// refused as a whole is `archive_code` with the `reason`.
    pub fn into_service_error(self, archive_code: &'static str) -> ServiceError {
        match self {
            Self::Fetch(error) => ServiceError::invalid_field(
                crate::InputLocation::Body,
                "images_data_url",
                error.code(),
                error.to_string(),
            ),
            Self::Archive(error) => {
                ServiceError::new(crate::ErrorKind::Invalid, archive_code, error.message())
                    .with_extension("reason", error.code())
            }
            other => ServiceError::internal(other),
        }
    }
}

/// Fetches a caller's archive through the safe fetcher and inspects it: every entry checked
/// by the photo rules, exact duplicates refused, near-duplicates flagged, faces checked under
/// the face policy of `kind` (none when not given). Costs nothing on fal.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
pub async fn inspect_archive_url(
    service: &Service,
    tenant_id: TenantId,
    url: &str,
    kind: Option<domain::AvatarKind>,
) -> Result<ArchiveInspection, ServiceError> {
    let policy = kind.map_or(domain::FacePolicy::Off, |kind| {
        service.settings.photos.face_policy.for_kind(kind)
    });
    fetch_and_inspect(service, url, policy)
        .await
        .map(|(inspection, ..)| inspection)
        .map_err(|error| error.into_service_error("archive_rejected"))
}

/// Like [`inspect_archive_url`], also handing back the fetched file and the scratch directory
/// holding it (removed when dropped).
pub async fn fetch_and_inspect(
    service: &Service,
    url: &str,
    policy: domain::FacePolicy,
) -> Result<(ArchiveInspection, tempfile::TempDir, std::path::PathBuf), ArchiveCheckError> {
    let scratch = service.scratch_directory("byo")?;
    let archive = scratch.path().join("archive.zip");
    service.archive_fetcher.fetch_to_file(url, &archive).await?;
    let rules = service.photo_rules();
    let limits = media::ArchiveLimits::default();
    let inspected = archive.clone();
    let report = service
        .check_pool
        .run(move || media::inspect_archive(&inspected, &limits, &rules))
        .await
        .map_err(std::io::Error::other)?
        .map_err(ArchiveCheckError::Archive)?;

    let set_rules = service.photo_set_rules();
    let mut images: Vec<ArchiveImage> = Vec::new();
    let mut rejected: Vec<ArchiveEntryProblem> = report
        .rejected
        .iter()
        .map(|r| ArchiveEntryProblem {
            entry_name: r.name.clone(),
            code: r.code().to_string(),
            message: r.message(),
        })
        .collect();
    let mut seen: Vec<(&str, &str, u64)> = Vec::new();
    for accepted in &report.accepted {
        let inspection = &accepted.inspection;
        if let Some((first, ..)) = seen.iter().find(|(_, sha, _)| *sha == inspection.sha256) {
            rejected.push(ArchiveEntryProblem {
                entry_name: accepted.name.clone(),
                code: "duplicate_photo".into(),
                message: format!("the same image as {first}"),
            });
            continue;
        }
        let mut warnings: Vec<domain::PhotoWarning> = inspection
            .warnings
            .iter()
            .map(|w| domain::PhotoWarning {
                code: w.code.to_string(),
                message: w.message.clone(),
            })
            .collect();
        if let Some((other, ..)) = seen
            .iter()
            .find(|(_, _, hash)| media::is_near_duplicate(*hash, inspection.perceptual_hash))
        {
            let warning = media::PhotoWarning::near_duplicate(other);
            warnings.push(domain::PhotoWarning {
                code: warning.code.to_string(),
                message: warning.message,
            });
        }
        seen.push((
            &accepted.name,
            &inspection.sha256,
            inspection.perceptual_hash,
        ));
        let faces = crate::photos::face_check(&inspection.faces);
        images.push(ArchiveImage {
            entry_name: accepted.name.clone(),
            format: inspection.format.as_str().to_string(),
            width: inspection.width,
            height: inspection.height,
            bytes: inspection.bytes,
            warnings,
            counts: domain::photos::counts_for_training(policy, Some(&faces)),
            faces,
        });
    }
    let mut problems = Vec::new();
    if !rejected.is_empty() {
        problems.push(format!(
            "{} entries cannot be trained from; fal would receive them too",
            rejected.len()
        ));
    }
    let count = images.len() as u32;
    let usable_images = images.iter().filter(|i| i.counts).count() as u32;
    // The same rule as for an uploaded set: under `require` only images with exactly one
    // usable face count toward the minimum.
    if usable_images < set_rules.min_photos || count > set_rules.max_photos {
        let faceless = count - usable_images;
        problems.push(if faceless > 0 {
            format!(
                "{usable_images} usable images ({faceless} without exactly one usable face, \
                 see `findings`); a training needs {} to {}",
                set_rules.min_photos, set_rules.max_photos
            )
        } else {
            format!(
                "{usable_images} usable images; a training needs {} to {}",
                set_rules.min_photos, set_rules.max_photos
            )
        });
    }
    let inspection = ArchiveInspection {
        problems,
        images,
        rejected,
        captions: report.captions.len() as u32,
        decompressed_bytes: report.decompressed_bytes,
        rules: set_rules,
        face_policy: policy,
        usable_images,
    };
    Ok((inspection, scratch, archive))
}
