//! Test fixtures generated in code: synthetic photos, EXIF segments and raw
//! ZIP archives whose headers can be made to lie.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use flate2::{Compress, Compression, FlushCompress};
use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};

/// Deterministic pseudo-random noise in 0..256.
fn noise(x: u32, y: u32, seed: u32) -> u32 {
    let mut h =
        x.wrapping_mul(0x9E37_79B1) ^ y.wrapping_mul(0x85EB_CA77) ^ seed.wrapping_mul(0xC2B2_AE3D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h & 0xFF
}

/// A synthetic "photo": smooth shading, hard-edged shapes and fine texture,
/// so it is bright enough, contrasted and sharp. `seed` changes the layout.
pub fn photo(width: u32, height: u32, seed: u32) -> RgbImage {
    let s = seed as f32;
    RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        let shade = 60.0 + 90.0 * ((fx * (3.0 + s)) + (fy * (2.0 + 0.5 * s))).sin().abs();
        let block = if ((x * (4 + seed)) / width + (y * (3 + seed)) / height) % 2 == 0 {
            60.0
        } else {
            0.0
        };
        let texture = (noise(x, y, seed) as f32 - 128.0) * 0.15;
        let v = (shade + block + texture).clamp(0.0, 255.0);
        Rgb([v as u8, (v * 0.9) as u8, (v * 0.8) as u8])
    })
}

pub fn jpeg(image: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(image)
        .expect("encode jpeg");
    out
}

pub fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

/// Insert an EXIF APP1 segment carrying `orientation` right after SOI.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    // TIFF header (big endian), IFD0 at offset 8 with one SHORT entry.
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2A");
    tiff.extend_from_slice(&8u32.to_be_bytes());
    tiff.extend_from_slice(&1u16.to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&tiff);

    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A ZIP entry written exactly as described, so tests can make headers lie.
#[derive(Clone)]
pub struct RawEntry {
    pub name: String,
    /// 0 = stored, 8 = deflate.
    pub method: u16,
    /// The bytes as they appear in the archive (compressed if deflate).
    pub payload: Vec<u8>,
    pub crc32: u32,
    pub compressed_size: u32,
    pub uncompressed_size: u32,
    pub version_made_by: u16,
    pub external_attributes: u32,
}

impl RawEntry {
    pub fn stored(name: &str, data: &[u8]) -> RawEntry {
        RawEntry {
            name: name.to_owned(),
            method: 0,
            payload: data.to_vec(),
            crc32: crc32fast::hash(data),
            compressed_size: data.len() as u32,
            uncompressed_size: data.len() as u32,
            version_made_by: (3 << 8) | 20,
            external_attributes: 0o100644 << 16,
        }
    }

    pub fn deflated(name: &str, data: &[u8]) -> RawEntry {
        let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).expect("deflate");
        let payload = encoder.finish().expect("deflate");
        RawEntry {
            method: 8,
            compressed_size: payload.len() as u32,
            payload,
            ..RawEntry::stored(name, data)
        }
    }

    pub fn symlink(name: &str, target: &str) -> RawEntry {
        RawEntry {
            external_attributes: 0o120777 << 16,
            ..RawEntry::stored(name, target.as_bytes())
        }
    }
}

/// A deflate stream of `gib` GiB of zeros, about 1 MiB per GiB, built by
/// repeating one sync-flushed 1 MiB block instead of compressing gigabytes.
pub fn zeros_bomb(name: &str, mib: u32) -> RawEntry {
    const MIB: usize = 1024 * 1024;
    let zeros = vec![0u8; MIB];
    let mut compress = Compress::new(Compression::best(), false);
    let mut block = Vec::with_capacity(MIB);
    compress
        .compress_vec(&zeros, &mut block, FlushCompress::Sync)
        .expect("compress");
    assert_eq!(
        compress.total_in(),
        MIB as u64,
        "compressor consumed the whole block"
    );
    let mut payload = Vec::with_capacity(block.len() * mib as usize + 2);
    for _ in 0..mib {
        payload.extend_from_slice(&block);
    }
    // Final, empty fixed-Huffman block.
    payload.extend_from_slice(&[0x03, 0x00]);

    let mut one = crc32fast::Hasher::new();
    one.update(&zeros);
    let mut crc = crc32fast::Hasher::new();
    for _ in 0..mib {
        crc.combine(&one);
    }
    let total = u64::from(mib) * MIB as u64;
    RawEntry {
        name: name.to_owned(),
        method: 8,
        crc32: crc.finalize(),
        compressed_size: payload.len() as u32,
        uncompressed_size: u32::try_from(total).unwrap_or(u32::MAX),
        payload,
        version_made_by: (3 << 8) | 20,
        external_attributes: 0o100644 << 16,
    }
}

/// Serialise entries; writes ZIP64 end records when there are more than
/// 65,534 entries.
pub fn build_zip(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offsets = Vec::with_capacity(entries.len());
    for e in entries {
        offsets.push(out.len() as u32);
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&e.method.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0x21u16.to_le_bytes());
        out.extend_from_slice(&e.crc32.to_le_bytes());
        out.extend_from_slice(&e.compressed_size.to_le_bytes());
        out.extend_from_slice(&e.uncompressed_size.to_le_bytes());
        out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(e.name.as_bytes());
        out.extend_from_slice(&e.payload);
    }
    let cd_start = out.len() as u64;
    for (e, offset) in entries.iter().zip(&offsets) {
        out.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        out.extend_from_slice(&e.version_made_by.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&e.method.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0x21u16.to_le_bytes());
        out.extend_from_slice(&e.crc32.to_le_bytes());
        out.extend_from_slice(&e.compressed_size.to_le_bytes());
        out.extend_from_slice(&e.uncompressed_size.to_le_bytes());
        out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 8]); // extra, comment, disk, internal attributes
        out.extend_from_slice(&e.external_attributes.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(e.name.as_bytes());
    }
    let cd_size = out.len() as u64 - cd_start;
    let count = entries.len() as u64;
    if count >= 0xFFFF {
        let record_at = out.len() as u64;
        out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&45u16.to_le_bytes());
        out.extend_from_slice(&45u16.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&cd_size.to_le_bytes());
        out.extend_from_slice(&cd_start.to_le_bytes());
        out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&record_at.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    let short_count = count.min(0xFFFF) as u16;
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&short_count.to_le_bytes());
    out.extend_from_slice(&short_count.to_le_bytes());
    out.extend_from_slice(&(cd_size as u32).to_le_bytes());
    out.extend_from_slice(&(cd_start as u32).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write fixture");
    path
}

/// Names of everything in `dir` (non-recursive), sorted.
pub fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
