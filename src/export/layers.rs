//! Uncompressed layers: measured before the archive is planned, rebuilt while it is written.

use anyhow::Result;

use crate::io::EngineFactory;
use crate::model::Layer;
use crate::parallel;
use crate::reassembly::{measure_layer, rebuild_layer, BlockSink};
use crate::sink::plan::{media_type, BlobInfo};
use crate::sink::writer::BlobProducer;

/// Measures every layer (pass 1 over tar-split), `jobs` at a time.
pub fn measure_all(layers: &[Layer], jobs: usize) -> Result<Vec<u64>> {
    parallel::map(layers, jobs, |layer| Ok(measure_layer(layer)?.tar_size))
}

/// Uncompressed layers: the blob is the layer tar, its digest the diff_id.
pub fn uncompressed_blobs(layers: &[Layer], sizes: &[u64]) -> Vec<BlobInfo> {
    layers
        .iter()
        .zip(sizes)
        .map(|(layer, &size)| BlobInfo {
            digest: layer.diff_id,
            size,
            media_type: media_type::OCI_LAYER_TAR,
        })
        .collect()
}

/// Rebuilds layers while the archive is written, one I/O engine per call.
pub struct Rebuilder<'a> {
    pub layers: &'a [Layer],
    pub sizes: &'a [u64],
    pub engines: EngineFactory,
}

impl BlobProducer for Rebuilder<'_> {
    fn produce(&self, index: usize, out: &mut dyn BlockSink) -> Result<()> {
        let mut engine = self.engines.create()?;
        rebuild_layer(
            &self.layers[index],
            Some(self.sizes[index]),
            engine.as_mut(),
            out,
        )
    }
}
