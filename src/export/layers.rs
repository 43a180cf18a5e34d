//! Where the writer's layer blobs come from: rebuilt on the fly (uncompressed output), or
//! compressed first into the blob cache (compressed output, whose digest and size are only
//! known once compression has finished).

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
    sources: Vec<Mutex<Option<Source>>>,
}

/// Where a compressed blob is read from when the archive is written.
enum Source {
    /// A cache hit: the very file handle the cache just verified (size and SHA-256). Entries are
    /// only ever replaced by rename, never rewritten in place, so its bytes are the checked ones.
    Verified(File),
    /// Compressed by this export: hashed as it was written, and again as it is read back.
    Written(PathBuf),
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
            Lookup::Hit(hit) => {
                return Ok((hit.entry.digest, hit.entry.size, Source::Verified(hit.file)));
            }
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
        Ok((
            blob.digest,
            blob.size,
            Source::Written(cache.blob_path(&key)),
        ))
    })?;
    let media_type = settings.algorithm.media_type();
    let (blobs, sources) = made
        .into_iter()
        .map(|(digest, size, source)| {
            let info = BlobInfo {
                digest,
                size,
                media_type,
            };
            (info, Mutex::new(Some(source)))
        })
        .unzip();
    Ok(CompressedBlobs { blobs, sources })
}

impl BlobProducer for CompressedBlobs {
    fn produce(&self, index: usize, out: &mut dyn BlockSink) -> Result<()> {
        let expected = &self.blobs[index];
        let source = self.sources[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .context("a compressed blob is written once per export")?;
        let (mut file, mut sha, what) = match source {
            Source::Verified(file) => (file, None, "the cached blob".to_string()),
            Source::Written(path) => {
                let file =
                    File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
                (file, Some(Sha256Hasher::new()), path.display().to_string())
            }
        };
        let mut size = 0u64;
        loop {
            let mut block = vec![0u8; BLOCK_SIZE];
            let n = read_full(&mut file, &mut block).with_context(|| format!("reading {what}"))?;
            if n == 0 {
                break;
            }
            block.truncate(n);
            if let Some(sha) = &mut sha {
                sha.update(&block);
            }
            size += n as u64;
            out.put(Arc::new(block))?;
        }
        let digest_ok = sha.map_or(true, |sha| sha.finish() == expected.digest);
        if size != expected.size || !digest_ok {
            bail!("{what} ({}) changed while being exported", expected.digest);
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
