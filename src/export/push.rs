//! `oci-export push`: an image from storage straight into a registry, with no archive between.
//!
//! Each layer takes the cheapest way there:
//! 1. Ask the registry for a blob that would be the layer — the compressed blob the blob cache
//!    recorded for it, the blob a content store keeps (containerd), or a blob Docker recorded
//!    pulling or pushing (v2metadata) — by `HEAD` in the destination repository, or by a
//!    cross-repository mount from the repository it came from, on the same registry. Nothing is
//!    compressed or uploaded for a layer the registry already has.
//! 2. Otherwise make the blob (compressed into the blob cache, as an export would; a stored
//!    blob verified against its digest) and upload it.
//!
//! Layers are pushed in parallel, then each image's config; the manifest goes last, once every
//! blob it names is confirmed, so a failed push never leaves a tag pointing at an incomplete
//! image. Just before it, the store is checked again: the image pushed is the one it holds.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::blob_store::BlobStore;
use super::layers::measure_for_progress;
use super::made::{cache_key, make_layer, make_layer_teed, MakeJob};
use super::plan::{plan_layers, BlobPlan, Requested};
use super::{image_names, layer_label, CacheChoice, ExportSet};
use crate::compress::Settings;
use crate::digest::{hash_reader, Digest};
use crate::io::{EngineFactory, IoMode};
use crate::model::{BlobCompression, Image, Layer, ManifestView, StoredBlob};
use crate::parallel;
use crate::reference::Reference;
use crate::regenerate::Regenerated;
use crate::sink::oci_layout::Descriptor;
use crate::sink::registry::{BytesBlob, ClientOptions, FileBlob, Registry, Repository};

use crate::progress::{self, Display, Phase, Progress};
use crate::source::{self, SourceOptions};

/// Everything a push needs to know.
pub struct PushRequest {
    pub image: String,
    /// `registry/repository[:tag]`, as typed.
    pub destination: String,
    pub source: SourceOptions,
    pub io_mode: IoMode,
    pub jobs: usize,
    pub show_progress: bool,
    /// `-q`: not even the note on whose credentials are used.
    pub quiet: bool,
    pub regenerate_missing: bool,
    /// The layer form asked for (`-c`; gzip when not given).
    pub layers: Requested,
    pub cache: CacheChoice,
    pub registry: ClientOptions,
}

/// Media types of Docker's schema2 manifests, what `docker push` writes for gzip layers and
/// what every puller reads.
mod docker_media_type {
    pub const MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
}

/// Pushes the image; returns `<repository>@<manifest digest>` (the line crane prints).
pub fn run(req: &PushRequest) -> Result<String> {
    let destination = Reference::parse(&req.destination)
        .with_context(|| format!("destination {}", req.destination))?
        .with_default_tag();
    if destination.digest.is_some() {
        bail!(
            "destination {}: give a tag, not a digest (the digest of what is pushed is printed)",
            req.destination
        );
    }
    let tag = destination.tag.clone().expect("a default tag was added");

    let store = source::open(&req.source)?;
    let mut set = ExportSet::resolve(store.as_ref(), std::slice::from_ref(&req.image))?;
    let stored = set.images.clone();
    let roots = store.roots();
    let mut regenerated: Option<Regenerated> = None;
    set.regenerate_missing(req.regenerate_missing, &mut regenerated, &roots)?;
    let plans = plan_layers(&set.layers, req.layers);
    let blobs = BlobStore::open(&req.cache, &roots)?;

    let registry = Registry::connect(&destination.domain, &req.registry)?;
    if let Some(note) = credentials_note(&registry).filter(|_| !req.quiet) {
        crate::progress::note(&note);
    }
    let repository = registry.repository(&destination.path);
    let progress = Arc::new(Progress::new(set.layers.len()));
    // The total before the first byte, for the display only (a pass over each tar-split).
    let sizes = if req.show_progress {
        measure_for_progress(&set.layers, &plans, req.jobs)?
    } else {
        vec![None; set.layers.len()]
    };
    let pusher = Pusher {
        repository: &repository,
        destination: &destination,
        layers: &set.layers,
        plans: &plans,
        job: MakeJob {
            layers: &set.layers,
            plans: &plans,
            store: &blobs,
            engines: EngineFactory::new(req.io_mode)?,
            jobs: req.jobs,
            progress: &progress,
            sizes: &sizes,
        },
        tally: Tally::default(),
    };

    let name = repository.name();
    let display = req.show_progress.then(|| {
        Display::start(
            progress.clone(),
            progress::Job {
                title: format!("{} → {name}:{tag}", image_names(&set.images)),
                total: sizes.iter().copied().sum(),
                layers: set.layers.iter().map(layer_label).collect(),
            },
        )
    });
    let result = pusher.push_all(&set, &tag, || set.confirm(store.as_ref(), &stored));
    if let Some(display) = display {
        let summary = result
            .as_ref()
            .ok()
            .map(|digest| pusher.tally.summary(&name, digest, display.elapsed()));
        display.finish(summary);
    }
    blobs.prune_cache();
    let digest = result?;
    Ok(format!("{name}@{digest}"))
}

/// What a push did, for its summary line.
#[derive(Default)]
struct Tally {
    uploaded: AtomicUsize,
    uploaded_bytes: AtomicU64,
    present: AtomicUsize,
    mounted: AtomicUsize,
}

impl Tally {
    fn summary(&self, name: &str, digest: &Digest, elapsed: std::time::Duration) -> String {
        let bytes = self.uploaded_bytes.load(Ordering::Relaxed);
        format!(
            "pushed {name}@{digest}: {} layers uploaded ({}), {} already there, {} mounted, in \
             {:.1} s",
            self.uploaded.load(Ordering::Relaxed),
            progress::human_bytes(bytes),
            self.present.load(Ordering::Relaxed),
            self.mounted.load(Ordering::Relaxed),
            elapsed.as_secs_f64(),
        )
    }
}

/// Where the credentials came from, when that may surprise: under sudo the docker CLI (and so
/// this) reads root's config, not the invoking user's.
fn credentials_note(registry: &Registry) -> Option<String> {
    let sudo_user = std::env::var("SUDO_USER").ok()?;
    if !nix::unistd::geteuid().is_root() || sudo_user == "root" {
        return None;
    }
    let login = registry.login();
    let config = login.config_file.as_ref()?;
    Some(format!(
        "running under sudo: credentials for {} come from {} ({}), root's docker config, not \
         {sudo_user}'s; set DOCKER_CONFIG to use another",
        registry.domain(),
        config.display(),
        if login.config_found {
            login.source.as_str()
        } else {
            "no such file: anonymous"
        },
    ))
}

/// A layer as pushed: the blob the manifest names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pushed {
    digest: Digest,
    size: u64,
    format: BlobCompression,
}

/// One push under way.
struct Pusher<'a> {
    repository: &'a Repository<'a>,
    destination: &'a Reference,
    layers: &'a [Layer],
    plans: &'a [BlobPlan],
    job: MakeJob<'a>,
    tally: Tally,
}

impl Pusher<'_> {
    /// Pushes every layer, every config, every manifest, and tags the result; returns the
    /// tagged manifest's digest. `confirm` runs before the tag is written.
    fn push_all(
        &self,
        set: &ExportSet,
        tag: &str,
        confirm: impl FnOnce() -> Result<()>,
    ) -> Result<Digest> {
        let indices: Vec<usize> = (0..self.layers.len()).collect();
        // More uploads than cores: an upload mostly waits on the network, while compression
        // (which runs `jobs` threads of its own) keeps the cores busy.
        let workers = (self.job.jobs + 2).clamp(1, 8);
        let pushed = parallel::map(&indices, workers, |&index| {
            self.push_layer(index)
                .with_context(|| format!("pushing {}", self.layers[index].origin))
        })?;
        let layer_index = set.layer_index();

        let mut manifests = Vec::new();
        for image in &set.images {
            self.push_config(image)?;
            let layers: Vec<Pushed> = image
                .layers
                .iter()
                .map(|l| pushed[layer_index[&l.key()]])
                .collect();
            manifests.push(image_manifest(image, &layers));
        }
        confirm()?;
        match manifests.as_slice() {
            [manifest] => self
                .repository
                .put_manifest(tag, &manifest.media_type, &manifest.bytes),
            _ => {
                // Several platforms: each manifest by digest, then the index that lists them.
                for manifest in &manifests {
                    let digest = Digest::of(&manifest.bytes);
                    self.repository.put_manifest(
                        &digest.to_string(),
                        &manifest.media_type,
                        &manifest.bytes,
                    )?;
                }
                let index = image_index(&set.images, &manifests);
                self.repository
                    .put_manifest(tag, &index.media_type, &index.bytes)
            }
        }
    }

    /// Gets layer `index` into the repository, the cheapest way there is, and says how on its
    /// progress line.
    fn push_layer(&self, index: usize) -> Result<Pushed> {
        let (pushed, how) = self.place_layer(index)?;
        let progress = self.job.progress;
        if how != Phase::Done {
            // Nothing of it was processed here: the whole layer counts as done for the bar.
            let size = self.job.sizes.get(index).copied().flatten();
            progress.phase(index, how, size);
            progress.add(index, size.unwrap_or(0));
        }
        progress.finish(index, how);
        let counter = match how {
            Phase::Exists => &self.tally.present,
            Phase::Mounted => &self.tally.mounted,
            _ => &self.tally.uploaded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(pushed)
    }

    /// Gets layer `index` there: `Exists` or `Mounted` when nothing was uploaded, else `Done`.
    fn place_layer(&self, index: usize) -> Result<(Pushed, Phase)> {
        let layer = &self.layers[index];
        match &self.plans[index] {
            BlobPlan::Stored(blob) => self.push_stored(index, layer, blob),
            BlobPlan::Made(Some(settings)) => {
                if let Some(found) = self.already_there(layer, settings)? {
                    return Ok(found);
                }
                // Not in the cache either (else it would have been found, or is taken from
                // there): compress and upload at once.
                let cached = self
                    .job
                    .store
                    .recorded(&cache_key(layer, settings))
                    .is_some();
                if cached {
                    return self.make_and_upload(index, settings.algorithm.format());
                }
                self.compress_while_uploading(index, settings)
            }
            BlobPlan::Made(None) | BlobPlan::Tar => {
                if let Some(size) = self.repository.blob_size(&layer.diff_id)? {
                    let pushed = Pushed {
                        digest: layer.diff_id,
                        size,
                        format: BlobCompression::None,
                    };
                    return Ok((pushed, Phase::Exists));
                }
                self.make_and_upload(index, BlobCompression::None)
            }
        }
    }

    /// Uploads `blob` as layer `index`, its line showing the bytes sent.
    fn upload(&self, index: usize, blob: &dyn crate::sink::registry::BlobSource) -> Result<()> {
        let progress = self.job.progress;
        progress.phase(index, Phase::Uploading, Some(blob.size()));
        self.repository
            .upload(blob, &|sent| progress.set_phase_bytes(index, sent))?;
        self.tally
            .uploaded_bytes
            .fetch_add(blob.size(), Ordering::Relaxed);
        Ok(())
    }

    /// A compressed blob of `layer` the registry may already hold: the one the blob cache
    /// recorded (a re-push), or one Docker pulled or pushed (v2metadata), in the destination
    /// repository or mountable from its source repository on the same registry.
    fn already_there(&self, layer: &Layer, settings: &Settings) -> Result<Option<(Pushed, Phase)>> {
        let format = settings.algorithm.format();
        if let Some((digest, size)) = self.job.store.recorded(&cache_key(layer, settings)) {
            if self.repository.blob_size(&digest)? == Some(size) {
                let pushed = Pushed {
                    digest,
                    size,
                    format,
                };
                return Ok(Some((pushed, Phase::Exists)));
            }
        }
        for remote in &layer.remote {
            if remote.registry != self.destination.domain {
                continue;
            }
            let Some((size, how)) = self.present_or_mounted(&remote.digest, &remote.repository)?
            else {
                continue;
            };
            // Docker's records say which blob, not how it is compressed: look at its first
            // bytes, so that a zstd blob is never named gzip in the manifest.
            if self.repository.blob_format(&remote.digest)? == Some(format) {
                let pushed = Pushed {
                    digest: remote.digest,
                    size,
                    format,
                };
                return Ok(Some((pushed, how)));
            }
        }
        Ok(None)
    }

    /// The blob's size once it is in the destination repository, and how it got there:
    /// already there, or mounted from `from` on the same registry. `None` if neither.
    fn present_or_mounted(&self, digest: &Digest, from: &str) -> Result<Option<(u64, Phase)>> {
        if let Some(size) = self.repository.blob_size(digest)? {
            return Ok(Some((size, Phase::Exists)));
        }
        if from != self.destination.path && self.repository.mount(digest, from)? {
            return Ok(self
                .repository
                .blob_size(digest)?
                .map(|size| (size, Phase::Mounted)));
        }
        Ok(None)
    }

    /// A content store's blob, pushed as stored: found in the registry, mounted from where it
    /// was pulled, or verified and uploaded.
    fn push_stored(
        &self,
        index: usize,
        layer: &Layer,
        blob: &StoredBlob,
    ) -> Result<(Pushed, Phase)> {
        let pushed = Pushed {
            digest: blob.digest,
            size: blob.size,
            format: blob.compression,
        };
        if self.repository.blob_size(&blob.digest)?.is_some() {
            return Ok((pushed, Phase::Exists));
        }
        for remote in layer.remote.iter().filter(|r| r.digest == blob.digest) {
            if remote.registry != self.destination.domain {
                continue;
            }
            if let Some((_, how)) = self.present_or_mounted(&blob.digest, &remote.repository)? {
                return Ok((pushed, how));
            }
        }
        self.job
            .progress
            .phase(index, Phase::Verifying, Some(blob.size));
        // Verified before it leaves: the registry would refuse a wrong digest too, but only
        // after the whole upload, and in its own words.
        let mut file = std::fs::File::open(&blob.path).with_context(|| {
            format!("blob {}: cannot open {}", blob.digest, blob.path.display())
        })?;
        let (digest, size) =
            hash_reader(&mut file).with_context(|| format!("reading {}", blob.path.display()))?;
        if (digest, size) != (blob.digest, blob.size) {
            bail!(
                "blob {} ({}) holds {size} bytes hashing to {digest}; the content store is damaged",
                blob.digest,
                blob.path.display()
            );
        }
        self.job.progress.add(index, blob.size);
        self.upload(index, &FileBlob::new(file, blob.digest, blob.size))?;
        Ok((pushed, Phase::Done))
    }

    /// Compresses layer `index` (into the cache, as always) while a second thread uploads what
    /// comes out, so that compression and upload overlap. When the streamed upload does not
    /// work out (the registry refused or broke it), the blob, made by then, is uploaded the
    /// ordinary way, with every retry and chunking rule that allows.
    fn compress_while_uploading(
        &self,
        index: usize,
        settings: &Settings,
    ) -> Result<(Pushed, Phase)> {
        // A few MiB of compressed output in flight: enough to keep the connection busy.
        let (pieces_tx, pieces) = std::sync::mpsc::sync_channel(64);
        let (made_tx, made) = std::sync::mpsc::sync_channel(1);
        let (ready, streamed) = std::thread::scope(|scope| {
            let uploader = scope.spawn(|| {
                self.repository
                    .upload_streamed(crate::sink::registry::Streamed { pieces, made })
            });
            let ready = make_layer_teed(&self.job, index, &AtomicBool::new(false), Some(pieces_tx));
            let _ = made_tx.send(ready.as_ref().ok().map(|r| (r.info.digest, r.info.size)));
            (ready, uploader.join())
        });
        let ready = ready?;
        let pushed = Pushed {
            digest: ready.info.digest,
            size: ready.info.size,
            format: settings.algorithm.format(),
        };
        if matches!(streamed, Ok(Ok(true))) {
            self.tally
                .uploaded_bytes
                .fetch_add(pushed.size, Ordering::Relaxed);
            return Ok((pushed, Phase::Done));
        }
        if self.repository.blob_size(&pushed.digest)? == Some(pushed.size) {
            return Ok((pushed, Phase::Exists));
        }
        self.upload(
            index,
            &FileBlob::new(ready.file, pushed.digest, pushed.size),
        )?;
        Ok((pushed, Phase::Done))
    }

    /// Makes layer `index`'s blob (compressed into the cache, or a scratch file) and uploads it
    /// unless the registry turns out to have it.
    fn make_and_upload(&self, index: usize, format: BlobCompression) -> Result<(Pushed, Phase)> {
        let ready = make_layer(&self.job, index, &AtomicBool::new(false))?;
        let pushed = Pushed {
            digest: ready.info.digest,
            size: ready.info.size,
            format,
        };
        if self.repository.blob_size(&pushed.digest)? == Some(pushed.size) {
            return Ok((pushed, Phase::Exists));
        }
        self.upload(
            index,
            &FileBlob::new(ready.file, pushed.digest, pushed.size),
        )?;
        Ok((pushed, Phase::Done))
    }

    fn push_config(&self, image: &Image) -> Result<()> {
        if self.repository.blob_size(&image.id)?.is_none() {
            self.repository
                .upload(&BytesBlob::new(&image.config), &|_| {})
                .with_context(|| format!("pushing the config of image {}", image.id))?;
        }
        Ok(())
    }
}

/// A manifest to put.
struct Document {
    media_type: String,
    bytes: Vec<u8>,
}

#[derive(Serialize)]
struct ManifestDocument<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The manifest for `image` with its layers as pushed: the store's own when the blobs are the
/// stored ones (the image keeps its digest), else Docker's schema2 (what `docker push` writes;
/// every puller reads it) for gzip and plain layers, or OCI's where a layer is zstd (schema2
/// has no zstd type).
fn image_manifest(image: &Image, layers: &[Pushed]) -> Document {
    if let Some(stored) = &image.stored {
        let same = ManifestView::parse(&stored.manifest.bytes).is_ok_and(|view| {
            view.config.digest == image.id
                && view.layers.len() == layers.len()
                && view
                    .layers
                    .iter()
                    .zip(layers)
                    .all(|(d, l)| d.digest == l.digest && d.size == l.size)
        });
        if same {
            return Document {
                media_type: stored.manifest.media_type.clone(),
                bytes: stored.manifest.bytes.clone(),
            };
        }
    }
    let oci = layers.iter().any(|l| l.format == BlobCompression::Zstd);
    let layer_type = |format: BlobCompression| match (oci, format) {
        (true, f) => f.oci_media_type(),
        (false, BlobCompression::Gzip) => docker_media_type::LAYER_GZIP,
        (false, _) => docker_media_type::LAYER_TAR,
    };
    let (media_type, config_type) = if oci {
        (
            crate::sink::plan::media_type::OCI_MANIFEST,
            crate::sink::plan::media_type::OCI_CONFIG,
        )
    } else {
        (docker_media_type::MANIFEST, docker_media_type::CONFIG)
    };
    let document = ManifestDocument {
        schema_version: 2,
        media_type,
        config: Descriptor::new(config_type, image.id, image.config.len() as u64),
        layers: layers
            .iter()
            .map(|l| Descriptor::new(layer_type(l.format), l.digest, l.size))
            .collect(),
    };
    Document {
        media_type: media_type.to_string(),
        bytes: serde_json::to_vec(&document).expect("manifest serializes"),
    }
}

/// An OCI index of several platforms' manifests, each with the platform its config names.
fn image_index(images: &[Image], manifests: &[Document]) -> Document {
    #[derive(Serialize)]
    struct Entry<'a> {
        #[serde(rename = "mediaType")]
        media_type: &'a str,
        digest: Digest,
        size: u64,
        platform: serde_json::Value,
    }
    #[derive(Serialize)]
    struct Index<'a> {
        #[serde(rename = "schemaVersion")]
        schema_version: u32,
        #[serde(rename = "mediaType")]
        media_type: &'a str,
        manifests: Vec<Entry<'a>>,
    }
    let entries = images
        .iter()
        .zip(manifests)
        .map(|(image, manifest)| {
            let config: serde_json::Value =
                serde_json::from_slice(&image.config).unwrap_or_default();
            let mut platform = serde_json::Map::new();
            for key in ["architecture", "os", "variant"] {
                if let Some(v) = config.get(key).filter(|v| v.is_string()) {
                    platform.insert(key.to_string(), v.clone());
                }
            }
            Entry {
                media_type: &manifest.media_type,
                digest: Digest::of(&manifest.bytes),
                size: manifest.bytes.len() as u64,
                platform: serde_json::Value::Object(platform),
            }
        })
        .collect();
    let media_type = crate::sink::plan::media_type::OCI_INDEX;
    Document {
        media_type: media_type.to_string(),
        bytes: serde_json::to_vec(&Index {
            schema_version: 2,
            media_type,
            manifests: entries,
        })
        .expect("index serializes"),
    }
}
