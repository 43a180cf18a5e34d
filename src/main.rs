//! `oci-export`: thin glue between the command line and [`oci_export::export`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use oci_export::cli::Args;
use oci_export::export::{run, ExportRequest};
use oci_export::interrupt;
use oci_export::source::overlay2::default_data_root;

fn main() -> ExitCode {
    let args = Args::parse();
    interrupt::install();
    let request = ExportRequest {
        images: args.images,
        data_root: args.data_root.unwrap_or_else(default_data_root),
        output: args.output,
        format: args.format,
        io_mode: args.io_mode,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        show_progress: !args.quiet && std::io::stderr().is_terminal(),
        regenerate_missing: args.regenerate_missing,
    };
    match run(&request) {
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

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
