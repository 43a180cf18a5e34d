//! Layer blobs made in full before they are written — compressed layers, and layers
//! decompressed from a stored blob — made in the background and handed to the writer in layer
//! order.
//!
//! Up to `jobs` layers are rebuilt and compressed at once (each compressor also runs its own
//! worker threads), straight into the blob cache (or a scratch file without one), or taken
//! from the cache when an earlier export made them. The writer receives layer `i` as soon as
//! it is finished, and copies it out while later layers are still compressing. A layer is
//! committed to the cache only after its rebuild verified every CRC and its diff_id; its
//! compressed bytes are hashed once, on their way in. Layers an export of this kind keeps as
//! they are (stored blobs) are verified against their digest and handed over the same way.

use std::io::{Seek, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use std::sync::{Condvar, Mutex};

use anyhow::{anyhow, Context, Result};

use super::blob_store::{BlobStore, NotingFailure, StoredBlob};
use super::plan::BlobPlan;
use crate::cache::{Key, PendingBlob};
use crate::compress::{CompressedBlob, Compressor, Settings};
use crate::io::EngineFactory;
use crate::model::{self, Layer};
use crate::progress::{Phase, Progress};
use crate::reassembly::{rebuild_layer, stored, Block, BlockSink, WriteBlocks};
use crate::sink::plan::{media_type, BlobInfo, ReadyBlob, ReadyBlobs};

/// What making an export's layer blobs needs.
pub struct MakeJob<'a> {
    pub layers: &'a [Layer],
    /// How each layer's blob is made.
    pub plans: &'a [BlobPlan],
    pub store: &'a BlobStore,
    pub engines: EngineFactory,
    /// Layers compressed at once.
    pub jobs: usize,
    /// Counts layer bytes as they are compressed, and cached blobs as they are verified.
    pub progress: &'a Progress,
    /// Each layer's uncompressed size where it was measured (for progress only): a layer
    /// taken from the cache counts as that many bytes done.
    pub sizes: &'a [Option<u64>],
}

/// Makes every layer's blob in the background while `write` consumes them in layer order.
/// Returns what `write` returns; when `write` fails, work in progress is abandoned.
pub fn with_made_layers<R>(
    job: &MakeJob,
    write: impl FnOnce(&mut dyn ReadyBlobs) -> Result<R>,
) -> Result<R> {
    let workers = job.jobs.max(1);
    // Finished blobs wait open for the writer; a bounded lead keeps a slow destination from
    // piling up open files (and cache work) for an image of hundreds of layers.
    let lead = 2 * workers;
    in_order(
        job.layers.len(),
        workers,
        lead,
        |index, stop| {
            let blob = make_layer(job, index, stop)?;
            job.progress.finish(index, Phase::Done);
            Ok(blob)
        },
        write,
    )
}

/// Makes items `0..count` with `make` on up to `workers` threads, at most `lead` items ahead of
/// what `consume` has taken, and hands them to `consume` in order.
///
/// After the first failure no new item is started and running ones are told to stop (`make`
/// watches the flag and returns [`Cancelled`]); the consumer is then given the first real
/// error, never the cancellation of an item that was merely abandoned because of it.
fn in_order<R>(
    count: usize,
    workers: usize,
    lead: usize,
    make: impl Fn(usize, &AtomicBool) -> Result<ReadyBlob> + Sync,
    consume: impl FnOnce(&mut dyn ReadyBlobs) -> Result<R>,
) -> Result<R> {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..count)
        .map(|_| {
            // One message per item: a send never blocks.
            let (tx, rx) = sync_channel::<Result<ReadyBlob>>(1);
            (Some(tx), Some(rx))
        })
        .unzip();
    let shared = Shared {
        senders: Mutex::new(senders),
        next: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        failure: Mutex::new(None),
        taken: Mutex::new(0),
        moved: Condvar::new(),
    };

    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, count.max(1)) {
            scope.spawn(|| shared.work(lead, &make));
        }
        let mut stream = InOrder {
            receivers,
            next: 0,
            shared: &shared,
        };
        let result = consume(&mut stream);
        // Whether it failed or is done, nothing more will be taken: release the workers.
        shared.stop();
        // Dropping the receivers here, before the scope joins the workers, lets a worker's
        // late send fail instead of waiting.
        drop(stream);
        result
    })
}

/// State shared by the workers and the consumer of [`in_order`].
struct Shared {
    senders: Mutex<Vec<Option<SyncSender<Result<ReadyBlob>>>>>,
    next: AtomicUsize,
    stop: AtomicBool,
    /// The first real (not cancelled) failure, recorded before `stop` is raised.
    failure: Mutex<Option<String>>,
    /// Items the consumer has taken, and the signal that it took one (or that work stopped).
    taken: Mutex<usize>,
    moved: Condvar,
}

impl Shared {
    fn work(&self, lead: usize, make: &(impl Fn(usize, &AtomicBool) -> Result<ReadyBlob> + Sync)) {
        while !self.stop.load(Ordering::Acquire) {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(tx) = lock(&self.senders).get_mut(index).and_then(Option::take) else {
                return;
            };
            let mut taken = lock(&self.taken);
            while index >= *taken + lead && !self.stop.load(Ordering::Acquire) {
                taken = self.moved.wait(taken).unwrap_or_else(|p| p.into_inner());
            }
            drop(taken);
            if self.stop.load(Ordering::Acquire) {
                break; // `tx` drops: the consumer sees this item end without a result
            }
            let result = make(index, &self.stop);
            if let Err(e) = &result {
                if !e.is::<Cancelled>() {
                    lock(&self.failure).get_or_insert_with(|| format!("{e:#}"));
                }
                self.stop();
            }
            // The consumer may have stopped reading; then nobody needs the result.
            let _ = tx.send(result);
        }
        // Stopped: items nobody started will never be sent; dropping their senders lets a
        // consumer waiting for one see that rather than wait forever.
        lock(&self.senders).clear();
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _guard = lock(&self.taken);
        self.moved.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The blob cache's key for `layer` compressed with `settings`.
pub fn cache_key(layer: &Layer, settings: &Settings) -> Key {
    Key {
        diff_id: layer.diff_id,
        algorithm: settings.algorithm,
        level: settings.level,
    }
}

/// Makes layer `index`'s blob as its plan says (a stored blob: verified); `stop` abandons the
/// work with [`Cancelled`] when raised.
pub fn make_layer(job: &MakeJob, index: usize, stop: &AtomicBool) -> Result<ReadyBlob> {
    make_layer_teed(job, index, stop, None)
}

/// [`make_layer`], and if the layer is compressed here (not taken from the cache), every
/// compressed byte is also sent to `tee` as it is written: a push uploads the blob while it is
/// made. `tee` is dropped when the blob is done, or was not compressed here.
pub fn make_layer_teed(
    job: &MakeJob,
    index: usize,
    stop: &AtomicBool,
    tee: Option<SyncSender<Vec<u8>>>,
) -> Result<ReadyBlob> {
    match &job.plans[index] {
        BlobPlan::Made(Some(settings)) => compress_layer(job, index, settings, stop, tee),
        BlobPlan::Made(None) | BlobPlan::Tar => uncompressed_layer(job, index, stop),
        BlobPlan::Stored(blob) => verified_stored(job, index, blob)
            .map_err(|e| e.context(job.layers[index].origin.clone())),
    }
}

/// A stored blob, hashed and checked against its digest before it is handed over (the file
/// handed over is the one that was checked).
fn verified_stored(job: &MakeJob, index: usize, blob: &model::StoredBlob) -> Result<ReadyBlob> {
    job.progress.phase(index, Phase::Verifying, Some(blob.size));
    let file = stored::open_verified(blob)?;
    job.progress.add(index, blob.size);
    Ok(ReadyBlob {
        info: BlobInfo {
            digest: blob.digest,
            size: blob.size,
            media_type: blob.compression.oci_media_type(),
        },
        file,
    })
}

/// The uncompressed layer tar (a stored blob decompressed), verified against the diff_id, in a
/// scratch file.
fn uncompressed_layer(job: &MakeJob, index: usize, stop: &AtomicBool) -> Result<ReadyBlob> {
    let mut file = job.store.scratch_file()?;
    let mut engine = job.engines.create()?;
    job.progress.phase(
        index,
        Phase::Decompressing,
        job.sizes.get(index).copied().flatten(),
    );
    let mut sink = Watched {
        inner: WriteBlocks(&mut file),
        stop,
        progress: job.progress,
        index,
    };
    rebuild_layer(&job.layers[index], None, engine.as_mut(), &mut sink)?;
    let size = file.stream_position().context("measuring a scratch blob")?;
    file.rewind().context("rewinding a scratch blob")?;
    Ok(ReadyBlob {
        info: BlobInfo {
            digest: job.layers[index].diff_id,
            size,
            media_type: media_type::OCI_LAYER_TAR,
        },
        file,
    })
}

/// Takes layer `index` from the cache, or compresses it.
fn compress_layer(
    job: &MakeJob,
    index: usize,
    settings: &Settings,
    stop: &AtomicBool,
    tee: Option<SyncSender<Vec<u8>>>,
) -> Result<ReadyBlob> {
    let layer = &job.layers[index];
    let key = cache_key(layer, settings);
    let blob = match job.store.lookup(&key) {
        Some(hit) => {
            // The layer counts as done; without its measured size, the bytes verified stand
            // in for it.
            let size = job.sizes.get(index).copied().flatten();
            job.progress.phase(index, Phase::Verifying, size);
            job.progress.add(index, size.unwrap_or(hit.size));
            hit
        }
        None => make_blob(job, index, settings, &key, stop, tee)?,
    };
    Ok(ReadyBlob {
        info: BlobInfo {
            digest: blob.digest,
            size: blob.size,
            media_type: settings.algorithm.media_type(),
        },
        file: blob.file,
    })
}

/// Compresses layer `index` into the cache as `key`, or into a scratch file when there is no
/// cache to write. A cache that fails on the way is given up, and the layer made again in
/// scratch (its bytes then count twice in the progress, a rare cost not worth undoing).
fn make_blob(
    job: &MakeJob,
    index: usize,
    settings: &Settings,
    key: &Key,
    stop: &AtomicBool,
    mut tee: Option<SyncSender<Vec<u8>>>,
) -> Result<StoredBlob> {
    if let Some(pending) = job.store.begin(key) {
        // A second attempt would send the blob a second time: the tee serves the first only
        // (a stream that did not get the whole blob is not committed).
        match compress_into_cache(job, index, settings, pending, stop, tee.take())? {
            Attempt::Made(blob) => return Ok(blob),
            Attempt::CacheFailed(e) => job.store.give_up_cache(&e),
        }
    }
    compress_into_scratch(job, index, settings, stop, tee)
}

/// How compressing into the cache went, when the layer itself was sound.
enum Attempt {
    Made(StoredBlob),
    /// The cache could not take the blob: the layer is to be made elsewhere.
    CacheFailed(anyhow::Error),
}

/// Compresses layer `index` into `pending` and commits it. An error is the layer's (it would
/// fail anywhere); the cache's own failures are told apart, as [`Attempt::CacheFailed`].
fn compress_into_cache(
    job: &MakeJob,
    index: usize,
    settings: &Settings,
    pending: PendingBlob,
    stop: &AtomicBool,
    tee: Option<SyncSender<Vec<u8>>>,
) -> Result<Attempt> {
    let mut out = NotingFailure::new(pending);
    let phase = compress_phase(&tee);
    let compressed = compress(
        job,
        index,
        settings,
        &mut Tee::new(&mut out, tee),
        stop,
        phase,
    );
    let (pending, write_failure) = out.into_parts();
    if let Some(e) = write_failure {
        // Whatever the compressor made of it, the cache failed first; dropping `pending`
        // deletes what it holds.
        let context = format!("writing into the blob cache {}", pending.dir().display());
        return Ok(Attempt::CacheFailed(anyhow::Error::new(e).context(context)));
    }
    let blob = compressed?;
    Ok(match pending.commit(blob.digest) {
        Ok(cached) => Attempt::Made(cached.into()),
        Err(e) => Attempt::CacheFailed(e),
    })
}

/// Compresses layer `index` into a nameless scratch file, rewound for copying out.
fn compress_into_scratch(
    job: &MakeJob,
    index: usize,
    settings: &Settings,
    stop: &AtomicBool,
    tee: Option<SyncSender<Vec<u8>>>,
) -> Result<StoredBlob> {
    let mut file = job.store.scratch_file()?;
    let phase = compress_phase(&tee);
    let blob = compress(
        job,
        index,
        settings,
        &mut Tee::new(&mut file, tee),
        stop,
        phase,
    )?;
    file.rewind().context("rewinding a scratch blob")?;
    Ok(StoredBlob {
        digest: blob.digest,
        size: blob.size,
        file,
    })
}

/// Rebuilds layer `index`, verifying it, and compresses it into `out`.
fn compress(
    job: &MakeJob,
    index: usize,
    settings: &Settings,
    out: &mut dyn Write,
    stop: &AtomicBool,
    phase: Phase,
) -> Result<CompressedBlob> {
    let layer = &job.layers[index];
    let mut compressor = Compressor::new(settings, out)?;
    let mut engine = job.engines.create()?;
    job.progress
        .phase(index, phase, job.sizes.get(index).copied().flatten());
    let mut sink = Watched {
        inner: WriteBlocks(&mut compressor),
        stop,
        progress: job.progress,
        index,
    };
    // No sizing pass: the blob's size is known when it is made; the one pass checks for
    // duplicate paths itself.
    rebuild_layer(layer, None, engine.as_mut(), &mut sink)?;
    compressor.finish()
}

/// What a layer's line says while it is compressed: also uploaded, when its output is teed.
fn compress_phase(tee: &Option<SyncSender<Vec<u8>>>) -> Phase {
    if tee.is_some() {
        Phase::CompressingAndUploading
    } else {
        Phase::Compressing
    }
}

/// Writes to `inner`, and sends a copy of what was written to `tee` while someone receives it
/// (a push uploading the blob as it is made). The copy is what `inner` accepted, in order.
struct Tee<'a> {
    inner: &'a mut dyn Write,
    tee: Option<SyncSender<Vec<u8>>>,
}

impl<'a> Tee<'a> {
    fn new(inner: &'a mut dyn Write, tee: Option<SyncSender<Vec<u8>>>) -> Self {
        Tee { inner, tee }
    }
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(tee) = &self.tee {
            if tee.send(buf[..n].to_vec()).is_err() {
                // The upload ended (or failed): the blob is still made, for the cache and for
                // an ordinary upload.
                self.tee = None;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The compression was abandoned because something else failed first.
#[derive(Debug, thiserror::Error)]
#[error("compression abandoned")]
pub struct Cancelled;

/// Passes rebuilt blocks to the compressor, counting them, until told to stop.
struct Watched<'a, S> {
    inner: S,
    stop: &'a AtomicBool,
    progress: &'a Progress,
    /// The layer, for its progress line.
    index: usize,
}

impl<S: BlockSink> BlockSink for Watched<'_, S> {
    fn put(&mut self, block: Block) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(Cancelled.into());
        }
        self.progress.add(self.index, block.len() as u64);
        self.inner.put(block)
    }
}

/// The consumer's side: each item's result, in order.
struct InOrder<'a> {
    receivers: Vec<Option<Receiver<Result<ReadyBlob>>>>,
    next: usize,
    shared: &'a Shared,
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
        let received = rx.recv();
        *lock(&self.shared.taken) += 1;
        self.shared.moved.notify_all();
        match received {
            Ok(Ok(blob)) => Ok(blob),
            Ok(Err(e)) if !e.is::<Cancelled>() => Err(e),
            // Abandoned (or never started) because something else failed: report that.
            other => {
                let first = lock(&self.shared.failure).take();
                Err(match (first, other) {
                    (Some(first), _) => anyhow!(first),
                    (None, Ok(Err(e))) => e,
                    (None, _) => anyhow!("a compression worker stopped without a result"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::sink::plan::BlobInfo;
    use std::time::{Duration, Instant};

    fn blob(index: usize) -> Result<ReadyBlob> {
        Ok(ReadyBlob {
            info: BlobInfo {
                digest: Digest::of(&index.to_le_bytes()),
                size: index as u64,
                media_type: "test",
            },
            file: tempfile::tempfile()?,
        })
    }

    /// Waits (at most a few seconds) for `stop`, as a long compression would.
    fn until_stopped(stop: &AtomicBool) -> Result<ReadyBlob> {
        let start = Instant::now();
        while !stop.load(Ordering::Acquire) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "never told to stop"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(Cancelled.into())
    }

    fn take_all(blobs: &mut dyn ReadyBlobs) -> Result<Vec<u64>> {
        (0..blobs.count())
            .map(|_| blobs.next().map(|b| b.info.size))
            .collect()
    }

    #[test]
    fn items_arrive_in_order_and_no_further_ahead_than_the_lead() {
        let made = AtomicUsize::new(0);
        let taken = AtomicUsize::new(0);
        let lead = 2;
        let got = in_order(
            30,
            3,
            lead,
            |index, _| {
                let ahead = made.fetch_add(1, Ordering::SeqCst) + 1 - taken.load(Ordering::SeqCst);
                assert!(
                    ahead <= lead + 1,
                    "{ahead} items made ahead of the consumer"
                );
                blob(index)
            },
            |blobs| {
                let mut sizes = Vec::new();
                for _ in 0..blobs.count() {
                    std::thread::sleep(Duration::from_millis(2));
                    sizes.push(blobs.next()?.info.size);
                    taken.fetch_add(1, Ordering::SeqCst);
                }
                Ok(sizes)
            },
        )
        .unwrap();
        assert_eq!(got, (0..30).collect::<Vec<u64>>());
    }

    #[test]
    fn a_later_items_failure_is_reported_not_the_abandonment_it_caused() {
        // Item 0 is a long compression; item 2 fails while the consumer waits for item 0.
        for _ in 0..20 {
            let err = in_order(
                6,
                4,
                8,
                |index, stop| match index {
                    0 => until_stopped(stop),
                    2 => Err(anyhow!("item 2 is damaged")),
                    _ => blob(index),
                },
                take_all,
            )
            .unwrap_err();
            assert_eq!(format!("{err:#}"), "item 2 is damaged");
        }
    }

    #[test]
    fn the_failing_items_own_error_keeps_its_cause() {
        let err = in_order(
            3,
            1,
            2,
            |index, _| match index {
                0 => Err(std::io::Error::from_raw_os_error(libc::EIO).into()),
                _ => blob(index),
            },
            take_all,
        )
        .unwrap_err();
        assert!(err.downcast_ref::<std::io::Error>().is_some(), "{err:#}");
    }

    #[test]
    fn a_failing_consumer_stops_the_work_promptly() {
        let made = AtomicUsize::new(0);
        let start = Instant::now();
        let err = in_order(
            1000,
            2,
            4,
            |index, stop| {
                made.fetch_add(1, Ordering::SeqCst);
                if index == 1 {
                    return until_stopped(stop);
                }
                blob(index)
            },
            |blobs| {
                blobs.next()?;
                Err::<(), _>(anyhow!("the output closed"))
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "the output closed");
        assert!(
            made.load(Ordering::SeqCst) <= 10,
            "work went on after the failure"
        );
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn no_items() {
        let got = in_order(0, 2, 4, |i, _| blob(i), take_all).unwrap();
        assert!(got.is_empty());
    }
}
