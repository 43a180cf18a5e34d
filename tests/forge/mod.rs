//! Shared helpers for the tests that damage or forge a copy of the sample data root.
//!
//! Nothing here needs a container engine: the committed sample root (a real overlay2 data root
//! slice, see `tests/data/sample-root/EXPECTED`) is copied into a temporary directory, changed,
//! and the `oci-export` binary is run against the copy.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use oci_export::digest::{chain_ids, Digest};
use oci_export::tarsplit::crc64;

/// The binary under test.
pub use crate::harness::BIN;
/// The committed sample data root.
pub use crate::harness::SAMPLE_ROOT;
pub use crate::harness::{assert_fingerprints_equal, fingerprint_tree, Cover};
/// The sample image's tag.
pub const IMAGE: &str = "sample:latest";
/// No run of the sample may take longer than this; a hang (e.g. on a FIFO) fails the test.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// A private copy of the sample data root, plus an empty output directory beside it.
pub struct Sample {
    pub tmp: tempfile::TempDir,
    /// The copied data root.
    pub root: PathBuf,
    /// An empty directory for outputs, outside the data root.
    pub out_dir: PathBuf,
}

impl Sample {
    pub fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("oe-hostile.")
            .tempdir()
            .unwrap();
        let root = tmp.path().join("root");
        copy_tree(Path::new(SAMPLE_ROOT), &root);
        let out_dir = tmp.path().join("out");
        fs::create_dir(&out_dir).unwrap();
        Sample { tmp, root, out_dir }
    }

    pub fn image_root(&self) -> PathBuf {
        self.root.join("image/overlay2")
    }

    pub fn repositories_path(&self) -> PathBuf {
        self.image_root().join("repositories.json")
    }

    /// The image ID `sample:latest` names, read from repositories.json.
    pub fn image_id(&self) -> Digest {
        let repos: Value =
            serde_json::from_slice(&fs::read(self.repositories_path()).unwrap()).unwrap();
        repos["Repositories"]["sample"][IMAGE]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn config_path(&self) -> PathBuf {
        self.image_root()
            .join("imagedb/content/sha256")
            .join(self.image_id().hex())
    }

    pub fn diff_ids(&self) -> Vec<Digest> {
        let config: Value = serde_json::from_slice(&fs::read(self.config_path()).unwrap()).unwrap();
        config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// Index of the top layer (the sample's `COPY` layer holding `data/copied.txt`).
    pub fn top(&self) -> usize {
        self.diff_ids().len() - 1
    }

    /// `layerdb/sha256/<chainID>` of layer `i`.
    pub fn layer_dir(&self, i: usize) -> PathBuf {
        let chain = chain_ids(&self.diff_ids())[i];
        self.image_root().join("layerdb/sha256").join(chain.hex())
    }

    pub fn tar_split_path(&self, i: usize) -> PathBuf {
        self.layer_dir(i).join("tar-split.json.gz")
    }

    pub fn cache_id(&self, i: usize) -> String {
        fs::read_to_string(self.layer_dir(i).join("cache-id"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// `overlay2/<cache-id>/diff` of layer `i`.
    pub fn diff_dir(&self, i: usize) -> PathBuf {
        self.root
            .join("overlay2")
            .join(self.cache_id(i))
            .join("diff")
    }

    /// The default `-o` target.
    pub fn out(&self) -> PathBuf {
        self.out_dir.join("image.tar")
    }

    /// Runs `oci-export --data-root ROOT ARGS…` with stdout captured.
    pub fn run(&self, args: &[&OsStr]) -> Outcome {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-root").arg(&self.root).args(args);
        run(cmd)
    }

    /// Exports `IMAGE` to `self.out()` with the given extra arguments.
    pub fn export_to_file(&self, extra: &[&str]) -> Outcome {
        let mut args: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
        args.push(OsStr::new(IMAGE));
        args.push(OsStr::new("-o"));
        let out = self.out();
        args.push(out.as_os_str());
        self.run(&args)
    }

    /// Exports `IMAGE` to a pipe (stdout) with the given extra arguments.
    pub fn export_to_stdout(&self, extra: &[&str]) -> Outcome {
        let mut args: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
        args.push(OsStr::new(IMAGE));
        self.run(&args)
    }

    /// A fingerprint of everything under the data root: every path with its type, mode, owner,
    /// size, mtime, ctime and content hash (or symlink target). Equal fingerprints mean nothing
    /// was written, created, removed, renamed or chmod'ed.
    pub fn fingerprint(&self) -> String {
        fingerprint_tree(&self.root, &|_| Cover::Whole).join("\n")
    }

    /// Every name left in the output directory.
    pub fn out_dir_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Runs `f` (which runs the binary), checking that the data root is unchanged by it.
    pub fn unchanged_by<T>(&self, f: impl FnOnce() -> T) -> T {
        let before = self.fingerprint();
        let result = f();
        let after = self.fingerprint();
        assert_fingerprints_equal(&before, &after);
        result
    }

    /// Exports to `-o` with each available engine and asserts a clean failure every time: non-zero
    /// exit, one error line containing every string of `expect`, no output or temporary file,
    /// and an untouched data root. Returns the last stderr.
    pub fn expect_failure(&self, expect: &[&str]) -> String {
        let mut last = String::new();
        for engine in engines() {
            let outcome = self.unchanged_by(|| self.export_to_file(&["--io", engine]));
            assert_clean_failure(self, &outcome, expect, engine);
            // The same through stdout (a pipe): the error must not depend on the destination.
            let outcome = self.unchanged_by(|| self.export_to_stdout(&["--io", engine]));
            assert_failed_with(&outcome, expect, engine);
            last = outcome.stderr;
        }
        last
    }

    // ---- forging ----------------------------------------------------------------------------

    /// Replaces layer `i`'s tar-split with `entries` and makes every record that depends on the
    /// layer's content agree with what a naive reader (`Path::join(diff_dir, name)`, following
    /// symlinks on the host) would rebuild: the layerdb `diff` file, the chain IDs (and so the
    /// layerdb directory names and `parent` files above), the config's `rootfs.diff_ids`, the
    /// image ID (config file name and metadata directory) and repositories.json.
    ///
    /// After this, only the reader's confinement stands between the forged record and whatever
    /// the naive reader would have read. Returns the new image ID.
    pub fn forge_layer(&self, i: usize, entries: &[Value]) -> Digest {
        write_tar_split(&self.tar_split_path(i), entries);
        let tar = naive_assemble(entries, &self.diff_dir(i));
        self.set_layer_diff_id(i, Digest::of(&tar))
    }

    /// Records `new_diff` as layer `i`'s diff_id everywhere, re-keying what depends on it.
    pub fn set_layer_diff_id(&self, i: usize, new_diff: Digest) -> Digest {
        let old_diffs = self.diff_ids();
        let old_id = self.image_id();
        let mut new_diffs = old_diffs.clone();
        new_diffs[i] = new_diff;
        let old_chains = chain_ids(&old_diffs);
        let new_chains = chain_ids(&new_diffs);
        let layerdb = self.image_root().join("layerdb/sha256");
        for j in i..old_diffs.len() {
            let dir = layerdb.join(new_chains[j].hex());
            fs::rename(layerdb.join(old_chains[j].hex()), &dir).unwrap();
            if j == i {
                fs::write(dir.join("diff"), new_diff.to_string()).unwrap();
            } else {
                fs::write(dir.join("parent"), new_chains[j - 1].to_string()).unwrap();
            }
        }

        let content = self.image_root().join("imagedb/content/sha256");
        let config = fs::read_to_string(content.join(old_id.hex())).unwrap();
        assert_eq!(config.matches(&old_diffs[i].to_string()).count(), 1);
        let config = config.replace(&old_diffs[i].to_string(), &new_diff.to_string());
        let new_id = Digest::of(config.as_bytes());
        fs::write(content.join(new_id.hex()), &config).unwrap();
        fs::remove_file(content.join(old_id.hex())).unwrap();
        let metadata = self.image_root().join("imagedb/metadata/sha256");
        if metadata.join(old_id.hex()).exists() {
            fs::rename(metadata.join(old_id.hex()), metadata.join(new_id.hex())).unwrap();
        }

        let repos = fs::read_to_string(self.repositories_path()).unwrap();
        let repos = repos.replace(&old_id.to_string(), &new_id.to_string());
        fs::write(self.repositories_path(), repos).unwrap();
        assert_eq!(self.image_id(), new_id);
        assert_eq!(self.diff_ids(), new_diffs);
        new_id
    }
}

/// Recursive copy that keeps symlinks as symlinks and permission bits as they are.
pub fn copy_tree(from: &Path, to: &Path) {
    let meta = fs::symlink_metadata(from).unwrap();
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from).unwrap(), to).unwrap();
    } else if ft.is_dir() {
        fs::create_dir(to).unwrap();
        let mut names: Vec<_> = fs::read_dir(from)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            copy_tree(&from.join(&name), &to.join(&name));
        }
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777)).unwrap();
    } else if ft.is_file() {
        fs::copy(from, to).unwrap();
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777)).unwrap();
    } else {
        panic!(
            "unexpected file type in the sample root: {}",
            from.display()
        );
    }
}

// ---- running the binary -------------------------------------------------------------------

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

/// Runs `cmd` to completion with stdout and stderr captured, failing the test if it takes longer
/// than [`RUN_TIMEOUT`] (the child is then killed).
pub fn run(mut cmd: Command) -> Outcome {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawning oci-export");
    wait_with_timeout(child, RUN_TIMEOUT)
}

/// Collects a spawned child's piped output, killing it after `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Outcome {
    let mut stdout_pipe = child.stdout.take();
    let mut stderr_pipe = child.stderr.take();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = stdout_pipe.as_mut() {
            p.read_to_end(&mut v).unwrap();
        }
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = stderr_pipe.as_mut() {
            p.read_to_end(&mut v).unwrap();
        }
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("oci-export did not finish within {timeout:?} (hung?)");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Outcome {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: String::from_utf8_lossy(&err_thread.join().unwrap()).into_owned(),
    }
}

/// The I/O engines this host can run: always `sync`, and `uring` where io_uring is allowed.
pub fn engines() -> &'static [&'static str] {
    static ENGINES: OnceLock<Vec<&'static str>> = OnceLock::new();
    ENGINES.get_or_init(|| {
        let sample = Sample::new();
        let uring = sample.export_to_stdout(&["--io", "uring"]);
        if uring.ok() {
            vec!["sync", "uring"]
        } else {
            // Under CI this fails: both engines must be tested there.
            crate::harness::skip(&format!(
                "io_uring unavailable here ({}), testing the sync engine only",
                uring.stderr.trim()
            ));
            vec!["sync"]
        }
    })
}

/// A failed run with one error line containing every string of `expect`, and no panic.
pub fn assert_failed_with(outcome: &Outcome, expect: &[&str], what: &str) {
    assert!(
        !outcome.ok(),
        "[{what}] expected a failure, got success; stderr: {}",
        outcome.stderr
    );
    assert!(
        !outcome.stderr.contains("panicked"),
        "[{what}] panic: {}",
        outcome.stderr
    );
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "[{what}] expected one error line, got: {}",
        outcome.stderr
    );
    assert!(
        lines[0].starts_with("oci-export: error: "),
        "[{what}] {}",
        lines[0]
    );
    // A cause printed twice in a row ("bad header: bad header") is noise, not clarity.
    let parts: Vec<&str> = lines[0].split(": ").collect();
    assert!(
        parts.windows(2).all(|w| w[0] != w[1]),
        "[{what}] a cause is repeated in: {}",
        lines[0]
    );
    for want in expect {
        assert!(
            lines[0].contains(want),
            "[{what}] error message lacks {want:?}: {}",
            lines[0]
        );
    }
}

/// [`assert_failed_with`], plus: nothing at all was left in the output directory (no target,
/// no `.*.oci-export-partial` temporary file).
pub fn assert_clean_failure(sample: &Sample, outcome: &Outcome, expect: &[&str], what: &str) {
    assert_failed_with(outcome, expect, what);
    assert!(
        !sample.out().exists(),
        "[{what}] the output file exists after a failure"
    );
    assert_eq!(
        sample.out_dir_names(),
        Vec::<String>::new(),
        "[{what}] files left in the output directory"
    );
}

// ---- tar-split -----------------------------------------------------------------------------

pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The JSON lines of a `tar-split.json.gz`.
pub fn read_tar_split(path: &Path) -> Vec<Value> {
    let text = gunzip(&fs::read(path).unwrap());
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// The JSON-lines text of `entries`, as tar-split writes it.
pub fn tar_split_text(entries: &[Value]) -> Vec<u8> {
    let mut text = Vec::new();
    for e in entries {
        serde_json::to_writer(&mut text, e).unwrap();
        text.push(b'\n');
    }
    text
}

pub fn write_tar_split(path: &Path, entries: &[Value]) {
    fs::write(path, gzip(&tar_split_text(entries))).unwrap();
}

/// Writes `text` gzipped as a tar-split, whatever it holds.
pub fn write_tar_split_raw(path: &Path, text: &[u8]) {
    fs::write(path, gzip(text)).unwrap();
}

/// A file entry's raw name bytes (`name`, or base64 `name_raw`).
pub fn entry_name(e: &Value) -> Vec<u8> {
    match (e.get("name_raw").and_then(Value::as_str), e.get("name")) {
        (Some(raw), _) => BASE64.decode(raw).unwrap(),
        (None, Some(Value::String(n))) => n.as_bytes().to_vec(),
        _ => panic!("file entry without a name: {e}"),
    }
}

pub fn is_file_entry(e: &Value) -> bool {
    e["type"] == 1
}

/// Index of the file entry named `name`.
pub fn find_file(entries: &[Value], name: &[u8]) -> usize {
    entries
        .iter()
        .position(|e| is_file_entry(e) && entry_name(e) == name)
        .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(name)))
}

/// Rebuilds a layer the naive way: segments verbatim, and each non-empty member read from
/// `Path::join(diff_dir, name)` on the host, which follows absolute names, `..` and symlinks
/// wherever they lead. This is what the forgeries are made consistent with.
pub fn naive_assemble(entries: &[Value], diff_dir: &Path) -> Vec<u8> {
    let mut tar = Vec::new();
    for e in entries {
        if is_file_entry(e) {
            let size = e.get("size").and_then(Value::as_u64).unwrap_or(0);
            if size > 0 {
                let path = diff_dir.join(OsStr::from_bytes(&entry_name(e)));
                let data = fs::read(&path).unwrap();
                assert_eq!(data.len() as u64, size, "{}", path.display());
                tar.extend_from_slice(&data);
            }
        } else {
            let payload = e["payload"].as_str().unwrap_or("");
            tar.extend_from_slice(&BASE64.decode(payload).unwrap());
        }
    }
    tar
}

/// Rewrites member `old_name` of a tar-split to name `new_name` with `content`'s size and
/// CRC-64, fixing the tar header (name when it fits, size, checksum) in the segment before it
/// and the padding in the segment after it, so the forged stream is still a valid tar.
pub fn forge_member(entries: &mut [Value], old_name: &[u8], new_name: &[u8], content: &[u8]) {
    let i = find_file(entries, old_name);
    let old_size = entries[i]["size"].as_u64().unwrap_or(0);
    let mut obj = serde_json::Map::new();
    obj.insert("type".into(), json!(1));
    match std::str::from_utf8(new_name) {
        Ok(s) => obj.insert("name".into(), json!(s)),
        Err(_) => obj.insert("name_raw".into(), json!(BASE64.encode(new_name))),
    };
    obj.insert("size".into(), json!(content.len()));
    obj.insert(
        "payload".into(),
        json!(BASE64.encode(crc64::checksum(content).to_be_bytes())),
    );
    obj.insert("position".into(), entries[i]["position"].clone());
    entries[i] = Value::Object(obj);

    // The member's own header is the last 512 bytes of the segment before it.
    let seg = i - 1;
    let mut header_seg = BASE64
        .decode(entries[seg]["payload"].as_str().unwrap())
        .unwrap();
    let at = header_seg.len() - 512;
    let header = &mut header_seg[at..];
    if new_name.len() <= 100 {
        header[..100].fill(0);
        header[..new_name.len()].copy_from_slice(new_name);
    }
    header[124..136].copy_from_slice(format!("{:011o}\0", content.len()).as_bytes());
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    entries[seg]["payload"] = json!(BASE64.encode(&header_seg));

    // The next segment starts with the member's padding: all zeros, then zero blocks.
    let pad = |n: u64| (512 - n % 512) % 512;
    let next = i + 1;
    let old = BASE64
        .decode(entries[next]["payload"].as_str().unwrap())
        .unwrap();
    let rest = old.len() as u64 - pad(old_size);
    assert!(old.iter().all(|&b| b == 0), "expected padding + end blocks");
    let new = vec![0u8; (pad(content.len() as u64) + rest) as usize];
    entries[next]["payload"] = json!(BASE64.encode(new));
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A copy of the sample whose top-layer member `data/copied.txt` is replaced by `size` bytes of
/// pseudo-random data, with every record re-keyed so the layer is valid. Exporting it takes
/// time proportional to `size`.
pub fn sample_with_big_member(size: usize) -> Sample {
    let mut block = vec![0u8; 1 << 16];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut content = Vec::with_capacity(size);
    while content.len() < size {
        let take = block.len().min(size - content.len());
        content.extend_from_slice(&block[..take]);
        // Vary the blocks so no two are the same.
        block.rotate_left(7);
    }
    sample_with_member(&content)
}

/// `size` bytes without any repeat a compressor could find: they compress to about `size`.
pub fn incompressible(size: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut data = Vec::with_capacity(size + 8);
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    data
}

/// A copy of the sample whose top-layer member `data/copied.txt` holds `content`, with every
/// record re-keyed so the layer is valid.
pub fn sample_with_member(content: &[u8]) -> Sample {
    let s = Sample::new();
    let top = s.top();
    fs::write(s.diff_dir(top).join("data/copied.txt"), content).unwrap();
    let mut entries = read_tar_split(&s.tar_split_path(top));
    forge_member(
        &mut entries,
        b"data/copied.txt",
        b"data/copied.txt",
        content,
    );
    s.forge_layer(top, &entries);
    s
}

/// A pipe whose buffer holds only one page, so the sample's ~20 KB archive cannot fit in it.
pub fn small_pipe() -> (fs::File, std::os::fd::OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: freshly created descriptors, owned from here on.
    let (read, write) = unsafe {
        (
            std::os::fd::FromRawFd::from_raw_fd(fds[0]),
            std::os::fd::FromRawFd::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: F_SETPIPE_SZ on a valid pipe descriptor.
    let size = unsafe { libc::fcntl(fds[0], libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096);
    (read, write)
}
