//! Reading the files a user points the router at (rules, templates): regular files only,
//! opened without blocking and read through a bounded reader, so that a pipe or a device at
//! the path can neither block a reload and shutdown for good nor fill the memory.

use std::io::Read;
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Not a regular file (a pipe, device or socket).
    NotRegular,
    /// Larger than the limit.
    TooLarge,
    /// Any other failure (missing, permissions, not UTF-8).
    Io(String),
}

/// Reads a regular file of at most `max` bytes as UTF-8 text.
pub fn read_regular(path: &Path, max: u64) -> Result<String, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| ReadError::Io(e.to_string()))?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular);
    }
    if meta.len() > max {
        return Err(ReadError::TooLarge);
    }
    // Opened without blocking: should the path have been swapped for a FIFO since, opening
    // it returns at once (and reading finds nothing) instead of waiting for a writer.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    }
    .map_err(|e| ReadError::Io(e.to_string()))?;
    // Sized from the metadata (plus one byte to see the end), so that a configuration keeping
    // the text keeps no room that read_to_end's doubling left.
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize + 1);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Io(e.to_string()))?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge);
    }
    String::from_utf8(bytes).map_err(|e| ReadError::Io(format!("not UTF-8 text: {e}")))
}
