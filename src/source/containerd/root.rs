//! Which containerd root to read, and whether one is there.
//!
//! dockerd talks to the system containerd when it is told to (`--containerd`, daemon.json's
//! `containerd`; Debian's and Docker's packages pass `--containerd=/run/containerd/containerd.sock`)
//! or finds its socket running, and otherwise starts its own, rooted in
//! `<docker data root>/containerd/daemon` (moby `cmd/dockerd/daemon.go`, `initContainerd`).
//! The system containerd's root is `root` from `/etc/containerd/config.toml`, else
//! `/var/lib/containerd`. Which one served Docker last cannot be known while Docker is down,
//! so `--store auto` reads every one that exists, the likelier first ([`docker_roots`]).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::meta::Root;
use crate::source::daemon_json::DaemonJson;

/// containerd's root when its config does not say otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/containerd";
/// Where the system containerd reads its configuration.
pub const CONFIG_TOML: &str = "/etc/containerd/config.toml";

/// The system containerd's root: `root` from its config.toml, else `/var/lib/containerd`.
pub fn system_root() -> PathBuf {
    std::fs::read_to_string(CONFIG_TOML)
        .ok()
        .and_then(|text| config_root(&text))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// The top-level `root = "…"` of a containerd config.toml. Only keys before the first table
/// header are top-level; containerd's own config only ever writes a basic string there.
fn config_root(text: &str) -> Option<PathBuf> {
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            return None;
        }
        let Some(rest) = line.strip_prefix("root") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.trim();
        let value = value.split_once(" #").map_or(value, |(v, _)| v).trim_end();
        let quoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))?;
        return (!quoted.is_empty() && !quoted.contains('\\')).then(|| PathBuf::from(quoted));
    }
    None
}

/// The root of the containerd dockerd starts itself under `docker_root`.
pub fn supervised_root(docker_root: &Path) -> PathBuf {
    docker_root.join("containerd").join("daemon")
}

/// The containerd roots Docker may be using, the likelier first: the system containerd's when
/// daemon.json names a containerd socket, else the one dockerd supervises when it has one on
/// disk, then the other. Only roots that hold a metadata database (see [`present`]) are given.
pub fn docker_roots(docker_root: &Path, daemon_json: &DaemonJson) -> Vec<PathBuf> {
    let supervised = supervised_root(docker_root);
    let system = system_root();
    let mut roots = if daemon_json.containerd_socket.is_some() {
        vec![system, supervised]
    } else {
        vec![supervised, system]
    };
    roots.dedup();
    roots.retain(|root| present(root));
    roots
}

/// The root `--store containerd` reads without `--data-root`: the one Docker uses
/// ([`docker_roots`]), else the system containerd's.
pub fn default_root(docker_root: &Path, daemon_json: &DaemonJson) -> PathBuf {
    docker_roots(docker_root, daemon_json)
        .into_iter()
        .next()
        .unwrap_or_else(system_root)
}

/// Whether `root` holds containerd's metadata database (or one we may not read, which opening
/// the store then explains).
pub fn present(root: &Path) -> bool {
    match std::fs::metadata(Root::new(root).meta_db()) {
        Ok(meta) => meta.is_file(),
        Err(e) => e.kind() == ErrorKind::PermissionDenied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_from_config_toml() {
        assert_eq!(
            config_root("version = 2\nroot = \"/data/containerd\"\nstate = \"/run/x\"\n"),
            Some(PathBuf::from("/data/containerd"))
        );
        assert_eq!(
            config_root("root='/a/b' # moved\n[plugins]\n"),
            Some(PathBuf::from("/a/b"))
        );
        // Keys inside tables are not the top-level root.
        assert_eq!(
            config_root("version = 2\n[plugins.x]\n  root = \"/elsewhere\"\n"),
            None
        );
        assert_eq!(config_root("rootless = true\n"), None);
        assert_eq!(config_root("root = \"\"\n"), None);
        assert_eq!(config_root(""), None);
    }

    #[test]
    fn roots_docker_may_use() {
        let docker = tempfile::tempdir().unwrap();
        assert!(docker_roots(docker.path(), &DaemonJson::default()).is_empty());
        let supervised = supervised_root(docker.path());
        assert!(!present(&supervised));
        let db = Root::new(&supervised).meta_db();
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        std::fs::write(&db, b"").unwrap();
        assert!(present(&supervised));
        let roots = docker_roots(docker.path(), &DaemonJson::default());
        assert_eq!(roots.first(), Some(&supervised));
        assert_eq!(
            default_root(docker.path(), &DaemonJson::default()),
            supervised
        );
        // Told to use another containerd, Docker's own is only the fallback.
        let told = DaemonJson {
            containerd_socket: Some("/run/containerd/containerd.sock".into()),
            ..DaemonJson::default()
        };
        assert_eq!(docker_roots(docker.path(), &told).last(), Some(&supervised));
    }
}
