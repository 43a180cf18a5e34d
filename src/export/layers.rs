//! Layers whose blobs are known before they are written (tars rebuilt from tar-split, stored
//! blobs copied as they are): measured before the archive is planned, produced while it is
//! written.

use anyhow::Result;

use super::plan::BlobPlan;
use crate::io::EngineFactory;
use crate::model::{Layer, LayerContent};
use crate::parallel;
use crate::reassembly::{measure_layer, rebuild_layer, stored, BlockSink};
use crate::sink::plan::{media_type, BlobInfo};
use crate::sink::writer::BlobProducer;

/// Every layer's blob size: a tar's from a pass over its tar-split, `jobs` at a time; a stored
/// blob's from its descriptor.
pub fn measure_all(layers: &[Layer], plans: &[BlobPlan], jobs: usize) -> Result<Vec<u64>> {
    let items: Vec<(&Layer, &BlobPlan)> = layers.iter().zip(plans).collect();
    parallel::map(&items, jobs, |(layer, plan)| match plan {
        BlobPlan::Stored(blob) => Ok(blob.size),
        _ => Ok(measure_layer(layer)?.tar_size),
    })
}

/// Each layer's uncompressed size where it can be known cheaply (a pass over tar-split; a
/// plain stored blob's descriptor), for a progress total: `None` for a layer to decompress.
pub fn measure_for_progress(
    layers: &[Layer],
    plans: &[BlobPlan],
    jobs: usize,
) -> Result<Vec<Option<u64>>> {
    let items: Vec<(&Layer, &BlobPlan)> = layers.iter().zip(plans).collect();
    parallel::map(&items, jobs, |(layer, plan)| match (plan, &layer.content) {
        (BlobPlan::Stored(blob), _) => Ok(Some(blob.size)),
        (_, LayerContent::Blob(_)) => Ok(None),
        _ => Ok(Some(measure_layer(layer)?.tar_size)),
    })
}

/// The blobs' identities: a tar's digest is its diff_id; a stored blob keeps its own.
pub fn known_blobs(layers: &[Layer], plans: &[BlobPlan], sizes: &[u64]) -> Vec<BlobInfo> {
    layers
        .iter()
        .zip(plans)
        .zip(sizes)
        .map(|((layer, plan), &size)| match plan {
            BlobPlan::Stored(blob) => BlobInfo {
                digest: blob.digest,
                size,
                media_type: blob.compression.oci_media_type(),
            },
            _ => BlobInfo {
                digest: layer.diff_id,
                size,
                media_type: media_type::OCI_LAYER_TAR,
            },
        })
        .collect()
}

/// Produces layer blobs while the archive is written, one I/O engine per call.
pub struct Producer<'a> {
    pub layers: &'a [Layer],
    pub plans: &'a [BlobPlan],
    pub sizes: &'a [u64],
    pub engines: EngineFactory,
}

impl BlobProducer for Producer<'_> {
    fn produce(&self, index: usize, out: &mut dyn BlockSink) -> Result<()> {
        let layer = &self.layers[index];
        match &self.plans[index] {
            BlobPlan::Stored(blob) => {
                stored::copy_verified(blob, out).map_err(|e| e.context(layer.origin.clone()))
            }
            _ => {
                let mut engine = self.engines.create()?;
                rebuild_layer(layer, Some(self.sizes[index]), engine.as_mut(), out)
            }
        }
    }
}
