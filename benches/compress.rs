//! Compression throughput on realistic layer data: `cargo bench --bench compress`.
//!
//! Two inputs, held in memory so that the numbers measure compression and hashing alone:
//! a tar of system directories (binaries, libraries, text, tar headers: what layers hold), and
//! incompressible bytes (what a layer of compressed files or random data holds; the large
//! held-out image has a 1 GiB one). Every case is run several times and the best run counts,
//! since other work on a shared machine only ever makes a run slower. Environment:
//! - `OCI_EXPORT_BENCH_DIRS`: comma-separated `dir:MB`, each directory tarred and cut to that
//!   many megabytes, concatenated (default `/usr/lib:200,/usr/share:100`)
//! - `OCI_EXPORT_BENCH_RANDOM_MB`: megabytes of incompressible input (default 64; 0 for none)
//! - `OCI_EXPORT_BENCH_JOBS`: comma-separated job counts (default `1,2`)
//! - `OCI_EXPORT_BENCH_CASES`: comma-separated `algorithm:level` (default: every gzip encoder
//!   this build has at its default level, zlib at 1 and 6 as well, zstd 1 and 3)
//! - `OCI_EXPORT_BENCH_RUNS`: runs per case, best counts (default 3)
//! - `OCI_EXPORT_BENCH_TOOLS=1`: also time `gzip` and `pigz` on the same input, for reference
//!
//! Each case prints MB/s of input by the wall clock and per CPU second (user and system time
//! of all threads): the second is what a core's worth of work compresses, and moves far less
//! when other work shares the machine.
//!
//! A filter argument (`cargo bench --bench compress -- sirocco`) selects cases by substring.

use std::env;
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use oci_export::compress::{Algorithm, Compressor, Settings};

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a filter argument selects cases by substring.
    let filter: Option<String> = env::args().skip(1).find(|a| !a.starts_with("--"));
    let selected = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let jobs: Vec<usize> = env_or("OCI_EXPORT_BENCH_JOBS", "1,2")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let default_cases = if Algorithm::GzipIsal.is_available() {
        "gzip-sirocco:1,gzip-isal:1,gzip:1,gzip:6,zstd:1,zstd:3"
    } else {
        "gzip-sirocco:1,gzip:1,gzip:6,zstd:1,zstd:3"
    };
    let cases: Vec<(Algorithm, i32)> = env_or("OCI_EXPORT_BENCH_CASES", default_cases)
        .split(',')
        .map(parse_case)
        .collect::<Result<_>>()?;
    let runs: usize = env_or("OCI_EXPORT_BENCH_RUNS", "3").parse()?;
    let tools = env::var("OCI_EXPORT_BENCH_TOOLS").is_ok_and(|v| v == "1");

    let mut inputs = vec![(
        "layer tar",
        layer_tar(&env_or(
            "OCI_EXPORT_BENCH_DIRS",
            "/usr/lib:200,/usr/share:100",
        ))?,
    )];
    let random_mb: usize = env_or("OCI_EXPORT_BENCH_RANDOM_MB", "64").parse()?;
    if random_mb > 0 {
        inputs.push(("incompressible", incompressible(random_mb << 20)));
    }
    println!(
        "{} cores available; best of {runs} runs",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for (what, data) in &inputs {
        println!("\ninput: {what}, {:.1} MB", data.len() as f64 / 1e6);
        println!(
            "{:<20} {:>5} {:>10} {:>10} {:>8} {:>12}",
            "case", "jobs", "MB/s in", "MB/CPU-s", "ratio", "size"
        );
        for &(algorithm, level) in &cases {
            let name = format!("{} -{level}", encoder_name(algorithm));
            if !selected(&name) {
                continue;
            }
            for &jobs in &jobs {
                let settings = Settings {
                    algorithm,
                    level,
                    jobs,
                };
                let run = best_of(runs, || compress(&settings, data))?;
                report(&name, jobs, data, run);
            }
        }
        if tools {
            for (program, args, jobs) in [
                ("gzip", &["-6"][..], 1),
                ("gzip", &["-1"][..], 1),
                ("pigz", &["-6", "-p1"][..], 1),
                ("pigz", &["-6", "-p2"][..], 2),
                ("pigz", &["-1", "-p1"][..], 1),
                ("pigz", &["-1", "-p2"][..], 2),
            ] {
                let name = format!("{program} (CLI) {}", args[0]);
                if selected(&name) {
                    let run = best_of(runs, || run_tool(program, args, data))?;
                    report(&name, jobs, data, run);
                }
            }
        }
    }
    Ok(())
}

/// One run: wall-clock seconds, CPU seconds (all threads, or the child's for a tool) and the
/// compressed size.
#[derive(Clone, Copy)]
struct Run {
    secs: f64,
    cpu: f64,
    size: u64,
}

/// Compresses `data` as the reassembler feeds a layer (pieces of up to 1 MiB), into an output
/// that only counts.
fn compress(settings: &Settings, data: &[u8]) -> Result<Run> {
    let cpu = cpu_seconds(libc::RUSAGE_SELF);
    let start = Instant::now();
    let mut out = Counter(0);
    let mut c = Compressor::new(settings, &mut out)?;
    for piece in data.chunks(1 << 20) {
        c.write_all(piece)?;
    }
    let blob = c.finish()?;
    Ok(Run {
        secs: start.elapsed().as_secs_f64(),
        cpu: cpu_seconds(libc::RUSAGE_SELF) - cpu,
        size: blob.size,
    })
}

/// CPU time (user and system) used so far by this process or by its waited-for children.
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(who, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The fastest of `runs` runs, by wall clock and by CPU time separately: on a shared machine
/// other work only ever adds to either (all runs produce the same size).
fn best_of(runs: usize, mut run: impl FnMut() -> Result<Run>) -> Result<Run> {
    let mut best = run()?;
    for _ in 1..runs {
        let next = run()?;
        best.secs = best.secs.min(next.secs);
        best.cpu = best.cpu.min(next.cpu);
    }
    Ok(best)
}

/// MB/s of input by the wall clock, and per CPU second (what one core's worth of work
/// compresses, whatever else shares the machine).
fn report(name: &str, jobs: usize, data: &[u8], run: Run) {
    let mb = data.len() as f64 / 1e6;
    println!(
        "{name:<20} {jobs:>5} {:>10.1} {:>10.1} {:>8.3} {:>12}",
        mb / run.secs,
        mb / run.cpu,
        data.len() as f64 / run.size as f64,
        run.size,
    );
}

/// What writes the format: the encoder for gzip, so that zlib-rs's cases are not mistaken for
/// the `gzip` tool's.
fn encoder_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Gzip => "gzip zlib-rs",
        Algorithm::GzipSirocco => "gzip sirocco",
        Algorithm::GzipIsal => "gzip isal",
        Algorithm::Zstd => "zstd",
    }
}

fn env_or(name: &str, default: &str) -> String {
    env::var(name).unwrap_or_else(|_| default.to_string())
}

fn parse_case(s: &str) -> Result<(Algorithm, i32)> {
    let (alg, level) = s.split_once(':').context("a case is algorithm:level")?;
    Ok((alg.parse()?, level.parse()?))
}

/// `dir:MB,dir:MB`: the first MB megabytes of `tar -c dir` for each, one after the other.
fn layer_tar(spec: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    for piece in spec.split(',') {
        let (dir, mb) = piece
            .rsplit_once(':')
            .with_context(|| format!("{piece:?} is not dir:MB"))?;
        data.extend(tar_of(dir, mb.parse::<usize>()? << 20)?);
    }
    Ok(data)
}

/// The first `limit` bytes of `tar -c dir`: a realistic mix of binaries, text and tar headers.
fn tar_of(dir: &str, limit: usize) -> Result<Vec<u8>> {
    let mut child = Command::new("tar")
        .args(["-cf", "-", "--sort=name", dir])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running tar to make benchmark data")?;
    let mut data = Vec::with_capacity(limit);
    child
        .stdout
        .take()
        .context("tar's output")?
        .take(limit as u64)
        .read_to_end(&mut data)?;
    let _ = child.kill();
    let _ = child.wait();
    if data.is_empty() {
        bail!("tar of {dir} produced no data");
    }
    Ok(data)
}

/// `len` bytes of xorshift output: no compressor finds anything in it.
fn incompressible(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    data
}

/// Runs `program args` on `data` (stdin) and counts its output.
fn run_tool(program: &str, args: &[&str], data: &[u8]) -> Result<Run> {
    let cpu = cpu_seconds(libc::RUSAGE_CHILDREN);
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let size = std::thread::scope(|s| {
        let reader = s.spawn(move || io::copy(&mut stdout, &mut Counter(0)));
        stdin.write_all(data)?;
        drop(stdin);
        reader.join().expect("reader thread")
    })?;
    if !child.wait()?.success() {
        bail!("{program} {args:?} failed");
    }
    Ok(Run {
        secs: start.elapsed().as_secs_f64(),
        cpu: cpu_seconds(libc::RUSAGE_CHILDREN) - cpu,
        size,
    })
}

/// An output that only counts.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
