//! What oci-export reads from containerd's metadata: images, content blobs and snapshots per
//! namespace from `meta.db`, and the overlayfs snapshotter's own `metadata.db`, typed.
//!
//! The layout (containerd `core/metadata/buckets.go`, `snapshots/storage/bolt.go`; the same in
//! containerd 1.6, 1.7 and 2.x):
//!
//! ```text
//! meta.db
//!   v1/version                                   schema version: 3 (1.6, 1.7) or 4 (2.x)
//!   v1/<ns>/images/<name>/target/{digest, mediatype, size}
//!   v1/<ns>/images/<name>/{labels/, annotations/, createdat, updatedat}
//!   v1/<ns>/content/blob/<digest>/{size, labels/, createdat, updatedat}
//!   v1/<ns>/snapshots/<snapshotter>/<key>/{name, parent, children/, labels/, createdat, …}
//!   v1/<ns>/leases/…, containers/…, labels/ (not read here)
//! <root>/io.containerd.snapshotter.v1.overlayfs/metadata.db
//!   v1/snapshots/<name>/{id, kind, parent, inodes, size, labels/, createdat, updatedat}
//!   v1/parents/<uvarint parent id> 0x00 <uvarint child id> → child name
//! ```
//!
//! A snapshot key in meta.db (for unpacked layers, the chain ID) is namespaced into the
//! snapshotter's own name (`name`, e.g. `moby/4/sha256:…`); the snapshotter keys its records by
//! that name and keeps the layer's files in `snapshots/<id>/fs`.
//!
//! Encodings: `size`, `version`, `inodes` are Go `binary.PutVarint` (zigzag) varints, the
//! snapshotter's `id` a `binary.PutUvarint`, `kind` one byte, times Go `time.MarshalBinary`.
//! Names, labels and media types are stored as their bytes; they are decoded as UTF-8, lossily
//! (containerd only ever stores text there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::bolt::{Bucket, Item, Snapshot};
use crate::digest::Digest;

/// Schema versions this reader knows: `v1/version` 3 (containerd 1.6 and 1.7), 4 (2.x; only
/// sandboxes moved).
pub const KNOWN_SCHEMA_VERSIONS: [i64; 2] = [3, 4];

/// The label containerd puts on a blob whose uncompressed digest it knows (the diff_id of a
/// layer). It is not always set: take diff_ids from the image config.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// The prefix of `containerd.io/distribution.source.<registry host>=<repository>,…` labels, set
/// on blobs pulled from a registry.
pub const LABEL_DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source.";
/// The prefix of the garbage collector's reference labels (`…content.l.<i>`, `…content.config`,
/// `…content.m.<i>`, `…snapshot.<snapshotter>`).
pub const LABEL_GC_REF: &str = "containerd.io/gc.ref.";

/// Paths of a containerd root (`/var/lib/containerd`, or `<docker data root>/containerd/daemon`
/// when dockerd runs its own).
#[derive(Clone, Debug)]
pub struct Root {
    pub path: PathBuf,
}

impl Root {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Root { path: path.into() }
    }

    pub fn meta_db(&self) -> PathBuf {
        self.path.join("io.containerd.metadata.v1.bolt/meta.db")
    }

    /// Where a blob's bytes are (shared by every namespace).
    pub fn blob(&self, digest: &Digest) -> PathBuf {
        self.path
            .join("io.containerd.content.v1.content/blobs/sha256")
            .join(digest.hex())
    }

    /// The root of the overlayfs snapshotter (`metadata.db`, `snapshots/<id>/fs`).
    pub fn overlayfs(&self) -> PathBuf {
        self.path.join("io.containerd.snapshotter.v1.overlayfs")
    }
}

/// A point in time, as Go's `time.MarshalBinary` stores it (the zone offset is dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub unix_seconds: i64,
    pub nanos: u32,
}

/// An OCI descriptor as an image record stores its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// `v1/<ns>/images/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    /// The name as stored: normalized (`docker.io/library/alpine:3`) when Docker or a pull wrote
    /// it, as the archive gave it for `ctr images import` of an OCI archive, and
    /// `moby-dangling@sha256:…` for an image Docker keeps untagged.
    pub name: String,
    pub target: Target,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub created: Option<Timestamp>,
    pub updated: Option<Timestamp>,
}

/// `v1/<ns>/content/blob/<digest>`: a blob this namespace holds a reference to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRecord {
    pub digest: Digest,
    pub size: u64,
    pub labels: BTreeMap<String, String>,
    pub created: Option<Timestamp>,
    pub updated: Option<Timestamp>,
}

impl BlobRecord {
    /// The `containerd.io/uncompressed` label, when set and a valid digest.
    pub fn uncompressed(&self) -> Option<Digest> {
        self.labels.get(LABEL_UNCOMPRESSED)?.parse().ok()
    }

    /// `(registry host, repository)` pairs from the `containerd.io/distribution.source.*`
    /// labels (a value may list several repositories, comma-separated).
    pub fn distribution_sources(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, value) in &self.labels {
            if let Some(host) = key.strip_prefix(LABEL_DISTRIBUTION_SOURCE) {
                for repo in value.split(',').filter(|r| !r.is_empty()) {
                    out.push((host.to_string(), repo.to_string()));
                }
            }
        }
        out
    }

    /// The garbage collector's references from this blob: label suffix (`content.l.0`,
    /// `content.config`, `snapshot.overlayfs`, …) → the referenced digest or key.
    pub fn gc_refs(&self) -> BTreeMap<&str, &str> {
        self.labels
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(LABEL_GC_REF)?, v.as_str())))
            .collect()
    }
}

/// `v1/<ns>/snapshots/<snapshotter>/<key>`: a snapshot as the namespace names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The namespace's key (an unpacked layer's chain ID).
    pub key: String,
    /// The snapshotter's own name for it (`<ns>/<n>/<key>`), which its metadata.db is keyed by.
    pub name: String,
    pub parent: Option<String>,
    pub children: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub created: Option<Timestamp>,
    pub updated: Option<Timestamp>,
}

/// containerd's `snapshots.Kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    View,
    Active,
    Committed,
    Unknown(u8),
}

/// `v1/snapshots/<name>` in a snapshotter's metadata.db.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotterRecord {
    pub name: String,
    /// The directory number: the files are in `<snapshotter root>/snapshots/<id>/fs`.
    pub id: u64,
    pub kind: SnapshotKind,
    /// The parent's name (in the snapshotter's naming), if any.
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Usage recorded at commit (committed snapshots only).
    pub inodes: Option<i64>,
    pub size: Option<i64>,
    pub created: Option<Timestamp>,
    pub updated: Option<Timestamp>,
}

/// A consistent snapshot of containerd's `meta.db`, with the schema checked.
pub struct MetaDb {
    snapshot: Snapshot,
    path: PathBuf,
    schema_version: i64,
}

impl MetaDb {
    /// Reads `meta.db` (lock-free, consistent; see [`super::bolt`]) and checks its schema.
    pub fn read(path: &Path) -> Result<MetaDb> {
        let snapshot = Snapshot::read(path).with_context(|| {
            format!(
                "cannot read containerd's metadata database {}",
                path.display()
            )
        })?;
        Self::from_snapshot(snapshot, path)
    }

    /// A meta.db already read; `path` is only for messages.
    pub fn from_snapshot(snapshot: Snapshot, path: &Path) -> Result<MetaDb> {
        let path = path.to_path_buf();
        let at = |what: &str| format!("{}: {what}", path.display());
        let v1 = snapshot
            .bucket(&[b"v1"])
            .with_context(|| at("cannot read the schema bucket v1"))?;
        let Some(v1) = v1 else {
            let found = snapshot
                .root()
                .keys()
                .map(|keys| {
                    keys.iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect()
                })
                .unwrap_or_else(|_| Vec::<String>::new());
            bail!(
                "{}",
                at(&format!(
                    "no schema bucket v1, so not a containerd metadata database this oci-export \
                     can read (top-level buckets: {found:?})"
                ))
            );
        };
        let version = v1
            .get(b"version")
            .with_context(|| at("cannot read v1/version"))?
            .ok_or_else(|| anyhow!(at("no v1/version: not a containerd metadata database")))?;
        let schema_version = varint(version).with_context(|| at("v1/version is damaged"))?;
        if !KNOWN_SCHEMA_VERSIONS.contains(&schema_version) {
            bail!(
                "{}",
                at(&format!(
                    "metadata schema version {schema_version}, which this oci-export does not \
                     know (it reads 3, written by containerd 1.6 and 1.7, and 4, by containerd \
                     2.x)"
                ))
            );
        }
        Ok(MetaDb {
            snapshot,
            path,
            schema_version,
        })
    }

    pub fn schema_version(&self) -> i64 {
        self.schema_version
    }

    /// The bbolt snapshot underneath, for what this type does not decode (leases, containers).
    pub fn bolt_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn txid(&self) -> u64 {
        self.snapshot.txid()
    }

    /// How many reads the consistent snapshot took (see [`Snapshot::attempts`]).
    pub fn attempts(&self) -> u32 {
        self.snapshot.attempts()
    }

    fn context(&self, what: String) -> String {
        format!("{}: {what}", self.path.display())
    }

    fn ns_bucket(&self, ns: &str, path: &[&[u8]]) -> Result<Option<Bucket<'_>>> {
        let mut full: Vec<&[u8]> = vec![b"v1", ns.as_bytes()];
        full.extend_from_slice(path);
        self.snapshot.bucket(&full).with_context(|| {
            self.context(format!(
                "cannot read bucket {}",
                full.iter()
                    .map(|k| String::from_utf8_lossy(k))
                    .collect::<Vec<_>>()
                    .join("/")
            ))
        })
    }

    /// The namespaces, in byte order.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        let v1 = self
            .snapshot
            .bucket(&[b"v1"])?
            .ok_or_else(|| anyhow!(self.context("v1 vanished".into())))?;
        let mut out = Vec::new();
        for (key, item) in v1
            .entries()
            .with_context(|| self.context("cannot list the namespaces".into()))?
        {
            if matches!(item, Item::Bucket(_)) {
                out.push(text(key));
            }
        }
        Ok(out)
    }

    /// Every image of namespace `ns`, by name (empty when the namespace has none or does not
    /// exist; see [`MetaDb::namespaces`]).
    pub fn images(&self, ns: &str) -> Result<Vec<ImageRecord>> {
        let Some(images) = self.ns_bucket(ns, &[b"images"])? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (name, item) in images
            .entries()
            .with_context(|| self.context(format!("cannot list the images of namespace {ns}")))?
        {
            if let Item::Bucket(b) = item {
                out.push(self.image_record(ns, name, &b)?);
            }
        }
        Ok(out)
    }

    /// The image named exactly `name` in namespace `ns`.
    pub fn image(&self, ns: &str, name: &str) -> Result<Option<ImageRecord>> {
        let Some(b) = self.ns_bucket(ns, &[b"images", name.as_bytes()])? else {
            return Ok(None);
        };
        self.image_record(ns, name.as_bytes(), &b).map(Some)
    }

    fn image_record(&self, ns: &str, name: &[u8], b: &Bucket<'_>) -> Result<ImageRecord> {
        let name = text(name);
        let fail = || self.context(format!("image {name} in namespace {ns}"));
        (|| -> Result<ImageRecord> {
            let target = b
                .bucket(b"target")?
                .ok_or_else(|| anyhow!("it has no target"))?;
            let digest = target
                .get(b"digest")?
                .ok_or_else(|| anyhow!("its target has no digest"))?;
            let digest: Digest = text(digest).parse()?;
            let media_type = target
                .get(b"mediatype")?
                .map(text)
                .ok_or_else(|| anyhow!("its target has no media type"))?;
            let size = target
                .get(b"size")?
                .ok_or_else(|| anyhow!("its target has no size"))?;
            let size = non_negative(varint(size).context("its target size is damaged")?)?;
            Ok(ImageRecord {
                target: Target {
                    digest,
                    media_type,
                    size,
                },
                labels: string_map(b, b"labels")?,
                annotations: string_map(b, b"annotations")?,
                created: timestamp(b, b"createdat")?,
                updated: timestamp(b, b"updatedat")?,
                name: name.clone(),
            })
        })()
        .with_context(fail)
    }

    /// Every content blob namespace `ns` references, by digest. Keys that are not sha256
    /// digests (containerd allows other algorithms; nothing we read writes them) are skipped.
    pub fn blobs(&self, ns: &str) -> Result<Vec<BlobRecord>> {
        let Some(blobs) = self.ns_bucket(ns, &[b"content", b"blob"])? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (key, item) in blobs
            .entries()
            .with_context(|| self.context(format!("cannot list the blobs of namespace {ns}")))?
        {
            let (Item::Bucket(b), Ok(digest)) = (item, text(key).parse::<Digest>()) else {
                continue;
            };
            out.push(self.blob_record(ns, digest, &b)?);
        }
        Ok(out)
    }

    /// The blob `digest` as namespace `ns` knows it; `None` when the namespace holds no
    /// reference to it (even if another namespace does and the file exists).
    pub fn blob(&self, ns: &str, digest: &Digest) -> Result<Option<BlobRecord>> {
        let key = digest.to_string();
        let Some(b) = self.ns_bucket(ns, &[b"content", b"blob", key.as_bytes()])? else {
            return Ok(None);
        };
        self.blob_record(ns, *digest, &b).map(Some)
    }

    fn blob_record(&self, ns: &str, digest: Digest, b: &Bucket<'_>) -> Result<BlobRecord> {
        (|| -> Result<BlobRecord> {
            let size = b.get(b"size")?.ok_or_else(|| anyhow!("it has no size"))?;
            Ok(BlobRecord {
                digest,
                size: non_negative(varint(size).context("its size is damaged")?)?,
                labels: string_map(b, b"labels")?,
                created: timestamp(b, b"createdat")?,
                updated: timestamp(b, b"updatedat")?,
            })
        })()
        .with_context(|| self.context(format!("blob {digest} in namespace {ns}")))
    }

    /// The snapshots namespace `ns` holds in `snapshotter` (`overlayfs`), by key.
    pub fn snapshots(&self, ns: &str, snapshotter: &str) -> Result<Vec<SnapshotRecord>> {
        let Some(bucket) = self.ns_bucket(ns, &[b"snapshots", snapshotter.as_bytes()])? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (key, item) in bucket.entries().with_context(|| {
            self.context(format!(
                "cannot list the {snapshotter} snapshots of namespace {ns}"
            ))
        })? {
            if let Item::Bucket(b) = item {
                out.push(self.snapshot_record(ns, snapshotter, key, &b)?);
            }
        }
        Ok(out)
    }

    /// The snapshot `key` (a chain ID, for an unpacked layer) of namespace `ns`.
    pub fn snapshot(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &str,
    ) -> Result<Option<SnapshotRecord>> {
        let path: [&[u8]; 3] = [b"snapshots", snapshotter.as_bytes(), key.as_bytes()];
        let Some(b) = self.ns_bucket(ns, &path)? else {
            return Ok(None);
        };
        self.snapshot_record(ns, snapshotter, key.as_bytes(), &b)
            .map(Some)
    }

    fn snapshot_record(
        &self,
        ns: &str,
        snapshotter: &str,
        key: &[u8],
        b: &Bucket<'_>,
    ) -> Result<SnapshotRecord> {
        let key = text(key);
        (|| -> Result<SnapshotRecord> {
            let name = b
                .get(b"name")?
                .map(text)
                .ok_or_else(|| anyhow!("it has no snapshotter name"))?;
            let children = match b.bucket(b"children")? {
                Some(c) => c.keys()?.into_iter().map(text).collect(),
                None => Vec::new(),
            };
            Ok(SnapshotRecord {
                name,
                parent: b.get(b"parent")?.filter(|p| !p.is_empty()).map(text),
                children,
                labels: string_map(b, b"labels")?,
                created: timestamp(b, b"createdat")?,
                updated: timestamp(b, b"updatedat")?,
                key: key.clone(),
            })
        })()
        .with_context(|| self.context(format!("{snapshotter} snapshot {key} in namespace {ns}")))
    }
}

/// A consistent snapshot of a snapshotter's own `metadata.db` (overlayfs, native: the same
/// `snapshots/storage` schema).
pub struct SnapshotterDb {
    snapshot: Snapshot,
    root: PathBuf,
}

impl SnapshotterDb {
    /// Reads `<root>/metadata.db` of the snapshotter rooted at `root`
    /// (`<containerd root>/io.containerd.snapshotter.v1.overlayfs`).
    pub fn read(root: &Path) -> Result<SnapshotterDb> {
        let path = root.join("metadata.db");
        let snapshot = Snapshot::read(&path)
            .with_context(|| format!("cannot read the snapshotter database {}", path.display()))?;
        Ok(Self::from_snapshot(snapshot, root))
    }

    pub fn from_snapshot(snapshot: Snapshot, root: &Path) -> SnapshotterDb {
        SnapshotterDb {
            snapshot,
            root: root.to_path_buf(),
        }
    }

    /// Where snapshot `id`'s files are.
    pub fn fs_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string()).join("fs")
    }

    /// The files of the committed snapshot the snapshotter calls `name` (a layer unpacked on
    /// top of its parents; [`SnapshotRecord::name`] gives the name from meta.db's key). `None`
    /// when there is no such snapshot or it is not committed (an active or view snapshot is a
    /// container's or a mount's, still changing). The two databases are read at different
    /// moments: check that the directory exists when it is used.
    pub fn committed_fs_dir(&self, name: &str) -> Result<Option<PathBuf>> {
        Ok(self
            .snapshot(name)?
            .filter(|r| r.kind == SnapshotKind::Committed)
            .map(|r| self.fs_dir(r.id)))
    }

    fn context(&self, what: String) -> String {
        format!("{}: {what}", self.root.join("metadata.db").display())
    }

    /// Every snapshot, by name.
    pub fn snapshots(&self) -> Result<Vec<SnapshotterRecord>> {
        let Some(bucket) = self
            .snapshot
            .bucket(&[b"v1", b"snapshots"])
            .with_context(|| self.context("cannot read v1/snapshots".into()))?
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (name, item) in bucket
            .entries()
            .with_context(|| self.context("cannot list the snapshots".into()))?
        {
            if let Item::Bucket(b) = item {
                out.push(self.record(name, &b)?);
            }
        }
        Ok(out)
    }

    /// The snapshot the snapshotter calls `name` ([`SnapshotRecord::name`]).
    pub fn snapshot(&self, name: &str) -> Result<Option<SnapshotterRecord>> {
        let Some(b) = self
            .snapshot
            .bucket(&[b"v1", b"snapshots", name.as_bytes()])
            .with_context(|| self.context(format!("cannot read snapshot {name}")))?
        else {
            return Ok(None);
        };
        self.record(name.as_bytes(), &b).map(Some)
    }

    fn record(&self, name: &[u8], b: &Bucket<'_>) -> Result<SnapshotterRecord> {
        let name = text(name);
        (|| -> Result<SnapshotterRecord> {
            let id = b.get(b"id")?.ok_or_else(|| anyhow!("it has no id"))?;
            let id = uvarint(id).context("its id is damaged")?;
            let kind = match b.get(b"kind")? {
                Some([1]) => SnapshotKind::View,
                Some([2]) => SnapshotKind::Active,
                Some([3]) => SnapshotKind::Committed,
                Some([k]) => SnapshotKind::Unknown(*k),
                Some(other) => bail!("its kind is {} bytes long, not 1", other.len()),
                None => SnapshotKind::Unknown(0),
            };
            let usage = |key: &[u8]| -> Result<Option<i64>> {
                b.get(key)?
                    .map(|v| varint(v).with_context(|| format!("its {} is damaged", text(key))))
                    .transpose()
            };
            Ok(SnapshotterRecord {
                id,
                kind,
                parent: b.get(b"parent")?.filter(|p| !p.is_empty()).map(text),
                labels: string_map(b, b"labels")?,
                inodes: usage(b"inodes")?,
                size: usage(b"size")?,
                created: timestamp(b, b"createdat")?,
                updated: timestamp(b, b"updatedat")?,
                name: name.clone(),
            })
        })()
        .with_context(|| self.context(format!("snapshot {name}")))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn non_negative(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| anyhow!("negative size {v}"))
}

/// A bucket of string → string (labels, annotations); missing means empty.
fn string_map(parent: &Bucket<'_>, key: &[u8]) -> Result<BTreeMap<String, String>> {
    let Some(b) = parent.bucket(key)? else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for (k, item) in b.entries()? {
        match item {
            Item::Value(v) => {
                out.insert(text(k), text(v));
            }
            Item::Bucket(_) => bail!("{} holds a bucket under {}", text(key), text(k)),
        }
    }
    Ok(out)
}

fn timestamp(parent: &Bucket<'_>, key: &[u8]) -> Result<Option<Timestamp>> {
    parent
        .get(key)?
        .map(|v| go_time(v).with_context(|| format!("{} is damaged", text(key))))
        .transpose()
}

/// Go's `binary.Uvarint`, requiring the whole value to be the one number.
pub fn uvarint(bytes: &[u8]) -> Result<u64> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if i == 9 && b > 1 {
            bail!("varint overflows 64 bits");
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if i + 1 != bytes.len() {
                bail!("{} bytes after the varint", bytes.len() - i - 1);
            }
            return Ok(value);
        }
        if i == 9 {
            bail!("varint overflows 64 bits");
        }
    }
    bail!("varint cut short ({} bytes)", bytes.len())
}

/// Go's `binary.Varint` (zigzag), requiring the whole value to be the one number.
pub fn varint(bytes: &[u8]) -> Result<i64> {
    let u = uvarint(bytes)?;
    let magnitude = (u >> 1) as i64;
    Ok(if u & 1 == 0 { magnitude } else { !magnitude })
}

/// Seconds from Go's zero time (January 1, year 1, UTC) to the Unix epoch.
const GO_ZERO_TO_UNIX: i64 = 62_135_596_800;

/// Go's `time.Time.MarshalBinary`: version 1 (15 bytes) or 2 (16, with seconds of zone
/// offset): version, seconds since year 1 (big-endian i64), nanoseconds (u32), zone offset in
/// minutes (i16, -1 for UTC) [, offset seconds].
pub fn go_time(bytes: &[u8]) -> Result<Timestamp> {
    let expected = match bytes.first() {
        Some(1) => 15,
        Some(2) => 16,
        Some(v) => bail!("time encoding version {v}, expected 1 or 2"),
        None => bail!("empty time"),
    };
    if bytes.len() != expected {
        bail!("time of {} bytes, expected {expected}", bytes.len());
    }
    let seconds = i64::from_be_bytes(bytes[1..9].try_into().unwrap());
    let nanos = u32::from_be_bytes(bytes[9..13].try_into().unwrap());
    if nanos >= 1_000_000_000 {
        bail!("{nanos} nanoseconds");
    }
    Ok(Timestamp {
        unix_seconds: seconds.wrapping_sub(GO_ZERO_TO_UNIX),
        nanos,
    })
}

#[cfg(test)]
mod tests {
    use super::super::bolt::testfile::{self, bucket, entries, value, Layout};
    use super::*;

    fn fixture(name: &str) -> Snapshot {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/containerd")
            .join(name);
        Snapshot::read(&path).unwrap()
    }

    fn digest(s: &str) -> Digest {
        s.parse().unwrap()
    }

    /// The committed fixture: containerd 1.6.20 after `ctr -n moby images import` of a
    /// `docker save` archive (oe-test/load-whiteouts), an OCI archive with zstd layers of the
    /// same image, and a two-platform index of which only linux/amd64 was imported; then the
    /// docker-archive image tagged `moby-dangling@…` and its name removed (see
    /// tests/data/containerd/README.md).
    fn meta() -> MetaDb {
        MetaDb::from_snapshot(fixture("meta.db"), Path::new("meta.db")).unwrap()
    }

    const WHITEOUTS: &str =
        "sha256:97f61362acc5d309976af850dfff69adf8fae361137d9fb9bbfdac4d8210dfe2";
    const ZSTD: &str = "sha256:a7ad6a8b037797d0c49925c62f20757d5c01527d62cbceab3876b234537d8af0";
    const INDEX: &str = "sha256:520e1af2a1a18d025c7985356473ad67552664e6a281d49b9e6c42586eabdfe3";
    const AMD64: &str = "sha256:5fb999da44ea745ffa817e39f735f8905f5881cb36414f48b4ba4950ce9d08cc";
    const ARM64: &str = "sha256:864c9179a64c2e50c56675a8470ed3111e7af6883c4cab0bdcf983cfc1cdd94e";
    const BUSYBOX_GZIP: &str =
        "sha256:9db2a5ea99f90562b40af84e6244493b00798d73e031ad6625c0730e19fa8746";
    const BUSYBOX_DIFF: &str =
        "sha256:4fd528ca56760edb3a493fa16a2f66eb265b6227c9dad69aec0279a1aabb5f26";

    #[test]
    fn images_of_a_real_meta_db() {
        let db = meta();
        assert_eq!(db.schema_version(), 3);
        assert_eq!(db.namespaces().unwrap(), vec!["moby"]);
        let images = db.images("moby").unwrap();
        let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "docker.io/oe-test/load-whiteouts:zstd",
                "docker.io/oe-test/multi:latest",
                &format!("moby-dangling@{WHITEOUTS}"),
            ]
        );
        let target = |i: usize| (images[i].target.digest.to_string(), images[i].target.size);
        assert_eq!(target(0), (ZSTD.to_string(), 555));
        assert_eq!(target(1), (INDEX.to_string(), 517));
        assert_eq!(target(2), (WHITEOUTS.to_string(), 577));
        assert_eq!(
            images[1].target.media_type,
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(
            images[2].target.media_type,
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        // A dangling image keeps the annotations of the name it lost.
        assert_eq!(
            images[2].annotations["io.containerd.image.name"],
            "docker.io/oe-test/load-whiteouts:latest"
        );
        assert!(images.iter().all(|i| i.labels.is_empty()));
        let created = images[0].created.unwrap();
        assert!(created.unix_seconds > 1_700_000_000, "{created:?}");
        assert!(images[0].updated.unwrap() >= created);
        assert_eq!(
            db.image("moby", &images[1].name).unwrap().as_ref(),
            Some(&images[1])
        );
        assert_eq!(db.image("moby", "docker.io/oe-test/nope:1").unwrap(), None);
        assert_eq!(db.images("k8s.io").unwrap(), vec![]);
    }

    #[test]
    fn content_of_a_real_meta_db() {
        let db = meta();
        let blobs = db.blobs("moby").unwrap();
        assert_eq!(blobs.len(), 12);
        // The gzip layer the unpacker applied got its uncompressed digest; the zstd layers,
        // whose snapshots already existed from the docker-archive import, did not.
        let busybox = db.blob("moby", &digest(BUSYBOX_GZIP)).unwrap().unwrap();
        assert_eq!(busybox.size, 1_084_057);
        assert_eq!(busybox.uncompressed(), Some(digest(BUSYBOX_DIFF)));
        assert!(busybox.distribution_sources().is_empty());
        let zstd_manifest = db.blob("moby", &digest(ZSTD)).unwrap().unwrap();
        for layer in zstd_manifest
            .gc_refs()
            .iter()
            .filter(|(k, _)| k.starts_with("content.l."))
        {
            let blob = db.blob("moby", &digest(layer.1)).unwrap().unwrap();
            assert_eq!(blob.uncompressed(), None, "{}", layer.1);
        }
        // A docker-archive layer is stored uncompressed and labelled with its own digest.
        let manifest = db.blob("moby", &digest(WHITEOUTS)).unwrap().unwrap();
        let l0 = digest(manifest.gc_refs()["content.l.0"]);
        assert_eq!(
            db.blob("moby", &l0).unwrap().unwrap().uncompressed(),
            Some(l0)
        );
        // Of the index, only the amd64 manifest was fetched: the arm64 one has no record and
        // no gc reference.
        let index = db.blob("moby", &digest(INDEX)).unwrap().unwrap();
        assert_eq!(
            index.gc_refs().into_iter().collect::<Vec<_>>(),
            vec![("content.m.0", AMD64)]
        );
        assert!(db.blob("moby", &digest(AMD64)).unwrap().is_some());
        assert_eq!(db.blob("moby", &digest(ARM64)).unwrap(), None);
        assert_eq!(db.blobs("other").unwrap(), vec![]);
    }

    #[test]
    fn snapshots_of_real_databases() {
        let db = meta();
        let snaps = db.snapshots("moby", "overlayfs").unwrap();
        assert_eq!(snaps.len(), 3);
        let upper = db
            .snapshot(
                "moby",
                "overlayfs",
                "sha256:699e3c8e789442693993370242953faa59e24cf41e1f965d4908b15674de3a47",
            )
            .unwrap()
            .unwrap();
        let lower = "sha256:73e5828a21ce189a2c14afbf4e6d1332d683e64aa13ee0d0b880c42fc580d26e";
        assert_eq!(upper.parent.as_deref(), Some(lower));
        assert_eq!(upper.name, format!("moby/4/{}", upper.key));
        let lower = snaps.iter().find(|s| s.key == lower).unwrap();
        assert_eq!(lower.children, vec![upper.key.clone()]);
        assert_eq!(lower.parent, None);

        let root = Path::new("/containerd/io.containerd.snapshotter.v1.overlayfs");
        let sdb = SnapshotterDb::from_snapshot(fixture("overlayfs-metadata.db"), root);
        let all = sdb.snapshots().unwrap();
        assert_eq!(all.len(), 3);
        let record = sdb.snapshot(&upper.name).unwrap().unwrap();
        assert_eq!(record.id, 2);
        assert_eq!(record.kind, SnapshotKind::Committed);
        assert_eq!(record.parent.as_deref(), Some(lower.name.as_str()));
        assert_eq!((record.inodes, record.size), (Some(5), Some(16384)));
        assert_eq!(sdb.fs_dir(record.id), root.join("snapshots/2/fs"));
        assert_eq!(
            sdb.committed_fs_dir(&upper.name).unwrap(),
            Some(root.join("snapshots/2/fs"))
        );
        assert_eq!(sdb.committed_fs_dir(&upper.key).unwrap(), None);
        // Every namespace snapshot has its snapshotter record.
        for s in &snaps {
            assert!(sdb.snapshot(&s.name).unwrap().is_some(), "{}", s.name);
        }
        assert_eq!(sdb.snapshot("moby/99/none").unwrap(), None);
    }

    fn db_with(version: &[u8]) -> Result<MetaDb> {
        let model = entries([(
            b"v1",
            bucket([(b"version", value(version)), (b"moby", bucket([]))]),
        )]);
        let snap = Snapshot::from_bytes(testfile::build(&model, Layout::default()).bytes)?;
        MetaDb::from_snapshot(snap, Path::new("/x/meta.db"))
    }

    #[test]
    fn schema_versions_3_and_4_only() {
        assert_eq!(db_with(&[6]).unwrap().schema_version(), 3);
        assert_eq!(db_with(&[8]).unwrap().schema_version(), 4);
        for (bytes, why) in [
            (&[4u8][..], "schema version 2,"),
            (&[10], "schema version 5,"),
            (&[0x80], "cut short"),
            (&[6, 0], "1 bytes after"),
        ] {
            let err = format!("{:#}", db_with(bytes).err().unwrap());
            assert!(err.contains(why), "{why}: {err}");
            assert!(err.starts_with("/x/meta.db: "), "{err}");
        }
        let model = entries([(b"v2", bucket([]))]);
        let snap = Snapshot::from_bytes(testfile::build(&model, Layout::default()).bytes).unwrap();
        let err = MetaDb::from_snapshot(snap, Path::new("m")).err().unwrap();
        assert!(err.to_string().contains("no schema bucket v1"), "{err}");
        assert!(err.to_string().contains("[\"v2\"]"), "{err}");
    }

    #[test]
    fn a_damaged_record_names_itself() {
        let model = entries([(
            b"v1",
            bucket([
                (b"version", value(&[6])),
                (
                    b"moby",
                    bucket([(
                        b"images",
                        bucket([(
                            b"docker.io/library/a:1",
                            bucket([(
                                b"target",
                                bucket([
                                    (b"digest", value(WHITEOUTS.as_bytes())),
                                    (b"mediatype", value(b"m")),
                                    (b"size", value(&[1])),
                                ]),
                            )]),
                        )]),
                    )]),
                ),
            ]),
        )]);
        let snap = Snapshot::from_bytes(testfile::build(&model, Layout::default()).bytes).unwrap();
        let db = MetaDb::from_snapshot(snap, Path::new("meta.db")).unwrap();
        let err = format!("{:#}", db.images("moby").unwrap_err());
        assert!(
            err.contains("image docker.io/library/a:1 in namespace moby: negative size -1"),
            "{err}"
        );
    }

    #[test]
    fn go_encodings() {
        for (bytes, want) in [
            (&[0u8][..], 0i64),
            (&[1], -1),
            (&[2], 1),
            (&[0x80, 0x01], 64),
            (
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                i64::MIN,
            ),
            (
                &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                i64::MAX,
            ),
        ] {
            assert_eq!(varint(bytes).unwrap(), want, "{bytes:?}");
        }
        assert_eq!(uvarint(&[0xac, 0x02]).unwrap(), 300);
        for bad in [&[][..], &[0x80], &[0xff; 10], &[0xff; 11], &[1, 2]] {
            assert!(uvarint(bad).is_err(), "{bad:?}");
        }
        // 2023-11-14T22:13:20.5Z as Go marshals it (version 1, UTC).
        let mut t = vec![1u8];
        t.extend_from_slice(&(1_700_000_000i64 + GO_ZERO_TO_UNIX).to_be_bytes());
        t.extend_from_slice(&500_000_000u32.to_be_bytes());
        t.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(
            go_time(&t).unwrap(),
            Timestamp {
                unix_seconds: 1_700_000_000,
                nanos: 500_000_000
            }
        );
        let mut v2 = t.clone();
        v2[0] = 2;
        v2.push(0);
        assert_eq!(go_time(&v2).unwrap().unix_seconds, 1_700_000_000);
        assert!(go_time(&t[..14]).is_err());
        assert!(go_time(&v2[..15]).is_err());
        let mut bad_nanos = t.clone();
        bad_nanos[9..13].copy_from_slice(&1_000_000_000u32.to_be_bytes());
        assert!(go_time(&bad_nanos).is_err());
    }
}
