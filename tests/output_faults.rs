//! Faults on the output side: a reader that goes away, a full disk, a signal mid-export, a
//! failure while stdout is a regular file, and outputs aimed into the data root. None may leave
//! a partial archive behind or touch the data root.

mod forge;
mod harness;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use forge::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Breaks a member of the top layer so the export fails after it has started writing.
fn damage_top_member(s: &Sample) {
    let path = s.diff_dir(s.top()).join("data/copied.txt");
    let mut data = fs::read(&path).unwrap();
    data[0] ^= 1;
    fs::write(&path, data).unwrap();
}

// ---- a reader that goes away ---------------------------------------------------------------

#[test]
fn closed_pipe_ends_quietly() {
    // `oci-export sample | head -c 100`: the reader takes 100 bytes and leaves.
    // Compressed output leaves through its own writer (the kernel's splice) and must end as
    // quietly, stopping the compressions still running.
    let s = Sample::new();
    let compressions: [&[&str]; 3] = [
        &[],
        &["-c", "gzip", "--no-cache"],
        &["-c", "zstd", "--no-cache"],
    ];
    for (engine, compression) in engines().iter().flat_map(|e| compressions.map(|c| (e, c))) {
        for jobs in ["1", "4"] {
            let what = format!("{engine}, -j {jobs} {compression:?}");
            let (mut read, write) = small_pipe();
            let mut cmd = Command::new(BIN);
            cmd.args(["--io", engine, "-j", jobs])
                .args(compression)
                .arg("--data-root")
                .arg(&s.root)
                .arg(IMAGE)
                .stdin(Stdio::null())
                .stdout(Stdio::from(write))
                .stderr(Stdio::piped());
            let child = cmd.spawn().unwrap();
            drop(cmd); // our copy of the pipe's write end
            let mut head = [0u8; 100];
            read.read_exact(&mut head).unwrap();
            drop(read);
            let outcome = s.unchanged_by(|| wait_with_timeout(child, RUN_TIMEOUT));
            assert!(
                !outcome.ok(),
                "[{what}] an incomplete archive must not succeed"
            );
            assert!(
                !outcome.stderr.contains("panicked"),
                "[{what}] {}",
                outcome.stderr
            );
            assert!(
                outcome.stderr.lines().count() <= 2,
                "[{what}] too chatty: {}",
                outcome.stderr
            );
            assert!(
                outcome.stderr.contains("output closed"),
                "[{what}] {}",
                outcome.stderr
            );
        }
    }
}

// ---- a full disk --------------------------------------------------------------------------

/// A tiny tmpfs, unmounted on drop (also when the test fails).
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount() -> Option<TinyFs> {
        Self::mount_sized("8k")
    }

    fn mount_sized(size: &str) -> Option<TinyFs> {
        if !is_root() {
            harness::skip("mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "oe-full"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs failed although we are root");
        Some(TinyFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn names(&self) -> Vec<String> {
        fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn full_disk_leaves_no_file() {
    let Some(tiny) = TinyFs::mount() else { return };
    let s = Sample::new();
    let target = tiny.path().join("image.tar");
    for engine in engines() {
        let outcome = s.unchanged_by(|| {
            s.run(&[
                "--io".as_ref(),
                engine.as_ref(),
                IMAGE.as_ref(),
                "-o".as_ref(),
                target.as_ref(),
            ])
        });
        assert_failed_with(&outcome, &["No space left on device"], engine);
        assert_eq!(tiny.names(), Vec::<String>::new(), "[{engine}] files left");
    }
}

#[test]
fn full_disk_through_stdout_cuts_the_file_back() {
    // `oci-export sample > /full/fs/image.tar`.
    let Some(tiny) = TinyFs::mount() else { return };
    let s = Sample::new();
    for engine in engines() {
        let path = tiny.path().join("image.tar");
        let file = File::create(&path).unwrap();
        let outcome = s.unchanged_by(|| export_with_stdout(&s, &["--io", engine], file));
        assert_failed_with(&outcome, &["No space left on device"], engine);
        assert_eq!(fs::metadata(&path).unwrap().len(), 0, "[{engine}]");
        fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_full_cache_disk_costs_a_warning_not_the_export() {
    // The cache has room for the small layers (a page for each file) but fills up while the
    // top one is being compressed into it (a 1 MiB member, whose first 64 KiB no codec can
    // shrink): that layer is made again without the cache, and the archive is the same. One
    // layer at a time, so that the top one comes last.
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let s = sample_with_big_member(1 << 20);
    for alg in ["gzip", "zstd"] {
        let tiny = TinyFs::mount_sized("32k").unwrap();
        let cache = tiny.path().to_str().unwrap();
        let reference = s.export_to_stdout(&["-q", "-c", alg, "--no-cache"]);
        assert!(reference.ok(), "[{alg}] {}", reference.stderr);
        let args = ["-q", "-j", "1", "-c", alg, "--cache-dir", cache];
        let outcome = s.unchanged_by(|| s.export_to_stdout(&args));
        assert!(outcome.ok(), "[{alg}] {}", outcome.stderr);
        let lines: Vec<&str> = outcome.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "[{alg}] one warning: {}", outcome.stderr);
        assert!(
            lines[0].starts_with("oci-export: warning: writing into the blob cache")
                && lines[0].contains("No space left on device"),
            "[{alg}] {}",
            lines[0]
        );
        assert!(outcome.stdout == reference.stdout, "[{alg}] wrong archive");
        // The small layers were cached before the disk filled up, and nothing of the abandoned
        // entry is left.
        let mut left = tiny.names();
        left.retain(|n| n != "v1");
        assert_eq!(left, Vec::<String>::new(), "[{alg}]");
        let cached: Vec<String> = fs::read_dir(tiny.path().join("v1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            cached.len(),
            4,
            "[{alg}] two entries of two files: {cached:?}"
        );
    }
}

/// Like [`run`], for a command whose stdout is already set up.
/// `oci-export ARGS --data-root ROOT IMAGE` with `stdout` as its standard output.
fn export_with_stdout(s: &Sample, args: &[&str], stdout: File) -> Outcome {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--data-root")
        .arg(&s.root)
        .arg(IMAGE)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    wait_with_timeout(cmd.spawn().unwrap(), RUN_TIMEOUT)
}

/// `path` holding `prefix`, opened for writing (appending if `append`) at its end: stdout as a
/// shell's `>` or `>>` hands it over after earlier output.
fn redirection(path: &Path, prefix: &[u8], append: bool) -> File {
    fs::write(path, prefix).unwrap();
    let mut file = OpenOptions::new()
        .write(true)
        .append(append)
        .open(path)
        .unwrap();
    file.seek(SeekFrom::End(0)).unwrap();
    file
}

// ---- signals ------------------------------------------------------------------------------

/// Sends `signal` while the export is writing its temporary file, and checks that the file is
/// removed. Returns false if the export finished before the temporary file was seen.
fn interrupt_mid_export(s: &Sample, signal: Signal) -> bool {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-root")
        .arg(&s.root)
        .args([IMAGE, "-o"])
        .arg(s.out())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let mut sent = false;
    while start.elapsed() < RUN_TIMEOUT {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let partial = s
            .out_dir_names()
            .iter()
            .any(|n| n.ends_with(".oci-export-partial"));
        if partial {
            kill(Pid::from_raw(child.id() as i32), signal).unwrap();
            sent = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let outcome = wait_with_timeout(child, RUN_TIMEOUT);
    if !sent {
        assert!(outcome.ok(), "{}", outcome.stderr);
        fs::remove_file(s.out()).unwrap();
        return false;
    }
    assert_eq!(
        outcome.status.code(),
        Some(128 + signal as i32),
        "{signal}: {}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("interrupted"), "{}", outcome.stderr);
    assert_eq!(
        s.out_dir_names(),
        Vec::<String>::new(),
        "{signal}: files left behind"
    );
    true
}

#[test]
fn signals_mid_export_leave_no_temporary_file() {
    // A 16 MiB member keeps a debug build busy for a good fraction of a second after the
    // temporary file appears; if the export still wins the race, try again with a larger one.
    let mut size = 16 << 20;
    let mut s = sample_with_big_member(size);
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        while !s.unchanged_by(|| interrupt_mid_export(&s, signal)) {
            size *= 2;
            assert!(
                size <= 256 << 20,
                "the export never ran long enough to interrupt"
            );
            s = sample_with_big_member(size);
        }
    }
}

/// Sends `signal` once the export has started writing to its stdout, redirected (`>`, or `>>`
/// if `append`) to a file holding `prefix`, and checks that the file is cut back to `prefix`.
/// Returns false if the export finished before the signal could reach it mid-way.
fn interrupt_redirected_export(s: &Sample, signal: Signal, prefix: &[u8], append: bool) -> bool {
    let path = s.tmp.path().join("stdout.tar");
    let mut cmd = Command::new(BIN);
    cmd.arg("--data-root")
        .arg(&s.root)
        .arg(IMAGE)
        .stdin(Stdio::null())
        .stdout(redirection(&path, prefix, append))
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let mut sent = false;
    while start.elapsed() < RUN_TIMEOUT {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if fs::metadata(&path).unwrap().len() > prefix.len() as u64 {
            kill(Pid::from_raw(child.id() as i32), signal).unwrap();
            sent = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let outcome = wait_with_timeout(child, RUN_TIMEOUT);
    if !sent || outcome.ok() {
        assert!(outcome.ok(), "{}", outcome.stderr);
        return false;
    }
    let what = format!("{signal}, append={append}");
    assert_eq!(
        outcome.status.code(),
        Some(128 + signal as i32),
        "[{what}] {}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("interrupted"), "{}", outcome.stderr);
    let left = fs::read(&path).unwrap();
    assert!(
        left == prefix,
        "[{what}] {} bytes left, {} before",
        left.len(),
        prefix.len()
    );
    true
}

#[test]
fn signals_mid_export_cut_redirected_stdout_back() {
    // `oci-export sample > image.tar`, then Ctrl-C: the signal ends the process without running
    // any destructor, so the cleanup has to cut the file back itself. Written at offsets (`>`),
    // the file is at nearly full length from the start; appended to (`>>`), it grows.
    let mut size = 16 << 20;
    let mut s = sample_with_big_member(size);
    let cases: [(Signal, &[u8], bool); 4] = [
        (Signal::SIGINT, b"", false),
        (Signal::SIGTERM, b"earlier content, kept\n", false),
        (Signal::SIGHUP, b"", false),
        (Signal::SIGINT, b"earlier content, kept\n", true),
    ];
    for (signal, prefix, append) in cases {
        while !s.unchanged_by(|| interrupt_redirected_export(&s, signal, prefix, append)) {
            size *= 2;
            assert!(
                size <= 256 << 20,
                "the export never ran long enough to interrupt"
            );
            s = sample_with_big_member(size);
        }
    }
}

// ---- stdout is a regular file -------------------------------------------------------------

#[test]
fn failure_with_stdout_to_a_file_cuts_it_back() {
    // `oci-export sample > image.tar` with a layer that fails verification mid-way.
    let s = Sample::new();
    damage_top_member(&s);
    for engine in engines() {
        for prefix in [&b""[..], b"earlier content, kept\n"] {
            let path = s.tmp.path().join("stdout.tar");
            let file = redirection(&path, prefix, false);
            let outcome = s.unchanged_by(|| export_with_stdout(&s, &["--io", engine], file));
            assert_failed_with(&outcome, &["CRC-64"], engine);
            let left = fs::read(&path).unwrap();
            assert!(left == prefix, "[{engine}] {} bytes left", left.len());
        }
    }
}

#[test]
fn failure_with_stdout_appending_to_a_file_cuts_it_back() {
    // `oci-export sample >> images.tar`: writes go to the end whatever the offset, so the
    // archive streams; a failure must still not leave half an archive glued to the file.
    let s = Sample::new();
    damage_top_member(&s);
    for engine in engines() {
        let path = s.tmp.path().join("stdout.tar");
        let mut file = redirection(&path, b"earlier content, kept\n", true);
        // An appending descriptor's offset does not matter: every write still goes to the end.
        file.seek(SeekFrom::Start(0)).unwrap();
        let outcome = s.unchanged_by(|| export_with_stdout(&s, &["--io", engine], file));
        assert_failed_with(&outcome, &["CRC-64"], engine);
        let left = fs::read(&path).unwrap();
        assert!(
            left == b"earlier content, kept\n",
            "[{engine}] {} bytes left",
            left.len()
        );
    }
}

#[test]
fn success_with_stdout_to_a_file_matches_dash_o() {
    // The control for the two tests above: the same redirections succeed on intact storage.
    let s = Sample::new();
    let via_o = s.export_to_file(&[]);
    assert!(via_o.ok(), "{}", via_o.stderr);
    let archive = fs::read(s.out()).unwrap();
    for append in [false, true] {
        let path = s.tmp.path().join("stdout.tar");
        let file = redirection(&path, b"prefix", append);
        let outcome = export_with_stdout(&s, &[], file);
        assert!(outcome.ok(), "{}", outcome.stderr);
        let written = fs::read(&path).unwrap();
        assert!(
            written == [&b"prefix"[..], &archive].concat(),
            "append={append}"
        );
    }
}

// ---- outputs aimed into the data root ------------------------------------------------------

#[test]
fn output_inside_the_data_root_is_refused() {
    let s = Sample::new();
    // A symlink outside the root that leads into it, and an existing file inside it.
    let link = s.out_dir.join("into-root");
    symlink(s.root.join("image/overlay2"), &link).unwrap();
    let targets: Vec<PathBuf> = vec![
        s.root.join("image.tar"),
        s.root.join("image/overlay2/x.tar"),
        s.repositories_path(),
        s.root.join("overlay2/new-dir/x.tar"),
        link.join("x.tar"),
        s.out_dir.join("../root/x.tar"),
    ];
    for target in &targets {
        for format in ["archive", "oci-dir"] {
            let outcome = s.unchanged_by(|| {
                s.run(&[
                    "--format".as_ref(),
                    format.as_ref(),
                    IMAGE.as_ref(),
                    "-o".as_ref(),
                    target.as_ref(),
                ])
            });
            let what = format!("{format} {}", target.display());
            assert_failed_with(&outcome, &["refusing to write", "inside"], &what);
        }
    }
    // An existing symlink at the output path that points into the root.
    let evil = s.out_dir.join("evil.tar");
    symlink(s.repositories_path(), &evil).unwrap();
    let outcome = s.unchanged_by(|| s.run(&[IMAGE.as_ref(), "-o".as_ref(), evil.as_ref()]));
    assert_failed_with(&outcome, &["refusing to write"], "symlink at -o");
}

// ---- compressed output, written as each layer is finished ----------------------------------

/// Member names in archive order.
fn member_names(archive: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for entry in tar::Archive::new(archive).entries().unwrap() {
        names.push(
            entry
                .unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    names
}

#[test]
fn compressed_output_is_the_same_through_a_file_a_pipe_and_a_redirection() {
    // The blobs are copied by the kernel, by a different call for each kind of destination
    // (copy_file_range, splice): the bytes must not depend on it.
    let s = Sample::new();
    for alg in ["gzip", "zstd"] {
        let args = ["-c", alg, "--no-cache", "-q"];
        let via_o = s.export_to_file(&args);
        assert!(via_o.ok(), "[{alg}] {}", via_o.stderr);
        let archive = fs::read(s.out()).unwrap();
        let via_pipe = s.export_to_stdout(&args);
        assert!(via_pipe.ok(), "[{alg}] {}", via_pipe.stderr);
        assert!(via_pipe.stdout == archive, "[{alg}] pipe and -o differ");

        let path = s.tmp.path().join("stdout.tar");
        let file = redirection(&path, b"prefix", true);
        let outcome = export_with_stdout(&s, &args, file);
        assert!(outcome.ok(), "[{alg}] {}", outcome.stderr);
        assert!(
            fs::read(&path).unwrap() == [&b"prefix"[..], &archive].concat(),
            "[{alg}] redirection differs"
        );

        // Layer blobs lead, in the manifest's layer order, so each could leave as soon as it
        // was compressed.
        let names = member_names(&archive);
        let members = harness::read_archive(&archive);
        let manifest: serde_json::Value =
            serde_json::from_slice(&members["manifest.json"]).unwrap();
        let layers: Vec<&str> = manifest[0]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        let mut seen = std::collections::HashSet::new();
        let distinct: Vec<&str> = layers.iter().copied().filter(|l| seen.insert(*l)).collect();
        assert!(distinct.len() > 1, "the sample has several layers");
        assert_eq!(&names[..2], ["blobs/", "blobs/sha256/"]);
        assert_eq!(names[2..2 + distinct.len()], distinct[..], "[{alg}]");
    }
}

#[test]
fn a_failing_compressed_export_leaves_nothing_and_caches_nothing_bad() {
    // The top layer fails verification while the layers below may already be written out.
    let s = Sample::new();
    damage_top_member(&s);
    let cache = s.tmp.path().join("cache");
    let cache_arg = cache.to_str().unwrap();
    for alg in ["gzip", "zstd"] {
        for format in ["archive", "oci-dir"] {
            let what = format!("{alg}, {format}");
            let outcome = s.unchanged_by(|| {
                s.export_to_file(&["-c", alg, "--format", format, "--cache-dir", cache_arg])
            });
            // The real cause, not the abandonment of the other layers' compression.
            assert_clean_failure(&s, &outcome, &["CRC-64"], &what);
            assert!(
                !outcome.stderr.contains("abandoned"),
                "[{what}] {}",
                outcome.stderr
            );
        }
        // Stdout redirected to a file is cut back to where it was.
        let path = s.tmp.path().join("stdout.tar");
        let file = redirection(&path, b"kept", false);
        let args = ["-c", alg, "--cache-dir", cache_arg];
        let outcome = s.unchanged_by(|| export_with_stdout(&s, &args, file));
        assert_failed_with(&outcome, &["CRC-64"], alg);
        assert_eq!(fs::read(&path).unwrap(), b"kept", "[{alg}] not cut back");
    }
    // Layers that verified may be cached; the damaged one never is.
    let diff_id = s.diff_ids()[s.top()].hex();
    let cached: Vec<String> = fs::read_dir(cache.join("v1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        cached.iter().all(|name| !name.contains(&diff_id)),
        "the damaged layer was cached: {cached:?}"
    );
}

#[test]
fn a_refused_layout_directory_costs_no_compression() {
    // A non-empty target is refused before any layer is compressed or cached.
    let s = Sample::new();
    let target = s.out_dir.join("layout");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("someone-elses"), b"keep").unwrap();
    let cache = s.tmp.path().join("cache");
    let outcome = s.unchanged_by(|| {
        let mut args: Vec<&std::ffi::OsStr> = ["-c", "zstd", "--format", "oci-dir", "--cache-dir"]
            .iter()
            .map(std::ffi::OsStr::new)
            .collect();
        args.extend([
            cache.as_os_str(),
            IMAGE.as_ref(),
            "-o".as_ref(),
            target.as_os_str(),
        ]);
        s.run(&args)
    });
    assert_failed_with(&outcome, &["not empty"], "non-empty layout directory");
    assert_eq!(fs::read(target.join("someone-elses")).unwrap(), b"keep");
    let cached = fs::read_dir(cache.join("v1")).map_or(0, |d| d.count());
    assert_eq!(
        cached, 0,
        "layers were compressed for a refused destination"
    );
}

// ---- what the output looks like to others --------------------------------------------------

/// `oci-export ARGS --data-root ROOT IMAGE -o TARGET` under the usual umask (022), which would
/// leave a file created 0644 readable by everyone.
fn export_under_common_umask(s: &Sample, args: &[&str], target: &Path) -> Outcome {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--data-root")
        .arg(&s.root)
        .args([IMAGE, "-o"])
        .arg(target);
    // SAFETY: umask is async-signal-safe and touches nothing but the child's own mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    forge::run(cmd)
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every path under `dir` (itself included) with its mode.
fn modes_under(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = vec![(dir.to_path_buf(), mode(dir))];
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(modes_under(&path));
        } else {
            found.push((path.clone(), mode(&path)));
        }
    }
    found
}

#[test]
fn output_is_private_to_its_owner() {
    // Layers can hold secrets and the export runs as root: only the owner may read the result.
    let s = Sample::new();
    for compression in [&[][..], &["-c", "zstd", "--no-cache"]] {
        let archive = s.out_dir.join("image.tar");
        let outcome = export_under_common_umask(&s, compression, &archive);
        assert!(outcome.ok(), "{}", outcome.stderr);
        assert_eq!(mode(&archive), 0o600, "{compression:?}");
        fs::remove_file(&archive).unwrap();

        let layout = s.out_dir.join("layout");
        let args = [compression, &["--format", "oci-dir"]].concat();
        let outcome = export_under_common_umask(&s, &args, &layout);
        assert!(outcome.ok(), "{}", outcome.stderr);
        let modes = modes_under(&layout);
        assert!(modes
            .iter()
            .any(|(p, _)| p.starts_with(layout.join("blobs/sha256"))));
        for (path, mode) in modes {
            let want = if path.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{compression:?} {}", path.display());
        }
        fs::remove_dir_all(&layout).unwrap();
    }
}

// ---- destinations refused before any work ---------------------------------------------------

/// Damages the top layer's tar-split, so that any pass over the layers fails: an error about the
/// destination then shows that it was checked first.
fn damage_top_tar_split(s: &Sample) {
    let path = s.tar_split_path(s.top());
    let gz = fs::read(&path).unwrap();
    fs::write(&path, &gz[..gz.len() / 2]).unwrap();
}

/// `oci-export ARGS --data-root ROOT IMAGE` run from `cwd`, stdout to a pipe.
fn export_from(s: &Sample, cwd: &Path, args: &[&std::ffi::OsStr]) -> Outcome {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd)
        .arg("--data-root")
        .arg(&s.root)
        .arg(IMAGE)
        .args(args);
    forge::run(cmd)
}

#[test]
fn unusable_destinations_are_refused_before_any_layer_is_read() {
    let s = Sample::new();
    damage_top_tar_split(&s);
    let empty = s.out_dir.join("empty");
    fs::create_dir(&empty).unwrap();
    let full = s.out_dir.join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("someone-elses"), b"keep").unwrap();
    let link = s.out_dir.join("link");
    symlink(&empty, &link).unwrap();
    let file = s.out_dir.join("file");
    fs::write(&file, b"keep").unwrap();
    let before = s.out_dir_names();

    let oci_dir = ["--format", "oci-dir"];
    let cases: Vec<(&Path, Vec<&str>, Vec<&str>)> = vec![
        (&s.out_dir, oci_dir.to_vec(), vec!["give it with -o DIR"]),
        (
            &s.out_dir,
            [&oci_dir[..], &["-o", "full"]].concat(),
            vec!["not empty"],
        ),
        (
            &s.out_dir,
            [&oci_dir[..], &["-o", "file"]].concat(),
            vec!["not a directory"],
        ),
        (
            &s.out_dir,
            [&oci_dir[..], &["-o", "link"]].concat(),
            vec!["symbolic link"],
        ),
        (
            &s.out_dir,
            [&oci_dir[..], &["-o", "link/"]].concat(),
            vec!["symbolic link"],
        ),
        (
            &empty,
            [&oci_dir[..], &["-o", "."]].concat(),
            vec!["current directory"],
        ),
        (
            &empty,
            [&oci_dir[..], &["-o", ".."]].concat(),
            vec!["current directory or a parent"],
        ),
        (
            &empty,
            [&oci_dir[..], &["-o", "./"]].concat(),
            vec!["current directory"],
        ),
        (
            &s.root,
            [&oci_dir[..], &["-o", "x"]].concat(),
            vec!["refusing to write", "inside"],
        ),
        (
            &s.root,
            vec!["-o", "x.tar"],
            vec!["refusing to write", "inside"],
        ),
        (&s.out_dir, vec!["-o", "full"], vec!["is a directory"]),
    ];
    for (cwd, args, expect) in &cases {
        for compression in [&[][..], &["-c", "zstd", "--no-cache"]] {
            let args: Vec<&std::ffi::OsStr> = [compression, &args[..]]
                .concat()
                .into_iter()
                .map(std::ffi::OsStr::new)
                .collect();
            let what = format!("{args:?} in {}", cwd.display());
            let outcome = s.unchanged_by(|| export_from(&s, cwd, &args));
            assert_failed_with(&outcome, expect, &what);
            assert!(
                !outcome.stderr.contains("tar-split"),
                "[{what}] {}",
                outcome.stderr
            );
            assert_eq!(s.out_dir_names(), before, "[{what}]");
            assert_eq!(fs::read_dir(&empty).unwrap().count(), 0, "[{what}]");
        }
    }
    assert_eq!(fs::read(full.join("someone-elses")).unwrap(), b"keep");
    assert_eq!(fs::read(&file).unwrap(), b"keep");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn a_mount_point_is_refused_as_a_layout_directory() {
    // The finished layout replaces its (empty) target by a rename, which a mount point refuses.
    let Some(tiny) = TinyFs::mount() else { return };
    let s = Sample::new();
    for compression in [&[][..], &["-c", "zstd", "--no-cache"]] {
        let args = [compression, &["--format", "oci-dir"]].concat();
        let outcome = s.unchanged_by(|| export_under_common_umask(&s, &args, tiny.path()));
        assert_failed_with(&outcome, &["mount point"], &format!("{compression:?}"));
        assert_eq!(tiny.names(), Vec::<String>::new());
        let parent = tiny.path().parent().unwrap();
        let partial = fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".oci-export-partial"))
            .count();
        assert_eq!(partial, 0, "a temporary directory was left behind");
    }
}
