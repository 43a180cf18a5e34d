//! `image/overlay2/distribution/v2metadata-by-diffid/sha256/<diff_id hex>`: the compressed
//! blobs Docker pulled or pushed for a layer, and the repositories they came from or went to
//! (moby `distribution/metadata/v2_metadata_service.go`). Docker keeps no compressed bytes,
//! so these only tell a push which blobs a registry may already hold.

use std::io::ErrorKind;

use serde::Deserialize;

use super::Overlay2Store;
use crate::digest::Digest;
use crate::model::RemoteBlob;
use crate::reference::Reference;

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Digest")]
    digest: Digest,
    #[serde(rename = "SourceRepository", default)]
    source_repository: String,
}

/// What Docker remembers about `diff_id`. The records are hints, never trusted for content: a
/// missing, unreadable or malformed file just means no hints (a push then compresses).
pub fn remote_blobs(store: &Overlay2Store, diff_id: &Digest) -> Vec<RemoteBlob> {
    let path = store
        .image_root
        .join("distribution/v2metadata-by-diffid/sha256")
        .join(diff_id.hex());
    let bytes = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() <= 1 << 20 => bytes,
        Ok(_) => return Vec::new(),
        Err(e) if e.kind() == ErrorKind::NotFound => return Vec::new(),
        Err(_) => return Vec::new(),
    };
    let Ok(entries) = serde_json::from_slice::<Vec<Entry>>(&bytes) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| {
            // Docker records the full repository name: docker.io/library/alpine.
            let repo = Reference::parse(&e.source_repository).ok()?;
            Some(RemoteBlob {
                digest: e.digest,
                registry: repo.domain,
                repository: repo.path,
            })
        })
        .collect()
}
