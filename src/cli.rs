//! The command line. Option names are a contract: scripts depend on them.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

use crate::compress::{Algorithm, Settings};
use crate::export::plan::Requested;
use crate::io::IoMode;
use crate::source::{Platform, PlatformChoice, SourceOptions, StoreKind, DEFAULT_NAMESPACE};

const EXAMPLES: &str = "\
Examples:
  sudo oci-export myapp:1.4 > myapp.tar                  # from the store Docker uses
  sudo oci-export myapp:1.4 base:2 -o images.tar         # several images, shared layers once
  sudo oci-export -c zstd myapp:1.4 -o myapp.tar         # zstd layers
  sudo oci-export --format oci-dir myapp:1.4 -o ./myapp  # an OCI image layout directory
  sudo oci-export --store overlay2 --data-root /mnt/docker myapp -o myapp.tar
  sudo oci-export --store containerd --namespace k8s.io --platform linux/arm64 \\
       docker.io/library/nginx:1.27 -o nginx.tar
  sudo oci-export --store containers-storage localhost/myapp:1.4 -o myapp.tar
  oci-export --store containers-storage --data-root ~/.local/share/containers/storage \\
       myapp -o myapp.tar                                 # a rootless podman store
  sudo oci-export push myapp:1.4 registry.example.com/team/myapp:1.4
  sudo oci-export cache ls
  oci-export completions bash > ~/.local/share/bash-completion/completions/oci-export

Exit status: 0 when everything written was verified, 1 on any error, 2 on a usage error.";

#[derive(Parser, Debug)]
#[command(
    name = "oci-export",
    version,
    about = "Export container images straight from an engine's on-disk storage, byte for byte",
    long_about = "Export container images straight from an engine's on-disk storage, without \
                  the daemon. Each layer is rebuilt byte for byte from its tar-split record and \
                  verified (per-file CRC-64, per-layer SHA-256 against the diff_id), or copied \
                  from the content store verified against its digest. The default output is \
                  the archive `docker save` (v25+) writes, readable by docker load, skopeo, \
                  podman and crane; `push` puts the image in a registry instead.",
    after_help = EXAMPLES,
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

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Archive)]
    pub format: Format,

    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub layers: LayerArgs,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Where the images are.
#[derive(ClapArgs, Debug, Clone)]
pub struct SourceArgs {
    /// Which image store to read [default: auto: the one Docker uses, overlay2 where it holds
    /// the image, else containerd's].
    #[arg(long, value_enum, default_value_t = StoreKind::Auto, value_name = "STORE")]
    pub store: StoreKind,

    /// The store's root: Docker's data root [default: data-root from /etc/docker/daemon.json,
    /// else /var/lib/docker], containerd's root, or the containers-storage graph root.
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,

    /// containerd namespace [default: moby, Docker's; k8s.io for Kubernetes].
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,

    /// The platform of a multi-platform image to take, os/arch[/variant] [default: this
    /// machine's].
    #[arg(long, value_name = "PLATFORM", conflicts_with = "all_platforms")]
    pub platform: Option<Platform>,

    /// Take every platform of a multi-platform image.
    #[arg(long)]
    pub all_platforms: bool,

    /// Rebuild layers that lost their tar-split record (or blob) from their directory,
    /// Docker-style. Their bytes cannot be the originals, so they get new diff_ids and the image
    /// a new ID (reported on stderr).
    #[arg(long)]
    pub regenerate_missing: bool,
}

/// How layers are written.
#[derive(ClapArgs, Debug, Clone)]
pub struct LayerArgs {
    /// Layer compression. The config's diff_ids never change; manifests carry the compressed
    /// digests and media types. Stored blobs already in the asked-for form are kept as they
    /// are [default: the store's own form: tars from Docker's overlay2 store and
    /// containers-storage, blobs as stored from containerd; gzip for push].
    #[arg(short = 'c', long, value_enum)]
    pub compression: Option<Compression>,

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
}

/// Options that do not go together, found after clap's own checks: a usage error, which exits
/// with status 2 as clap's do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(message: &str) -> anyhow::Error {
    UsageError(message.to_string()).into()
}

/// How the work runs.
#[derive(ClapArgs, Debug, Clone)]
pub struct RunArgs {
    /// I/O engine: io_uring when available (auto), io_uring or fail (uring), plain reads (sync).
    #[arg(long = "io", value_enum, default_value_t = IoMode::Auto, value_name = "MODE")]
    pub io_mode: IoMode,

    /// Layers rebuilt (and compression threads per layer) in parallel [default: number of CPUs].
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,

    /// No progress on stderr (progress is shown only when stderr is a terminal anyway).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Push an image from storage straight to a registry; prints `<repository>@<digest>`.
    #[command(after_help = PUSH_EXAMPLES)]
    Push(Box<PushArgs>),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout: `oci-export man > oci-export.1`.
    Man,
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

const PUSH_EXAMPLES: &str = "\
Examples:
  sudo oci-export push myapp:1.4 registry.example.com/team/myapp:1.4
  sudo oci-export push -c zstd myapp:1.4 ghcr.io/org/myapp:1.4-zstd
  sudo oci-export push --data-root /mnt/docker myapp:1.4 127.0.0.1:5000/myapp:1.4

Credentials come from the docker CLI's config ($DOCKER_CONFIG/config.json, else
~/.docker/config.json: credHelpers, credsStore, auths); `docker login` once and push.";

#[derive(ClapArgs, Debug)]
pub struct PushArgs {
    /// The image to push, as for an export.
    #[arg(value_name = "IMAGE")]
    pub image: String,

    /// Where to push it: registry/repository[:tag] (a bare name means Docker Hub, :latest).
    #[arg(value_name = "DEST")]
    pub destination: String,

    /// Allow plain HTTP, and TLS certificates that do not verify, for this registry (loopback
    /// registries may use plain HTTP without it, as Docker allows).
    #[arg(long)]
    pub insecure: bool,

    /// Where per-registry certificates are (<DIR>/<host:port>/ca.crt, client.cert, client.key)
    /// [default: /etc/docker/certs.d and /etc/containers/certs.d].
    #[arg(long, value_name = "DIR")]
    pub certs_dir: Vec<PathBuf>,

    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub layers: LayerArgs,

    #[command(flatten)]
    pub run: RunArgs,
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

impl SourceArgs {
    pub fn options(&self) -> SourceOptions {
        SourceOptions {
            kind: self.store,
            root: self.data_root.clone(),
            namespace: self
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            platform: match (&self.platform, self.all_platforms) {
                (_, true) => PlatformChoice::All,
                (Some(p), false) => PlatformChoice::Only(p.clone()),
                (None, false) => PlatformChoice::Host,
            },
        }
    }
}

impl LayerArgs {
    /// The layer form asked for; `default` when no `-c` was given (`None`: the store's own).
    pub fn requested(&self, jobs: usize, default: Option<Compression>) -> Result<Requested> {
        let compression = self.compression.or(default);
        if self.gzip_encoder.is_some() && compression != Some(Compression::Gzip) {
            return Err(usage("--gzip-encoder needs --compression gzip"));
        }
        let algorithm = match compression {
            None | Some(Compression::None) => {
                if self.level.is_some() {
                    return Err(usage("--level needs --compression gzip or zstd"));
                }
                return Ok(match compression {
                    None => Requested::AsStored,
                    _ => Requested::Uncompressed,
                });
            }
            Some(Compression::Zstd) => Algorithm::Zstd,
            Some(Compression::Gzip) => match self.gzip_encoder {
                None | Some(GzipEncoder::Sirocco) => Algorithm::GzipSirocco,
                Some(GzipEncoder::Zlib) => Algorithm::Gzip,
                Some(GzipEncoder::Isal) => Algorithm::GzipIsal,
            },
        };
        let mut settings = Settings::new(algorithm);
        settings.jobs = jobs;
        if let Some(level) = self.level {
            settings.level = level;
        }
        settings
            .validate()
            .map_err(|e| UsageError(format!("{e:#}")))?;
        Ok(Requested::Compressed(settings))
    }
}

impl RunArgs {
    /// `--jobs`, or one per available core.
    pub fn jobs(&self) -> usize {
        self.jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
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

    #[test]
    fn push_and_export_share_their_options() {
        let export = Args::try_parse_from([
            "oci-export",
            "--store",
            "overlay2",
            "-c",
            "zstd",
            "-j",
            "3",
            "img",
        ])
        .unwrap();
        assert_eq!(export.source.store, StoreKind::Overlay2);
        assert_eq!(export.layers.compression, Some(Compression::Zstd));
        let push = Args::try_parse_from([
            "oci-export",
            "push",
            "--insecure",
            "-c",
            "gzip",
            "--level",
            "1",
            "img",
            "host:5000/r:t",
        ])
        .unwrap();
        let Some(Command::Push(push)) = push.command else {
            panic!("not a push");
        };
        assert!(push.insecure);
        assert_eq!(
            (push.image.as_str(), push.destination.as_str()),
            ("img", "host:5000/r:t")
        );
        assert_eq!(push.layers.level, Some(1));
    }
}
