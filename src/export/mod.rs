//! The export pipeline: source → plan → reassembly (→ compression) → sink.
//!
//! - [`set`]: the images the inputs name, and their distinct layers.
//! - [`plan`]: how each layer's blob is made (rebuilt tar, stored blob, or made in full).
//! - [`layers`]: blobs known before they are written (planned archives, written in parallel).
//! - [`made`]: blobs made in full first (compressed, decompressed), handed over in order.
//! - [`blob_store`]: where made blobs are kept: the blob cache, or nameless scratch files.

mod blob_store;
mod layers;
mod made;
pub mod plan;
pub mod push;
mod set;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::cli::Format;
use crate::io::{EngineFactory, IoMode};
use crate::model::{Image, Layer, LayerContent};
use crate::progress::{self, Progress};
use crate::regenerate::Regenerated;
use crate::sink::output::Output;
use crate::sink::writer::{write_archive, WriteOptions};
use crate::sink::{docker_archive, incremental, oci_dir};
use crate::source::{self, ImageStore, SourceOptions};
use blob_store::BlobStore;
use layers::{known_blobs, measure_all, measure_for_progress, Producer};
use made::{with_made_layers, MakeJob};
use plan::{plan_outputs, BlobPlan, Outputs, Requested};
pub use set::ExportSet;

/// Everything an export needs to know.
pub struct ExportRequest {
    pub images: Vec<String>,
    pub source: SourceOptions,
    pub output: Option<PathBuf>,
    pub format: Format,
    pub io_mode: IoMode,
    pub jobs: usize,
    pub show_progress: bool,
    pub regenerate_missing: bool,
    /// The layer form asked for.
    pub layers: Requested,
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

/// Runs a whole export.
pub fn run(req: &ExportRequest) -> Result<()> {
    let store = source::open(&req.source)?;
    let mut set = ExportSet::resolve(store.as_ref(), &req.images)?;
    let roots = store.roots();
    // Before any work on the layers (regenerating, measuring, compressing): a destination that
    // is refused costs nothing, and until committed, dropping it leaves nothing behind.
    let destination = Destination::open(req, &roots)?;
    let mut regenerated: Option<Regenerated> = None;
    set.regenerate_missing(req.regenerate_missing, &mut regenerated, &roots)?;
    let outputs = plan_outputs(&set.layers, req.layers);
    let export = Export {
        req,
        engines: EngineFactory::new(req.io_mode)?,
        store: store.as_ref(),
        set: &set,
        roots: &roots,
        outputs: &outputs,
        progress: Arc::new(Progress::new(outputs.layers.len())),
    };
    let (layers, plans) = (&outputs.layers, &outputs.plans);

    if plans.iter().all(BlobPlan::known_up_front) {
        // Every blob's size can be known before its first byte: the whole output is planned
        // up front, and layers are written in parallel.
        let sizes = measure_all(layers, plans, req.jobs)?;
        export.reporting(Some(sizes.iter().sum()), || {
            export.planned(destination, &sizes)
        })
    } else {
        // Blobs made in full first (compressed, decompressed) need no sizing pass: a blob's
        // size is known once it is made, and a cache hit reads no tar-split at all. Only a
        // progress display wants the total up front, and then measures what it can.
        let sizes = if req.show_progress {
            measure_for_progress(layers, plans, req.jobs)?
        } else {
            vec![None; layers.len()]
        };
        let total = sizes.iter().copied().sum::<Option<u64>>();
        export.reporting(total, || export.made(destination, &sizes))
    }
}

/// A layer's short name on its progress line: its digest's first 12 hex digits.
pub fn layer_label(layer: &Layer) -> String {
    let digest = match &layer.content {
        LayerContent::Blob(blob) => blob.digest,
        _ => layer.diff_id,
    };
    digest.hex()[..12].to_string()
}

/// The images' names (or IDs) for a progress title and a summary.
pub fn image_names(images: &[Image]) -> String {
    let names: Vec<String> = images
        .iter()
        .map(|i| match i.tags.first() {
            Some(tag) => tag.familiar_string(),
            None => i.id.hex()[..12].to_string(),
        })
        .collect();
    names.join(", ")
}

/// Where the export goes, checked and opened before any layer is read.
enum Destination {
    Archive(Output),
    /// An OCI layout directory, started under its temporary name.
    Dir(oci_dir::PartialDir),
}

impl Destination {
    fn open(req: &ExportRequest, roots: &[PathBuf]) -> Result<Self> {
        match req.format {
            Format::Archive => {
                let output = match &req.output {
                    Some(path) => Output::file(path, roots)?,
                    None => Output::stdout()?,
                };
                Ok(Destination::Archive(output))
            }
            Format::OciDir => {
                let Some(dir) = &req.output else {
                    bail!("--format oci-dir writes a directory: give it with -o DIR");
                };
                Ok(Destination::Dir(oci_dir::PartialDir::begin(dir, roots)?))
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
    roots: &'a [PathBuf],
    /// The blobs to write, and which one each image layer is.
    outputs: &'a Outputs,
    progress: Arc<Progress>,
}

impl Export<'_> {
    /// Runs `work` with progress bars on stderr, when asked for, then a summary line.
    fn reporting(&self, total: Option<u64>, work: impl FnOnce() -> Result<()>) -> Result<()> {
        let destination = match &self.req.output {
            Some(path) => path.display().to_string(),
            None => "stdout".to_string(),
        };
        let names = image_names(&self.set.images);
        progress::with_display(
            self.req.show_progress,
            &self.progress,
            || progress::Job {
                title: format!("{names} → {destination}"),
                total,
                layers: self.outputs.layers.iter().map(layer_label).collect(),
            },
            work,
            |_, elapsed| {
                let bytes = self.progress.bytes();
                let ids: Vec<String> = self.set.images.iter().map(|i| i.id.to_string()).collect();
                format!(
                    "wrote {destination}: {names} ({} {}), {} layers, {} in {:.1} s ({})",
                    if ids.len() == 1 { "image" } else { "images" },
                    ids.join(", "),
                    self.outputs.layers.len(),
                    progress::human_bytes(bytes),
                    elapsed.as_secs_f64(),
                    progress::human_rate(bytes, elapsed),
                )
            },
        )
    }

    /// Blobs known up front stream straight from reassembly (or the store): each one's digest
    /// and size are known, so the whole output is planned before the first byte.
    fn planned(&self, destination: Destination, sizes: &[u64]) -> Result<()> {
        let producer = Producer {
            layers: &self.outputs.layers,
            plans: &self.outputs.plans,
            sizes,
            engines: self.engines,
        };
        let plan = self.layout().plan(known_blobs(
            &self.outputs.layers,
            &self.outputs.plans,
            sizes,
        ));
        match destination {
            Destination::Archive(output) => {
                let opts = WriteOptions {
                    file: output.file_handle(),
                    positional_base: output.positional_base(),
                    jobs: self.req.jobs,
                    progress: &self.progress,
                };
                let len = write_archive(&plan, &producer, &opts, &|| self.confirm())?;
                output.commit(len)
            }
            Destination::Dir(dir) => oci_dir::write_dir(
                dir,
                &oci_dir::from_docker_plan(plan),
                &producer,
                self.req.jobs,
                &self.progress,
                || self.confirm(),
            ),
        }
    }

    /// Blobs made in full first are known only once made, so they are made in the background
    /// (into the blob cache, or scratch files) and written out in layer order as each is
    /// finished.
    fn made(&self, destination: Destination, sizes: &[Option<u64>]) -> Result<()> {
        let req = self.req;
        let store = BlobStore::open(&req.cache, self.roots)?;
        let job = MakeJob {
            layers: &self.outputs.layers,
            plans: &self.outputs.plans,
            store: &store,
            engines: self.engines,
            jobs: req.jobs,
            progress: &self.progress,
            sizes,
        };
        let layout = self.layout();
        let result = match destination {
            Destination::Archive(output) => with_made_layers(&job, |blobs| {
                incremental::write_archive(&layout, blobs, output.file_handle(), &|| self.confirm())
            })
            .and_then(|len| output.commit(len)),
            Destination::Dir(dir) => with_made_layers(&job, |blobs| {
                oci_dir::write_dir_incrementally(dir, &layout, blobs, || self.confirm())
            }),
        };
        store.prune_cache();
        result
    }

    fn layout(&self) -> docker_archive::Layout<'_> {
        docker_archive::Layout {
            images: &self.set.images,
            blob_of: &self.outputs.index,
        }
    }

    fn confirm(&self) -> Result<()> {
        self.set.confirm(self.store)
    }
}
