//! Exports from containerd's image store (`--store containerd`), against a real containerd
//! (Debian's 1.6, private root, state and socket) filled as Docker 29 fills it
//! ([`harness::containerd::start_filled`]): `docker save` archives (uncompressed layers), OCI
//! archives with gzip and zstd layers, a two-platform index of which only linux/amd64 is
//! there, an untagged (`moby-dangling@…`) image, whiteouts and opaque directories.
//!
//! What the exports must be: the blobs `ctr images export` writes for the same image, byte for
//! byte (configs, manifests, index, layers); layers that decompress to their diff_ids; archives
//! that Docker loads with the same config digest, skopeo reads, and a second containerd imports
//! with the same target digest; clear errors and no output where content is missing; and the
//! containerd root untouched.

mod harness;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use harness::containerd::{start_filled, Containerd, MOBY};
use harness::engine::{docker, image_id};
use harness::{fingerprint_tree, read_archive, verify_docker_archive, Cover, BIN};
use oci_export::digest::Digest;
use oci_export::model::{BlobCompression, LayerContent};
use oci_export::source::containerd::ContainerdStore;
use oci_export::source::{ImageStore, NotFound, PlatformChoice};

const CLASSIC: &str = "docker.io/oe-test/classic:latest";
const CLASSIC_GZIP: &str = "docker.io/oe-test/classic:gzip";
const WHITEOUTS_ZSTD: &str = "docker.io/oe-test/load-whiteouts:zstd";
const MULTI: &str = "docker.io/oe-test/multi:latest";
const BUSYBOX: &str = "docker.io/oe-test/busybox:base";

/// Runs oci-export on `ctd`'s store.
fn export(ctd: &Containerd, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--store", "containerd", "--data-root"])
        .arg(&ctd.root)
        .args(args)
        .output()
        .expect("running oci-export")
}

fn export_ok(ctd: &Containerd, args: &[&str]) -> Output {
    let out = export(ctd, args);
    assert!(
        out.status.success(),
        "oci-export {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `blobs/sha256/*` members of an archive.
fn blobs(members: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    members
        .iter()
        .filter(|(path, _)| path.starts_with("blobs/sha256/") && path.len() > 13)
        .map(|(p, b)| (p.clone(), b.clone()))
        .collect()
}

/// A layer blob decompressed as its media type says.
fn decompress(media_type: &str, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match BlobCompression::of_media_type(media_type).expect("a layer media type") {
        BlobCompression::None => out.extend_from_slice(blob),
        BlobCompression::Gzip => {
            flate2::read::MultiGzDecoder::new(blob)
                .read_to_end(&mut out)
                .unwrap();
        }
        BlobCompression::Zstd => {
            zstd::stream::read::Decoder::new(blob)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
        }
    }
    out
}

/// The entry names of a layer tar, sorted.
fn tar_names(tar_bytes: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = tar::Archive::new(tar_bytes)
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            e.path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    names.sort();
    names
}

/// What every as-stored archive of one image must be: its blobs exactly those of `ctr images
/// export` (configs, manifests, index, layers), its config the store's file, `index.json`
/// naming the image's target, `manifest.json` naming each layer with its stored media type,
/// each layer decompressing to its diff_id. Returns the config digest.
fn check_as_stored(
    ctd: &Containerd,
    name: &str,
    ours: &BTreeMap<String, Vec<u8>>,
    ctrs: &BTreeMap<String, Vec<u8>>,
    tags: &[&str],
) -> Digest {
    assert_eq!(blobs(ours), blobs(ctrs), "{name}: blobs differ from ctr's");
    let target = ctd.image(name).digest;
    let index: serde_json::Value = serde_json::from_slice(&ours["index.json"]).unwrap();
    let top: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(top, [target.to_string()], "{name}: index.json");
    let manifest: serde_json::Value = serde_json::from_slice(&ours["manifest.json"]).unwrap();
    let item = &manifest.as_array().unwrap()[0];
    let repo_tags: Vec<&str> = item["RepoTags"]
        .as_array()
        .map(|t| t.iter().map(|t| t.as_str().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(repo_tags, tags, "{name}: RepoTags");
    let config_path = item["Config"].as_str().unwrap();
    let config = &ours[config_path];
    let config_digest = Digest::of(config);
    assert_eq!(
        config,
        &std::fs::read(ctd.blob_path(&config_digest)).unwrap(),
        "{name}: the config is the store's"
    );
    let config_json: serde_json::Value = serde_json::from_slice(config).unwrap();
    let diff_ids: Vec<Digest> = config_json["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().parse().unwrap())
        .collect();
    let layers = item["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (path, diff_id) in layers.iter().zip(&diff_ids) {
        let source = &item["LayerSources"][diff_id.to_string()];
        let blob = &ours[path.as_str().unwrap()];
        let media_type = source["mediaType"].as_str().unwrap();
        assert_eq!(
            Digest::of(&decompress(media_type, blob)),
            *diff_id,
            "{name}: {path} ({media_type}) decompresses to its diff_id"
        );
        assert_eq!(source["size"].as_u64().unwrap(), blob.len() as u64);
    }
    config_digest
}

/// `skopeo copy` of `source` to a directory, reading every blob.
fn skopeo_reads(source: &str, scratch: &Path) {
    let dest = scratch.join("skopeo-dir");
    let _ = std::fs::remove_dir_all(&dest);
    let out = Command::new("skopeo")
        .args(["copy", "-q", source])
        .arg(format!("dir:{}", dest.display()))
        .output()
        .expect("running skopeo");
    assert!(
        out.status.success(),
        "skopeo copy {source}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn root_fingerprint(ctd: &Containerd) -> String {
    fingerprint_tree(&ctd.root, &|_| Cover::Whole).join("\n")
}

struct Case {
    name: String,
    /// What `manifest.json` lists as RepoTags.
    tags: Vec<&'static str>,
    /// Docker 20.10 cannot load zstd layers.
    docker_loads: bool,
}

#[test]
fn exports_are_what_ctr_exports_and_every_consumer_reads() {
    let Some((engine, ctd, filled)) = start_filled() else {
        return;
    };
    let scratch = ctd.scratch();
    let cases = [
        Case {
            name: CLASSIC.to_string(),
            tags: vec!["oe-test/classic:latest"],
            docker_loads: true,
        },
        Case {
            name: CLASSIC_GZIP.to_string(),
            tags: vec!["oe-test/classic:gzip"],
            docker_loads: true,
        },
        Case {
            name: WHITEOUTS_ZSTD.to_string(),
            tags: vec!["oe-test/load-whiteouts:zstd"],
            docker_loads: false,
        },
        Case {
            name: MULTI.to_string(),
            tags: vec!["oe-test/multi:latest"],
            docker_loads: true,
        },
        Case {
            name: filled.dangling.clone(),
            tags: vec![],
            docker_loads: true,
        },
    ];
    // ctr's exports first: they take a lease, which is a write to meta.db.
    let mut ctr_exports = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let path = scratch.join(format!("ctr-{i}.tar"));
        ctd.export_with_ctr(&case.name, &path);
        ctr_exports.push(read_archive(&std::fs::read(&path).unwrap()));
    }

    let before = root_fingerprint(&ctd);
    let mut archives = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let stored = scratch.join(format!("ours-{i}.tar"));
        let plain = scratch.join(format!("plain-{i}.tar"));
        let layout = scratch.join(format!("layout-{i}"));
        let name = case.name.as_str();
        export_ok(&ctd, &[name, "-o", stored.to_str().unwrap()]);
        export_ok(&ctd, &["-c", "none", name, "-o", plain.to_str().unwrap()]);
        export_ok(
            &ctd,
            &["--format", "oci-dir", name, "-o", layout.to_str().unwrap()],
        );
        archives.push((stored, plain, layout));
    }
    assert_eq!(
        before,
        root_fingerprint(&ctd),
        "oci-export changed the containerd root"
    );

    let second = Containerd::start().expect("a second containerd");
    for (case, (ctr_export, (stored, plain, layout))) in
        cases.iter().zip(ctr_exports.iter().zip(&archives))
    {
        let name = case.name.as_str();
        let members = read_archive(&std::fs::read(stored).unwrap());
        let config = check_as_stored(&ctd, name, &members, ctr_export, &case.tags);

        // -c none: docker save's graphdriver shape, layers named by their diff_ids.
        let plain_members = read_archive(&std::fs::read(plain).unwrap());
        let plain_images = verify_docker_archive(&plain_members);
        assert_eq!(plain_images.len(), 1);
        assert_eq!(plain_images[0].config_digest, config, "{name}: -c none");

        // The OCI layout directory holds the same blobs.
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let top: Digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(top, ctd.image(name).digest, "{name}: oci-dir index.json");
        for (path, bytes) in blobs(&members) {
            assert_eq!(
                std::fs::read(layout.join(&path)).unwrap(),
                bytes,
                "{name}: oci-dir {path}"
            );
        }

        // Docker loads both archives as the same image (20.10 reads no zstd).
        let loads: Vec<&PathBuf> = if case.docker_loads {
            vec![stored, plain]
        } else {
            vec![plain]
        };
        for archive in loads {
            docker(
                &engine.second_host,
                &["load", "-i", archive.to_str().unwrap()],
            );
            assert_eq!(
                image_id(&engine.second_host, &config.to_string()),
                config.to_string(),
                "{name}: docker load of {}",
                archive.display()
            );
        }

        // skopeo reads the archive both ways, and the layout.
        skopeo_reads(&format!("docker-archive:{}", stored.display()), &scratch);
        skopeo_reads(&format!("oci-archive:{}", stored.display()), &scratch);
        skopeo_reads(&format!("oci:{}", layout.display()), &scratch);

        // A second containerd imports it as the same target.
        second.ctr(
            MOBY,
            &["images", "import", "--digests", stored.to_str().unwrap()],
        );
        let want = ctd.image(name).digest;
        assert!(
            second.images(MOBY).iter().any(|i| i.digest == want),
            "{name}: the second containerd has no image with target {want}"
        );
    }
    for case in &cases {
        for tag in &case.tags {
            let _ = Command::new("/usr/bin/docker")
                .env("DOCKER_HOST", &engine.second_host)
                .args(["rmi", tag])
                .output();
        }
    }
}

fn lookup_err(store: &ContainerdStore, input: &str) -> String {
    match store.lookup(input) {
        Ok(images) => panic!(
            "{input} was found: {:?}",
            images.iter().map(|i| i.id).collect::<Vec<_>>()
        ),
        Err(e) => format!("{e:#}"),
    }
}

/// An OCI archive of `name`'s config and layers under a manifest of its own (OCI media types),
/// named `new_name`: another image of the same config.
fn same_config_other_manifest(ctd: &Containerd, name: &str, new_name: &str, archive: &Path) {
    let target = ctd.image(name).digest;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ctd.blob_path(&target)).unwrap()).unwrap();
    let mut oci = manifest.clone();
    oci["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    oci["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    for layer in oci["layers"].as_array_mut().unwrap() {
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
    }
    let oci = serde_json::to_vec(&oci).unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": Digest::of(&oci).to_string(),
            "size": oci.len(),
            "annotations": {
                "io.containerd.image.name": new_name,
                "org.opencontainers.image.ref.name": new_name.rsplit(':').next().unwrap(),
            },
        }],
    }))
    .unwrap();
    let mut members: Vec<(String, Vec<u8>)> = vec![
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
        (format!("blobs/sha256/{}", Digest::of(&oci).hex()), oci),
    ];
    let referenced = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().unwrap())
        .map(|d| d["digest"].as_str().unwrap().parse::<Digest>().unwrap());
    for digest in referenced {
        let bytes = std::fs::read(ctd.blob_path(&digest)).unwrap();
        members.push((format!("blobs/sha256/{}", digest.hex()), bytes));
    }
    let mut builder = tar::Builder::new(std::fs::File::create(archive).unwrap());
    for (path, bytes) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, &bytes[..]).unwrap();
    }
    builder.finish().unwrap();
}

#[test]
fn names_resolve_as_dockers_containerd_store_takes_them() {
    let Some((_engine, ctd, filled)) = start_filled() else {
        return;
    };
    let open = |platform| ContainerdStore::open(&ctd.root, MOBY, platform).unwrap();
    let store = open(PlatformChoice::Host);
    let classic = ctd.image(CLASSIC).digest;
    let config_of = |name: &str| store.lookup(name).unwrap()[0].id;
    let classic_config = config_of(CLASSIC);
    let tags = |input: &str| -> Vec<String> {
        let images = store
            .lookup(input)
            .unwrap_or_else(|e| panic!("{input}: {e:#}"));
        assert_eq!(images.len(), 1, "{input}");
        images[0].tags.iter().map(|t| t.full_string()).collect()
    };
    let target_of = |input: &str| {
        let image = &store.lookup(input).unwrap()[0];
        let stored = image.stored.as_ref().unwrap();
        stored.index.as_ref().unwrap_or(&stored.manifest).digest()
    };

    // Short names normalize; the tag recorded is the full name.
    assert_eq!(tags("oe-test/classic"), [CLASSIC]);
    assert_eq!(
        tags("oe-test/classic:second-tag"),
        ["docker.io/oe-test/classic:second-tag"]
    );
    assert_eq!(tags(CLASSIC_GZIP), [CLASSIC_GZIP]);
    // By digest, by target digest (Docker 29's image ID), full or short: no tag.
    for input in [
        format!("oe-test/classic@{classic}"),
        classic.to_string(),
        classic.hex(),
        classic.hex()[..12].to_string(),
        format!("sha256:{}", &classic.hex()[..12]),
    ] {
        assert_eq!(tags(&input), Vec::<String>::new(), "{input}");
        assert_eq!(target_of(&input), classic, "{input}");
    }
    // Another repository's name with this digest is not this image.
    let err = store
        .lookup(&format!("oe-test/other@{classic}"))
        .map(|_| ())
        .expect_err("another repository");
    assert!(err.is::<NotFound>(), "{err:#}");
    // The dangling image, by its name and by its target: untagged.
    assert_eq!(tags(&filled.dangling), Vec::<String>::new());
    let dangling_target = filled.dangling.split_once('@').unwrap().1;
    assert_eq!(tags(dangling_target), Vec::<String>::new());
    // Suggestions name tagged images only.
    let err = lookup_err(&store, "oe-test/clasic");
    assert!(
        err.contains("closest names the engine has: docker.io/oe-test/classic:latest"),
        "{err}"
    );
    assert!(!err.contains("moby-dangling"), "{err}");
    // The config digest names the image, unless two manifests share it: then it is ambiguous.
    let classic_oci = "docker.io/oe-test/classic:oci";
    let archive = ctd.scratch().join("classic-oci.tar");
    same_config_other_manifest(&ctd, CLASSIC, classic_oci, &archive);
    ctd.ctr(MOBY, &["images", "import", archive.to_str().unwrap()]);
    let store = open(PlatformChoice::Host);
    for input in [
        classic_config.to_string(),
        classic_config.hex()[..16].to_string(),
    ] {
        let err = lookup_err(&store, &input);
        assert!(
            err.contains("ambiguous") && err.contains(CLASSIC) && err.contains(classic_oci),
            "{err}"
        );
    }
    ctd.ctr(MOBY, &["images", "rm", classic_oci]);
    let store = open(PlatformChoice::Host);
    for input in [
        classic_config.to_string(),
        classic_config.hex()[..16].to_string(),
    ] {
        let images = store.lookup(&input).unwrap();
        assert_eq!(images[0].id, classic_config, "{input}");
        let stored = images[0].stored.as_ref().unwrap();
        assert_eq!(stored.manifest.digest(), classic, "{input}");
    }
    // The image model: the config digest as id, the stored documents, blob layers.
    let image = &store.lookup(MULTI).unwrap()[0];
    let stored = image.stored.as_ref().unwrap();
    assert_eq!(
        stored.index.as_ref().unwrap().digest(),
        ctd.image(MULTI).digest
    );
    assert_eq!(stored.platform.as_deref(), Some("linux/amd64"));
    assert_eq!(Digest::of(&image.config), image.id);
    for layer in &image.layers {
        let LayerContent::Blob(blob) = &layer.content else {
            panic!("{}: not a blob", layer.origin)
        };
        assert_eq!(blob.compression, BlobCompression::Gzip);
        assert_eq!(blob.path, ctd.blob_path(&blob.digest));
    }
    // A pulled blob's distribution.source labels are the push's mount sources.
    let LayerContent::Blob(layer) = &image.layers[0].content else {
        unreachable!()
    };
    ctd.ctr(
        MOBY,
        &[
            "content",
            "label",
            &layer.digest.to_string(),
            "containerd.io/distribution.source.registry.example:5000=team/a,team/b",
        ],
    );
    let relabelled = open(PlatformChoice::Host).lookup(MULTI).unwrap().remove(0);
    let remote: Vec<(String, String)> = relabelled.layers[0]
        .remote
        .iter()
        .inspect(|r| assert_eq!(r.digest, layer.digest))
        .map(|r| (r.registry.clone(), r.repository.clone()))
        .collect();
    assert_eq!(
        remote,
        [
            ("registry.example:5000".to_string(), "team/a".to_string()),
            ("registry.example:5000".to_string(), "team/b".to_string())
        ]
    );
    // Another namespace holds nothing.
    let other = ContainerdStore::open(&ctd.root, "k8s.io", PlatformChoice::Host).unwrap();
    let err = other
        .lookup(CLASSIC)
        .map(|_| ())
        .expect_err("not in k8s.io");
    assert!(err.is::<NotFound>());
    assert!(
        err.to_string()
            .contains("namespace k8s.io holds no images (namespaces here: moby"),
        "{err}"
    );
    assert_eq!(
        other.describe(),
        format!(
            "containerd's image store in {} (namespace k8s.io)",
            ctd.root.display()
        )
    );
}

/// The output path and its directory: nothing may be left of a failed export.
fn assert_no_output(out: &Path) {
    assert!(!out.exists(), "{} was left behind", out.display());
    let dir = out.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert!(left.is_empty(), "files left in {}: {left:?}", dir.display());
}

#[test]
fn missing_platforms_and_blobs_are_clear_errors_or_regenerated() {
    let Some((engine, ctd, filled)) = start_filled() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("image.tar");
    let out_arg = out.to_str().unwrap();
    let arm64_manifest = filled.archives["multi.tar"]["arm64"]["manifest"]
        .as_str()
        .unwrap()
        .to_string();

    for args in [
        vec!["--platform", "linux/arm64", MULTI],
        vec!["--all-platforms", MULTI],
    ] {
        let failed = export(&ctd, &[&args[..], &["-o", out_arg]].concat());
        assert!(!failed.status.success());
        let err = stderr(&failed);
        assert!(
            err.contains("platform linux/arm64 is not in the store")
                && err.contains(&arm64_manifest),
            "{args:?}: {err}"
        );
        assert_no_output(&out);
    }
    let failed = export(&ctd, &["--platform", "linux/arm64", CLASSIC, "-o", out_arg]);
    assert!(
        stderr(&failed).contains("is for platform linux/amd64 only"),
        "{}",
        stderr(&failed)
    );
    assert_no_output(&out);

    // A missing layer blob with no snapshot left: an error naming image, platform and blob.
    let store = ContainerdStore::open(&ctd.root, MOBY, PlatformChoice::Host).unwrap();
    let zstd = store.lookup(WHITEOUTS_ZSTD).unwrap().remove(0);
    let LayerContent::Blob(top) = &zstd.layers.last().unwrap().content else {
        panic!("a blob")
    };
    let chain =
        oci_export::digest::chain_ids(&zstd.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>());
    ctd.ctr(MOBY, &["content", "rm", &top.digest.to_string()]);
    ctd.ctr(
        MOBY,
        &["snapshots", "rm", &chain.last().unwrap().to_string()],
    );
    for regenerate in [false, true] {
        let mut args = vec![WHITEOUTS_ZSTD, "-o", out_arg];
        if regenerate {
            args.push("--regenerate-missing");
        }
        let failed = export(&ctd, &args);
        assert!(!failed.status.success());
        let err = stderr(&failed);
        assert!(
            err.contains(&format!("layer 2 of 2 of {WHITEOUTS_ZSTD} (linux/amd64)"))
                && err.contains(&top.digest.to_string())
                && err.contains("no unpacked snapshot"),
            "{err}"
        );
        assert_no_output(&out);
    }

    // Every layer blob of classic:gzip gone, their snapshots kept: an error that says
    // --regenerate-missing, and with it an image rebuilt from the snapshots, whiteouts and
    // opaque directories included, that Docker loads.
    let gzip = store.lookup(CLASSIC_GZIP).unwrap().remove(0);
    let mut originals = Vec::new();
    for layer in &gzip.layers {
        let LayerContent::Blob(blob) = &layer.content else {
            panic!("a blob")
        };
        let bytes = std::fs::read(&blob.path).unwrap();
        originals.push(tar_names(&decompress(&blob.media_type, &bytes)));
        ctd.ctr(MOBY, &["content", "rm", &blob.digest.to_string()]);
    }
    assert!(
        originals
            .iter()
            .flatten()
            .any(|n| n.ends_with(".wh..wh..opq")),
        "the fixture has an opaque directory: {originals:?}"
    );
    let failed = export(&ctd, &[CLASSIC_GZIP, "-o", out_arg]);
    let err = stderr(&failed);
    assert!(
        !failed.status.success()
            && err.contains("--regenerate-missing")
            && err.contains("is not in the content store")
            && err.contains(&format!("of {CLASSIC_GZIP} (linux/amd64)")),
        "{err}"
    );
    assert_no_output(&out);
    let done = export_ok(&ctd, &[CLASSIC_GZIP, "--regenerate-missing", "-o", out_arg]);
    assert!(
        stderr(&done).contains("regenerated it from"),
        "{}",
        stderr(&done)
    );
    let members = read_archive(&std::fs::read(&out).unwrap());
    let images = verify_docker_archive(&members);
    let regenerated: Vec<Vec<String>> =
        images[0].layer_blobs.iter().map(|b| tar_names(b)).collect();
    assert_eq!(
        regenerated, originals,
        "the snapshots hold the layers' entries"
    );
    docker(&engine.second_host, &["load", "-i", out_arg]);
    assert_eq!(
        image_id(&engine.second_host, &images[0].config_digest.to_string()),
        images[0].config_digest.to_string()
    );
    let _ = Command::new("/usr/bin/docker")
        .env("DOCKER_HOST", &engine.second_host)
        .args(["rmi", "oe-test/classic:gzip"])
        .output();
}

#[test]
fn the_final_check_sees_blobs_removed_and_names_moved_during_an_export() {
    let Some((_engine, ctd, _filled)) = start_filled() else {
        return;
    };
    let store = ContainerdStore::open(&ctd.root, MOBY, PlatformChoice::Host).unwrap();
    let multi = store.lookup(MULTI).unwrap().remove(0);
    let classic = store.lookup(CLASSIC).unwrap().remove(0);
    store.confirm_unchanged(MULTI, &multi).unwrap();
    store.confirm_unchanged(CLASSIC, &classic).unwrap();

    let LayerContent::Blob(layer) = &classic.layers[1].content else {
        panic!("a blob")
    };
    ctd.ctr(MOBY, &["content", "rm", &layer.digest.to_string()]);
    let err = format!(
        "{:#}",
        store.confirm_unchanged(CLASSIC, &classic).unwrap_err()
    );
    assert!(
        err.contains(&layer.digest.to_string()) && err.contains("removed"),
        "{err}"
    );

    ctd.ctr(MOBY, &["images", "tag", "--force", CLASSIC_GZIP, MULTI]);
    let err = format!("{:#}", store.confirm_unchanged(MULTI, &multi).unwrap_err());
    assert!(err.contains("changed during the export"), "{err}");
    ctd.ctr(MOBY, &["images", "rm", MULTI]);
    let err = format!("{:#}", store.confirm_unchanged(MULTI, &multi).unwrap_err());
    assert!(err.contains("was removed during the export"), "{err}");
}

#[test]
fn auto_reads_the_containerd_docker_runs_and_says_which_store_served() {
    let Some((engine, ctd, _filled)) = start_filled() else {
        return;
    };
    // A Docker data root with both stores: its overlay2 store (the engine's, linked in) and
    // the containerd dockerd would run itself, at <data root>/containerd/daemon.
    let docker_root = tempfile::tempdir().unwrap();
    for part in ["image", "overlay2"] {
        std::os::unix::fs::symlink(engine.data_root.join(part), docker_root.path().join(part))
            .unwrap();
    }
    std::fs::create_dir(docker_root.path().join("containerd")).unwrap();
    std::os::unix::fs::symlink(&ctd.root, docker_root.path().join("containerd/daemon")).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("a.tar");
    let auto = |args: &[&str]| {
        Command::new(BIN)
            .arg("--data-root")
            .arg(docker_root.path())
            .args(args)
            .args(["-o", out.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let daemon = docker_root.path().join("containerd/daemon");
    // In overlay2 (where Docker before 29 keeps it): served from there, the obvious place,
    // without a word.
    let done = auto(&["oe-test/classic:latest"]);
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(!stderr(&done).contains("found in"), "{}", stderr(&done));
    let members = read_archive(&std::fs::read(&out).unwrap());
    assert_eq!(
        verify_docker_archive(&members)[0].config_digest,
        engine.images["oe-test/classic:latest"].id
    );
    // Only in containerd's store: served from there, its blobs as stored.
    let done = auto(&["oe-test/classic:gzip"]);
    assert!(done.status.success(), "{}", stderr(&done));
    let want = format!(
        "found in containerd's image store in {} (namespace moby)",
        daemon.display()
    );
    assert!(stderr(&done).contains(&want), "{}", stderr(&done));
    let members = read_archive(&std::fs::read(&out).unwrap());
    let index: serde_json::Value = serde_json::from_slice(&members["index.json"]).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str().unwrap(),
        ctd.image(CLASSIC_GZIP).digest.to_string()
    );
    // The engine's own data root: its dockerd runs a containerd for containers only, whose
    // empty image store is left out, so a miss names the overlay2 store alone.
    assert!(
        engine
            .data_root
            .join("containerd/daemon/io.containerd.metadata.v1.bolt/meta.db")
            .is_file(),
        "the engine runs its own containerd"
    );
    let own = Command::new(BIN)
        .arg("--data-root")
        .arg(&engine.data_root)
        .args(["oe-test/nowhere:1", "-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!own.status.success());
    assert!(
        stderr(&own).contains("no such image") && !stderr(&own).contains("containerd"),
        "{}",
        stderr(&own)
    );
    // In neither: one message naming both.
    let failed = auto(&["oe-test/nowhere:1"]);
    let err = stderr(&failed);
    assert!(!failed.status.success());
    assert!(
        err.contains("in any store here")
            && err.contains("Docker's overlay2 store in")
            && err.contains(&format!("containerd's image store in {}", daemon.display())),
        "{err}"
    );
}

#[test]
fn exports_stay_correct_while_containerd_commits() {
    let Some((_engine, ctd, _filled)) = start_filled() else {
        return;
    };
    const EXPORTS: usize = 25;
    const COMMITS: usize = 150;
    let dir = ctd.scratch();
    let reference = dir.join("reference.tar");
    export_ok(&ctd, &[CLASSIC_GZIP, "-o", reference.to_str().unwrap()]);
    let want = std::fs::read(&reference).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicUsize::new(0));
    let churn = {
        let (stop, commits) = (stop.clone(), commits.clone());
        let address = ctd.address.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 5000 {
                let out = Command::new("ctr")
                    .arg("--address")
                    .arg(&address)
                    .args(["-n", MOBY, "images", "tag", BUSYBOX])
                    .arg(format!("docker.io/oe-test/churn:{i}"))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                commits.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        })
    };
    // Exports until the loop has committed COMMITS times (and at least EXPORTS exports ran).
    let mut failures = Vec::new();
    let mut exports = 0;
    while (exports < EXPORTS || commits.load(Ordering::SeqCst) < COMMITS) && exports < 1000 {
        let i = exports;
        exports += 1;
        let out = dir.join(format!("churn-{i}.tar"));
        let run = export(&ctd, &[CLASSIC_GZIP, "-o", out.to_str().unwrap()]);
        if run.status.success() {
            assert!(
                std::fs::read(&out).unwrap() == want,
                "export {i} during commits differs from the reference"
            );
            std::fs::remove_file(&out).unwrap();
        } else {
            assert!(!out.exists(), "a failed export left {}", out.display());
            failures.push(stderr(&run));
        }
        if churn.is_finished() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    let commits = commits.load(Ordering::SeqCst);
    eprintln!(
        "{} of {exports} exports succeeded during {commits} meta.db commits; failures: \
         {failures:#?}",
        exports - failures.len()
    );
    assert!(
        commits >= COMMITS,
        "the loop committed only {commits} times"
    );
    for failure in &failures {
        assert!(
            failure.contains("consistent"),
            "an unexpected failure: {failure}"
        );
    }
    assert!(
        failures.len() * 5 <= exports,
        "{} of {exports} exports failed",
        failures.len()
    );
}

#[test]
fn push_uploads_the_stored_blobs_and_manifest_unchanged() {
    let Some((engine, ctd, _filled)) = start_filled() else {
        return;
    };
    let Ok(registry) = std::env::var("OE_TEST_REGISTRY") else {
        harness::skip("a push test needs OE_TEST_REGISTRY: run scripts/test.sh");
        return;
    };
    let store = ContainerdStore::open(&ctd.root, MOBY, PlatformChoice::Host).unwrap();
    for (name, repo) in [
        (CLASSIC_GZIP, "ctd/classic:gzip"),
        (MULTI, "ctd/multi:latest"),
    ] {
        let image = store.lookup(name).unwrap().remove(0);
        // The manifest as stored: the platform's manifest of an index.
        let want = image.stored.as_ref().unwrap().manifest.digest();
        let remote = format!("{registry}/{repo}");
        let out = Command::new(BIN)
            .args(["push", "--store", "containerd", "--data-root"])
            .arg(&ctd.root)
            .args([name, &remote])
            .output()
            .unwrap();
        assert!(out.status.success(), "push {name}: {}", stderr(&out));
        let raw = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{remote}"))
            .output()
            .unwrap();
        assert!(
            raw.status.success(),
            "{}",
            String::from_utf8_lossy(&raw.stderr)
        );
        assert_eq!(Digest::of(&raw.stdout), want, "{name}: the pushed manifest");
        docker(&engine.second_host, &["pull", "-q", &remote]);
        assert_eq!(
            image_id(&engine.second_host, &remote),
            image.id.to_string(),
            "{name}: pulled back"
        );
        let _ = Command::new("/usr/bin/docker")
            .env("DOCKER_HOST", &engine.second_host)
            .args(["rmi", &remote])
            .output();
    }
}
