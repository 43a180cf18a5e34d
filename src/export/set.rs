//! The images an export names, and their distinct layers.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::model::{Image, Layer, LayerContent};
use crate::reassembly::missing_tar_split;
use crate::regenerate::{needs_regeneration, regenerate_image, Regenerated};
use crate::source::ImageStore;

/// The images to export and their distinct layers.
pub struct ExportSet {
    pub images: Vec<Image>,
    /// The images as the store holds them (before any regeneration), for the final check.
    stored: Vec<Image>,
    /// Each input as typed, with each image it named (several for several platforms), by
    /// index into `images`.
    inputs: Vec<(String, usize)>,
    /// Distinct layers, in order of first appearance.
    pub layers: Vec<Layer>,
}

impl ExportSet {
    /// Looks every input up; an image named twice is exported once with all its tags.
    pub fn resolve(store: &dyn ImageStore, inputs: &[String]) -> Result<Self> {
        let mut images: Vec<Image> = Vec::new();
        let mut resolved = Vec::new();
        for input in inputs {
            for image in store.lookup(input)? {
                // The same config reached through another manifest is another image: its
                // stored documents differ.
                let same = images
                    .iter()
                    .position(|i| i.id == image.id && i.stored == image.stored);
                match same {
                    Some(index) => {
                        let existing = &mut images[index];
                        for tag in image.tags {
                            if !existing.tags.contains(&tag) {
                                existing.tags.push(tag);
                            }
                        }
                        resolved.push((input.clone(), index));
                    }
                    None => {
                        resolved.push((input.clone(), images.len()));
                        images.push(image);
                    }
                }
            }
        }
        let layers = distinct_layers(&images);
        Ok(ExportSet {
            stored: images.clone(),
            images,
            inputs: resolved,
            layers,
        })
    }

    /// Regenerates layers that lost the record of their bytes (opt-in), which changes their
    /// diff_ids and the IDs of the images using them; every change is reported on stderr.
    pub fn regenerate_missing(
        &mut self,
        allowed: bool,
        scratch: &mut Option<Regenerated>,
        forbidden: &[PathBuf],
    ) -> Result<()> {
        let Some(image) = self.images.iter().find(|i| needs_regeneration(i)) else {
            return Ok(());
        };
        if !allowed {
            let layer = image
                .layers
                .iter()
                .find(|l| matches!(l.content, LayerContent::Directory { .. }))
                .expect("needs_regeneration found one");
            bail!("image {}: {}", image.id, missing_tar_split(layer));
        }
        let scratch = match scratch {
            Some(s) => s,
            None => scratch.insert(Regenerated::new(forbidden)?),
        };
        for image in &mut self.images {
            if needs_regeneration(image) {
                *image =
                    regenerate_image(image, scratch, &mut |note| crate::progress::note(&note))?;
            }
        }
        self.layers = distinct_layers(&self.images);
        Ok(())
    }

    /// The storage must still hold what we exported: an image removed or re-tagged during the
    /// export makes the output describe something that no longer exists.
    pub fn confirm(&self, store: &dyn ImageStore) -> Result<()> {
        for (input, index) in &self.inputs {
            store
                .confirm_unchanged(input, &self.stored[*index])
                .context("the image store changed during the export")?;
        }
        Ok(())
    }
}

/// The layers of `images`, each once, in order of first appearance.
fn distinct_layers(images: &[Image]) -> Vec<Layer> {
    let mut seen = HashSet::new();
    images
        .iter()
        .flat_map(|i| &i.layers)
        .filter(|l| seen.insert(l.key()))
        .cloned()
        .collect()
}
