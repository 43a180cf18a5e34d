//! Damaged or inconsistent storage must fail the export cleanly: a non-zero exit, one error line
//! naming what is wrong (image, layer, file), no output file and no temporary file left behind,
//! and a data root exactly as it was. Every case runs with each I/O engine, to `-o` and to a pipe.

mod forge;
mod harness;

use std::fs;
use std::os::unix::fs::symlink;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use forge::*;

/// The member every file-level case damages: 15 bytes in the sample's top (`COPY`) layer.
const MEMBER: &str = "data/copied.txt";

fn member_path(s: &Sample) -> std::path::PathBuf {
    s.diff_dir(s.top()).join(MEMBER)
}

/// The top layer's diff_id as messages print it.
fn top_layer(s: &Sample) -> String {
    s.diff_ids()[s.top()].to_string()
}

#[test]
fn pristine_sample_exports() {
    // The baseline every other case damages: it must succeed, or the failures below prove nothing.
    let s = Sample::new();
    for engine in engines() {
        let out = s.unchanged_by(|| s.export_to_file(&["--io", engine]));
        assert!(out.ok(), "[{engine}] {}", out.stderr);
        assert!(out.stderr.is_empty(), "{}", out.stderr);
        assert_eq!(s.out_dir_names(), ["image.tar"]);
        fs::remove_file(s.out()).unwrap();
    }
}

// ---- member files -------------------------------------------------------------------------

#[test]
fn changed_byte_same_size_is_a_crc_error() {
    let s = Sample::new();
    let mut data = fs::read(member_path(&s)).unwrap();
    data[3] ^= 0x20;
    fs::write(member_path(&s), &data).unwrap();
    s.expect_failure(&[&top_layer(&s), MEMBER, "CRC-64"]);
}

#[test]
fn truncated_member_is_refused() {
    let s = Sample::new();
    let data = fs::read(member_path(&s)).unwrap();
    fs::write(member_path(&s), &data[..data.len() - 4]).unwrap();
    s.expect_failure(&[&top_layer(&s), MEMBER, "records 15 bytes", "has 11 bytes"]);
}

#[test]
fn extended_member_is_refused() {
    let s = Sample::new();
    let mut data = fs::read(member_path(&s)).unwrap();
    data.extend_from_slice(b"more");
    fs::write(member_path(&s), &data).unwrap();
    s.expect_failure(&[&top_layer(&s), MEMBER, "records 15 bytes", "has 19 bytes"]);
}

#[test]
fn missing_member_is_refused() {
    let s = Sample::new();
    fs::remove_file(member_path(&s)).unwrap();
    s.expect_failure(&[&top_layer(&s), MEMBER, "cannot open"]);
}

#[test]
fn member_replaced_by_a_directory_is_refused() {
    let s = Sample::new();
    fs::remove_file(member_path(&s)).unwrap();
    fs::create_dir(member_path(&s)).unwrap();
    s.expect_failure(&[
        &top_layer(&s),
        MEMBER,
        "expected a regular file, found a directory",
    ]);
}

#[test]
fn member_replaced_by_a_fifo_is_refused_without_hanging() {
    // Opening a FIFO for reading blocks until a writer appears; nobody will ever write to this
    // one, so a reader without O_NONBLOCK would hang until the run times out.
    let s = Sample::new();
    fs::remove_file(member_path(&s)).unwrap();
    nix::unistd::mkfifo(
        &member_path(&s),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    s.expect_failure(&[
        &top_layer(&s),
        MEMBER,
        "expected a regular file, found a FIFO",
    ]);
}

#[test]
fn member_replaced_by_a_symlink_to_a_directory_is_refused() {
    // Under confinement all three name a directory of the layer ("/" and "/data" would be the
    // host's own on a naive reader): the read must be refused, never attempted on a directory.
    for target in ["/", "..", "/data"] {
        let s = Sample::new();
        fs::remove_file(member_path(&s)).unwrap();
        symlink(target, member_path(&s)).unwrap();
        s.expect_failure(&[&top_layer(&s), MEMBER, "found a directory"]);
    }
}

// ---- tar-split ----------------------------------------------------------------------------

fn top_tar_split(s: &Sample) -> Vec<Value> {
    read_tar_split(&s.tar_split_path(s.top()))
}

#[test]
fn truncated_gzip_is_refused() {
    let s = Sample::new();
    let path = s.tar_split_path(s.top());
    let gz = fs::read(&path).unwrap();
    fs::write(&path, &gz[..gz.len() / 2]).unwrap();
    s.expect_failure(&[
        &top_layer(&s),
        "tar-split",
        "gzip stream damaged or truncated",
    ]);
}

#[test]
fn corrupt_gzip_is_refused() {
    let s = Sample::new();
    let path = s.tar_split_path(s.top());
    let pristine = fs::read(&path).unwrap();
    let n = pristine.len();
    // Header magic, a byte of deflate data, and the CRC-32 trailer (every entry decodes fine,
    // only the final check can tell).
    for (at, what) in [
        (0, "magic"),
        (n / 2, "deflate data"),
        (n - 6, "CRC-32 trailer"),
    ] {
        let mut gz = pristine.clone();
        gz[at] ^= 0x55;
        fs::write(&path, &gz).unwrap();
        let err = s.expect_failure(&[&top_layer(&s), "tar-split"]);
        assert!(
            err.contains("gzip") || err.contains("invalid"),
            "{what}: {err}"
        );
    }
}

#[test]
fn malformed_json_line_is_refused() {
    let s = Sample::new();
    let mut text = tar_split_text(&top_tar_split(&s));
    let at = text.iter().position(|&b| b == b'\n').unwrap() + 1;
    text.splice(at..at, b"{\"type\":1,\"name\":\"x\",\n".iter().copied());
    write_tar_split_raw(&s.tar_split_path(s.top()), &text);
    s.expect_failure(&[&top_layer(&s), "tar-split line 2", "invalid JSON"]);
}

#[test]
fn bad_base64_payload_is_refused() {
    let s = Sample::new();
    let mut entries = top_tar_split(&s);
    entries[0]["payload"] = json!("not*base64!");
    write_tar_split(&s.tar_split_path(s.top()), &entries);
    s.expect_failure(&[&top_layer(&s), "tar-split line 1", "not base64"]);
}

/// Sets the size of `MEMBER`'s entry in the top layer's tar-split.
fn with_member_size(size: Value) -> (Sample, String) {
    let s = Sample::new();
    let mut entries = top_tar_split(&s);
    let i = find_file(&entries, MEMBER.as_bytes());
    entries[i]["size"] = size;
    write_tar_split(&s.tar_split_path(s.top()), &entries);
    let layer = top_layer(&s);
    (s, layer)
}

#[test]
fn negative_size_is_refused() {
    let (s, layer) = with_member_size(json!(-15));
    s.expect_failure(&[&layer, MEMBER, "impossible size -15"]);
}

#[test]
fn absurd_size_is_refused_before_any_io() {
    // 2^60 bytes: a reader trusting it would try to allocate or reserve an exabyte.
    let (s, layer) = with_member_size(json!(1u64 << 60));
    s.expect_failure(&[&layer, MEMBER, "impossible size"]);
}

#[test]
fn duplicate_path_is_refused() {
    let s = Sample::new();
    let mut entries = top_tar_split(&s);
    let i = find_file(&entries, MEMBER.as_bytes());
    // The same path, spelled differently (Go's filepath.Clean makes them equal).
    let mut dup = entries[i].clone();
    dup["name"] = json!(format!("./{MEMBER}"));
    entries.insert(i + 1, dup);
    write_tar_split(&s.tar_split_path(s.top()), &entries);
    let expect = [top_layer(&s), "duplicate path".into(), MEMBER.into()];
    let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
    s.expect_failure(&expect);
    // A compressed export makes no sizing pass: its single pass must catch it just the same.
    for engine in engines() {
        let args = ["--io", engine, "-c", "zstd", "--no-cache"];
        let outcome = s.unchanged_by(|| s.export_to_file(&args));
        assert_clean_failure(&s, &outcome, &expect, engine);
    }
}

#[test]
fn file_without_crc_is_refused() {
    let s = Sample::new();
    let mut entries = top_tar_split(&s);
    let i = find_file(&entries, MEMBER.as_bytes());
    entries[i]["payload"] = Value::Null;
    write_tar_split(&s.tar_split_path(s.top()), &entries);
    s.expect_failure(&[&top_layer(&s), MEMBER, "lacks its 8-byte CRC-64"]);
}

#[test]
fn tar_split_without_its_end_segment_is_refused() {
    let s = Sample::new();
    let mut entries = top_tar_split(&s);
    // Cut everything after the last file entry: the padding/end-of-archive segment and the
    // trailing empty one.
    let last_file = entries.iter().rposition(is_file_entry).unwrap();
    entries.truncate(last_file + 1);
    write_tar_split(&s.tar_split_path(s.top()), &entries);
    s.expect_failure(&[&top_layer(&s), "without its end-of-archive segment"]);
}

/// Whether a 512-byte tar header's checksum field matches its bytes (the field counted as spaces).
fn tar_checksum_ok(header: &[u8]) -> bool {
    let field = std::str::from_utf8(&header[148..156]).unwrap();
    let recorded = u32::from_str_radix(field.trim_matches(|c| c == '\0' || c == ' '), 8).unwrap();
    let sum: u32 = header[..148]
        .iter()
        .chain(&[b' '; 8])
        .chain(&header[156..])
        .map(|&b| u32::from(b))
        .sum();
    sum == recorded
}

#[test]
fn changed_header_byte_in_a_segment_fails_the_layer_digest() {
    // One digit of MEMBER's mtime, in the tar header the tar-split stores verbatim in the segment
    // before it, with the header checksum fixed: the tar is still valid, the member's size and
    // CRC-64 are untouched, and no record is re-keyed. Only the rebuilt layer's SHA-256, compared
    // with the diff_id at the end of the layer, can tell.
    let s = Sample::new();
    let mut entries = top_tar_split(&s);
    let seg = find_file(&entries, MEMBER.as_bytes()) - 1;
    let mut payload = BASE64
        .decode(entries[seg]["payload"].as_str().unwrap())
        .unwrap();
    let at = payload.len() - 512;
    let header = &mut payload[at..];
    assert_eq!(&header[..MEMBER.len()], MEMBER.as_bytes());
    assert_eq!(&header[257..263], b"ustar\0", "a ustar header");
    assert!(tar_checksum_ok(header), "the pristine header's checksum");
    // mtime: 11 octal digits and a NUL; change the last digit (one second).
    let digit = &mut header[146];
    assert!((b'0'..=b'7').contains(digit));
    *digit = if *digit == b'7' { b'6' } else { *digit + 1 };
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    assert!(tar_checksum_ok(header), "the forged header's checksum");
    entries[seg]["payload"] = json!(BASE64.encode(&payload));
    write_tar_split(&s.tar_split_path(s.top()), &entries);
    s.expect_failure(&[&top_layer(&s), "not to its diff_id"]);
}

// ---- layerdb and overlay2 -----------------------------------------------------------------

#[test]
fn missing_cache_id_is_refused() {
    let s = Sample::new();
    fs::remove_file(s.layer_dir(s.top()).join("cache-id")).unwrap();
    s.expect_failure(&[&top_layer(&s), "cache-id is missing"]);
}

#[test]
fn cache_id_with_dot_dot_is_refused() {
    let s = Sample::new();
    let top = s.top();
    // Points at another layer's directory through `..`: it exists, so only validation stops it.
    let other = s.cache_id(0);
    fs::write(
        s.layer_dir(top).join("cache-id"),
        format!("../overlay2/{other}"),
    )
    .unwrap();
    s.expect_failure(&[&top_layer(&s), "is not a valid layer directory name"]);
}

#[test]
fn missing_diff_file_is_refused() {
    let s = Sample::new();
    fs::remove_file(s.layer_dir(s.top()).join("diff")).unwrap();
    s.expect_failure(&[&top_layer(&s), "diff is missing"]);
}

#[test]
fn diff_file_with_another_digest_is_refused() {
    let s = Sample::new();
    let other = s.diff_ids()[0].to_string();
    fs::write(s.layer_dir(s.top()).join("diff"), &other).unwrap();
    s.expect_failure(&[&top_layer(&s), &format!("its diff file says {other}")]);
}

#[test]
fn missing_layer_directory_is_refused() {
    let s = Sample::new();
    fs::remove_dir_all(s.layer_dir(s.top())).unwrap();
    s.expect_failure(&[
        &s.image_id().to_string(),
        &top_layer(&s),
        "the layer directory is missing",
    ]);
}

#[test]
fn missing_overlay2_diff_directory_is_refused() {
    let s = Sample::new();
    fs::remove_dir_all(s.diff_dir(s.top())).unwrap();
    s.expect_failure(&[&top_layer(&s), "files directory", "is missing"]);
}

#[test]
fn missing_tar_split_is_refused() {
    let s = Sample::new();
    fs::remove_file(s.tar_split_path(s.top())).unwrap();
    s.expect_failure(&[&top_layer(&s), "no tar-split record"]);
}

// ---- image config and repositories.json ---------------------------------------------------

#[test]
fn config_not_hashing_to_its_id_is_refused() {
    let s = Sample::new();
    let path = s.config_path();
    let mut config = fs::read(&path).unwrap();
    // One byte inside a string value: still valid JSON with the same diff_ids.
    let at = config.windows(7).position(|w| w == b"\"amd64\"").unwrap() + 1;
    config[at] = b'A';
    fs::write(&path, &config).unwrap();
    s.expect_failure(&[
        &s.image_id().to_string(),
        "not to the image ID",
        "store is damaged",
    ]);
}

#[test]
fn malformed_repositories_json_is_refused() {
    let s = Sample::new();
    let path = s.repositories_path();
    let text = fs::read(&path).unwrap();
    fs::write(&path, &text[..text.len() - 3]).unwrap();
    s.expect_failure(&["repositories.json is malformed"]);
}

#[test]
fn repositories_json_naming_a_missing_image_is_refused() {
    let s = Sample::new();
    let old = s.image_id().to_string();
    let missing = oci_export::digest::Digest::of(b"no such config").to_string();
    let text = fs::read_to_string(s.repositories_path()).unwrap();
    fs::write(s.repositories_path(), text.replace(&old, &missing)).unwrap();
    s.expect_failure(&[&format!("image {missing}"), "cannot read its config"]);
}

#[test]
fn unknown_image_lists_the_closest_names() {
    let s = Sample::new();
    for (typo, want) in [
        ("sampel", "no such image: sampel:latest"),
        ("sample:lates", "no such image: sample:lates"),
        ("sample:1.1", "no such image: sample:1.1"),
    ] {
        let out = s.unchanged_by(|| s.run(&[typo.as_ref(), "-o".as_ref(), s.out().as_ref()]));
        assert_clean_failure(&s, &out, &[want, "closest names", "sample:latest"], typo);
    }
    // sample:1.1 is one edit away from sample:1.0, which must be offered too.
    let out = s.run(&["sample:1.1".as_ref()]);
    assert!(out.stderr.contains("sample:1.0"), "{}", out.stderr);
}
