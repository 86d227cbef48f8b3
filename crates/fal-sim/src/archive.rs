//! Checking a training archive the way fal's trainers reject bad ones: it must be a ZIP that
//! holds images (JPEG, PNG or WebP, judged by their bytes, not only their names).

/// Why an archive was rejected: `(msg, type)` of the 422 detail entry. The exact strings fal
/// uses are [UNVERIFIED]; the types follow fal's documented error types where one fits.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rejection {
    pub msg: String,
    pub kind: &'static str,
}

pub(crate) fn count_images(bytes: &[u8]) -> Result<usize, Rejection> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| Rejection {
        msg: format!("The training data is not a valid ZIP archive: {e}"),
        kind: "invalid_archive",
    })?;
    let mut images = 0;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| Rejection {
            msg: format!("The ZIP archive could not be read: {e}"),
            kind: "invalid_archive",
        })?;
        let name = entry.name().to_owned();
        if entry.is_dir()
            || name.starts_with("__MACOSX")
            || name.rsplit('/').next().is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        let mut head = [0u8; 12];
        let mut read = 0;
        while read < head.len() {
            match std::io::Read::read(&mut entry, &mut head[read..]) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) => {
                    return Err(Rejection {
                        msg: format!("The ZIP entry {name} could not be read: {e}"),
                        kind: "invalid_archive",
                    })
                }
            }
        }
        if is_image(&head[..read]) {
            images += 1;
        }
    }
    Ok(images)
}

fn is_image(head: &[u8]) -> bool {
    head.starts_with(&[0xFF, 0xD8, 0xFF])
        || head.starts_with(b"\x89PNG\r\n\x1a\n")
        || (head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP")
}
