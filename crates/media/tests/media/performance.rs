//! Release-mode timing and memory check for a camera-sized JPEG. Ignored by
//! default (it is meaningless in debug builds); run with
//! `cargo test -p media --release -- --ignored --nocapture performance`.

use std::time::Instant;

use media::{inspect_photo_path, PhotoRules};

use crate::support::{jpeg, photo, write_file};

/// Peak resident set size of this process in KiB (Linux only).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reset the peak RSS counter so later readings reflect inspection only.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[test]
#[ignore = "timing check; run in release with --ignored"]
fn performance_camera_sized_jpeg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = jpeg(&photo(4000, 3000, 99), 90);
    let path = write_file(dir.path(), "camera.jpg", &bytes);
    let size_mb = bytes.len() as f64 / 1_000_000.0;
    let started = Instant::now();
    let decoded = image::load_from_memory(&bytes).expect("decode");
    println!("plain decode alone: {:?}", started.elapsed());
    drop(decoded);
    let started = Instant::now();
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
    println!("sha256 alone: {:?} ({})", started.elapsed(), digest.len());
    drop(bytes);
    let rules = PhotoRules::default();

    let first = inspect_photo_path(&path, &rules).expect("accepted");
    println!(
        "fixture: 4000x3000 JPEG, {size_mb:.2} MB, metrics {:?}",
        first.metrics
    );

    reset_peak_rss();
    let baseline = peak_rss_kib();
    let runs = 20;
    let started = Instant::now();
    let mut peaks = Vec::new();
    for _ in 0..runs {
        inspect_photo_path(&path, &rules).expect("accepted");
        peaks.push(peak_rss_kib().unwrap_or(0));
    }
    let per_photo = started.elapsed() / runs;
    println!(
        "per photo: {per_photo:?} ({:.1} MB/s on one core)",
        size_mb / per_photo.as_secs_f64()
    );
    // Two workers, as on the 2-core production machine.
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..runs / 2 {
                    inspect_photo_path(&path, &rules).expect("accepted");
                }
            });
        }
    });
    println!(
        "two threads: {:.1} MB/s aggregate",
        size_mb * f64::from(runs) / started.elapsed().as_secs_f64()
    );
    println!(
        "peak RSS: baseline {baseline:?} KiB, after 1 photo {} KiB, after 10 {} KiB, after {runs} photos {} KiB",
        peaks[0],
        peaks[9],
        peaks[runs as usize - 1]
    );
}
