//! A minimal ZIP writer for stored (uncompressed) entries that needs only
//! `Write`, so the training archive can be streamed into an upload body or
//! a pipe.
//!
//! Why not the `zip` crate's writer: the workspace's `zip` version requires
//! `Write + Seek` for output. Photos are already compressed, so storing them
//! loses nothing. Each entry is written whole with its CRC and sizes in the
//! local header (no data descriptors), which every ZIP reader handles,
//! including streaming readers. ZIP64 is not needed: entries and archives are
//! bounded by the photo rules far below 4 GiB, and exceeding the classic
//! limits is reported as an error instead of producing a broken file.

use std::io::{self, Write};

/// 1980-01-01 00:00:00 in MS-DOS format, the earliest representable time.
/// A fixed timestamp makes the same photos produce the same archive bytes.
const DOS_DATE: u16 = (1 << 5) | 1;
const DOS_TIME: u16 = 0;
/// "Version needed to extract": 2.0, the baseline every reader supports.
const VERSION_NEEDED: u16 = 20;
/// "Version made by": Unix (3) so the external attributes carry a mode.
const VERSION_MADE_BY: u16 = (3 << 8) | 20;
/// Regular file, rw-r--r--.
const EXTERNAL_ATTRIBUTES: u32 = 0o100644 << 16;
/// General purpose flag bit 11: the name is UTF-8.
const FLAG_UTF8: u16 = 1 << 11;

struct CentralEntry {
    name: String,
    crc32: u32,
    size: u32,
    local_header_offset: u32,
}

pub(crate) struct StoredZipWriter<W: Write> {
    out: W,
    offset: u64,
    entries: Vec<CentralEntry>,
}

fn too_large(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what} exceeds the ZIP (non-ZIP64) limits"),
    )
}

impl<W: Write> StoredZipWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        StoredZipWriter {
            out,
            offset: 0,
            entries: Vec::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Append one complete entry.
    pub(crate) fn add(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| too_large("an entry"))?;
        let local_header_offset =
            u32::try_from(self.offset).map_err(|_| too_large("the archive"))?;
        if self.entries.len() >= usize::from(u16::MAX) {
            return Err(too_large("the entry count"));
        }
        let name_len = u16::try_from(name.len()).map_err(|_| too_large("an entry name"))?;
        let crc32 = crc32fast::hash(data);

        let mut header = Vec::with_capacity(30 + name.len());
        header.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        header.extend_from_slice(&VERSION_NEEDED.to_le_bytes());
        header.extend_from_slice(&FLAG_UTF8.to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes()); // method: stored
        header.extend_from_slice(&DOS_TIME.to_le_bytes());
        header.extend_from_slice(&DOS_DATE.to_le_bytes());
        header.extend_from_slice(&crc32.to_le_bytes());
        header.extend_from_slice(&size.to_le_bytes()); // compressed
        header.extend_from_slice(&size.to_le_bytes()); // uncompressed
        header.extend_from_slice(&name_len.to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes()); // extra field length
        header.extend_from_slice(name.as_bytes());
        self.put(&header)?;
        self.put(data)?;
        self.entries.push(CentralEntry {
            name: name.to_owned(),
            crc32,
            size,
            local_header_offset,
        });
        Ok(())
    }

    /// Write the central directory and end record; returns the writer and
    /// the total number of bytes written.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64)> {
        let directory_offset = u32::try_from(self.offset).map_err(|_| too_large("the archive"))?;
        let mut directory = Vec::new();
        for e in &self.entries {
            directory.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            directory.extend_from_slice(&VERSION_MADE_BY.to_le_bytes());
            directory.extend_from_slice(&VERSION_NEEDED.to_le_bytes());
            directory.extend_from_slice(&FLAG_UTF8.to_le_bytes());
            directory.extend_from_slice(&0u16.to_le_bytes()); // stored
            directory.extend_from_slice(&DOS_TIME.to_le_bytes());
            directory.extend_from_slice(&DOS_DATE.to_le_bytes());
            directory.extend_from_slice(&e.crc32.to_le_bytes());
            directory.extend_from_slice(&e.size.to_le_bytes());
            directory.extend_from_slice(&e.size.to_le_bytes());
            directory.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            directory.extend_from_slice(&0u16.to_le_bytes()); // extra length
            directory.extend_from_slice(&0u16.to_le_bytes()); // comment length
            directory.extend_from_slice(&0u16.to_le_bytes()); // disk number
            directory.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            directory.extend_from_slice(&EXTERNAL_ATTRIBUTES.to_le_bytes());
            directory.extend_from_slice(&e.local_header_offset.to_le_bytes());
            directory.extend_from_slice(e.name.as_bytes());
        }
        let directory_size =
            u32::try_from(directory.len()).map_err(|_| too_large("the central directory"))?;
        let count = self.entries.len() as u16;
        directory.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        directory.extend_from_slice(&0u16.to_le_bytes()); // this disk
        directory.extend_from_slice(&0u16.to_le_bytes()); // directory disk
        directory.extend_from_slice(&count.to_le_bytes());
        directory.extend_from_slice(&count.to_le_bytes());
        directory.extend_from_slice(&directory_size.to_le_bytes());
        directory.extend_from_slice(&directory_offset.to_le_bytes());
        directory.extend_from_slice(&0u16.to_le_bytes()); // comment length
        self.put(&directory)?;
        self.out.flush()?;
        Ok((self.out, self.offset))
    }
}
