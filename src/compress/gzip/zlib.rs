//! Deflate blocks with zlib-rs (through flate2): the encoder every build has.

use std::io;

use flate2::{Compress, Compression, FlushCompress, Status};

use super::DeflateBlocks;

/// Compresses single blocks as raw deflate with zlib-rs.
///
/// Each block gets a **new** deflate state. Reusing one through `reset` is faster to set up,
/// but with a preset dictionary the output then depends on what the state compressed before
/// (stale window bytes leak into the dictionary's hash chains), so it would depend on which
/// worker got which block — that is, on scheduling. A new state costs about 300 KB of
/// zeroing, a few percent of a block's compression at level 1 and noise at level 6.
pub(super) struct ZlibBlocks {
    level: Compression,
}

impl ZlibBlocks {
    pub(super) fn new(level: u32) -> io::Result<Self> {
        if !(1..=9).contains(&level) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("zlib gzip level {level} is not in 1..=9"),
            ));
        }
        Ok(ZlibBlocks {
            level: Compression::new(level),
        })
    }
}

impl DeflateBlocks for ZlibBlocks {
    fn try_compress(
        &mut self,
        data: &[u8],
        dict: &[u8],
        last: bool,
        room: usize,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let flush = if last {
            FlushCompress::Finish
        } else {
            FlushCompress::Sync
        };
        let mut deflate = Compress::new(self.level, false);
        if !dict.is_empty() {
            deflate
                .set_dictionary(dict)
                .map_err(|e| io::Error::other(format!("deflate dictionary: {e}")))?;
        }
        out.clear();
        out.reserve(room);
        let status = deflate
            .compress_vec(data, out, flush)
            .map_err(|e| io::Error::other(format!("deflate: {e}")))?;
        let all_in = deflate.total_in() == data.len() as u64;
        Ok(match status {
            Status::StreamEnd => true,
            // A sync flush is complete once deflate stopped short of filling the output.
            _ => !last && all_in && out.len() < out.capacity(),
        })
    }
}
