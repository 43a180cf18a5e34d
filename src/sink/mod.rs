//! Sinks: turn exported images into something consumers read.
//!
//! - [`plan`] describes an output as a list of named entries (directories, small documents,
//!   layer blobs with known sizes), in final order, before any layer byte is produced.
//! - [`docker_archive`] builds that plan for the `docker save` (v25+) archive format, and
//!   [`oci_layout`] the JSON documents both formats share.
//! - [`tar`] encodes tar headers for the outer archive (layer tars are never re-encoded).
//! - [`writer`] writes a plan to its destination, producing layers in parallel.
//! - [`incremental`] writes an archive whose layer blobs are learned one at a time (compressed
//!   layers), each copied out as soon as it is ready.
//! - [`output`] owns destinations: stdout, or a file written beside its final name and renamed
//!   into place only when complete.

pub mod docker_archive;
pub mod incremental;
pub mod oci_dir;
pub mod oci_layout;
pub mod output;
pub mod plan;
pub mod registry;
pub mod tar;
pub mod writer;
