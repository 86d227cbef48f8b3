//! `cargo xtask face-photos`: the test photos with real faces in `tests/fixtures/faces`.
//!
//! Made offline from the group photo that ships inside the `rustface` package (a dependency of
//! `media`, so it is in the local registry cache): single portraits cropped around one person
//! each and rescaled, a small group, a tiny face on a plain background and a face cut off by
//! the frame. Faces are located with the service's own detector at the photo's full
//! resolution, so the crops do not depend on hand-measured coordinates.

use std::path::{Path, PathBuf};

use image::{imageops, DynamicImage, Rgb, RgbImage};
use media::FaceBox;

/// Portraits written: enough distinct people for a training set.
const PORTRAITS: usize = 12;
/// Side of the square pictures written.
const SIDE: u32 = 768;

pub fn run(root: &Path) -> Result<(), String> {
    let source = rustface_group_photo(root)?;
    let group = image::open(&source)
        .map_err(|e| format!("{}: {e}", source.display()))?
        .to_rgb8();
    let gray = DynamicImage::ImageRgb8(group.clone()).to_luma8();
    let mut faces = media::find_faces(&gray);
    // Reading order (rows, then left to right) keeps the output stable between runs.
    faces.sort_by_key(|f| ((f.y + f.height as i32 / 2) / 60, f.x));
    eprintln!("face-photos: {} faces in {}", faces.len(), source.display());
    let out = root.join("tests/fixtures/faces");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;

    // Well-separated faces away from the photo's top edge, so every crop has room around it.
    let singles: Vec<FaceBox> = faces
        .iter()
        .filter(|f| f.y > 120 && f.width >= 40)
        .copied()
        .collect();
    if singles.len() < PORTRAITS + 2 {
        return Err(format!("only {} usable faces found", singles.len()));
    }
    for (i, face) in singles.iter().take(PORTRAITS).enumerate() {
        let crop = alone(&group, &faces, face, square_around(&group, face, 2.4, 0.1));
        save(
            &out.join(format!("portrait-{:02}.jpg", i + 1)),
            &crop,
            SIDE,
            SIDE,
        )?;
    }

    // Three neighbours from one row: several faces, each large enough to be found.
    let row = &singles[PORTRAITS - 3..PORTRAITS];
    let (x0, x1) = (
        row.iter().map(|f| f.x).min().unwrap_or(0),
        row.iter().map(|f| f.x + f.width as i32).max().unwrap_or(0),
    );
    let width = (x1 - x0) as u32 + 60;
    let height = width * 2 / 3;
    let top = (row[0].y - height as i32 / 4).max(0) as u32;
    let crop = imageops::crop_imm(&group, (x0 - 30).max(0) as u32, top, width, height).to_image();
    save(&out.join("group.jpg"), &crop, 1024, 683)?;

    // One face of about a tenth of the picture's side on a plain, lightly textured background.
    let face = &singles[PORTRAITS];
    let small = alone(&group, &faces, face, square_around(&group, face, 1.6, 0.0));
    let small = imageops::resize(&small, 150, 150, imageops::FilterType::CatmullRom);
    let mut canvas = background(1024, 1024);
    imageops::overlay(&mut canvas, &small, 437, 437);
    save(&out.join("tiny-face.jpg"), &canvas, 1024, 1024)?;

    // A portrait whose face starts outside the left edge: a fifth of it is cut off.
    let face = &singles[PORTRAITS + 1];
    let side = (face.width as f64 * 2.4) as u32;
    let left = face.x + (face.width as i32) / 5;
    let top = (face.y + face.height as i32 / 2 - side as i32 / 2).max(0);
    let crop = alone(&group, &faces, face, (left as u32, top as u32, side));
    save(&out.join("edge-face.jpg"), &crop, SIDE, SIDE)?;
    eprintln!("face-photos: wrote {}", out.display());
    Ok(())
}

/// A square (left, top, side) centred on the face (moved down by `drop` of its side, to take
/// in the shoulders), `scale` times the face's width, kept inside the photo.
fn square_around(image: &RgbImage, face: &FaceBox, scale: f64, drop: f64) -> (u32, u32, u32) {
    let side = ((face.width as f64 * scale) as u32).min(image.width().min(image.height()));
    let cx = face.x + face.width as i32 / 2;
    let cy = face.y + face.height as i32 / 2 + (side as f64 * drop) as i32;
    let x = (cx - side as i32 / 2).clamp(0, (image.width() - side) as i32) as u32;
    let y = (cy - side as i32 / 2).clamp(0, (image.height() - side) as i32) as u32;
    (x, y, side)
}

/// The square crop with every other person's face in it blurred past recognition: people
/// stood close together in the group photo, and a portrait shows one face.
fn alone(image: &RgbImage, faces: &[FaceBox], keep: &FaceBox, square: (u32, u32, u32)) -> RgbImage {
    let (left, top, side) = square;
    let mut crop = imageops::crop_imm(image, left, top, side, side).to_image();
    for other in faces.iter().filter(|f| *f != keep) {
        // The detector's box is tight (brows to mouth): widen it to the whole head.
        let margin = other.width as i32 / 2;
        let x0 = (other.x - margin - left as i32).clamp(0, side as i32) as u32;
        let y0 = (other.y - margin - top as i32).clamp(0, side as i32) as u32;
        let x1 = (other.x + other.width as i32 + margin - left as i32).clamp(0, side as i32) as u32;
        let y1 = (other.y + other.height as i32 + margin - top as i32).clamp(0, side as i32) as u32;
        if x1 <= x0 || y1 <= y0 {
            continue;
        }
        let region = imageops::crop_imm(&crop, x0, y0, x1 - x0, y1 - y0).to_image();
        let blurred = imageops::blur(&region, other.width as f32 / 3.0);
        imageops::replace(&mut crop, &blurred, i64::from(x0), i64::from(y0));
    }
    crop
}

fn background(width: u32, height: u32) -> RgbImage {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    RgbImage::from_fn(width, height, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let base = 110 + ((x + y) * 60 / (width + height)) as u8;
        let v = base.saturating_add((state % 24) as u8);
        Rgb([v, v, v])
    })
}

fn save(path: &Path, image: &RgbImage, width: u32, height: u32) -> Result<(), String> {
    let resized = imageops::resize(image, width, height, imageops::FilterType::CatmullRom);
    let mut data = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut data, 85)
        .encode_image(&resized)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::write(path, &data).map_err(|e| format!("{}: {e}", path.display()))?;
    let inspection = media::inspect_photo_bytes(&data, &media::PhotoRules::default())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!(
        "  {}: {} face(s), largest {:?}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        inspection.faces.faces,
        inspection.faces.largest
    );
    Ok(())
}

/// `test.png` inside the `rustface` package, located through `cargo metadata` (offline).
fn rustface_group_photo(root: &Path) -> Result<PathBuf, String> {
    let output = crate::cargo()
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--offline"])
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).to_string());
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
    let manifest = metadata["packages"]
        .as_array()
        .and_then(|packages| {
            packages
                .iter()
                .find(|p| p["name"] == "rustface")
                .and_then(|p| p["manifest_path"].as_str())
        })
        .ok_or("the rustface package is not in the dependency graph")?;
    let dir = Path::new(manifest)
        .parent()
        .ok_or("rustface's manifest has no directory")?;
    Ok(dir.join("test.png"))
}
