//! An output described before it is produced: named entries in final order, every size known.

use crate::digest::Digest;

/// Media types written into manifests.
pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
}

/// A blob whose bytes are produced by the writer (a layer), with its identity known up front.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub media_type: &'static str,
}

/// What an entry holds.
#[derive(Debug, Clone)]
pub enum Body {
    Directory,
    /// A small document (config, manifest, index), held in memory.
    Bytes(Vec<u8>),
    /// A layer blob, by index into [`Plan::blobs`]; produced while writing.
    Blob(usize),
}

#[derive(Debug, Clone)]
pub struct PlanEntry {
    /// Path relative to the output root; directories end in `/`.
    pub path: String,
    /// Modification time for archive formats, in Unix seconds.
    pub mtime: i64,
    pub body: Body,
}

/// An output in final order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub entries: Vec<PlanEntry>,
    pub blobs: Vec<BlobInfo>,
}

impl Plan {
    /// The number of content bytes an entry holds.
    pub fn body_size(&self, body: &Body) -> u64 {
        match body {
            Body::Directory => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::Blob(i) => self.blobs[*i].size,
        }
    }
}

/// A finished layer blob in a file, copied out whole (a compressed layer in the blob cache).
#[derive(Debug)]
pub struct ReadyBlob {
    pub info: BlobInfo,
    /// Open at the blob's start; its bytes are the ones the digest was computed over.
    pub file: std::fs::File,
}

impl ReadyBlob {
    /// Copies the whole blob from its file's current offset to `out`. Generic rather than
    /// `dyn Write` so that `std::io::copy` can see both ends are files or pipes and let the
    /// kernel move the bytes (`copy_file_range`, `sendfile`, `splice`).
    pub fn copy_into<W: std::io::Write>(&self, out: &mut W) -> anyhow::Result<()> {
        use std::io::Read;
        let size = self.info.size;
        let copied = std::io::copy(&mut (&self.file).take(size), out)?;
        if copied != size {
            anyhow::bail!(
                "{}: the blob file holds {copied} of its {size} bytes",
                self.info.digest
            );
        }
        Ok(())
    }
}

/// Layer blobs that become ready one at a time, in index order; `next` waits for the next one.
pub trait ReadyBlobs {
    fn count(&self) -> usize;
    fn next(&mut self) -> anyhow::Result<ReadyBlob>;
}

/// An output whose layer blobs are only known one by one (compressed layers): what comes
/// before them, each blob's entry, and everything else once all are known. Writing it needs no
/// blob to wait for another, so each can leave as soon as it is made.
pub trait IncrementalPlan {
    /// The entries before the first layer blob (directories).
    fn leading(&self) -> Vec<PlanEntry>;
    /// The entry of layer blob `index`.
    fn blob_entry(&self, index: usize, blob: &BlobInfo) -> PlanEntry;
    /// The whole plan. Its entries begin with [`leading`](Self::leading) followed by every
    /// layer blob's entry in index order.
    fn complete(&self, blobs: Vec<BlobInfo>) -> Plan;
}
