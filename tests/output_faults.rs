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
        if !is_root() {
            harness::skip("mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8k", "oe-full"])
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
