//! Layer reassembly: rebuild a layer's tar from its tar-split record and its files, verifying
//! every byte on the way.
//!
//! Two passes over the (small) tar-split stream:
//! 1. [`measure_layer`] sums segment lengths and file sizes. The size of the uncompressed tar is
//!    therefore known *before* any file is read, which lets an archive writer emit the tar
//!    header of a layer blob, or reserve its place in an output file, up front.
//! 2. [`rebuild_layer`] replays the stream through an I/O engine into a writer, checking each
//!    file's CRC-64 against tar-split and the whole stream's SHA-256 against the diff_id.
//!
//! Re-parsing costs a few milliseconds per layer and keeps memory flat however many files the
//! layer has. A compressed layer needs no size up front, so it gets pass 2 alone, which then
//! also checks that no path repeats.

pub mod blocks;
mod parse_ahead;
mod replay_sink;
pub mod stored;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::io::{LayerDir, ReadEngine, ReplaySink};
use crate::model::{BlobCompression, Layer, LayerContent, Lost};
use crate::tarsplit::{EntrySize, TarSplitReader};

pub use blocks::{Block, BlockSink, WriteBlocks, BLOCK_SIZE};
use parse_ahead::ParseAhead;
pub use replay_sink::VerifyingSink;

/// What measuring a layer's tar-split tells before any file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerMeasure {
    /// Size of the uncompressed layer tar in bytes.
    pub tar_size: u64,
    /// Number of member files with content to read.
    pub files: u64,
}

fn open_tar_split(tar_split: &Path, layer: &Layer) -> Result<File> {
    File::open(tar_split)
        .with_context(|| format!("{}: cannot open {}", layer.origin, tar_split.display()))
}

/// Pass 1: the layer tar's size and file count, from tar-split alone.
pub fn measure_layer(layer: &Layer) -> Result<LayerMeasure> {
    let tar_split = match &layer.content {
        LayerContent::TarSplit { tar_split, .. } => tar_split,
        LayerContent::TarFile { path } => {
            let tar_size = std::fs::metadata(path)
                .with_context(|| format!("{}: cannot stat {}", layer.origin, path.display()))?
                .len();
            return Ok(LayerMeasure { tar_size, files: 0 });
        }
        LayerContent::Blob(blob) if blob.compression == BlobCompression::None => {
            return Ok(LayerMeasure {
                tar_size: blob.size,
                files: 0,
            });
        }
        LayerContent::Blob(blob) => bail!(
            "internal error: {}: the size of a compressed blob's layer tar is only known once \
             it is decompressed",
            blob.digest
        ),
        LayerContent::Directory { .. } => bail!(missing_tar_split(layer)),
    };
    let mut measure = LayerMeasure {
        tar_size: 0,
        files: 0,
    };
    // Nothing can be written before this pass ends: inflating on a second core makes it
    // shorter (the rebuild, which has every core busy, inflates in place).
    let mut reader = TarSplitReader::gzipped_ahead(open_tar_split(tar_split, layer)?);
    while let Some(size) = reader
        .next_size()
        .with_context(|| format!("{}: tar-split is invalid", layer.origin))?
    {
        let len = match size {
            EntrySize::Segment(len) => len,
            EntrySize::File(len) => {
                measure.files += u64::from(len > 0);
                len
            }
        };
        measure.tar_size = measure
            .tar_size
            .checked_add(len)
            .with_context(|| format!("{}: tar-split is invalid: sizes overflow", layer.origin))?;
    }
    Ok(measure)
}

/// Pass 2: writes the layer tar to `out`, verified. `expected_size` comes from pass 1; a
/// different size now means the tar-split changed between the passes. Without a first pass
/// (`None`: a compressed layer, whose size nobody needs before it is made), this pass also
/// checks that no path repeats.
pub fn rebuild_layer(
    layer: &Layer,
    expected_size: Option<u64>,
    engine: &mut dyn ReadEngine,
    out: &mut dyn BlockSink,
) -> Result<()> {
    let mut sink = VerifyingSink::new(out);
    match &layer.content {
        LayerContent::TarSplit {
            tar_split,
            file_root,
        } => {
            let dir = LayerDir::open(file_root).with_context(|| layer.origin.clone())?;
            let mut reader = TarSplitReader::gzipped(open_tar_split(tar_split, layer)?);
            if expected_size.is_some() {
                // The first pass already checked for duplicate paths.
                reader = reader.without_duplicate_check();
            }
            let mut entries = ParseAhead::start(reader);
            engine
                .replay(&dir, &mut entries, &mut sink)
                .with_context(|| layer.origin.clone())?;
        }
        LayerContent::TarFile { path } => File::open(path)
            .and_then(|file| stream_into(file, &mut sink))
            .with_context(|| format!("{}: reading {}", layer.origin, path.display()))?,
        LayerContent::Blob(blob) => stored::decompress(blob, &mut sink)
            .with_context(|| format!("{}: reading {}", layer.origin, blob.path.display()))?,
        LayerContent::Directory { .. } => bail!(missing_tar_split(layer)),
    }
    let (digest, size) = sink.finish().with_context(|| layer.origin.clone())?;
    if let Some(expected_size) = expected_size.filter(|&expected| expected != size) {
        bail!(
            "{}: rebuilt {size} bytes where the first pass measured {expected_size}; the \
             tar-split changed during the export",
            layer.origin
        );
    }
    if digest != layer.diff_id {
        let what = match &layer.content {
            LayerContent::Blob(_) => "its blob does not hold the layer the image config names",
            _ => "the layer's files or tar-split do not match what the engine recorded",
        };
        bail!(
            "{}: the rebuilt layer hashes to {digest}, not to its diff_id; {what}",
            layer.origin
        );
    }
    Ok(())
}

/// The message for a layer that lost the record of its bytes, naming the way out.
pub fn missing_tar_split(layer: &Layer) -> String {
    let lost = match &layer.content {
        LayerContent::Directory {
            lost: Lost::Blob(digest),
            ..
        } => format!(
            "its blob {digest} is not in the content store (another platform's, skipped at \
             pull, or removed), and nothing else holds the layer's exact bytes"
        ),
        // Store-neutral: the origin names the store's own file (Docker's tar-split.json.gz,
        // containers-storage's <id>.tar-split.gz).
        _ => "it has no tar-split record, needed to rebuild the layer byte for byte (the \
              engine itself cannot save it byte for byte either)"
            .to_string(),
    };
    format!(
        "{}: {lost}. --regenerate-missing rebuilds it from the layer directory instead, which \
         gives it a new diff_id and the image a new ID",
        layer.origin
    )
}

/// A ready stream (a layer tar, a blob, a decompressor) passes through unchanged, in blocks;
/// the sink hashes it.
fn stream_into(mut from: impl Read, sink: &mut VerifyingSink) -> std::io::Result<()> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sink.segment(&buf[..n]).map_err(std::io::Error::other)?;
    }
}
