//! Where the writer's layer blobs come from: rebuilt on the fly (uncompressed output), or
//! compressed first into the blob cache (compressed output, whose digest and size are only
//! known once compression has finished).

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::cache::{BlobCache, Key, Lookup};
use crate::compress::{Compressor, Settings};
use crate::digest::Sha256Hasher;
use crate::io::EngineFactory;
use crate::model::Layer;
use crate::parallel;
use crate::reassembly::{measure_layer, rebuild_layer, BlockSink, WriteBlocks, BLOCK_SIZE};
use crate::sink::plan::{media_type, BlobInfo};
use crate::sink::writer::BlobProducer;

/// Measures every layer (pass 1 over tar-split), `jobs` at a time.
pub fn measure_all(layers: &[Layer], jobs: usize) -> Result<Vec<u64>> {
    parallel::map(layers, jobs, |layer| Ok(measure_layer(layer)?.tar_size))
}

/// Uncompressed layers: the blob is the layer tar, its digest the diff_id.
pub fn uncompressed_blobs(layers: &[Layer], sizes: &[u64]) -> Vec<BlobInfo> {
    layers
        .iter()
        .zip(sizes)
        .map(|(layer, &size)| BlobInfo {
            digest: layer.diff_id,
            size,
            media_type: media_type::OCI_LAYER_TAR,
        })
        .collect()
}

/// Rebuilds layers while the archive is written, one I/O engine per call.
pub struct Rebuilder<'a> {
    pub layers: &'a [Layer],
    pub sizes: &'a [u64],
    pub engines: EngineFactory,
}

impl BlobProducer for Rebuilder<'_> {
    fn produce(&self, index: usize, out: &mut dyn BlockSink) -> Result<()> {
        let mut engine = self.engines.create()?;
        rebuild_layer(&self.layers[index], self.sizes[index], engine.as_mut(), out)
    }
}

/// Compressed layers, each in a cache file with its digest and size known.
pub struct CompressedBlobs {
    pub blobs: Vec<BlobInfo>,
    pub files: Vec<PathBuf>,
}

/// Compresses every layer into `cache`, or takes it from there when an earlier export already
/// did (the cache verifies an entry's size and SHA-256 before handing it out). A layer is only
/// committed to the cache after its rebuild verified every CRC and its diff_id.
pub fn compress_all(
    layers: &[Layer],
    sizes: &[u64],
    settings: &Settings,
    cache: &BlobCache,
    engines: EngineFactory,
    jobs: usize,
) -> Result<CompressedBlobs> {
    let indices: Vec<usize> = (0..layers.len()).collect();
    let made = parallel::map(&indices, jobs, |&i| {
        let layer = &layers[i];
        let key = Key {
            diff_id: layer.diff_id,
            algorithm: settings.algorithm,
            level: settings.level,
        };
        match cache.get(&key)? {
            Lookup::Hit(hit) => return Ok((hit.entry.digest, hit.entry.size, hit.path)),
            Lookup::Discarded(reason) => eprintln!("oci-export: {reason}; compressing it again"),
            Lookup::Miss => {}
        }
        let mut pending = cache.begin(&key)?;
        let blob = {
            let mut compressor = Compressor::new(settings, &mut pending)?;
            let mut engine = engines.create()?;
            rebuild_layer(
                layer,
                sizes[i],
                engine.as_mut(),
                &mut WriteBlocks(&mut compressor),
            )?;
            compressor.finish()?
        };
        let entry = pending.commit()?;
        if entry.digest != blob.digest || entry.size != blob.size {
            bail!(
                "{}: the cache stored other bytes than were compressed",
                layer.origin
            );
        }
        Ok((blob.digest, blob.size, cache.blob_path(&key)))
    })?;
    let media_type = settings.algorithm.media_type();
    let (blobs, files) = made
        .into_iter()
        .map(|(digest, size, file)| {
            (
                BlobInfo {
                    digest,
                    size,
                    media_type,
                },
                file,
            )
        })
        .unzip();
    Ok(CompressedBlobs { blobs, files })
}

impl BlobProducer for CompressedBlobs {
    /// Streams a cached blob, checking it against its digest again on the way out.
    fn produce(&self, index: usize, out: &mut dyn BlockSink) -> Result<()> {
        let path = &self.files[index];
        let expected = &self.blobs[index];
        let mut file =
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut sha = Sha256Hasher::new();
        let mut size = 0u64;
        loop {
            let mut block = vec![0u8; BLOCK_SIZE];
            let n = read_full(&mut file, &mut block)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            block.truncate(n);
            sha.update(&block);
            size += n as u64;
            out.put(Arc::new(block))?;
        }
        if size != expected.size || sha.finish() != expected.digest {
            bail!(
                "cached blob {} changed while being exported",
                path.display()
            );
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
