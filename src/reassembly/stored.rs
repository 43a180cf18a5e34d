//! Blobs a content store keeps (containerd): copied as they are, verified against their own
//! digest, or decompressed into the layer tar, verified against the diff_id by the caller.

use std::fs::File;
use std::io::Seek;

use anyhow::{bail, Context, Result};

use super::{stream_into, BlockSink, VerifyingSink};
use crate::digest::hash_reader;
use crate::model::{BlobCompression, StoredBlob};

/// Copies `blob` to `out` in blocks, exactly as stored, and checks that what was copied has the
/// blob's size and digest. Nothing is trusted about the file: the content store could have been
/// damaged, or the blob replaced, since the manifest named it.
pub fn copy_verified(blob: &StoredBlob, out: &mut dyn BlockSink) -> Result<()> {
    let mut sink = VerifyingSink::new(out);
    let file = open(blob)?;
    stream_into(file, &mut sink).with_context(|| format!("reading {}", blob.path.display()))?;
    let (digest, size) = sink.finish()?;
    if size != blob.size {
        bail!(
            "blob {} ({}) holds {size} bytes, but its manifest says {}; the content store is \
             damaged",
            blob.digest,
            blob.path.display(),
            blob.size
        );
    }
    if digest != blob.digest {
        bail!(
            "blob {} ({}) hashes to {digest}; the content store is damaged",
            blob.digest,
            blob.path.display()
        );
    }
    Ok(())
}

/// Opens `blob` and checks, by reading it whole, that it has the size and digest its manifest
/// gives; returns the file rewound to its start, the very handle that was checked (for a
/// copy out, or an upload, of exactly the bytes verified).
pub fn open_verified(blob: &StoredBlob) -> Result<File> {
    let mut file = open(blob)?;
    let (digest, size) =
        hash_reader(&mut file).with_context(|| format!("reading {}", blob.path.display()))?;
    if (digest, size) != (blob.digest, blob.size) {
        bail!(
            "blob {} ({}) holds {size} bytes hashing to {digest}, not what its manifest says \
             ({} bytes); the content store is damaged",
            blob.digest,
            blob.path.display(),
            blob.size
        );
    }
    file.rewind()
        .with_context(|| format!("reading {}", blob.path.display()))?;
    Ok(file)
}

/// Streams the uncompressed layer tar of `blob` into `sink` (which hashes it; the caller
/// compares the result with the diff_id).
pub fn decompress(blob: &StoredBlob, sink: &mut VerifyingSink) -> Result<()> {
    let file = open(blob)?;
    match blob.compression {
        BlobCompression::None => stream_into(file, sink)?,
        // Several members are read, as Go's reader (which wrote most registry blobs) does.
        BlobCompression::Gzip => stream_into(flate2::read::MultiGzDecoder::new(file), sink)
            .context("decompressing gzip")?,
        BlobCompression::Zstd => stream_into(
            zstd::stream::read::Decoder::new(file).context("starting zstd")?,
            sink,
        )
        .context("decompressing zstd")?,
    }
    Ok(())
}

fn open(blob: &StoredBlob) -> Result<File> {
    File::open(&blob.path)
        .with_context(|| format!("blob {}: cannot open {}", blob.digest, blob.path.display()))
}
