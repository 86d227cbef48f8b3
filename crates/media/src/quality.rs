//! Photo quality metrics and the perceptual hash.
//!
//! Everything here runs on a small grayscale copy (longest side at most
//! [`ANALYSIS_MAX_SIDE`]) built in one pass over the decoded pixels, so a
//! 12 MP photo costs a few milliseconds on top of its decode. The copy is a
//! box average, which also removes sensor noise that would otherwise make
//! every photo look "sharp".
//!
//! Thresholds (on 0-255 luma, measured on the analysis copy):
//! * `too_dark`: mean luma below [`DARK_MEAN_BELOW`];
//! * `too_bright`: mean luma above [`BRIGHT_MEAN_ABOVE`];
//! * `low_contrast`: luma standard deviation below [`LOW_CONTRAST_STDDEV_BELOW`];
//! * `blurry`: variance of the 4-neighbour Laplacian below [`BLURRY_LAPLACIAN_VARIANCE_BELOW`].
//!
//! They are set to flag obviously bad photos (a shot in a dark room, a
//! washed-out or badly out-of-focus picture), not to grade good ones: these
//! are warnings shown to the user, never rejections.

use image::DynamicImage;

/// Longest side of the grayscale copy used for metrics and hashing.
pub const ANALYSIS_MAX_SIDE: u32 = 512;
/// Mean luma below this is `too_dark`.
pub const DARK_MEAN_BELOW: f64 = 40.0;
/// Mean luma above this is `too_bright`.
pub const BRIGHT_MEAN_ABOVE: f64 = 220.0;
/// Luma standard deviation below this is `low_contrast`.
pub const LOW_CONTRAST_STDDEV_BELOW: f64 = 18.0;
/// Laplacian variance below this is `blurry`.
pub const BLURRY_LAPLACIAN_VARIANCE_BELOW: f64 = 20.0;
/// Two perceptual hashes at most this many bits apart are near-duplicates.
/// The same photo re-encoded or resized typically differs by 0-4 bits;
/// unrelated photos by ~32.
pub const NEAR_DUPLICATE_MAX_DISTANCE: u32 = 8;

/// Measured values, exposed so the caller can log them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityMetrics {
    pub mean_luma: f64,
    pub luma_stddev: f64,
    pub laplacian_variance: f64,
}

/// A small grayscale copy of the photo.
pub(crate) struct GrayThumbnail {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl GrayThumbnail {
    /// Box-average the image down to at most `ANALYSIS_MAX_SIDE` on its
    /// longest side. For large reduction factors only every other row and
    /// column is sampled: each output pixel still averages dozens of inputs.
    pub(crate) fn from_image(image: &DynamicImage) -> GrayThumbnail {
        Self::reduced(image, analysis_factor(image.width(), image.height()))
    }

    /// Box-average the image by an integer `factor` per side.
    pub(crate) fn reduced(image: &DynamicImage, factor: usize) -> GrayThumbnail {
        let (width, height) = (image.width(), image.height());
        let from = |raw: &[u8], channels: usize| {
            let mut builder = ThumbnailBuilder::with_factor(width, height, factor);
            let row_len = width as usize * channels;
            for (y, row) in raw.chunks_exact(row_len.max(1)).enumerate() {
                builder.row(y, row, channels);
            }
            builder.finish()
        };
        match image {
            DynamicImage::ImageRgb8(buf) => from(buf.as_raw(), 3),
            DynamicImage::ImageRgba8(buf) => from(buf.as_raw(), 4),
            DynamicImage::ImageLuma8(buf) => from(buf.as_raw(), 1),
            DynamicImage::ImageLumaA8(buf) => from(buf.as_raw(), 2),
            // 16-bit and float images are rare in photo uploads; convert once.
            other => from(other.to_luma8().as_raw(), 1),
        }
    }

    /// The copy as an image, for the face detector.
    pub(crate) fn into_image(self) -> image::GrayImage {
        image::GrayImage::from_raw(self.width as u32, self.height as u32, self.pixels)
            .unwrap_or_default()
    }

    pub(crate) fn metrics(&self) -> QualityMetrics {
        let n = self.pixels.len().max(1) as f64;
        let sum: f64 = self.pixels.iter().map(|&p| f64::from(p)).sum();
        let mean = sum / n;
        let var = self
            .pixels
            .iter()
            .map(|&p| (f64::from(p) - mean).powi(2))
            .sum::<f64>()
            / n;
        QualityMetrics {
            mean_luma: mean,
            luma_stddev: var.sqrt(),
            laplacian_variance: self.laplacian_variance(),
        }
    }

    /// Variance of the 4-neighbour Laplacian over interior pixels: a sharp
    /// photo has strong local second derivatives, a blurred one has none.
    fn laplacian_variance(&self) -> f64 {
        let (w, h) = (self.width, self.height);
        if w < 3 || h < 3 {
            return 0.0;
        }
        let px = |x: usize, y: usize| i64::from(self.pixels[y * w + x]);
        let (mut sum, mut sum_sq, mut n) = (0i64, 0i64, 0i64);
        for y in 1..h - 1 {
            for x in 1..w - 1 {
                let l = 4 * px(x, y) - px(x - 1, y) - px(x + 1, y) - px(x, y - 1) - px(x, y + 1);
                sum += l;
                sum_sq += l * l;
                n += 1;
            }
        }
        let mean = sum as f64 / n as f64;
        sum_sq as f64 / n as f64 - mean * mean
    }

    /// 64-bit difference hash (dHash): average the copy into 9x8 cells and
    /// set one bit per horizontally adjacent pair that gets brighter. Robust
    /// to re-encoding, resizing and small exposure changes.
    pub(crate) fn difference_hash(&self) -> u64 {
        const COLS: usize = 9;
        const ROWS: usize = 8;
        let mut cells = [[0f64; COLS]; ROWS];
        for (r, row) in cells.iter_mut().enumerate() {
            let y0 = r * self.height / ROWS;
            let y1 = ((r + 1) * self.height / ROWS).max(y0 + 1).min(self.height);
            for (c, cell) in row.iter_mut().enumerate() {
                let x0 = c * self.width / COLS;
                let x1 = ((c + 1) * self.width / COLS).max(x0 + 1).min(self.width);
                let mut sum = 0u64;
                for y in y0..y1 {
                    for x in x0..x1 {
                        sum += u64::from(self.pixels[y * self.width + x]);
                    }
                }
                let area = ((y1 - y0) * (x1 - x0)).max(1) as f64;
                *cell = sum as f64 / area;
            }
        }
        let mut hash = 0u64;
        for row in &cells {
            for c in 0..COLS - 1 {
                hash = (hash << 1) | u64::from(row[c] < row[c + 1]);
            }
        }
        hash
    }
}

/// The reduction that brings the longest side to at most [`ANALYSIS_MAX_SIDE`].
fn analysis_factor(width: u32, height: u32) -> usize {
    width.max(height).max(1).div_ceil(ANALYSIS_MAX_SIDE).max(1) as usize
}

/// Builds a [`GrayThumbnail`] from rows as a decoder yields them, so a photo never has to be
/// held whole in memory to be analysed.
pub(crate) struct ThumbnailBuilder {
    width: usize,
    factor: usize,
    step: usize,
    tw: usize,
    th: usize,
    column_cell: Vec<usize>,
    sums: Vec<u32>,
    counts: Vec<u32>,
}

impl ThumbnailBuilder {
    /// For large reduction factors only every other row and column is sampled: each output
    /// pixel still averages dozens of inputs.
    pub(crate) fn new(width: u32, height: u32) -> Self {
        Self::with_factor(width, height, analysis_factor(width, height))
    }

    /// A copy reduced by `factor` per side.
    pub(crate) fn with_factor(width: u32, height: u32, factor: usize) -> Self {
        let (w, h) = (width as usize, height as usize);
        let factor = factor.max(1);
        let tw = w.div_ceil(factor).max(1);
        let th = h.div_ceil(factor).max(1);
        let step = if factor >= 4 { 2 } else { 1 };
        ThumbnailBuilder {
            width: w,
            factor,
            step,
            tw,
            th,
            column_cell: (0..w).step_by(step).map(|x| x / factor).collect(),
            sums: vec![0u32; tw * th],
            counts: vec![0u32; tw * th],
        }
    }

    /// Adds row `y` of 8-bit samples with `channels` interleaved channels (gray, gray+alpha,
    /// RGB or RGBA).
    pub(crate) fn row(&mut self, y: usize, row: &[u8], channels: usize) {
        if y % self.step != 0 || row.len() < self.width * channels {
            return;
        }
        let cell_row = y / self.factor;
        if cell_row >= self.th {
            return;
        }
        let base = cell_row * self.tw;
        for (i, &cell) in self.column_cell.iter().enumerate() {
            let p = i * self.step * channels;
            let luma = if channels >= 3 {
                // ITU-R BT.601 weights in fixed point.
                (77 * u32::from(row[p]) + 150 * u32::from(row[p + 1]) + 29 * u32::from(row[p + 2]))
                    >> 8
            } else {
                u32::from(row[p])
            };
            self.sums[base + cell] += luma;
            self.counts[base + cell] += 1;
        }
    }

    pub(crate) fn finish(self) -> GrayThumbnail {
        let pixels = self
            .sums
            .iter()
            .zip(&self.counts)
            .map(|(&s, &c)| s.checked_div(c).unwrap_or(0) as u8)
            .collect();
        GrayThumbnail {
            width: self.tw,
            height: self.th,
            pixels,
        }
    }
}

/// Whether two perceptual hashes describe (nearly) the same picture:
/// Hamming distance at most [`NEAR_DUPLICATE_MAX_DISTANCE`] of 64 bits.
pub fn is_near_duplicate(a: u64, b: u64) -> bool {
    hamming_distance(a, b) <= NEAR_DUPLICATE_MAX_DISTANCE
}

/// Number of differing bits between two perceptual hashes.
pub fn hamming_distance(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}
