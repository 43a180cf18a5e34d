//! Private podman stores for the containers-storage tests, built once per test binary by
//! tests/support/make_podman_images.py in a temporary directory that is removed when the test
//! binary exits.
//!
//! Four stores: `overlay` (every case), `vfs` (a few), and `layered`, a graph root whose image
//! sits on a base layer in the additional image store `base`. Building needs root and podman;
//! without them the tests skip, and fail under CI ([`super::skip`]), as does a case the script
//! could not build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use oci_export::digest::Digest;

pub struct Stores {
    pub overlay: Store,
    pub vfs: Store,
    pub layered: Store,
    pub base: Store,
}

/// One private store, as the script left it.
pub struct Store {
    pub root: PathBuf,
    pub runroot: PathBuf,
    pub driver: String,
    pub additional: Vec<PathBuf>,
    /// Stored name (`localhost/oe-cs/load-gnu:latest`) → what podman says about it.
    pub images: BTreeMap<String, Expected>,
}

pub struct Expected {
    pub id: Digest,
    pub diff_ids: Vec<Digest>,
    /// What a user would type for it (`oe-cs/load-gnu:latest`).
    pub short: String,
    pub covers: String,
}

static STORES: OnceLock<Option<Stores>> = OnceLock::new();
static DIR: OnceLock<PathBuf> = OnceLock::new();

/// The stores, built on first use (about 20 s), or `None` when this host cannot build them.
pub fn stores() -> Option<&'static Stores> {
    STORES.get_or_init(build).as_ref()
}

fn build() -> Option<Stores> {
    if !nix::unistd::geteuid().is_root() {
        super::skip("the containers-storage tests need root (private rootful podman stores)");
        return None;
    }
    if Command::new("podman").arg("--version").output().is_err() {
        super::skip("the containers-storage tests need podman (scripts/install-deps.sh)");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("oe-podman.")
        .tempdir()
        .expect("a temporary directory")
        .keep();
    DIR.set(dir.clone()).expect("built once");
    // SAFETY: remove_stores is an extern "C" fn that takes no arguments and never unwinds.
    unsafe { libc::atexit(remove_stores) };
    let expect = dir.join("expect.json");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/make_podman_images.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg("--dir")
        .arg(&dir)
        .arg("--expect")
        .arg(&expect)
        .output()
        .expect("running make_podman_images.py");
    assert!(
        out.status.success(),
        "make_podman_images.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&expect).unwrap()).unwrap();
    let skipped = json["skipped"].as_object().cloned().unwrap_or_default();
    if !skipped.is_empty() {
        let list: Vec<String> = skipped
            .iter()
            .map(|(name, why)| format!("{name}: {}", why.as_str().unwrap_or_default()))
            .collect();
        let message = format!(
            "make_podman_images.py skipped {} case(s), whose images are not tested:\n{}",
            list.len(),
            list.join("\n")
        );
        if super::under_ci() {
            panic!("CI must test every image: {message}");
        }
        eprintln!("warning: {message}");
    }
    let store = |name: &str| store_from(&json["stores"][name]);
    let stores = Stores {
        overlay: store("overlay"),
        vfs: store("vfs"),
        layered: store("layered"),
        base: store("base"),
    };
    // A short list would make every test that walks the images pass vacuously.
    assert!(
        stores.overlay.images.len() >= 20 && stores.vfs.images.len() >= 4,
        "expected the full oe-cs image set, got {} and {}",
        stores.overlay.images.len(),
        stores.vfs.images.len()
    );
    Some(stores)
}

fn store_from(json: &serde_json::Value) -> Store {
    let path = |v: &serde_json::Value| PathBuf::from(v.as_str().unwrap());
    let images = json["images"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, e)| {
            (
                name.clone(),
                Expected {
                    id: e["id"].as_str().unwrap().parse().unwrap(),
                    diff_ids: e["diff_ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_str().unwrap().parse().unwrap())
                        .collect(),
                    short: e["short"].as_str().unwrap().to_string(),
                    covers: e["covers"].as_str().unwrap().to_string(),
                },
            )
        })
        .collect();
    Store {
        root: path(&json["root"]),
        runroot: path(&json["runroot"]),
        driver: json["driver"].as_str().unwrap().to_string(),
        additional: json["additional"]
            .as_array()
            .unwrap()
            .iter()
            .map(path)
            .collect(),
        images,
    }
}

extern "C" fn remove_stores() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Store {
    /// A storage.conf naming this store (its graph root, driver and additional stores), in
    /// `dir`, for `CONTAINERS_STORAGE_CONF`.
    pub fn conf_in(&self, dir: &Path) -> PathBuf {
        let stores: Vec<String> = self
            .additional
            .iter()
            .map(|s| format!("{:?}", s.to_str().unwrap()))
            .collect();
        let text = format!(
            "[storage]\ndriver = {:?}\ngraphroot = {:?}\nrunroot = {:?}\n\n[storage.options]\n\
             additionalimagestores = [{}]\n",
            self.driver,
            self.root.to_str().unwrap(),
            self.runroot.to_str().unwrap(),
            stores.join(", ")
        );
        let path = dir.join("storage.conf");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A fingerprint of the whole store (every store it reads, additional ones included):
    /// equal before and after means nothing under it was written, lock files included.
    pub fn fingerprint(&self) -> String {
        let mut all = super::fingerprint_tree(&self.root, &|_| super::Cover::Whole);
        for extra in &self.additional {
            all.extend(super::fingerprint_tree(extra, &|_| super::Cover::Whole));
        }
        all.join("\n")
    }
}

/// Runs podman on a private store at `root`/`runroot` (for loading archives back).
pub fn podman(root: &Path, runroot: &Path, driver: &str, args: &[&str]) -> Output {
    let conf = root.parent().unwrap().join("podman-storage.conf");
    if !conf.exists() {
        std::fs::write(
            &conf,
            format!(
                "[storage]\ndriver = {driver:?}\ngraphroot = {:?}\nrunroot = {:?}\n",
                root.to_str().unwrap(),
                runroot.to_str().unwrap()
            ),
        )
        .unwrap();
    }
    let tmp = root.parent().unwrap().join("podman-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new("podman")
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .env("TMPDIR", &tmp)
        .arg("--root")
        .arg(root)
        .arg("--runroot")
        .arg(runroot)
        .args(["--storage-driver", driver, "--tmpdir"])
        .arg(&tmp)
        .args(["--events-backend", "none", "--cgroup-manager", "cgroupfs"])
        .args(args)
        .output()
        .expect("running podman");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
