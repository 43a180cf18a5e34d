//! `oci-export`: export container images straight from a container engine's on-disk storage.
//!
//! The data path, one folder per stage:
//!
//! ```text
//!  IMAGE ref ──► source/      find the image in an engine's storage (Docker overlay2 today)
//!                   │         and describe it as a model::Image: config bytes + ordered layers
//!                   ▼
//!               tarsplit/     parse each layer's tar-split.json.gz (raw tar bytes + file list)
//!                   │
//!               io/           read the listed files, safely, relative to the layer's diff dir
//!                   │         (io_uring in batches, or plain reads where io_uring is blocked)
//!                   ▼
//!               reassembly/   interleave raw segments and file bytes into the layer tar,
//!                   │         verifying every file's CRC-64 and the layer's SHA-256 on the way
//!                   ▼
//!               sink/         lay the layers out as a `docker save` (v25+) archive, or an OCI
//!                             layout directory, and write it to stdout or atomically to a file
//! ```
//!
//! Two optional stages sit beside that path: `compress` turns a layer tar into a gzip or zstd
//! blob (deterministically, on every core), and `cache` keeps compressed blobs for reuse.
//!
//! `export` ties the stages together; `cli` and `main.rs` are thin glue.

pub mod ahead;
pub mod cache;
pub mod cli;
pub mod compress;
pub mod digest;
pub mod export;
pub mod interrupt;
pub mod io;
pub mod model;
pub mod parallel;
pub mod progress;
pub mod reassembly;
pub mod reference;
pub mod regenerate;
pub mod scratch;
pub mod sink;
pub mod source;
pub mod tarsplit;
pub mod timefmt;
