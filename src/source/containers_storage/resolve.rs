//! Turning what the user typed into an image, in the order podman looks
//! (containers/common `libimage/runtime.go` LookupImage, containers-storage `store.Image`):
//!
//! 1. a full image ID, with or without `sha256:`;
//! 2. a name exactly as stored (`localhost/myapp:1.4`);
//! 3. a short name as `localhost/<name>`, then normalized as Docker does
//!    (`alpine` → `docker.io/library/alpine:latest`); a missing tag means `latest`, and a
//!    digest, when given with a tag, wins over it;
//! 4. a unique prefix of an image ID;
//! 5. a digest reference (`name@sha256:…`): an image known by that manifest digest;
//! 6. a short `name[:tag]` that is the end of exactly one image's repository
//!    (`tool:2` → `quay.io/org/tool:2`).
//!
//! Podman also tries the unqualified-search registries of registries.conf in step 3; oci-export
//! does not read registries.conf, and step 6 finds those names when they are unambiguous.
//! Where podman would take the first of several images in step 6, we refuse to guess.

use anyhow::{bail, Result};

use super::images::ImageRecord;
use crate::digest::Digest;
use crate::reference::Reference;
use crate::source::names::{is_hex_prefix, not_found_message_shortened};
use crate::source::NotFound;

/// The image an input names (an index into the images searched), and the name to record for
/// it when it was found by a tagged name.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    pub image: usize,
    pub tag: Option<Reference>,
}

/// Resolves `input` among `images` (the graph root's first, then each additional store's, each
/// ID once).
pub fn resolve(images: &[&ImageRecord], input: &str) -> Result<Resolved> {
    let input = input.trim();
    let by_id = |hex: &str| -> Result<Resolved> {
        match images.iter().position(|i| i.id == hex) {
            Some(image) => Ok(Resolved { image, tag: None }),
            None => Err(NotFound::error(format!(
                "no such image: {input} (no image with that ID in the store)"
            ))),
        }
    };
    if let Some(hex) = input.strip_prefix("sha256:") {
        if Digest::from_hex(hex).is_err() {
            bail!("{input} is not an image ID: an ID is sha256: and 64 hex digits");
        }
        return by_id(hex);
    }
    if Digest::from_hex(input).is_ok() {
        return by_id(input);
    }
    if let Some(found) = by_name(images, input) {
        return Ok(found);
    }

    let parsed = Reference::parse(input);
    if let Ok(reference) = &parsed {
        for candidate in candidates(input, reference) {
            if let Some(found) = by_name(images, &candidate) {
                return Ok(found);
            }
        }
    }

    if is_hex_prefix(input) {
        let matches: Vec<usize> = (0..images.len())
            .filter(|&i| images[i].id.starts_with(input))
            .collect();
        match matches.as_slice() {
            [] => {}
            [image] => {
                return Ok(Resolved {
                    image: *image,
                    tag: None,
                })
            }
            many => bail!(
                "short image ID {input} is ambiguous: it matches {} images",
                many.len()
            ),
        }
    }

    let reference = match parsed {
        Ok(reference) => reference,
        Err(e) => bail!("{e}"),
    };
    if let Some(digest) = &reference.digest {
        if let Some(image) = images.iter().position(|i| i.has_digest(digest)) {
            return Ok(Resolved { image, tag: None });
        }
    } else if !has_domain(input) {
        if let Some(found) = by_repository_suffix(images, input, &reference)? {
            return Ok(found);
        }
    }

    Err(NotFound::error(not_found_message_shortened(
        input,
        images
            .iter()
            .flat_map(|i| i.names.iter().map(String::as_str)),
        shorten,
    )))
}

/// The image with this exact name, and the name as a tag when it is one.
fn by_name(images: &[&ImageRecord], name: &str) -> Option<Resolved> {
    let image = images
        .iter()
        .position(|i| i.names.iter().any(|n| n == name))?;
    Some(Resolved {
        image,
        tag: tag_of(name),
    })
}

/// A stored name as the tag to record: tagged names only (an image exported by digest records
/// no tag, as with Docker), spelled in full as containers-storage keeps it.
fn tag_of(name: &str) -> Option<Reference> {
    Reference::parse(name)
        .ok()
        .filter(|r| r.tag.is_some() && r.digest.is_none())
        .map(Reference::qualified)
}

/// The full names a reference may be stored under, in podman's order.
fn candidates(input: &str, reference: &Reference) -> Vec<String> {
    let stored_form = |mut r: Reference| {
        if r.digest.is_some() {
            // Docker compatibility in podman: with a digest, the tag is ignored.
            r.tag = None;
        }
        r.with_default_tag().full_string()
    };
    let mut forms = Vec::new();
    if !has_domain(input) {
        if let Ok(local) = Reference::parse(&format!("localhost/{input}")) {
            forms.push(stored_form(local));
        }
    }
    forms.push(stored_form(reference.clone()));
    forms
}

/// Whether the first component of a name is a registry (`quay.io/…`, `host:5000/…`,
/// `localhost/…`), by the rule Docker's normalization uses.
fn has_domain(input: &str) -> bool {
    match input.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

/// A short `name[:tag]` that is the end of one image's repository name: `tool:2` for
/// `quay.io/org/tool:2`, `org/tool` for `quay.io/org/tool:latest`.
fn by_repository_suffix(
    images: &[&ImageRecord],
    input: &str,
    reference: &Reference,
) -> Result<Option<Resolved>> {
    let typed_repository = match input.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => input,
    };
    let suffix = format!("/{typed_repository}");
    let tag = reference
        .clone()
        .with_default_tag()
        .tag
        .expect("a default tag is set");
    let mut found: Vec<(usize, &str)> = Vec::new();
    for (index, image) in images.iter().enumerate() {
        for name in &image.names {
            let Ok(stored) = Reference::parse(name) else {
                continue;
            };
            if stored.tag.as_deref() == Some(tag.as_str())
                && stored.digest.is_none()
                && stored.full_name().ends_with(&suffix)
            {
                found.push((index, name));
            }
        }
    }
    let mut distinct: Vec<usize> = found.iter().map(|(i, _)| *i).collect();
    distinct.dedup();
    match distinct.len() {
        0 => Ok(None),
        1 => {
            let (image, name) = found[0];
            Ok(Some(Resolved {
                image,
                tag: tag_of(name),
            }))
        }
        _ => {
            let names: Vec<&str> = found.iter().map(|(_, n)| *n).collect();
            bail!(
                "{input} is ambiguous: it could be any of {}; give the full name",
                names.join(", ")
            )
        }
    }
}

/// The short form a user would type for a stored name, for suggestions.
fn shorten(name: &str) -> &str {
    name.strip_prefix("localhost/")
        .or_else(|| name.strip_prefix("docker.io/library/"))
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, names: &[&str], digest: Option<Digest>) -> ImageRecord {
        ImageRecord {
            id: id.to_string(),
            digest: digest.map(|d| d.to_string()),
            digests: Vec::new(),
            names: names.iter().map(|n| n.to_string()).collect(),
            layer: None,
        }
    }

    fn id(n: u8) -> String {
        Digest::of(&[n]).hex()
    }

    struct Store {
        images: Vec<ImageRecord>,
    }

    impl Store {
        fn new() -> Store {
            let manifest = Digest::of(b"manifest of 4");
            Store {
                images: vec![
                    image(
                        &id(1),
                        &["localhost/myapp:1.4", "localhost/myapp:latest"],
                        None,
                    ),
                    image(&id(2), &["docker.io/library/alpine:3.19"], None),
                    image(
                        &id(3),
                        &["quay.io/org/tool:2", "registry:5000/team/app:v2"],
                        None,
                    ),
                    image(
                        &id(4),
                        &[&format!("docker.io/library/busybox@{manifest}")],
                        Some(manifest),
                    ),
                    image(&id(5), &["docker.io/library/alpine:latest"], None),
                    image(&id(6), &["quay.io/other/tool:3", "ghcr.io/x/tool:3"], None),
                    image(&id(7), &["quay.io/a/dup:1"], None),
                    image(&id(8), &["quay.io/b/dup:1"], None),
                ],
            }
        }

        fn resolve(&self, input: &str) -> Result<Resolved> {
            let refs: Vec<&ImageRecord> = self.images.iter().collect();
            resolve(&refs, input)
        }

        /// The image's index and the recorded tag, as a string.
        fn found(&self, input: &str) -> (usize, Option<String>) {
            let r = self
                .resolve(input)
                .unwrap_or_else(|e| panic!("{input}: {e:#}"));
            (r.image, r.tag.map(|t| t.recorded_string()))
        }
    }

    #[test]
    fn ids() {
        let s = Store::new();
        assert_eq!(s.found(&id(2)), (1, None));
        assert_eq!(s.found(&format!("sha256:{}", id(3))), (2, None));
        let prefix = &id(5)[..12];
        assert_eq!(s.found(prefix), (4, None));
        let err = s.resolve(&format!("sha256:{}", &id(1)[..12])).unwrap_err();
        assert!(err.to_string().contains("is not an image ID"), "{err}");
        // An unknown full ID is not found (auto may look elsewhere).
        let err = s.resolve(&id(99)).unwrap_err();
        assert!(err.is::<NotFound>(), "{err}");
    }

    #[test]
    fn ambiguous_short_id() {
        let mut s = Store::new();
        s.images
            .push(image(&format!("{}0", &id(1)[..8]), &[], None));
        s.images
            .push(image(&format!("{}1", &id(1)[..8]), &[], None));
        let err = s.resolve(&id(1)[..8]).unwrap_err();
        assert!(!err.is::<NotFound>());
        assert!(err.to_string().contains("is ambiguous"), "{err}");
    }

    #[test]
    fn names_as_podman_resolves_them() {
        let s = Store::new();
        let tag = |t: &str| Some(t.to_string());
        // Exact names, and short names under localhost/ (a missing tag is latest).
        assert_eq!(
            s.found("localhost/myapp:1.4"),
            (0, tag("localhost/myapp:1.4"))
        );
        assert_eq!(s.found("myapp:1.4"), (0, tag("localhost/myapp:1.4")));
        assert_eq!(s.found("myapp"), (0, tag("localhost/myapp:latest")));
        // Docker's normalization.
        assert_eq!(
            s.found("alpine:3.19"),
            (1, tag("docker.io/library/alpine:3.19"))
        );
        assert_eq!(
            s.found("alpine"),
            (4, tag("docker.io/library/alpine:latest"))
        );
        assert_eq!(
            s.found("docker.io/alpine:3.19"),
            (1, tag("docker.io/library/alpine:3.19"))
        );
        assert_eq!(
            s.found("library/alpine:3.19"),
            (1, tag("docker.io/library/alpine:3.19"))
        );
        assert_eq!(
            s.found("registry:5000/team/app:v2"),
            (2, tag("registry:5000/team/app:v2"))
        );
        // Suffixes of a repository name, when only one image has them.
        assert_eq!(s.found("tool:2"), (2, tag("quay.io/org/tool:2")));
        assert_eq!(s.found("org/tool:2"), (2, tag("quay.io/org/tool:2")));
        assert_eq!(
            s.found("team/app:v2"),
            (2, tag("registry:5000/team/app:v2"))
        );
        // Two names of one image match: that image.
        assert_eq!(s.found("tool:3").0, 5);
    }

    #[test]
    fn digests() {
        let s = Store::new();
        let manifest = Digest::of(b"manifest of 4");
        // The stored digest name, exactly, and by the image's manifest digest; no tag either
        // way, as Docker records none for a digest reference.
        assert_eq!(s.found(&format!("busybox@{manifest}")), (3, None));
        assert_eq!(s.found(&format!("busybox:1@{manifest}")), (3, None));
        assert_eq!(s.found(&format!("other/name@{manifest}")), (3, None));
        let unknown = Digest::of(b"unknown");
        assert!(s
            .resolve(&format!("busybox@{unknown}"))
            .unwrap_err()
            .is::<NotFound>());
    }

    #[test]
    fn not_found_and_ambiguous() {
        let s = Store::new();
        let err = s.resolve("myap:1.4").unwrap_err();
        assert!(err.is::<NotFound>());
        assert_eq!(
            err.to_string(),
            "no such image: myap:1.4; closest names the engine has: localhost/myapp:1.4, \
             localhost/myapp:latest"
        );
        // A suffix that two images share is refused, not guessed.
        let err = s.resolve("dup:1").unwrap_err();
        assert!(!err.is::<NotFound>());
        assert!(
            err.to_string()
                .contains("could be any of quay.io/a/dup:1, quay.io/b/dup:1"),
            "{err}"
        );
        // A name with a registry is never matched by suffix.
        assert!(s.resolve("quay.io/tool:2").unwrap_err().is::<NotFound>());
        // A suffix must end at a path separator.
        assert!(s.resolve("ool:2").unwrap_err().is::<NotFound>());
        // Not a reference at all.
        let err = s.resolve("Not/Valid").unwrap_err();
        assert!(!err.is::<NotFound>());
        let empty: Vec<&ImageRecord> = Vec::new();
        assert_eq!(
            resolve(&empty, "x").unwrap_err().to_string(),
            "no such image: x (the store has no tagged images)"
        );
    }
}
