//! `--store containers-storage` against real podman stores (tests/harness/podman.rs builds
//! them with tests/support/make_podman_images.py): every image exports byte for byte and
//! verified, loads back into podman and Docker with the same IDs and names, resolves by the
//! names podman resolves, and a damaged store gives one clear error and no output. The stores
//! are fingerprinted around every run: nothing under them, lock files included, is written.

mod harness;

use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use harness::podman::{podman, stores, Store};
use harness::*;
use oci_export::digest::Digest;

/// Runs oci-export with `--store containers-storage --data-root <graph root>`, with no
/// storage.conf (so nothing of the host's configuration is read, and the driver is found from
/// what the graph root holds).
fn cs(root: &Path, args: &[&str]) -> Output {
    let mut full = vec![
        "--store",
        "containers-storage",
        "--data-root",
        root.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    with_conf(None, &full)
}

/// Runs oci-export with `CONTAINERS_STORAGE_CONF` set to `conf` (or to a file that does not
/// exist, which containers-storage reads as no configuration).
fn with_conf(conf: Option<&Path>, args: &[&str]) -> Output {
    let none = PathBuf::from("/nonexistent/oe-test-storage.conf");
    binary()
        .env("CONTAINERS_STORAGE_CONF", conf.unwrap_or(&none))
        .args(args)
        .output()
        .expect("running oci-export")
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exports `names` from `store` into `path` and reads the archive back.
fn export_archive(store: &Store, names: &[&str], path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut args = vec!["-o", path.to_str().unwrap()];
    args.extend_from_slice(names);
    ok(cs(&store.root, &args), &format!("exporting {names:?}"));
    read_archive(&std::fs::read(path).unwrap())
}

/// Checks one exported image against what podman said about it: its config hashes to
/// podman's image ID (so it is podman's config, byte for byte), its layers hash to podman's
/// diff_ids, and it is tagged with podman's name.
fn check_exported(store: &Store, name: &str, archived: &ArchivedImage) {
    let expected = &store.images[name];
    assert_eq!(archived.config_digest, expected.id, "{name}: config");
    assert_eq!(archived.diff_ids, expected.diff_ids, "{name}: diff_ids");
    assert_eq!(archived.layer_blobs.len(), expected.diff_ids.len());
    for (blob, diff_id) in archived.layer_blobs.iter().zip(&expected.diff_ids) {
        assert_eq!(Digest::of(blob), *diff_id, "{name}: a layer");
    }
}

#[test]
fn every_image_exports_byte_exact_and_verified() {
    let Some(stores) = stores() else { return };
    let dir = tempfile::tempdir().unwrap();
    for store in [&stores.overlay, &stores.vfs] {
        let before = store.fingerprint();
        for (name, expected) in &store.images {
            let path = dir.path().join("one.tar");
            let members = export_archive(store, &[name], &path);
            let images = verify_docker_archive(&members);
            assert_eq!(images.len(), 1, "{name}");
            check_exported(store, name, &images[0]);
            assert_eq!(
                images[0].repo_tags,
                [name.as_str()],
                "{name} ({}): recorded as podman names it",
                expected.covers
            );
            // The config is the store's own file, byte for byte.
            assert_eq!(Digest::of(&images[0].config), expected.id);
        }
        assert_fingerprints_equal(&before, &store.fingerprint());
    }
}

#[test]
fn names_resolve_as_podman_resolves_them() {
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let before = store.fingerprint();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.tar");
    let exported = |input: &str| -> (Digest, Vec<String>) {
        let members = export_archive(store, &[input], &path);
        let images = verify_docker_archive(&members);
        assert_eq!(images.len(), 1);
        (images[0].config_digest, images[0].repo_tags.clone())
    };
    for (name, expected) in &store.images {
        // What a user types: localhost/ is implied, as the name podman gives short names.
        assert_eq!(
            exported(&expected.short),
            (expected.id, vec![name.clone()]),
            "{} for {name}",
            expected.short
        );
    }
    let gnu = &store.images["localhost/oe-cs/load-gnu:latest"];
    let links = &store.images["localhost/oe-cs/load-links:latest"];
    let cases: Vec<(String, Digest, Vec<String>)> = vec![
        // IDs, with or without sha256:, and a unique prefix: no tag.
        (gnu.id.hex(), gnu.id, vec![]),
        (gnu.id.to_string(), gnu.id, vec![]),
        (gnu.id.hex()[..12].to_string(), gnu.id, vec![]),
        // A missing tag is latest.
        (
            "oe-cs/load-gnu".into(),
            gnu.id,
            vec!["localhost/oe-cs/load-gnu:latest".into()],
        ),
        // Docker's normalization, for docker.io names.
        (
            "oe-cs-links:1".into(),
            links.id,
            vec!["docker.io/library/oe-cs-links:1".into()],
        ),
        (
            "docker.io/oe-cs-links:1".into(),
            links.id,
            vec!["docker.io/library/oe-cs-links:1".into()],
        ),
        // The end of one image's repository name.
        (
            "pax-tool:2".into(),
            store.images["localhost/oe-cs/load-pax:latest"].id,
            vec!["quay.io/oe-cs-org/pax-tool:2".into()],
        ),
        (
            "org/deep:1.0".into(),
            store.images["localhost/oe-cs/org/deep:1.0"].id,
            vec!["localhost/oe-cs/org/deep:1.0".into()],
        ),
    ];
    for (input, id, tags) in cases {
        assert_eq!(exported(&input), (id, tags), "{input}");
    }

    // One image by two names: exported once, with both.
    let members = export_archive(store, &["oe-cs/load-links:latest", "oe-cs-links:1"], &path);
    let images = verify_docker_archive(&members);
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0].repo_tags,
        [
            "localhost/oe-cs/load-links:latest",
            "docker.io/library/oe-cs-links:1"
        ]
    );

    // Not there: one message with the closest names, and no output.
    let missing = dir.path().join("missing.tar");
    let out = cs(
        &store.root,
        &["-o", missing.to_str().unwrap(), "oe-cs/load-gnus:latest"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "no such image: oe-cs/load-gnus:latest; closest names the engine has: \
                      localhost/oe-cs/load-gnu:latest"
        ),
        "{err}"
    );
    assert!(!missing.exists());
    assert_fingerprints_equal(&before, &store.fingerprint());
}

#[test]
fn archives_load_into_podman_and_docker_with_the_same_ids_and_names() {
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let before = store.fingerprint();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("all.tar");
    let names: Vec<&str> = store.images.keys().map(String::as_str).collect();
    let members = export_archive(store, &names, &archive);
    // Images sharing an ID (a second name) are one image with several tags.
    let images = verify_docker_archive(&members);
    let distinct: std::collections::BTreeSet<Digest> =
        store.images.values().map(|e| e.id).collect();
    assert_eq!(images.len(), distinct.len());

    // A second, empty podman store: every name comes back, with podman's ID.
    let (root, run) = (dir.path().join("root"), dir.path().join("run"));
    podman(
        &root,
        &run,
        "overlay",
        &["load", "-i", archive.to_str().unwrap()],
    );
    for (name, expected) in &store.images {
        let out = podman(
            &root,
            &run,
            "overlay",
            &["image", "inspect", "--format", "{{.ID}}", name],
        );
        let id = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            format!("sha256:{}", id.trim()),
            expected.id.to_string(),
            "{name}"
        );
    }

    // A Docker engine (scripts/test.sh's second one).
    let Ok(host) = std::env::var("OE_TEST_SECOND_DOCKER_HOST") else {
        skip("loading into Docker needs OE_TEST_SECOND_DOCKER_HOST: run scripts/test.sh");
        return;
    };
    engine::docker(&host, &["load", "-i", archive.to_str().unwrap()]);
    for (name, expected) in &store.images {
        assert_eq!(
            engine::image_id(&host, name),
            expected.id.to_string(),
            "{name} in Docker"
        );
    }
    for name in store.images.keys() {
        engine::docker(&host, &["rmi", name]);
    }
    assert_fingerprints_equal(&before, &store.fingerprint());
}

#[test]
fn oci_dir_and_zstd_outputs() {
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let before = store.fingerprint();
    let dir = tempfile::tempdir().unwrap();
    let name = "localhost/oe-cs/build:latest";
    let expected = &store.images[name];

    // An OCI layout directory: every blob hashes to its name, the layers to the diff_ids.
    let layout = dir.path().join("layout");
    ok(
        cs(
            &store.root,
            &["--format", "oci-dir", "-o", layout.to_str().unwrap(), name],
        ),
        "oci-dir",
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| {
        let digest: Digest = d.parse().unwrap();
        let bytes = std::fs::read(layout.join("blobs/sha256").join(digest.hex())).unwrap();
        assert_eq!(Digest::of(&bytes), digest);
        bytes
    };
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        name
    );
    let manifest: serde_json::Value = serde_json::from_slice(&blob(manifest_digest)).unwrap();
    assert_eq!(
        Digest::of(&blob(manifest["config"]["digest"].as_str().unwrap())),
        expected.id
    );
    let layers: Vec<Digest> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| Digest::of(&blob(l["digest"].as_str().unwrap())))
        .collect();
    assert_eq!(layers, expected.diff_ids);

    // zstd layers: each decompresses to its diff_id, and podman loads the archive as the image.
    let archive = dir.path().join("zstd.tar");
    ok(
        cs(
            &store.root,
            &[
                "-c",
                "zstd",
                "--no-cache",
                "-o",
                archive.to_str().unwrap(),
                name,
            ],
        ),
        "zstd",
    );
    let members = read_archive(&std::fs::read(&archive).unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    let item = &manifest[0];
    assert_eq!(
        Digest::of(&members[item["Config"].as_str().unwrap()]),
        expected.id
    );
    let mut decompressed = Vec::new();
    for (path, diff_id) in item["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&expected.diff_ids)
    {
        let blob = &members[path.as_str().unwrap()];
        let source = &item["LayerSources"][diff_id.to_string()];
        assert_eq!(
            source["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let mut tar = Vec::new();
        zstd::stream::read::Decoder::new(&blob[..])
            .unwrap()
            .read_to_end(&mut tar)
            .unwrap();
        decompressed.push(Digest::of(&tar));
    }
    assert_eq!(decompressed, expected.diff_ids);
    let (root, run) = (dir.path().join("root"), dir.path().join("run"));
    podman(
        &root,
        &run,
        "vfs",
        &["load", "-i", archive.to_str().unwrap()],
    );
    let out = podman(
        &root,
        &run,
        "vfs",
        &["image", "inspect", "--format", "{{.ID}}", name],
    );
    assert_eq!(
        format!("sha256:{}", String::from_utf8(out.stdout).unwrap().trim()),
        expected.id.to_string()
    );
    assert_fingerprints_equal(&before, &store.fingerprint());
}

#[test]
fn a_parent_layer_in_an_additional_image_store() {
    let Some(stores) = stores() else { return };
    let store = &stores.layered;
    assert_eq!(store.additional, std::slice::from_ref(&stores.base.root));
    let before = store.fingerprint();
    let dir = tempfile::tempdir().unwrap();
    let conf = store.conf_in(dir.path());
    let name = "localhost/oe-cs/on-base:latest";
    let path = dir.path().join("on-base.tar");

    // storage.conf names the graph root and the additional store: no --data-root.
    let out = ok(
        with_conf(
            Some(&conf),
            &[
                "--store",
                "containers-storage",
                "-o",
                path.to_str().unwrap(),
                "oe-cs/on-base",
            ],
        ),
        "exporting from a graph root with an additional store",
    );
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let images = verify_docker_archive(&read_archive(&std::fs::read(&path).unwrap()));
    check_exported(store, name, &images[0]);
    // Its base layer is the additional store's image's layer.
    let base = &stores.base.images["localhost/oe-cs/busybox:base"];
    assert_eq!(images[0].diff_ids[0], base.diff_ids[0]);

    // Without the additional store the chain is broken, and the message says where.
    let out = cs(
        &store.root,
        &["-o", path.to_str().unwrap(), "oe-cs/on-base"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is in none of the stores"), "{err}");
    assert!(
        err.contains(&format!(
            "containers-storage in {} (overlay)",
            store.root.display()
        )),
        "{err}"
    );

    // Both roots are the store's: an output inside either is refused.
    for root in [&store.root, &stores.base.root] {
        let inside = root.join("out.tar");
        let out = with_conf(
            Some(&conf),
            &[
                "--store",
                "containers-storage",
                "-o",
                inside.to_str().unwrap(),
                "oe-cs/on-base",
            ],
        );
        assert!(!out.status.success(), "wrote inside {}", root.display());
        assert!(!inside.exists());
    }
    assert_fingerprints_equal(&before, &store.fingerprint());
}

#[test]
fn auto_looks_in_containers_storage_after_docker() {
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let before = store.fingerprint();
    let dir = tempfile::tempdir().unwrap();
    let conf = store.conf_in(dir.path());
    let sample = SAMPLE_ROOT;
    let path = dir.path().join("out.tar");
    let auto = |name: &str| {
        with_conf(
            Some(&conf),
            &["--data-root", sample, "-o", path.to_str().unwrap(), name],
        )
    };
    // Docker's sample image comes from Docker's store, without a word.
    let out = ok(auto("sample:latest"), "auto, Docker's image");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    // podman's from podman's, saying where it was found.
    let out = ok(auto("oe-cs/load-gnu"), "auto, podman's image");
    assert!(
        stderr(&out).contains(&format!(
            "oe-cs/load-gnu: found in containers-storage in {} (overlay)",
            store.root.display()
        )),
        "{}",
        stderr(&out)
    );
    let images = verify_docker_archive(&read_archive(&std::fs::read(&path).unwrap()));
    check_exported(store, "localhost/oe-cs/load-gnu:latest", &images[0]);
    // Neither: one message naming both stores.
    let out = auto("nowhere:1");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("in any store here (Docker's overlay2 store")
            && err.contains("containers-storage in"),
        "{err}"
    );
    assert_fingerprints_equal(&before, &store.fingerprint());
}

// ---- damaged stores --------------------------------------------------------------------------

/// A copy of a store to damage.
struct Copy {
    _dir: tempfile::TempDir,
    root: PathBuf,
    driver: String,
    out: PathBuf,
}

impl Copy {
    fn of(store: &Store) -> Copy {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&store.root)
            .arg(&root)
            .status()
            .unwrap();
        assert!(status.success(), "copying the store");
        let out = dir.path().join("out.tar");
        Copy {
            _dir: dir,
            root,
            driver: store.driver.clone(),
            out,
        }
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join(format!("{}-layers", self.driver))
    }

    fn layers_json(&self) -> PathBuf {
        self.layers_dir().join("layers.json")
    }

    fn layers(&self) -> Vec<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(self.layers_json()).unwrap()).unwrap()
    }

    fn edit_layers(&self, edit: impl FnOnce(&mut Vec<serde_json::Value>)) {
        let mut layers = self.layers();
        edit(&mut layers);
        std::fs::write(self.layers_json(), serde_json::to_vec(&layers).unwrap()).unwrap();
    }

    /// The ID of the layer whose diff_id is `diff_id` (unique in these stores).
    fn layer_id(&self, diff_id: &Digest) -> String {
        let found: Vec<String> = self
            .layers()
            .iter()
            .filter(|l| l["diff-digest"] == diff_id.to_string())
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(found.len(), 1, "one layer with {diff_id}");
        found[0].clone()
    }

    fn fingerprint(&self) -> String {
        fingerprint_tree(&self.root, &|_| Cover::Whole).join("\n")
    }

    /// Exports `name`, which must fail with every one of `wanted` in its message, leaving no
    /// output and the store as it was.
    fn expect_failure(&self, name: &str, extra: &[&str], wanted: &[&str]) {
        let before = self.fingerprint();
        let mut args = vec!["-o", self.out.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(name);
        let out = cs(&self.root, &args);
        let err = stderr(&out);
        assert!(!out.status.success(), "exported a damaged store: {err}");
        for w in wanted {
            assert!(err.contains(w), "{w:?} not in: {err}");
        }
        assert_eq!(err.trim_end().lines().count(), 1, "one message: {err}");
        assert!(!self.out.exists(), "left an output behind");
        assert_fingerprints_equal(&before, &self.fingerprint());
    }
}

const BUILD: &str = "localhost/oe-cs/build:latest";

#[test]
fn a_missing_tar_split_is_refused_and_regenerated_on_request() {
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let copy = Copy::of(store);
    let expected = &store.images[BUILD];
    let top = copy.layer_id(expected.diff_ids.last().unwrap());
    std::fs::remove_file(copy.layers_dir().join(format!("{top}.tar-split.gz"))).unwrap();
    copy.expect_failure(
        BUILD,
        &[],
        &[
            &format!("containers-storage layer {top}"),
            &format!("{top}.tar-split.gz"),
            "no tar-split record",
            "--regenerate-missing",
        ],
    );

    // Regenerated on request, and reported. Our Docker-style archiver may well write the
    // very bytes buildah did (both descend from Docker's); whatever it writes, the config
    // names it and the image ID follows the config.
    let before = copy.fingerprint();
    let out = ok(
        cs(
            &copy.root,
            &[
                "--regenerate-missing",
                "-o",
                copy.out.to_str().unwrap(),
                BUILD,
            ],
        ),
        "regenerating",
    );
    let err = stderr(&out);
    assert!(err.contains("regenerated it from"), "{err}");
    let images = verify_docker_archive(&read_archive(&std::fs::read(&copy.out).unwrap()));
    let image = &images[0];
    let n = expected.diff_ids.len();
    assert_eq!(image.diff_ids[..n - 1], expected.diff_ids[..n - 1]);
    assert_eq!(
        image.config_digest == expected.id,
        image.diff_ids[n - 1] == expected.diff_ids[n - 1]
    );
    assert!(
        err.contains(&format!("new diff_id {}", image.diff_ids[n - 1])),
        "{err}"
    );
    assert_fingerprints_equal(&before, &copy.fingerprint());

    // A layer that was written in GNU format (base-256 IDs, long-name records) cannot come
    // out the same: a new diff_id and a new image ID.
    let gnu = "localhost/oe-cs/load-gnu:latest";
    let layer = copy.layer_id(&store.images[gnu].diff_ids[0]);
    let tar_split = copy.layers_dir().join(format!("{layer}.tar-split.gz"));
    std::fs::remove_file(&tar_split).unwrap();
    let before = copy.fingerprint();
    ok(
        cs(
            &copy.root,
            &[
                "--regenerate-missing",
                "-o",
                copy.out.to_str().unwrap(),
                gnu,
            ],
        ),
        "regenerating the GNU layer",
    );
    let images = verify_docker_archive(&read_archive(&std::fs::read(&copy.out).unwrap()));
    assert_ne!(images[0].diff_ids, store.images[gnu].diff_ids);
    assert_ne!(images[0].config_digest, store.images[gnu].id);
    assert_fingerprints_equal(&before, &copy.fingerprint());
}

#[test]
fn a_vfs_layer_without_tar_split_cannot_be_regenerated() {
    let Some(stores) = stores() else { return };
    let store = &stores.vfs;
    let copy = Copy::of(store);
    let name = "localhost/oe-cs/build:latest";
    let top = copy.layer_id(store.images[name].diff_ids.last().unwrap());
    std::fs::remove_file(copy.layers_dir().join(format!("{top}.tar-split.gz"))).unwrap();
    // Its directory is the whole root filesystem, not the layer: refused either way.
    for extra in [&[][..], &["--regenerate-missing"][..]] {
        copy.expect_failure(
            name,
            extra,
            &[
                &format!("containers-storage layer {top}"),
                "a vfs layer's directory holds the whole root filesystem",
            ],
        );
    }
}

#[test]
fn a_changed_or_missing_file_is_refused() {
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let name = "localhost/oe-cs/load-bigfile:latest";
    let copy = Copy::of(store);
    let layer = copy.layer_id(&store.images[name].diff_ids[0]);
    let file = copy
        .root
        .join("overlay")
        .join(&layer)
        .join("diff/big/5MiB.bin");
    // One byte, same size: only the CRC (and the SHA-256) can tell.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1 << 20] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    copy.expect_failure(name, &[], &["big/5MiB.bin"]);
    std::fs::remove_file(&file).unwrap();
    copy.expect_failure(name, &[], &["big/5MiB.bin"]);
}

#[test]
fn an_incomplete_layer_is_refused() {
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let copy = Copy::of(store);
    let expected = &store.images[BUILD];
    let layer = copy.layer_id(&expected.diff_ids[1]);
    copy.edit_layers(|layers| {
        let entry = layers
            .iter_mut()
            .find(|l| l["id"] == layer.as_str())
            .unwrap();
        entry["flags"] = serde_json::json!({"incomplete": true});
    });
    copy.expect_failure(
        BUILD,
        &[],
        &[&format!("layer {layer} is flagged incomplete")],
    );
}

#[test]
fn a_chain_that_does_not_match_the_config_is_refused() {
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let expected = &store.images[BUILD];
    // A layer that claims another diff_id.
    let copy = Copy::of(store);
    let layer = copy.layer_id(&expected.diff_ids[2]);
    copy.edit_layers(|layers| {
        let entry = layers
            .iter_mut()
            .find(|l| l["id"] == layer.as_str())
            .unwrap();
        entry["diff-digest"] = serde_json::json!(Digest::of(b"another layer").to_string());
    });
    copy.expect_failure(
        BUILD,
        &[],
        &["but its config lists", "the store is inconsistent"],
    );
    // A parent link that skips a layer.
    let copy = Copy::of(store);
    let first = copy.layer_id(&expected.diff_ids[0]);
    let third = copy.layer_id(&expected.diff_ids[2]);
    copy.edit_layers(|layers| {
        let entry = layers
            .iter_mut()
            .find(|l| l["id"] == third.as_str())
            .unwrap();
        entry["parent"] = serde_json::json!(first);
    });
    copy.expect_failure(BUILD, &[], &["but its config lists"]);
    // A config that is not the one its manifest names.
    let copy = Copy::of(store);
    // Big-data key sha256:<hex>, stored as "=" + base64 of the key.
    use base64::Engine;
    let config = copy
        .root
        .join("overlay-images")
        .join(expected.id.hex())
        .join(format!(
            "={}",
            base64::engine::general_purpose::STANDARD.encode(expected.id.to_string())
        ));
    let mut bytes = std::fs::read(&config).unwrap();
    bytes.push(b'\n');
    std::fs::write(&config, &bytes).unwrap();
    copy.expect_failure(BUILD, &[], &["hashes to", "the store is damaged"]);
}

#[test]
fn an_image_whose_id_is_not_its_config_digest_is_exported_under_the_digest() {
    // Images with layers pulled partially (zstd:chunked, eStargz) get an ID of their own in
    // containers-storage; here one image is given another ID, as such a pull would.
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let copy = Copy::of(store);
    let name = "localhost/oe-cs/load-gnu:latest";
    let expected = &store.images[name];
    let own_id = Digest::of(b"an ID of its own").hex();
    let images_dir = copy.root.join("overlay-images");
    std::fs::rename(images_dir.join(expected.id.hex()), images_dir.join(&own_id)).unwrap();
    let images_json = images_dir.join("images.json");
    let text = std::fs::read_to_string(&images_json).unwrap().replace(
        &format!("\"{}\"", expected.id.hex()),
        &format!("\"{own_id}\""),
    );
    std::fs::write(&images_json, text).unwrap();

    let before = copy.fingerprint();
    for input in [own_id.as_str(), name] {
        let out = ok(
            cs(&copy.root, &["-o", copy.out.to_str().unwrap(), input]),
            "exporting an image with an ID of its own",
        );
        assert!(
            stderr(&out).contains(&format!(
                "image {own_id} in the store is exported under its config digest, {}",
                expected.id
            )),
            "{}",
            stderr(&out)
        );
        let images = verify_docker_archive(&read_archive(&std::fs::read(&copy.out).unwrap()));
        check_exported(store, name, &images[0]);
    }
    assert_fingerprints_equal(&before, &copy.fingerprint());
}

// ---- locks -----------------------------------------------------------------------------------

/// A process holding a POSIX write lock on each of `files`, as podman does while it writes,
/// until its stdin closes.
struct Writer {
    child: Child,
}

impl Writer {
    fn lock(files: &[PathBuf], wait: bool) -> std::result::Result<Writer, String> {
        let script = "import fcntl,signal,sys\n\
                      signal.alarm(60)\n\
                      wait=sys.argv[1]=='wait'\n\
                      fs=[open(p,'r+') for p in sys.argv[2:]]\n\
                      try:\n\
                      \x20   [fcntl.lockf(f,fcntl.LOCK_EX|(0 if wait else fcntl.LOCK_NB)) for f in fs]\n\
                      except OSError as e:\n\
                      \x20   print('busy',e,flush=True); sys.exit(1)\n\
                      print('locked',flush=True)\n\
                      sys.stdin.read()\n";
        let mut child = Command::new("python3")
            .args(["-c", script, if wait { "wait" } else { "nowait" }])
            .args(files)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() == "locked" {
            Ok(Writer { child })
        } else {
            let _ = child.wait();
            Err(line)
        }
    }

    fn release(mut self) {
        drop(self.child.stdin.take());
        self.child.wait().unwrap();
    }
}

fn lock_files(root: &Path) -> Vec<PathBuf> {
    vec![
        root.join("overlay-layers/layers.lock"),
        root.join("overlay-images/images.lock"),
    ]
}

#[test]
fn waits_for_a_writer_but_holds_no_lock_while_exporting() {
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let copy = Copy::of(store);
    let before = copy.fingerprint();
    let name = "localhost/oe-cs/load-bigfile:latest";
    let locks = lock_files(&copy.root);

    // A writer holds layers.lock: the export waits for it, then succeeds.
    let writer = Writer::lock(&locks[..1], true).unwrap();
    let started = Instant::now();
    let export = binary()
        .env("CONTAINERS_STORAGE_CONF", "/nonexistent")
        .args(["--store", "containers-storage", "--data-root"])
        .arg(&copy.root)
        .arg("-o")
        .arg(&copy.out)
        .arg(name)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !copy.out.exists(),
        "exported while the store was locked for writing"
    );
    writer.release();
    let out = export.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let images = verify_docker_archive(&read_archive(&std::fs::read(&copy.out).unwrap()));
    check_exported(store, name, &images[0]);

    // While the export runs (blocked writing to a pipe nobody reads yet), a writer can take
    // every lock at once, without waiting.
    let mut export = binary()
        .env("CONTAINERS_STORAGE_CONF", "/nonexistent")
        .args(["--store", "containers-storage", "--data-root"])
        .arg(&copy.root)
        .arg(name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = export.stdout.take().unwrap();
    let mut first = vec![0u8; 512];
    stdout.read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let writer = Writer::lock(&locks, false).expect("the export holds no lock");
    writer.release();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = export.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    first.extend(rest);
    let images = verify_docker_archive(&read_archive(&first));
    check_exported(store, name, &images[0]);
    assert_fingerprints_equal(&before, &copy.fingerprint());
}

#[test]
fn a_store_without_lock_files_is_read_without_them() {
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let copy = Copy::of(store);
    for lock in lock_files(&copy.root) {
        std::fs::remove_file(lock).unwrap();
    }
    let before = copy.fingerprint();
    ok(
        cs(&copy.root, &["-o", copy.out.to_str().unwrap(), BUILD]),
        "exporting without lock files",
    );
    let images = verify_docker_archive(&read_archive(&std::fs::read(&copy.out).unwrap()));
    check_exported(store, BUILD, &images[0]);
    // No lock file was created.
    assert_fingerprints_equal(&before, &copy.fingerprint());
    assert!(lock_files(&copy.root).iter().all(|l| !l.exists()));
}

#[test]
fn podman_rmi_during_an_export_is_not_blocked_and_is_noticed() {
    let Some(stores) = stores() else { return };
    let store = &stores.overlay;
    let copy = Copy::of(store);
    // libpod's database records the graph root it was made for; without it podman makes a
    // new one for the copy.
    std::fs::remove_file(copy.root.join("libpod/bolt_state.db")).unwrap();
    let name = "localhost/oe-cs/load-bigfile:latest";
    let mut export = binary()
        .env("CONTAINERS_STORAGE_CONF", "/nonexistent")
        .args(["--store", "containers-storage", "--data-root"])
        .arg(&copy.root)
        .arg(name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The export is under way, blocked on a pipe nobody reads yet.
    let mut stdout = export.stdout.take().unwrap();
    let mut first = vec![0u8; 512];
    stdout.read_exact(&mut first).unwrap();

    // podman itself removes the image meanwhile: it must not wait for the export (which
    // cannot end before its pipe is read, so a lock held would never be released).
    let parent = copy.root.parent().unwrap();
    let conf = parent.join("rmi-storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = {:?}\nrunroot = {:?}\n",
            copy.root.to_str().unwrap(),
            parent.join("run").to_str().unwrap()
        ),
    )
    .unwrap();
    let mut rmi = Command::new("podman")
        .env("CONTAINERS_STORAGE_CONF", &conf)
        .arg("--root")
        .arg(&copy.root)
        .arg("--runroot")
        .arg(parent.join("run"))
        .args([
            "--storage-driver",
            "overlay",
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
            "rmi",
            name,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = rmi.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = rmi.kill();
            let _ = export.kill();
            panic!("podman rmi waited for the export: a lock was held");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "podman rmi failed");

    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = export.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "an export of a removed image succeeded"
    );
    let err = stderr(&out);
    assert!(
        err.contains("the image store changed during the export: no such image"),
        "{err}"
    );
}
