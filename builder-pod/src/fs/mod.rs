//! Filesystems as builds see them: paths confined to a root, snapshots of a root, path
//! patterns, users and groups, and file trees in memory.

pub mod filetree;
pub mod pattern;
pub mod rootfs;
pub mod snapshot;
pub mod tree;
pub mod users;

use std::io::{self, Read};

/// Reads text, but no more than `limit + 1` bytes: enough for the caller to see that an
/// input is past its limit without holding a file of any size in memory. Text past the
/// limit is returned lossily (it may end inside a character); it is only ever refused.
pub fn read_text_bounded(reader: impl Read, limit: usize) -> io::Result<String> {
    let mut bytes = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
