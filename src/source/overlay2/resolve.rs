//! Turning what the user typed into an image ID, the way `docker save` does: a full image ID,
//! then the tag store, then a unique short-ID prefix.

use anyhow::{bail, Result};

use super::Overlay2Store;
use crate::digest::Digest;
use crate::reference::Reference;

/// The image an input names, and the tag to record for it (if it was a tag).
pub struct Resolved {
    pub id: Digest,
    pub tag: Option<Reference>,
}

pub fn resolve(store: &Overlay2Store, input: &str) -> Result<Resolved> {
    let input = input.trim();
    if let Some(id) = full_image_id(input) {
        if !config_path(store, &id).exists() {
            bail!("no such image: {input} (no config {} in the store)", id);
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
        Ok(reference) => bail!("{}", not_found_message(store, &reference)),
    }
}

fn full_image_id(input: &str) -> Option<Digest> {
    let hex = input.strip_prefix("sha256:").unwrap_or(input);
    Digest::from_hex(hex).ok()
}

fn is_hex_prefix(s: &str) -> bool {
    !s.is_empty() && s.len() < 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
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

/// "No such image", with the closest names the engine has, as `git` suggests commands.
fn not_found_message(store: &Overlay2Store, wanted: &Reference) -> String {
    let target = wanted.familiar_string();
    let mut scored: Vec<(usize, &str)> = store
        .repositories
        .all_refs()
        .map(|(r, _)| (edit_distance(&target, r), r))
        .collect();
    scored.sort();
    let close: Vec<&str> = scored
        .iter()
        .filter(|(d, r)| *d <= target.len().max(r.len()) / 2 + 1)
        .take(5)
        .map(|(_, r)| *r)
        .collect();
    let mut msg = format!("no such image: {target}");
    if close.is_empty() {
        let total = scored.len();
        if total == 0 {
            msg.push_str(" (the store has no tagged images)");
        }
    } else {
        msg.push_str("; closest names the engine has: ");
        msg.push_str(&close.join(", "));
    }
    msg
}

/// Levenshtein distance over bytes (names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("alpine:latest", "alpine:latest"), 0);
        assert_eq!(edit_distance("alpin:latest", "alpine:latest"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn hex_prefix_rules() {
        assert!(is_hex_prefix("abc123"));
        assert!(!is_hex_prefix("ABC"));
        assert!(!is_hex_prefix("alpine"));
        assert!(full_image_id(&format!("sha256:{}", "a".repeat(64))).is_some());
        assert!(full_image_id(&"a".repeat(64)).is_some());
        assert!(full_image_id(&"a".repeat(63)).is_none());
    }
}
