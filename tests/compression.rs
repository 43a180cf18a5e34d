//! Compressed layers (`-c gzip|zstd`), the OCI directory output and the blob cache: on the
//! committed sample root (anywhere) and against real consumers (engine, skopeo, umoci).

mod forge;
mod harness;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use harness::engine::{docker, engine, image_id};
use harness::*;
use oci_export::digest::Digest;

fn decompress(media_type: &str, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip" => {
            flate2::read::MultiGzDecoder::new(blob)
                .read_to_end(&mut out)
                .unwrap();
        }
        "application/vnd.oci.image.layer.v1.tar+zstd" => {
            zstd::stream::read::Decoder::new(blob)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
        }
        other => panic!("unexpected media type {other}"),
    }
    out
}

/// Checks a compressed docker archive: blobs named by their digest, LayerSources with the right
/// media type, every layer decompressing to the config's diff_id. Returns the media types seen.
fn verify_compressed(members: &BTreeMap<String, Vec<u8>>, want_media_type: &str) -> Vec<Digest> {
    let manifest: serde_json::Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    let mut image_ids = Vec::new();
    for item in manifest.as_array().unwrap() {
        let config = &members[item["Config"].as_str().unwrap()];
        image_ids.push(Digest::of(config));
        let config: serde_json::Value = serde_json::from_slice(config).unwrap();
        let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
        let layers = item["Layers"].as_array().unwrap();
        assert_eq!(layers.len(), diff_ids.len());
        for (path, diff_id) in layers.iter().zip(diff_ids) {
            let blob = &members[path.as_str().unwrap()];
            let digest = Digest::of(blob);
            assert_eq!(
                path.as_str().unwrap(),
                format!("blobs/sha256/{}", digest.hex())
            );
            let source = &item["LayerSources"][diff_id.as_str().unwrap()];
            assert_eq!(source["mediaType"], want_media_type);
            assert_eq!(source["digest"], digest.to_string());
            assert_eq!(source["size"].as_u64().unwrap(), blob.len() as u64);
            let tar = decompress(want_media_type, blob);
            assert_eq!(
                Digest::of(&tar).to_string(),
                diff_id.as_str().unwrap(),
                "layer decompresses to its diff_id"
            );
        }
    }
    verify_oci_index(members);
    image_ids
}

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The compression options to test, with the media type each must produce: every encoder this
/// build has.
fn codecs() -> Vec<(Vec<&'static str>, &'static str)> {
    let mut all = vec![
        (vec!["-c", "gzip"], GZIP),
        (vec!["-c", "gzip", "--gzip-encoder", "zlib"], GZIP),
        (vec!["-c", "zstd"], ZSTD),
    ];
    if cfg!(feature = "isal") {
        all.push((vec!["-c", "gzip", "--gzip-encoder", "isal"], GZIP));
    }
    all
}

fn sample_args<'a>(root: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--data-root", root, "-q"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn compressed_sample_layers_decompress_to_their_diff_ids() {
    let root = sample_root();
    let root = root.to_str().unwrap();
    for (codec, media) in codecs() {
        let mut extra = codec.clone();
        extra.extend(["--no-cache", "sample"]);
        let members = read_archive(&run_ok(&sample_args(root, &extra)).stdout);
        let ids = verify_compressed(&members, media);
        let expected_id = std::fs::read_to_string(sample_root().join("EXPECTED")).unwrap();
        assert_eq!(
            ids[0].to_string(),
            expected_id.lines().next().unwrap(),
            "the config is unchanged"
        );
    }
}

/// Uncompressed bytes per gzip block (the gzip encoders' block size).
const GZIP_BLOCK: usize = 128 << 10;
/// Uncompressed bytes per libzstd job at level 1 (4 × its 512 KiB window).
const ZSTD_JOB_AT_LEVEL_1: usize = 2 << 20;

/// How many times deflate's sync-flush marker (the empty stored block `00 00 ff ff`) occurs:
/// every gzip block but the last ends with one.
fn sync_flushes(blob: &[u8]) -> usize {
    blob.windows(4).filter(|w| *w == [0, 0, 0xff, 0xff]).count()
}

#[test]
fn compressed_layers_spanning_many_blocks_do_not_depend_on_the_jobs() {
    // A 12 MiB incompressible member: 96 gzip blocks, 6 zstd jobs (at level 1). The sample's
    // own files are a few bytes, one block per layer, which no scheduling could get wrong.
    const MEMBER: usize = 12 << 20;
    let s = forge::sample_with_member(&forge::incompressible(MEMBER));
    let root = s.root.to_str().unwrap();
    let mut cases = codecs();
    for (codec, _) in &mut cases {
        if codec[1] == "zstd" {
            // Level 3's jobs are 8 MiB: level 1's 2 MiB ones give more of them.
            codec.extend(["--level", "1"]);
        }
    }
    for (codec, media) in cases {
        let export = |jobs: &str| {
            let mut extra = codec.clone();
            extra.extend(["--no-cache", "-j", jobs, forge::IMAGE]);
            run_ok(&sample_args(root, &extra)).stdout
        };
        let one = export("1");
        let two = export("2");
        assert!(one == two, "{codec:?}: --jobs 1 and --jobs 2 differ");
        let members = read_archive(&one);
        verify_compressed(&members, media);

        // The big layer really went through many blocks or jobs.
        let big = members
            .iter()
            .filter(|(name, _)| name.starts_with("blobs/sha256/"))
            .map(|(_, blob)| blob)
            .max_by_key(|blob| blob.len())
            .unwrap();
        let tar = decompress(media, big);
        assert!(tar.len() > MEMBER, "{codec:?}: the big layer");
        assert!(
            big.len() >= MEMBER,
            "{codec:?}: {} bytes: the member did not stay incompressible",
            big.len()
        );
        if media == GZIP {
            let blocks = tar.len().div_ceil(GZIP_BLOCK);
            assert!(blocks >= 96);
            assert!(
                sync_flushes(big) >= blocks - 1,
                "{codec:?}: {} sync flushes for {blocks} blocks",
                sync_flushes(big)
            );
        } else {
            assert!(tar.len() / ZSTD_JOB_AT_LEVEL_1 >= 6, "{codec:?}");
        }
    }
}

#[test]
fn the_cache_is_reused_and_a_tampered_entry_is_rebuilt() {
    let root = sample_root();
    let root = root.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let first = run_ok(&sample_args(
        root,
        &["-c", "zstd", "--cache-dir", cache, "sample"],
    ))
    .stdout;
    let blobs: Vec<_> = std::fs::read_dir(Path::new(cache).join("v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "blob"))
        .collect();
    assert_eq!(blobs.len(), 3, "one cached blob per layer");
    let second = run_ok(&sample_args(
        root,
        &["-c", "zstd", "--cache-dir", cache, "sample"],
    ));
    assert!(second.stdout == first, "a cache hit gives the same archive");
    assert!(
        second.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // Flip one byte of a cached blob (same size): the next export must notice, recompress,
    // and still write the right archive.
    let victim = &blobs[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(victim, &bytes).unwrap();
    let third = run_ok(&sample_args(
        root,
        &["-c", "zstd", "--cache-dir", cache, "sample"],
    ));
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(err.contains("compressing it again"), "{err}");
    assert!(
        third.stdout == first,
        "a tampered entry never reaches the output"
    );
    let repaired = std::fs::read(victim).unwrap();
    assert_ne!(repaired, bytes, "the entry was rebuilt");

    let ls = run_ok(&["cache", "ls", "--cache-dir", cache]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("3 blobs"));
    run_ok(&["cache", "prune", "--max-size", "0", "--cache-dir", cache]);
    let ls = run_ok(&["cache", "ls", "--cache-dir", cache]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("0 blobs"));
}

/// The cache's entries (their metadata files), sorted by diff_id and level.
fn cache_entries(cache: &Path) -> Vec<serde_json::Value> {
    let mut entries: Vec<serde_json::Value> = std::fs::read_dir(cache.join("v1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    entries.sort_by_key(|e| {
        (
            e["diff_id"].as_str().unwrap().to_string(),
            e["level"].as_i64(),
        )
    });
    entries
}

/// Names of the cache's blob files, sorted.
fn cache_blob_files(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.join("v1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".blob"))
        .collect();
    names.sort();
    names
}

fn at_level(entries: &[serde_json::Value], level: i64) -> Vec<serde_json::Value> {
    entries
        .iter()
        .filter(|e| e["level"] == level)
        .cloned()
        .collect()
}

fn total_size(entries: &[serde_json::Value]) -> u64 {
    entries.iter().map(|e| e["size"].as_u64().unwrap()).sum()
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn cache_prune_to_a_size_evicts_least_recently_used_and_exports_recompress() {
    // The bound applied after each export is fixed (10 GiB), far above the sample: the bound
    // that can be chosen is `cache prune --max-size`.
    let root = sample_root();
    let root = root.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache_path = dir.path().join("cache");
    let cache = cache_path.to_str().unwrap();
    let export = |level: &str| {
        let out = run_ok(&sample_args(
            root,
            &[
                "-c",
                "zstd",
                "--level",
                level,
                "--cache-dir",
                cache,
                "sample",
            ],
        ));
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let pause = || std::thread::sleep(std::time::Duration::from_millis(20));

    // Level 1's entries are made first, level 2's next, then level 1's are used again (cache
    // hits): level 2's are the least recently used.
    let level_1 = export("1");
    pause();
    let level_2 = export("2");
    pause();
    assert!(export("1") == level_1, "a cache hit gives the same archive");
    let entries = cache_entries(&cache_path);
    assert_eq!(entries.len(), 6, "three layers at two levels");
    let (kept, evicted) = (at_level(&entries, 1), at_level(&entries, 2));
    assert_eq!((kept.len(), evicted.len()), (3, 3));
    let newest_evicted = evicted
        .iter()
        .map(|e| e["last_used_unix_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    for e in &kept {
        assert!(
            e["last_used_unix_ms"].as_u64().unwrap() > newest_evicted,
            "a hit refreshes its entry's last use: {e}"
        );
    }

    // Pruned to exactly what level 1's entries take: level 2's go, level 1's stay.
    let bound = total_size(&kept);
    let max_size = bound.to_string();
    pause();
    let pruned_at = now_unix_ms();
    let out = run_ok(&[
        "cache",
        "prune",
        "--max-size",
        &max_size,
        "--cache-dir",
        cache,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "removed 3 blobs ({} bytes); kept 3 blobs ({bound} bytes)\n",
            total_size(&evicted)
        )
    );
    let left = cache_entries(&cache_path);
    assert_eq!(
        left, kept,
        "only the most recently used entries are left, untouched"
    );
    let on_disk: u64 = cache_blob_files(&cache_path)
        .iter()
        .map(|n| {
            std::fs::metadata(cache_path.join("v1").join(n))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        cache_blob_files(&cache_path).len(),
        3,
        "evicted blobs are deleted"
    );
    assert!(on_disk <= bound, "{on_disk} bytes left, bound {bound}");
    // Within the bound, nothing more goes.
    let out = run_ok(&[
        "cache",
        "prune",
        "--max-size",
        &max_size,
        "--cache-dir",
        cache,
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("removed 0 blobs (0 bytes)"));

    // The evicted level compresses again, to the same archive, and is cached anew.
    assert!(
        export("2") == level_2,
        "recompressed after pruning, same bytes"
    );
    let entries = cache_entries(&cache_path);
    assert_eq!(entries.len(), 6);
    for e in at_level(&entries, 2) {
        assert!(
            e["created_unix_ms"].as_u64().unwrap() >= pruned_at,
            "made anew, not left over: {e}"
        );
        let old = evicted
            .iter()
            .find(|o| o["diff_id"] == e["diff_id"])
            .unwrap();
        assert_eq!(e["digest"], old["digest"], "the same blob");
    }
    assert_eq!(
        at_level(&entries, 1),
        kept,
        "the kept entries were not touched"
    );
}

#[test]
fn the_gzip_encoder_needs_gzip_and_isal_needs_an_isal_build() {
    let root = sample_root();
    let root = root.to_str().unwrap();
    let out = run(&sample_args(
        root,
        &["-c", "zstd", "--gzip-encoder", "isal", "sample"],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--gzip-encoder needs --compression gzip"),
        "{err}"
    );
    let out = run(&sample_args(
        root,
        &[
            "-c",
            "gzip",
            "--gzip-encoder",
            "isal",
            "--level",
            "4",
            "sample",
        ],
    ));
    assert!(!out.status.success(), "ISA-L has no level 4");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    // A build without ISA-L refuses the encoder before it looks at the level.
    let want = if cfg!(feature = "isal") {
        "gzip-isal level 4 is out of range 0..=3"
    } else {
        "without the ISA-L gzip encoder"
    };
    assert!(err.contains(want), "{err}");
    let isal = run(&sample_args(
        root,
        &[
            "-c",
            "gzip",
            "--gzip-encoder",
            "isal",
            "--no-cache",
            "sample",
        ],
    ));
    if cfg!(feature = "isal") {
        assert!(isal.status.success());
        let sirocco = run_ok(&sample_args(root, &["-c", "gzip", "--no-cache", "sample"]));
        assert!(
            isal.stdout != sirocco.stdout,
            "each encoder writes its own blobs"
        );
    } else {
        assert!(!isal.status.success());
        assert!(isal.stdout.is_empty());
        let err = String::from_utf8_lossy(&isal.stderr);
        assert!(err.contains("without the ISA-L gzip encoder"), "{err}");
    }
}

#[test]
fn the_default_gzip_encoder_is_sirocco_at_level_1_and_zlib_writes_other_blobs() {
    let root = sample_root();
    let root = root.to_str().unwrap();
    let export = |extra: &[&str]| {
        let mut args = vec!["-c", "gzip", "--no-cache"];
        args.extend_from_slice(extra);
        args.push("sample");
        run_ok(&sample_args(root, &args)).stdout
    };
    let default = export(&[]);
    assert!(default == export(&["--gzip-encoder", "sirocco", "--level", "1"]));
    let zlib = export(&["--gzip-encoder", "zlib"]);
    assert!(default != zlib, "each encoder writes its own blobs");
    assert!(zlib == export(&["--gzip-encoder", "zlib", "--level", "6"]));
    verify_compressed(&read_archive(&default), GZIP);
    verify_compressed(&read_archive(&zlib), GZIP);

    // Each is its own algorithm in the cache: a sirocco entry is never served to zlib.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    for (encoder, want) in [("sirocco", &default), ("zlib", &zlib)] {
        let args = [
            "-c",
            "gzip",
            "--gzip-encoder",
            encoder,
            "--cache-dir",
            cache,
            "sample",
        ];
        let out = run_ok(&sample_args(root, &args)).stdout;
        assert!(&out == want, "{encoder}: the cache changes nothing");
    }
    let algorithms: std::collections::BTreeSet<String> = cache_entries(Path::new(cache))
        .iter()
        .map(|e| e["algorithm"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        algorithms.into_iter().collect::<Vec<_>>(),
        ["gzip", "gzip-sirocco"]
    );
}

#[test]
fn level_without_compression_or_out_of_range_is_refused() {
    let root = sample_root();
    let root = root.to_str().unwrap();
    for (args, want) in [
        (
            &["--level", "3", "sample"][..],
            "--level needs --compression gzip or zstd",
        ),
        (
            &["-c", "gzip", "--level", "42", "sample"][..],
            "gzip-sirocco level 42 is out of range 1..=9",
        ),
        (
            &["-c", "gzip", "--level", "0", "sample"][..],
            "gzip-sirocco level 0 is out of range 1..=9",
        ),
        (
            &[
                "-c",
                "gzip",
                "--gzip-encoder",
                "zlib",
                "--level",
                "0",
                "sample",
            ][..],
            "gzip level 0 is out of range 1..=9",
        ),
        (
            &["-c", "zstd", "--level", "23", "sample"][..],
            "zstd level 23 is out of range 1..=22",
        ),
    ] {
        let out = run(&sample_args(root, args));
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

fn command_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn gzip_archives_load_into_a_real_engine_with_the_same_ids() {
    let Some(engine) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("gzip.tar");
    let tags = [
        "oe-test/classic:latest",
        "oe-test/buildkit:latest",
        "oe-test/load-pax:latest",
        "oe-test/load-dup-layer:latest",
    ];
    for (codec, media) in codecs().into_iter().filter(|c| c.1 == GZIP) {
        let mut args = vec!["--data-root", engine.data_root.to_str().unwrap()];
        args.extend(codec.iter().copied());
        args.extend(["--no-cache", "-o", archive.to_str().unwrap()]);
        args.extend_from_slice(&tags);
        run_ok(&args);
        verify_compressed(&read_archive(&std::fs::read(&archive).unwrap()), media);
        for tag in tags {
            let _ = Command::new("/usr/bin/docker")
                .env("DOCKER_HOST", &engine.second_host)
                .args(["rmi", "-f", tag])
                .output();
        }
        docker(
            &engine.second_host,
            &["load", "-i", archive.to_str().unwrap()],
        );
        for tag in tags {
            assert_eq!(
                image_id(&engine.second_host, tag),
                engine.images[tag].id.to_string(),
                "{codec:?}: {tag}"
            );
        }
    }
}

#[test]
fn zstd_and_oci_dir_outputs_read_in_skopeo_and_umoci() {
    let Some(engine) = engine() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tag = "oe-test/classic:latest";
    let data_root = engine.data_root.to_str().unwrap();
    let want_diff_ids: Vec<String> = engine.images[tag]
        .diff_ids
        .iter()
        .map(Digest::to_string)
        .collect();

    // A zstd docker archive: skopeo reads it as an OCI archive and copies it to an OCI layout.
    let archive = dir.path().join("zstd.tar");
    run_ok(&[
        "--data-root",
        data_root,
        "-c",
        "zstd",
        "--no-cache",
        "-o",
        archive.to_str().unwrap(),
        tag,
    ]);
    verify_compressed(&read_archive(&std::fs::read(&archive).unwrap()), ZSTD);
    let copied = dir.path().join("copied");
    command_ok(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("oci-archive:{}:latest", archive.display()),
            &format!("oci:{}:latest", copied.display()),
        ],
    );
    let config = command_ok(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci:{}:latest", copied.display()),
        ],
    );
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!(want_diff_ids)
    );

    // OCI layout directories, gzip and zstd: skopeo inspects them, umoci unpacks them.
    for alg in ["gzip", "zstd"] {
        let layout = dir.path().join(format!("layout-{alg}"));
        run_ok(&[
            "--data-root",
            data_root,
            "--format",
            "oci-dir",
            "-c",
            alg,
            "--no-cache",
            "-o",
            layout.to_str().unwrap(),
            tag,
        ]);
        let config = command_ok(
            "skopeo",
            &[
                "inspect",
                "--config",
                &format!("oci:{}:latest", layout.display()),
            ],
        );
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!(want_diff_ids),
            "{alg}"
        );
        // Debian's umoci (0.4.7) predates zstd layers (umoci 0.5): skopeo, which reads them,
        // recompresses the zstd layout to gzip first; the tree umoci unpacks is then what our
        // zstd layers held.
        let unpackable = if alg == "zstd" {
            let converted = dir.path().join("converted");
            command_ok(
                "skopeo",
                &[
                    "copy",
                    "--quiet",
                    "--dest-compress-format",
                    "gzip",
                    &format!("oci:{}:latest", layout.display()),
                    &format!("oci:{}:latest", converted.display()),
                ],
            );
            converted
        } else {
            layout.clone()
        };
        let bundle = dir.path().join(format!("bundle-{alg}"));
        command_ok(
            "umoci",
            &[
                "unpack",
                "--image",
                &format!("{}:latest", unpackable.display()),
                bundle.to_str().unwrap(),
            ],
        );
        // The unpacked tree is the image's: files added, deleted (whiteouts) and replaced
        // (an opaque directory) by its layers.
        let rootfs = bundle.join("rootfs");
        assert!(
            rootfs.join("bin/busybox").is_file(),
            "{alg}: base layer unpacked"
        );
        assert_eq!(
            std::fs::read(rootfs.join("data/f.txt")).unwrap(),
            b"copied into the image\n"
        );
        assert_eq!(
            std::fs::read(rootfs.join("data/opaque/new")).unwrap(),
            b"x\n"
        );
        assert!(
            !rootfs.join("data/opaque/old.txt").exists(),
            "{alg}: opaque dir applied"
        );
        assert!(
            !rootfs.join("data/todelete.txt").exists(),
            "{alg}: whiteout applied"
        );
        assert!(
            !rootfs.join("bin/sync").exists(),
            "{alg}: whiteout of a base-layer file applied"
        );
    }
}
