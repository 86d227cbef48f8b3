//! Per-photo rejections, warnings, orientation and hashes.

use std::io::Cursor;

use image::{imageops, DynamicImage, ImageFormat, RgbImage};
use media::{
    hamming_distance, inspect_photo_bytes, inspect_photo_path, inspect_photo_reader,
    is_near_duplicate, FileKind, InspectError, PhotoFormat, PhotoRejection, PhotoRules,
};

use crate::support::{encode, jpeg, photo, with_exif_orientation, write_file};

fn rejection(bytes: &[u8]) -> PhotoRejection {
    inspect_photo_bytes(bytes, &PhotoRules::default()).expect_err("photo should be rejected")
}

#[test]
fn good_jpeg_is_accepted_without_warnings() {
    let image = photo(800, 600, 1);
    let bytes = jpeg(&image, 90);
    let inspection = inspect_photo_bytes(&bytes, &PhotoRules::default()).expect("accepted");
    assert_eq!(inspection.format, PhotoFormat::Jpeg);
    assert_eq!((inspection.width, inspection.height), (800, 600));
    assert_eq!(
        (inspection.display_width, inspection.display_height),
        (800, 600)
    );
    assert_eq!(inspection.orientation, 1);
    assert_eq!(inspection.bytes, bytes.len() as u64);
    assert_eq!(inspection.sha256.len(), 64);
    assert!(
        inspection.warnings.is_empty(),
        "{:?} {:?}",
        inspection.warnings,
        inspection.metrics
    );
}

#[test]
fn png_and_webp_are_accepted() {
    let image = DynamicImage::ImageRgb8(photo(640, 640, 2));
    let png = encode(&image, ImageFormat::Png);
    assert_eq!(
        inspect_photo_bytes(&png, &PhotoRules::default())
            .expect("png")
            .format,
        PhotoFormat::Png
    );
    // The webp feature encodes lossless only; decoding (lossy and lossless)
    // is what intake needs, and this proves the decoder is compiled in.
    let webp = encode(&image, ImageFormat::WebP);
    let inspection = inspect_photo_bytes(&webp, &PhotoRules::default()).expect("webp");
    assert_eq!(inspection.format, PhotoFormat::Webp);
    assert_eq!((inspection.width, inspection.height), (640, 640));
}

#[test]
fn same_bytes_from_path_reader_and_slice_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = jpeg(&photo(700, 600, 3), 85);
    let path = write_file(dir.path(), "upload.tmp", &bytes);
    let rules = PhotoRules::default();
    let from_path = inspect_photo_path(&path, &rules).expect("path");
    let from_reader = inspect_photo_reader(Cursor::new(&bytes), &rules).expect("reader");
    let from_slice = inspect_photo_bytes(&bytes, &rules).expect("slice");
    assert_eq!(from_path, from_slice);
    assert_eq!(from_reader, from_slice);
}

#[test]
fn empty_file_is_rejected() {
    let r = rejection(b"");
    assert_eq!(r, PhotoRejection::EmptyFile);
    assert_eq!(r.code(), "empty_file");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "empty.jpg", b"");
    match inspect_photo_path(&path, &PhotoRules::default()) {
        Err(InspectError::Rejected(r)) => assert_eq!(r.code(), "empty_file"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn oversized_file_is_rejected_before_reading() {
    let bytes = jpeg(&photo(600, 600, 4), 90);
    let rules = PhotoRules {
        max_bytes: 1000,
        ..PhotoRules::default()
    };
    let r = inspect_photo_bytes(&bytes, &rules).expect_err("too large");
    assert_eq!(r.code(), "file_too_large");
    assert!(matches!(
        r,
        PhotoRejection::FileTooLarge {
            max_bytes: 1000,
            ..
        }
    ));
    match inspect_photo_reader(Cursor::new(&bytes), &rules) {
        Err(InspectError::Rejected(r)) => assert_eq!(r.code(), "file_too_large"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn html_renamed_jpg_is_rejected_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(
        dir.path(),
        "photo.jpg",
        b"\xEF\xBB\xBF\n  <!DOCTYPE html><html><body>Access denied</body></html>",
    );
    match inspect_photo_path(&path, &PhotoRules::default()) {
        Err(InspectError::Rejected(r)) => {
            assert_eq!(r.code(), "unsupported_format");
            assert_eq!(
                r,
                PhotoRejection::UnsupportedFormat {
                    detected: FileKind::Html
                }
            );
            assert!(r.message().contains("html"), "{}", r.message());
        }
        other => panic!("unexpected {other:?}"),
    }
    let r = rejection(b"<html><head></head></html>");
    assert_eq!(
        r,
        PhotoRejection::UnsupportedFormat {
            detected: FileKind::Html
        }
    );
}

#[test]
fn heic_is_rejected_by_name() {
    let mut heic = Vec::new();
    heic.extend_from_slice(&24u32.to_be_bytes());
    heic.extend_from_slice(b"ftypheic");
    heic.extend_from_slice(&0u32.to_be_bytes());
    heic.extend_from_slice(b"mif1heic");
    heic.extend_from_slice(&[0u8; 64]);
    let r = rejection(&heic);
    assert_eq!(r.code(), "unsupported_format");
    assert_eq!(
        r,
        PhotoRejection::UnsupportedFormat {
            detected: FileKind::Heic
        }
    );
    assert!(r.message().contains("heic"), "{}", r.message());
}

#[test]
fn gif_and_unknown_bytes_are_rejected_by_name() {
    let r = rejection(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
    assert_eq!(
        r,
        PhotoRejection::UnsupportedFormat {
            detected: FileKind::Gif
        }
    );
    assert!(r.message().contains("gif"));
    let r = rejection(b"just some text that is not an image");
    assert_eq!(
        r,
        PhotoRejection::UnsupportedFormat {
            detected: FileKind::Unknown
        }
    );
    assert_eq!(r.code(), "unsupported_format");
}

#[test]
fn png_header_claiming_50000_square_is_rejected_without_decoding() {
    // A valid signature and IHDR chunk, then nothing: a decoder would have to
    // allocate 7.5 GB for this; the header check refuses it first.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32fast::hash(&ihdr).to_be_bytes());
    let r = rejection(&png);
    assert_eq!(r.code(), "dimensions_too_large");
    assert_eq!(
        r,
        PhotoRejection::DimensionsTooLarge {
            width: 50_000,
            height: 50_000,
            max_side: 8192,
            max_pixels: 50_000_000
        }
    );
}

#[test]
fn area_limit_applies_even_when_each_side_fits() {
    let rules = PhotoRules {
        max_pixels: 600 * 600 - 1,
        ..PhotoRules::default()
    };
    let bytes = jpeg(&photo(600, 600, 5), 80);
    assert_eq!(
        inspect_photo_bytes(&bytes, &rules)
            .expect_err("area")
            .code(),
        "dimensions_too_large"
    );
}

#[test]
fn small_photo_is_rejected() {
    let bytes = jpeg(&photo(300, 300, 6), 90);
    let r = rejection(&bytes);
    assert_eq!(r.code(), "too_small");
    assert_eq!(
        r,
        PhotoRejection::TooSmall {
            width: 300,
            height: 300,
            min_short_side: 512
        }
    );
    // The minimum is configurable.
    let relaxed = PhotoRules {
        min_short_side: 256,
        ..PhotoRules::default()
    };
    assert!(inspect_photo_bytes(&bytes, &relaxed).is_ok());
}

#[test]
fn truncated_jpeg_is_corrupt() {
    let bytes = jpeg(&photo(800, 600, 7), 90);
    let truncated = &bytes[..bytes.len() * 2 / 3];
    let r = rejection(truncated);
    assert_eq!(r.code(), "corrupt_image");
    // Cut inside the headers: no frame header at all.
    assert_eq!(rejection(&bytes[..40]).code(), "corrupt_image");

    let png = encode(
        &DynamicImage::ImageRgb8(photo(600, 600, 7)),
        ImageFormat::Png,
    );
    assert_eq!(rejection(&png[..png.len() / 2]).code(), "corrupt_image");
}

#[test]
fn corrupt_png_body_is_rejected() {
    let bytes = encode(
        &DynamicImage::ImageRgb8(photo(600, 600, 8)),
        ImageFormat::Png,
    );
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    for b in &mut damaged[middle..middle + 256] {
        *b ^= 0x5A;
    }
    let r = rejection(&damaged);
    assert_eq!(r.code(), "corrupt_image", "{r:?}");
}

#[test]
fn corrupt_jpeg_body_is_rejected() {
    let bytes = jpeg(&photo(800, 600, 9), 90);
    // Clobber the Huffman tables: the header still parses, the decode fails.
    let dht = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC4])
        .expect("DHT");
    let mut damaged = bytes.clone();
    for b in &mut damaged[dht + 4..dht + 40] {
        *b = 0xEE;
    }
    let r = rejection(&damaged);
    assert_eq!(r.code(), "corrupt_image", "{r:?}");
}

#[test]
fn dark_photo_gets_a_warning_not_a_rejection() {
    let mut dark = photo(800, 600, 10);
    for p in dark.pixels_mut() {
        for c in &mut p.0 {
            *c /= 8;
        }
    }
    let inspection =
        inspect_photo_bytes(&jpeg(&dark, 90), &PhotoRules::default()).expect("accepted");
    let codes: Vec<_> = inspection.warnings.iter().map(|w| w.code).collect();
    assert!(
        codes.contains(&"too_dark"),
        "{codes:?} {:?}",
        inspection.metrics
    );
    assert!(!codes.contains(&"too_bright"));
}

#[test]
fn bright_flat_and_blurry_photos_get_warnings() {
    let bright = RgbImage::from_fn(700, 600, |x, _| image::Rgb([245 + (x % 8) as u8, 250, 250]));
    let inspection =
        inspect_photo_bytes(&jpeg(&bright, 90), &PhotoRules::default()).expect("accepted");
    let codes: Vec<_> = inspection.warnings.iter().map(|w| w.code).collect();
    assert!(codes.contains(&"too_bright"), "{codes:?}");
    assert!(codes.contains(&"low_contrast"), "{codes:?}");

    let blurred = imageops::blur(&photo(800, 600, 11), 12.0);
    let inspection =
        inspect_photo_bytes(&jpeg(&blurred, 90), &PhotoRules::default()).expect("accepted");
    let codes: Vec<_> = inspection.warnings.iter().map(|w| w.code).collect();
    assert!(
        codes.contains(&"blurry"),
        "{codes:?} {:?}",
        inspection.metrics
    );
    assert!(inspection.warnings.iter().all(|w| !w.message.is_empty()));
    println!("blurred photo metrics: {:?}", inspection.metrics);
}

#[test]
fn near_duplicates_are_detected_and_distinct_photos_are_not() {
    let original = photo(1000, 800, 12);
    let a = inspect_photo_bytes(&jpeg(&original, 92), &PhotoRules::default()).expect("a");
    // Same photo, downscaled and re-encoded at a lower quality.
    let resized = imageops::resize(&original, 800, 640, imageops::FilterType::Triangle);
    let b = inspect_photo_bytes(&jpeg(&resized, 70), &PhotoRules::default()).expect("b");
    assert_ne!(a.sha256, b.sha256, "different bytes");
    assert!(
        is_near_duplicate(a.perceptual_hash, b.perceptual_hash),
        "distance {}",
        hamming_distance(a.perceptual_hash, b.perceptual_hash)
    );

    let other = inspect_photo_bytes(&jpeg(&photo(1000, 800, 13), 92), &PhotoRules::default())
        .expect("other");
    assert!(
        !is_near_duplicate(a.perceptual_hash, other.perceptual_hash),
        "distance {}",
        hamming_distance(a.perceptual_hash, other.perceptual_hash)
    );
    println!(
        "dHash distance: resized+re-encoded {}, different photo {}",
        hamming_distance(a.perceptual_hash, b.perceptual_hash),
        hamming_distance(a.perceptual_hash, other.perceptual_hash)
    );
    let flipped = inspect_photo_bytes(
        &jpeg(&imageops::rotate180(&original), 92),
        &PhotoRules::default(),
    )
    .expect("f");
    assert!(!is_near_duplicate(
        a.perceptual_hash,
        flipped.perceptual_hash
    ));
}

#[test]
fn exact_duplicates_share_a_content_hash() {
    let bytes = jpeg(&photo(600, 600, 14), 90);
    let a = inspect_photo_bytes(&bytes, &PhotoRules::default()).expect("a");
    let b = inspect_photo_bytes(&bytes.clone(), &PhotoRules::default()).expect("b");
    assert_eq!(a.sha256, b.sha256);
    assert_eq!(a.perceptual_hash, b.perceptual_hash);
}

#[test]
fn exif_orientation_is_read_and_display_size_swapped() {
    let bytes = with_exif_orientation(&jpeg(&photo(800, 600, 15), 90), 6);
    let inspection = inspect_photo_bytes(&bytes, &PhotoRules::default()).expect("accepted");
    assert_eq!(inspection.orientation, 6);
    assert_eq!((inspection.width, inspection.height), (800, 600));
    assert_eq!(
        (inspection.display_width, inspection.display_height),
        (600, 800)
    );

    let upside_down = with_exif_orientation(&jpeg(&photo(800, 600, 15), 90), 3);
    let inspection = inspect_photo_bytes(&upside_down, &PhotoRules::default()).expect("accepted");
    assert_eq!(inspection.orientation, 3);
    assert_eq!(
        (inspection.display_width, inspection.display_height),
        (800, 600)
    );
}
