//! Turning what the user typed into an image ID, the way `docker save` does: a full image ID,
//! then the tag store, then a unique short-ID prefix.

use anyhow::{bail, Result};

use super::Overlay2Store;
use crate::digest::Digest;
use crate::reference::Reference;
use crate::source::names::{self, is_hex_prefix};
use crate::source::NotFound;

/// The image an input names, and the tag to record for it (if it was a tag).
pub struct Resolved {
    pub id: Digest,
    pub tag: Option<Reference>,
}

pub fn resolve(store: &Overlay2Store, input: &str) -> Result<Resolved> {
    let input = input.trim();
    if let Some(id) = full_image_id(input) {
        if !config_path(store, &id).exists() {
            return Err(NotFound::error(format!(
                "no such image: {input} (no config {id} in the store)"
            )));
        }
        return Ok(Resolved { id, tag: None });
    }

    let parsed = Reference::parse(input).map(Reference::with_default_tag);
    if let Ok(reference) = &parsed {
        if let Some(id) = store
            .repositories
            .get(&reference.familiar_name(), &reference.familiar_string())
        {
            // Like Docker, a reference pinned by digest records no tag.
            let tag = (reference.digest.is_none()).then(|| reference.clone());
            return Ok(Resolved { id, tag });
        }
    }

    if is_hex_prefix(input) {
        if let Some(id) = unique_id_with_prefix(store, input)? {
            return Ok(Resolved { id, tag: None });
        }
    }

    match parsed {
        Err(e) => bail!("{e}"),
        Ok(reference) => Err(NotFound::error(not_found_message(store, &reference))),
    }
}

fn full_image_id(input: &str) -> Option<Digest> {
    let hex = input.strip_prefix("sha256:").unwrap_or(input);
    Digest::from_hex(hex).ok()
}

pub fn config_path(store: &Overlay2Store, id: &Digest) -> std::path::PathBuf {
    store
        .image_root
        .join("imagedb/content/sha256")
        .join(id.hex())
}

fn unique_id_with_prefix(store: &Overlay2Store, prefix: &str) -> Result<Option<Digest>> {
    let dir = store.image_root.join("imagedb/content/sha256");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot list {}", dir.display())))
        }
    };
    let mut matches = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(prefix) {
            if let Ok(id) = Digest::from_hex(name) {
                matches.push(id);
            }
        }
    }
    match matches.len() {
        0 => Ok(None),
        1 => Ok(Some(matches[0])),
        n => bail!("short image ID {prefix} is ambiguous: it matches {n} images"),
    }
}

/// "No such image", with the closest names the engine has.
fn not_found_message(store: &Overlay2Store, wanted: &Reference) -> String {
    names::not_found_message(
        &wanted.familiar_string(),
        store.repositories.all_refs().map(|(r, _)| r),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_ids() {
        assert!(full_image_id(&format!("sha256:{}", "a".repeat(64))).is_some());
        assert!(full_image_id(&"a".repeat(64)).is_some());
        assert!(full_image_id(&"a".repeat(63)).is_none());
    }
}
