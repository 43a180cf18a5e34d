//! `image/overlay2/layerdb/sha256/<chainID>/`: one directory per layer, keyed by ChainID.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::resolve::config_path;
use super::Overlay2Store;
use crate::digest::{chain_ids, Digest};
use crate::model::{config_facts, Image, Layer, LayerContent, Lost};
use crate::reference::Reference;

/// Loads an image's config and locates each of its layers.
pub fn load_image(store: &Overlay2Store, id: Digest, tag: Option<Reference>) -> Result<Image> {
    let path = config_path(store, &id);
    let config = std::fs::read(&path)
        .with_context(|| format!("image {id}: cannot read its config {}", path.display()))?;
    let actual = Digest::of(&config);
    if actual != id {
        bail!(
            "image {id}: config {} hashes to {actual}, not to the image ID; the store is damaged",
            path.display()
        );
    }
    let facts = config_facts(&config).with_context(|| format!("image {id}"))?;
    let chains = chain_ids(&facts.diff_ids);
    let layers = facts
        .diff_ids
        .iter()
        .zip(&chains)
        .map(|(diff_id, chain_id)| load_layer(store, diff_id, chain_id))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("image {id}"))?;
    Ok(Image {
        id,
        config,
        created: facts.created,
        tags: tag.into_iter().collect(),
        layers,
        stored: None,
    })
}

fn layer_dir(store: &Overlay2Store, chain_id: &Digest) -> PathBuf {
    store.image_root.join("layerdb/sha256").join(chain_id.hex())
}

fn load_layer(store: &Overlay2Store, diff_id: &Digest, chain_id: &Digest) -> Result<Layer> {
    let dir = layer_dir(store, chain_id);
    let origin = format!("layer {diff_id} (layerdb {})", dir.display());
    let context = || origin.clone();
    if !exists(&dir, Kind::Dir).with_context(context)? {
        bail!("{}: the layer directory is missing", context());
    }
    let recorded: Digest = read_small(&dir.join("diff"))
        .with_context(context)?
        .parse()
        .with_context(context)?;
    if recorded != *diff_id {
        bail!(
            "{}: its diff file says {recorded}; the store is inconsistent",
            context()
        );
    }
    let cache_id = read_small(&dir.join("cache-id")).with_context(context)?;
    check_cache_id(&cache_id).with_context(context)?;
    let file_root = store
        .data_root
        .join("overlay2")
        .join(&cache_id)
        .join("diff");
    if !exists(&file_root, Kind::Dir).with_context(context)? {
        bail!(
            "{}: its files directory {} is missing",
            context(),
            file_root.display()
        );
    }
    let tar_split = dir.join("tar-split.json.gz");
    // Without its tar-split the layer can only be regenerated from the directory, which the
    // export decides (it changes the diff_id); the source just reports what is there.
    let content = if exists(&tar_split, Kind::File).with_context(context)? {
        LayerContent::TarSplit {
            tar_split,
            file_root,
        }
    } else {
        LayerContent::Directory {
            root: file_root,
            lost: Lost::TarSplit,
        }
    };
    Ok(Layer {
        diff_id: *diff_id,
        content,
        origin,
        remote: super::distribution::remote_blobs(store, diff_id),
    })
}

/// A cache-id names a directory under `overlay2/`: 64 hex characters for daemon-created layers,
/// 25 base-36 characters for BuildKit's. Anything that could name another path is refused.
fn check_cache_id(cache_id: &str) -> Result<()> {
    if cache_id.is_empty()
        || cache_id.len() > 128
        || !cache_id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        bail!("cache-id {cache_id:?} is not a valid layer directory name");
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    File,
    Dir,
}

/// Whether `path` exists as a `kind`. Unlike `Path::is_dir`, a permission error is an error:
/// reporting an unreadable directory as "missing" sent users looking for the wrong problem.
fn exists(path: &Path, kind: Kind) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(match kind {
            Kind::File => meta.is_file(),
            Kind::Dir => meta.is_dir(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => bail!(
            "permission denied reading {}: Docker's data root is readable by root only; run \
             oci-export as root (e.g. with sudo)",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Reads one of layerdb's small metadata files, trimmed.
fn read_small(path: &Path) -> Result<String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!("{} is missing", path.display()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if bytes.len() > 4096 {
        bail!("{} is too large for a metadata file", path.display());
    }
    let text =
        String::from_utf8(bytes).with_context(|| format!("{} is not text", path.display()))?;
    Ok(text.trim().to_string())
}

/// After an export: are the image's config and every layer still there?
pub fn confirm_layers_present(store: &Overlay2Store, image: &Image) -> Result<()> {
    if !config_path(store, &image.id).is_file() {
        bail!("image {} was removed during the export", image.id);
    }
    let diff_ids: Vec<Digest> = image.layers.iter().map(|l| l.diff_id).collect();
    for (layer, chain_id) in image.layers.iter().zip(chain_ids(&diff_ids)) {
        if !layer_dir(store, &chain_id).join("diff").is_file() {
            bail!(
                "image {}: layer {} was removed during the export",
                image.id,
                layer.diff_id
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_cache_id;

    #[test]
    fn cache_ids() {
        assert!(check_cache_id(&"a".repeat(64)).is_ok());
        assert!(check_cache_id("xtmrikgs9myzqaq139r1eap69").is_ok());
        for bad in ["", "..", "../x", "a/b", "a b", "a\0b"] {
            assert!(check_cache_id(bad).is_err(), "{bad:?}");
        }
    }
}
