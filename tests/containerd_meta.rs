//! The bbolt reader and the typed meta.db reading against a real, running containerd (Debian's
//! 1.6, private root, state and socket: `scripts/containerd.sh`): what they return equals what
//! `ctr` says, and while containerd commits continuously, every snapshot read is either right or
//! a clear "no consistent snapshot" error.

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::containerd::{human_size, Containerd, MOBY};
use oci_export::digest::Digest;
use oci_export::source::containerd::bolt::{BoltError, Snapshot};
use oci_export::source::containerd::meta::{
    ImageRecord, MetaDb, Root, SnapshotKind, SnapshotterDb,
};

#[test]
fn human_sizes_as_go_units_prints_them() {
    for (size, want) in [
        (0, "0B"),
        (577, "577B"),
        (1047, "1.047kB"),
        (2560, "2.56kB"),
        (10240, "10.24kB"),
        (1_084_057, "1.084MB"),
        (1_997_312, "1.997MB"),
        (999_999, "1000kB"),
        (1000, "1kB"),
    ] {
        assert_eq!(human_size(size), want, "{size}");
    }
}

fn manifest_layers(root: &Root, manifest: &Digest) -> Vec<(String, Digest)> {
    let bytes = std::fs::read(root.blob(manifest)).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["mediaType"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn meta_db_says_what_ctr_says() {
    let Some(engine) = harness::engine::engine() else {
        return;
    };
    let Some(ctd) = Containerd::start() else {
        return;
    };
    let Some(filled) = ctd.fill_like_docker29(&engine.host) else {
        return;
    };
    // Read while containerd runs and holds its exclusive lock on meta.db.
    let started = Instant::now();
    let db = MetaDb::read(&ctd.meta_db()).unwrap();
    eprintln!(
        "meta.db of {} bytes read and checked in {:?}",
        std::fs::metadata(ctd.meta_db()).unwrap().len(),
        started.elapsed()
    );
    assert_eq!(db.schema_version(), 3, "containerd 1.6 writes schema 3");
    let root = Root::new(&ctd.root);

    // Namespaces.
    let ctr_namespaces: Vec<String> = ctd
        .ctr(MOBY, &["namespaces", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(db.namespaces().unwrap(), ctr_namespaces);

    // Images: name, media type, target digest; the target's size is its blob's.
    let images = db.images(MOBY).unwrap();
    let ours: BTreeSet<(String, String, Digest)> = images
        .iter()
        .map(|i| (i.name.clone(), i.target.media_type.clone(), i.target.digest))
        .collect();
    let ctr_images = ctd.images(MOBY);
    let theirs: BTreeSet<(String, String, Digest)> = ctr_images
        .iter()
        .map(|i| (i.name.clone(), i.media_type.clone(), i.digest))
        .collect();
    assert_eq!(ours, theirs);
    let mut expected_names: BTreeSet<String> =
        ["docker.tar", "oci-gzip.tar", "oci-zstd.tar", "multi.tar"]
            .iter()
            .flat_map(|a| filled.archives[a]["images"].as_array().unwrap().iter())
            .map(|n| n.as_str().unwrap().to_string())
            .collect();
    expected_names.remove("docker.io/oe-test/load-whiteouts:latest");
    expected_names.insert(filled.dangling.clone());
    assert_eq!(
        images
            .iter()
            .map(|i| i.name.clone())
            .collect::<BTreeSet<_>>(),
        expected_names
    );
    for image in &images {
        let blob = db.blob(MOBY, &image.target.digest).unwrap().unwrap();
        assert_eq!(image.target.size, blob.size, "{}", image.name);
        assert!(image.created.is_some() && image.updated >= image.created);
    }

    // Content: digests, sizes (as ctr prints them, and exactly against the files), labels.
    let blobs = db.blobs(MOBY).unwrap();
    let ctr_blobs = ctd.content(MOBY);
    assert_eq!(
        blobs.iter().map(|b| b.digest).collect::<Vec<_>>(),
        ctr_blobs.iter().map(|b| b.digest).collect::<Vec<_>>()
    );
    for (ours, theirs) in blobs.iter().zip(&ctr_blobs) {
        assert_eq!(human_size(ours.size), theirs.size, "{}", ours.digest);
        let on_disk = std::fs::metadata(root.blob(&ours.digest)).unwrap().len();
        assert_eq!(ours.size, on_disk, "{}", ours.digest);
        let their_labels: BTreeMap<String, String> = theirs.labels.iter().cloned().collect();
        assert_eq!(ours.labels, their_labels, "{}", ours.digest);
    }

    // Snapshots: keys and parents as ctr lists them, kinds from the snapshotter's own
    // database, and each committed snapshot's files where its id says.
    let snapshots = db.snapshots(MOBY, "overlayfs").unwrap();
    let sdb = SnapshotterDb::read(&ctd.overlayfs()).unwrap();
    let mut ours = Vec::new();
    for s in &snapshots {
        let record = sdb.snapshot(&s.name).unwrap().unwrap();
        assert_eq!(record.kind, SnapshotKind::Committed, "{}", s.key);
        assert!(sdb.fs_dir(record.id).is_dir(), "{}", s.key);
        assert_eq!(
            sdb.committed_fs_dir(&s.name).unwrap(),
            Some(sdb.fs_dir(record.id))
        );
        assert!(s.name.starts_with("moby/") && s.name.ends_with(&format!("/{}", s.key)));
        // The snapshotter's parent is the parent's snapshotter name.
        let parent_name = s.parent.as_ref().map(|p| {
            snapshots
                .iter()
                .find(|q| &q.key == p)
                .map(|q| q.name.clone())
                .unwrap()
        });
        assert_eq!(record.parent, parent_name, "{}", s.key);
        ours.push((s.key.clone(), s.parent.clone(), "Committed".to_string()));
    }
    assert_eq!(ours, ctd.snapshots(MOBY));

    findings(&db, &root, &images, &filled, &ctr_images);
}

/// What the store holds for each kind of import, asserted, so that the image source built on
/// it can rely on it (see the report of this branch).
fn findings(
    db: &MetaDb,
    root: &Root,
    images: &[ImageRecord],
    filled: &harness::containerd::Filled,
    ctr_images: &[harness::containerd::CtrImage],
) {
    let image = |name: &str| images.iter().find(|i| i.name == name).unwrap();
    // docker-archive imports: uncompressed layers labelled with their own digest.
    let classic = image("docker.io/oe-test/classic:latest");
    assert_eq!(
        classic.target.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    for (media_type, layer) in manifest_layers(root, &classic.target.digest) {
        assert_eq!(media_type, "application/vnd.docker.image.rootfs.diff.tar");
        let blob = db.blob(MOBY, &layer).unwrap().unwrap();
        assert_eq!(blob.uncompressed(), Some(layer));
        assert!(blob.distribution_sources().is_empty());
    }
    // OCI archives imported after it (the same diff_ids, so their snapshots existed and the
    // unpacker applied nothing): compressed layers without the uncompressed label.
    for (name, suffix) in [
        ("docker.io/oe-test/classic:gzip", "+gzip"),
        ("docker.io/oe-test/load-whiteouts:zstd", "+zstd"),
    ] {
        let img = image(name);
        assert_eq!(
            img.target.media_type,
            "application/vnd.oci.image.manifest.v1+json"
        );
        for (media_type, layer) in manifest_layers(root, &img.target.digest) {
            assert!(media_type.ends_with(suffix), "{name}: {media_type}");
            let blob = db.blob(MOBY, &layer).unwrap().unwrap();
            assert_eq!(blob.uncompressed(), None, "{name}: {layer}");
        }
    }
    // The two-platform index: the index itself and the amd64 manifest are stored; the arm64
    // manifest, config and layer have no record and no file; the index's gc references name
    // only what was fetched. `ctr images ls` still lists both platforms (read from the index).
    let multi = &filled.archives["multi.tar"];
    let digest = |v: &serde_json::Value| -> Digest { v.as_str().unwrap().parse().unwrap() };
    let index = image("docker.io/oe-test/multi:latest");
    assert_eq!(index.target.digest, digest(&multi["index"]));
    assert_eq!(
        index.target.media_type,
        "application/vnd.oci.image.index.v1+json"
    );
    let index_blob = db.blob(MOBY, &index.target.digest).unwrap().unwrap();
    let amd64 = digest(&multi["amd64_manifest"]).to_string();
    assert_eq!(
        index_blob.gc_refs().into_iter().collect::<Vec<_>>(),
        vec![("content.m.0", amd64.as_str())]
    );
    let arm64 = &multi["arm64"];
    for missing in [&arm64["manifest"], &arm64["config"], &arm64["layers"][0]] {
        let d = digest(missing);
        assert_eq!(db.blob(MOBY, &d).unwrap(), None, "{d}");
        assert!(!root.blob(&d).exists(), "{d}");
    }
    let ctr_multi = ctr_images.iter().find(|i| i.name == index.name).unwrap();
    assert_eq!(ctr_multi.platforms, ["linux/amd64", "linux/arm64"]);
    // A dangling image: `moby-dangling@<target>`, keeping the annotations of its lost name.
    let dangling = image(&filled.dangling);
    assert_eq!(
        dangling.annotations["io.containerd.image.name"],
        "docker.io/oe-test/load-whiteouts:latest"
    );
    assert_eq!(
        filled.dangling,
        format!("moby-dangling@{}", dangling.target.digest)
    );
}

/// A minimal OCI archive (one layer of one file) named `name`, for the commit loop: small, and
/// made here so that this test needs no Docker engine.
fn tiny_oci_archive(path: &Path, name: &str) {
    let mut layer = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(6);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    layer
        .append_data(&mut header, "churn.txt", &b"churn\n"[..])
        .unwrap();
    let layer = layer.into_inner().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer).to_string()]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": Digest::of(&layer).to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": Digest::of(&manifest).to_string(), "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name}}],
    }))
    .unwrap();
    let mut archive = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: String, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, name, data).unwrap();
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), &index);
    for blob in [&layer, &config, &manifest] {
        add(format!("blobs/sha256/{}", Digest::of(blob).hex()), blob);
    }
    archive.into_inner().unwrap().flush().unwrap();
}

/// How one read during the commit loop went.
#[derive(Default, Debug)]
struct Tally {
    reads: usize,
    retried: usize,
    unsettled: usize,
    /// The same check on a plain copy of the file (no second meta read), for comparison.
    naive_reads: usize,
    naive_wrong: usize,
    naive_damaged: usize,
    read_time: Duration,
}

const CHURN: &str = "oe-churn";
const CHURN_PREFIX: &str = "docker.io/oe-test/churn:";
const COMMITS: usize = 600;

/// Checks one view of the store: `moby` exactly as before the loop (typed), and `oe-churn`
/// holding the base image plus exactly the tags 0..k, each with the base's target digest, k
/// between what the loop had finished before the read and one more than it had finished after.
/// The tags are checked through the raw buckets (names, then each `target/digest`), which
/// costs a third of decoding every record, so that a debug build still reads thousands of
/// times during the loop.
fn check_view(
    db: &MetaDb,
    baseline: &[ImageRecord],
    base: &ImageRecord,
    done: (usize, usize),
) -> Result<usize, String> {
    let moby = db.images(MOBY).map_err(|e| format!("{e:#}"))?;
    if moby != baseline {
        return Err("namespace moby differs from before the loop".into());
    }
    let images = db
        .bolt_snapshot()
        .bucket(&[b"v1", CHURN.as_bytes(), b"images"])
        .map_err(|e| e.to_string())?
        .ok_or("no images bucket in oe-churn")?;
    let want_target = base.target.digest.to_string();
    let mut tags = Vec::new();
    for (name, item) in images.entries().map_err(|e| e.to_string())? {
        let name = std::str::from_utf8(name).map_err(|e| e.to_string())?;
        let image = item
            .into_bucket()
            .ok_or(format!("{name} is not a bucket"))?;
        let target = image
            .bucket_at(&[b"target"])
            .and_then(|t| t.map(|t| t.get(b"digest")).transpose())
            .map_err(|e| e.to_string())?
            .flatten();
        if target != Some(want_target.as_bytes()) {
            return Err(format!("{name} has target {target:?}"));
        }
        if name == base.name {
            continue;
        }
        let Some(n) = name.strip_prefix(CHURN_PREFIX) else {
            return Err(format!("unexpected image {name}"));
        };
        tags.push(n.parse::<usize>().map_err(|e| e.to_string())?);
    }
    tags.sort_unstable();
    let k = tags.len();
    if tags != (0..k).collect::<Vec<_>>() {
        return Err(format!("tags are not 0..{k}: {tags:?}"));
    }
    if k < done.0 || k > done.1 + 1 {
        return Err(format!(
            "{k} tags, while {} were done before the read and {} after",
            done.0, done.1
        ));
    }
    if db
        .blob(CHURN, &base.target.digest)
        .map_err(|e| format!("{e:#}"))?
        .is_none()
    {
        return Err("the base manifest's blob record is missing".into());
    }
    Ok(k)
}

#[test]
fn snapshot_reads_stay_correct_while_containerd_commits() {
    let Some(ctd) = Containerd::start() else {
        return;
    };
    let archive = ctd.scratch().join("tiny.tar");
    let base_name = "docker.io/oe-test/churn-base:1";
    tiny_oci_archive(&archive, base_name);
    for ns in [MOBY, CHURN] {
        ctd.ctr(ns, &["images", "import", archive.to_str().unwrap()]);
    }
    let meta_db = ctd.meta_db();
    let db = MetaDb::read(&meta_db).unwrap();
    let baseline = db.images(MOBY).unwrap();
    let base = db.image(CHURN, base_name).unwrap().unwrap();
    assert_eq!(baseline.len(), 1);

    // The commit loop: one `ctr images tag` (one bbolt transaction) after another.
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (done, stop) = (done.clone(), stop.clone());
        let address = ctd.address.clone();
        std::thread::spawn(move || {
            for i in 0..COMMITS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let out = std::process::Command::new("ctr")
                    .arg("--address")
                    .arg(&address)
                    .args(["-n", CHURN, "images", "tag", base_name])
                    .arg(format!("{CHURN_PREFIX}{i}"))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                done.store(i + 1, Ordering::SeqCst);
            }
        })
    };

    let mut tally = Tally::default();
    let mut last_k = 0;
    let mut failures = Vec::new();
    while !churn.is_finished() && failures.len() <= 10 {
        let before = done.load(Ordering::SeqCst);
        let started = Instant::now();
        let read = MetaDb::read(&meta_db);
        tally.read_time += started.elapsed();
        let after = done.load(Ordering::SeqCst);
        tally.reads += 1;
        match read {
            Ok(db) => {
                if db.attempts() > 1 {
                    tally.retried += 1;
                }
                match check_view(&db, &baseline, &base, (before, after)) {
                    Ok(k) if k >= last_k => last_k = k,
                    Ok(k) => failures.push(format!("tags went back from {last_k} to {k}")),
                    Err(e) => failures.push(format!("read {}: {e}", tally.reads)),
                }
            }
            Err(e) => match e.downcast_ref::<BoltError>() {
                Some(BoltError::Unsettled { .. }) => tally.unsettled += 1,
                _ => failures.push(format!("read {}: {e:#}", tally.reads)),
            },
        }
        // Now and then the same on a plain copy, with no consistency check, for comparison.
        if tally.reads % 4 != 0 {
            continue;
        }
        tally.naive_reads += 1;
        let naive_before = done.load(Ordering::SeqCst);
        let copy = std::fs::read(&meta_db).unwrap();
        let naive_after = done.load(Ordering::SeqCst);
        match Snapshot::from_bytes(copy)
            .map_err(anyhow::Error::from)
            .and_then(|s| MetaDb::from_snapshot(s, &meta_db))
        {
            Ok(db) => match check_view(&db, &baseline, &base, (naive_before, naive_after)) {
                Ok(_) => {}
                Err(e) if e.contains("damaged") => tally.naive_damaged += 1,
                Err(_) => tally.naive_wrong += 1,
            },
            Err(_) => tally.naive_damaged += 1,
        }
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    let commits = done.load(Ordering::SeqCst);
    eprintln!(
        "{commits} commits; {} reads ({:?} each on average): {} needed a second read, {} found \
         no consistent snapshot; of {} plain copies, {} damaged, {} wrong",
        tally.reads,
        tally.read_time / tally.reads.max(1) as u32,
        tally.retried,
        tally.unsettled,
        tally.naive_reads,
        tally.naive_damaged,
        tally.naive_wrong
    );
    assert!(failures.is_empty(), "wrong answers: {failures:#?}");
    assert_eq!(commits, COMMITS);
    assert!(
        tally.reads >= 1000,
        "only {} reads during the loop",
        tally.reads
    );
    // "No consistent snapshot" is allowed, but must stay rare.
    assert!(
        tally.unsettled * 100 <= tally.reads,
        "{} of {} reads found no consistent snapshot",
        tally.unsettled,
        tally.reads
    );
    // The final state has every tag.
    let db = MetaDb::read(&meta_db).unwrap();
    let all = (COMMITS, COMMITS);
    assert_eq!(check_view(&db, &baseline, &base, all), Ok(COMMITS));
}
