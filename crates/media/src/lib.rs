//! Photo inspection and training archives for the avatar service.
//!
//! Pure, synchronous computation over bytes, readers and paths; the HTTP
//! layer runs it on a blocking thread. Three parts:
//! * [`inspect_photo_path`] / [`inspect_photo_bytes`]: validate one uploaded
//!   photo (format by magic bytes, size, header dimensions, full decode under
//!   limits, EXIF orientation, quality warnings, exact and perceptual hashes,
//!   faces found by an in-process detector);
//! * [`write_training_archive`]: stream the ZIP sent to fal;
//! * [`inspect_archive`]: check a bring-your-own training ZIP before paying
//!   for a training run.

mod archive_inspect;
mod faces;
mod format;
mod header;
mod photo;
mod quality;
mod stored_zip;
mod training_archive;

pub use archive_inspect::{
    inspect_archive, AcceptedImage, ArchiveError, ArchiveLimits, ArchiveReport, EntryProblem,
    EntryRejection, RATIO_CHECK_AFTER_BYTES,
};
pub use faces::{
    find_faces, DetectedFace, FaceBox, FaceInspection, DETECTION_MAX_SIDE, FACE_SCORE_THRESHOLD,
};
pub use format::{sniff, FileKind, PhotoFormat};
pub use photo::{
    inspect_photo_bytes, inspect_photo_path, inspect_photo_reader, probe_photo_path, InspectError,
    PhotoInspection, PhotoProbe, PhotoRejection, PhotoRules, PhotoWarning,
};
pub use quality::{
    hamming_distance, is_near_duplicate, QualityMetrics, ANALYSIS_MAX_SIDE,
    BLURRY_LAPLACIAN_VARIANCE_BELOW, BRIGHT_MEAN_ABOVE, DARK_MEAN_BELOW, LOW_CONTRAST_STDDEV_BELOW,
    NEAR_DUPLICATE_MAX_DISTANCE,
};
pub use training_archive::{
    write_training_archive, write_training_archive_to_path, ArchiveWriteError,
    TrainingArchiveOptions, TrainingArchiveSummary, TrainingPhoto,
};
