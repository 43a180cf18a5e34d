//! Writing an [`IncrementalPlan`] as a tar archive: the output for compressed layers.
//!
//! A compressed blob's size and digest exist only once its compression has finished, and a tar
//! header needs the size before the data. So the archive is written front to back: the leading
//! directories, then each layer blob as soon as it (and every layer before it) is ready, while
//! later layers are still being compressed, then the configs, manifests and indexes that need
//! every digest. Blob bytes go from the cache file to the output through `std::io::copy`, which
//! on Linux lets the kernel move them (`copy_file_range`, `sendfile` or `splice`) instead of
//! passing them through user space.

use std::fs::File;
use std::io::Write;

use anyhow::{bail, Context, Result};

use super::plan::{Body, IncrementalPlan, PlanEntry, ReadyBlob, ReadyBlobs};
use super::tar;

/// Writes the archive front to back into `out` (at its current offset); returns its length.
///
/// `before_end` runs before the end-of-archive blocks, as in
/// [`write_archive`](super::writer::write_archive): if it fails, the archive is left without its
/// end, which every tar reader rejects.
pub fn write_archive(
    layout: &dyn IncrementalPlan,
    blobs: &mut dyn ReadyBlobs,
    out: &File,
    before_end: &dyn Fn() -> Result<()>,
) -> Result<u64> {
    let mut tar = TarStream { out, written: 0 };
    let mut written: Vec<String> = Vec::new();
    for entry in layout.leading() {
        tar.document(&entry)?;
        written.push(entry.path);
    }
    let mut infos = Vec::with_capacity(blobs.count());
    for index in 0..blobs.count() {
        let ready = blobs.next()?;
        let entry = layout.blob_entry(index, &ready.info);
        tar.blob_member(&entry, &ready)?;
        written.push(entry.path);
        infos.push(ready.info);
    }

    let plan = layout.complete(infos);
    let (head, rest) = plan.entries.split_at(written.len().min(plan.entries.len()));
    if head.iter().map(|e| &e.path).ne(written.iter()) {
        bail!("internal error: the archive plan does not begin with the entries written");
    }
    for entry in rest {
        tar.document(entry)?;
    }
    before_end()?;
    tar.write(&[0u8; 2 * tar::BLOCK as usize])?;
    Ok(tar.written)
}

/// A tar archive written sequentially.
struct TarStream<'a> {
    out: &'a File,
    written: u64,
}

impl TarStream<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).context("writing the archive")?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// A directory or an in-memory document.
    fn document(&mut self, entry: &PlanEntry) -> Result<()> {
        let (kind, bytes): (_, &[u8]) = match &entry.body {
            Body::Directory => (tar::Kind::Directory, &[]),
            Body::Bytes(bytes) => (tar::Kind::RegularFile, bytes),
            Body::Blob(_) => bail!("internal error: {} was not written in order", entry.path),
        };
        let size = bytes.len() as u64;
        self.write(&tar::header(&entry.path, kind, size, entry.mtime))?;
        self.write(bytes)?;
        self.pad(size)
    }

    /// A member holding a whole ready blob.
    fn blob_member(&mut self, entry: &PlanEntry, blob: &ReadyBlob) -> Result<()> {
        let size = blob.info.size;
        self.write(&tar::header(
            &entry.path,
            tar::Kind::RegularFile,
            size,
            entry.mtime,
        ))?;
        blob.copy_into(&mut self.out)
            .with_context(|| format!("copying {} into the archive", entry.path))?;
        self.written += size;
        self.pad(size)
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        self.write(&[0u8; tar::BLOCK as usize][..tar::padding(size) as usize])
    }
}
