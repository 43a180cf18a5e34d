//! `<driver>-images/images.json` and each image's big-data files (containers-storage
//! `images.go`, `store.go`).
//!
//! An image record names its top layer (`layer`) and the big-data items kept in
//! `<driver>-images/<id>/`: the manifest under the key `manifest` (and `manifest-<digest>`), the
//! config under `sha256:<hex>` of the config digest, signatures. A key made only of
//! `[.0-9a-z]` is the file's name; any other key is stored as `=` + base64 of the key
//! (`makeBigDataBaseName`), which is where the config is.
//!
//! The config is found through the manifest (`config.digest`), never assumed from the image
//! ID: images with a layer pulled partially by its TOC (zstd:chunked, eStargz) have an ID that
//! is not their config digest. The config must hash to that digest, which makes it the very
//! bytes the image was built or pulled with.

use std::io::{ErrorKind, Read};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::Deserialize;

use super::layout::StoreDir;
use crate::digest::Digest;
use crate::model::ManifestView;

/// The key the image's own manifest is kept under.
const MANIFEST_KEY: &str = "manifest";
/// Metadata larger than this is not what containers-storage writes.
const MAX_BIG_DATA: u64 = 64 << 20;

/// One entry of images.json: the fields oci-export reads.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    /// The manifest's digest.
    #[serde(default)]
    pub digest: Option<String>,
    /// Every manifest digest the image is known by (its own and lists' instances).
    #[serde(default)]
    pub digests: Vec<String>,
    /// Fully qualified names: `localhost/app:1.4`, `docker.io/library/alpine:3.19`, and for
    /// images pulled by digest `docker.io/library/alpine@sha256:…`.
    #[serde(default)]
    pub names: Vec<String>,
    /// The top layer's ID; none for an image without layers.
    #[serde(default)]
    pub layer: Option<String>,
}

impl ImageRecord {
    /// Whether the image is known by this manifest digest.
    pub fn has_digest(&self, digest: &Digest) -> bool {
        let wanted = digest.to_string();
        self.digest.as_deref() == Some(wanted.as_str()) || self.digests.contains(&wanted)
    }
}

/// The file name containers-storage gives a big-data key.
pub fn big_data_file_name(key: &str) -> String {
    if key
        .bytes()
        .all(|c| matches!(c, b'.' | b'0'..=b'9' | b'a'..=b'z'))
    {
        key.to_string()
    } else {
        format!("={}", base64::engine::general_purpose::STANDARD.encode(key))
    }
}

/// Reads one big-data item, or `None` when the image has no such item.
pub fn read_big_data(dir: &StoreDir, image_id: &str, key: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.big_data_dir(image_id).join(big_data_file_name(key));
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() || meta.len() > MAX_BIG_DATA {
        bail!(
            "{} is not a metadata file containers-storage writes",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_BIG_DATA + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(bytes))
}

/// The image's config, byte for byte, and its digest (the ID it is exported under).
#[derive(Debug)]
pub struct Config {
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

/// Finds the image's config through its manifest and checks that it hashes to the digest the
/// manifest gives it.
pub fn load_config(dir: &StoreDir, record: &ImageRecord) -> Result<Config> {
    let id = &record.id;
    let Some(manifest) = read_big_data(dir, id, MANIFEST_KEY)? else {
        bail!(
            "image {id} has no manifest in {} (big-data item {MANIFEST_KEY:?})",
            dir.big_data_dir(id).display()
        );
    };
    if is_manifest_list(&manifest) {
        bail!(
            "image {id} is a manifest list, not an image: name one of the images it lists \
             (podman manifest inspect shows them)"
        );
    }
    let view = ManifestView::parse(&manifest).with_context(|| {
        format!("image {id}: its manifest names no config (a Docker schema 1 manifest?)")
    })?;
    let digest = view.config.digest;
    let key = digest.to_string();
    let Some(bytes) = read_big_data(dir, id, &key)? else {
        bail!(
            "image {id}: its config {digest} is missing from {} (big-data item {key:?})",
            dir.big_data_dir(id).display()
        );
    };
    let actual = Digest::of(&bytes);
    if actual != digest {
        bail!(
            "image {id}: its config {} hashes to {actual}, not to {digest} as its manifest says; \
             the store is damaged",
            dir.big_data_dir(id)
                .join(big_data_file_name(&key))
                .display()
        );
    }
    Ok(Config { digest, bytes })
}

/// An OCI index or Docker manifest list (`podman manifest create` keeps these as images).
fn is_manifest_list(manifest: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        config: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Probe>(manifest)
        .is_ok_and(|p| p.manifests.is_some() && p.config.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::containers_storage::layout::Driver;
    use crate::source::containers_storage::parse_list;

    #[test]
    fn big_data_names() {
        assert_eq!(big_data_file_name("manifest"), "manifest");
        assert_eq!(big_data_file_name("v1.2"), "v1.2");
        // What podman 4.3 wrote for an imported image's config and signature keys.
        assert_eq!(
            big_data_file_name(
                "sha256:91aa9829712ace69f1c68153ead0b94c86e479eccac3d18933c3c4fb51b1ad6b"
            ),
            "=c2hhMjU2OjkxYWE5ODI5NzEyYWNlNjlmMWM2ODE1M2VhZDBiOTRjODZlNDc5ZWNjYWMzZDE4OTMzYzNjNGZiNTFiMWFkNmI="
        );
        assert_eq!(
            big_data_file_name(
                "signature-b2da7b2e747771e648d33866335ae849b7de046daf10f857e81e4842d81d686c"
            ),
            "=c2lnbmF0dXJlLWIyZGE3YjJlNzQ3NzcxZTY0OGQzMzg2NjMzNWFlODQ5YjdkZTA0NmRhZjEwZjg1N2U4MWU0ODQyZDgxZDY4NmM="
        );
        assert!(big_data_file_name("Manifest").starts_with('='));
        assert!(big_data_file_name("a/b").starts_with('='));
    }

    #[test]
    fn parses_records() {
        let json = br#"[{"id":"aa","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000001","names":["localhost/x:1"],"layer":"bb","metadata":"{}","big-data-names":["manifest"],"created":"2026-01-01T00:00:00Z"},
                       {"id":"cc"}]"#;
        let images = parse_list::<ImageRecord>(json).unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].names, ["localhost/x:1"]);
        assert_eq!(images[0].layer.as_deref(), Some("bb"));
        let one: Digest = format!("sha256:{:064x}", 1).parse().unwrap();
        assert!(images[0].has_digest(&one));
        assert!(!images[1].has_digest(&one));
        assert!(images[1].layer.is_none() && images[1].names.is_empty());
        assert!(parse_list::<ImageRecord>(b"").unwrap().is_empty());
        assert!(parse_list::<ImageRecord>(b"\n").unwrap().is_empty());
        assert!(parse_list::<ImageRecord>(b"{").is_err());
        assert!(
            parse_list::<ImageRecord>(br#"[{"names":[]}]"#).is_err(),
            "an image needs an id"
        );
    }

    fn store_with(manifest: &[u8], config: Option<&[u8]>) -> (tempfile::TempDir, StoreDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StoreDir {
            root: tmp.path().to_path_buf(),
            driver: Driver::Overlay,
        };
        let images = dir.big_data_dir("img");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("manifest"), manifest).unwrap();
        if let Some(config) = config {
            let key = Digest::of(config).to_string();
            std::fs::write(images.join(big_data_file_name(&key)), config).unwrap();
        }
        (tmp, dir)
    }

    fn manifest_for(config: &[u8]) -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
            Digest::of(config),
            config.len()
        )
        .into_bytes()
    }

    fn record() -> ImageRecord {
        ImageRecord {
            id: "img".into(),
            digest: None,
            digests: Vec::new(),
            names: Vec::new(),
            layer: None,
        }
    }

    #[test]
    fn config_through_the_manifest() {
        let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let (_tmp, dir) = store_with(&manifest_for(config), Some(config));
        let found = load_config(&dir, &record()).unwrap();
        assert_eq!(found.bytes, config);
        assert_eq!(found.digest, Digest::of(config));
    }

    #[test]
    fn config_problems() {
        let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
        // Missing config item.
        let (_tmp, dir) = store_with(&manifest_for(config), None);
        let err = load_config(&dir, &record()).unwrap_err().to_string();
        assert!(err.contains("is missing from"), "{err}");
        // A config that does not hash to the manifest's digest.
        let (_tmp, dir) = store_with(&manifest_for(config), Some(config));
        let key = Digest::of(config).to_string();
        std::fs::write(
            dir.big_data_dir("img").join(big_data_file_name(&key)),
            br#"{"rootfs":{"type":"layers","diff_ids":[]}} "#,
        )
        .unwrap();
        let err = load_config(&dir, &record()).unwrap_err().to_string();
        assert!(err.contains("the store is damaged"), "{err}");
        // A manifest list.
        let list = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let (_tmp, dir) = store_with(list, None);
        let err = load_config(&dir, &record()).unwrap_err().to_string();
        assert!(err.contains("is a manifest list"), "{err}");
        // No manifest at all.
        let (_tmp, dir) = store_with(b"", None);
        std::fs::remove_file(dir.big_data_dir("img").join("manifest")).unwrap();
        let err = load_config(&dir, &record()).unwrap_err().to_string();
        assert!(err.contains("has no manifest"), "{err}");
    }
}
