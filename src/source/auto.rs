//! `--store auto`: the store Docker uses, found per image.
//!
//! Docker 29 keeps images in containerd's store on fresh installs and in its own overlay2 store
//! where that already holds images (moby `daemon/image_store_choice.go`), and a host may run
//! podman beside Docker. So `auto` opens every store that exists here and looks each name up in
//! them in that order: overlay2, containerd (namespace `--namespace`, in the roots Docker may
//! use: [`containerd::root::docker_roots`]), containers-storage. The first that holds the name
//! serves it, saying where when that was not the first (the obvious) one; a name in none of
//! them is one error naming every store looked in. daemon.json's
//! `features.containerd-snapshotter` decides between Docker's two: `false` keeps Docker on
//! overlay2, so containerd's store, which Docker does not use, is not read; `true` moves it to
//! containerd, which is then looked in first (an overlay2 store left from before the switch
//! may still hold stale copies of the same names).
//!
//! Whatever is opened, every store root found is one nothing may be written under, even one
//! that holds no images or cannot be read.
//!
//! containers-storage comes last, and only where its default graph root (as podman would find
//! it: storage.conf, else `/var/lib/containers/storage` or the rootless one) holds a store:
//! `--data-root` with `auto` is Docker's data root, and a Docker user's names are Docker's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, Result};

use super::containers_storage::ContainersStorageStore;
use super::daemon_json::DaemonJson;
use super::{containerd, data_root, overlay2, ImageStore, NotFound, SourceOptions};
use crate::model::Image;

/// Opens the stores that exist. With none but (possibly) Docker's, that store is opened
/// directly, so that its own messages (no such directory, not root, containerd mode) are the
/// ones the user sees.
pub fn open(options: &SourceOptions) -> Result<Box<dyn ImageStore>> {
    let docker_root = data_root(options);
    let daemon_json = DaemonJson::system();
    let found = containerd::root::docker_roots(&docker_root, &daemon_json);
    // With the snapshotter turned off in daemon.json Docker reads no containerd image store,
    // and neither do we; the stores are still there, and no output may go under them.
    let (read, unread) = if daemon_json.containerd_snapshotter == Some(false) {
        (Vec::new(), found)
    } else {
        (found, Vec::new())
    };
    open_in(
        options,
        &docker_root,
        &read,
        &unread,
        daemon_json.containerd_snapshotter == Some(true),
        containers_storage(),
    )
}

/// [`open`] for a Docker data root, the containerd roots to consider (those that exist), the
/// store roots not read but still never written under, and podman's store, if there is one.
///
/// A containerd whose namespace holds no images is left out: a dockerd on its graphdriver
/// store runs its own containerd for containers only, and its empty image store would only add
/// noise to every message. A store that cannot be read does not stop exports from the others:
/// it stays in the list as the reason it could not be looked in.
fn open_in(
    options: &SourceOptions,
    docker_root: &Path,
    containerd_roots: &[PathBuf],
    unread_roots: &[PathBuf],
    containerd_preferred: bool,
    podman: Option<Result<ContainersStorageStore, Unreadable>>,
) -> Result<Box<dyn ImageStore>> {
    let mut stores: Vec<Box<dyn ImageStore>> = Vec::new();
    let mut empty = None;
    let mut unreadable: Vec<Unreadable> = Vec::new();
    // Every root found, for the stores' `roots()`: outputs may go under none of them.
    let mut forbidden: Vec<PathBuf> = vec![docker_root.to_path_buf()];
    forbidden.extend(containerd_roots.iter().chain(unread_roots).cloned());
    if overlay2::Overlay2Store::present(docker_root) {
        match overlay2::Overlay2Store::open(docker_root) {
            Ok(store) => stores.push(Box::new(store)),
            // Not readable (a rootless user beside a root Docker): the other stores may still
            // hold the name; this error is the answer for names they do not.
            Err(error) => unreadable.push(Unreadable {
                description: format!("Docker's overlay2 store in {}", docker_root.display()),
                root: docker_root.to_path_buf(),
                error,
            }),
        }
    }
    let containerd_first = containerd_preferred && !stores.is_empty();
    for root in containerd_roots {
        let opened =
            containerd::ContainerdStore::open(root, &options.namespace, options.platform.clone())
                .and_then(|store| Ok((store.holds_images()?, store)));
        match opened {
            Ok((true, store)) => stores.push(Box::new(store)),
            Ok((false, store)) => {
                empty.get_or_insert(store);
            }
            Err(error) => unreadable.push(Unreadable {
                description: format!(
                    "containerd's image store in {} (namespace {})",
                    root.display(),
                    options.namespace
                ),
                root: root.clone(),
                error,
            }),
        }
    }
    if containerd_first {
        // Docker uses containerd: its store comes before the overlay2 store it left behind.
        stores.rotate_left(1);
    }
    match podman {
        None => {}
        Some(Ok(store)) => {
            forbidden.extend(store.roots());
            stores.push(Box::new(store));
        }
        Some(Err(store)) => {
            forbidden.push(store.root.clone());
            unreadable.push(store);
        }
    }
    let chosen: Box<dyn ImageStore> = match (stores.len(), unreadable.len(), empty) {
        // Nothing holds images: the store whose own message says best why.
        (0, 0, Some(empty)) => Box::new(empty),
        (0, 0, None) => Box::new(overlay2::Overlay2Store::open(docker_root)?),
        // Only stores that cannot be read: the first one's own error is the one to see.
        (0, _, _) => return Err(unreadable.remove(0).error),
        (1, 0, _) => stores.pop().expect("one store"),
        _ => Box::new(AutoStore {
            stores: stores
                .into_iter()
                .chain(
                    unreadable
                        .into_iter()
                        .map(|u| Box::new(u) as Box<dyn ImageStore>),
                )
                .collect(),
            chosen: Mutex::new(HashMap::new()),
        }),
    };
    Ok(Box::new(Forbidding {
        store: chosen,
        forbidden,
    }))
}

/// A store, with more roots nothing may be written under than its own: every store `auto`
/// found, whichever serves the images.
struct Forbidding {
    store: Box<dyn ImageStore>,
    forbidden: Vec<PathBuf>,
}

impl ImageStore for Forbidding {
    fn describe(&self) -> String {
        self.store.describe()
    }

    fn roots(&self) -> Vec<PathBuf> {
        let mut roots = self.store.roots();
        for root in &self.forbidden {
            if !roots.contains(root) {
                roots.push(root.clone());
            }
        }
        roots
    }

    fn lookup(&self, input: &str) -> Result<Vec<Image>> {
        self.store.lookup(input)
    }

    fn confirm_unchanged(&self, input: &str, image: &Image) -> Result<()> {
        self.store.confirm_unchanged(input, image)
    }
}

/// podman's store, where its default graph root holds one (a storage.conf that cannot be read
/// names none). One that cannot be opened (not root, an unreadable store) must not stop
/// exports from Docker's stores: its error is the answer only for names no other store holds.
fn containers_storage() -> Option<Result<ContainersStorageStore, Unreadable>> {
    let config = ContainersStorageStore::default_config().ok()?;
    if !ContainersStorageStore::present(&config.graph_root) {
        return None;
    }
    Some(
        ContainersStorageStore::open_config(&config).map_err(|error| Unreadable {
            description: format!("containers-storage in {}", config.graph_root.display()),
            root: config.graph_root.clone(),
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
