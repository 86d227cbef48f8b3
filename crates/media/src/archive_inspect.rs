//! Inspection of a bring-your-own training ZIP before any money is spent.
//!
//! The archive is untrusted input. Rules:
//! * the entry count is read from the end-of-central-directory record and
//!   capped before the central directory is parsed;
//! * decompressed bytes are counted as they are produced; declared sizes are
//!   only used to refuse early, never to allow;
//! * the compression ratio is measured against the compressed bytes actually
//!   consumed from the file, so a bomb stops within a few MiB of output;
//! * nothing is ever written to disk: each entry (at most
//!   `PhotoRules::max_bytes`) is inspected from memory and dropped;
//! * names that could escape an extraction directory, symlinks and nested
//!   archives are refused, because fal's extractor would act on them.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use zip::result::ZipError;
use zip::{CompressionMethod, ZipArchive};

use crate::photo::{inspect_photo_bytes, PhotoInspection, PhotoRejection, PhotoRules};

/// Archive-wide limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Most entries (files, directories, metadata) the archive may hold.
    pub max_entries: u64,
    /// Most bytes all entries may decompress to, in total.
    pub max_total_bytes: u64,
    /// Largest decompressed:compressed ratio of one entry, checked once the
    /// entry has produced more than [`RATIO_CHECK_AFTER_BYTES`].
    pub max_compression_ratio: u64,
    /// Wall-clock budget for the whole inspection.
    pub max_duration: Duration,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_entries: 1_000,
            max_total_bytes: 2 * 1024 * 1024 * 1024,
            max_compression_ratio: 100,
            max_duration: Duration::from_secs(120),
        }
    }
}

/// Small entries cannot hurt whatever their ratio (a 1 KiB caption of
/// spaces compresses 100:1); the ratio applies past this many output bytes.
pub const RATIO_CHECK_AFTER_BYTES: u64 = 1024 * 1024;

const CHUNK: usize = 64 * 1024;

/// Why the archive as a whole is refused. Each variant has a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the file is not a readable ZIP archive: {detail}")]
    NotAZip { detail: String },
    #[error("the archive has {entries} entries; the limit is {max_entries}")]
    TooManyEntries { entries: u64, max_entries: u64 },
    #[error("the archive decompresses to more than {max_total_bytes} bytes")]
    TooLarge { max_total_bytes: u64 },
    #[error("entry {entry:?} expands more than {max_ratio}:1; the archive looks like a ZIP bomb")]
    CompressionRatio {
        entry: String,
        max_ratio: u64,
        /// Bytes of this entry decompressed before inspection stopped.
        decompressed: u64,
    },
    #[error(
        "the archive lists {declared} entries but only {distinct} distinct names; entries with the same name overwrite each other"
    )]
    DuplicateNames { declared: u64, distinct: u64 },
    #[error("inspecting the archive took longer than {max_duration:?}")]
    Timeout { max_duration: Duration },
    #[error("reading the archive failed: {0}")]
    Io(#[from] io::Error),
}

impl ArchiveError {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            ArchiveError::NotAZip { .. } => "not_a_zip",
            ArchiveError::TooManyEntries { .. } => "too_many_entries",
            ArchiveError::TooLarge { .. } => "archive_too_large",
            ArchiveError::CompressionRatio { .. } => "compression_ratio_exceeded",
            ArchiveError::DuplicateNames { .. } => "duplicate_entry_names",
            ArchiveError::Timeout { .. } => "inspection_timeout",
            ArchiveError::Io(_) => "io_error",
        }
    }

    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// Why one entry cannot be used. Each variant has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("the name could escape the extraction directory ({reason})")]
    UnsafePath { reason: &'static str },
    #[error("symbolic links are not allowed")]
    Symlink,
    #[error("archives inside the archive are not allowed")]
    NestedArchive,
    #[error("encrypted entries are not supported")]
    Encrypted,
    #[error("compression method {method} is not supported; use deflate or store")]
    UnsupportedCompression { method: String },
    #[error("the entry declares {declared} bytes but decompresses to more")]
    SizeMismatch { declared: u64 },
    #[error("the entry is damaged: {detail}")]
    CorruptEntry { detail: String },
    #[error(transparent)]
    Photo(PhotoRejection),
}

impl EntryProblem {
    /// Stable snake_case code; photo problems use the photo codes.
    pub fn code(&self) -> &'static str {
        match self {
            EntryProblem::UnsafePath { .. } => "unsafe_path",
            EntryProblem::Symlink => "symlink",
            EntryProblem::NestedArchive => "nested_archive",
            EntryProblem::Encrypted => "encrypted_entry",
            EntryProblem::UnsupportedCompression { .. } => "unsupported_compression",
            EntryProblem::SizeMismatch { .. } => "size_mismatch",
            EntryProblem::CorruptEntry { .. } => "corrupt_entry",
            EntryProblem::Photo(rejection) => rejection.code(),
        }
    }

    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// A refused entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRejection {
    /// The entry's name as stored in the archive (for display only).
    pub name: String,
    pub problem: EntryProblem,
}

impl EntryRejection {
    pub fn code(&self) -> &'static str {
        self.problem.code()
    }

    pub fn message(&self) -> String {
        self.problem.message()
    }
}

/// An image entry that passed the photo rules.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedImage {
    pub name: String,
    pub inspection: PhotoInspection,
}

/// Outcome of inspecting an archive that could be read to the end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArchiveReport {
    /// Entries in the central directory.
    pub entries: u64,
    /// Bytes actually decompressed.
    pub decompressed_bytes: u64,
    pub accepted: Vec<AcceptedImage>,
    pub rejected: Vec<EntryRejection>,
    /// Caption `.txt` files (allowed, not validated).
    pub captions: Vec<String>,
    /// Directories and macOS metadata (`__MACOSX/`, `.DS_Store`), ignored.
    pub skipped: Vec<String>,
}

impl ArchiveReport {
    /// True when nothing was refused and at least one image was accepted.
    /// Photo-count rules are the caller's.
    pub fn is_clean(&self) -> bool {
        self.rejected.is_empty() && !self.accepted.is_empty()
    }
}

/// Inspect a ZIP stored in a local file.
pub fn inspect_archive(
    path: &Path,
    limits: &ArchiveLimits,
    rules: &PhotoRules,
) -> Result<ArchiveReport, ArchiveError> {
    let started = Instant::now();
    let mut file = File::open(path)?;
    let declared_entries = declared_entry_count(&mut file)?;
    if declared_entries > limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            entries: declared_entries,
            max_entries: limits.max_entries,
        });
    }
    file.seek(SeekFrom::Start(0))?;
    let consumed = Rc::new(Cell::new(0u64));
    let reader = CountingReader {
        inner: BufReader::new(file),
        consumed: Rc::clone(&consumed),
    };
    let mut archive = ZipArchive::new(reader).map_err(|e| ArchiveError::NotAZip {
        detail: e.to_string(),
    })?;
    let entries = archive.len() as u64;
    if entries > limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            entries,
            max_entries: limits.max_entries,
        });
    }
    // The ZIP reader keeps one entry per name; fewer entries than the end
    // record declares means some names repeat, and which copy an extractor
    // keeps differs between tools, so the archive is ambiguous.
    if entries < declared_entries {
        return Err(ArchiveError::DuplicateNames {
            declared: declared_entries,
            distinct: entries,
        });
    }

    let mut inspection = Inspection {
        limits,
        rules,
        started,
        consumed,
        report: ArchiveReport {
            entries,
            ..ArchiveReport::default()
        },
        chunk: vec![0u8; CHUNK],
    };
    for index in 0..archive.len() {
        inspection.check_time()?;
        inspection.inspect_entry(&mut archive, index)?;
    }
    Ok(inspection.report)
}

/// Counts bytes read from the archive file, so the compression ratio can be
/// measured against what the decompressor actually consumed.
struct CountingReader<R> {
    inner: R,
    consumed: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

impl<R: Seek> Seek for CountingReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

struct Inspection<'a> {
    limits: &'a ArchiveLimits,
    rules: &'a PhotoRules,
    started: Instant,
    consumed: Rc<Cell<u64>>,
    report: ArchiveReport,
    chunk: Vec<u8>,
}

/// What to do with an entry once its metadata has been checked.
enum EntryKind {
    Image,
    Caption,
}

impl Inspection<'_> {
    fn check_time(&self) -> Result<(), ArchiveError> {
        if self.started.elapsed() >= self.limits.max_duration {
            return Err(ArchiveError::Timeout {
                max_duration: self.limits.max_duration,
            });
        }
        Ok(())
    }

    fn reject(&mut self, name: &str, problem: EntryProblem) {
        self.report.rejected.push(EntryRejection {
            name: name.to_owned(),
            problem,
        });
    }

    fn inspect_entry<R: Read + Seek>(
        &mut self,
        archive: &mut ZipArchive<R>,
        index: usize,
    ) -> Result<(), ArchiveError> {
        // Metadata first, through the raw (non-decompressing) view so that
        // encrypted or exotic entries can be classified without decoding.
        let (name, kind) = {
            let entry = archive.by_index_raw(index).map_err(zip_error)?;
            let name = entry.name().to_owned();
            if let Err(reason) = check_entry_name(&name) {
                self.reject(&name, EntryProblem::UnsafePath { reason });
                return Ok(());
            }
            if entry.is_symlink() {
                self.reject(&name, EntryProblem::Symlink);
                return Ok(());
            }
            if entry.is_dir() || is_macos_metadata(&name) {
                self.report.skipped.push(name);
                return Ok(());
            }
            if has_archive_extension(&name) {
                self.reject(&name, EntryProblem::NestedArchive);
                return Ok(());
            }
            if entry.encrypted() {
                self.reject(&name, EntryProblem::Encrypted);
                return Ok(());
            }
            match entry.compression() {
                CompressionMethod::Stored | CompressionMethod::Deflated => {}
                other => {
                    self.reject(
                        &name,
                        EntryProblem::UnsupportedCompression {
                            method: format!("{other:?}"),
                        },
                    );
                    return Ok(());
                }
            }
            // Declared totals can only make us refuse earlier.
            let declared_total = self.report.decompressed_bytes.saturating_add(entry.size());
            if declared_total > self.limits.max_total_bytes {
                return Err(ArchiveError::TooLarge {
                    max_total_bytes: self.limits.max_total_bytes,
                });
            }
            let kind = if name.to_ascii_lowercase().ends_with(".txt") {
                EntryKind::Caption
            } else {
                EntryKind::Image
            };
            (name, kind)
        };

        let data = match self.read_entry(archive, index, &name)? {
            Ok(data) => data,
            Err(problem) => {
                self.reject(&name, problem);
                return Ok(());
            }
        };
        if has_archive_magic(&data) {
            self.reject(&name, EntryProblem::NestedArchive);
            return Ok(());
        }
        match kind {
            EntryKind::Caption => self.report.captions.push(name),
            EntryKind::Image => match inspect_photo_bytes(&data, self.rules) {
                Ok(inspection) => self
                    .report
                    .accepted
                    .push(AcceptedImage { name, inspection }),
                Err(rejection) => self.reject(&name, EntryProblem::Photo(rejection)),
            },
        }
        Ok(())
    }

    /// Decompress one entry into memory, enforcing every limit while the
    /// bytes are produced. The outer `Result` aborts the whole inspection;
    /// the inner one refuses only this entry.
    fn read_entry<R: Read + Seek>(
        &mut self,
        archive: &mut ZipArchive<R>,
        index: usize,
        name: &str,
    ) -> Result<Result<Vec<u8>, EntryProblem>, ArchiveError> {
        let consumed_before = self.consumed.get();
        let mut entry = match archive.by_index(index) {
            Ok(entry) => entry,
            Err(ZipError::Io(e)) => return Err(ArchiveError::Io(e)),
            Err(e) => {
                return Ok(Err(EntryProblem::CorruptEntry {
                    detail: e.to_string(),
                }))
            }
        };
        let declared = entry.size();
        // One byte over the photo limit is enough to refuse the entry.
        let keep_at_most = self.rules.max_bytes + 1;
        let mut data = Vec::with_capacity(declared.min(keep_at_most) as usize);
        let mut produced = 0u64;
        loop {
            let n = match entry.read(&mut self.chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Ok(Err(EntryProblem::CorruptEntry {
                        detail: e.to_string(),
                    }))
                }
            };
            produced += n as u64;
            self.report.decompressed_bytes += n as u64;

            let consumed = self.consumed.get().saturating_sub(consumed_before).max(1);
            if produced > RATIO_CHECK_AFTER_BYTES
                && produced / consumed >= self.limits.max_compression_ratio
            {
                return Err(ArchiveError::CompressionRatio {
                    entry: name.to_owned(),
                    max_ratio: self.limits.max_compression_ratio,
                    decompressed: produced,
                });
            }
            if self.report.decompressed_bytes > self.limits.max_total_bytes {
                return Err(ArchiveError::TooLarge {
                    max_total_bytes: self.limits.max_total_bytes,
                });
            }
            self.check_time()?;
            if produced > declared {
                return Ok(Err(EntryProblem::SizeMismatch { declared }));
            }
            if produced > self.rules.max_bytes {
                return Ok(Err(EntryProblem::Photo(PhotoRejection::FileTooLarge {
                    bytes: produced,
                    max_bytes: self.rules.max_bytes,
                })));
            }
            data.extend_from_slice(&self.chunk[..n]);
        }
        if produced != declared {
            return Ok(Err(EntryProblem::CorruptEntry {
                detail: format!("declared {declared} bytes but holds {produced}"),
            }));
        }
        Ok(Ok(data))
    }
}

fn zip_error(e: ZipError) -> ArchiveError {
    match e {
        ZipError::Io(e) => ArchiveError::Io(e),
        other => ArchiveError::NotAZip {
            detail: other.to_string(),
        },
    }
}

/// Refuse names an extractor could resolve outside its target directory.
fn check_entry_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.contains('\\') {
        return Err("backslash in name");
    }
    if name.starts_with('/') {
        return Err("absolute path");
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err("drive letter");
    }
    if name.chars().any(char::is_control) {
        return Err("control character in name");
    }
    if name.split('/').any(|part| part == "..") {
        return Err("parent directory component");
    }
    Ok(())
}

fn is_macos_metadata(name: &str) -> bool {
    name.starts_with("__MACOSX/") || name == ".DS_Store" || name.ends_with("/.DS_Store")
}

fn has_archive_extension(name: &str) -> bool {
    const EXTENSIONS: [&str; 11] = [
        ".zip", ".tar", ".gz", ".tgz", ".7z", ".rar", ".bz2", ".xz", ".zst", ".tbz2", ".txz",
    ];
    let lower = name.to_ascii_lowercase();
    EXTENSIONS.iter().any(|ext| lower.ends_with(ext))
}

fn has_archive_magic(data: &[u8]) -> bool {
    const MAGICS: [&[u8]; 9] = [
        b"PK\x03\x04",
        b"PK\x05\x06",
        b"PK\x07\x08",
        b"\x1F\x8B",
        b"7z\xBC\xAF\x27\x1C",
        b"Rar!\x1A\x07",
        b"BZh",
        b"\xFD7zXZ\x00",
        b"\x28\xB5\x2F\xFD",
    ];
    MAGICS.iter().any(|m| data.starts_with(m)) || data.get(257..262) == Some(b"ustar")
}

/// Entry count from the end-of-central-directory record (ZIP64 aware),
/// read before the central directory itself is parsed.
fn declared_entry_count(file: &mut File) -> Result<u64, ArchiveError> {
    const EOCD_MIN: u64 = 22;
    let not_zip = |detail: &str| ArchiveError::NotAZip {
        detail: detail.to_owned(),
    };
    let len = file.seek(SeekFrom::End(0))?;
    if len < EOCD_MIN {
        return Err(not_zip("too short for a ZIP archive"));
    }
    // The record is 22 bytes plus a comment of at most 65535 bytes.
    let tail_len = len.min(EOCD_MIN + 65_535);
    let tail_start = len - tail_len;
    file.seek(SeekFrom::Start(tail_start))?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail)?;
    let eocd = (0..=tail.len() - EOCD_MIN as usize)
        .rev()
        .find(|&i| tail[i..i + 4] == *b"PK\x05\x06")
        .ok_or_else(|| not_zip("no end-of-central-directory record"))?;
    let count = u64::from(u16::from_le_bytes([tail[eocd + 10], tail[eocd + 11]]));
    if count != 0xFFFF {
        return Ok(count);
    }
    // ZIP64: the locator sits right before the classic record.
    let locator_at = (tail_start + eocd as u64)
        .checked_sub(20)
        .ok_or_else(|| not_zip("missing ZIP64 locator"))?;
    let mut locator = [0u8; 20];
    file.seek(SeekFrom::Start(locator_at))?;
    file.read_exact(&mut locator)?;
    if locator[0..4] != *b"PK\x06\x07" {
        return Ok(count);
    }
    let record_at = u64::from_le_bytes(locator[8..16].try_into().unwrap_or([0; 8]));
    let mut record = [0u8; 40];
    file.seek(SeekFrom::Start(record_at))?;
    file.read_exact(&mut record)
        .map_err(|_| not_zip("truncated ZIP64 record"))?;
    if record[0..4] != *b"PK\x06\x06" {
        return Err(not_zip("invalid ZIP64 record"));
    }
    Ok(u64::from_le_bytes(
        record[32..40].try_into().unwrap_or([0; 8]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_that_escape_are_refused() {
        for name in [
            "../x.jpg",
            "/etc/x.jpg",
            "C:\\x.jpg",
            "c:x.jpg",
            "a\\..\\x.jpg",
            "a/../../x.jpg",
            "",
        ] {
            assert!(check_entry_name(name).is_err(), "{name}");
        }
        for name in ["x.jpg", "photos/x.jpg", "a..b.jpg", "..x.jpg"] {
            assert!(check_entry_name(name).is_ok(), "{name}");
        }
    }
}
