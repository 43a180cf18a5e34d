//! The export pipeline: source → plan → reassembly (→ compression) → sink.

mod blob_store;
mod compressed;
mod layers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cli::Format;
use crate::compress::Settings;
use crate::digest::Digest;
use crate::io::{EngineFactory, IoMode};
use crate::model::{Image, Layer};
use crate::reassembly::missing_tar_split;
use crate::regenerate::{needs_regeneration, regenerate_image, Regenerated};
use crate::sink::output::Output;
use crate::sink::writer::{write_archive, Progress, WriteOptions};
use crate::sink::{docker_archive, incremental, oci_dir};
use crate::source::overlay2::Overlay2Store;
use crate::source::ImageStore;
use blob_store::BlobStore;
use compressed::{with_compressed_layers, CompressJob};
use layers::{measure_all, uncompressed_blobs, Rebuilder};

/// Everything an export needs to know.
pub struct ExportRequest {
    pub images: Vec<String>,
    pub data_root: PathBuf,
    pub output: Option<PathBuf>,
    pub format: Format,
    pub io_mode: IoMode,
    pub jobs: usize,
    pub show_progress: bool,
    pub regenerate_missing: bool,
    /// `None` for uncompressed layers.
    pub compression: Option<Settings>,
    pub cache: CacheChoice,
}

/// Where compressed blobs are kept between exports. Whatever the choice, a cache that cannot be
/// used costs a warning, not the export.
#[derive(Debug, Clone)]
pub enum CacheChoice {
    Dir(PathBuf),
    /// A cache was wanted but no directory is known, for the reason given: the export goes on
    /// without one.
    Unavailable(String),
    /// No cache (`--no-cache`): each blob lives in a nameless scratch file until copied out.
    None,
}

/// The images to export and their distinct layers.
pub struct ExportSet {
    pub images: Vec<Image>,
    /// Each input as typed, with the image it named.
    pub inputs: Vec<(String, Digest)>,
    /// Distinct layers by diff_id, in order of first appearance.
    pub layers: Vec<Layer>,
}

impl ExportSet {
    /// Looks every input up; images named twice are exported once with all their tags.
    pub fn resolve(store: &dyn ImageStore, inputs: &[String]) -> Result<Self> {
        let mut images: Vec<Image> = Vec::new();
        let mut resolved = Vec::new();
        for input in inputs {
            let image = store.lookup(input)?;
            resolved.push((input.clone(), image.id));
            match images.iter_mut().find(|i| i.id == image.id) {
                Some(existing) => {
                    for tag in image.tags {
                        if !existing.tags.contains(&tag) {
                            existing.tags.push(tag);
                        }
                    }
                }
                None => images.push(image),
            }
        }
        let layers = distinct_layers(&images);
        Ok(ExportSet {
            images,
            inputs: resolved,
            layers,
        })
    }

    /// Regenerates layers that lost their tar-split (opt-in), which changes their diff_ids and
    /// the IDs of the images using them; every change is reported on stderr.
    fn regenerate_missing(
        &mut self,
        allowed: bool,
        scratch: &mut Option<Regenerated>,
        data_root: &Path,
    ) -> Result<()> {
        let Some(image) = self.images.iter().find(|i| needs_regeneration(i)) else {
            return Ok(());
        };
        if !allowed {
            let layer = image
                .layers
                .iter()
                .find(|l| matches!(l.content, crate::model::LayerContent::Directory { .. }))
                .expect("needs_regeneration found one");
            bail!("image {}: {}", image.id, missing_tar_split(layer));
        }
        let scratch = match scratch {
            Some(s) => s,
            None => scratch.insert(Regenerated::new(data_root)?),
        };
        for image in &mut self.images {
            if needs_regeneration(image) {
                *image =
                    regenerate_image(image, scratch, &mut |note| eprintln!("oci-export: {note}"))?;
            }
        }
        self.layers = distinct_layers(&self.images);
        Ok(())
    }
}

/// The layers of `images` by diff_id, each once, in order of first appearance.
fn distinct_layers(images: &[Image]) -> Vec<Layer> {
    let mut seen = std::collections::HashSet::new();
    images
        .iter()
        .flat_map(|i| &i.layers)
        .filter(|l| seen.insert(l.diff_id))
        .cloned()
        .collect()
}

/// Runs a whole export.
pub fn run(req: &ExportRequest) -> Result<()> {
    let store = Overlay2Store::open(&req.data_root)?;
    let mut set = ExportSet::resolve(&store, &req.images)?;
    // What the store held, for the final check that it still does.
    let stored = set.images.clone();
    // Before any work on the layers (regenerating, measuring, compressing): a destination that
    // is refused costs nothing, and until committed, dropping it leaves nothing behind.
    let destination = Destination::open(req)?;
    let mut regenerated = None;
    set.regenerate_missing(req.regenerate_missing, &mut regenerated, &req.data_root)?;
    let blob_of: HashMap<Digest, usize> = set
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.diff_id, i))
        .collect();
    let export = Export {
        req,
        engines: EngineFactory::new(req.io_mode)?,
        store: &store,
        set: &set,
        stored: &stored,
        blob_of: &blob_of,
        progress: Progress::default(),
    };

    match &req.compression {
        // Uncompressed output needs every layer's size before its first byte.
        None => {
            let sizes = measure_all(&set.layers, req.jobs)?;
            export.reporting(Some(sizes.iter().sum()), || {
                export.uncompressed(destination, &sizes)
            })
        }
        // Compressed layers need no sizing pass: a blob's size is known once it is made, and a
        // cache hit reads no tar-split at all. Their total is not known up front, so progress
        // shows bytes processed and a rate.
        Some(settings) => export.reporting(None, || export.compressed(settings, destination)),
    }
}

/// Where the export goes, checked and opened before any layer is read.
enum Destination {
    Archive(Output),
    /// An OCI layout directory, started under its temporary name.
    Dir(oci_dir::PartialDir),
}

impl Destination {
    fn open(req: &ExportRequest) -> Result<Self> {
        match req.format {
            Format::Archive => {
                let output = match &req.output {
                    Some(path) => Output::file(path, &req.data_root)?,
                    None => Output::stdout()?,
                };
                Ok(Destination::Archive(output))
            }
            Format::OciDir => {
                let Some(dir) = &req.output else {
                    bail!("--format oci-dir writes a directory: give it with -o DIR");
                };
                Ok(Destination::Dir(oci_dir::PartialDir::begin(
                    dir,
                    &req.data_root,
                )?))
            }
        }
    }
}

/// One export under way: the images resolved, and where they go.
struct Export<'a> {
    req: &'a ExportRequest,
    engines: EngineFactory,
    store: &'a dyn ImageStore,
    set: &'a ExportSet,
    stored: &'a [Image],
    blob_of: &'a HashMap<Digest, usize>,
    progress: Progress,
}

impl Export<'_> {
    /// Runs `work` with a progress line on stderr, when asked for, counting layer bytes.
    fn reporting(&self, total: Option<u64>, work: impl FnOnce() -> Result<()>) -> Result<()> {
        let reporter = self
            .req
            .show_progress
            .then(|| crate::progress::Reporter::start(&self.progress, total));
        let result = work();
        if let Some(r) = reporter {
            r.finish(result.is_ok());
        }
        result
    }

    /// Uncompressed layers stream straight from reassembly: each one's digest is its diff_id
    /// and its size was measured, so the whole output is planned before the first byte.
    fn uncompressed(&self, destination: Destination, sizes: &[u64]) -> Result<()> {
        let rebuilder = Rebuilder {
            layers: &self.set.layers,
            sizes,
            engines: self.engines,
        };
        let plan = self
            .layout()
            .plan(uncompressed_blobs(&self.set.layers, sizes));
        match destination {
            Destination::Archive(output) => {
                let opts = WriteOptions {
                    file: output.file_handle(),
                    positional_base: output.positional_base(),
                    jobs: self.req.jobs,
                    progress: &self.progress,
                };
                let len = write_archive(&plan, &rebuilder, &opts, &|| self.confirm())?;
                output.commit(len)
            }
            Destination::Dir(dir) => oci_dir::write_dir(
                dir,
                &oci_dir::from_docker_plan(plan),
                &rebuilder,
                self.req.jobs,
                &self.progress,
                || self.confirm(),
            ),
        }
    }

    /// Compressed layers are known only once compressed, so they are made in the background
    /// (into the blob cache, or scratch files) and written out in layer order as each is
    /// finished.
    fn compressed(&self, settings: &Settings, destination: Destination) -> Result<()> {
        let req = self.req;
        let store = BlobStore::open(&req.cache, &req.data_root)?;
        let job = CompressJob {
            layers: &self.set.layers,
            settings,
            store: &store,
            engines: self.engines,
            jobs: req.jobs,
            progress: &self.progress,
        };
        let layout = self.layout();
        let result = match destination {
            Destination::Archive(output) => with_compressed_layers(&job, |blobs| {
                incremental::write_archive(&layout, blobs, output.file_handle(), &|| self.confirm())
            })
            .and_then(|len| output.commit(len)),
            Destination::Dir(dir) => with_compressed_layers(&job, |blobs| {
                oci_dir::write_dir_incrementally(dir, &layout, blobs, || self.confirm())
            }),
        };
        if let Some(cache) = store.cache_to_prune() {
            // Keep the cache bounded; a failure here must not fail the export.
            if let Err(e) = cache.prune(crate::cache::DEFAULT_MAX_BYTES) {
                eprintln!("oci-export: warning: could not prune the blob cache: {e:#}");
            }
        }
        result
    }

    fn layout(&self) -> docker_archive::Layout<'_> {
        docker_archive::Layout {
            images: &self.set.images,
            blob_of: self.blob_of,
        }
    }

    fn confirm(&self) -> Result<()> {
        confirm(self.store, &self.set.inputs, self.stored)
    }
}

/// The storage must still hold what we exported: an image removed or re-tagged during the
/// export makes the output describe something that no longer exists.
fn confirm(store: &dyn ImageStore, inputs: &[(String, Digest)], stored: &[Image]) -> Result<()> {
    for (input, id) in inputs {
        let image = stored
            .iter()
            .find(|i| i.id == *id)
            .expect("resolved images are kept");
        store
            .confirm_unchanged(input, image)
            .context("the image store changed during the export")?;
    }
    Ok(())
}
