//! What the user typed → the image record it names, as Docker's containerd image store
//! resolves it (moby `daemon/containerd/image.go`, `resolveImage`):
//!
//! 1. a name exactly as stored (`moby-dangling@sha256:…`, or an OCI archive's name that
//!    `ctr images import` kept unnormalized);
//! 2. a reference, normalized (`myapp:1.4` → `docker.io/library/myapp:1.4`); one pinned by
//!    digest (`myapp@sha256:…`) names an image of that repository whose target is that digest;
//! 3. a full image ID: the target digest (what Docker 29 shows as the image ID), else the
//!    config digest (what Docker before 29 showed, and what oci-export's model calls the ID);
//! 4. a unique prefix of either.
//!
//! Untagged images (`moby-dangling@…`) and images named by digest record no tag.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::manifests::Documents;
use super::meta::ImageRecord;
use crate::digest::Digest;
use crate::reference::Reference;
use crate::source::names::{self, is_hex_prefix};
use crate::source::NotFound;

/// The prefix Docker names untagged images with.
pub const DANGLING_PREFIX: &str = "moby-dangling@";

/// The image an input names, and the tag to record for it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub record: ImageRecord,
    pub tag: Option<Reference>,
}

/// The tag an image name records: its normalized reference when it is a tag, none for a
/// dangling image or a name pinned by digest.
pub fn tag_of(name: &str) -> Option<Reference> {
    if name.starts_with(DANGLING_PREFIX) {
        return None;
    }
    let reference = Reference::parse(name).ok()?;
    (reference.tag.is_some() && reference.digest.is_none()).then_some(reference)
}

pub fn resolve(docs: &Documents<'_>, input: &str) -> Result<Resolved> {
    let input = input.trim();
    let meta = docs.meta;
    let ns = docs.namespace;
    if let Some(record) = meta.image(ns, input)? {
        return Ok(Resolved {
            tag: tag_of(&record.name),
            record,
        });
    }
    let parsed = Reference::parse(input).map(Reference::with_default_tag);
    if let Ok(reference) = &parsed {
        match reference.digest {
            None => {
                if let Some(record) = meta.image(ns, &reference.full_string())? {
                    return Ok(Resolved {
                        record,
                        tag: Some(reference.clone()),
                    });
                }
            }
            Some(digest) => {
                // Another repository's image with the same digest is not this one.
                let found = meta.images(ns)?.into_iter().find(|image| {
                    image.target.digest == digest
                        && Reference::parse(&image.name)
                            .is_ok_and(|r| r.full_name() == reference.full_name())
                });
                if let Some(record) = found {
                    return Ok(Resolved { record, tag: None });
                }
            }
        }
    }
    let hex = input.strip_prefix("sha256:").unwrap_or(input);
    if let Ok(id) = Digest::from_hex(hex) {
        let images = meta.images(ns)?;
        if let Some(record) = images.iter().find(|i| i.target.digest == id) {
            return Ok(Resolved {
                record: record.clone(),
                tag: None,
            });
        }
        if let Some(record) = unique_config(docs, &images, |c| *c == id, &id.to_string())? {
            return Ok(Resolved { record, tag: None });
        }
        return Err(NotFound::error(format!(
            "no such image: {input} (no image in namespace {ns} has it as its target or config \
             digest)"
        )));
    }
    if is_hex_prefix(hex) {
        if let Some(record) = unique_with_prefix(docs, hex)? {
            return Ok(Resolved { record, tag: None });
        }
    }
    match parsed {
        Err(_) if is_hex_prefix(hex) => Err(NotFound::error(not_found_message(docs, input)?)),
        Err(e) => bail!("{e}"),
        Ok(reference) if reference.digest.is_some() => Err(NotFound::error(format!(
            "no such image: {input} (no image of {} in namespace {ns} has that digest)",
            reference.full_name()
        ))),
        Ok(reference) => Err(NotFound::error(not_found_message(
            docs,
            &reference.full_string(),
        )?)),
    }
}

/// The one image whose target digest, else config digest, starts with `prefix`.
fn unique_with_prefix(docs: &Documents<'_>, prefix: &str) -> Result<Option<ImageRecord>> {
    let images = docs.meta.images(docs.namespace)?;
    let by_target = distinct_targets(
        images
            .iter()
            .filter(|i| i.target.digest.hex().starts_with(prefix))
            .cloned()
            .collect(),
    );
    match by_target.len() {
        0 => unique_config(docs, &images, |c| c.hex().starts_with(prefix), prefix),
        1 => Ok(by_target.into_iter().next()),
        _ => Err(ambiguous(prefix, &by_target)),
    }
}

/// The one image with a config `matches` accepts. Several manifests of one config (the same
/// image stored with gzip and with zstd layers) are different exports: ambiguous.
fn unique_config(
    docs: &Documents<'_>,
    images: &[ImageRecord],
    matches: impl Fn(&Digest) -> bool,
    what: &str,
) -> Result<Option<ImageRecord>> {
    let found = distinct_targets(
        images
            .iter()
            .filter(|i| docs.config_digests(i).iter().any(&matches))
            .cloned()
            .collect(),
    );
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.into_iter().next()),
        _ => Err(ambiguous(what, &found)),
    }
}

/// One record per target digest (several names of one target are one image), a tagged name
/// preferred, for messages.
fn distinct_targets(records: Vec<ImageRecord>) -> Vec<ImageRecord> {
    let mut by_target: BTreeMap<Digest, ImageRecord> = BTreeMap::new();
    for image in records {
        let tagged = tag_of(&image.name).is_some();
        by_target
            .entry(image.target.digest)
            .and_modify(|kept| {
                if tagged && tag_of(&kept.name).is_none() {
                    *kept = image.clone();
                }
            })
            .or_insert(image);
    }
    by_target.into_values().collect()
}

fn ambiguous(what: &str, images: &[ImageRecord]) -> anyhow::Error {
    let names: Vec<String> = images
        .iter()
        .map(|i| format!("{} ({})", i.name, i.target.digest))
        .collect();
    anyhow::anyhow!(
        "image ID {what} is ambiguous: it matches {} images: {}; give more of the ID, the target \
         digest, or a name",
        images.len(),
        names.join(", ")
    )
}

fn not_found_message(docs: &Documents<'_>, wanted: &str) -> Result<String> {
    let images = docs.meta.images(docs.namespace)?;
    if images.is_empty() {
        let namespaces = docs.meta.namespaces()?;
        return Ok(format!(
            "no such image: {wanted}: namespace {} holds no images (namespaces here: {}; choose \
             one with --namespace)",
            docs.namespace,
            if namespaces.is_empty() {
                "none".to_string()
            } else {
                namespaces.join(", ")
            }
        ));
    }
    let names = images
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !n.starts_with(DANGLING_PREFIX));
    Ok(names::not_found_message(wanted, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_of_names() {
        assert_eq!(
            tag_of("docker.io/library/app:1.4").unwrap().full_string(),
            "docker.io/library/app:1.4"
        );
        // An OCI archive's name kept as given still records its normalized tag.
        assert_eq!(
            tag_of("oe-test/classic:gzip").unwrap().full_string(),
            "docker.io/oe-test/classic:gzip"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(tag_of(&format!("moby-dangling@{d}")).is_none());
        assert!(tag_of(&format!("docker.io/library/app@{d}")).is_none());
        assert!(tag_of("docker.io/library/app").is_none());
        assert!(tag_of("Not A Name").is_none());
    }
}
