//! What `/etc/docker/daemon.json` says about where Docker keeps images: its data root, the
//! containerd it talks to, and whether it uses containerd's image store.
//!
//! Both stores read it (overlay2 for the data root, containerd and `--store auto` for which
//! containerd root Docker uses), so it is read in one place. A missing or malformed file means
//! Docker's defaults, as dockerd itself would fail to start on a malformed one and so holds no
//! images we could miss.

use std::path::{Path, PathBuf};

/// Where dockerd reads its configuration.
pub const DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// The settings of daemon.json oci-export cares about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DaemonJson {
    /// `data-root` (or the legacy `graph`).
    pub data_root: Option<PathBuf>,
    /// `containerd`: the socket of a containerd dockerd uses instead of starting its own.
    pub containerd_socket: Option<PathBuf>,
    /// `features.containerd-snapshotter`: `Some(true)` forces containerd's image store,
    /// `Some(false)` Docker's own (overlay2) store; `None` lets Docker 29 choose.
    pub containerd_snapshotter: Option<bool>,
}

impl DaemonJson {
    /// Reads `/etc/docker/daemon.json`.
    pub fn system() -> DaemonJson {
        DaemonJson::read(Path::new(DAEMON_JSON))
    }

    /// Reads daemon.json at `path`; missing or malformed gives the defaults.
    pub fn read(path: &Path) -> DaemonJson {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| DaemonJson::parse(&bytes))
            .unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Option<DaemonJson> {
        let json: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let path = |key: &str| json.get(key)?.as_str().map(PathBuf::from);
        Some(DaemonJson {
            data_root: path("data-root").or_else(|| path("graph")),
            containerd_socket: path("containerd").filter(|p| !p.as_os_str().is_empty()),
            containerd_snapshotter: json
                .get("features")
                .and_then(|f| f.get("containerd-snapshotter"))
                .and_then(serde_json::Value::as_bool),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_matters() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("daemon.json");
        std::fs::write(
            &p,
            r#"{"data-root": "/mnt/docker", "debug": true, "containerd": "/run/c.sock",
                "features": {"containerd-snapshotter": false, "other": true}}"#,
        )
        .unwrap();
        assert_eq!(
            DaemonJson::read(&p),
            DaemonJson {
                data_root: Some(PathBuf::from("/mnt/docker")),
                containerd_socket: Some(PathBuf::from("/run/c.sock")),
                containerd_snapshotter: Some(false),
            }
        );
        std::fs::write(&p, r#"{"graph": "/old/place"}"#).unwrap();
        assert_eq!(
            DaemonJson::read(&p).data_root,
            Some(PathBuf::from("/old/place"))
        );
        std::fs::write(&p, r#"{"features": {"containerd-snapshotter": true}}"#).unwrap();
        assert_eq!(DaemonJson::read(&p).containerd_snapshotter, Some(true));
        std::fs::write(&p, r#"{"debug": true"#).unwrap();
        assert_eq!(DaemonJson::read(&p), DaemonJson::default());
        assert_eq!(
            DaemonJson::read(&dir.path().join("missing.json")),
            DaemonJson::default()
        );
    }
}
