//! Writing a [`Plan`] as a tar archive, with layer blobs produced in parallel.
//!
//! Every size is known before the first byte is written, so the whole archive layout — each
//! header and each blob's offset — is computed up front. Two strategies follow from that:
//!
//! - **Positional** (the output is a regular file): headers and documents are written at their
//!   offsets, and each worker writes its layer straight into its own region with `pwrite`. Layers
//!   are rebuilt and hashed fully in parallel, with no buffering between threads. The
//!   end-of-archive blocks come last, after the final check, as they do in a stream.
//! - **Streaming** (a pipe, a socket, `/dev/null`): bytes must leave in order. Workers rebuild
//!   layers ahead into bounded channels (`STREAM_DEPTH` blocks each) while the main thread writes
//!   the current one, so memory stays bounded whatever the image size.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};

use super::plan::{Body, Plan};
use super::tar;
use crate::parallel;
use crate::progress::{Phase, Progress};
use crate::reassembly::{Block, BlockSink};

/// Produces blob bytes on demand; called from worker threads.
pub trait BlobProducer: Sync {
    /// Writes blob `index` of the plan, exactly its planned size, to `out`.
    fn produce(&self, index: usize, out: &mut dyn BlockSink) -> Result<()>;
}

/// Blocks buffered per layer in streaming mode (each up to 1 MiB as the reassembler writes them).
const STREAM_DEPTH: usize = 8;

struct Placed {
    header: Vec<u8>,
    data_offset: u64,
    size: u64,
}

/// The archive's layout: where each entry's header and data go, and the total length.
fn layout(plan: &Plan) -> (Vec<Placed>, u64) {
    let mut offset = 0;
    let mut placed = Vec::with_capacity(plan.entries.len());
    for entry in &plan.entries {
        let size = plan.body_size(&entry.body);
        let kind = match entry.body {
            Body::Directory => tar::Kind::Directory,
            _ => tar::Kind::RegularFile,
        };
        let header = tar::header(&entry.path, kind, size, entry.mtime);
        let data_offset = offset + header.len() as u64;
        offset = data_offset + size + tar::padding(size);
        placed.push(Placed {
            header,
            data_offset,
            size,
        });
    }
    // End of archive: two zero blocks, as Go's tar writer ends it.
    (placed, offset + 2 * tar::BLOCK)
}

/// How to write: where, how many layers at once, and what to count.
pub struct WriteOptions<'a> {
    pub file: &'a File,
    /// `Some(offset)` when `file` takes positional writes (a regular file), `None` for a stream.
    pub positional_base: Option<u64>,
    pub jobs: usize,
    pub progress: &'a Progress,
}

/// Writes the archive; returns its length.
///
/// `before_end` runs when everything but the end-of-archive blocks is written: an error there
/// (the storage changed under us) leaves a stream without its end, which every tar reader
/// rejects, rather than a complete-looking archive.
pub fn write_archive(
    plan: &Plan,
    producer: &dyn BlobProducer,
    opts: &WriteOptions,
    before_end: &dyn Fn() -> Result<()>,
) -> Result<u64> {
    let (placed, total) = layout(plan);
    match opts.positional_base {
        Some(base) => {
            write_positional(plan, &placed, total, producer, opts, base)?;
            before_end()?;
            // Last of all, so that an export killed at any earlier point leaves no end marker.
            write_end(opts.file, base + total)?;
        }
        None => write_streaming(plan, &placed, producer, opts, before_end)?,
    }
    Ok(total)
}

/// The blob indices in the order they appear in the archive.
fn blob_order(plan: &Plan) -> Vec<(usize, usize)> {
    plan.entries
        .iter()
        .enumerate()
        .filter_map(|(pos, e)| match e.body {
            Body::Blob(i) => Some((pos, i)),
            _ => None,
        })
        .collect()
}

fn write_positional(
    plan: &Plan,
    placed: &[Placed],
    total: u64,
    producer: &dyn BlobProducer,
    opts: &WriteOptions,
    base: u64,
) -> Result<()> {
    let (file, jobs, progress) = (opts.file, opts.jobs, opts.progress);
    reserve(file, base, total)?;
    // Headers, small documents and padding first: cheap, and all at known offsets.
    for (entry, p) in plan.entries.iter().zip(placed) {
        let header_offset = p.data_offset - p.header.len() as u64;
        file.write_all_at(&p.header, base + header_offset)
            .context("writing the archive")?;
        if let Body::Bytes(bytes) = &entry.body {
            file.write_all_at(bytes, base + p.data_offset)
                .context("writing the archive")?;
        }
        let pad = tar::padding(p.size) as usize;
        if pad > 0 {
            file.write_all_at(&[0u8; 512][..pad], base + p.data_offset + p.size)
                .context("writing the archive")?;
        }
    }

    parallel::map(&blob_order(plan), jobs, |&(pos, blob)| {
        let mut out = PositionalWriter {
            file,
            offset: base + placed[pos].data_offset,
            end: base + placed[pos].data_offset + placed[pos].size,
            progress,
            blob,
        };
        progress.phase(blob, Phase::Writing, Some(placed[pos].size));
        producer.produce(blob, &mut out)?;
        if out.offset != out.end {
            bail!("blob {} ended early", plan.blobs[blob].digest);
        }
        progress.finish(blob, Phase::Done);
        Ok(())
    })?;
    Ok(())
}

/// The two zero blocks that end the archive, which ends at `end` in the file.
fn write_end(file: &File, end: u64) -> Result<()> {
    let len = 2 * tar::BLOCK;
    file.write_all_at(&[0u8; 2 * tar::BLOCK as usize], end - len)
        .context("writing the archive")
}

/// Reserves the space up front, so a full disk is reported before work is done.
///
/// The file's length is left alone: the reserved space reads as zeros, and zeros where the
/// end-of-archive blocks go would make an unfinished archive look finished. The length grows
/// as the writes land, and reaches the archive's end only with its end marker.
fn reserve(file: &File, base: u64, total: u64) -> Result<()> {
    // SAFETY: fallocate on a valid descriptor with in-range values.
    let r = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(file),
            libc::FALLOC_FL_KEEP_SIZE,
            base as libc::off_t,
            total as libc::off_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Nothing to reserve with; a full disk shows up on the first write that hits it.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => {}
            _ => return Err(e).context(format!("cannot reserve {total} bytes for the output")),
        }
    }
    Ok(())
}

/// Writes a blob into its region of the output file.
struct PositionalWriter<'a> {
    file: &'a File,
    offset: u64,
    end: u64,
    progress: &'a Progress,
    blob: usize,
}

impl BlockSink for PositionalWriter<'_> {
    fn put(&mut self, block: Block) -> Result<()> {
        if self.offset + block.len() as u64 > self.end {
            bail!("blob is larger than planned");
        }
        self.file
            .write_all_at(&block, self.offset)
            .context("writing the archive")?;
        self.offset += block.len() as u64;
        self.progress.add(self.blob, block.len() as u64);
        Ok(())
    }
}

/// What a streaming worker sends: data blocks, then nothing (success) or an error.
type Message = Result<Block, String>;

fn write_streaming(
    plan: &Plan,
    placed: &[Placed],
    producer: &dyn BlobProducer,
    opts: &WriteOptions,
    before_end: &dyn Fn() -> Result<()>,
) -> Result<()> {
    let (file, jobs, progress) = (opts.file, opts.jobs, opts.progress);
    let order = blob_order(plan);
    let mut senders: Vec<Option<SyncSender<Message>>> = Vec::new();
    let mut receivers: Vec<Option<Receiver<Message>>> = Vec::new();
    for _ in &order {
        let (tx, rx) = sync_channel(STREAM_DEPTH);
        senders.push(Some(tx));
        receivers.push(Some(rx));
    }
    let senders = Mutex::new(senders);
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut out = file;

    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..jobs.clamp(1, order.len().max(1)) {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(_, blob)) = order.get(k) else {
                    return;
                };
                let Some(tx) = senders.lock().unwrap_or_else(|p| p.into_inner())[k].take() else {
                    return;
                };
                let mut writer = ChannelWriter { tx: &tx };
                if let Err(e) = producer.produce(blob, &mut writer) {
                    // The receiver may be gone already (the writer failed); nothing to add then.
                    let _ = tx.send(Err(format!("{e:#}")));
                    return;
                }
            });
        }

        let result = (|| -> Result<()> {
            let mut k = 0;
            for (entry, p) in plan.entries.iter().zip(placed) {
                out.write_all(&p.header).context("writing the archive")?;
                match &entry.body {
                    Body::Directory => {}
                    Body::Bytes(bytes) => out.write_all(bytes).context("writing the archive")?,
                    Body::Blob(blob) => {
                        let rx = receivers[k].take().expect("each blob is received once");
                        k += 1;
                        let mut written = 0u64;
                        progress.phase(*blob, Phase::Writing, Some(p.size));
                        for block in rx.iter() {
                            let block = block.map_err(|e| anyhow!(e))?;
                            out.write_all(&block).context("writing the archive")?;
                            written += block.len() as u64;
                            progress.add(*blob, block.len() as u64);
                        }
                        progress.finish(*blob, Phase::Done);
                        if written != p.size {
                            bail!(
                                "blob {} produced {written} of {} bytes",
                                plan.blobs[*blob].digest,
                                p.size
                            );
                        }
                    }
                }
                let pad = tar::padding(p.size) as usize;
                out.write_all(&[0u8; 512][..pad])
                    .context("writing the archive")?;
            }
            before_end()?;
            out.write_all(&[0u8; 1024]).context("writing the archive")?;
            Ok(())
        })();
        if result.is_err() {
            // Unblock and stop the workers: dropping receivers makes their sends fail.
            stop.store(true, Ordering::Relaxed);
            receivers.clear();
        }
        result
    })
}

/// Sends a worker's blocks to the writing thread (shared, not copied).
struct ChannelWriter<'a> {
    tx: &'a SyncSender<Message>,
}

impl BlockSink for ChannelWriter<'_> {
    fn put(&mut self, block: Block) -> Result<()> {
        self.tx
            .send(Ok(block))
            .map_err(|_| anyhow!("the archive writer stopped"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::sink::plan::{media_type, BlobInfo, PlanEntry};

    /// A document, then one blob of `size` bytes.
    fn plan(size: u64) -> Plan {
        let entry = |path: &str, body| PlanEntry {
            path: path.into(),
            mtime: 0,
            body,
        };
        Plan {
            entries: vec![
                entry("doc.json", Body::Bytes(b"{}".to_vec())),
                entry("blob", Body::Blob(0)),
            ],
            blobs: vec![BlobInfo {
                digest: Digest::of(b""),
                size,
                media_type: media_type::OCI_LAYER_TAR,
            }],
        }
    }

    /// Produces its blob, or fails half-way when `fail` is set.
    struct Filler {
        size: usize,
        fail: bool,
    }

    impl BlobProducer for Filler {
        fn produce(&self, _: usize, out: &mut dyn BlockSink) -> Result<()> {
            if self.fail {
                out.put(std::sync::Arc::new(vec![7; self.size / 2]))?;
                bail!("the layer changed");
            }
            out.put(std::sync::Arc::new(vec![7; self.size]))
        }
    }

    /// Writes the sample plan positionally into a fresh file; returns the result and the file.
    fn write_positionally(fail_blob: bool, fail_end: bool) -> (Result<u64>, Vec<u8>) {
        let size = 3000;
        let file = tempfile::tempfile().unwrap();
        let progress = Progress::default();
        let opts = WriteOptions {
            file: &file,
            positional_base: Some(0),
            jobs: 2,
            progress: &progress,
        };
        let producer = Filler {
            size,
            fail: fail_blob,
        };
        let check = || {
            if fail_end {
                bail!("storage changed")
            } else {
                Ok(())
            }
        };
        let result = write_archive(&plan(size as u64), &producer, &opts, &check);
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut &file, &mut bytes).unwrap();
        (result, bytes)
    }

    #[test]
    fn positional_archive_ends_with_its_end_marker() {
        let (result, bytes) = write_positionally(false, false);
        assert_eq!(bytes.len() as u64, result.unwrap());
        assert!(bytes[bytes.len() - 1024..].iter().all(|&b| b == 0));
    }

    #[test]
    fn failed_positional_archive_has_no_end_marker() {
        // Whether a layer failed or the final check did, the file must stop where the members
        // do, without the two zero blocks that say "complete" (nor space reserved as zeros).
        let (complete, _) = write_positionally(false, false);
        let members_end = complete.unwrap() - 2 * tar::BLOCK;
        for (fail_blob, fail_end) in [(true, false), (false, true)] {
            let (result, bytes) = write_positionally(fail_blob, fail_end);
            assert!(result.is_err());
            assert_eq!(bytes.len() as u64, members_end, "{fail_blob} {fail_end}");
        }
    }
}
