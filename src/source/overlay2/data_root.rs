//! Finding and opening Docker's data root.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::source::daemon_json::DaemonJson;

const DEFAULT_DATA_ROOT: &str = "/var/lib/docker";

/// The data root Docker uses here: `data-root` (or the legacy `graph`) from
/// `/etc/docker/daemon.json`, else `/var/lib/docker`.
pub fn default_data_root() -> PathBuf {
    DaemonJson::system()
        .data_root
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_ROOT))
}

/// Checks that the overlay2 image store exists and can be read, explaining the common failures.
pub fn check_readable(data_root: &Path, image_root: &Path) -> Result<()> {
    match std::fs::metadata(image_root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => bail!("{} is not a directory", image_root.display()),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "permission denied reading {}: Docker's data root is readable by root only; run \
             oci-export as root (e.g. with sudo)",
            image_root.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let containerd_store =
                data_root.join("containerd").exists() || data_root.join("image").exists();
            if !data_root.exists() {
                bail!(
                    "Docker data root {} does not exist (set it with --data-root)",
                    data_root.display()
                );
            }
            if containerd_store {
                bail!(
                    "{} has no overlay2 image store ({} is missing). Docker 29+ keeps images in \
                     containerd's image store by default: read it with --store containerd (or \
                     --store auto, which finds the containerd root Docker uses)",
                    data_root.display(),
                    image_root.display()
                );
            }
            bail!(
                "{} does not look like a Docker data root: {} is missing",
                data_root.display(),
                image_root.display()
            );
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", image_root.display()));
        }
    }
    // Listing the directory proves we have read and search permission, not just stat.
    std::fs::read_dir(image_root).map_err(|e| {
        if e.kind() == ErrorKind::PermissionDenied {
            anyhow::anyhow!(
                "permission denied listing {}: reading Docker's data root needs root",
                image_root.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("cannot list {}", image_root.display()))
        }
    })?;
    Ok(())
}
