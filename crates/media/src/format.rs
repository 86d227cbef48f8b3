//! File-kind sniffing from magic bytes.
//!
//! The upload's file name and declared content type are never consulted: a
//! HEIC renamed `.jpg` or an HTML error page saved as `photo.jpg` must be
//! rejected by what the bytes are, and named in the rejection so the user
//! knows what to fix.

use std::fmt;

pub use domain::PhotoFormat;

/// The `image` crate's name for `format`.
pub(crate) fn image_format(format: PhotoFormat) -> image::ImageFormat {
    match format {
        PhotoFormat::Jpeg => image::ImageFormat::Jpeg,
        PhotoFormat::Png => image::ImageFormat::Png,
        PhotoFormat::Webp => image::ImageFormat::WebP,
    }
}

domain::named_enum! {
    /// What the first bytes of a file say it is. Unsupported kinds are named so
    /// a rejection can say "this is a HEIC photo" instead of "invalid file".
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum FileKind {
        Jpeg => "jpeg",
        Png => "png",
        Webp => "webp",
        /// HEIC/HEIF (iPhone default). Common and not decodable by the trainer.
        Heic => "heic",
        Avif => "avif",
        Gif => "gif",
        /// An HTML page, typically an error page saved under an image name.
        Html => "html",
        Svg => "svg",
        Bmp => "bmp",
        Tiff => "tiff",
        Pdf => "pdf",
        Unknown => "unknown",
    }
}

impl FileKind {
    /// The accepted photo format, if this kind is one.
    pub fn photo_format(self) -> Option<PhotoFormat> {
        match self {
            FileKind::Jpeg => Some(PhotoFormat::Jpeg),
            FileKind::Png => Some(PhotoFormat::Png),
            FileKind::Webp => Some(PhotoFormat::Webp),
            _ => None,
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Identify a file by its leading bytes. Needs at most the first 512 bytes.
pub fn sniff(bytes: &[u8]) -> FileKind {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return FileKind::Jpeg;
    }
    if bytes.starts_with(PNG_SIGNATURE) {
        return FileKind::Png;
    }
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return FileKind::Webp;
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return FileKind::Gif;
    }
    if let Some(kind) = sniff_iso_bmff(bytes) {
        return kind;
    }
    if bytes.starts_with(b"BM") && bytes.len() >= 26 {
        return FileKind::Bmp;
    }
    if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        return FileKind::Tiff;
    }
    if bytes.starts_with(b"%PDF-") {
        return FileKind::Pdf;
    }
    sniff_markup(bytes).unwrap_or(FileKind::Unknown)
}

/// HEIC/HEIF and AVIF are ISO-BMFF files: a `ftyp` box with a major brand and
/// a list of compatible brands.
fn sniff_iso_bmff(bytes: &[u8]) -> Option<FileKind> {
    if bytes.len() < 12 || &bytes[4..8] != b"ftyp" {
        return None;
    }
    let box_len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let box_end = box_len.clamp(12, bytes.len().min(512));
    let major = &bytes[8..12];
    // Compatible brands start after major brand (4) and minor version (4).
    let compatible = bytes.get(16..box_end).unwrap_or(&[]);
    let has = |brand: &[u8]| major == brand || compatible.chunks_exact(4).any(|b| b == brand);
    if has(b"avif") || has(b"avis") {
        return Some(FileKind::Avif);
    }
    const HEIF_BRANDS: [&[u8]; 10] = [
        b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1",
    ];
    if HEIF_BRANDS.iter().any(|brand| has(brand)) {
        return Some(FileKind::Heic);
    }
    None
}

/// HTML/SVG text, allowing a UTF-8 BOM and leading whitespace.
fn sniff_markup(bytes: &[u8]) -> Option<FileKind> {
    let text = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    let start = text.iter().position(|b| !b.is_ascii_whitespace())?;
    let head = &text[start..text.len().min(start + 512)];
    let starts_with = |prefix: &str| {
        head.len() >= prefix.len() && head[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    };
    const HTML_PREFIXES: [&str; 7] = [
        "<!doctype html",
        "<html",
        "<head",
        "<body",
        "<script",
        "<!--",
        "<title",
    ];
    if HTML_PREFIXES.iter().any(|p| starts_with(p)) {
        return Some(FileKind::Html);
    }
    if starts_with("<svg") {
        return Some(FileKind::Svg);
    }
    if starts_with("<?xml") {
        let lower = String::from_utf8_lossy(head).to_ascii_lowercase();
        if lower.contains("<svg") {
            return Some(FileKind::Svg);
        }
        if lower.contains("<html") {
            return Some(FileKind::Html);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_content() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0rest"), FileKind::Jpeg);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nxxxx"), FileKind::Png);
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), FileKind::Webp);
        assert_eq!(sniff(b"GIF89a\x01\0"), FileKind::Gif);
        assert_eq!(sniff(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"), FileKind::Heic);
        assert_eq!(sniff(b"\0\0\0\x18ftypavif\0\0\0\0mif1avif"), FileKind::Avif);
        assert_eq!(
            sniff(b"\xEF\xBB\xBF \n\t<!DOCTYPE HTML><html>"),
            FileKind::Html
        );
        assert_eq!(sniff(b"  <html lang=en>"), FileKind::Html);
        assert_eq!(sniff(b"<svg xmlns="), FileKind::Svg);
        assert_eq!(sniff(b"hello"), FileKind::Unknown);
        assert_eq!(sniff(b""), FileKind::Unknown);
    }
}
