//! Docker's overlay2 graphdriver image store (the default before Docker 29).
//!
//! ```text
//! <data-root>/image/overlay2/repositories.json            tags → image IDs
//! <data-root>/image/overlay2/imagedb/content/sha256/<id>  image configs (sha256(file) == id)
//! <data-root>/image/overlay2/layerdb/sha256/<chainID>/    diff, cache-id, tar-split.json.gz
//! <data-root>/overlay2/<cache-id>/diff/                   the layer's files
//! ```
//!
//! Everything here is opened read-only; nothing is ever written under the data root.

mod data_root;
mod distribution;
mod layerdb;
mod repositories;
mod resolve;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub use data_root::default_data_root;
use repositories::Repositories;

use crate::model::Image;
use crate::source::ImageStore;

/// A Docker overlay2 image store under a data root.
pub struct Overlay2Store {
    data_root: PathBuf,
    image_root: PathBuf,
    repositories: Repositories,
}

impl Overlay2Store {
    /// Opens the store under `data_root`, with clear messages for the usual reasons it cannot be
    /// read (not root, Docker's containerd image store, wrong path).
    pub fn open(data_root: &Path) -> Result<Self> {
        let image_root = data_root.join("image").join("overlay2");
        data_root::check_readable(data_root, &image_root)?;
        let repositories = Repositories::load(&image_root.join("repositories.json"))?;
        Ok(Overlay2Store {
            data_root: data_root.to_path_buf(),
            image_root,
            repositories,
        })
    }

    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    /// Whether `data_root` has an overlay2 image store (or one we may not read, which
    /// [`Overlay2Store::open`] then explains).
    pub fn present(data_root: &Path) -> bool {
        match std::fs::metadata(data_root.join("image").join("overlay2")) {
            Ok(meta) => meta.is_dir(),
            Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
        }
    }
}

impl ImageStore for Overlay2Store {
    fn describe(&self) -> String {
        format!("Docker's overlay2 store in {}", self.data_root.display())
    }

    fn roots(&self) -> Vec<PathBuf> {
        vec![self.data_root.clone()]
    }

    fn lookup(&self, input: &str) -> Result<Vec<Image>> {
        let found = resolve::resolve(self, input)?;
        Ok(vec![layerdb::load_image(self, found.id, found.tag)?])
    }

    fn confirm_unchanged(&self, input: &str, image: &Image) -> Result<()> {
        // Re-read repositories.json: a `docker tag`/`docker rmi` rewrites it atomically.
        let fresh = Overlay2Store::open(&self.data_root)?;
        let found = resolve::resolve(&fresh, input)?;
        if found.id != image.id {
            bail!(
                "{input} changed during the export: it now names image {} instead of {}; the \
                 output does not describe the current image",
                found.id,
                image.id
            );
        }
        layerdb::confirm_layers_present(self, image)
    }
}
