//! tar-split: the record Docker (and containers-storage) keep of every layer tar as it arrived.
//!
//! A `tar-split.json.gz` is gzip-compressed JSON lines. Each line is either a *segment* (raw
//! archive bytes: headers, padding, end-of-archive blocks, stored verbatim) or a *file* entry
//! (a member's name, size and the CRC-64/GO-ISO of its content, whose bytes live in the layer's
//! diff directory). Replaying the segments and splicing in the file bytes reproduces the original
//! tar byte for byte, so its SHA-256 equals the layer's diff_id.
//!
//! This module only *parses*; [`crate::reassembly`] replays. The parser streams: a layer with a
//! million files never needs its whole tar-split in memory.

pub mod crc64;
mod entry;
mod inflate_ahead;
mod line;
mod path_set;
mod reader;

pub use entry::{Entry, FileEntry};
pub use reader::{
    clean_path, EntrySize, TarSplitError, TarSplitReader, TarSplitReaderInput as TarSplitInput,
    MAX_FILE_SIZE,
};
