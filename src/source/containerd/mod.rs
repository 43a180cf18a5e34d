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
//! anyway, consistently and without the lock, and [`meta`] gives their contents types.
//! Nothing under the root is ever written.

pub mod bolt;
pub mod meta;
