use std::io::{self, Read, Write};
use std::process::{Command, Stdio};

use super::gzip::BLOCK_SIZE;
use super::*;

/// Deterministic, tar-like test data: runs of text that repeat at a distance (so the gzip
/// dictionary and zstd's window matter), mixed with noise that does not compress.
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words: [&[u8]; 8] = [
        b"usr/lib/x86_64-linux-gnu/",
        b"libc.so.6 ",
        b"\0\0\0\0\0\0\0\0",
        b"0000644\0",
        b"#include <stdio.h>\n",
        b"return 0;\n",
        b"ustar\x0000",
        b"    ",
    ];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let r = next();
        if r % 16 == 0 {
            for _ in 0..(r >> 8) % 64 {
                out.push(next() as u8);
            }
        } else {
            out.extend_from_slice(words[(r >> 4) as usize % words.len()]);
        }
    }
    out.truncate(len);
    out
}

fn settings(algorithm: Algorithm, level: i32, jobs: usize) -> Settings {
    Settings {
        algorithm,
        level,
        jobs,
    }
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn unzstd(data: &[u8]) -> Vec<u8> {
    ::zstd::stream::decode_all(data).unwrap()
}

/// The algorithms this build can compress with.
fn available() -> impl Iterator<Item = Algorithm> {
    Algorithm::ALL.into_iter().filter(|a| a.is_available())
}

fn decompress(algorithm: Algorithm, data: &[u8]) -> Vec<u8> {
    match algorithm {
        Algorithm::Gzip | Algorithm::GzipIsal | Algorithm::GzipSirocco => gunzip(data),
        Algorithm::Zstd => unzstd(data),
    }
}

/// Input lengths around gzip's block boundaries, including none at all.
fn boundary_lengths() -> Vec<usize> {
    vec![
        0,
        1,
        BLOCK_SIZE - 1,
        BLOCK_SIZE,
        BLOCK_SIZE + 1,
        2 * BLOCK_SIZE,
        3 * BLOCK_SIZE + 17,
        8 * BLOCK_SIZE,
    ]
}

#[test]
fn algorithm_names_parse_and_display() {
    for alg in Algorithm::ALL {
        assert_eq!(alg.to_string().parse::<Algorithm>().unwrap(), alg);
    }
    assert_eq!("gzip".parse::<Algorithm>().unwrap(), Algorithm::Gzip);
    assert_eq!("zstd".parse::<Algorithm>().unwrap(), Algorithm::Zstd);
    assert_eq!(
        "gzip-isal".parse::<Algorithm>().unwrap(),
        Algorithm::GzipIsal
    );
    assert_eq!(
        "gzip-sirocco".parse::<Algorithm>().unwrap(),
        Algorithm::GzipSirocco
    );
    assert!("GZIP".parse::<Algorithm>().is_err());
    assert!("xz".parse::<Algorithm>().is_err());
}

#[test]
fn media_types() {
    assert_eq!(
        Algorithm::Gzip.media_type(),
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(Algorithm::GzipIsal.media_type(), MEDIA_TYPE_LAYER_GZIP);
    assert_eq!(Algorithm::GzipSirocco.media_type(), MEDIA_TYPE_LAYER_GZIP);
    assert_eq!(
        Algorithm::Zstd.media_type(),
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(
        layer_media_type(None),
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(
        layer_media_type(Some(Algorithm::Zstd)),
        MEDIA_TYPE_LAYER_ZSTD
    );
}

#[test]
fn settings_validate_levels_and_jobs() {
    for alg in available() {
        let s = Settings::new(alg);
        assert!(s.jobs >= 1);
        assert_eq!(s.level, Settings::default_level(alg));
        s.validate().unwrap();
        let levels = alg.levels();
        assert!(settings(alg, levels.start() - 1, 1).validate().is_err());
        assert!(settings(alg, levels.end() + 1, 1).validate().is_err());
        assert!(settings(alg, 3, 0).validate().is_err());
    }
    assert!(settings(Algorithm::Gzip, 10, 1).validate().is_err());
    settings(Algorithm::Gzip, 9, 1).validate().unwrap();
    settings(Algorithm::Zstd, 19, 1).validate().unwrap();
    assert!(settings(Algorithm::Zstd, 23, 1).validate().is_err());
    let mut sink = io::sink();
    assert!(Compressor::new(&settings(Algorithm::Gzip, 0, 1), &mut sink).is_err());
}

#[test]
fn round_trips_at_block_boundaries() {
    for alg in available() {
        for len in boundary_lengths() {
            let data = sample(len, len as u64 + 1);
            let (out, blob) = compress_to_vec(&settings(alg, 3, 2), &data).unwrap();
            assert!(
                decompress(alg, &out) == data,
                "{alg} round trip of {len} bytes"
            );
            assert_eq!(blob.size, out.len() as u64);
            assert_eq!(blob.digest, Digest::of(&out));
        }
    }
}

#[test]
fn output_is_identical_for_any_job_count() {
    for alg in available() {
        for len in boundary_lengths() {
            let data = sample(len, 7);
            let reference = compress_to_vec(&settings(alg, 1, 1), &data).unwrap();
            for jobs in [2, 7] {
                let other = compress_to_vec(&settings(alg, 1, jobs), &data).unwrap();
                assert!(other == reference, "{alg}, {len} bytes, {jobs} jobs");
            }
        }
    }
}

#[test]
fn output_is_identical_for_any_job_count_on_machine_code() {
    // Executable code is where gzip blocks once depended on which worker compressed them.
    let mut data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    data.truncate(64 * BLOCK_SIZE + 3);
    let cases = [
        (Algorithm::GzipSirocco, 1),
        (Algorithm::GzipSirocco, 6),
        (Algorithm::Gzip, 1),
        (Algorithm::Gzip, 6),
        (Algorithm::GzipIsal, 1),
        (Algorithm::GzipIsal, 3),
    ];
    for (alg, level) in cases.into_iter().filter(|c| c.0.is_available()) {
        let reference = compress_to_vec(&settings(alg, level, 1), &data).unwrap();
        for jobs in [2, 7, 2, 7] {
            let other = compress_to_vec(&settings(alg, level, jobs), &data).unwrap();
            assert!(other == reference, "{alg} level {level}, {jobs} jobs");
        }
        assert!(gunzip(&reference.0) == data);
    }
}

/// Compresses `data` in 1 MiB writes, pausing after each so that the workers finish their jobs
/// first: the timing under which libzstd once ended frames differently.
fn compress_slowly(s: &Settings, data: &[u8]) -> (Vec<u8>, CompressedBlob) {
    let mut out = Vec::new();
    let mut c = Compressor::new(s, &mut out).unwrap();
    for piece in data.chunks(1 << 20) {
        c.write_all(piece).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    let blob = c.finish().unwrap();
    (out, blob)
}

#[test]
fn zstd_output_does_not_depend_on_timing_when_input_ends_on_a_job_boundary() {
    // 24 MiB is a whole number of libzstd's input sections at levels 1 (2 MiB) and 3 (8 MiB).
    let data = sample(24 << 20, 11);
    for level in [1, 3] {
        let reference = compress_to_vec(&settings(Algorithm::Zstd, level, 1), &data).unwrap();
        for jobs in [1, 2, 3, 7] {
            let slow = compress_slowly(&settings(Algorithm::Zstd, level, jobs), &data);
            assert!(slow == reference, "level {level}, {jobs} jobs");
        }
    }
}

#[test]
fn zstd_output_is_identical_for_any_job_count_across_many_jobs() {
    // Large enough for libzstd to cut several multithreading jobs at level 1.
    let data = sample(24 << 20, 11);
    let reference = compress_to_vec(&settings(Algorithm::Zstd, 1, 1), &data).unwrap();
    for jobs in [2, 7] {
        let other = compress_to_vec(&settings(Algorithm::Zstd, 1, jobs), &data).unwrap();
        assert!(other == reference, "{jobs} jobs");
    }
    assert!(unzstd(&reference.0) == data);
}

/// Writes `data` in irregular pieces, flushing now and then, as a caller might.
fn compress_in_pieces(s: &Settings, data: &[u8]) -> (Vec<u8>, CompressedBlob) {
    let mut out = Vec::new();
    let mut c = Compressor::new(s, &mut out).unwrap();
    let sizes = [1usize, 7, 4096, 65_537, 1 << 20, 3];
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        c.write_all(&rest[..n]).unwrap();
        if i % 3 == 0 {
            c.flush().unwrap();
        }
        rest = &rest[n..];
        i += 1;
    }
    let blob = c.finish().unwrap();
    (out, blob)
}

#[test]
fn output_does_not_depend_on_write_sizes_or_flushes() {
    let data = sample(5 * BLOCK_SIZE + 12_345, 3);
    for alg in available() {
        for jobs in [1, 3] {
            let s = settings(alg, 3, jobs);
            assert!(compress_in_pieces(&s, &data) == compress_to_vec(&s, &data).unwrap());
        }
    }
}

#[test]
fn levels_change_the_output_but_all_round_trip() {
    let data = sample(2 * BLOCK_SIZE + 5, 5);
    for alg in available() {
        let mut digests = Vec::new();
        let levels = match alg {
            Algorithm::GzipIsal => [0, 1, 3],
            Algorithm::Gzip | Algorithm::GzipSirocco | Algorithm::Zstd => [1, 6, 9],
        };
        for level in levels {
            let (out, blob) = compress_to_vec(&settings(alg, level, 2), &data).unwrap();
            assert!(decompress(alg, &out) == data, "{alg} -{level}");
            digests.push(blob.digest);
        }
        digests.dedup();
        assert_eq!(digests.len(), 3, "{alg}: every level gives its own blob");
    }
}

#[test]
fn gzip_header_and_trailer() {
    let data = sample(3 * BLOCK_SIZE + 100, 9);
    // The XFL byte says "fastest" for level 1 and nothing for level 6, as gzip writes it.
    for (alg, level, xfl) in [
        (Algorithm::Gzip, 6, 0),
        (Algorithm::GzipSirocco, 1, 4),
        (Algorithm::GzipSirocco, 6, 0),
    ] {
        let (out, _) = compress_to_vec(&settings(alg, level, 2), &data).unwrap();
        assert_eq!(&out[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]);
        let n = out.len();
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, &data) as u32;
        assert_eq!(&out[n - 8..n - 4], &crc.to_le_bytes());
        assert_eq!(&out[n - 4..], &(data.len() as u32).to_le_bytes());

        // One member, not many: a plain single-member reader sees all of it.
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..])
            .read_to_end(&mut all)
            .unwrap();
        assert!(all == data, "{alg}");
        assert!(gunzip(&out) == data, "{alg}");
    }
}

#[test]
fn gzip_of_empty_input_is_a_valid_empty_stream() {
    let (out, blob) = compress_to_vec(&settings(Algorithm::Gzip, 6, 3), &[]).unwrap();
    // Header, an empty final fixed-Huffman block, CRC 0, ISIZE 0.
    assert_eq!(
        out,
        [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(blob.size, 20);
    assert!(gunzip(&out).is_empty());
    // sirocco writes the same empty block; only XFL differs (level 1 is "fastest").
    let (out, _) = compress_to_vec(&settings(Algorithm::GzipSirocco, 1, 3), &[]).unwrap();
    assert_eq!(
        out,
        [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
}

#[test]
fn gzip_ratio_is_close_to_a_serial_stream() {
    // The dictionary carries matches across blocks, so parallel gzip should cost little ratio.
    let data = sample(16 * BLOCK_SIZE, 21);
    let (parallel, _) = compress_to_vec(&settings(Algorithm::Gzip, 6, 4), &data).unwrap();
    let mut serial = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    serial.write_all(&data).unwrap();
    let serial = serial.finish().unwrap();
    assert!(
        parallel.len() as f64 <= serial.len() as f64 * 1.01,
        "parallel {} vs serial {}",
        parallel.len(),
        serial.len()
    );
}

#[test]
fn sirocco_blocks_cost_little_ratio_without_a_dictionary() {
    // Blocks compressed on their own lose the matches across block boundaries; on tar-like
    // data that must stay small next to sirocco's own serial stream.
    let data = sample(16 * BLOCK_SIZE, 21);
    for level in [1, 6] {
        let (parallel, _) =
            compress_to_vec(&settings(Algorithm::GzipSirocco, level, 4), &data).unwrap();
        let level_u8 = u8::try_from(level).unwrap();
        let serial = sirocco::compress(
            sirocco::Format::Gzip,
            sirocco::deflate::Level::new(level_u8),
            &data,
        );
        assert!(
            parallel.len() as f64 <= serial.len() as f64 * 1.01,
            "level {level}: parallel {} vs serial {}",
            parallel.len(),
            serial.len()
        );
    }
}

#[test]
fn zstd_frame_has_a_checksum_and_no_content_size() {
    let data = sample(100_000, 13);
    let (out, _) = compress_to_vec(&settings(Algorithm::Zstd, 3, 2), &data).unwrap();
    assert_eq!(&out[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    let descriptor = out[4];
    assert_eq!(descriptor >> 6, 0, "frame content size field absent");
    assert_eq!(descriptor & 0x04, 0x04, "content checksum flag set");
}

#[test]
fn matches_the_single_pass_hash_of_the_written_bytes() {
    let data = sample(BLOCK_SIZE * 2 + 1, 17);
    for alg in available() {
        let mut out = Vec::new();
        let mut c = Compressor::new(&settings(alg, 3, 2), &mut out).unwrap();
        c.write_all(&data).unwrap();
        let blob = c.finish().unwrap();
        assert_eq!(blob.digest, Digest::of(&out));
        assert_eq!(blob.size, out.len() as u64);
    }
}

/// An output that accepts `budget` bytes, then fails; and accepts them in small pieces, to
/// exercise short writes.
struct Failing {
    budget: usize,
}

impl Write for Failing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.budget).min(1000);
        self.budget -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn output_errors_surface_without_hanging() {
    let data = sample(40 * BLOCK_SIZE, 19);
    for alg in available() {
        let mut out = Failing { budget: 50_000 };
        let mut c = Compressor::new(&settings(alg, 1, 3), &mut out).unwrap();
        let result = c.write_all(&data).map_err(anyhow::Error::from);
        let result = result.and_then(|()| c.finish().map(|_| ()));
        assert!(result.is_err(), "{alg}");
    }
}

#[test]
fn dropping_an_unfinished_compressor_stops_cleanly() {
    let data = sample(20 * BLOCK_SIZE, 23);
    for alg in available() {
        let mut out = Vec::new();
        let mut c = Compressor::new(&settings(alg, 2, 4), &mut out).unwrap();
        c.write_all(&data).unwrap();
        drop(c);
    }
}

#[test]
fn short_writes_to_the_output_are_hashed_exactly() {
    // An output that takes at most 1000 bytes per call.
    struct Trickle(Vec<u8>);
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(1000);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let data = sample(3 * BLOCK_SIZE, 29);
    for alg in available() {
        let mut out = Trickle(Vec::new());
        let mut c = Compressor::new(&settings(alg, 3, 2), &mut out).unwrap();
        c.write_all(&data).unwrap();
        let blob = c.finish().unwrap();
        assert_eq!(blob.digest, Digest::of(&out.0));
        assert!(compress_to_vec(&settings(alg, 3, 1), &data).unwrap().0 == out.0);
    }
}

/// Runs `program args` with `input` on stdin; `None` when the program is not installed.
fn run_tool(program: &str, args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(output.status.success(), "{program} {args:?} failed");
    Some(output.stdout)
}

#[test]
fn standard_tools_decompress_the_output() {
    let data = sample(4 * BLOCK_SIZE + 999, 31);
    let tools: [(Algorithm, &str, &[&str]); 10] = [
        (Algorithm::GzipSirocco, "gzip", &["-dc"]),
        (Algorithm::GzipSirocco, "pigz", &["-dc"]),
        (Algorithm::GzipSirocco, "python3", &["-c", PY_GUNZIP]),
        (Algorithm::Gzip, "gzip", &["-dc"]),
        (Algorithm::Gzip, "pigz", &["-dc"]),
        (Algorithm::Zstd, "zstd", &["-dc"]),
        (Algorithm::Gzip, "python3", &["-c", PY_GUNZIP]),
        (Algorithm::GzipIsal, "gzip", &["-dc"]),
        (Algorithm::GzipIsal, "pigz", &["-dc"]),
        (Algorithm::GzipIsal, "python3", &["-c", PY_GUNZIP]),
    ];
    for (alg, program, args) in tools.into_iter().filter(|t| t.0.is_available()) {
        let (out, _) =
            compress_to_vec(&settings(alg, Settings::default_level(alg), 3), &data).unwrap();
        match run_tool(program, args, &out) {
            Some(back) => assert!(back == data, "{program} decompressed other bytes"),
            None => eprintln!("note: {program} not installed; skipped"),
        }
    }
}

const PY_GUNZIP: &str =
    "import gzip, sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))";

#[test]
fn each_gzip_encoder_writes_its_own_blobs_of_the_same_layer() {
    if !Algorithm::GzipIsal.is_available() {
        let err = settings(Algorithm::GzipIsal, 1, 1).validate().unwrap_err();
        assert!(err.to_string().contains("--features isal"), "{err}");
    }
    let data = sample(3 * BLOCK_SIZE + 7, 37);
    let gzips = [Algorithm::GzipSirocco, Algorithm::Gzip, Algorithm::GzipIsal];
    let mut digests = Vec::new();
    for alg in gzips.into_iter().filter(|a| a.is_available()) {
        let (out, blob) = compress_to_vec(&settings(alg, 1, 2), &data).unwrap();
        assert!(gunzip(&out) == data, "{alg}");
        digests.push(blob.digest);
    }
    let count = digests.len();
    digests.sort();
    digests.dedup();
    assert_eq!(digests.len(), count, "every encoder has its own bytes");
}

/// The SHA-256 of sirocco's blobs of a fixed input, at levels 1 and 6: the encoder's bytes are
/// its identity in registries and the blob cache, so a sirocco upgrade that changes them must
/// not go unnoticed (it needs a new `Algorithm` name, or every cached `gzip-sirocco` blob
/// would differ from a fresh export's).
#[test]
fn sirocco_writes_the_bytes_it_always_wrote() {
    let data = sample(5 * BLOCK_SIZE + 4321, 41);
    let expected = [
        (
            1,
            "132f7bced6b2199cac995f4c5ab1d62980181bb7386e384a2e496b2b648db5a0",
        ),
        (
            6,
            "72032fa798cc38ec484e0f1e0740c423c75955631c50e91e8493216f76e03d0c",
        ),
    ];
    for (level, want) in expected {
        let (out, blob) =
            compress_to_vec(&settings(Algorithm::GzipSirocco, level, 2), &data).unwrap();
        assert!(gunzip(&out) == data);
        assert_eq!(blob.digest.hex(), want, "level {level}");
    }
}

/// A small random-input round trip in the spirit of a fuzzer: inputs of random length made of
/// random mixtures (noise, runs, repeats at random distances, text), compressed by every gzip
/// encoder at random levels and job counts in random write sizes, must decompress to the input
/// and equal the one-job, one-write output. Seeded, so a failure repeats.
#[test]
fn randomized_gzip_round_trips() {
    let mut rng = XorShift(0x5eed_0f9a_u64);
    let gzips = [Algorithm::GzipSirocco, Algorithm::Gzip, Algorithm::GzipIsal];
    for case in 0..60 {
        let data = random_input(&mut rng, case);
        for alg in gzips.into_iter().filter(|a| a.is_available()) {
            let levels = alg.levels();
            let span = (levels.end() - levels.start() + 1) as u64;
            let level = levels.start() + (rng.next() % span) as i32;
            let jobs = 1 + (rng.next() % 4) as usize;
            let reference = compress_to_vec(&settings(alg, level, 1), &data).unwrap();
            let mut out = Vec::new();
            let mut c = Compressor::new(&settings(alg, level, jobs), &mut out).unwrap();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = (1 + (rng.next() % 300_000) as usize).min(rest.len());
                c.write_all(&rest[..n]).unwrap();
                rest = &rest[n..];
            }
            c.finish().unwrap();
            let what = format!(
                "case {case}: {alg} -{level}, {jobs} jobs, {} bytes",
                data.len()
            );
            assert!(out == reference.0, "{what}: not the one-job bytes");
            assert!(gunzip(&out) == data, "{what}: round trip");
        }
    }
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Up to ~1 MiB (a few 128 KiB blocks) of a random mixture; every tenth case is short, and some
/// end exactly on a block boundary.
fn random_input(rng: &mut XorShift, case: usize) -> Vec<u8> {
    let len = match case % 10 {
        0 => (rng.next() % 300) as usize,
        1 => BLOCK_SIZE * (1 + (rng.next() % 4) as usize),
        _ => (rng.next() % (8 * BLOCK_SIZE as u64)) as usize,
    };
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        let piece = 1 + (rng.next() % 20_000) as usize;
        match rng.next() % 4 {
            0 => data.extend((0..piece).map(|_| rng.next() as u8)),
            1 => {
                let byte = rng.next() as u8;
                data.extend(std::iter::repeat_n(byte, piece));
            }
            2 if !data.is_empty() => {
                // A repeat from up to 64 KiB back: within a block, or across blocks.
                let back = 1 + (rng.next() % 65_536) as usize % data.len();
                let from = data.len() - back;
                for i in 0..piece {
                    data.push(data[from + i % back]);
                }
            }
            _ => {
                let word = format!("{:x} ", rng.next() % 1000);
                data.extend_from_slice(word.repeat(1 + piece / word.len()).as_bytes());
            }
        }
    }
    data.truncate(len);
    data
}
