//! Storage sources: find an image in an engine's on-disk storage and describe it as
//! [`crate::model::Image`]s.
//!
//! Each engine layout is one module behind [`ImageStore`]: Docker's overlay2 graphdriver store
//! (`overlay2`), containerd's content store (`containerd`: Docker 29's default, nerdctl, k3s)
//! and containers-storage (`containers_storage`: podman, buildah, CRI-O). The first and last
//! keep tar-split records beside the layers' files; containerd keeps the blobs as pulled.
//! [`open`] picks the store the user asked for, or with `--store auto` the one that holds the
//! image ([`auto`]).

mod auto;
pub mod containerd;
pub mod containers_storage;
pub mod daemon_json;
pub mod names;
pub mod overlay2;
pub mod platform;

use std::path::PathBuf;

use anyhow::Result;
use clap::ValueEnum;

use crate::model::Image;
pub use platform::{Platform, PlatformChoice};

/// An engine's image storage, opened read-only.
pub trait ImageStore: Sync {
    /// What the store is and where, for messages: "Docker's overlay2 store in /var/lib/docker".
    fn describe(&self) -> String;

    /// The directories nothing may ever be written under: the store's root and any other root
    /// it reads from. Outputs, caches and scratch files there are refused.
    fn roots(&self) -> Vec<PathBuf>;

    /// Resolves what a user typed (a name, `name:tag`, `name@sha256:…`, a full or short image
    /// ID) to the image it names: one per selected platform, where the store keeps several
    /// platforms of one image (always one for stores without platforms). A name the store does
    /// not hold is a [`NotFound`] error, so that `--store auto` can look elsewhere.
    fn lookup(&self, input: &str) -> Result<Vec<Image>>;

    /// Re-reads the image's identity from storage just before the export commits, so that an
    /// image removed or re-tagged during the export is reported instead of silently exported.
    fn confirm_unchanged(&self, input: &str, image: &Image) -> Result<()>;
}

/// The store does not hold what was asked for. The message says so, with the closest names the
/// store has (see [`names::closest`]).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NotFound {
    pub message: String,
}

impl NotFound {
    pub fn error(message: impl Into<String>) -> anyhow::Error {
        NotFound {
            message: message.into(),
        }
        .into()
    }
}

/// Which store to read (`--store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// The store Docker uses: its overlay2 store where that holds the image, else containerd's;
    /// then podman's default containers-storage store.
    Auto,
    /// Docker's overlay2 graphdriver store (`--data-root`: Docker's data root).
    Overlay2,
    /// containerd's image store (`--data-root`: containerd's root).
    Containerd,
    /// containers-storage, as podman, buildah and CRI-O keep images (`--data-root`: the graph
    /// root).
    ContainersStorage,
}

/// Where and how to look for images.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub kind: StoreKind,
    /// `--data-root`: the chosen store's root. With `auto`, Docker's data root.
    pub root: Option<PathBuf>,
    /// containerd's namespace (`moby` for Docker, `k8s.io` for Kubernetes).
    pub namespace: String,
    /// Which platforms of a multi-platform image to take.
    pub platform: PlatformChoice,
}

/// The default containerd namespace: Docker's.
pub const DEFAULT_NAMESPACE: &str = "moby";

/// Opens the store `options` ask for.
pub fn open(options: &SourceOptions) -> Result<Box<dyn ImageStore>> {
    match options.kind {
        StoreKind::Overlay2 => Ok(Box::new(overlay2::Overlay2Store::open(&data_root(
            options,
        ))?)),
        StoreKind::Auto => auto::open(options),
        StoreKind::Containerd => Ok(Box::new(containerd::ContainerdStore::open(
            &containerd_root(options),
            &options.namespace,
            options.platform.clone(),
        )?)),
        StoreKind::ContainersStorage => Ok(Box::new(
            containers_storage::ContainersStorageStore::open(options.root.as_deref())?,
        )),
    }
}

/// The roots of every store this machine has by default (Docker's data root, `docker_root` if
/// given; the containerd roots Docker may use; podman's graph root), whether or not they hold
/// anything: for what opens no store (`cache ls|prune`) but must still write under none.
pub fn default_roots(docker_root: Option<PathBuf>) -> Vec<PathBuf> {
    let docker_root = docker_root.unwrap_or_else(overlay2::default_data_root);
    let mut roots =
        containerd::root::docker_roots(&docker_root, &daemon_json::DaemonJson::system());
    roots.insert(0, docker_root);
    roots.extend(
        containers_storage::ContainersStorageStore::default_config()
            .ok()
            .map(|config| config.graph_root),
    );
    roots
}

/// containerd's root: `--data-root`, else the one Docker uses (see [`containerd::root`]).
fn containerd_root(options: &SourceOptions) -> PathBuf {
    options.root.clone().unwrap_or_else(|| {
        containerd::root::default_root(
            &overlay2::default_data_root(),
            &daemon_json::DaemonJson::system(),
        )
    })
}

/// Docker's data root: `--data-root`, else what the daemon is configured with.
fn data_root(options: &SourceOptions) -> PathBuf {
    options
        .root
        .clone()
        .unwrap_or_else(overlay2::default_data_root)
}
