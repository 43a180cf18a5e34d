//! `oci-export push`: an image from storage straight into a registry, with no archive between.
//!
//! Each layer takes the cheapest way there:
//! 1. Ask the registry for a blob that would be the layer — the compressed blob the blob cache
//!    recorded for it, the blob a content store keeps (containerd), or a blob Docker recorded
//!    pulling or pushing (v2metadata) — by `HEAD` in the destination repository, or by a
//!    cross-repository mount from the repository it came from, on the same registry. Nothing is
//!    compressed or uploaded for a layer the registry already has.
//! 2. Otherwise make the blob and upload it. A layer compressed here is uploaded *while* it is
//!    compressed: the compressor's output goes into the blob cache and, as it is written, into
//!    one streamed request, committed once the blob is made and verified (as `docker push`
//!    does, a layer whose compressed digest nobody recorded cannot be asked about first). When
//!    that stream fails, the finished blob is uploaded the ordinary way.
//!
//! Layers are pushed in parallel (at most `--jobs` compressing at once), then each image's
//! config; the manifest goes last, once every blob it names is confirmed, so a failed push
//! never leaves a tag pointing at an incomplete image. Just before it, the store is checked
//! again: the image pushed is the one it holds.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::blob_store::BlobStore;
use super::layers::measure_for_progress;
use super::made::{cache_key, make_layer, make_layer_teed, Cancelled, MakeJob};
use super::plan::{plan_outputs, BlobPlan, Outputs, Requested};
use super::{image_names, layer_label, CacheChoice, ExportSet};
use crate::cli::UsageError;
use crate::compress::Settings;
use crate::digest::Digest;
use crate::io::{EngineFactory, IoMode};
use crate::model::{BlobCompression, Image, Layer, StoredBlob};
use crate::parallel::{self, Permits};
use crate::progress::{self, Phase, Progress};
use crate::reference::Reference;
use crate::regenerate::Regenerated;
use crate::sink::oci_layout::{self, Descriptor};
use crate::sink::plan::media_type;
use crate::sink::registry::{
    BlobSource, BytesBlob, ClientOptions, FileBlob, Registry, Repository, Streamed,
};
use crate::source::{self, Platform, SourceOptions};

/// Everything a push needs to know.
pub struct PushRequest {
    pub image: String,
    /// `registry/repository[:tag]`, as typed.
    pub destination: String,
    pub source: SourceOptions,
    pub io_mode: IoMode,
    pub jobs: usize,
    pub show_progress: bool,
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

/// Compressed output in flight per streamed layer: enough to keep a connection busy, little
/// enough to bound memory (a piece is one write of the compressor, a gzip block or so).
const STREAM_PIECES: usize = 32;

/// Pushes the image; returns `<repository>@<manifest digest>` (the line crane prints).
pub fn run(req: &PushRequest) -> Result<String> {
    let destination = Reference::parse(&req.destination)
        .map_err(|e| UsageError(format!("destination {}: {e}", req.destination)))?
        .with_default_tag();
    if destination.digest.is_some() {
        return Err(UsageError(format!(
            "destination {}: give a tag, not a digest (the digest of what is pushed is printed)",
            req.destination
        ))
        .into());
    }
    let tag = destination.tag.clone().expect("a default tag was added");

    let store = source::open(&req.source)?;
    let mut set = ExportSet::resolve(store.as_ref(), std::slice::from_ref(&req.image))?;
    let roots = store.roots();
    let mut regenerated: Option<Regenerated> = None;
    set.regenerate_missing(req.regenerate_missing, &mut regenerated, &roots)?;
    let outputs = plan_outputs(&set.layers, req.layers);
    let blobs = BlobStore::open(&req.cache, &roots)?;

    let registry = Registry::connect(&destination.domain, &req.registry)?;
    if let Some(note) = credentials_note(&registry) {
        progress::info(&note);
    }
    let repository = registry.repository(&destination.path);
    let progress = Arc::new(Progress::new(outputs.layers.len()));
    // The total before the first byte, for the display only (a pass over each tar-split).
    let sizes = if req.show_progress {
        measure_for_progress(&outputs.layers, &outputs.plans, req.jobs)?
    } else {
        vec![None; outputs.layers.len()]
    };
    let pusher = Pusher {
        repository: &repository,
        destination: &destination,
        outputs: &outputs,
        job: MakeJob {
            layers: &outputs.layers,
            plans: &outputs.plans,
            store: &blobs,
            engines: EngineFactory::new(req.io_mode)?,
            jobs: req.jobs,
            progress: &progress,
            sizes: &sizes,
        },
        compressing: Permits::new(req.jobs),
        stop: AtomicBool::new(false),
        tally: Tally::default(),
    };

    let name = repository.name();
    let result = progress::with_display(
        req.show_progress,
        &progress,
        || progress::Job {
            title: format!("{} → {name}:{tag}", image_names(&set.images)),
            total: sizes.iter().copied().sum(),
            layers: outputs.layers.iter().map(layer_label).collect(),
        },
        || pusher.push_all(&set, &tag, || set.confirm(store.as_ref())),
        |digest, elapsed| pusher.tally.summary(&name, digest, elapsed),
    );
    blobs.prune_cache();
    Ok(format!("{name}@{}", result?))
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
    fn summary(&self, name: &str, digest: &Digest, elapsed: Duration) -> String {
        let bytes = self.uploaded_bytes.load(Ordering::Relaxed);
        format!(
            "pushed {name}@{digest}: {} layers uploaded ({}, {}), {} already there, {} \
             mounted, in {:.1} s",
            self.uploaded.load(Ordering::Relaxed),
            progress::human_bytes(bytes),
            progress::human_rate(bytes, elapsed),
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

/// How a layer got into the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    /// Uploaded, after its bytes were processed (and counted) here.
    Uploaded,
    /// The registry had it (or took it by mount) before anything was done here.
    Found(Phase),
    /// Made here (its bytes counted), then found in the registry after all.
    FoundAfterMaking,
}

/// One push under way.
struct Pusher<'a> {
    repository: &'a Repository<'a>,
    destination: &'a Reference,
    outputs: &'a Outputs,
    job: MakeJob<'a>,
    /// At most `--jobs` layers compress at once; more may be uploading meanwhile.
    compressing: Permits,
    /// Raised at the first failure: layers under way give up, none is started.
    stop: AtomicBool,
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
        let indices: Vec<usize> = (0..self.outputs.layers.len()).collect();
        // More workers than compressions: an upload mostly waits on the network, while at most
        // `jobs` compressions (each with `jobs` threads of its own) keep the cores busy.
        let workers = (self.job.jobs + 2).clamp(1, 8);
        // The first real failure is the one reported, never the abandonment it caused.
        let first_failure = std::sync::Mutex::new(None);
        let pushed = parallel::map(&indices, workers, |&index| {
            let layer = &self.outputs.layers[index];
            self.push_layer(index).map_err(|e| {
                self.stop.store(true, Ordering::Release);
                if e.is::<Cancelled>() {
                    return e;
                }
                let e = e.context(format!("pushing {}", layer.origin));
                let mut first = first_failure.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| anyhow::anyhow!("{e:#}"));
                e
            })
        });
        let pushed = match pushed {
            Ok(pushed) => pushed,
            Err(e) => {
                let first = first_failure
                    .into_inner()
                    .unwrap_or_else(|p| p.into_inner());
                return Err(first.unwrap_or(e));
            }
        };

        let mut manifests = Vec::new();
        for image in &set.images {
            self.push_config(image)?;
            let layers: Vec<Pushed> = image
                .layers
                .iter()
                .map(|l| pushed[self.outputs.index[&l.key()]])
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
    /// progress line and in the summary.
    fn push_layer(&self, index: usize) -> Result<Pushed> {
        let (pushed, placed) = self.place_layer(index)?;
        let progress = self.job.progress;
        let outcome = match placed {
            Placed::Found(how) => {
                // Nothing of it was processed here: the whole layer counts as done for the bar.
                let size = self.job.sizes.get(index).copied().flatten();
                progress.phase(index, how, size);
                progress.add(index, size.unwrap_or(0));
                how
            }
            Placed::FoundAfterMaking => Phase::Exists,
            Placed::Uploaded => Phase::Done,
        };
        progress.finish(index, outcome);
        let counter = match outcome {
            Phase::Exists => &self.tally.present,
            Phase::Mounted => &self.tally.mounted,
            _ => &self.tally.uploaded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(pushed)
    }

    fn place_layer(&self, index: usize) -> Result<(Pushed, Placed)> {
        let layer = &self.outputs.layers[index];
        match &self.outputs.plans[index] {
            BlobPlan::Stored(blob) => {
                if let Some(found) = self.stored_there(layer, blob) {
                    return Ok(found);
                }
                self.make_and_upload(index, blob.compression)
            }
            BlobPlan::Made(Some(settings)) => {
                if let Some(found) = self.compressed_there(layer, settings)? {
                    return Ok(found);
                }
                // A cache entry the registry lacks is uploaded from the cache; anything else
                // is compressed and uploaded at once.
                if self
                    .job
                    .store
                    .recorded(&cache_key(layer, settings))
                    .is_some()
                {
                    return self.make_and_upload(index, settings.algorithm.format());
                }
                self.compress_while_uploading(index, settings.algorithm.format())
            }
            BlobPlan::Made(None) | BlobPlan::Tar => {
                if let Some(size) = self.repository.blob_size(&layer.diff_id)? {
                    let pushed = Pushed {
                        digest: layer.diff_id,
                        size,
                        format: BlobCompression::None,
                    };
                    return Ok((pushed, Placed::Found(Phase::Exists)));
                }
                self.make_and_upload(index, BlobCompression::None)
            }
        }
    }

    /// A compressed blob of `layer` the registry may already hold: the one the blob cache
    /// recorded (a re-push), or one Docker pulled or pushed (v2metadata), in the destination
    /// repository or mountable from its source repository on the same registry.
    fn compressed_there(
        &self,
        layer: &Layer,
        settings: &Settings,
    ) -> Result<Option<(Pushed, Placed)>> {
        let format = settings.algorithm.format();
        if let Some((digest, size)) = self.job.store.recorded(&cache_key(layer, settings)) {
            if self.repository.blob_size(&digest)? == Some(size) {
                let pushed = Pushed {
                    digest,
                    size,
                    format,
                };
                return Ok(Some((pushed, Placed::Found(Phase::Exists))));
            }
        }
        let mut tried = Vec::new();
        for remote in &layer.remote {
            if remote.registry != self.destination.domain || tried.contains(&remote.digest) {
                continue;
            }
            let Some((size, how)) = self.present_or_mounted(&remote.digest, &remote.repository)
            else {
                continue;
            };
            tried.push(remote.digest);
            // Docker's records say which blob, not how it is compressed: look at its first
            // bytes, so that a zstd blob is never named gzip in the manifest.
            if self.repository.blob_format(&remote.digest)? == Some(format) {
                let pushed = Pushed {
                    digest: remote.digest,
                    size,
                    format,
                };
                return Ok(Some((pushed, Placed::Found(how))));
            }
        }
        Ok(None)
    }

    /// A content store's blob, if the registry has it or takes it by mount from where it was
    /// pulled.
    fn stored_there(&self, layer: &Layer, blob: &StoredBlob) -> Option<(Pushed, Placed)> {
        let pushed = Pushed {
            digest: blob.digest,
            size: blob.size,
            format: blob.compression,
        };
        let here = self.repository.blob_size(&blob.digest).ok().flatten();
        if here.is_some() {
            return Some((pushed, Placed::Found(Phase::Exists)));
        }
        layer
            .remote
            .iter()
            .filter(|r| r.digest == blob.digest && r.registry == self.destination.domain)
            .find(|r| self.repository.mount(&blob.digest, &r.repository))
            .map(|_| (pushed, Placed::Found(Phase::Mounted)))
    }

    /// The blob's size once it is in the destination repository, and how it got there:
    /// already there, or mounted from `from` on the same registry. `None` if neither (a mount
    /// that fails is only a shortcut not taken).
    fn present_or_mounted(&self, digest: &Digest, from: &str) -> Option<(u64, Phase)> {
        if let Ok(Some(size)) = self.repository.blob_size(digest) {
            return Some((size, Phase::Exists));
        }
        if !self.repository.mount(digest, from) {
            return None;
        }
        let size = self.repository.blob_size(digest).ok().flatten()?;
        Some((size, Phase::Mounted))
    }

    /// Compresses layer `index` (into the cache, as always) while a second thread uploads what
    /// comes out, so that compression and upload overlap. When the streamed upload does not
    /// work out (the registry refused or broke it), the blob, made by then, is uploaded the
    /// ordinary way, with every retry and chunking rule that allows.
    fn compress_while_uploading(
        &self,
        index: usize,
        format: BlobCompression,
    ) -> Result<(Pushed, Placed)> {
        let _permit = self.compressing.take();
        let (ready, streamed) = std::thread::scope(|scope| {
            // Both senders live in this closure: if making the blob fails, or panics, they
            // drop, and the uploader stops waiting.
            let (pieces_tx, pieces) = sync_channel(STREAM_PIECES);
            let (made_tx, made) = sync_channel(1);
            let uploader =
                scope.spawn(|| self.repository.upload_streamed(Streamed { pieces, made }));
            let ready = make_layer_teed(&self.job, index, &self.stop, Some(pieces_tx));
            let _ = made_tx.send(ready.as_ref().ok().map(|r| (r.info.digest, r.info.size)));
            drop(made_tx);
            let streamed = uploader
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (ready, streamed)
        });
        let ready = ready?;
        let pushed = Pushed {
            digest: ready.info.digest,
            size: ready.info.size,
            format,
        };
        if streamed {
            self.tally
                .uploaded_bytes
                .fetch_add(pushed.size, Ordering::Relaxed);
            return Ok((pushed, Placed::Uploaded));
        }
        self.upload_unless_there(index, pushed, ready.file)
    }

    /// Makes layer `index`'s blob (a stored blob verified; a cache entry verified; a layer
    /// compressed into the cache, or decompressed into a scratch file) and uploads it unless
    /// the registry turns out to have it.
    fn make_and_upload(&self, index: usize, format: BlobCompression) -> Result<(Pushed, Placed)> {
        let ready = {
            let _permit = self.compressing.take();
            make_layer(&self.job, index, &self.stop)?
        };
        let pushed = Pushed {
            digest: ready.info.digest,
            size: ready.info.size,
            format,
        };
        self.upload_unless_there(index, pushed, ready.file)
    }

    /// Uploads a made blob, unless a HEAD finds it there already.
    fn upload_unless_there(
        &self,
        index: usize,
        pushed: Pushed,
        file: std::fs::File,
    ) -> Result<(Pushed, Placed)> {
        if self.repository.blob_size(&pushed.digest)? == Some(pushed.size) {
            return Ok((pushed, Placed::FoundAfterMaking));
        }
        self.upload(index, &FileBlob::new(file, pushed.digest, pushed.size))?;
        Ok((pushed, Placed::Uploaded))
    }

    /// Uploads `blob` as layer `index`, its line showing the bytes sent.
    fn upload(&self, index: usize, blob: &dyn BlobSource) -> Result<()> {
        let progress = self.job.progress;
        progress.phase(index, Phase::Uploading, Some(blob.size()));
        self.repository
            .upload(blob, &|sent| progress.set_phase_bytes(index, sent))?;
        self.tally
            .uploaded_bytes
            .fetch_add(blob.size(), Ordering::Relaxed);
        Ok(())
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

/// The manifest for `image` with its layers as pushed: the store's own when the blobs are the
/// stored ones (the image keeps its digest), else Docker's schema2 (what `docker push` writes;
/// every puller reads it) for gzip and plain layers, or OCI's where a layer is zstd (schema2
/// has no zstd type).
fn image_manifest(image: &Image, layers: &[Pushed]) -> Document {
    if let Some((stored, _)) = image.stored_manifest_for(layers.iter().map(|l| (l.digest, l.size)))
    {
        return Document {
            media_type: stored.manifest.media_type.clone(),
            bytes: stored.manifest.bytes.clone(),
        };
    }
    let oci = layers.iter().any(|l| l.format == BlobCompression::Zstd);
    let (manifest_type, config_type) = if oci {
        (media_type::OCI_MANIFEST, media_type::OCI_CONFIG)
    } else {
        (docker_media_type::MANIFEST, docker_media_type::CONFIG)
    };
    let descriptors: Vec<Descriptor> = layers
        .iter()
        .map(|l| {
            let layer_type = match (oci, l.format) {
                (true, format) => format.oci_media_type(),
                (false, BlobCompression::Gzip) => docker_media_type::LAYER_GZIP,
                (false, _) => docker_media_type::LAYER_TAR,
            };
            Descriptor::new(layer_type, l.digest, l.size)
        })
        .collect();
    Document {
        media_type: manifest_type.to_string(),
        bytes: oci_layout::manifest(manifest_type, config_type, image, &descriptors),
    }
}

/// An OCI index of several platforms' manifests, each with the platform its config names.
fn image_index(images: &[Image], manifests: &[Document]) -> Document {
    let entries: Vec<Descriptor> = images
        .iter()
        .zip(manifests)
        .map(|(image, manifest)| Descriptor {
            platform: Platform::of_config(&image.config),
            ..Descriptor::of(&manifest.media_type, &manifest.bytes)
        })
        .collect();
    Document {
        media_type: media_type::OCI_INDEX.to_string(),
        bytes: oci_layout::index(&entries),
    }
}
