//! Face detection on an accepted photo: how many frontal faces it shows, and where the largest
//! one is.
//!
//! The detector is SeetaFace's frontal model run by the `rustface` crate. Its bytes are part of
//! this crate (`model/`), so nothing is fetched at build or run time. Detection runs on a
//! grayscale copy at most [`DETECTION_MAX_SIDE`] pixels on its longest side, turned upright by
//! the EXIF orientation (the model only finds upright faces); boxes are reported relative to
//! that upright picture, so a client can draw them on the photo as displayed.
//!
//! The detector's smallest window is 40 pixels, so on the detection copy a face narrower than
//! about 6% of the longest side is not found at all.

use std::sync::OnceLock;

use image::{imageops, DynamicImage, GrayImage};
use rustface::{Detector, ImageData, Model};

use crate::quality::GrayThumbnail;

/// Longest side of the grayscale copy faces are detected on.
pub const DETECTION_MAX_SIDE: u32 = 640;
/// Detections scoring below this are ignored (SeetaFace's scale; 2.0 is its authors' choice
/// for photos).
pub const FACE_SCORE_THRESHOLD: f64 = 2.0;

static MODEL_BYTES: &[u8] = include_bytes!("../model/seeta_fd_frontal_v1.0.bin");

/// What the detector found on a photo.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceInspection {
    /// Number of faces found.
    pub faces: u32,
    /// The largest face, when there is one.
    pub largest: Option<DetectedFace>,
}

/// One face: its box relative to the upright photo (0..1 on each axis, clamped to the frame),
/// its share of the photo's area and the detector's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectedFace {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    /// Box area over photo area.
    pub share: f64,
    pub score: f64,
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        // The bytes are compiled in and covered by the tests: a parse failure is a build defect.
        rustface::read_model(MODEL_BYTES).expect("the bundled face model parses")
    })
}

/// The grayscale copy for detection: an integer box-average down to just above
/// [`DETECTION_MAX_SIDE`] (one cheap pass over the full pixels), then an exact resize of that
/// small copy, turned upright.
#[cfg(test)]
pub(crate) fn detection_copy(image: &DynamicImage, orientation: u8) -> GrayImage {
    let factor = detection_factor(image.width(), image.height());
    upright_detection_copy(GrayThumbnail::reduced(image, factor), orientation)
}

/// The integer reduction that keeps the detection copy at or just above
/// [`DETECTION_MAX_SIDE`]; an exact resize follows.
pub(crate) fn detection_factor(width: u32, height: u32) -> usize {
    (width.max(height).max(1) / DETECTION_MAX_SIDE).max(1) as usize
}

/// Finishes a copy reduced by [`detection_factor`] (however it was built): resized to at most
/// [`DETECTION_MAX_SIDE`] and turned upright.
pub(crate) fn upright_detection_copy(reduced: GrayThumbnail, orientation: u8) -> GrayImage {
    let mut gray = reduced.into_image();
    let (w, h) = gray.dimensions();
    if w.max(h) > DETECTION_MAX_SIDE {
        let scale = f64::from(DETECTION_MAX_SIDE) / f64::from(w.max(h));
        let nw = ((f64::from(w) * scale).round() as u32).max(1);
        let nh = ((f64::from(h) * scale).round() as u32).max(1);
        gray = imageops::resize(&gray, nw, nh, imageops::FilterType::Triangle);
    }
    upright(gray, orientation)
}

fn upright(gray: GrayImage, orientation: u8) -> GrayImage {
    match image::metadata::Orientation::from_exif(orientation) {
        Some(o) if orientation != 1 => {
            let mut image = DynamicImage::ImageLuma8(gray);
            image.apply_orientation(o);
            image.into_luma8()
        }
        _ => gray,
    }
}

/// Detects the faces on an upright grayscale copy.
pub(crate) fn detect_faces(gray: &GrayImage) -> FaceInspection {
    let (w, h) = gray.dimensions();
    if w < 40 || h < 40 {
        return FaceInspection {
            faces: 0,
            largest: None,
        };
    }
    let faces = new_detector().detect(&ImageData::new(gray.as_raw(), w, h));
    let largest = faces
        .iter()
        .max_by_key(|f| u64::from(f.bbox().width()) * u64::from(f.bbox().height()))
        .map(|f| {
            let b = f.bbox();
            let (fw, fh) = (f64::from(w), f64::from(h));
            let x0 = f64::from(b.x()).clamp(0.0, fw);
            let y0 = f64::from(b.y()).clamp(0.0, fh);
            let x1 = (f64::from(b.x()) + f64::from(b.width())).clamp(0.0, fw);
            let y1 = (f64::from(b.y()) + f64::from(b.height())).clamp(0.0, fh);
            DetectedFace {
                x: x0 / fw,
                y: y0 / fh,
                width: (x1 - x0) / fw,
                height: (y1 - y0) / fh,
                share: (x1 - x0) * (y1 - y0) / (fw * fh),
                score: f.score(),
            }
        });
    FaceInspection {
        faces: faces.len() as u32,
        largest,
    }
}

/// A face's box in pixels of the image it was found on, with the detector's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceBox {
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
    pub score: f64,
}

/// Every face on a grayscale image at its own resolution (no downscaling): for tools that
/// prepare test pictures, where the faces may be small.
pub fn find_faces(gray: &GrayImage) -> Vec<FaceBox> {
    let (w, h) = gray.dimensions();
    if w < 40 || h < 40 {
        return Vec::new();
    }
    let mut detector = new_detector();
    detector
        .detect(&ImageData::new(gray.as_raw(), w, h))
        .iter()
        .map(|f| FaceBox {
            x: f.bbox().x(),
            y: f.bbox().y(),
            width: f.bbox().width(),
            height: f.bbox().height(),
            score: f.score(),
        })
        .collect()
}

fn new_detector() -> Box<dyn Detector> {
    let mut detector = rustface::create_detector_with_model(model().clone());
    detector.set_min_face_size(40);
    detector.set_score_thresh(FACE_SCORE_THRESHOLD);
    detector.set_pyramid_scale_factor(0.8);
    detector.set_slide_window_step(4, 4);
    detector
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{inspect_photo_bytes, PhotoRules};

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../tests/fixtures/faces/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn faces_of(name: &str) -> FaceInspection {
        inspect_photo_bytes(&fixture(name), &PhotoRules::default())
            .unwrap()
            .faces
    }

    #[test]
    fn a_portrait_has_one_face_inside_the_frame() {
        for i in 1..=12 {
            let faces = faces_of(&format!("portrait-{i:02}.jpg"));
            assert_eq!(faces.faces, 1, "portrait {i}: {faces:?}");
            let face = faces.largest.unwrap();
            assert!(
                face.share > 0.05 && face.score >= FACE_SCORE_THRESHOLD,
                "{face:?}"
            );
            assert!(face.x > 0.01 && face.y > 0.01, "{face:?}");
            assert!(face.x + face.width < 0.99 && face.y + face.height < 0.99);
        }
    }

    #[test]
    fn a_group_has_several_faces() {
        assert!(faces_of("group.jpg").faces >= 2);
    }

    #[test]
    fn a_tiny_face_is_found_and_small() {
        let faces = faces_of("tiny-face.jpg");
        assert_eq!(faces.faces, 1, "{faces:?}");
        assert!(faces.largest.unwrap().share < 0.02, "{faces:?}");
    }

    #[test]
    fn a_face_past_the_edge_is_clamped_to_it() {
        let faces = faces_of("edge-face.jpg");
        assert_eq!(faces.faces, 1, "{faces:?}");
        assert!(faces.largest.unwrap().x < 0.02, "{faces:?}");
    }

    #[test]
    fn faces_are_found_on_the_photo_as_displayed() {
        let upright = image::load_from_memory(&fixture("portrait-01.jpg")).unwrap();
        // Stored turned a quarter left, with EXIF orientation 6 ("rotate right to display").
        let stored = upright.rotate270();
        let faces = detect_faces(&detection_copy(&stored, 6));
        assert_eq!(faces.faces, 1, "{faces:?}");
        let expected = detect_faces(&detection_copy(&upright, 1)).largest.unwrap();
        let found = faces.largest.unwrap();
        assert!(
            (found.x - expected.x).abs() < 0.05,
            "{found:?} vs {expected:?}"
        );
        assert!(
            (found.y - expected.y).abs() < 0.05,
            "{found:?} vs {expected:?}"
        );
    }

    #[test]
    fn the_detection_copy_is_at_most_640_on_its_longest_side() {
        let image = DynamicImage::new_rgb8(3000, 2000);
        assert_eq!(detection_copy(&image, 1).dimensions(), (640, 427));
        let image = DynamicImage::new_rgb8(600, 800);
        assert_eq!(detection_copy(&image, 1).dimensions(), (480, 640));
        assert_eq!(detection_copy(&image, 6).dimensions(), (640, 480));
        let image = DynamicImage::new_rgb8(512, 600);
        assert_eq!(detection_copy(&image, 1).dimensions(), (512, 600));
        let none = detect_faces(&GrayImage::new(600, 800));
        assert_eq!((none.faces, none.largest), (0, None));
    }
}
