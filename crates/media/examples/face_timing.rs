//! Milliseconds per photo for face detection, and for the whole inspection of a large photo.
//! `cargo run --release -p media --example face_timing -- tests/fixtures/faces/*.jpg`

use std::time::Instant;

fn main() {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    let rules = media::PhotoRules::default();
    let rounds = 5;
    for path in &paths {
        let data = std::fs::read(path).expect("readable photo");
        let image = image::load_from_memory(&data).expect("decodable photo");
        let (w, h) = (image.width(), image.height());
        let scale = (f64::from(media::DETECTION_MAX_SIDE) / f64::from(w.max(h))).min(1.0);
        let gray = image::imageops::resize(
            &image.to_luma8(),
            (f64::from(w) * scale) as u32,
            (f64::from(h) * scale) as u32,
            image::imageops::FilterType::Triangle,
        );
        let started = Instant::now();
        for _ in 0..rounds {
            media::find_faces(&gray);
        }
        let detect_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
        let started = Instant::now();
        for _ in 0..rounds {
            media::inspect_photo_bytes(&data, &rules).expect("accepted photo");
        }
        let inspect_ms = started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
        println!(
            "{path}: {w}x{h}, detection on {}x{}: {detect_ms:.1} ms, whole inspection: {inspect_ms:.1} ms",
            gray.width(),
            gray.height()
        );
    }
}
