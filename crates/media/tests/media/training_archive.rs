//! The training archive: names, order, captions, orientation, determinism.

use std::io::{self, Cursor, Read};

use image::{DynamicImage, GenericImageView, ImageFormat};
use media::{
    inspect_archive, write_training_archive, write_training_archive_to_path, ArchiveLimits,
    ArchiveWriteError, PhotoFormat, PhotoRules, TrainingArchiveOptions, TrainingPhoto,
};
use zip::ZipArchive;

use crate::support::{encode, jpeg, photo, with_exif_orientation};

struct Fixture {
    bytes: Vec<u8>,
    format: PhotoFormat,
    orientation: u8,
}

fn fixtures() -> Vec<Fixture> {
    vec![
        Fixture {
            bytes: jpeg(&photo(800, 600, 21), 90),
            format: PhotoFormat::Jpeg,
            orientation: 1,
        },
        Fixture {
            bytes: encode(
                &DynamicImage::ImageRgb8(photo(640, 560, 22)),
                ImageFormat::Png,
            ),
            format: PhotoFormat::Png,
            orientation: 1,
        },
        Fixture {
            bytes: with_exif_orientation(&jpeg(&photo(800, 600, 23), 90), 6),
            format: PhotoFormat::Jpeg,
            orientation: 6,
        },
    ]
}

fn inputs(fixtures: &[Fixture]) -> impl Iterator<Item = io::Result<TrainingPhoto<Cursor<&[u8]>>>> {
    fixtures.iter().map(|f| {
        Ok(TrainingPhoto {
            reader: Cursor::new(f.bytes.as_slice()),
            format: f.format,
            orientation: f.orientation,
        })
    })
}

fn captioned() -> TrainingArchiveOptions {
    TrainingArchiveOptions {
        caption: Some("a photo of TOK person".into()),
        ..TrainingArchiveOptions::default()
    }
}

/// A writer that is deliberately not `Seek`.
struct PipeLike(Vec<u8>);

impl io::Write for PipeLike {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn build(fixtures: &[Fixture], options: &TrainingArchiveOptions) -> Vec<u8> {
    let mut out = PipeLike(Vec::new());
    let summary = write_training_archive(&mut out, inputs(fixtures), options).expect("archive");
    assert_eq!(summary.bytes_written, out.0.len() as u64);
    out.0
}

#[test]
fn names_order_and_captions_are_deterministic() {
    let fixtures = fixtures();
    let mut out = PipeLike(Vec::new());
    let summary =
        write_training_archive(&mut out, inputs(&fixtures), &captioned()).expect("archive");
    assert_eq!(summary.image_names, ["0001.jpg", "0002.png", "0003.jpg"]);
    assert_eq!(summary.caption_names, ["0001.txt", "0002.txt", "0003.txt"]);

    let mut zip = ZipArchive::new(Cursor::new(out.0)).expect("readable zip");
    let names: Vec<_> = zip.file_names().map(str::to_owned).collect();
    assert_eq!(
        names,
        ["0001.jpg", "0001.txt", "0002.png", "0002.txt", "0003.jpg", "0003.txt"]
    );
    let mut caption = String::new();
    zip.by_name("0002.txt")
        .expect("caption")
        .read_to_string(&mut caption)
        .expect("read");
    assert_eq!(caption, "a photo of TOK person");
    let entry = zip.by_name("0001.jpg").expect("entry");
    assert_eq!(
        entry
            .last_modified()
            .map(|t| (t.year(), t.month(), t.day())),
        Some((1980, 1, 1))
    );
}

#[test]
fn same_photos_give_the_same_bytes() {
    let fixtures = fixtures();
    assert_eq!(
        build(&fixtures, &captioned()),
        build(&fixtures, &captioned())
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("training.zip");
    write_training_archive_to_path(&path, inputs(&fixtures), &captioned()).expect("file");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        build(&fixtures, &captioned())
    );
}

#[test]
fn upright_photos_are_copied_byte_for_byte() {
    let fixtures = fixtures();
    let mut zip = ZipArchive::new(Cursor::new(build(
        &fixtures,
        &TrainingArchiveOptions::default(),
    )))
    .expect("zip");
    assert_eq!(zip.len(), 3, "no captions without a caption option");
    for (name, fixture) in [("0001.jpg", &fixtures[0]), ("0002.png", &fixtures[1])] {
        let mut stored = Vec::new();
        zip.by_name(name)
            .expect(name)
            .read_to_end(&mut stored)
            .expect("read");
        assert_eq!(stored, fixture.bytes, "{name}");
    }
}

#[test]
fn exif_orientation_is_applied() {
    let fixtures = fixtures();
    let mut zip = ZipArchive::new(Cursor::new(build(
        &fixtures,
        &TrainingArchiveOptions::default(),
    )))
    .expect("zip");
    let mut rotated = Vec::new();
    zip.by_name("0003.jpg")
        .expect("entry")
        .read_to_end(&mut rotated)
        .expect("read");
    let decoded =
        image::load_from_memory_with_format(&rotated, ImageFormat::Jpeg).expect("decodes");
    assert_eq!(decoded.dimensions(), (600, 800), "width and height swapped");
    // Re-encoding drops the EXIF block, so the result reads as upright.
    let inspection = media::inspect_photo_bytes(&rotated, &PhotoRules::default()).expect("valid");
    assert_eq!(inspection.orientation, 1);
    assert_eq!((inspection.width, inspection.height), (600, 800));
}

#[test]
fn rotated_png_stays_png() {
    let png = encode(
        &DynamicImage::ImageRgb8(photo(640, 520, 24)),
        ImageFormat::Png,
    );
    let photos = vec![Ok(TrainingPhoto {
        reader: Cursor::new(png),
        format: PhotoFormat::Png,
        orientation: 8,
    })];
    let mut out = Vec::new();
    let summary = write_training_archive(&mut out, photos, &TrainingArchiveOptions::default())
        .expect("archive");
    assert_eq!(summary.image_names, ["0001.png"]);
    let mut zip = ZipArchive::new(Cursor::new(out)).expect("zip");
    let mut data = Vec::new();
    zip.by_index(0)
        .expect("entry")
        .read_to_end(&mut data)
        .expect("read");
    let decoded = image::load_from_memory_with_format(&data, ImageFormat::Png).expect("png");
    assert_eq!(decoded.dimensions(), (520, 640));
}

#[test]
fn our_own_archive_passes_the_inspector() {
    let fixtures = fixtures();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("training.zip");
    write_training_archive_to_path(&path, inputs(&fixtures), &captioned()).expect("file");
    let report =
        inspect_archive(&path, &ArchiveLimits::default(), &PhotoRules::default()).expect("inspect");
    assert!(report.is_clean(), "{:?}", report.rejected);
    assert_eq!(report.accepted.len(), 3);
    assert_eq!(report.captions.len(), 3);
}

#[test]
fn errors_name_the_photo() {
    let photos = vec![
        Ok(TrainingPhoto {
            reader: Cursor::new(jpeg(&photo(600, 600, 25), 90)),
            format: PhotoFormat::Jpeg,
            orientation: 1,
        }),
        Ok(TrainingPhoto {
            reader: Cursor::new(b"not a jpeg".to_vec()),
            format: PhotoFormat::Jpeg,
            orientation: 6,
        }),
    ];
    let err = write_training_archive(Vec::new(), photos, &TrainingArchiveOptions::default())
        .expect_err("fails");
    assert!(
        matches!(err, ArchiveWriteError::Decode { index: 1, .. }),
        "{err:?}"
    );

    let bad_orientation = vec![Ok(TrainingPhoto {
        reader: Cursor::new(Vec::new()),
        format: PhotoFormat::Jpeg,
        orientation: 9,
    })];
    let err = write_training_archive(
        Vec::new(),
        bad_orientation,
        &TrainingArchiveOptions::default(),
    )
    .expect_err("9");
    assert!(matches!(
        err,
        ArchiveWriteError::InvalidOrientation {
            index: 0,
            orientation: 9
        }
    ));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("partial.zip");
    let failing = vec![Ok(TrainingPhoto {
        reader: Cursor::new(b"junk".to_vec()),
        format: PhotoFormat::Png,
        orientation: 2,
    })];
    write_training_archive_to_path(&path, failing, &TrainingArchiveOptions::default())
        .expect_err("fails");
    assert!(!path.exists(), "a partial archive was left behind");

    let none: Vec<io::Result<TrainingPhoto<Cursor<Vec<u8>>>>> = Vec::new();
    let err = write_training_archive(Vec::new(), none, &TrainingArchiveOptions::default())
        .expect_err("empty");
    assert!(matches!(err, ArchiveWriteError::NoPhotos));
}
