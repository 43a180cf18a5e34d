//! The two kinds of tar-split records, after validation.

/// One record of a tar-split stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Raw archive bytes to copy verbatim (headers, padding, end-of-archive).
    Segment(Vec<u8>),
    /// A member whose content is read from the layer's file tree.
    File(FileEntry),
}

/// A tar member as tar-split recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The member name as raw bytes (tar-split's `name`, or `name_raw` when not UTF-8).
    pub name: Vec<u8>,
    /// The content size in bytes; 0 for directories, links, devices and empty files.
    pub size: u64,
    /// CRC-64/GO-ISO of the content; present exactly when `size > 0`.
    pub crc64: Option<u64>,
}

impl FileEntry {
    /// The name for messages: lossy UTF-8, which is fine for humans and never used for I/O.
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}
