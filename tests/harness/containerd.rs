//! A private containerd for the tests (`scripts/containerd.sh`), filled the way Docker 29 fills
//! its store: `ctr -n moby images import` of `docker save` archives and of OCI archives with gzip
//! and zstd layers (`tests/support/containerd_archives.py`), a two-platform index of which only
//! linux/amd64 is imported, and an image that lost its last tag kept as `moby-dangling@…`.
//!
//! Needs root, `containerd` and `ctr`, and for [`Containerd::fill_like_docker29`] the private
//! Docker engine of `scripts/test.sh` (its `oe-test/*` images) and skopeo. When any is missing
//! the test skips, or fails under `CI=true` ([`super::skip`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use oci_export::digest::Digest;

/// The namespace Docker uses.
pub const MOBY: &str = "moby";

pub struct Containerd {
    dir: tempfile::TempDir,
    pub address: PathBuf,
    /// containerd's `--root`: `io.containerd.metadata.v1.bolt/meta.db` and the rest.
    pub root: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/containerd.sh")
}

fn have(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Containerd {
    /// Starts a private containerd, or reports (through [`super::skip`]) why it cannot.
    pub fn start() -> Option<Containerd> {
        if !nix::unistd::geteuid().is_root() {
            super::skip("a containerd test needs root");
            return None;
        }
        for command in ["containerd", "ctr"] {
            if !have(command) {
                super::skip(&format!(
                    "a containerd test needs {command} (Debian: containerd)"
                ));
                return None;
            }
        }
        // Short, so that the socket paths fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("oe-ctd.")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        let out = Command::new(script())
            .args(["start", dir.path().to_str().unwrap()])
            .output()
            .expect("running scripts/containerd.sh");
        if !out.status.success() {
            // A host that has containerd but cannot run it is a host problem, not a test
            // failure, except under CI.
            super::skip(&format!(
                "scripts/containerd.sh start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        let stdout = String::from_utf8(out.stdout).unwrap();
        let address = stdout
            .trim()
            .strip_prefix("export CONTAINERD_ADDRESS=")
            .unwrap_or_else(|| panic!("unexpected output of containerd.sh start: {stdout}"));
        Some(Containerd {
            address: PathBuf::from(address),
            root: dir.path().join("root"),
            dir,
        })
    }

    /// A scratch directory of this containerd's (archives, copies), removed with it.
    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn meta_db(&self) -> PathBuf {
        self.root.join("io.containerd.metadata.v1.bolt/meta.db")
    }

    pub fn overlayfs(&self) -> PathBuf {
        self.root.join("io.containerd.snapshotter.v1.overlayfs")
    }

    /// Runs `ctr -n <ns> <args>` against this containerd.
    pub fn ctr_output(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .args(["-n", ns])
            .args(args)
            .output()
            .expect("running ctr")
    }

    /// [`Containerd::ctr_output`], insisting on success; returns stdout.
    pub fn ctr(&self, ns: &str, args: &[&str]) -> String {
        let out = self.ctr_output(ns, args);
        assert!(
            out.status.success(),
            "ctr -n {ns} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Imports the archives `tests/support/containerd_archives.py` makes from the engine at
    /// `docker_host` into namespace `moby`, then keeps `docker.io/oe-test/load-whiteouts:latest`
    /// only as a dangling image, as Docker 29 does after `docker rmi` of its last tag while
    /// another image still shares its content. Returns what the archives hold
    /// (`archives.json`) and the dangling image's name.
    pub fn fill_like_docker29(&self, docker_host: &str) -> Option<Filled> {
        if !have("skopeo") {
            super::skip("filling a containerd needs skopeo");
            return None;
        }
        let out_dir = self.scratch().join("archives");
        let made = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/containerd_archives.py"))
            .arg("--out")
            .arg(&out_dir)
            .env("DOCKER_HOST", docker_host)
            .output()
            .expect("running containerd_archives.py");
        assert!(
            made.status.success(),
            "containerd_archives.py failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        for archive in ["docker.tar", "oci-gzip.tar", "oci-zstd.tar", "multi.tar"] {
            self.ctr(
                MOBY,
                &["images", "import", out_dir.join(archive).to_str().unwrap()],
            );
        }
        let archives: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out_dir.join("archives.json")).unwrap()).unwrap();
        let whiteouts = "docker.io/oe-test/load-whiteouts:latest";
        let target = self
            .images(MOBY)
            .into_iter()
            .find(|i| i.name == whiteouts)
            .unwrap_or_else(|| panic!("{whiteouts} was not imported"))
            .digest;
        let dangling = format!("moby-dangling@{target}");
        self.ctr(MOBY, &["images", "tag", whiteouts, &dangling]);
        // --sync: the garbage collection the removal starts has finished when it returns, so
        // later reads of the store do not race it (unreferenced blobs vanishing).
        self.ctr(MOBY, &["images", "rm", "--sync", whiteouts]);
        Some(Filled {
            archives,
            archive_dir: out_dir,
            dangling,
        })
    }

    /// `ctr images ls`, parsed.
    pub fn images(&self, ns: &str) -> Vec<CtrImage> {
        let listing = self.ctr(ns, &["images", "ls"]);
        let mut lines = listing.lines();
        let header = lines.next().unwrap_or_default();
        assert!(header.starts_with("REF"), "ctr images ls: {listing}");
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                // REF TYPE DIGEST SIZE (two words: "1.9 MiB") PLATFORMS LABELS
                assert!(cols.len() >= 6, "ctr images ls line: {line}");
                CtrImage {
                    name: cols[0].to_string(),
                    media_type: cols[1].to_string(),
                    digest: cols[2].parse().unwrap(),
                    platforms: cols[5].split(',').map(str::to_string).collect(),
                }
            })
            .collect()
    }

    /// `ctr content ls`, parsed: digest → (size as ctr prints it, labels).
    pub fn content(&self, ns: &str) -> Vec<CtrBlob> {
        let listing = self.ctr(ns, &["content", "ls"]);
        let mut lines = listing.lines();
        assert!(lines.next().unwrap_or_default().starts_with("DIGEST"));
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                // Tab-separated: DIGEST, SIZE, AGE ("Less than a second"), LABELS.
                let cols: Vec<&str> = line.split('\t').filter(|c| !c.is_empty()).collect();
                assert_eq!(cols.len(), 4, "ctr content ls line: {line:?}");
                let labels = match cols[3].trim() {
                    "-" => Vec::new(),
                    list => list
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label k=v");
                            (k.to_string(), v.to_string())
                        })
                        .collect(),
                };
                CtrBlob {
                    digest: cols[0].parse().unwrap(),
                    size: cols[1].to_string(),
                    labels,
                }
            })
            .collect()
    }

    /// `ctr snapshots ls`, parsed: (key, parent, kind).
    pub fn snapshots(&self, ns: &str) -> Vec<(String, Option<String>, String)> {
        let listing = self.ctr(ns, &["snapshots", "ls"]);
        let mut lines = listing.lines();
        assert!(lines.next().unwrap_or_default().starts_with("KEY"));
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                match cols[..] {
                    [key, kind] => (key.to_string(), None, kind.to_string()),
                    [key, parent, kind] => {
                        (key.to_string(), Some(parent.to_string()), kind.to_string())
                    }
                    _ => panic!("ctr snapshots ls line: {line}"),
                }
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}

pub struct CtrImage {
    pub name: String,
    pub media_type: String,
    pub digest: Digest,
    pub platforms: Vec<String>,
}

pub struct CtrBlob {
    pub digest: Digest,
    /// As ctr prints it: go-units `HumanSize` ("1.047kB").
    pub size: String,
    pub labels: Vec<(String, String)>,
}

pub struct Filled {
    pub archives: serde_json::Value,
    pub archive_dir: PathBuf,
    pub dangling: String,
}

/// go-units `HumanSize`, as ctr prints sizes: decimal units, four significant digits (`%.4g`).
pub fn human_size(size: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut value = size as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{}{}", format_g4(value), UNITS[unit])
}

/// C's `%.4g` for 0 <= v < 10000: four significant digits, trailing zeros dropped.
fn format_g4(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    // Digits before the point after rounding to four significant digits.
    let rounded: f64 = format!("{v:.3e}").parse().unwrap();
    let int_digits = if rounded >= 1.0 {
        rounded.log10().floor() as i32 + 1
    } else {
        0
    };
    let decimals = (4 - int_digits).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A private containerd filled as [`Containerd::fill_like_docker29`] fills it, with the engine
/// that made its images; `None` (after [`super::skip`]) where either cannot run.
pub fn start_filled() -> Option<(super::engine::Engine, Containerd, Filled)> {
    let engine = super::engine::engine()?;
    let ctd = Containerd::start()?;
    let filled = ctd.fill_like_docker29(&engine.host)?;
    Some((engine, ctd, filled))
}

impl Containerd {
    /// Where the content store keeps blob `digest`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("io.containerd.content.v1.content/blobs/sha256")
            .join(digest.hex())
    }

    /// `ctr images export` of `name` (this machine's platform, as Docker 29's `docker save`
    /// exports by default) into `out`.
    pub fn export_with_ctr(&self, name: &str, out: &Path) {
        self.ctr(
            MOBY,
            &[
                "images",
                "export",
                "--platform",
                &oci_export::source::Platform::host().to_string(),
                out.to_str().unwrap(),
                name,
            ],
        );
    }

    /// The image named `name` in namespace moby, as `ctr images ls` lists it.
    pub fn image(&self, name: &str) -> CtrImage {
        self.images(MOBY)
            .into_iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no image {name} in namespace {MOBY}"))
    }
}
