//! Where things are inside one store directory (a graph root or an additional image store),
//! per driver. containers-storage prefixes its metadata directories with the driver's name
//! (`store.go`: `driverPrefix`), so one graph root can hold stores of several drivers side by
//! side; each is a different set of images.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The graph drivers whose layers oci-export can read: both keep each layer's tar-split record
/// beside a directory of its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `overlay/<id>/diff`: the files this layer added or changed.
    Overlay,
    /// `vfs/dir/<id>`: the whole root filesystem as of this layer (tar-split names only this
    /// layer's members, so the replay reads only those).
    Vfs,
}

const DRIVERS: [Driver; 2] = [Driver::Overlay, Driver::Vfs];

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Overlay => "overlay",
            Driver::Vfs => "vfs",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        DRIVERS.into_iter().find(|d| d.name() == name)
    }
}

/// One store directory and its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDir {
    pub root: PathBuf,
    pub driver: Driver,
}

impl StoreDir {
    /// `<driver>-images/`: images.json, images.lock and one big-data directory per image.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join(format!("{}-images", self.driver.name()))
    }

    /// `<driver>-layers/`: layers.json, layers.lock and `<id>.tar-split.gz`.
    pub fn layers_dir(&self) -> PathBuf {
        self.root.join(format!("{}-layers", self.driver.name()))
    }

    pub fn images_json(&self) -> PathBuf {
        self.images_dir().join("images.json")
    }

    pub fn layers_json(&self) -> PathBuf {
        self.layers_dir().join("layers.json")
    }

    /// The lock files guarding layers.json and images.json, in the order containers-storage
    /// takes them when it holds both (`store.go` writeToAllStores: layers, then images).
    pub fn lock_files(&self) -> [PathBuf; 2] {
        [
            self.layers_dir().join("layers.lock"),
            self.images_dir().join("images.lock"),
        ]
    }

    /// The image's big-data directory. `id` must have passed [`check_id`].
    pub fn big_data_dir(&self, image_id: &str) -> PathBuf {
        self.images_dir().join(image_id)
    }

    /// The layer's tar-split record. `id` must have passed [`check_id`].
    pub fn tar_split(&self, layer_id: &str) -> PathBuf {
        self.layers_dir().join(format!("{layer_id}.tar-split.gz"))
    }

    /// The directory holding the layer's member files. `id` must have passed [`check_id`].
    pub fn layer_files(&self, layer_id: &str) -> PathBuf {
        match self.driver {
            Driver::Overlay => self.root.join("overlay").join(layer_id).join("diff"),
            Driver::Vfs => self.root.join("vfs").join("dir").join(layer_id),
        }
    }

    /// Where a composefs layer keeps its image (containers-storage `drivers/overlay`
    /// `composefs-data/composefs.blob`): its files directory then holds content-addressed
    /// objects, not the tar's paths.
    pub fn composefs_blob(&self, layer_id: &str) -> Option<PathBuf> {
        match self.driver {
            Driver::Overlay => Some(
                self.root
                    .join("overlay")
                    .join(layer_id)
                    .join("composefs-data/composefs.blob"),
            ),
            Driver::Vfs => None,
        }
    }
}

/// Layer and image IDs become path components: anything but a plain name is refused, so a
/// damaged or hostile JSON file cannot point oci-export elsewhere. (containers-storage's own IDs
/// are 64 hex digits; names chosen by its callers may use the rest of this set.)
pub fn check_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 128
        || id == "."
        || id == ".."
        || !id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        bail!("{what} ID {id:?} is not a valid name for a directory in the store");
    }
    Ok(())
}

/// Which driver's store to read under `root`: the configured one where it exists there, else
/// the only one that exists (as containers-storage refuses to guess between several).
pub fn detect_driver(root: &Path, configured: Option<&str>) -> Result<Driver> {
    let mut present = Vec::new();
    for driver in DRIVERS {
        let dir = StoreDir {
            root: root.to_path_buf(),
            driver,
        };
        if exists(&dir.images_dir())? || exists(&dir.layers_dir())? {
            present.push(driver);
        }
    }
    if let Some(name) = configured {
        match Driver::from_name(name) {
            Some(driver) if present.contains(&driver) || present.is_empty() => return Ok(driver),
            Some(_) => {}
            None => bail!(
                "containers-storage driver {name:?} is configured, but oci-export reads only \
                 overlay and vfs stores"
            ),
        }
    }
    match present.as_slice() {
        [one] => Ok(*one),
        [] => bail!(
            "{} holds no containers-storage store (no overlay-images or vfs-images directory)",
            root.display()
        ),
        several => bail!(
            "{} holds stores of several drivers ({}): choose one with STORAGE_DRIVER or the \
             driver in storage.conf",
            root.display(),
            several
                .iter()
                .map(|d| d.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Whether `path` exists. A permission error is an error, with the usual remedy: calling an
/// unreadable directory "missing" sends users looking for the wrong problem.
pub fn exists(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "permission denied reading {}: a containers-storage store is readable only by its \
             owner; run oci-export as that user (root for /var/lib/containers/storage)",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Whether `path` is a directory (false when missing).
pub fn is_dir(path: &Path) -> Result<bool> {
    Ok(exists(path)? && std::fs::metadata(path).is_ok_and(|m| m.is_dir()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("layer", &"a".repeat(64)).is_ok());
        assert!(check_id("layer", "my-layer_1.0").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a b",
            "a\0b",
            &"a".repeat(129),
        ] {
            assert!(check_id("layer", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_per_driver() {
        let overlay = StoreDir {
            root: "/g".into(),
            driver: Driver::Overlay,
        };
        assert_eq!(
            overlay.layers_json(),
            Path::new("/g/overlay-layers/layers.json")
        );
        assert_eq!(
            overlay.images_json(),
            Path::new("/g/overlay-images/images.json")
        );
        assert_eq!(
            overlay.tar_split("abc"),
            Path::new("/g/overlay-layers/abc.tar-split.gz")
        );
        assert_eq!(overlay.layer_files("abc"), Path::new("/g/overlay/abc/diff"));
        assert_eq!(
            overlay.lock_files(),
            [
                PathBuf::from("/g/overlay-layers/layers.lock"),
                PathBuf::from("/g/overlay-images/images.lock")
            ]
        );
        let vfs = StoreDir {
            root: "/g".into(),
            driver: Driver::Vfs,
        };
        assert_eq!(
            vfs.tar_split("abc"),
            Path::new("/g/vfs-layers/abc.tar-split.gz")
        );
        assert_eq!(vfs.layer_files("abc"), Path::new("/g/vfs/dir/abc"));
        assert_eq!(vfs.big_data_dir("i"), Path::new("/g/vfs-images/i"));
        assert_eq!(vfs.composefs_blob("abc"), None);
    }

    #[test]
    fn driver_detection() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let err = detect_driver(root, None).unwrap_err().to_string();
        assert!(err.contains("holds no containers-storage store"), "{err}");
        // A configured driver is trusted for an empty or new store.
        assert_eq!(detect_driver(root, Some("vfs")).unwrap(), Driver::Vfs);
        assert!(detect_driver(root, Some("btrfs"))
            .unwrap_err()
            .to_string()
            .contains("reads only overlay and vfs"));

        std::fs::create_dir(root.join("vfs-images")).unwrap();
        assert_eq!(detect_driver(root, None).unwrap(), Driver::Vfs);
        // The configured driver has no store here, the only one present is used.
        assert_eq!(detect_driver(root, Some("overlay")).unwrap(), Driver::Vfs);

        std::fs::create_dir(root.join("overlay-layers")).unwrap();
        let err = detect_driver(root, None).unwrap_err().to_string();
        assert!(err.contains("several drivers (overlay, vfs)"), "{err}");
        assert_eq!(
            detect_driver(root, Some("overlay")).unwrap(),
            Driver::Overlay
        );
        assert_eq!(detect_driver(root, Some("vfs")).unwrap(), Driver::Vfs);
    }
}
