//! The command line. Option names are a contract: scripts depend on them.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
    after_help = "Examples:\n  sudo oci-export myapp:1.4 > myapp.tar\n  sudo oci-export myapp:1.4 base:2 -o images.tar\n  sudo oci-export --data-root /mnt/docker myapp -o myapp.tar\n  sudo oci-export -c zstd myapp:1.4 -o myapp.tar\n  sudo oci-export -c gzip --gzip-encoder isal myapp:1.4 -o myapp.tar\n  sudo oci-export --format oci-dir -c gzip myapp:1.4 -o ./myapp-layout\n  sudo oci-export cache ls",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

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

    /// Layer compression. The config's diff_ids never change; manifests carry the compressed
    /// digests and media types.
    #[arg(short = 'c', long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,

    /// Compression level [default: 1 for gzip (6 with --gzip-encoder zlib; ISA-L's levels are
    /// 0-3), 3 for zstd].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub level: Option<i32>,

    /// Which encoder writes gzip: sirocco or zlib-rs (any build), or ISA-L (builds with the
    /// `isal` feature). Each writes different but equally valid bytes [default: sirocco].
    #[arg(long, value_enum, value_name = "ENCODER")]
    pub gzip_encoder: Option<GzipEncoder>,

    /// Blob cache for compressed layers [default: /var/cache/oci-export as root, else
    /// $XDG_CACHE_HOME/oci-export or ~/.cache/oci-export].
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub cache_dir: Option<PathBuf>,

    /// Do not keep compressed layers for the next export.
    #[arg(long)]
    pub no_cache: bool,

    /// I/O engine: io_uring when available (auto), io_uring or fail (uring), plain reads (sync).
    #[arg(long = "io", value_enum, default_value_t = IoMode::Auto, value_name = "MODE")]
    pub io_mode: IoMode,

    /// Layers rebuilt (and compression threads per layer) in parallel [default: number of CPUs].
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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Inspect or trim the compressed-blob cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
        /// The cache directory [default: as for exports].
        #[arg(long, value_name = "DIR", global = true)]
        cache_dir: Option<PathBuf>,
        /// Docker's data root, which the cache may not be inside [default: as for exports].
        #[arg(long, value_name = "DIR", global = true)]
        data_root: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// List cached blobs.
    Ls,
    /// Remove least recently used blobs until the cache fits the bound.
    Prune {
        /// The bound, in bytes or with a K/M/G/T suffix (powers of 1024) [default: 10G].
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A `docker save` (v25+) tar archive.
    Archive,
    /// An OCI image layout directory (needs -o DIR).
    OciDir,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GzipEncoder {
    /// sirocco, levels 1-9: pure Rust, the fastest in a default build.
    Sirocco,
    /// zlib-rs, levels 1-9.
    Zlib,
    /// ISA-L's igzip, levels 0-3.
    Isal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// `1048576`, `512K`, `10G`: sizes in bytes, or with a binary suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 10),
        Some('M') => (&s[..s.len() - 1], 20),
        Some('G') => (&s[..s.len() - 1], 30),
        Some('T') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 500M or 10G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
