//! The command line. Option names are a contract: scripts depend on them.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::io::IoMode;

#[derive(Parser, Debug)]
#[command(
    name = "oci-export",
    version,
    about = "Export container images straight from Docker's on-disk storage, byte for byte",
    long_about = "Export container images straight from Docker's overlay2 storage, without the \
                  daemon. Each layer is rebuilt byte for byte from its tar-split record and \
                  verified (per-file CRC-64, per-layer SHA-256 against the diff_id). The default \
                  output is the archive `docker save` (v25+) writes, readable by docker load, \
                  skopeo, podman and crane.",
    after_help = "Examples:\n  sudo oci-export myapp:1.4 > myapp.tar\n  sudo oci-export myapp:1.4 base:2 -o images.tar\n  sudo oci-export --data-root /mnt/docker myapp -o myapp.tar\n  sudo oci-export --format oci-dir myapp:1.4 -o ./myapp-layout"
)]
pub struct Args {
    /// Images to export: name[:tag], name@sha256:<digest>, a full image ID or a unique prefix.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,

    /// Write to this path instead of stdout (the file appears only once complete).
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Docker's data root [default: data-root from /etc/docker/daemon.json, else /var/lib/docker].
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Archive)]
    pub format: Format,

    /// I/O engine: io_uring when available (auto), io_uring or fail (uring), plain reads (sync).
    #[arg(long = "io", value_enum, default_value_t = IoMode::Auto, value_name = "MODE")]
    pub io_mode: IoMode,

    /// Layers rebuilt in parallel [default: number of CPUs].
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,

    /// Rebuild layers that lost their tar-split record from their directory, Docker-style.
    /// Their bytes cannot be the originals, so they get new diff_ids and the image a new ID
    /// (reported on stderr).
    #[arg(long)]
    pub regenerate_missing: bool,

    /// No progress on stderr (progress is shown only when stderr is a terminal anyway).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A `docker save` (v25+) tar archive.
    Archive,
    /// An OCI image layout directory (needs -o DIR).
    OciDir,
}
