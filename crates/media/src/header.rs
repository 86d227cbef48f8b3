//! Dimensions read straight from the file header, before any decoder runs.
//!
//! A PNG header can claim 50,000 x 50,000 pixels in 33 bytes; the size check
//! must happen on these numbers so nothing is allocated for such a file.
//! The JPEG completeness walk exists because the JPEG decoder is lenient:
//! it fills a truncated scan with grey and reports success, while fal's
//! trainer (and most tooling) refuses truncated files.

use crate::format::PhotoFormat;

/// Why a header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HeaderError(pub &'static str);

/// Width and height as stored in the file (before EXIF orientation).
pub fn dimensions(bytes: &[u8], format: PhotoFormat) -> Result<(u32, u32), HeaderError> {
    let (width, height) = match format {
        PhotoFormat::Png => png_dimensions(bytes)?,
        PhotoFormat::Jpeg => jpeg_dimensions(bytes)?,
        PhotoFormat::Webp => webp_dimensions(bytes)?,
    };
    if width == 0 || height == 0 {
        return Err(HeaderError("header declares a zero width or height"));
    }
    Ok((width, height))
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn le_u24(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        0,
    ]))
}

fn png_dimensions(b: &[u8]) -> Result<(u32, u32), HeaderError> {
    // Signature (8), chunk length (4), "IHDR" (4), width (4), height (4).
    if b.get(12..16) != Some(b"IHDR") {
        return Err(HeaderError("PNG does not start with an IHDR chunk"));
    }
    match (be_u32(b, 16), be_u32(b, 20)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(HeaderError("PNG header is truncated")),
    }
}

fn webp_dimensions(b: &[u8]) -> Result<(u32, u32), HeaderError> {
    let truncated = HeaderError("WEBP header is truncated");
    match b.get(12..16) {
        Some(b"VP8X") => {
            let w = le_u24(b, 24).ok_or(truncated.clone())? + 1;
            let h = le_u24(b, 27).ok_or(truncated)? + 1;
            Ok((w, h))
        }
        Some(b"VP8L") => {
            if b.get(20) != Some(&0x2F) {
                return Err(HeaderError("WEBP lossless signature missing"));
            }
            let bits =
                u32::from_le_bytes(b.get(21..25).ok_or(truncated)?.try_into().unwrap_or([0; 4]));
            Ok(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
        }
        Some(b"VP8 ") => {
            if b.get(23..26) != Some(&[0x9D, 0x01, 0x2A]) {
                return Err(HeaderError("WEBP lossy start code missing"));
            }
            let w = le_u16(b, 26).ok_or(truncated.clone())? & 0x3FFF;
            let h = le_u16(b, 28).ok_or(truncated)? & 0x3FFF;
            Ok((u32::from(w), u32::from(h)))
        }
        Some(_) => Err(HeaderError("WEBP has an unknown first chunk")),
        None => Err(truncated),
    }
}

/// Start-of-frame markers carry the dimensions (all SOFn except DHT, JPG, DAC).
fn is_sof(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// Markers without a length field.
fn is_standalone(marker: u8) -> bool {
    matches!(marker, 0x01 | 0xD0..=0xD9)
}

fn jpeg_dimensions(b: &[u8]) -> Result<(u32, u32), HeaderError> {
    let mut pos = 2; // after SOI
    loop {
        let (marker, next) =
            next_marker(b, pos).ok_or(HeaderError("JPEG ends before its frame header"))?;
        pos = next;
        if is_standalone(marker) {
            if marker == 0xD9 {
                return Err(HeaderError("JPEG has no frame header"));
            }
            continue;
        }
        if marker == 0xDA {
            return Err(HeaderError("JPEG scan starts before its frame header"));
        }
        let len = usize::from(be_u16(b, pos).ok_or(HeaderError("JPEG segment is truncated"))?);
        if len < 2 {
            return Err(HeaderError("JPEG segment has an invalid length"));
        }
        if is_sof(marker) {
            // length (2), precision (1), height (2), width (2)
            let h = be_u16(b, pos + 3).ok_or(HeaderError("JPEG frame header is truncated"))?;
            let w = be_u16(b, pos + 5).ok_or(HeaderError("JPEG frame header is truncated"))?;
            return Ok((u32::from(w), u32::from(h)));
        }
        pos += len;
    }
}

/// Find the marker at or after `pos` (skipping fill bytes); returns the marker
/// byte and the position just after it.
fn next_marker(b: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    while *b.get(pos)? != 0xFF {
        pos += 1;
    }
    while *b.get(pos)? == 0xFF {
        pos += 1;
    }
    Some((*b.get(pos)?, pos + 1))
}

/// True when the JPEG's segment structure reaches an end-of-image marker.
/// Walks headers, and within scan data skips stuffed bytes (`FF 00`) and
/// restart markers until the next real marker.
pub fn jpeg_is_complete(b: &[u8]) -> bool {
    let mut pos = 2;
    loop {
        let Some((marker, next)) = next_marker(b, pos) else {
            return false;
        };
        pos = next;
        match marker {
            0xD9 => return true,
            m if is_standalone(m) => continue,
            _ => {}
        }
        let Some(len) = be_u16(b, pos) else {
            return false;
        };
        pos += usize::from(len);
        if pos > b.len() {
            return false;
        }
        if marker == 0xDA {
            // Entropy-coded data: find the next marker that is not a stuffed
            // zero or a restart marker.
            loop {
                let Some(offset) = b
                    .get(pos..)
                    .and_then(|rest| rest.iter().position(|&x| x == 0xFF))
                else {
                    return false;
                };
                pos += offset;
                match b.get(pos + 1) {
                    None => return false,
                    Some(0x00) | Some(0xD0..=0xD7) | Some(0xFF) => pos += 1,
                    Some(_) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_header_is_read_without_decoding() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&50_000u32.to_be_bytes());
        png.extend_from_slice(&40_000u32.to_be_bytes());
        assert_eq!(dimensions(&png, PhotoFormat::Png), Ok((50_000, 40_000)));
    }

    #[test]
    fn jpeg_without_frame_header_is_an_error() {
        assert!(dimensions(b"\xFF\xD8\xFF\xD9", PhotoFormat::Jpeg).is_err());
        assert!(dimensions(b"\xFF\xD8\xFF\xE0\x00", PhotoFormat::Jpeg).is_err());
    }
}
