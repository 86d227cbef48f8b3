//! Photos made in the tests: distinct, realistic enough to pass every check, or broken in one
//! precise way.

use std::io::Cursor;

use image::{ImageFormat, Rgb, RgbImage};

/// A small deterministic generator, so each seed gives the same picture on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// A `width` x `height` picture whose structure depends on `seed`: a grid of random blocks
/// (so perceptual hashes of different seeds differ) with fine texture (so it is sharp).
pub fn picture(seed: u64, width: u32, height: u32) -> RgbImage {
    let mut rng = Lcg(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let grid: Vec<[u8; 3]> = (0..64)
        .map(|_| [rng.next() as u8, rng.next() as u8, rng.next() as u8])
        .collect();
    RgbImage::from_fn(width, height, |x, y| {
        let cell = grid[((y * 8 / height) * 8 + (x * 8 / width)) as usize];
        let texture = ((x * 7 + y * 13) % 23) as u8;
        Rgb([
            cell[0].saturating_add(texture),
            cell[1].saturating_add(texture / 2),
            cell[2].saturating_sub(texture),
        ])
    })
}

pub fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// A valid, distinct JPEG photo of 640 x 800.
pub fn jpeg(seed: u64) -> Vec<u8> {
    encode(&picture(seed, 640, 800), ImageFormat::Jpeg)
}

pub fn png(seed: u64) -> Vec<u8> {
    encode(&picture(seed, 600, 600), ImageFormat::Png)
}

/// A photo far too dark to train from.
pub fn dark_jpeg(seed: u64) -> Vec<u8> {
    let mut image = picture(seed, 640, 640);
    for pixel in image.pixels_mut() {
        for channel in pixel.0.iter_mut() {
            *channel /= 16;
        }
    }
    encode(&image, ImageFormat::Jpeg)
}

/// The same picture as `jpeg(seed)`, slightly resized and re-encoded: a near-duplicate.
pub fn near_copy_jpeg(seed: u64) -> Vec<u8> {
    let resized = image::imageops::resize(
        &picture(seed, 640, 800),
        620,
        775,
        image::imageops::FilterType::Triangle,
    );
    encode(&resized, ImageFormat::Jpeg)
}

/// A JPEG cut off half-way.
pub fn truncated_jpeg(seed: u64) -> Vec<u8> {
    let mut bytes = jpeg(seed);
    bytes.truncate(bytes.len() / 2);
    bytes
}

pub fn small_jpeg(seed: u64) -> Vec<u8> {
    encode(&picture(seed, 300, 300), ImageFormat::Jpeg)
}

/// A 1 x 1 GIF.
pub fn gif() -> Vec<u8> {
    let mut bytes = b"GIF89a\x01\x00\x01\x00\x80\x00\x00".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    bytes.extend_from_slice(
        b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
    );
    bytes
}

pub fn html() -> Vec<u8> {
    b"<!DOCTYPE html><html><body>not a photo</body></html>".to_vec()
}

/// The start of an HEIC file: an `ftyp` box with the `heic` brand.
pub fn heic() -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 24];
    bytes.extend_from_slice(b"ftypheic");
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes.extend_from_slice(b"mif1heic");
    bytes.extend_from_slice(&[0u8; 64]);
    bytes
}

/// A PNG whose header claims 50,000 x 50,000 pixels (with a valid CRC) and holds no pixels.
pub fn huge_png_header() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&50_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    bytes.extend_from_slice(&13u32.to_be_bytes());
    bytes.extend_from_slice(&ihdr);
    bytes.extend_from_slice(&crc32fast::hash(&ihdr).to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes.extend_from_slice(b"IEND");
    bytes.extend_from_slice(&crc32fast::hash(b"IEND").to_be_bytes());
    bytes
}

/// Portraits of twelve different people, one face each, made offline by
/// `cargo xtask face-photos` from the group photo shipped in the `rustface` package.
const PORTRAITS: [&[u8]; 12] = [
    include_bytes!("../fixtures/faces/portrait-01.jpg"),
    include_bytes!("../fixtures/faces/portrait-02.jpg"),
    include_bytes!("../fixtures/faces/portrait-03.jpg"),
    include_bytes!("../fixtures/faces/portrait-04.jpg"),
    include_bytes!("../fixtures/faces/portrait-05.jpg"),
    include_bytes!("../fixtures/faces/portrait-06.jpg"),
    include_bytes!("../fixtures/faces/portrait-07.jpg"),
    include_bytes!("../fixtures/faces/portrait-08.jpg"),
    include_bytes!("../fixtures/faces/portrait-09.jpg"),
    include_bytes!("../fixtures/faces/portrait-10.jpg"),
    include_bytes!("../fixtures/faces/portrait-11.jpg"),
    include_bytes!("../fixtures/faces/portrait-12.jpg"),
];

/// The `i`th portrait (0..12): a JPEG with exactly one usable face.
pub fn portrait(i: usize) -> Vec<u8> {
    PORTRAITS[i].to_vec()
}

/// `count` (at most 12) distinct portraits named `p{i}.jpg`: a set a `character` avatar
/// trains from.
pub fn portrait_set(count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| (format!("p{i}.jpg"), portrait(i)))
        .collect()
}

/// Three people side by side.
pub fn group_photo() -> Vec<u8> {
    include_bytes!("../fixtures/faces/group.jpg").to_vec()
}

/// One face of about a tenth of the picture's side.
pub fn tiny_face() -> Vec<u8> {
    include_bytes!("../fixtures/faces/tiny-face.jpg").to_vec()
}

/// A face starting just outside the left edge.
pub fn edge_face() -> Vec<u8> {
    include_bytes!("../fixtures/faces/edge-face.jpg").to_vec()
}
