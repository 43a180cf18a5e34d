//! What a person sees: the binary driven in a pseudo-terminal, an export and a push of the
//! sample's three-layer image. On a terminal, stderr shows the total before the work, a
//! percentage that reaches 100 and one summary line; on a pipe or a file it shows nothing at
//! all when the work succeeds.

mod harness;

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use harness::registry::{tools_present, Config, RegistryServer};
use harness::{sample_root, BIN};

/// Runs `oci-export args` with stderr on a pseudo-terminal of 100 columns; returns what the
/// terminal received, with escape sequences removed, and whether the run succeeded.
fn on_a_terminal(args: &[&str], stdout: Stdio) -> (String, bool) {
    let size = nix::pty::Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("opening a pseudo-terminal");
    let status_and_output = {
        let slave: OwnedFd = pty.slave;
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("running oci-export");
        // The reader must run while the child writes, or a full terminal buffer would block it.
        let master = File::from(pty.master);
        let reader = std::thread::spawn(move || {
            let mut master = master;
            let mut bytes = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match master.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    // EIO: every writer of the terminal has closed it.
                    Err(_) => break,
                }
            }
            bytes
        });
        let status = child.wait().expect("waiting for oci-export");
        // Our copy of the slave went to the child and closed with it; the master then reads EOF.
        (status, reader.join().unwrap())
    };
    let (status, bytes) = status_and_output;
    (
        strip_escapes(&String::from_utf8_lossy(&bytes)),
        status.success(),
    )
}

/// The text without ANSI escape sequences.
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn assert_progress_was_shown(seen: &str, total: &str, summary_start: &str) {
    assert!(
        seen.contains(total),
        "the total {total} should show from the start:\n{seen}"
    );
    assert!(seen.contains("100%"), "the bar should reach 100%:\n{seen}");
    let percents: Vec<u32> = seen
        .split('%')
        .filter_map(|before| before.rsplit(' ').next()?.trim().parse().ok())
        .collect();
    assert!(
        percents.iter().all(|p| *p <= 100),
        "percentages beyond 100: {percents:?}"
    );
    let summaries: Vec<&str> = seen.lines().filter(|l| l.contains(summary_start)).collect();
    assert_eq!(summaries.len(), 1, "one summary line:\n{seen}");
}

/// How many distinct layers (12 hex digits, as their lines name them) were shown with
/// `outcome`.
fn layers_with(seen: &str, outcome: &str) -> usize {
    let mut layers = std::collections::BTreeSet::new();
    // Redraws run lines together; a layer's line starts with its name.
    for piece in seen.split("  ") {
        let piece = piece.trim_start();
        let name: String = piece.chars().take(12).collect();
        if name.len() == 12
            && name.bytes().all(|b| b.is_ascii_hexdigit())
            && piece
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(outcome)
        {
            layers.insert(name);
        }
    }
    layers.len()
}

/// The sample image's three layers: 15.50 KiB of layer tars.
const SAMPLE_TOTAL: &str = "15.50 KiB";

#[test]
fn an_export_on_a_terminal_shows_a_total_a_percentage_and_a_summary() {
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("sample.tar");
    let archive_arg = archive.to_str().unwrap();
    let root = sample_root();
    let root_arg = root.to_str().unwrap();
    for extra in [&[][..], &["-c", "zstd", "--no-cache"][..]] {
        let mut args = vec!["--data-root", root_arg, "sample:latest", "-o", archive_arg];
        args.extend_from_slice(extra);
        let (seen, ok) = on_a_terminal(&args, Stdio::null());
        assert!(ok, "{args:?} failed:\n{seen}");
        assert_progress_was_shown(&seen, SAMPLE_TOTAL, &format!("wrote {archive_arg}"));
        let summary = seen.lines().find(|l| l.contains("wrote")).unwrap();
        assert!(
            summary.contains("sample:latest") && summary.contains("3 layers"),
            "{summary}"
        );
        std::fs::remove_file(&archive).unwrap();
    }
    // -q: nothing at all, even on a terminal.
    let (seen, ok) = on_a_terminal(
        &[
            "--data-root",
            root_arg,
            "-q",
            "sample:latest",
            "-o",
            archive_arg,
        ],
        Stdio::null(),
    );
    assert!(ok);
    assert_eq!(seen.trim(), "", "-q shows nothing");
}

#[test]
fn a_pipe_or_a_file_on_stderr_gets_no_progress() {
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("sample.tar");
    let log = out.path().join("stderr.log");
    let root = sample_root();
    let status = Command::new(BIN)
        .args(["--data-root", root.to_str().unwrap(), "sample:latest", "-o"])
        .arg(&archive)
        .stderr(File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "",
        "a file on stderr"
    );
    let piped = Command::new(BIN)
        .args(["--data-root", root.to_str().unwrap(), "sample:latest"])
        .output()
        .unwrap();
    assert!(piped.status.success());
    assert!(!piped.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&piped.stderr),
        "",
        "a pipe on stderr"
    );
}

#[test]
fn a_push_on_a_terminal_shows_each_upload_and_the_pushed_digest() {
    if !tools_present(&["docker-registry"]) {
        return;
    }
    let registry = RegistryServer::start(&Config::default());
    let cache = tempfile::tempdir().unwrap();
    let root = sample_root();
    let dest = format!("{}/terminal/sample:1", registry.addr);
    let stdout = tempfile::NamedTempFile::new().unwrap();
    let args = [
        "push",
        "--data-root",
        root.to_str().unwrap(),
        "--cache-dir",
        cache.path().to_str().unwrap(),
        "sample:latest",
        &dest,
    ];
    let (seen, ok) = on_a_terminal(&args, Stdio::from(stdout.reopen().unwrap()));
    assert!(ok, "push failed:\n{seen}");
    let pushed = std::fs::read_to_string(stdout.path()).unwrap();
    let line = pushed.trim();
    assert!(
        line.starts_with(&format!("{}/terminal/sample@sha256:", registry.addr)),
        "stdout: {pushed:?}"
    );
    assert_eq!(pushed.lines().count(), 1, "exactly one line on stdout");
    assert_progress_was_shown(&seen, SAMPLE_TOTAL, "pushed ");
    let summary = seen.lines().find(|l| l.contains("pushed ")).unwrap();
    let digest = line.rsplit('@').next().unwrap();
    assert!(summary.contains(digest), "{summary}");
    assert!(summary.contains("3 layers uploaded"), "{summary}");
    assert_eq!(layers_with(&seen, "done"), 3, "a line per upload:\n{seen}");

    // Pushed again: every layer is already there, and the lines say so.
    let (seen, ok) = on_a_terminal(&args, Stdio::null());
    assert!(ok, "re-push failed:\n{seen}");
    assert_eq!(layers_with(&seen, "already in the registry"), 3, "{seen}");
    let summary = seen.lines().find(|l| l.contains("pushed ")).unwrap();
    assert!(summary.contains("0 layers uploaded"), "{summary}");

    // Not a terminal: nothing but the digest on stdout, nothing on stderr.
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), line);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}
