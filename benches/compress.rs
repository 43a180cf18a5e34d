//! Compression throughput on realistic layer data: `cargo bench --bench compress`.
//!
//! The input is a tar of a system directory (default `/usr/lib`), cut to a fixed size and held
//! in memory, so the numbers measure compression and hashing alone. Environment:
//! - `OCI_EXPORT_BENCH_DIR`: directory to tar (default `/usr/lib`)
//! - `OCI_EXPORT_BENCH_MB`: megabytes of input (default 200)
//! - `OCI_EXPORT_BENCH_JOBS`: comma-separated job counts (default `1,2`)
//! - `OCI_EXPORT_BENCH_CASES`: comma-separated `algorithm:level` (default gzip 1/6, zstd 1/3)

use std::env;
use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use oci_export::compress::{Algorithm, Compressor, Settings};

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a filter argument selects cases by substring.
    let filter: Option<String> = env::args().skip(1).find(|a| !a.starts_with("--"));
    let dir = env::var("OCI_EXPORT_BENCH_DIR").unwrap_or_else(|_| "/usr/lib".to_string());
    let mb: usize = env_or("OCI_EXPORT_BENCH_MB", "200").parse()?;
    let jobs: Vec<usize> = env_or("OCI_EXPORT_BENCH_JOBS", "1,2")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let cases: Vec<(Algorithm, i32)> =
        env_or("OCI_EXPORT_BENCH_CASES", "gzip:1,gzip:6,zstd:1,zstd:3")
            .split(',')
            .map(parse_case)
            .collect::<Result<_>>()?;

    let data = tar_of(&dir, mb << 20)?;
    println!(
        "input: tar of {dir}, {:.1} MB ({} cores available)",
        data.len() as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<18} {:>5} {:>10} {:>8} {:>12}",
        "case", "jobs", "MB/s in", "ratio", "size"
    );

    if filter.as_deref().is_none_or(|f| "serial".contains(f)) {
        for level in [1, 6] {
            let start = Instant::now();
            let mut gz = flate2::write::GzEncoder::new(Counter(0), flate2::Compression::new(level));
            gz.write_all(&data)?;
            let size = gz.finish()?.0;
            report(&format!("flate2 serial -{level}"), 1, &data, size, start);
        }
    }
    for (algorithm, level) in cases {
        let name = format!("{algorithm} -{level}");
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        for &jobs in &jobs {
            let settings = Settings {
                algorithm,
                level,
                jobs,
            };
            let start = Instant::now();
            let mut out = Counter(0);
            let mut c = Compressor::new(&settings, &mut out)?;
            // Layers arrive from the reassembler in pieces of up to 1 MiB.
            for piece in data.chunks(1 << 20) {
                c.write_all(piece)?;
            }
            let blob = c.finish()?;
            report(&name, jobs, &data, blob.size, start);
        }
    }
    Ok(())
}

fn report(name: &str, jobs: usize, data: &[u8], size: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<18} {jobs:>5} {:>10.1} {:>8.3} {size:>12}",
        data.len() as f64 / 1e6 / secs,
        data.len() as f64 / size as f64,
    );
}

fn env_or(name: &str, default: &str) -> String {
    env::var(name).unwrap_or_else(|_| default.to_string())
}

fn parse_case(s: &str) -> Result<(Algorithm, i32)> {
    let (alg, level) = s.split_once(':').context("a case is algorithm:level")?;
    Ok((alg.parse()?, level.parse()?))
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
