//! `image/overlay2/repositories.json`: `{"Repositories":{"<name>":{"<ref>":"sha256:<id>"}}}`.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::digest::Digest;

/// The tag and digest references Docker knows, keyed by familiar repository name.
#[derive(Debug, Default)]
pub struct Repositories {
    by_name: BTreeMap<String, BTreeMap<String, Digest>>,
}

#[derive(Deserialize)]
struct File {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, Digest>>,
}

impl Repositories {
    /// Reads the file once (Docker rewrites it atomically, so one read is a consistent snapshot).
    /// A missing file means the store has no tags yet.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Self::parse(&bytes).with_context(|| format!("{} is malformed", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let file: File = serde_json::from_slice(bytes)?;
        Ok(Repositories {
            by_name: file.repositories,
        })
    }

    /// The image a familiar reference (`alpine:3.19`, `alpine@sha256:…`) points to.
    pub fn get(&self, familiar_name: &str, familiar_ref: &str) -> Option<Digest> {
        self.by_name.get(familiar_name)?.get(familiar_ref).copied()
    }

    /// Every reference, for suggestions.
    pub fn all_refs(&self) -> impl Iterator<Item = (&str, Digest)> {
        self.by_name
            .values()
            .flat_map(|refs| refs.iter().map(|(r, id)| (r.as_str(), *id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_format() {
        let id = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
        let json = format!(
            r#"{{"Repositories":{{"alpine":{{"alpine:latest":"{id}","alpine@{id}":"{id}"}}}}}}"#
        );
        let r = Repositories::parse(json.as_bytes()).unwrap();
        assert_eq!(r.get("alpine", "alpine:latest").unwrap().to_string(), id);
        assert_eq!(
            r.get("alpine", &format!("alpine@{id}"))
                .unwrap()
                .to_string(),
            id
        );
        assert!(r.get("alpine", "alpine:3").is_none());
        assert_eq!(r.all_refs().count(), 2);
    }

    #[test]
    fn rejects_malformed() {
        assert!(Repositories::parse(b"{").is_err());
        assert!(Repositories::parse(br#"{"Repositories":{"a":{"a:1":"nope"}}}"#).is_err());
        assert!(Repositories::parse(br#"{"Repositories":[]}"#).is_err());
    }
}
