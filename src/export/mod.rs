//! The export pipeline: source → plan → reassembly (→ compression) → sink.

mod layers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cache::BlobCache;
use crate::cli::Format;
use crate::compress::Settings;
use crate::digest::Digest;
use crate::io::{EngineFactory, IoMode};
use crate::model::{Image, Layer};
use crate::reassembly::missing_tar_split;
use crate::regenerate::{needs_regeneration, regenerate_image, Regenerated};
use crate::scratch::ScratchDir;
use crate::sink::output::refuse_inside;
use crate::sink::output::Output;
use crate::sink::plan::BlobInfo;
use crate::sink::writer::{write_archive, BlobProducer, Progress, WriteOptions};
use crate::sink::{docker_archive, oci_dir};
use crate::source::overlay2::Overlay2Store;
use crate::source::ImageStore;
use layers::{compress_all, measure_all, uncompressed_blobs, Rebuilder};

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

/// Where compressed blobs are kept between exports.
#[derive(Debug, Clone)]
pub enum CacheChoice {
    Dir(PathBuf),
    /// A scratch directory, removed at the end (`--no-cache`).
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
    let mut regenerated = None;
    set.regenerate_missing(req.regenerate_missing, &mut regenerated, &req.data_root)?;
    let sizes = measure_all(&set.layers, req.jobs)?;
    let engines = EngineFactory::new(req.io_mode)?;
    let blob_of: HashMap<Digest, usize> = set
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.diff_id, i))
        .collect();

    // Uncompressed layers stream straight from reassembly; compressed ones are made first,
    // because an archive header or a manifest needs a blob's size and digest before its bytes.
    let rebuilder = Rebuilder {
        layers: &set.layers,
        sizes: &sizes,
        engines,
    };
    let mut _no_cache_dir = None;
    let compressed = match &req.compression {
        None => None,
        Some(settings) => {
            let cache = match &req.cache {
                CacheChoice::Dir(dir) => {
                    refuse_inside(dir, &req.data_root)?;
                    BlobCache::open(dir)?
                }
                CacheChoice::None => {
                    let scratch = ScratchDir::new("blobs", &req.data_root)?;
                    let cache = BlobCache::open(scratch.path())?;
                    _no_cache_dir = Some(scratch);
                    cache
                }
            };
            let made = compress_all(&set.layers, &sizes, settings, &cache, engines, req.jobs)?;
            if let CacheChoice::Dir(_) = req.cache {
                // Keep the cache bounded; a failure here must not fail the export.
                if let Err(e) = cache.prune(crate::cache::DEFAULT_MAX_BYTES) {
                    eprintln!("oci-export: warning: could not prune the blob cache: {e:#}");
                }
            }
            Some(made)
        }
    };
    let (blobs, producer): (Vec<BlobInfo>, &dyn BlobProducer) = match &compressed {
        None => (uncompressed_blobs(&set.layers, &sizes), &rebuilder),
        Some(c) => (c.blobs.clone(), c),
    };
    let total: u64 = blobs.iter().map(|b| b.size).sum();
    let plan = docker_archive::plan(&set.images, blobs, &blob_of);

    let progress = Progress::default();
    let reporter = req
        .show_progress
        .then(|| crate::progress::Reporter::start(&progress, total));

    let result = match req.format {
        Format::Archive => {
            let output = match &req.output {
                Some(path) => Output::file(path, &req.data_root)?,
                None => Output::stdout()?,
            };
            let opts = WriteOptions {
                file: output.file_handle(),
                positional_base: output.positional_base(),
                jobs: req.jobs,
                progress: &progress,
            };
            let len = write_archive(&plan, producer, &opts, &|| {
                confirm(&store, &set.inputs, &stored)
            })?;
            output.commit(len)
        }
        Format::OciDir => {
            let Some(dir) = &req.output else {
                bail!("--format oci-dir writes a directory: give it with -o DIR");
            };
            let plan = oci_dir::from_docker_plan(plan);
            // The directory only appears after `confirm`, so write it under its temporary name
            // and check before the final rename.
            oci_dir::write_dir(
                &plan,
                producer,
                dir,
                &req.data_root,
                req.jobs,
                &progress,
                || confirm(&store, &set.inputs, &stored),
            )
        }
    };
    if let Some(r) = reporter {
        r.finish(result.is_ok());
    }
    result
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
