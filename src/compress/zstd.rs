//! zstd through libzstd's multithreaded streaming encoder.
//!
//! Choices that fix the output bytes, and why:
//! - **Always multithreaded, with at least one worker.** libzstd's multithreaded mode cuts the
//!   input into jobs by size, not by thread, so its output is the same for any worker count
//!   ≥ 1 — but it differs from the single-thread mode. Using the single-thread mode for
//!   `jobs == 1` would give a different digest on a 1-core machine.
//! - **The call that ends the frame always carries input** (the last byte written is held back
//!   for it). libzstd (1.5.7) makes a job of a full input section as soon as a job slot is free.
//!   When the input ends exactly on a section boundary, the last section is therefore either
//!   still buffered when the frame is ended — and becomes the last job — or already handed out,
//!   and the frame gets an extra empty last block: 3 bytes that depend on how fast the workers
//!   were. With input in the ending call, the last section is always made there. (This is also
//!   why the `zstd` crate's `Encoder`, which ends frames with an empty call, is not used.)
//! - **Content checksum on.** The 4-byte XXH64 trailer lets every reader check the decompressed
//!   layer; it is what the `zstd` tool and the Go encoder that containerd and BuildKit use
//!   write by default, and it costs well under 1% of the time.
//! - **No content size in the frame header.** The size is known only to some callers; putting
//!   it in when known would make the same layer's blob depend on how it was produced. (libzstd
//!   also tunes its parameters to a pledged size, changing the bytes further.)
//! - No dictionary, no long-distance matching: the level alone decides the parameters.
//!
//! Input of at most one byte reaches libzstd whole in the ending call, which it then
//! compresses on the calling thread; that too depends only on the input.

use std::io::{self, Write};

use ::zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
use ::zstd::zstd_safe::{self, CCtx, CParameter, InBuffer, OutBuffer};

use super::{blob_of, CompressedBlob, HashingWriter};

pub(super) struct ZstdWriter<'a> {
    cctx: CCtx<'static>,
    out: HashingWriter<'a>,
    /// Compressed bytes on their way to `out`.
    buffer: Vec<u8>,
    /// The last input byte seen, held back for the ending call.
    held: Option<u8>,
    /// Set once an error was returned: the frame is then unusable.
    failed: bool,
}

impl<'a> ZstdWriter<'a> {
    pub(super) fn new(out: HashingWriter<'a>, level: i32, jobs: usize) -> io::Result<Self> {
        let mut cctx =
            CCtx::try_create().ok_or_else(|| io::Error::other("cannot allocate a zstd context"))?;
        let workers = u32::try_from(jobs.max(1)).unwrap_or(u32::MAX);
        for param in [
            CParameter::CompressionLevel(level),
            CParameter::NbWorkers(workers),
            CParameter::ChecksumFlag(true),
            CParameter::ContentSizeFlag(false),
        ] {
            cctx.set_parameter(param).map_err(zstd_error)?;
        }
        Ok(ZstdWriter {
            cctx,
            out,
            buffer: Vec::with_capacity(CCtx::out_size()),
            held: None,
            failed: false,
        })
    }

    pub(super) fn finish(mut self) -> io::Result<CompressedBlob> {
        self.check()?;
        let last: Vec<u8> = self.held.take().into_iter().collect();
        self.compress(&last, ZSTD_EndDirective::ZSTD_e_end)?;
        Ok(blob_of(&self.out))
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("zstd stream failed earlier"));
        }
        Ok(())
    }

    /// Feeds all of `input` to libzstd and writes out what it produces. With `ZSTD_e_end`,
    /// keeps going until the frame is complete.
    fn compress(&mut self, input: &[u8], directive: ZSTD_EndDirective) -> io::Result<()> {
        let result = self.compress_inner(input, directive);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn compress_inner(&mut self, input: &[u8], directive: ZSTD_EndDirective) -> io::Result<()> {
        let ending = directive == ZSTD_EndDirective::ZSTD_e_end;
        let mut input = InBuffer::around(input);
        loop {
            self.buffer.clear();
            let remaining = {
                let mut output = OutBuffer::around(&mut self.buffer);
                self.cctx
                    .compress_stream2(&mut output, &mut input, directive)
                    .map_err(zstd_error)?
            };
            self.out.write_all(&self.buffer)?;
            let input_done = input.pos == input.src.len();
            // Ending: done when libzstd has nothing left to flush. Otherwise: when it has taken
            // all of the input (what it produced meanwhile is already written).
            if input_done && (!ending || remaining == 0) {
                return Ok(());
            }
        }
    }
}

impl Write for ZstdWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        let Some((&last, rest)) = buf.split_last() else {
            return Ok(0);
        };
        if let Some(held) = self.held.take() {
            self.compress(&[held], ZSTD_EndDirective::ZSTD_e_continue)?;
        }
        if !rest.is_empty() {
            self.compress(rest, ZSTD_EndDirective::ZSTD_e_continue)?;
        }
        self.held = Some(last);
        Ok(buf.len())
    }

    /// Deliberately not a zstd flush, which would end the current job early and change the
    /// output.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn zstd_error(code: zstd_safe::ErrorCode) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)))
}
