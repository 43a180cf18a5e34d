//! Deflate blocks with ISA-L's igzip (cargo feature `isal`), through the C shim beside this
//! file.
//!
//! igzip trades some ratio for speed: at its level 1 it compresses 1.8× as fast as zlib-rs
//! at level 1 on layer data with 13% smaller blobs, which are still ~9% larger than zlib's
//! level 6 ones (see docs/performance.md). It writes different bytes than zlib, so it is
//! its own encoder, with its own cache entries.

use std::ffi::c_int;
use std::io;
use std::ptr::NonNull;

use super::DeflateBlocks;

/// `struct oe_isal` from the shim: an igzip stream and its level buffer.
#[repr(C)]
struct RawCompressor {
    _private: [u8; 0],
}

const OUT_TOO_SMALL: i64 = -1;

extern "C" {
    fn oe_isal_new(level: u32) -> *mut RawCompressor;
    fn oe_isal_free(compressor: *mut RawCompressor);
    fn oe_isal_deflate_block(
        compressor: *mut RawCompressor,
        dict: *const u8,
        dict_len: u32,
        input: *const u8,
        input_len: u32,
        last: c_int,
        out: *mut u8,
        out_cap: u32,
    ) -> i64;
}

/// Compresses single blocks as raw deflate with igzip. The shim starts a fresh stream for
/// every block (cheap for igzip: no large state to clear), so a block's bytes never depend
/// on the block before.
pub(super) struct IsalBlocks {
    raw: NonNull<RawCompressor>,
}

// SAFETY: the shim's compressor is plain heap memory with no thread affinity; `&mut self` on
// every use keeps it to one thread at a time.
unsafe impl Send for IsalBlocks {}

impl IsalBlocks {
    pub(super) fn new(level: u32) -> io::Result<Self> {
        if level > 3 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ISA-L gzip level {level} is not in 0..=3"),
            ));
        }
        // SAFETY: any level is accepted (a bad one gives null); the result is freed in Drop.
        let raw = unsafe { oe_isal_new(level) };
        NonNull::new(raw)
            .map(|raw| IsalBlocks { raw })
            .ok_or_else(|| io::Error::other("could not allocate an ISA-L deflate stream"))
    }
}

impl DeflateBlocks for IsalBlocks {
    /// igzip gets exactly `room` bytes (never `out`'s recycled capacity), so whether it ever
    /// has to stop for space cannot depend on scheduling.
    fn try_compress(
        &mut self,
        data: &[u8],
        dict: &[u8],
        last: bool,
        room: usize,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "block too large for igzip");
        let data_len = u32::try_from(data.len()).map_err(|_| too_big())?;
        let dict_len = u32::try_from(dict.len()).map_err(|_| too_big())?;
        let room_u32 = u32::try_from(room).map_err(|_| too_big())?;
        out.clear();
        out.reserve(room);
        // SAFETY: the pointers and lengths describe live slices; `out` has at least `room`
        // bytes of capacity, of which the shim writes at most `room` and reports how many.
        let written = unsafe {
            oe_isal_deflate_block(
                self.raw.as_ptr(),
                dict.as_ptr(),
                dict_len,
                data.as_ptr(),
                data_len,
                c_int::from(last),
                out.as_mut_ptr(),
                room_u32,
            )
        };
        match written {
            OUT_TOO_SMALL => Ok(false),
            n if n >= 0 && n as usize <= room => {
                // SAFETY: the shim initialised exactly `n` bytes, within the capacity.
                unsafe { out.set_len(n as usize) };
                Ok(true)
            }
            _ => Err(io::Error::other("ISA-L deflate failed")),
        }
    }
}

impl Drop for IsalBlocks {
    fn drop(&mut self) {
        // SAFETY: `raw` came from `oe_isal_new` and is freed exactly once.
        unsafe { oe_isal_free(self.raw.as_ptr()) }
    }
}
