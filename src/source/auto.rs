//! `--store auto`: the store Docker uses, found per image.
//!
//! Docker 29 keeps images in containerd's store on fresh installs and in its own overlay2 store
//! where that already holds images (moby `daemon/image_store_choice.go`), and a host may run
//! podman beside Docker. So `auto` opens every store that exists here and looks each name up in
//! them in that order: overlay2, containerd, containers-storage. The first that holds the name
//! serves it; a name in none of them is one error naming every store looked in.
//!
//! containers-storage comes last, and only where its default graph root (as podman would find
//! it: storage.conf, else `/var/lib/containers/storage` or the rootless one) holds a store:
//! `--data-root` with `auto` is Docker's data root, and a Docker user's names are Docker's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{anyhow, Result};

use super::containers_storage::ContainersStorageStore;
use super::{data_root, overlay2, ImageStore, NotFound, SourceOptions};
use crate::model::Image;

/// Opens the stores that exist. With none but (possibly) Docker's, that store is opened
/// directly, so that its own messages (no such directory, not root, containerd mode) are the
/// ones the user sees.
pub fn open(options: &SourceOptions) -> Result<Box<dyn ImageStore>> {
    let docker_root = data_root(options);
    let mut stores: Vec<Box<dyn ImageStore>> = Vec::new();
    if overlay2::Overlay2Store::present(&docker_root) {
        stores.push(Box::new(overlay2::Overlay2Store::open(&docker_root)?));
    }
    match containers_storage() {
        None => {}
        Some(Ok(store)) => stores.push(Box::new(store)),
        // The only store here: its own error is the one to see.
        Some(Err(unreadable)) if stores.is_empty() => return Err(unreadable.error),
        Some(Err(unreadable)) => stores.push(Box::new(unreadable)),
    }
    match stores.len() {
        0 => Ok(Box::new(overlay2::Overlay2Store::open(&docker_root)?)),
        1 => Ok(stores.pop().expect("one store")),
        _ => Ok(Box::new(AutoStore {
            stores,
            chosen: Mutex::new(HashMap::new()),
        })),
    }
}

/// podman's store, where its default graph root holds one. One that cannot be opened (not
/// root, a broken storage.conf) must not stop exports from Docker's stores: its error is the
/// answer only for names no other store holds.
fn containers_storage() -> Option<Result<ContainersStorageStore, Unreadable>> {
    let graph_root = ContainersStorageStore::default_graph_root().ok()?;
    if !ContainersStorageStore::present(&graph_root) {
        return None;
    }
    Some(
        ContainersStorageStore::open(None).map_err(|error| Unreadable {
            description: format!("containers-storage in {}", graph_root.display()),
            root: graph_root,
            error,
        }),
    )
}

/// A store that exists but cannot be read.
struct Unreadable {
    description: String,
    root: PathBuf,
    error: anyhow::Error,
}

impl ImageStore for Unreadable {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn roots(&self) -> Vec<PathBuf> {
        vec![self.root.clone()]
    }

    fn lookup(&self, _input: &str) -> Result<Vec<Image>> {
        Err(NotFound::error(format!("cannot be read: {:#}", self.error)))
    }

    fn confirm_unchanged(&self, input: &str, _image: &Image) -> Result<()> {
        Err(anyhow!(
            "internal error: {input} cannot come from {}",
            self.description
        ))
    }
}

/// Several stores, each name looked up in order.
struct AutoStore {
    stores: Vec<Box<dyn ImageStore>>,
    /// Which store served each input, for [`ImageStore::confirm_unchanged`].
    chosen: Mutex<HashMap<String, usize>>,
}

impl ImageStore for AutoStore {
    fn describe(&self) -> String {
        let all: Vec<String> = self.stores.iter().map(|s| s.describe()).collect();
        all.join(", ")
    }

    fn roots(&self) -> Vec<PathBuf> {
        self.stores.iter().flat_map(|s| s.roots()).collect()
    }

    fn lookup(&self, input: &str) -> Result<Vec<Image>> {
        let mut misses = Vec::new();
        for (index, store) in self.stores.iter().enumerate() {
            match store.lookup(input) {
                Ok(images) => {
                    if index > 0 {
                        // Not the store a Docker user would look in first: say where it was.
                        crate::progress::note(&format!("{input}: found in {}", store.describe()));
                    }
                    self.chosen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(input.to_string(), index);
                    return Ok(images);
                }
                Err(e) if e.is::<NotFound>() => misses.push(format!("{}: {e}", store.describe())),
                Err(e) => return Err(e),
            }
        }
        Err(NotFound::error(format!(
            "no such image: {input}, in any store here ({})",
            misses.join("; ")
        )))
    }

    fn confirm_unchanged(&self, input: &str, image: &Image) -> Result<()> {
        let index = *self
            .chosen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(input)
            .ok_or_else(|| anyhow!("internal error: {input} was never looked up"))?;
        self.stores[index].confirm_unchanged(input, image)
    }
}
