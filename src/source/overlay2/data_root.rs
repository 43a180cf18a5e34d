//! Finding and opening Docker's data root.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const DEFAULT_DATA_ROOT: &str = "/var/lib/docker";
const DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// The data root Docker uses here: `data-root` (or the legacy `graph`) from
/// `/etc/docker/daemon.json`, else `/var/lib/docker`.
pub fn default_data_root() -> PathBuf {
    daemon_json_data_root(Path::new(DAEMON_JSON))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_ROOT))
}

fn daemon_json_data_root(path: &Path) -> Option<PathBuf> {
    let text = std::fs::read(path).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
    ["data-root", "graph"]
        .iter()
        .find_map(|key| json.get(key)?.as_str().map(PathBuf::from))
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
                     the containerd image store by default, which oci-export does not read yet; \
                     a daemon using the overlay2 graphdriver store is needed",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_data_root_from_daemon_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("daemon.json");
        std::fs::write(&p, r#"{"data-root": "/mnt/docker", "debug": true}"#).unwrap();
        assert_eq!(
            daemon_json_data_root(&p),
            Some(PathBuf::from("/mnt/docker"))
        );
        std::fs::write(&p, r#"{"graph": "/old/place"}"#).unwrap();
        assert_eq!(daemon_json_data_root(&p), Some(PathBuf::from("/old/place")));
        std::fs::write(&p, r#"{"debug": true}"#).unwrap();
        assert_eq!(daemon_json_data_root(&p), None);
        assert_eq!(
            daemon_json_data_root(&dir.path().join("missing.json")),
            None
        );
    }
}
