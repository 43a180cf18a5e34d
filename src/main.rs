//! `oci-export`: thin glue between the command line and [`oci_export::export`].

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use oci_export::cache::{self, BlobCache};
use oci_export::cli::{
    Args, CacheAction, Command, Compression, LayerArgs, PushArgs, RunArgs, UsageError,
};
use oci_export::export::plan::Requested;
use oci_export::export::push::{self, PushRequest};
use oci_export::export::{run, CacheChoice, ExportRequest};
use oci_export::interrupt;
use oci_export::progress;
use oci_export::sink::output::refuse_inside;
use oci_export::sink::registry::ClientOptions;

fn main() -> ExitCode {
    let args = Args::parse();
    interrupt::install();
    let result = match args.command {
        Some(Command::Cache {
            action,
            cache_dir,
            data_root,
        }) => cache_command(action, cache_dir, data_root),
        Some(Command::Push(push)) => push_command(push),
        Some(Command::Completions { shell }) => {
            let mut command = Args::command();
            clap_complete::generate(shell, &mut command, "oci-export", &mut std::io::stdout());
            Ok(())
        }
        Some(Command::Man) => clap_mangen::Man::new(Args::command())
            .render(&mut std::io::stdout())
            .context("writing the manual page"),
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
            if e.is::<UsageError>() {
                // As clap's own usage errors.
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

fn export(args: Args) -> Result<()> {
    let jobs = args.run.jobs();
    let layers = args.layers.requested(jobs, None)?;
    run(&ExportRequest {
        images: args.images,
        source: args.source.options(),
        output: args.output,
        format: args.format,
        io_mode: args.run.io_mode,
        jobs,
        show_progress: show_progress(&args.run),
        regenerate_missing: args.source.regenerate_missing,
        cache: cache_choice(&args.layers, &layers),
        layers,
    })
}

fn push_command(args: Box<PushArgs>) -> Result<()> {
    let jobs = args.run.jobs();
    // As `docker push`: gzip layers unless asked otherwise (stored blobs already compressed
    // stay as they are).
    let layers = args.layers.requested(jobs, Some(Compression::Gzip))?;
    let mut registry = ClientOptions {
        insecure: args.insecure,
        ..ClientOptions::default()
    };
    if !args.certs_dir.is_empty() {
        registry.certs_dirs = args.certs_dir.clone();
    }
    if let Some(delay) = retry_delay_for_tests()? {
        registry.retry.first_delay = delay;
    }
    let pushed = push::run(&PushRequest {
        image: args.image,
        destination: args.destination,
        source: args.source.options(),
        io_mode: args.run.io_mode,
        jobs,
        show_progress: show_progress(&args.run),
        regenerate_missing: args.source.regenerate_missing,
        cache: cache_choice(&args.layers, &layers),
        layers,
        registry,
    })?;
    // The one line on stdout, as crane prints it: what a script needs to pin the image.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{pushed}")
        .and_then(|()| stdout.flush())
        .with_context(|| format!("pushed {pushed}, but could not print it"))
}

/// `OCI_EXPORT_RETRY_DELAY_MS`: the wait after a push's first failed attempt, in milliseconds
/// (default 1000; each further failure doubles it, and a registry's `Retry-After` is honoured
/// as ever). For the tests only, which inject dozens of failures and must not sleep through
/// real backoffs; deliberately not a flag, since no user needs it.
const RETRY_DELAY_VAR: &str = "OCI_EXPORT_RETRY_DELAY_MS";

fn retry_delay_for_tests() -> Result<Option<std::time::Duration>> {
    let Some(value) = std::env::var_os(RETRY_DELAY_VAR) else {
        return Ok(None);
    };
    let ms: u64 = value
        .to_str()
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{RETRY_DELAY_VAR}={value:?}: not a number of milliseconds"))?;
    Ok(Some(std::time::Duration::from_millis(ms)))
}

/// Progress (and informational lines) go to stderr only when it is a terminal, and never with
/// `-q`.
fn show_progress(run: &RunArgs) -> bool {
    let show = !run.quiet && std::io::stderr().is_terminal();
    progress::show_info(show);
    show
}

/// Only compressed layers are cached: an export without compression needs no cache directory,
/// and must not fail for the lack of one.
fn cache_choice(args: &LayerArgs, layers: &Requested) -> CacheChoice {
    if !matches!(layers, Requested::Compressed(_)) || args.no_cache {
        return CacheChoice::None;
    }
    match args.cache_dir.clone().or_else(cache::default_dir) {
        Some(dir) => CacheChoice::Dir(dir),
        None => CacheChoice::Unavailable(format!("{NO_CACHE_DIR} (give one with --cache-dir)")),
    }
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
    refuse_inside(&dir, &oci_export::source::default_roots(data_root))?;
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
