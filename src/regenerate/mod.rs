//! Layers whose tar-split record is lost: rebuild their tar from the layer directory.
//!
//! Without tar-split the original bytes cannot be recovered, so the regenerated tar (written the
//! way Docker's own archiver writes it, see [`docker_tar`]) has a *new* diff_id. The image's
//! config then has to name it in `rootfs.diff_ids`, so the config bytes and therefore the image
//! ID change too. This is opt-in (`--regenerate-missing`) and always reported on stderr.

pub mod docker_tar;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::digest::{Digest, HashingWriter};
use crate::model::{config_facts, Image, LayerContent};
use crate::scratch::ScratchDir;

/// Regenerated layer tars, each made once however many images use the layer.
pub struct Regenerated {
    scratch: ScratchDir,
    /// Old diff_id → (new diff_id, tar file).
    made: HashMap<Digest, (Digest, PathBuf)>,
}

impl Regenerated {
    /// Keeps regenerated tars in a scratch directory outside `forbidden` (the stores' roots).
    pub fn new(forbidden: &[PathBuf]) -> Result<Self> {
        Ok(Regenerated {
            scratch: ScratchDir::new("regenerated", forbidden)?,
            made: HashMap::new(),
        })
    }
}

/// Does the image have layers that need regenerating?
pub fn needs_regeneration(image: &Image) -> bool {
    image
        .layers
        .iter()
        .any(|l| matches!(l.content, LayerContent::Directory { .. }))
}

/// Regenerates the image's tar-split-less layers and rewrites its config and ID to match.
/// Each change is reported through `report`.
pub fn regenerate_image(
    image: &Image,
    scratch: &mut Regenerated,
    report: &mut dyn FnMut(String),
) -> Result<Image> {
    let mut new = image.clone();
    for layer in &mut new.layers {
        let LayerContent::Directory { root, lost } = &layer.content else {
            continue;
        };
        let old = layer.diff_id;
        let (digest, path) = match scratch.made.get(&old) {
            Some(done) => done.clone(),
            None => {
                let path = scratch.scratch.path().join(format!("{}.tar", old.hex()));
                let digest = write_hashed(root, &path).with_context(|| {
                    format!("{}: regenerating from {}", layer.origin, root.display())
                })?;
                report(format!(
                    "layer {old} {}; regenerated it from {}: new diff_id {digest}",
                    lost.describe(),
                    root.display()
                ));
                scratch.made.insert(old, (digest, path.clone()));
                (digest, path)
            }
        };
        layer.diff_id = digest;
        layer.content = LayerContent::TarFile { path };
    }
    let old_ids: Vec<Digest> = image.layers.iter().map(|l| l.diff_id).collect();
    let new_ids: Vec<Digest> = new.layers.iter().map(|l| l.diff_id).collect();
    new.config = rewrite_diff_ids(&image.config, &old_ids, &new_ids)?;
    new.id = Digest::of(&new.config);
    report(format!(
        "image {} has regenerated layers: its config now lists the new diff_ids, so it is exported as image {}",
        image.id, new.id
    ));
    Ok(new)
}

fn write_hashed(root: &Path, path: &Path) -> Result<Digest> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    docker_tar::write_layer_tar(root, &mut out)?;
    out.flush().context("writing the regenerated layer")?;
    Ok(out.digest())
}

/// Replaces the diff_id strings in the config bytes, leaving every other byte as it was, then
/// checks that the config now lists exactly `new`.
fn rewrite_diff_ids(config: &[u8], old: &[Digest], new: &[Digest]) -> Result<Vec<u8>> {
    let mut text = String::from_utf8(config.to_vec()).context("image config is not UTF-8")?;
    for (o, n) in old.iter().zip(new) {
        if o != n {
            text = text.replace(&o.to_string(), &n.to_string());
        }
    }
    let bytes = text.into_bytes();
    let listed = config_facts(&bytes)?.diff_ids;
    if listed != new {
        bail!("rewriting the config's diff_ids did not give the expected list");
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_diff_ids() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = Digest::of(b"c");
        let config =
            format!(r#"{{"z":1,"rootfs":{{"type":"layers","diff_ids":["{a}","{b}"]}},"a":[]}}"#);
        let out = rewrite_diff_ids(config.as_bytes(), &[a, b], &[a, c]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(r#"{{"z":1,"rootfs":{{"type":"layers","diff_ids":["{a}","{c}"]}},"a":[]}}"#)
        );
    }
}
