//! The training archive sent to fal: a ZIP of the avatar's accepted photos
//! with deterministic names (`0001.jpg`, `0002.png`, ... in the order given),
//! EXIF orientation applied, and an optional caption file per image
//! (`0001.txt`) carrying the trigger phrase.
//!
//! Photos are processed one at a time, so memory stays at one photo (plus
//! its decoded pixels when it must be rotated) whatever the set size.

use std::fs::File;
use std::io::{self, BufWriter, Cursor, Read, Write};
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::metadata::Orientation;
use image::DynamicImage;

use crate::format::PhotoFormat;
use crate::photo::{decode, PhotoRules};
use crate::stored_zip::StoredZipWriter;

/// One photo to put in the archive, as recorded at intake.
pub struct TrainingPhoto<R> {
    /// The photo's stored bytes (e.g. a blob-store reader).
    pub reader: R,
    pub format: PhotoFormat,
    /// EXIF orientation recorded by [`crate::inspect_photo_bytes`] (1-8).
    pub orientation: u8,
}

/// How to build the archive.
#[derive(Debug, Clone)]
pub struct TrainingArchiveOptions {
    /// Caption written next to every image, usually the trigger phrase.
    /// `None` writes no caption files (fal then uses `trigger_phrase`).
    pub caption: Option<String>,
    /// JPEG quality for photos that must be re-encoded after rotation.
    pub jpeg_quality: u8,
    /// Size and decoder limits applied to each source photo.
    pub rules: PhotoRules,
}

impl Default for TrainingArchiveOptions {
    fn default() -> Self {
        TrainingArchiveOptions {
            caption: None,
            jpeg_quality: 95,
            rules: PhotoRules::default(),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingArchiveSummary {
    /// Image entry names in archive order.
    pub image_names: Vec<String>,
    /// Caption entry names in archive order (empty without a caption).
    pub caption_names: Vec<String>,
    /// Total archive size in bytes.
    pub bytes_written: u64,
}

/// Why the archive could not be written. `index` is the 0-based position of
/// the photo in the input.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveWriteError {
    #[error("writing the archive failed: {0}")]
    Io(#[from] io::Error),
    #[error("reading photo #{index} failed: {source}")]
    ReadPhoto { index: usize, source: io::Error },
    #[error("photo #{index} is larger than {max_bytes} bytes")]
    PhotoTooLarge { index: usize, max_bytes: u64 },
    #[error("photo #{index} has an invalid EXIF orientation {orientation}")]
    InvalidOrientation { index: usize, orientation: u8 },
    #[error("photo #{index} could not be decoded for rotation: {detail}")]
    Decode { index: usize, detail: String },
    #[error("photo #{index} could not be re-encoded after rotation: {detail}")]
    Encode { index: usize, detail: String },
    #[error("the archive holds no photos")]
    NoPhotos,
}

/// Stream the training archive to `out` (no `Seek` needed).
///
/// Photos with orientation 1 are copied byte for byte. Others are decoded,
/// rotated/flipped, and re-encoded: JPEG at `jpeg_quality`, PNG and WEBP as
/// lossless PNG (the `.png` name follows). Re-encoding drops the EXIF block,
/// so viewers cannot rotate the result a second time.
pub fn write_training_archive<W, R, I>(
    out: W,
    photos: I,
    options: &TrainingArchiveOptions,
) -> Result<TrainingArchiveSummary, ArchiveWriteError>
where
    W: Write,
    R: Read,
    I: IntoIterator<Item = io::Result<TrainingPhoto<R>>>,
{
    let mut zip = StoredZipWriter::new(out);
    let mut summary = TrainingArchiveSummary {
        image_names: Vec::new(),
        caption_names: Vec::new(),
        bytes_written: 0,
    };
    for (index, photo) in photos.into_iter().enumerate() {
        let photo = photo.map_err(|source| ArchiveWriteError::ReadPhoto { index, source })?;
        let (data, format) = prepare_photo(index, photo, options)?;
        let stem = format!("{:04}", index + 1);
        let image_name = format!("{stem}.{}", format.extension());
        zip.add(&image_name, &data)?;
        drop(data);
        summary.image_names.push(image_name);
        if let Some(caption) = &options.caption {
            let caption_name = format!("{stem}.txt");
            zip.add(&caption_name, caption.as_bytes())?;
            summary.caption_names.push(caption_name);
        }
    }
    if summary.image_names.is_empty() {
        return Err(ArchiveWriteError::NoPhotos);
    }
    let (_, bytes_written) = zip.finish()?;
    summary.bytes_written = bytes_written;
    Ok(summary)
}

/// Write the training archive to a new file at `path` (same bytes as the
/// streaming variant).
pub fn write_training_archive_to_path<R, I>(
    path: &Path,
    photos: I,
    options: &TrainingArchiveOptions,
) -> Result<TrainingArchiveSummary, ArchiveWriteError>
where
    R: Read,
    I: IntoIterator<Item = io::Result<TrainingPhoto<R>>>,
{
    let file = File::create(path)?;
    let result =
        write_training_archive(BufWriter::new(&file), photos, options).and_then(|summary| {
            file.sync_all()?;
            Ok(summary)
        });
    if result.is_err() {
        // A partial archive must never be mistaken for a complete one.
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Read one photo and apply its orientation; returns the bytes to store and
/// their format.
fn prepare_photo<R: Read>(
    index: usize,
    photo: TrainingPhoto<R>,
    options: &TrainingArchiveOptions,
) -> Result<(Vec<u8>, PhotoFormat), ArchiveWriteError> {
    let max_bytes = options.rules.max_bytes;
    let mut data = Vec::new();
    photo
        .reader
        .take(max_bytes + 1)
        .read_to_end(&mut data)
        .map_err(|source| ArchiveWriteError::ReadPhoto { index, source })?;
    if data.len() as u64 > max_bytes {
        return Err(ArchiveWriteError::PhotoTooLarge { index, max_bytes });
    }
    let orientation =
        Orientation::from_exif(photo.orientation).ok_or(ArchiveWriteError::InvalidOrientation {
            index,
            orientation: photo.orientation,
        })?;
    if orientation == Orientation::NoTransforms {
        return Ok((data, photo.format));
    }

    let (mut image, _) =
        decode(&data, photo.format, &options.rules).map_err(|e| ArchiveWriteError::Decode {
            index,
            detail: e.to_string(),
        })?;
    drop(data);
    image.apply_orientation(orientation);
    let encode_error = |e: image::ImageError| ArchiveWriteError::Encode {
        index,
        detail: e.to_string(),
    };
    let mut encoded = Cursor::new(Vec::new());
    match photo.format {
        PhotoFormat::Jpeg => {
            let image = match image {
                DynamicImage::ImageRgb8(_) | DynamicImage::ImageLuma8(_) => image,
                other => DynamicImage::ImageRgb8(other.to_rgb8()),
            };
            let encoder = JpegEncoder::new_with_quality(&mut encoded, options.jpeg_quality);
            image.write_with_encoder(encoder).map_err(encode_error)?;
            Ok((encoded.into_inner(), PhotoFormat::Jpeg))
        }
        PhotoFormat::Png | PhotoFormat::Webp => {
            let encoder = PngEncoder::new_with_quality(
                &mut encoded,
                CompressionType::Fast,
                FilterType::Adaptive,
            );
            image.write_with_encoder(encoder).map_err(encode_error)?;
            Ok((encoded.into_inner(), PhotoFormat::Png))
        }
    }
}
