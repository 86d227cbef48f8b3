//! Per-photo validation: format, size, dimensions, integrity, orientation,
//! quality warnings and hashes.
//!
//! Order matters for cost and safety: cheap byte checks first, header
//! dimensions before any decoder is created, and the full decode (the only
//! expensive step) last, under explicit decoder limits.

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageError, ImageReader, Limits};
use sha2::{Digest, Sha256};

use crate::faces::{detect_faces, detection_factor, upright_detection_copy, FaceInspection};
use crate::format::{image_format, sniff, FileKind, PhotoFormat};
use crate::header;
use crate::quality::{
    GrayThumbnail, QualityMetrics, ThumbnailBuilder, BLURRY_LAPLACIAN_VARIANCE_BELOW,
    BRIGHT_MEAN_ABOVE, DARK_MEAN_BELOW, LOW_CONTRAST_STDDEV_BELOW,
};

/// Limits a photo must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhotoRules {
    /// Largest accepted file, in bytes.
    pub max_bytes: u64,
    /// Largest accepted width or height, in pixels.
    pub max_side: u32,
    /// Largest accepted width x height.
    pub max_pixels: u64,
    /// Smallest accepted shorter side, in pixels (the trainers work at 512+).
    pub min_short_side: u32,
}

impl Default for PhotoRules {
    fn default() -> Self {
        PhotoRules {
            max_bytes: 20 * 1024 * 1024,
            max_side: 8192,
            max_pixels: 50_000_000,
            min_short_side: 512,
        }
    }
}

impl PhotoRules {
    /// Decoder limits derived from the rules: the decoder refuses anything
    /// larger than the accepted dimensions, and never allocates more than an
    /// accepted photo at 16 bits per RGBA channel needs (plus headroom for
    /// the decoder's own buffers).
    pub(crate) fn decoder_limits(&self) -> Limits {
        let mut limits = Limits::default();
        limits.max_image_width = Some(self.max_side);
        limits.max_image_height = Some(self.max_side);
        limits.max_alloc = Some(
            self.max_pixels
                .saturating_mul(8)
                .saturating_add(64 * 1024 * 1024),
        );
        limits
    }

    fn check_dimensions(&self, width: u32, height: u32) -> Result<(), PhotoRejection> {
        if width > self.max_side
            || height > self.max_side
            || u64::from(width) * u64::from(height) > self.max_pixels
        {
            return Err(PhotoRejection::DimensionsTooLarge {
                width,
                height,
                max_side: self.max_side,
                max_pixels: self.max_pixels,
            });
        }
        if width.min(height) < self.min_short_side {
            return Err(PhotoRejection::TooSmall {
                width,
                height,
                min_short_side: self.min_short_side,
            });
        }
        Ok(())
    }
}

/// Why a photo cannot be used. Each variant has a stable [`code`](Self::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhotoRejection {
    #[error("the file is empty")]
    EmptyFile,
    #[error("the file is {bytes} bytes; the limit is {max_bytes} bytes")]
    FileTooLarge { bytes: u64, max_bytes: u64 },
    #[error("{} files are not supported; upload JPEG, PNG or WEBP", describe_kind(*detected))]
    UnsupportedFormat { detected: FileKind },
    #[error(
        "the image is {width}x{height} pixels; the limit is {max_side} pixels per side and {max_pixels} pixels in total"
    )]
    DimensionsTooLarge {
        width: u32,
        height: u32,
        max_side: u32,
        max_pixels: u64,
    },
    #[error("the image is damaged or incomplete: {detail}")]
    CorruptImage { detail: String },
    #[error("the image is {width}x{height} pixels; its shorter side must be at least {min_short_side} pixels")]
    TooSmall {
        width: u32,
        height: u32,
        min_short_side: u32,
    },
}

fn describe_kind(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Heic => "HEIC/HEIF (heic)",
        FileKind::Avif => "AVIF (avif)",
        FileKind::Gif => "GIF (gif)",
        FileKind::Html => "HTML pages saved as images (html)",
        FileKind::Svg => "SVG (svg)",
        FileKind::Bmp => "BMP (bmp)",
        FileKind::Tiff => "TIFF (tiff)",
        FileKind::Pdf => "PDF (pdf)",
        FileKind::Unknown => "Unrecognised (unknown)",
        FileKind::Jpeg | FileKind::Png | FileKind::Webp => "these",
    }
}

impl PhotoRejection {
    /// Stable snake_case code for API responses and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            PhotoRejection::EmptyFile => "empty_file",
            PhotoRejection::FileTooLarge { .. } => "file_too_large",
            PhotoRejection::UnsupportedFormat { .. } => "unsupported_format",
            PhotoRejection::DimensionsTooLarge { .. } => "dimensions_too_large",
            PhotoRejection::CorruptImage { .. } => "corrupt_image",
            PhotoRejection::TooSmall { .. } => "too_small",
        }
    }

    /// Human-readable explanation for the user.
    pub fn message(&self) -> String {
        self.to_string()
    }

    fn corrupt(detail: impl Into<String>) -> Self {
        PhotoRejection::CorruptImage {
            detail: detail.into(),
        }
    }
}

/// A quality problem that does not block the photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhotoWarning {
    /// Stable snake_case code: `too_dark`, `too_bright`, `low_contrast`,
    /// `blurry`, or (raised by the caller) `near_duplicate`.
    pub code: &'static str,
    pub message: String,
}

impl PhotoWarning {
    /// Warning for a photo whose perceptual hash is close to another photo of
    /// the same avatar (see [`crate::is_near_duplicate`]).
    pub fn near_duplicate(other: &str) -> PhotoWarning {
        PhotoWarning {
            code: "near_duplicate",
            message: format!(
                "this photo looks almost the same as {other}; varied photos train better avatars"
            ),
        }
    }
}

/// Everything learned about an accepted photo.
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoInspection {
    pub format: PhotoFormat,
    /// Width as stored in the file.
    pub width: u32,
    /// Height as stored in the file.
    pub height: u32,
    /// Width as displayed after EXIF orientation.
    pub display_width: u32,
    /// Height as displayed after EXIF orientation.
    pub display_height: u32,
    /// EXIF orientation 1-8 (1 when absent or invalid).
    pub orientation: u8,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the exact bytes, lower-case hex: exact-duplicate detection.
    pub sha256: String,
    /// 64-bit difference hash: near-duplicate detection.
    pub perceptual_hash: u64,
    pub metrics: QualityMetrics,
    pub warnings: Vec<PhotoWarning>,
    /// Faces found on the upright photo.
    pub faces: FaceInspection,
}

/// Failure to inspect: either the photo is rejected, or reading it failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Rejected(#[from] PhotoRejection),
    #[error("reading the photo failed: {0}")]
    Io(#[from] io::Error),
}

/// Inspect a photo stored in a file (the upload's temp file).
pub fn inspect_photo_path(
    path: &Path,
    rules: &PhotoRules,
) -> Result<PhotoInspection, InspectError> {
    inspect_photo_reader(File::open(path)?, rules)
}

/// Inspect a photo from any seekable reader. The size is checked before
/// reading, so an oversized file is refused without being read.
pub fn inspect_photo_reader<R: Read + Seek>(
    mut reader: R,
    rules: &PhotoRules,
) -> Result<PhotoInspection, InspectError> {
    let start = reader.stream_position()?;
    let end = reader.seek(SeekFrom::End(0))?;
    reader.seek(SeekFrom::Start(start))?;
    let bytes = end.saturating_sub(start);
    check_size(bytes, rules)?;
    // The whole photo is needed for hashing and decoding; one read into an
    // exactly sized buffer is the cheapest way to get it.
    let mut data = Vec::with_capacity(bytes as usize);
    reader.take(rules.max_bytes + 1).read_to_end(&mut data)?;
    Ok(inspect_photo_bytes(&data, rules)?)
}

fn check_size(bytes: u64, rules: &PhotoRules) -> Result<(), PhotoRejection> {
    if bytes == 0 {
        return Err(PhotoRejection::EmptyFile);
    }
    if bytes > rules.max_bytes {
        return Err(PhotoRejection::FileTooLarge {
            bytes,
            max_bytes: rules.max_bytes,
        });
    }
    Ok(())
}

/// Inspect a photo held in memory.
pub fn inspect_photo_bytes(
    data: &[u8],
    rules: &PhotoRules,
) -> Result<PhotoInspection, PhotoRejection> {
    check_size(data.len() as u64, rules)?;
    let detected = sniff(data);
    let format = detected
        .photo_format()
        .ok_or(PhotoRejection::UnsupportedFormat { detected })?;

    let (width, height) =
        header::dimensions(data, format).map_err(|e| PhotoRejection::corrupt(e.0))?;
    rules.check_dimensions(width, height)?;
    if format == PhotoFormat::Jpeg && !header::jpeg_is_complete(data) {
        return Err(PhotoRejection::corrupt(
            "the JPEG data ends before the end-of-image marker",
        ));
    }

    // The decoder is authoritative for the dimensions; they are re-checked in case the header
    // walk and the decoder disagree.
    let (copies, orientation, (width, height)) = if format == PhotoFormat::Png {
        analyse_png(data, rules)?
    } else {
        let (image, orientation) = decode(data, format, rules).map_err(|e| match e {
            ImageError::Limits(_) => PhotoRejection::DimensionsTooLarge {
                width,
                height,
                max_side: rules.max_side,
                max_pixels: rules.max_pixels,
            },
            other => PhotoRejection::corrupt(other.to_string()),
        })?;
        let (width, height) = (image.width(), image.height());
        rules.check_dimensions(width, height)?;
        let copies = AnalysisCopies {
            quality: GrayThumbnail::from_image(&image),
            detection: GrayThumbnail::reduced(&image, detection_factor(width, height)),
        };
        // The full-size pixels are released here, before the remaining work, which only
        // needs the copies.
        (copies, orientation, (width, height))
    };
    let thumbnail = copies.quality;
    let faces = detect_faces(&upright_detection_copy(copies.detection, orientation));
    let metrics = thumbnail.metrics();
    let (display_width, display_height) = if orientation >= 5 {
        (height, width)
    } else {
        (width, height)
    };
    Ok(PhotoInspection {
        format,
        width,
        height,
        display_width,
        display_height,
        orientation,
        bytes: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
        perceptual_hash: thumbnail.difference_hash(),
        metrics,
        warnings: quality_warnings(&metrics),
        faces,
    })
}

/// Decodes a PNG row by row straight into the analysis copy, with 16-bit samples reduced to
/// 8 bits and palettes expanded per row: memory stays at a few rows whatever the image's size
/// or depth, so a small file that inflates to hundreds of megabytes costs only CPU.
fn analyse_png(
    data: &[u8],
    rules: &PhotoRules,
) -> Result<(AnalysisCopies, u8, (u32, u32)), PhotoRejection> {
    let corrupt = |error: png::DecodingError| match error {
        png::DecodingError::LimitsExceeded => {
            PhotoRejection::corrupt("the PNG needs too much memory to decode")
        }
        other => PhotoRejection::corrupt(other.to_string()),
    };
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(data),
        png::Limits {
            bytes: 64 * 1024 * 1024,
        },
    );
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let info = reader.info();
    let (width, height, interlaced) = (info.width, info.height, info.interlaced);
    rules.check_dimensions(width, height)?;
    // A broken EXIF block is common and harmless: treat it as "no rotation".
    let orientation = info
        .exif_metadata
        .as_deref()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .map_or(1, |o| o.to_exif());
    let channels = reader.output_color_type().0.samples();
    let row_len = width as usize * channels;
    let mut builder = CopyBuilders::new(width, height);
    let mut rows = 0usize;
    while let Some(row) = reader.next_row().map_err(corrupt)? {
        let row = row.data();
        if interlaced {
            // Of the seven Adam7 passes only the last holds full-width rows (the odd ones, in
            // order); each stands in for the even row above it too (and for a last even row),
            // plenty for a box-averaged analysis copy.
            if row.len() == row_len {
                let y = 2 * rows + 1;
                builder.row(y - 1, row, channels);
                builder.row(y, row, channels);
                if y + 2 == height as usize {
                    builder.row(y + 1, row, channels);
                }
                rows += 1;
            }
        } else {
            builder.row(rows, row, channels);
            rows += 1;
        }
    }
    let expected = if interlaced {
        height as usize / 2
    } else {
        height as usize
    };
    if rows < expected {
        return Err(PhotoRejection::corrupt(
            "the PNG data ends before its last row",
        ));
    }
    Ok((builder.finish(), orientation, (width, height)))
}

/// The small grayscale copies a photo is judged on: one for quality and the perceptual hash,
/// one for face detection.
struct AnalysisCopies {
    quality: GrayThumbnail,
    detection: GrayThumbnail,
}

/// Builds both copies from the same rows, in one pass.
struct CopyBuilders {
    quality: ThumbnailBuilder,
    detection: ThumbnailBuilder,
}

impl CopyBuilders {
    fn new(width: u32, height: u32) -> Self {
        Self {
            quality: ThumbnailBuilder::new(width, height),
            detection: ThumbnailBuilder::with_factor(
                width,
                height,
                detection_factor(width, height),
            ),
        }
    }

    fn row(&mut self, y: usize, row: &[u8], channels: usize) {
        self.quality.row(y, row, channels);
        self.detection.row(y, row, channels);
    }

    fn finish(self) -> AnalysisCopies {
        AnalysisCopies {
            quality: self.quality.finish(),
            detection: self.detection.finish(),
        }
    }
}

/// What a photo's header says, read without decoding it: what a decode will cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhotoProbe {
    pub format: PhotoFormat,
    pub width: u32,
    pub height: u32,
}

impl PhotoProbe {
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// The cheap checks of [`inspect_photo_path`] (size, format, header dimensions), without the
/// decode, so a caller can budget decodes before starting them.
pub fn probe_photo_path(path: &Path, rules: &PhotoRules) -> Result<PhotoProbe, InspectError> {
    let file = File::open(path)?;
    let bytes = file.metadata()?.len();
    check_size(bytes, rules)?;
    let mut data = Vec::with_capacity(bytes as usize);
    file.take(rules.max_bytes + 1).read_to_end(&mut data)?;
    let detected = sniff(&data);
    let format = detected
        .photo_format()
        .ok_or(PhotoRejection::UnsupportedFormat { detected })?;
    let (width, height) =
        header::dimensions(&data, format).map_err(|e| PhotoRejection::corrupt(e.0))?;
    rules.check_dimensions(width, height)?;
    Ok(PhotoProbe {
        format,
        width,
        height,
    })
}

/// Decode under the rules' limits; returns the pixels and the EXIF orientation.
pub(crate) fn decode(
    data: &[u8],
    format: PhotoFormat,
    rules: &PhotoRules,
) -> Result<(DynamicImage, u8), ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(data), image_format(format));
    reader.limits(rules.decoder_limits());
    let mut decoder = reader.into_decoder()?;
    // A broken EXIF block is common and harmless: treat it as "no rotation".
    let orientation = decoder.orientation().map(|o| o.to_exif()).unwrap_or(1);
    let image = DynamicImage::from_decoder(decoder)?;
    Ok((image, orientation))
}

fn quality_warnings(m: &QualityMetrics) -> Vec<PhotoWarning> {
    let mut warnings = Vec::new();
    if m.mean_luma < DARK_MEAN_BELOW {
        warnings.push(PhotoWarning {
            code: "too_dark",
            message: "the photo is very dark; faces need good light to train well".into(),
        });
    }
    if m.mean_luma > BRIGHT_MEAN_ABOVE {
        warnings.push(PhotoWarning {
            code: "too_bright",
            message: "the photo is very bright or overexposed".into(),
        });
    }
    if m.luma_stddev < LOW_CONTRAST_STDDEV_BELOW {
        warnings.push(PhotoWarning {
            code: "low_contrast",
            message: "the photo has very little contrast".into(),
        });
    }
    if m.laplacian_variance < BLURRY_LAPLACIAN_VARIANCE_BELOW {
        warnings.push(PhotoWarning {
            code: "blurry",
            message: "the photo looks blurry or out of focus".into(),
        });
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgb16_png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Sixteen);
        let mut writer = encoder.write_header().expect("header");
        let mut pixels = Vec::with_capacity((width * height * 6) as usize);
        for y in 0..height {
            for x in 0..width {
                let v = ((x * 7 + y * 13) % 256) as u16 * 257;
                for _ in 0..3 {
                    pixels.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        writer.write_image_data(&pixels).expect("pixels");
        writer.finish().expect("finish");
        out
    }

    #[test]
    fn sixteen_bit_pngs_are_analysed_like_their_eight_bit_reduction() {
        let deep = rgb16_png(600, 400);
        let inspected = inspect_photo_bytes(&deep, &small_photo_rules()).expect("accepted");
        assert_eq!((inspected.width, inspected.height), (600, 400));
        // The same picture decoded whole by `image` and reduced to 8 bits.
        let image = image::load_from_memory(&deep).expect("decodes");
        let whole = GrayThumbnail::from_image(&image);
        assert_eq!(inspected.metrics, whole.metrics());
        assert_eq!(inspected.perceptual_hash, whole.difference_hash());
    }

    /// An Adam7-interlaced 8-bit RGB PNG (the encoders at hand write only progressive ones).
    fn interlaced_png(image: &image::RgbImage) -> Vec<u8> {
        use std::io::Write as _;
        let (w, h) = image.dimensions();
        let mut raw = Vec::new();
        for (x0, y0, dx, dy) in [
            (0, 0, 8, 8),
            (4, 0, 8, 8),
            (0, 4, 4, 8),
            (2, 0, 4, 4),
            (0, 2, 2, 4),
            (1, 0, 2, 2),
            (0, 1, 1, 2),
        ] {
            if x0 >= w || y0 >= h {
                continue;
            }
            for y in (y0..h).step_by(dy) {
                raw.push(0);
                for x in (x0..w).step_by(dx) {
                    raw.extend_from_slice(&image.get_pixel(x, y).0);
                }
            }
        }
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(&raw).expect("compress");
        let idat = zlib.finish().expect("compress");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 1]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [(&b"IHDR"[..], &ihdr[..]), (b"IDAT", &idat), (b"IEND", &[])] {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            png.extend_from_slice(kind);
            png.extend_from_slice(data);
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            png.extend_from_slice(&crc.finalize().to_be_bytes());
        }
        png
    }

    #[test]
    fn interlaced_pngs_are_analysed_from_their_last_pass() {
        let picture = image::RgbImage::from_fn(301, 203, |x, y| {
            image::Rgb([(x % 256) as u8, ((x * y) % 251) as u8, (y % 256) as u8])
        });
        let png = interlaced_png(&picture);
        let inspected = inspect_photo_bytes(&png, &small_photo_rules()).expect("accepted");
        assert_eq!((inspected.width, inspected.height), (301, 203));
        let whole = GrayThumbnail::from_image(&image::load_from_memory(&png).expect("decodes"));
        assert!((inspected.metrics.mean_luma - whole.metrics().mean_luma).abs() < 2.0);
        assert!(crate::is_near_duplicate(
            inspected.perceptual_hash,
            whole.difference_hash()
        ));
        assert_eq!(refusal(&png[..png.len() - 40]), Err("corrupt_image"));
    }

    #[test]
    fn a_truncated_png_is_corrupt() {
        let png = rgb16_png(600, 400);
        assert_eq!(refusal(&png[..png.len() / 2]), Err("corrupt_image"));
    }

    /// Rules under which the small test pictures are large enough.
    fn small_photo_rules() -> PhotoRules {
        PhotoRules {
            min_short_side: 64,
            ..PhotoRules::default()
        }
    }

    /// The code `bytes` are refused with under [`small_photo_rules`], if any.
    fn refusal(bytes: &[u8]) -> Result<(), &'static str> {
        inspect_photo_bytes(bytes, &small_photo_rules())
            .map(|_| ())
            .map_err(|e| e.code())
    }

    #[test]
    fn a_probe_reads_the_header_only() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("giant.png");
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&7000u32.to_be_bytes());
        png.extend_from_slice(&7000u32.to_be_bytes());
        png.extend_from_slice(&[16, 2, 0, 0, 0]);
        std::fs::write(&path, &png).expect("write");
        let probe = probe_photo_path(&path, &PhotoRules::default()).expect("probe");
        assert_eq!(probe.pixels(), 49_000_000);
    }
}
