//! Image references, normalized exactly as Docker stores them.
//!
//! Docker keeps tags in `repositories.json` under their *familiar* form (`alpine:latest`, not
//! `docker.io/library/alpine:latest`), while `docker save` writes the *full* form into
//! `index.json`. Both come from the same normalization (distribution/reference
//! `ParseNormalizedNamed`): a first path component is a registry only if it contains `.` or `:`
//! or is `localhost`; otherwise the registry is `docker.io`, and single-component names there
//! live under `library/`.

use std::fmt;

use crate::digest::Digest;

pub const DEFAULT_DOMAIN: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";

/// A parsed, normalized image reference: `domain/path[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
    /// Whether the store this reference came from spells names in full (containers-storage
    /// keeps `docker.io/library/alpine:3.19`, where Docker keeps `alpine:3.19`). An archive
    /// records a name the way its store spells it ([`Reference::recorded_string`]), so that
    /// loading it back into that kind of engine gives the same name: `podman load` reads
    /// `alpine:3.19` as `localhost/alpine:3.19`.
    pub qualified: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid reference format: {0:?}")]
    InvalidFormat(String),
    #[error("invalid reference format: repository name must be lowercase: {0:?}")]
    NotLowercase(String),
    #[error("invalid reference format: tag {tag:?} in {input:?} is not valid")]
    InvalidTag { input: String, tag: String },
    #[error("invalid reference format: digest in {0:?} is not sha256:<64 hex digits>")]
    InvalidDigest(String),
}

impl Reference {
    /// Parses and normalizes `input`. No default tag is added; see [`Reference::with_default_tag`].
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let invalid = || ReferenceError::InvalidFormat(input.to_string());
        if input.is_empty() || input.len() > 4096 {
            return Err(invalid());
        }
        let (name_and_tag, digest) = match input.split_once('@') {
            Some((left, right)) => {
                let d: Digest = right
                    .parse()
                    .map_err(|_| ReferenceError::InvalidDigest(input.to_string()))?;
                (left, Some(d))
            }
            None => (input, None),
        };
        // The tag is after the last ':' that follows the last '/', so `host:5000/name` has none.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_and_tag[..at], Some(&name_and_tag[at + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            if !is_valid_tag(tag) {
                return Err(ReferenceError::InvalidTag {
                    input: input.to_string(),
                    tag: tag.to_string(),
                });
            }
        }
        if name.is_empty() {
            return Err(invalid());
        }

        let (mut domain, mut path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if domain == LEGACY_DEFAULT_DOMAIN {
            domain = DEFAULT_DOMAIN.to_string();
        }
        if domain == DEFAULT_DOMAIN && !path.contains('/') {
            path = format!("{OFFICIAL_REPO_PREFIX}{path}");
        }
        if path.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(ReferenceError::NotLowercase(input.to_string()));
        }
        if !is_valid_domain(&domain) || !path.split('/').all(is_valid_path_component) {
            return Err(invalid());
        }
        if domain.len() + 1 + path.len() > 255 {
            return Err(invalid());
        }
        Ok(Reference {
            domain,
            path,
            tag: tag.map(str::to_string),
            digest,
            qualified: false,
        })
    }

    /// Docker's rule for a bare name: it means `:latest` (unless a digest pins it).
    pub fn with_default_tag(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// The full repository name: `docker.io/library/alpine`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The familiar repository name, as used for `repositories.json` keys: `alpine`, `org/app`,
    /// `registry:5000/org/app`.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.path.clone(),
            }
        } else {
            self.full_name()
        }
    }

    /// The familiar reference string as `repositories.json` stores it: `alpine:3.19`,
    /// `alpine@sha256:…`, or both.
    pub fn familiar_string(&self) -> String {
        self.render(self.familiar_name())
    }

    /// The same reference, from a store that spells names in full.
    pub fn qualified(mut self) -> Self {
        self.qualified = true;
        self
    }

    /// The repository name as an archive's `manifest.json` and `repositories` record it: the
    /// familiar name for Docker's names, the full name for those of a store that spells them
    /// so ([`Reference::qualified`]).
    pub fn recorded_name(&self) -> String {
        if self.qualified {
            self.full_name()
        } else {
            self.familiar_name()
        }
    }

    /// The reference as an archive's `RepoTags` record it (see [`Reference::recorded_name`]).
    pub fn recorded_string(&self) -> String {
        self.render(self.recorded_name())
    }

    /// The fully qualified reference, as `docker save` writes in `io.containerd.image.name`.
    pub fn full_string(&self) -> String {
        self.render(self.full_name())
    }

    fn render(&self, name: String) -> String {
        let mut s = name;
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.familiar_string())
    }
}

/// Tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Path components: lowercase alphanumerics separated by `.`, `_`, `__` or runs of `-`.
fn is_valid_path_component(component: &str) -> bool {
    let b = component.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__", or one or more "-".
        let start = i;
        while i < b.len() && !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Registry host names (with an optional port); IPv6 literals in brackets are accepted too.
fn is_valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, after)) => {
                if v6.is_empty() || !v6.bytes().all(|c| c.is_ascii_hexdigit() || c == b':') {
                    return false;
                }
                ("x", after.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> (String, String) {
        let r = Reference::parse(s).unwrap().with_default_tag();
        (r.familiar_string(), r.full_string())
    }

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("alpine", "alpine:latest", "docker.io/library/alpine:latest"),
            (
                "alpine:3.19",
                "alpine:3.19",
                "docker.io/library/alpine:3.19",
            ),
            (
                "docker.io/library/alpine:3.19",
                "alpine:3.19",
                "docker.io/library/alpine:3.19",
            ),
            (
                "index.docker.io/library/alpine",
                "alpine:latest",
                "docker.io/library/alpine:latest",
            ),
            (
                "docker.io/org/app",
                "org/app:latest",
                "docker.io/org/app:latest",
            ),
            ("org/app:1.4", "org/app:1.4", "docker.io/org/app:1.4"),
            (
                "library/alpine",
                "alpine:latest",
                "docker.io/library/alpine:latest",
            ),
            (
                "docker.io/library/a/b:1",
                "library/a/b:1",
                "docker.io/library/a/b:1",
            ),
            (
                "registry:5000/org/name:tag",
                "registry:5000/org/name:tag",
                "registry:5000/org/name:tag",
            ),
            (
                "localhost/app",
                "localhost/app:latest",
                "localhost/app:latest",
            ),
            (
                "localhost:5000/x/y:v2",
                "localhost:5000/x/y:v2",
                "localhost:5000/x/y:v2",
            ),
            (
                "my.reg.io/a__b/c-d--e.f:V_1.0-rc",
                "my.reg.io/a__b/c-d--e.f:V_1.0-rc",
                "my.reg.io/a__b/c-d--e.f:V_1.0-rc",
            ),
        ];
        for (input, familiar, full) in cases {
            assert_eq!(
                norm(input),
                (familiar.to_string(), full.to_string()),
                "{input}"
            );
        }
    }

    #[test]
    fn recorded_as_the_store_spells_it() {
        let docker = Reference::parse("docker.io/library/alpine:3.19").unwrap();
        assert_eq!(docker.recorded_string(), "alpine:3.19");
        assert_eq!(docker.recorded_name(), "alpine");
        let podman = docker.clone().qualified();
        assert_eq!(podman.recorded_string(), "docker.io/library/alpine:3.19");
        assert_eq!(podman.recorded_name(), "docker.io/library/alpine");
        // Only the spelling differs.
        assert_eq!(podman.full_string(), docker.full_string());
        assert_eq!(podman.familiar_string(), docker.familiar_string());
        let local = Reference::parse("localhost/app:1.4").unwrap();
        assert_eq!(local.recorded_string(), "localhost/app:1.4");
        assert_eq!(local.qualified().recorded_string(), "localhost/app:1.4");
    }

    #[test]
    fn registry_port_is_not_a_tag() {
        let r = Reference::parse("registry:5000/app").unwrap();
        assert_eq!(r.domain, "registry:5000");
        assert_eq!(r.tag, None);
    }

    #[test]
    fn digests_are_kept_and_suppress_the_default_tag() {
        let d = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
        let r = Reference::parse(&format!("alpine@{d}"))
            .unwrap()
            .with_default_tag();
        assert_eq!(r.tag, None);
        assert_eq!(r.familiar_string(), format!("alpine@{d}"));
        assert!(matches!(
            Reference::parse("alpine@sha256:1234"),
            Err(ReferenceError::InvalidDigest(_))
        ));
    }

    #[test]
    fn rejects_bad_names() {
        assert!(matches!(
            Reference::parse("Alpine"),
            Err(ReferenceError::NotLowercase(_))
        ));
        for bad in [
            "",
            ":tag",
            "a//b",
            "-a",
            "a-",
            "a..b",
            "a:",
            "a:-x",
            "a b",
            "/a",
            "a/",
            "a___b",
            "reg:port/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
    }
}
