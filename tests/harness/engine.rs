//! The private Docker engines `scripts/test.sh` starts, as the tests see them.
//!
//! `scripts/test.sh` starts two private engines, builds the `oe-test/*` images in the first
//! (tests/support/make_images.py) and sets:
//! - `OE_TEST_DATA_ROOT`: the first engine's data root;
//! - `OE_TEST_DOCKER_HOST`, `OE_TEST_SECOND_DOCKER_HOST`: their sockets;
//! - `OE_TEST_EXPECT`: what make_images.py recorded (tag → id, diff_ids, docker_save status).
//!
//! Without them the tests skip with a message, except under CI (`CI=true`), where a skipped
//! engine test would prove nothing and so fails ([`super::skip`]). Likewise, a case
//! make_images.py could not build (its "skipped" list) is reported, and fails under CI.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use oci_export::digest::Digest;

pub struct Engine {
    pub data_root: PathBuf,
    pub host: String,
    pub second_host: String,
    pub images: BTreeMap<String, Expected>,
}

pub struct Expected {
    pub id: Digest,
    pub diff_ids: Vec<Digest>,
    pub docker_save_ok: bool,
}

pub fn engine() -> Option<Engine> {
    let vars = [
        "OE_TEST_DATA_ROOT",
        "OE_TEST_DOCKER_HOST",
        "OE_TEST_SECOND_DOCKER_HOST",
        "OE_TEST_EXPECT",
    ];
    let values: Vec<Option<String>> = vars.iter().map(|v| std::env::var(v).ok()).collect();
    if values.iter().any(Option::is_none) {
        super::skip(&format!(
            "an engine test needs {vars:?}: run scripts/test.sh to start a private Docker engine"
        ));
        return None;
    }
    let values: Vec<String> = values.into_iter().map(Option::unwrap).collect();
    let expect: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&values[3]).expect("reading OE_TEST_EXPECT"))
            .unwrap();
    let images = expect["images"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, e)| {
            (
                tag.clone(),
                Expected {
                    id: e["id"].as_str().unwrap().parse().unwrap(),
                    diff_ids: e["diff_ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_str().unwrap().parse().unwrap())
                        .collect(),
                    docker_save_ok: e["docker_save"] == "ok",
                },
            )
        })
        .collect::<BTreeMap<_, _>>();
    // An image make_images.py could not build is missing from the set, and every test that
    // walks the whole set would pass without it: under CI that fails the run.
    let skipped = expect["skipped"].as_object().cloned().unwrap_or_default();
    if !skipped.is_empty() {
        let list: Vec<String> = skipped
            .iter()
            .map(|(name, why)| format!("{name}: {}", why.as_str().unwrap_or_default()))
            .collect();
        let message = format!(
            "make_images.py skipped {} case(s), whose images are not tested:\n{}",
            list.len(),
            list.join("\n")
        );
        if super::under_ci() {
            panic!("CI must test every image: {message}");
        }
        eprintln!("warning: {message}");
    }
    // An empty or truncated image list would make every test below pass vacuously.
    assert!(
        images.len() >= 20,
        "expected the full oe-test image set, got {}",
        images.len()
    );
    Some(Engine {
        data_root: PathBuf::from(&values[0]),
        host: values[1].clone(),
        second_host: values[2].clone(),
        images,
    })
}

impl Engine {
    /// Image `id`'s config exactly as the engine stores it.
    pub fn stored_config(&self, id: &Digest) -> Vec<u8> {
        let path = self
            .data_root
            .join("image/overlay2/imagedb/content/sha256")
            .join(id.hex());
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }
}

/// The Debian CLI (a newer `docker` earlier on PATH may lack what we need).
pub fn docker(host: &str, args: &[&str]) -> Output {
    let out = Command::new("/usr/bin/docker")
        .env("DOCKER_HOST", host)
        .args(args)
        .output()
        .expect("running docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The ID the engine at `host` gives `image`, as `sha256:<hex>`.
pub fn image_id(host: &str, image: &str) -> String {
    let out = docker(host, &["image", "inspect", "--format", "{{.Id}}", image]);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
