//! A layer's unpacked files, for a layer whose blob the content store lacks.
//!
//! containerd unpacks layer `i` of an image into the overlayfs snapshot its namespace keys by
//! the chain ID of layers `0..=i`; the snapshotter keeps it under its own name in its
//! `metadata.db`, with the files in `snapshots/<id>/fs` (overlay whiteouts as 0/0 character
//! devices, opaque directories as `trusted.overlay.opaque=y`, which the regenerator turns back
//! into `.wh.` entries). Such a directory cannot give the layer's original bytes, only a new
//! tar (`--regenerate-missing`). Only the overlayfs snapshotter, Docker's, is read.

use std::cell::OnceCell;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::meta::{MetaDb, Root, SnapshotterDb};
use crate::digest::Digest;

/// The snapshotter Docker (and containerd by default) unpacks into.
pub const SNAPSHOTTER: &str = "overlayfs";

/// Finds committed snapshot directories, reading the snapshotter's database at most once.
pub struct Snapshots<'a> {
    root: &'a Root,
    meta: &'a MetaDb,
    namespace: &'a str,
    snapshotter: OnceCell<Option<SnapshotterDb>>,
}

impl<'a> Snapshots<'a> {
    pub fn new(root: &'a Root, meta: &'a MetaDb, namespace: &'a str) -> Self {
        Snapshots {
            root,
            meta,
            namespace,
            snapshotter: OnceCell::new(),
        }
    }

    /// The directory holding the files of the layer whose chain ID is `chain_id`, when the
    /// namespace has it as a committed overlayfs snapshot whose directory exists now.
    pub fn committed_dir(&self, chain_id: &Digest) -> Result<Option<PathBuf>> {
        let Some(record) =
            self.meta
                .snapshot(self.namespace, SNAPSHOTTER, &chain_id.to_string())?
        else {
            return Ok(None);
        };
        let snapshotter = match self.snapshotter.get() {
            Some(db) => db,
            None => {
                let overlayfs = self.root.overlayfs();
                let db = if overlayfs.join("metadata.db").is_file() {
                    Some(SnapshotterDb::read(&overlayfs)?)
                } else {
                    None
                };
                self.snapshotter.get_or_init(|| db)
            }
        };
        let Some(snapshotter) = snapshotter else {
            return Ok(None);
        };
        let Some(dir) = snapshotter
            .committed_fs_dir(&record.name)
            .with_context(|| format!("snapshot {} of layer chain {chain_id}", record.name))?
        else {
            return Ok(None);
        };
        // The two databases are read at different moments: the snapshot may be gone since.
        Ok(dir.is_dir().then_some(dir))
    }
}
