//! Compressed layers, made in the background and handed to the writer in layer order.
//!
//! Up to `jobs` layers are rebuilt and compressed at once (each compressor also runs its own
//! worker threads), straight into the blob cache, or taken from it when an earlier export made
//! them. The writer receives layer `i` as soon as it is finished, and copies it out while later
//! layers are still compressing. A layer is committed to the cache only after its rebuild
//! verified every CRC and its diff_id; its compressed bytes are hashed once, on their way in.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};

use crate::cache::{BlobCache, Key, Lookup};
use crate::compress::{Compressor, Settings};
use crate::io::EngineFactory;
use crate::model::Layer;
use crate::reassembly::{measure_layer, rebuild_layer, Block, BlockSink, WriteBlocks};
use crate::sink::plan::{BlobInfo, ReadyBlob, ReadyBlobs};
use crate::sink::writer::Progress;

/// What compressing an export's layers needs.
pub struct CompressJob<'a> {
    pub layers: &'a [Layer],
    pub settings: &'a Settings,
    pub cache: &'a BlobCache,
    pub engines: EngineFactory,
    /// Layers compressed at once.
    pub jobs: usize,
    /// Counts uncompressed bytes as they are compressed.
    pub progress: &'a Progress,
}

/// Compresses every layer in the background while `write` consumes them in layer order.
/// Returns what `write` returns; when `write` fails, compressions in progress are abandoned.
pub fn with_compressed_layers<R>(
    job: &CompressJob,
    write: impl FnOnce(&mut dyn ReadyBlobs) -> Result<R>,
) -> Result<R> {
    let count = job.layers.len();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..count)
        .map(|_| {
            // One message per layer: a send never blocks.
            let (tx, rx) = sync_channel::<Result<ReadyBlob>>(1);
            (Some(tx), Some(rx))
        })
        .unzip();
    let senders: Mutex<Vec<Option<SyncSender<Result<ReadyBlob>>>>> = Mutex::new(senders);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);

    std::thread::scope(|scope| {
        for _ in 0..job.jobs.clamp(1, count.max(1)) {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(tx) = senders
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(index)
                        .and_then(Option::take)
                    else {
                        return;
                    };
                    let result = compress_layer(job, index, &stop);
                    if let Err(e) = &result {
                        // Stop the others; keep the first real error for the writer to report.
                        stop.store(true, Ordering::Relaxed);
                        if !e.is::<Cancelled>() {
                            let mut first = failure.lock().unwrap_or_else(|p| p.into_inner());
                            first.get_or_insert(anyhow!("{e:#}"));
                        }
                    }
                    // The writer may have stopped reading; then nobody needs the result.
                    let _ = tx.send(result);
                }
                // Stopped: layers nobody started will never be sent; dropping their senders
                // lets a writer waiting for one see that rather than wait forever.
                senders.lock().unwrap_or_else(|p| p.into_inner()).clear();
            });
        }

        let mut in_order = InOrder {
            receivers,
            next: 0,
            failure: &failure,
        };
        let result = write(&mut in_order);
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        result
    })
}

/// Compresses layer `index` into the cache, or takes it from there.
fn compress_layer(job: &CompressJob, index: usize, stop: &AtomicBool) -> Result<ReadyBlob> {
    let layer = &job.layers[index];
    let settings = job.settings;
    let media_type = settings.algorithm.media_type();
    let key = Key {
        diff_id: layer.diff_id,
        algorithm: settings.algorithm,
        level: settings.level,
    };
    match job.cache.get(&key)? {
        Lookup::Hit(hit) => {
            return Ok(ReadyBlob {
                info: BlobInfo {
                    digest: hit.entry.digest,
                    size: hit.entry.size,
                    media_type,
                },
                file: hit.file,
            });
        }
        Lookup::Discarded(reason) => eprintln!("oci-export: {reason}; compressing it again"),
        Lookup::Miss => {}
    }
    // The sizing pass also rejects a tar-split that lists a path twice.
    let size = measure_layer(layer)?.tar_size;
    let mut pending = job.cache.begin(&key)?;
    let blob = {
        let mut compressor = Compressor::new(settings, &mut pending)?;
        let mut engine = job.engines.create()?;
        let mut sink = Watched {
            inner: WriteBlocks(&mut compressor),
            stop,
            progress: job.progress,
        };
        rebuild_layer(layer, size, engine.as_mut(), &mut sink)?;
        compressor.finish()?
    };
    let committed = pending.commit(blob.digest)?;
    if committed.entry.size != blob.size {
        bail!(
            "{}: the cache stored {} bytes of a {}-byte blob",
            layer.origin,
            committed.entry.size,
            blob.size
        );
    }
    Ok(ReadyBlob {
        info: BlobInfo {
            digest: blob.digest,
            size: blob.size,
            media_type,
        },
        file: committed.file,
    })
}

/// The compression was abandoned because something else failed first.
#[derive(Debug, thiserror::Error)]
#[error("compression abandoned")]
struct Cancelled;

/// Passes rebuilt blocks to the compressor, counting them, until told to stop.
struct Watched<'a, S> {
    inner: S,
    stop: &'a AtomicBool,
    progress: &'a Progress,
}

impl<S: BlockSink> BlockSink for Watched<'_, S> {
    fn put(&mut self, block: Block) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(Cancelled.into());
        }
        self.progress
            .bytes
            .fetch_add(block.len() as u64, Ordering::Relaxed);
        self.inner.put(block)
    }
}

/// The writer's side: each layer's result, in order.
struct InOrder<'a> {
    receivers: Vec<Option<Receiver<Result<ReadyBlob>>>>,
    next: usize,
    failure: &'a Mutex<Option<anyhow::Error>>,
}

impl ReadyBlobs for InOrder<'_> {
    fn count(&self) -> usize {
        self.receivers.len()
    }

    fn next(&mut self) -> Result<ReadyBlob> {
        let rx = self
            .receivers
            .get_mut(self.next)
            .and_then(Option::take)
            .ok_or_else(|| anyhow!("internal error: more layers asked for than there are"))?;
        self.next += 1;
        let received = rx
            .recv()
            .unwrap_or_else(|_| Err(anyhow!("a compression worker stopped without a result")));
        // A layer abandoned because another failed reports that other failure.
        received.map_err(|e| {
            self.failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or(e)
        })
    }
}
