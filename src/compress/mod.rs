//! Layer compression: turn an uncompressed layer tar into a gzip or zstd blob, hashing the
//! compressed bytes as they leave.
//!
//! A [`Compressor`] is a [`Write`] sink: the reassembler writes the layer tar into it, and
//! [`Compressor::finish`] returns the blob's digest and size once the last compressed byte has
//! reached the output. Both codecs use every core they are given.
//!
//! **Output is deterministic.** For a given algorithm and level the compressed bytes — and so
//! the blob digest — depend only on the input bytes: not on `jobs`, not on how the input was cut
//! into `write` calls, not on `flush` calls. Registries and caches key on that digest, so a
//! re-export on a machine with a different core count must produce the same blob.
//! - gzip cuts the input into fixed-size blocks whatever the thread count (see `gzip`); each of
//!   its encoders (sirocco, zlib-rs, ISA-L) is a separate [`Algorithm`], since their bytes
//!   differ.
//! - zstd always runs libzstd's multithreaded mode, whose output is the same for any number of
//!   workers ≥ 1 but differs from its single-thread mode (see `zstd`).

mod gzip;
mod zstd;

use std::fmt;
use std::io::{self, Write};
use std::ops::RangeInclusive;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

use crate::digest::Digest;

/// OCI media type of an uncompressed layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of a gzip-compressed layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI media type of a zstd-compressed layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A layer compression algorithm, together with the encoder that writes it.
///
/// Two encoders of one format write different (equally valid) bytes, so the encoder is part of
/// a blob's identity just like the level: each is its own `Algorithm` here, with its own cache
/// entries, while sharing the format's media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// gzip written by zlib-rs. Its name is plain `gzip` because it was the first gzip
    /// encoder: cache entries made then keep their meaning.
    Gzip,
    Zstd,
    /// gzip written by ISA-L's igzip: faster, with its own levels 0..=3. Only builds with the
    /// `isal` cargo feature can write it.
    GzipIsal,
    /// gzip written by sirocco, the default gzip encoder: pure Rust, zlib's levels 1..=9.
    GzipSirocco,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Gzip,
        Algorithm::Zstd,
        Algorithm::GzipIsal,
        Algorithm::GzipSirocco,
    ];

    /// The name used in cache keys and listings.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gzip => "gzip",
            Algorithm::Zstd => "zstd",
            Algorithm::GzipIsal => "gzip-isal",
            Algorithm::GzipSirocco => "gzip-sirocco",
        }
    }

    /// The OCI layer media type of a blob compressed with this algorithm.
    pub fn media_type(self) -> &'static str {
        match self {
            Algorithm::Gzip | Algorithm::GzipIsal | Algorithm::GzipSirocco => MEDIA_TYPE_LAYER_GZIP,
            Algorithm::Zstd => MEDIA_TYPE_LAYER_ZSTD,
        }
    }

    /// The levels accepted for this algorithm.
    ///
    /// zstd's negative "fast" levels are left out: they trade so much ratio that an
    /// uncompressed layer is the better choice when speed matters that much.
    pub fn levels(self) -> RangeInclusive<i32> {
        match self {
            Algorithm::Gzip | Algorithm::GzipSirocco => 1..=9,
            Algorithm::Zstd => 1..=22,
            Algorithm::GzipIsal => 0..=3,
        }
    }

    /// The format this algorithm writes, as a stored blob would name it.
    pub fn format(self) -> crate::model::BlobCompression {
        match self {
            Algorithm::Gzip | Algorithm::GzipIsal | Algorithm::GzipSirocco => {
                crate::model::BlobCompression::Gzip
            }
            Algorithm::Zstd => crate::model::BlobCompression::Zstd,
        }
    }

    /// Whether this build can compress with this algorithm.
    pub fn is_available(self) -> bool {
        self != Algorithm::GzipIsal || cfg!(feature = "isal")
    }
}

/// The OCI media type of a layer blob: compressed with `algorithm`, or a plain tar for `None`.
pub fn layer_media_type(algorithm: Option<Algorithm>) -> &'static str {
    algorithm.map_or(MEDIA_TYPE_LAYER_TAR, Algorithm::media_type)
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown compression algorithm {0:?}: expected gzip, zstd, gzip-isal or gzip-sirocco")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Algorithm::Gzip),
            "zstd" => Ok(Algorithm::Zstd),
            "gzip-isal" => Ok(Algorithm::GzipIsal),
            "gzip-sirocco" => Ok(Algorithm::GzipSirocco),
            _ => Err(UnknownAlgorithm(s.to_string())),
        }
    }
}

impl serde::Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How to compress layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub algorithm: Algorithm,
    /// Compression level, within [`Algorithm::levels`]. Part of the blob's identity: the same
    /// input at another level gives another digest.
    pub level: i32,
    /// Worker threads. Affects speed only, never the output bytes.
    pub jobs: usize,
}

impl Settings {
    /// `algorithm` at its default level, with one job per available core.
    pub fn new(algorithm: Algorithm) -> Self {
        Settings {
            algorithm,
            level: Self::default_level(algorithm),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// The default level of each algorithm and gzip encoder, chosen by measurement (the
    /// `compress` benchmark; docs/performance.md, "gzip encoders", has the whole table).
    ///
    /// - **gzip by sirocco: 1**, the default gzip of `-c gzip`. On a 315 MB tar of `/usr/lib`
    ///   and `/usr/share` it compresses 194 MB per CPU-second at ratio 2.15, against zlib-rs's
    ///   149 at 1.91 for level 1 and 54 at 2.31 for level 6 (incompressible data: 338 MB/CPU-s,
    ///   zlib-rs 74 and 39; machine code: 163 at 2.62, zlib-rs level 1 165 at 2.25); 2 jobs
    ///   run 1.8× as fast as one. Its blobs are what a level-1 gzip is expected to be (GNU
    ///   `gzip -1`: 2.18; crane writes level 1), 8% larger than zlib-rs's level 6 (what
    ///   `docker push` writes) for 3.6× less CPU, and a push is mostly compression. Level 2
    ///   costs 0–11% more CPU for blobs about 2% smaller.
    /// - **gzip by zlib-rs: 6**, gzip's own default and what it wrote as the only encoder, kept
    ///   so that `--gzip-encoder zlib` still writes the blobs it always wrote. zlib-rs's level 1
    ///   switches to a "quick" strategy whose blobs are 12–17% larger than sirocco's level 1,
    ///   and it grows incompressible data by 5%.
    /// - **gzip by ISA-L: 1**: its fast level, 361 MB/CPU-s at sirocco's ratio.
    /// - **zstd 3**, zstd's own default and what containerd and BuildKit write: 177 MB/s on one
    ///   job and 318 on two on 210 MB of system libraries (level 1: 360 and 454), with blobs 11%
    ///   smaller than level 1's.
    pub fn default_level(algorithm: Algorithm) -> i32 {
        match algorithm {
            Algorithm::Gzip => 6,
            Algorithm::Zstd => 3,
            Algorithm::GzipIsal => 1,
            Algorithm::GzipSirocco => 1,
        }
    }

    /// Checks the level against the algorithm and that there is at least one job.
    pub fn validate(&self) -> Result<()> {
        if !self.algorithm.is_available() {
            bail!(
                "this oci-export was built without the ISA-L gzip encoder \
                 (build with `cargo build --release --features isal`, which needs libisal-dev)"
            );
        }
        let levels = self.algorithm.levels();
        if !levels.contains(&self.level) {
            bail!(
                "{} level {} is out of range {}..={}",
                self.algorithm,
                self.level,
                levels.start(),
                levels.end()
            );
        }
        if self.jobs == 0 {
            bail!("compression needs at least one job");
        }
        Ok(())
    }
}

/// What a finished compression produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressedBlob {
    /// SHA-256 of the compressed bytes: the layer's blob digest in a manifest.
    pub digest: Digest,
    /// Length of the compressed bytes.
    pub size: u64,
}

/// A streaming compressor: write the uncompressed layer into it, then call
/// [`finish`](Compressor::finish).
///
/// `flush` deliberately does not force compressed output: ending a gzip block or a zstd job
/// early would change the bytes, and with them the blob digest. Everything written reaches
/// the output by the time `finish` returns.
///
/// Dropping a compressor without `finish` abandons the stream (the output holds a truncated
/// blob) and stops its worker threads.
pub struct Compressor<'a> {
    inner: Inner<'a>,
}

enum Inner<'a> {
    Gzip(gzip::GzipWriter<'a>),
    Zstd(zstd::ZstdWriter<'a>),
}

impl<'a> Inner<'a> {
    fn gzip(out: HashingWriter<'a>, encoder: gzip::Encoder, jobs: usize) -> Result<Self> {
        let writer =
            gzip::GzipWriter::new(out, encoder, jobs).context("starting gzip compression")?;
        Ok(Inner::Gzip(writer))
    }
}

impl<'a> Compressor<'a> {
    /// Starts a compressed stream into `out`. The gzip header is written at once.
    pub fn new(settings: &Settings, out: &'a mut dyn Write) -> Result<Self> {
        settings.validate()?;
        let out = HashingWriter::new(out);
        // Levels were validated above, so they are non-negative.
        let level = settings.level.unsigned_abs();
        let inner = match settings.algorithm {
            Algorithm::Gzip => Inner::gzip(out, gzip::Encoder::Zlib(level), settings.jobs)?,
            Algorithm::GzipSirocco => {
                Inner::gzip(out, gzip::Encoder::Sirocco(level), settings.jobs)?
            }
            Algorithm::GzipIsal => Inner::gzip(out, gzip::Encoder::Isal(level), settings.jobs)?,
            Algorithm::Zstd => Inner::Zstd(
                zstd::ZstdWriter::new(out, settings.level, settings.jobs)
                    .context("starting zstd compression")?,
            ),
        };
        Ok(Compressor { inner })
    }

    /// Compresses what is still buffered, ends the stream, and returns the blob's digest and
    /// size. All compressed bytes have been written to the output when this returns (the
    /// output itself is not flushed: that is its owner's business).
    pub fn finish(self) -> Result<CompressedBlob> {
        match self.inner {
            Inner::Gzip(w) => w.finish().context("finishing gzip compression"),
            Inner::Zstd(w) => w.finish().context("finishing zstd compression"),
        }
    }
}

impl Write for Compressor<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Gzip(w) => w.write(buf),
            Inner::Zstd(w) => w.write(buf),
        }
    }

    /// A no-op, so that callers flushing their writers cannot change the output (see
    /// [`Compressor`]).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compresses `data` in memory; returns the compressed bytes and their digest and size.
pub fn compress_to_vec(settings: &Settings, data: &[u8]) -> Result<(Vec<u8>, CompressedBlob)> {
    let mut out = Vec::new();
    let mut compressor = Compressor::new(settings, &mut out)?;
    compressor
        .write_all(data)
        .context("compressing into memory")?;
    let blob = compressor.finish()?;
    Ok((out, blob))
}

/// The output side of both codecs: forwards compressed bytes and hashes and counts exactly the
/// bytes the output accepted.
type HashingWriter<'a> = crate::digest::HashingWriter<&'a mut dyn Write>;

/// The digest and size of everything a codec wrote.
fn blob_of(out: &HashingWriter<'_>) -> CompressedBlob {
    CompressedBlob {
        digest: out.digest(),
        size: out.size(),
    }
}

#[cfg(test)]
mod tests;
