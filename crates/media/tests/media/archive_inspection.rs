//! The bring-your-own archive inspector against hostile archives.

use std::path::Path;
use std::time::{Duration, Instant};

use media::{
    inspect_archive, ArchiveError, ArchiveLimits, ArchiveReport, EntryProblem, PhotoRules,
};

use crate::support::{build_zip, dir_listing, jpeg, photo, write_file, zeros_bomb, RawEntry};

/// Write the archive alone in a fresh directory, inspect it, and check that
/// the inspection created nothing: the directory still holds only the
/// archive and no file named after any entry exists there, in the parent
/// directory or in the working directory.
fn inspect(entries: &[RawEntry], limits: &ArchiveLimits) -> Result<ArchiveReport, ArchiveError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "upload.zip", &build_zip(entries));
    let result = inspect_archive(&path, limits, &PhotoRules::default());
    assert_eq!(
        dir_listing(dir.path()),
        ["upload.zip"],
        "inspection wrote files"
    );
    for entry in entries.iter().take(50) {
        let base = entry.name.rsplit(['/', '\\']).next().unwrap_or_default();
        if base.is_empty() {
            continue;
        }
        for place in [
            dir.path(),
            dir.path().parent().expect("parent"),
            Path::new("."),
        ] {
            assert!(
                !place.join(base).exists(),
                "{} appeared in {}",
                base,
                place.display()
            );
        }
    }
    result
}

fn good_jpeg(seed: u32) -> Vec<u8> {
    jpeg(&photo(640, 600, seed), 85)
}

fn codes(report: &ArchiveReport) -> Vec<(&str, &str)> {
    report
        .rejected
        .iter()
        .map(|r| (r.name.as_str(), r.code()))
        .collect()
}

#[test]
fn clean_archive_is_accepted_with_captions_and_macos_junk_skipped() {
    let entries = vec![
        RawEntry::stored("photos/", b""),
        RawEntry::stored("photos/a.jpg", &good_jpeg(31)),
        RawEntry::deflated("photos/a.txt", b"a photo of [trigger]"),
        RawEntry::deflated("photos/b.JPG", &good_jpeg(32)),
        RawEntry::stored("__MACOSX/photos/._a.jpg", b"\0\x05\x16\x07junk"),
        RawEntry::stored("photos/.DS_Store", b"\0\0\0\x01Bud1"),
    ];
    let report = inspect(&entries, &ArchiveLimits::default()).expect("inspected");
    assert!(report.is_clean(), "{:?}", report.rejected);
    assert_eq!(report.entries, 6);
    let accepted: Vec<_> = report.accepted.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(accepted, ["photos/a.jpg", "photos/b.JPG"]);
    assert_eq!(report.captions, ["photos/a.txt"]);
    assert_eq!(
        report.skipped,
        ["photos/", "__MACOSX/photos/._a.jpg", "photos/.DS_Store"]
    );
    assert_eq!(report.accepted[0].inspection.width, 640);
}

#[test]
fn bad_images_inside_are_reported_per_entry() {
    let good = good_jpeg(33);
    let entries = vec![
        RawEntry::stored("ok.jpg", &good),
        RawEntry::stored("page.jpg", b"<!doctype html><p>403</p>"),
        RawEntry::stored("small.jpg", &jpeg(&photo(300, 300, 34), 85)),
        RawEntry::stored("cut.jpg", &good[..good.len() / 2]),
        RawEntry::stored("empty.jpg", b""),
        RawEntry::stored("notes.pdf", b"%PDF-1.4 ..."),
    ];
    let report = inspect(&entries, &ArchiveLimits::default()).expect("inspected");
    assert_eq!(report.accepted.len(), 1);
    assert_eq!(
        codes(&report),
        [
            ("page.jpg", "unsupported_format"),
            ("small.jpg", "too_small"),
            ("cut.jpg", "corrupt_image"),
            ("empty.jpg", "empty_file"),
            ("notes.pdf", "unsupported_format"),
        ]
    );
    assert!(report.rejected[0].message().contains("html"));
    assert!(!report.is_clean());
}

#[test]
fn gigabyte_of_zeros_stops_at_the_ratio_cap() {
    let bomb = zeros_bomb("zeros.jpg", 1024);
    assert!(
        bomb.payload.len() < 8 * 1024 * 1024,
        "the bomb itself is small"
    );
    let started = Instant::now();
    let err = inspect(&[bomb], &ArchiveLimits::default()).expect_err("bomb");
    assert_eq!(err.code(), "compression_ratio_exceeded", "{err}");
    match err {
        ArchiveError::CompressionRatio {
            ref entry,
            max_ratio,
            decompressed,
        } => {
            assert_eq!((entry.as_str(), max_ratio), ("zeros.jpg", 100));
            // Stopped within a few MiB of output, not after 1 GiB.
            assert!(
                decompressed < 16 * 1024 * 1024,
                "decompressed {decompressed}"
            );
            println!("bomb stopped after {decompressed} decompressed bytes");
        }
        ref other => panic!("unexpected {other:?}"),
    }
    // Far less than the 1 GiB a full decompression would take (generous
    // bound for unoptimised test builds on a shared machine).
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn ratio_cap_reports_decompressed_bytes_far_below_the_declared_size() {
    // Same bomb with the ratio cap disabled: the per-photo size cap stops it
    // after ~20 MB and the entry is refused, not the archive.
    let limits = ArchiveLimits {
        max_compression_ratio: u64::MAX,
        ..ArchiveLimits::default()
    };
    let report = inspect(&[zeros_bomb("zeros.jpg", 1024)], &limits).expect("inspected");
    assert_eq!(codes(&report), [("zeros.jpg", "file_too_large")]);
    assert!(report.decompressed_bytes <= PhotoRules::default().max_bytes + 64 * 1024);
}

#[test]
fn total_size_cap_is_enforced_on_actual_bytes() {
    let limits = ArchiveLimits {
        max_total_bytes: 100_000,
        ..ArchiveLimits::default()
    };
    let err =
        inspect(&[RawEntry::stored("a.jpg", &good_jpeg(35))], &limits).expect_err("too large");
    assert_eq!(err.code(), "archive_too_large");
}

#[test]
fn hundred_thousand_entries_stop_at_the_entry_cap_quickly() {
    let entries: Vec<_> = (0..100_000)
        .map(|i| RawEntry::stored(&format!("{i}.txt"), b""))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "many.zip", &build_zip(&entries));
    let started = Instant::now();
    let err = inspect_archive(&path, &ArchiveLimits::default(), &PhotoRules::default())
        .expect_err("too many");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.code(), "too_many_entries");
    assert!(matches!(
        err,
        ArchiveError::TooManyEntries {
            entries: 100_000,
            max_entries: 1000
        }
    ));
    assert_eq!(dir_listing(dir.path()), ["many.zip"]);
}

#[test]
fn declared_size_that_lies_is_caught() {
    // Deflated entry that declares 1,000 bytes but expands to 3 MB.
    let pattern: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i % 251) as u8 ^ (i / 7919) as u8)
        .collect();
    let mut liar = RawEntry::deflated("liar.jpg", &pattern);
    liar.uncompressed_size = 1000;
    // Stored entry whose declared sizes are smaller than its real data.
    let real = good_jpeg(36);
    let mut short = RawEntry::stored("short.jpg", &real);
    short.compressed_size = 1000;
    short.uncompressed_size = 1000;
    let report = inspect(
        &[liar, RawEntry::stored("ok.jpg", &real)],
        &ArchiveLimits::default(),
    )
    .expect("inspected");
    assert_eq!(codes(&report), [("liar.jpg", "size_mismatch")]);
    assert!(matches!(
        report.rejected[0].problem,
        EntryProblem::SizeMismatch { declared: 1000 }
    ));
    assert!(
        report.decompressed_bytes < 1_000 + 64 * 1024 + real.len() as u64,
        "stopped early"
    );
    assert_eq!(report.accepted.len(), 1);

    // Stored entry with understated sizes: only the declared bytes are read
    // and their checksum does not match.
    let report = inspect(&[short], &ArchiveLimits::default()).expect("inspected");
    assert_eq!(codes(&report), [("short.jpg", "corrupt_entry")]);
    assert!(report.accepted.is_empty());
}

#[test]
fn path_traversal_names_are_refused() {
    let good = good_jpeg(37);
    let names = [
        "../x.jpg",
        "/etc/x.jpg",
        "C:\\x.jpg",
        "a\\..\\x.jpg",
        "ok/../../x.jpg",
    ];
    let mut entries: Vec<_> = names.iter().map(|n| RawEntry::stored(n, &good)).collect();
    entries.push(RawEntry::stored("fine.jpg", &good));
    let report = inspect(&entries, &ArchiveLimits::default()).expect("inspected");
    let rejected: Vec<_> = codes(&report);
    assert_eq!(rejected.len(), names.len());
    for (name, (rejected_name, code)) in names.iter().zip(&rejected) {
        assert_eq!(name, rejected_name);
        assert_eq!(*code, "unsafe_path", "{name}");
    }
    assert_eq!(report.accepted.len(), 1);
}

#[test]
fn symlink_entries_are_refused() {
    let entries = vec![
        RawEntry::symlink("link.jpg", "/etc/passwd"),
        RawEntry::stored("real.jpg", &good_jpeg(38)),
    ];
    let report = inspect(&entries, &ArchiveLimits::default()).expect("inspected");
    assert_eq!(codes(&report), [("link.jpg", "symlink")]);
    assert_eq!(report.accepted.len(), 1);
}

#[test]
fn nested_archives_are_refused_by_extension_and_by_content() {
    let inner = build_zip(&[RawEntry::stored("inner.jpg", &good_jpeg(39))]);
    let entries = vec![
        RawEntry::stored("more.zip", &inner),
        RawEntry::stored("disguised.jpg", &inner),
        RawEntry::stored("backup.tar.gz", b"\x1F\x8B\x08\0"),
        RawEntry::stored("caption.txt", b"\x1F\x8B\x08\0gzip"),
    ];
    let report = inspect(&entries, &ArchiveLimits::default()).expect("inspected");
    assert_eq!(
        codes(&report),
        [
            ("more.zip", "nested_archive"),
            ("disguised.jpg", "nested_archive"),
            ("backup.tar.gz", "nested_archive"),
            ("caption.txt", "nested_archive"),
        ]
    );
}

#[test]
fn duplicate_names_are_refused() {
    let good = good_jpeg(40);
    let entries = vec![
        RawEntry::stored("a.jpg", &good),
        RawEntry::stored("a.jpg", &good),
    ];
    let err = inspect(&entries, &ArchiveLimits::default()).expect_err("ambiguous");
    assert_eq!(err.code(), "duplicate_entry_names");
    assert!(matches!(
        err,
        ArchiveError::DuplicateNames {
            declared: 2,
            distinct: 1
        }
    ));
}

#[test]
fn not_a_zip_and_timeout_are_archive_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "page.zip", b"<html>not found</html>");
    let err = inspect_archive(&path, &ArchiveLimits::default(), &PhotoRules::default())
        .expect_err("html");
    assert_eq!(err.code(), "not_a_zip");

    let limits = ArchiveLimits {
        max_duration: Duration::ZERO,
        ..ArchiveLimits::default()
    };
    let err = inspect(&[RawEntry::stored("a.jpg", &good_jpeg(41))], &limits).expect_err("timeout");
    assert_eq!(err.code(), "inspection_timeout");
}
