//! Parallel gzip in the style of pigz.
//!
//! The input is cut into fixed [`BLOCK_SIZE`] blocks. Each block is compressed on its own as raw
//! deflate, primed with the last 32 KiB of the block before it as a preset dictionary, so matches
//! reach across block boundaries just as in a serial stream and the ratio barely suffers. Every
//! block but the last ends with a sync flush (an empty stored block that byte-aligns the
//! output), so the blocks simply concatenate into one valid deflate stream; the last block
//! ends the stream. One gzip header goes before and one trailer after, whose CRC-32 the writing
//! thread computes over the blocks as they come back, in order (the SIMD CRC runs at many GB/s,
//! far cheaper than combining per-block CRCs, which cost ~100 µs per block).
//!
//! The deflate itself is an [`Encoder`]'s: sirocco (`sirocco`, the default) or zlib-rs
//! (`zlib`) in every build, or ISA-L's igzip in builds with the `isal` feature (`isal`). The
//! framing here is the same for all three; sirocco alone compresses each block without the
//! dictionary (see `sirocco` for why), which the framing allows: a block may ignore it.
//!
//! Worker threads compress blocks; the caller's thread buffers input, hands blocks out and
//! writes results in order. At most `2 × jobs` blocks are in flight, so memory stays bounded
//! however fast the input arrives.
//!
//! Determinism: block boundaries depend on the input offset alone, and each block's bytes on
//! (level, dictionary, data, last or not) alone, so the output is the same for any number of
//! jobs and any way of cutting the input into writes. A stream whose length is a multiple of
//! the block size ends with an empty final block (2 bytes): the writer never has to hold a full
//! block back just in case it might be the last.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::mem;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crc_fast::CrcAlgorithm::Crc32IsoHdlc;

use super::{blob_of, CompressedBlob, HashingWriter};

#[cfg(feature = "isal")]
mod isal;
mod sirocco;
mod zlib;

/// Uncompressed bytes per block. 128 KiB, as pigz: in the benchmark 1 MiB blocks were no faster
/// and even compressed slightly worse (fewer chances to adapt the Huffman tables), while small
/// blocks spread small layers over more cores. The output is 0.03% *smaller* than a serial
/// stream's. Changing this changes the bytes of every gzip blob.
pub(super) const BLOCK_SIZE: usize = 128 * 1024;

/// Deflate's window: the most a match can reach back, so the most of a dictionary that helps.
const DICT_SIZE: usize = 32 * 1024;

/// Blocks in flight per job: one being compressed, one waiting, so no worker idles while the
/// writer catches up.
const IN_FLIGHT_PER_JOB: usize = 2;

/// One block to compress.
struct Job {
    data: Vec<u8>,
    /// The previous block's last `DICT_SIZE` bytes (empty for the first block).
    dict: Vec<u8>,
    last: bool,
    /// A recycled buffer for the compressed bytes.
    out: Vec<u8>,
    reply: SyncSender<io::Result<Done>>,
}

/// A compressed block, with its buffers handed back for reuse.
struct Done {
    compressed: Vec<u8>,
    data: Vec<u8>,
}

/// Which deflate implementation compresses the blocks.
///
/// The encoder is part of a blob's identity, like the level: each writes different (equally
/// valid) streams for the same input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoder {
    /// sirocco, levels 1..=9: pure Rust, available in every build, and the fastest there.
    /// It leaves the dictionary unused (see `sirocco`).
    Sirocco(u32),
    /// zlib-rs, levels 1..=9: available in every build.
    Zlib(u32),
    /// ISA-L's igzip, levels 0..=3: much faster, only in builds with the `isal` feature.
    Isal(u32),
}

impl Encoder {
    /// A compressor for one worker thread.
    fn block_compressor(self) -> io::Result<Box<dyn DeflateBlocks>> {
        match self {
            Encoder::Sirocco(level) => Ok(Box::new(sirocco::SiroccoBlocks::new(level)?)),
            Encoder::Zlib(level) => Ok(Box::new(zlib::ZlibBlocks::new(level)?)),
            #[cfg(feature = "isal")]
            Encoder::Isal(level) => Ok(Box::new(isal::IsalBlocks::new(level)?)),
            #[cfg(not(feature = "isal"))]
            Encoder::Isal(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this oci-export was built without the ISA-L encoder (cargo feature `isal`)",
            )),
        }
    }

    /// The gzip header's XFL byte: 2 = best compression, 4 = fastest (RFC 1952), set as gzip,
    /// pigz and Go set it for zlib's levels (sirocco has zlib's levels); ISA-L is always the
    /// fast kind.
    fn extra_flags(self) -> u8 {
        match self {
            Encoder::Zlib(9) | Encoder::Sirocco(9) => 2,
            Encoder::Zlib(1) | Encoder::Sirocco(1) | Encoder::Isal(_) => 4,
            Encoder::Zlib(_) | Encoder::Sirocco(_) => 0,
        }
    }
}

/// Compresses single blocks as raw deflate, each primed with the previous block's tail (or not:
/// an encoder may leave the dictionary unused).
///
/// The contract that keeps gzip output deterministic: the bytes written for a block depend on
/// `(data, dict, last)` and the encoder's level alone — not on what the compressor did before
/// (workers take blocks in whatever order the scheduler gives them), and not on the capacity
/// `out` arrives with (buffers are recycled).
trait DeflateBlocks: Send {
    /// One attempt at compressing `data` into `out` (replacing its contents) with `room` bytes
    /// of output space: primed with `dict`, ended with a sync flush (an empty stored block, so
    /// the next block starts byte-aligned), or ending the deflate stream when `last`. Returns
    /// whether the whole block fit; if not, `out` holds nothing worth keeping.
    fn try_compress(
        &mut self,
        data: &[u8],
        dict: &[u8],
        last: bool,
        room: usize,
        out: &mut Vec<u8>,
    ) -> io::Result<bool>;

    /// Compresses one block in a single deflate call with room for the whole result.
    ///
    /// Resuming a deflate after running out of output space can change its bytes (zlib adds
    /// an empty stored block to a resumed flush), and whether that happens would depend on
    /// the capacity of the recycled output buffer. So a block that does not fit is compressed
    /// again from scratch with twice the room; the first room is a function of the block's
    /// length alone (deflate's worst case is about 5 bytes per 16 KiB stored, plus the block
    /// header and the flush marker), and almost every block fits it.
    fn compress(
        &mut self,
        data: &[u8],
        dict: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let mut room = data.len() + data.len() / 8 + 1024;
        while !self.try_compress(data, dict, last, room, out)? {
            room *= 2;
        }
        Ok(())
    }
}

pub(super) struct GzipWriter<'a> {
    out: HashingWriter<'a>,
    /// The block being filled.
    block: Vec<u8>,
    /// The last `DICT_SIZE` bytes of the previous block.
    dict: Vec<u8>,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Replies for the blocks in flight, oldest first.
    pending: VecDeque<Receiver<io::Result<Done>>>,
    max_in_flight: usize,
    spare_data: Vec<Vec<u8>>,
    spare_out: Vec<Vec<u8>>,
    /// CRC-32 of the input so far, for the trailer (boxed: the digest state is large).
    crc: Box<crc_fast::Digest>,
    total_in: u64,
    /// Set once an error was returned: the stream is then unusable.
    failed: bool,
}

impl<'a> GzipWriter<'a> {
    pub(super) fn new(
        mut out: HashingWriter<'a>,
        encoder: Encoder,
        jobs: usize,
    ) -> io::Result<Self> {
        let jobs = jobs.max(1);
        // Every worker's compressor first, so a bad level or a missing encoder fails here.
        let compressors = (0..jobs)
            .map(|_| encoder.block_compressor())
            .collect::<io::Result<Vec<_>>>()?;
        out.write_all(&header(encoder.extra_flags()))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut workers = Vec::with_capacity(jobs);
        for (i, blocks) in compressors.into_iter().enumerate() {
            let rx = Arc::clone(&rx);
            let handle = std::thread::Builder::new()
                .name(format!("gzip-{i}"))
                .spawn(move || worker(&rx, blocks))?;
            workers.push(handle);
        }
        Ok(GzipWriter {
            out,
            block: Vec::with_capacity(BLOCK_SIZE),
            dict: Vec::new(),
            jobs: Some(tx),
            workers,
            pending: VecDeque::new(),
            max_in_flight: jobs * IN_FLIGHT_PER_JOB,
            spare_data: Vec::new(),
            spare_out: Vec::new(),
            crc: Box::new(crc_fast::Digest::new(Crc32IsoHdlc)),
            total_in: 0,
            failed: false,
        })
    }

    pub(super) fn finish(mut self) -> io::Result<CompressedBlob> {
        self.check()?;
        self.dispatch(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        // ISIZE is the input length modulo 2^32, by definition (RFC 1952).
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&(self.crc.finalize() as u32).to_le_bytes());
        trailer[4..].copy_from_slice(&(self.total_in as u32).to_le_bytes());
        self.out.write_all(&trailer)?;
        self.stop_workers();
        Ok(blob_of(&self.out))
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("gzip stream failed earlier"));
        }
        Ok(())
    }

    /// Sends the current block to the workers, after making room among the blocks in flight.
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        while self.pending.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let next = self
            .spare_data
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BLOCK_SIZE));
        let data = mem::replace(&mut self.block, next);
        let tail = &data[data.len().saturating_sub(DICT_SIZE)..];
        let dict = mem::replace(&mut self.dict, tail.to_vec());
        let (reply, receiver) = mpsc::sync_channel(1);
        let job = Job {
            data,
            dict,
            last,
            out: self.spare_out.pop().unwrap_or_default(),
            reply,
        };
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip workers already stopped"))?
            .send(job)
            .map_err(|_| io::Error::other("gzip worker threads stopped"))?;
        self.pending.push_back(receiver);
        // Pass on whatever is already done, so the output keeps flowing.
        while let Some(front) = self.pending.front() {
            match front.try_recv() {
                Ok(done) => {
                    self.pending.pop_front();
                    self.write_done(done)?;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(worker_died()),
            }
        }
        Ok(())
    }

    /// Waits for the oldest block in flight and writes it.
    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(receiver) = self.pending.pop_front() else {
            return Ok(());
        };
        let done = receiver.recv().map_err(|_| worker_died())?;
        self.write_done(done)
    }

    fn write_done(&mut self, done: io::Result<Done>) -> io::Result<()> {
        let done = done?;
        self.out.write_all(&done.compressed)?;
        self.crc.update(&done.data);
        self.total_in += done.data.len() as u64;
        let mut data = done.data;
        data.clear();
        self.spare_data.push(data);
        self.spare_out.push(done.compressed);
        Ok(())
    }

    fn stop_workers(&mut self) {
        // Closing the job channel ends each worker's loop once it is idle.
        self.jobs = None;
        self.pending.clear();
        for handle in self.workers.drain(..) {
            // A worker that panicked has already failed its block's reply; nothing to add.
            let _ = handle.join();
        }
    }
}

impl Write for GzipWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        let n = (BLOCK_SIZE - self.block.len()).min(buf.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK_SIZE {
            if let Err(e) = self.dispatch(false) {
                self.failed = true;
                return Err(e);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for GzipWriter<'_> {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

fn worker_died() -> io::Error {
    io::Error::other("a gzip worker thread died")
}

/// A worker: takes blocks from the shared queue until it closes.
fn worker(jobs: &Mutex<Receiver<Job>>, mut blocks: Box<dyn DeflateBlocks>) {
    loop {
        let job = {
            let Ok(queue) = jobs.lock() else { return };
            match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let mut out = job.out;
        let result = blocks
            .compress(&job.data, &job.dict, job.last, &mut out)
            .map(|()| Done {
                compressed: out,
                data: job.data,
            });
        // The writer may have been dropped meanwhile; then nobody wants this block.
        let _ = job.reply.send(result);
    }
}

/// The fixed 10-byte gzip header: no name, no comment, mtime 0, OS "unknown" (255), as Go's
/// `compress/gzip` writes it, so the bytes do not depend on the machine or the time. `xfl` is
/// the encoder's "extra flags" byte.
fn header(xfl: u8) -> [u8; 10] {
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every encoder this build has, at the levels worth checking.
    fn encoders() -> Vec<Encoder> {
        let mut all = vec![
            Encoder::Sirocco(1),
            Encoder::Sirocco(6),
            Encoder::Sirocco(9),
            Encoder::Zlib(1),
            Encoder::Zlib(6),
            Encoder::Zlib(9),
        ];
        if cfg!(feature = "isal") {
            all.extend([0, 1, 2, 3].map(Encoder::Isal));
        }
        all
    }

    fn compressor(encoder: Encoder) -> Box<dyn DeflateBlocks> {
        encoder.block_compressor().unwrap()
    }

    /// Machine code: the kind of data that exposed state leaking between reused deflate states.
    fn executable_bytes(limit: usize) -> Vec<u8> {
        let mut data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        data.truncate(limit);
        data
    }

    /// The dictionary block `i` of `blocks` gets: the last `DICT_SIZE` bytes of the one before.
    fn dict_of<'a>(blocks: &[&'a [u8]], i: usize) -> &'a [u8] {
        match i.checked_sub(1) {
            None => &[],
            Some(prev) => &blocks[prev][blocks[prev].len().saturating_sub(DICT_SIZE)..],
        }
    }

    #[test]
    fn streamed_crc_matches_one_pass() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = crc_fast::checksum(Crc32IsoHdlc, &data);
        let mut streamed = crc_fast::Digest::new(Crc32IsoHdlc);
        for piece in data.chunks(4096) {
            streamed.update(piece);
        }
        assert_eq!(streamed.finalize(), whole);
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc_fast::checksum(Crc32IsoHdlc, b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn header_is_fixed() {
        assert_eq!(
            header(Encoder::Zlib(6).extra_flags()),
            [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]
        );
        assert_eq!(Encoder::Zlib(1).extra_flags(), 4);
        assert_eq!(Encoder::Zlib(9).extra_flags(), 2);
        assert_eq!(Encoder::Isal(3).extra_flags(), 4);
        assert_eq!(Encoder::Sirocco(1).extra_flags(), 4);
        assert_eq!(Encoder::Sirocco(6).extra_flags(), 0);
        assert_eq!(Encoder::Sirocco(9).extra_flags(), 2);
    }

    #[test]
    fn bad_levels_are_refused() {
        for encoder in [
            Encoder::Zlib(0),
            Encoder::Zlib(10),
            Encoder::Isal(4),
            Encoder::Sirocco(0),
            Encoder::Sirocco(10),
            Encoder::Sirocco(256 + 1),
        ] {
            assert!(encoder.block_compressor().is_err(), "{encoder:?}");
        }
    }

    #[cfg(not(feature = "isal"))]
    #[test]
    fn a_build_without_isal_says_so() {
        let err = Encoder::Isal(1).block_compressor().err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        assert!(err.to_string().contains("`isal`"), "{err}");
    }

    #[test]
    fn blocks_with_dictionaries_form_one_raw_deflate_stream() {
        // Repetitive data whose matches cross block boundaries, so the dictionary matters.
        let data: Vec<u8> = (0..3 * 50_000u32)
            .flat_map(|i| format!("line {} of a file\n", i % 977).into_bytes())
            .collect();
        let blocks: Vec<&[u8]> = data.chunks(BLOCK_SIZE).collect();
        for encoder in encoders() {
            let mut compressor = compressor(encoder);
            let mut stream = Vec::new();
            let mut out = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                compressor
                    .compress(block, dict_of(&blocks, i), i + 1 == blocks.len(), &mut out)
                    .unwrap();
                stream.extend_from_slice(&out);
            }
            let mut back = Vec::new();
            io::copy(
                &mut flate2::read::DeflateDecoder::new(&stream[..]),
                &mut back,
            )
            .unwrap();
            assert!(back == data, "{encoder:?}");
            // Matches are found (across the blocks, for the encoders that use the dictionary):
            // the stream is far smaller than the input.
            assert!(
                stream.len() * 10 < data.len(),
                "{encoder:?}: {}",
                stream.len()
            );
        }
    }

    #[test]
    fn the_dictionary_shrinks_zlib_blocks_and_sirocco_ignores_it() {
        // The second block repeats the first one's last 16 KiB over and over: a dictionary
        // finds all of it, a block on its own only its repeats of its own first 16 KiB.
        let first: Vec<u8> = (0..BLOCK_SIZE as u64 / 32)
            .flat_map(|i| format!("{:>31}\n", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).into_bytes())
            .collect();
        let tail = &first[BLOCK_SIZE - 16 * 1024..];
        let second: Vec<u8> = tail.repeat(BLOCK_SIZE / tail.len());
        let second = &second[..];
        let dict = &first[BLOCK_SIZE - DICT_SIZE..];
        let compressed = |encoder: Encoder, dict: &[u8]| {
            let mut out = Vec::new();
            compressor(encoder)
                .compress(second, dict, true, &mut out)
                .unwrap();
            out
        };
        for level in [1, 6] {
            let zlib = Encoder::Zlib(level);
            assert!(
                compressed(zlib, dict).len() < compressed(zlib, &[]).len() * 9 / 10,
                "{zlib:?} uses the dictionary"
            );
            let sirocco = Encoder::Sirocco(level);
            assert!(
                compressed(sirocco, dict) == compressed(sirocco, &[]),
                "{sirocco:?} ignores the dictionary"
            );
        }
    }

    #[test]
    fn incompressible_blocks_grow_the_output_buffer() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..BLOCK_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for encoder in encoders() {
            let mut compressor = compressor(encoder);
            for last in [false, true] {
                let mut out = Vec::new();
                compressor.compress(&data, &[], last, &mut out).unwrap();
                assert!(out.len() > data.len(), "{encoder:?}");
                if !last {
                    assert_eq!(
                        &out[out.len() - 4..],
                        &[0, 0, 0xff, 0xff],
                        "{encoder:?}: sync flush marker"
                    );
                }
            }
        }
    }

    #[test]
    fn a_block_compresses_the_same_whatever_came_before() {
        let data = executable_bytes(48 * BLOCK_SIZE);
        let blocks: Vec<&[u8]> = data.chunks(BLOCK_SIZE).collect();
        for encoder in encoders() {
            let mut forward = compressor(encoder);
            let mut backward = compressor(encoder);
            let mut out = Vec::new();
            let mut from_forward = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                forward
                    .compress(block, dict_of(&blocks, i), false, &mut out)
                    .unwrap();
                from_forward.push(out.clone());
            }
            for (i, block) in blocks.iter().enumerate().rev() {
                backward
                    .compress(block, dict_of(&blocks, i), false, &mut out)
                    .unwrap();
                assert!(out == from_forward[i], "{encoder:?}, block {i}");
            }
        }
    }

    #[test]
    fn output_buffer_capacity_does_not_change_a_block() {
        let data = executable_bytes(24 * BLOCK_SIZE);
        let blocks: Vec<&[u8]> = data.chunks(BLOCK_SIZE).collect();
        for encoder in encoders() {
            let mut compressor = compressor(encoder);
            for (i, block) in blocks.iter().enumerate().skip(1) {
                let dict = dict_of(&blocks, i);
                let mut reference = Vec::new();
                compressor
                    .compress(block, dict, false, &mut reference)
                    .unwrap();
                // Recycled buffers come with any capacity, including one the result exactly
                // fills.
                for capacity in [0, reference.len() - 1, reference.len(), reference.len() + 1] {
                    let mut out = Vec::with_capacity(capacity);
                    compressor.compress(block, dict, false, &mut out).unwrap();
                    assert!(
                        out == reference,
                        "{encoder:?}, block {i}, capacity {capacity}"
                    );
                }
            }
        }
    }
}
