//! containerd's image store (Docker 29's default, nerdctl, k3s), read straight from disk.
//!
//! ```text
//! <root>/io.containerd.metadata.v1.bolt/meta.db                  images, content, snapshots,
//!                                                                leases per namespace (bbolt)
//! <root>/io.containerd.content.v1.content/blobs/sha256/<hex>     the blobs, shared by all
//!                                                                namespaces
//! <root>/io.containerd.snapshotter.v1.overlayfs/metadata.db      snapshot key → id, kind, parent
//! <root>/io.containerd.snapshotter.v1.overlayfs/snapshots/<id>/fs  one unpacked layer each
//! ```
//!
//! containerd holds an exclusive lock on both databases while it runs; [`bolt`] reads them
//! anyway, consistently and without the lock, and [`meta`] gives their contents types. On top:
//! [`root`] finds the root Docker uses, [`resolve`] turns a name or ID into an image record,
//! [`manifests`] reads and verifies its index, manifests and configs and picks platforms,
//! [`image`] makes them [`Image`]s whose layers are the stored blobs, and [`snapshots`] finds
//! the unpacked files of a layer whose blob is gone. Nothing under the root is ever written.

pub mod bolt;
mod image;
pub mod manifests;
pub mod meta;
pub mod resolve;
pub mod root;
mod snapshots;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::model::{Image, LayerContent};
use crate::source::platform::PlatformChoice;
use crate::source::{ImageStore, NotFound};
use manifests::Documents;
use meta::{MetaDb, Root};
use snapshots::Snapshots;

/// containerd's image store under a root, one namespace of it.
pub struct ContainerdStore {
    root: Root,
    namespace: String,
    platform: PlatformChoice,
    /// One consistent snapshot of meta.db, read at open: every input of one export is resolved
    /// against the same state.
    meta: MetaDb,
}

impl ContainerdStore {
    /// Opens the store under containerd root `root`, reading namespace `namespace`, with clear
    /// messages for the usual reasons it cannot be read (wrong path, not root).
    pub fn open(root: &Path, namespace: &str, platform: PlatformChoice) -> Result<Self> {
        let root = Root::new(root);
        let meta_db = root.meta_db();
        match std::fs::metadata(&meta_db) {
            Ok(m) if m.is_file() => {}
            Ok(_) => bail!("{} is not a file", meta_db.display()),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
                "permission denied reading {}: containerd's root is readable by root only; run \
                 oci-export as root (e.g. with sudo)",
                meta_db.display()
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if !root.path.exists() {
                    bail!(
                        "containerd root {} does not exist (set it with --data-root)",
                        root.path.display()
                    );
                }
                bail!(
                    "{} does not look like a containerd root: {} is missing",
                    root.path.display(),
                    meta_db.display()
                );
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", meta_db.display())),
        }
        let meta = MetaDb::read(&meta_db)?;
        Ok(ContainerdStore {
            root,
            namespace: namespace.to_string(),
            platform,
            meta,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root.path
    }

    /// Whether the namespace holds any image.
    pub fn holds_images(&self) -> Result<bool> {
        Ok(!self.meta.images(&self.namespace)?.is_empty())
    }

    fn documents<'a>(&'a self, meta: &'a MetaDb) -> Documents<'a> {
        Documents {
            root: &self.root,
            meta,
            namespace: &self.namespace,
        }
    }
}

impl ImageStore for ContainerdStore {
    fn describe(&self) -> String {
        format!(
            "containerd's image store in {} (namespace {})",
            self.root.path.display(),
            self.namespace
        )
    }

    fn roots(&self) -> Vec<PathBuf> {
        vec![self.root.path.clone()]
    }

    fn lookup(&self, input: &str) -> Result<Vec<Image>> {
        let docs = self.documents(&self.meta);
        let resolved = resolve::resolve(&docs, input)?;
        let snapshots = Snapshots::new(&self.root, &self.meta, &self.namespace);
        image::load(&docs, &snapshots, &resolved, &self.platform)
    }

    fn confirm_unchanged(&self, input: &str, image: &Image) -> Result<()> {
        let fresh = MetaDb::read(&self.root.meta_db())?;
        let docs = self.documents(&fresh);
        let now = match resolve::resolve(&docs, input) {
            Ok(resolved) => resolved.record,
            Err(e) if e.is::<NotFound>() => {
                bail!("{input} was removed during the export ({e})")
            }
            Err(e) => return Err(e),
        };
        let stored = image
            .stored
            .as_ref()
            .expect("containerd images keep their manifest");
        let target = stored.index.as_ref().unwrap_or(&stored.manifest).digest();
        if now.target.digest != target {
            bail!(
                "{input} changed during the export: it now names {} instead of {target}; the \
                 output does not describe the current image",
                now.target.digest
            );
        }
        // Every blob the output used must still be there: one removed meanwhile may have been
        // read in full (an open file outlives its name), but the store no longer holds the
        // image the output claims to be.
        let mut blobs = vec![
            (target, "its target".to_string()),
            (image.id, "its config".into()),
        ];
        blobs.push((stored.manifest.digest(), "its manifest".into()));
        for layer in &image.layers {
            if let LayerContent::Blob(blob) = &layer.content {
                blobs.push((blob.digest, layer.origin.clone()));
            }
        }
        for (digest, what) in blobs {
            let held = fresh.blob(&self.namespace, &digest)?.is_some();
            if !held || !self.root.blob(&digest).is_file() {
                bail!(
                    "{input}: {what}, blob {digest}, was removed from the content store during \
                     the export"
                );
            }
        }
        Ok(())
    }
}
