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
