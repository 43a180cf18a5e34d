//! The export pipeline: source → plan → reassembly → sink.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cli::Format;
use crate::digest::Digest;
use crate::io::{EngineFactory, IoMode};
use crate::model::{Image, Layer};
use crate::parallel;
use crate::reassembly::{measure_layer, missing_tar_split, rebuild_layer, BlockSink};
use crate::regenerate::{needs_regeneration, regenerate_image, Scratch};
use crate::sink::output::Output;
use crate::sink::plan::{media_type, BlobInfo};
use crate::sink::writer::{write_archive, BlobProducer, Progress, WriteOptions};
use crate::sink::{docker_archive, oci_dir};
use crate::source::overlay2::Overlay2Store;
use crate::source::ImageStore;

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
        scratch: &mut Option<Scratch>,
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
            None => scratch.insert(Scratch::new(data_root)?),
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

/// Rebuilds layers for the writer, one engine per call.
struct LayerProducer<'a> {
    layers: &'a [Layer],
    sizes: &'a [u64],
    engines: EngineFactory,
}

impl BlobProducer for LayerProducer<'_> {
    fn produce(&self, index: usize, out: &mut dyn BlockSink) -> Result<()> {
        let mut engine = self.engines.create()?;
        rebuild_layer(&self.layers[index], self.sizes[index], engine.as_mut(), out)
    }
}

/// Measures every layer (pass 1 over tar-split), `jobs` at a time.
fn measure_all(layers: &[Layer], jobs: usize) -> Result<Vec<u64>> {
    parallel::map(layers, jobs, |layer| Ok(measure_layer(layer)?.tar_size))
}

/// Runs a whole export.
pub fn run(req: &ExportRequest) -> Result<()> {
    let store = Overlay2Store::open(&req.data_root)?;
    let mut set = ExportSet::resolve(&store, &req.images)?;
    // What the store held, for the final check that it still does.
    let stored = set.images.clone();
    let mut scratch = None;
    set.regenerate_missing(req.regenerate_missing, &mut scratch, &req.data_root)?;
    let sizes = measure_all(&set.layers, req.jobs)?;

    let blobs: Vec<BlobInfo> = set
        .layers
        .iter()
        .zip(&sizes)
        .map(|(layer, &size)| BlobInfo {
            digest: layer.diff_id,
            size,
            media_type: media_type::OCI_LAYER_TAR,
        })
        .collect();
    let blob_of: HashMap<Digest, usize> = set
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.diff_id, i))
        .collect();
    let plan = docker_archive::plan(&set.images, blobs, &blob_of);

    let engines = EngineFactory::new(req.io_mode)?;
    let producer = LayerProducer {
        layers: &set.layers,
        sizes: &sizes,
        engines,
    };
    let progress = Progress::default();
    let total: u64 = sizes.iter().sum();
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
            let len = write_archive(&plan, &producer, &opts, &|| {
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
                &producer,
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
