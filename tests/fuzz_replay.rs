//! The fuzz targets' properties on stable Rust: every committed corpus file, then a bounded,
//! deterministic mutation loop (bit flips, truncations, insertions, splices) over the corpus.
//! `cargo fuzz` explores far more; this keeps the corpus and the properties honest in every
//! `cargo test`.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::fs;
use std::io::Read;
use std::path::Path;

/// Mutated inputs per target.
const MUTATIONS: usize = 20_000;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "{}: the seed corpus is missing",
        dir.display()
    );
    files
}

/// xorshift64*: deterministic, so a failure reproduces with the same iteration number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Applies one to four random mutations to `data`. `tokens` are fragments worth splicing in
/// (structure the target's grammar cares about).
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>], tokens: &[&[u8]]) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(8) {
            // Flip a bit.
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            // Replace a byte with an interesting value.
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] =
                    [0, 0xff, b'"', b'\n', b'\\', b'{', b'}', b'-', b'9', b'/'][rng.below(10)];
            }
            // Truncate.
            2 => {
                let at = rng.below(data.len() + 1);
                data.truncate(at);
            }
            // Insert random bytes.
            3 => {
                let at = rng.below(data.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            // Insert a token.
            4 | 5 => {
                let at = rng.below(data.len() + 1);
                let token = tokens[rng.below(tokens.len())];
                data.splice(at..at, token.iter().copied());
            }
            // Remove a range.
            6 if !data.is_empty() => {
                let a = rng.below(data.len());
                let b = (a + 1 + rng.below(64)).min(data.len());
                data.drain(a..b);
            }
            // Splice: our head, another input's tail.
            _ => {
                let other = &others[rng.below(others.len())];
                let a = rng.below(data.len() + 1);
                let b = rng.below(other.len() + 1);
                data.truncate(a);
                data.extend_from_slice(&other[b..]);
            }
        }
    }
}

/// Runs `check` on `input`; on a panic, saves the input for reproduction first.
fn run_one(target: &str, label: &str, input: &[u8], check: fn(&[u8])) {
    let result = std::panic::catch_unwind(|| check(input));
    if let Err(panic) = result {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("crash-{target}"));
        fs::write(&path, input).unwrap();
        eprintln!(
            "{target}: {label} panicked; input saved to {} (replay it with the fuzz target)",
            path.display()
        );
        std::panic::resume_unwind(panic);
    }
}

fn gunzip(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

#[test]
fn tarsplit_corpus_replays() {
    for (name, data) in corpus("tarsplit_parser") {
        run_one("tarsplit_parser", &name, &data, checks::tarsplit);
    }
}

#[test]
fn reference_corpus_replays() {
    for (name, data) in corpus("reference_parser") {
        run_one("reference_parser", &name, &data, checks::reference);
    }
}

#[test]
fn tarsplit_mutations() {
    // Mutate the JSON text (the parser's grammar), and now and then the gzip bytes themselves.
    let seeds = corpus("tarsplit_parser");
    let texts: Vec<Vec<u8>> = seeds
        .iter()
        .map(|(_, d)| gunzip(d).unwrap_or_else(|| d.clone()))
        .collect();
    let gzipped: Vec<Vec<u8>> = seeds
        .iter()
        .map(|(_, d)| d.clone())
        .filter(|d| d.starts_with(&[0x1f, 0x8b]))
        .collect();
    let tokens: &[&[u8]] = &[
        b"{\"type\":2,\"payload\":\"\"}\n",
        b"{\"type\":1,\"name\":\"a\",\"size\":4,\"payload\":\"YVqy3bAAAAA=\"}\n",
        b"{\"type\":1,\"name_raw\":\"/w==\"}\n",
        b"\"size\":-1,",
        b"\"size\":17592186044416,",
        b"\"size\":1e3,",
        b"\"size\":18446744073709551616,",
        b"\"payload\":null,",
        b"\"payload\":\"=\",",
        b"\"name\":\"../../x\",",
        b"\"name\":\"\\u0000\",",
        b"\"type\":3,",
        b"\r\n",
        b"\n\n",
        // The shapes the fast path recognises, and near misses.
        b"{\"type\":2,\"payload\":\"aGk=\",\"position\":7}\n",
        b"{\"type\":1,\"name\":\"a/b\",\"size\":4,\"payload\":\"YVqy3bAAAAA=\",\"position\":1}\n",
        b"{\"type\":1,\"name\":\"d/\",\"payload\":null,\"position\":2}\n",
        b",\"position\":0",
        b",\"position\":01",
        b"\"payload\":\"a=b=\",",
        b"\"size\":0,",
        b"\"size\":999999999999999999,",
    ];
    let mut rng = Rng(0x0c1e_4e59_0127_2f6d);
    for i in 0..MUTATIONS {
        let from_gzip = !gzipped.is_empty() && i % 8 == 7;
        let pool = if from_gzip { &gzipped } else { &texts };
        let mut data = pool[rng.below(pool.len())].clone();
        mutate(&mut rng, &mut data, pool, tokens);
        // The full check compresses every input again; on a debug build that is most of the
        // cost, so it runs on one input in eight.
        let check: fn(&[u8]) = if i % 8 == 0 {
            checks::tarsplit
        } else if from_gzip {
            // A damaged gzip stream, through both ways of inflating it.
            |d| {
                checks::check_inflate_ahead(d);
                drop(checks::tarsplit_parse(d))
            }
        } else {
            |d| drop(checks::tarsplit_parse(d))
        };
        run_one("tarsplit_parser", &format!("mutation {i}"), &data, check);
    }
}

#[test]
fn reference_mutations() {
    let seeds: Vec<Vec<u8>> = corpus("reference_parser")
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let tokens: &[&[u8]] = &[
        b"/",
        b":",
        b"@",
        b".",
        b"-",
        b"_",
        b"__",
        b"A",
        b"9",
        b"localhost",
        b"docker.io/",
        b"index.docker.io/",
        b"library/",
        b":5000",
        b"@sha256:",
        b"5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef",
        "é".as_bytes(),
    ];
    let mut rng = Rng(0x5eed_0f2e_f5a1);
    for i in 0..MUTATIONS {
        let mut data = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut data, &seeds, tokens);
        run_one(
            "reference_parser",
            &format!("mutation {i}"),
            &data,
            checks::reference,
        );
    }
}

#[test]
fn bolt_corpus_replays() {
    for (name, data) in corpus("bolt_reader") {
        run_one("bolt_reader", &name, &data, checks::bolt);
    }
}

/// Overwrites (never shifts: page offsets must stay where they are for the damage to reach past
/// the first page) one to four fields of a bbolt file: page headers, element arrays and meta
/// fields more often than page bodies, with values a reader must not trust.
fn mutate_bolt(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    const PAGE: usize = 4096;
    let interesting: [u64; 12] = [
        0,
        1,
        2,
        3,
        0x7f,
        0xff,
        0xffff,
        0x1_0000,
        0xffff_ffff,
        u64::MAX,
        u64::MAX - 1,
        (data.len() / PAGE) as u64,
    ];
    for _ in 0..1 + rng.below(4) {
        if data.is_empty() {
            return;
        }
        // Mostly the head of a page (header, element array), where the structure is.
        let page_start = rng.below(data.len().div_ceil(PAGE)) * PAGE;
        let at = match rng.below(4) {
            0 => rng.below(data.len()),
            _ => (page_start + rng.below(16 + 16 * 8)).min(data.len() - 1),
        };
        match rng.below(7) {
            0 => data[at] ^= 1 << rng.below(8),
            1..=3 => {
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let value =
                    interesting[rng.below(interesting.len())].wrapping_add(rng.below(3) as u64);
                let bytes = value.to_le_bytes();
                let end = (at + width).min(data.len());
                data[at..end].copy_from_slice(&bytes[..end - at]);
            }
            4 => {
                let to = rng.below(data.len() + 1);
                data.truncate(to);
            }
            5 => {
                // One page copied over another (a stale page, or one reused too early).
                let pages = data.len() / PAGE;
                if pages >= 2 {
                    let (from, to) = (rng.below(pages) * PAGE, rng.below(pages) * PAGE);
                    let page = data[from..from + PAGE].to_vec();
                    data[to..to + PAGE].copy_from_slice(&page);
                }
            }
            _ => {
                // Another file's bytes over ours from some offset (a torn read of two versions).
                let other = &others[rng.below(others.len())];
                let from = rng.below(data.len().min(other.len()) + 1);
                let to = (from + PAGE * (1 + rng.below(4)))
                    .min(data.len())
                    .min(other.len());
                data[from..to].copy_from_slice(&other[from..to]);
            }
        }
    }
}

#[test]
fn bolt_mutations() {
    use checks::BoltOutcome;
    let seeds: Vec<Vec<u8>> = corpus("bolt_reader").into_iter().map(|(_, d)| d).collect();
    let mut rng = Rng(0xb01d_b01d_5eed);
    let mut outcomes = std::collections::HashMap::<BoltOutcome, usize>::new();
    for i in 0..MUTATIONS {
        let mut data = seeds[rng.below(seeds.len())].clone();
        mutate_bolt(&mut rng, &mut data, &seeds);
        let result = std::panic::catch_unwind(|| checks::bolt_outcomes(&data));
        let (plain, fixed) = match result {
            Ok(outcome) => outcome,
            Err(_) => {
                // Save and report it as the other targets do.
                run_one("bolt_reader", &format!("mutation {i}"), &data, checks::bolt);
                unreachable!("the check panicked once and not again");
            }
        };
        for outcome in std::iter::once(plain).chain(fixed) {
            *outcomes.entry(outcome).or_default() += 1;
        }
    }
    // The mutations must reach the trees, not just fail the meta checks: a mutator that only
    // ever produced refused files would prove nothing.
    let count = |o| outcomes.get(&o).copied().unwrap_or(0);
    let reached = count(BoltOutcome::Damaged) + count(BoltOutcome::Clean);
    eprintln!("bolt mutations: {outcomes:?}");
    assert!(
        count(BoltOutcome::Damaged) >= MUTATIONS / 10
            && count(BoltOutcome::Clean) >= MUTATIONS / 10,
        "too few mutations reached the trees: {outcomes:?} ({reached} opened)"
    );
}
