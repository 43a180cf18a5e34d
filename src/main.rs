//! `oci-export`: thin glue between the command line and [`oci_export::export`].

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use oci_export::cache::{self, BlobCache};
use oci_export::cli::{Args, CacheAction, Command, Compression, GzipEncoder};
use oci_export::compress::{Algorithm, Settings};
use oci_export::export::{run, CacheChoice, ExportRequest};
use oci_export::interrupt;
use oci_export::sink::output::refuse_inside;
use oci_export::source::overlay2::default_data_root;

fn main() -> ExitCode {
    let args = Args::parse();
    interrupt::install();
    let result = match args.command {
        Some(Command::Cache {
            action,
            cache_dir,
            data_root,
        }) => cache_command(action, cache_dir, data_root),
        None => export(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                // The reader went away (`oci-export img | head`): one line, no chain of causes.
                eprintln!("oci-export: output closed before the archive was complete");
            } else {
                eprintln!("oci-export: error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn export(args: Args) -> Result<()> {
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    if args.gzip_encoder.is_some() && args.compression != Compression::Gzip {
        anyhow::bail!("--gzip-encoder needs --compression gzip");
    }
    let compression = match args.compression {
        Compression::None => {
            if args.level.is_some() {
                anyhow::bail!("--level needs --compression gzip or zstd");
            }
            None
        }
        Compression::Gzip | Compression::Zstd => {
            let algorithm = match (args.compression, args.gzip_encoder) {
                (Compression::Zstd, _) => Algorithm::Zstd,
                (_, None | Some(GzipEncoder::Sirocco)) => Algorithm::GzipSirocco,
                (_, Some(GzipEncoder::Zlib)) => Algorithm::Gzip,
                (_, Some(GzipEncoder::Isal)) => Algorithm::GzipIsal,
            };
            let mut settings = Settings::new(algorithm);
            settings.jobs = jobs;
            if let Some(level) = args.level {
                settings.level = level;
            }
            settings.validate()?;
            Some(settings)
        }
    };
    // Only compressed layers are cached: an uncompressed export needs no cache directory, and
    // must not fail for the lack of one.
    let cache = if compression.is_none() || args.no_cache {
        CacheChoice::None
    } else {
        match args.cache_dir.or_else(cache::default_dir) {
            Some(dir) => CacheChoice::Dir(dir),
            None => CacheChoice::Unavailable(format!("{NO_CACHE_DIR} (give one with --cache-dir)")),
        }
    };
    run(&ExportRequest {
        images: args.images,
        data_root: args.data_root.unwrap_or_else(default_data_root),
        output: args.output,
        format: args.format,
        io_mode: args.io_mode,
        jobs,
        show_progress: !args.quiet && std::io::stderr().is_terminal(),
        regenerate_missing: args.regenerate_missing,
        compression,
        cache,
    })
}

const NO_CACHE_DIR: &str = "no cache directory: neither XDG_CACHE_HOME nor HOME is set";

fn cache_command(
    action: CacheAction,
    dir: Option<std::path::PathBuf>,
    data_root: Option<std::path::PathBuf>,
) -> Result<()> {
    let dir = dir
        .or_else(cache::default_dir)
        .with_context(|| format!("{NO_CACHE_DIR}; use --cache-dir"))?;
    // As for exports: nothing of ours goes inside the engine's storage, and prune deletes.
    refuse_inside(&dir, &data_root.unwrap_or_else(default_data_root))?;
    // Inspecting creates nothing: a cache that does not exist lists as empty.
    let cache = BlobCache::existing(dir);
    match action {
        CacheAction::Ls => {
            let mut entries = cache.list()?;
            entries.sort_by_key(|e| std::cmp::Reverse(e.last_used_unix_ms));
            let mut total = 0;
            println!(
                "{:<71}  {:<4}  {:>5}  {:>12}  BLOB",
                "DIFF_ID", "ALG", "LEVEL", "SIZE"
            );
            for e in &entries {
                total += e.size;
                println!(
                    "{:<71}  {:<4}  {:>5}  {:>12}  {}",
                    e.diff_id.to_string(),
                    e.algorithm.to_string(),
                    e.level,
                    e.size,
                    e.digest
                );
            }
            println!(
                "{} blobs, {total} bytes in {}",
                entries.len(),
                cache.dir().display()
            );
        }
        CacheAction::Prune { max_size } => {
            let report = cache.prune(max_size.unwrap_or(cache::DEFAULT_MAX_BYTES))?;
            println!(
                "removed {} blobs ({} bytes); kept {} blobs ({} bytes)",
                report.removed_entries, report.freed_bytes, report.kept_entries, report.kept_bytes
            );
        }
    }
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
