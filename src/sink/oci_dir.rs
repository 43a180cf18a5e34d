//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`), as read by
//! `skopeo … oci:DIR:TAG`, umoci and `crane push DIR`.
//!
//! It is the docker-archive plan without Docker's own additions (`manifest.json`,
//! `repositories`), written as files. The directory is assembled under a temporary name beside
//! the target and renamed into place when complete.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};

use super::output::{absolute, refuse_inside};
use super::plan::{Body, Plan};
use super::writer::{BlobProducer, Progress};
use crate::parallel;
use crate::reassembly::{Block, BlockSink};
use crate::scratch::ScratchDir;

/// Entries of a docker archive that are Docker's, not OCI's.
const DOCKER_ONLY: [&str; 2] = ["manifest.json", "repositories"];

/// Keeps only the OCI layout's entries of a docker-archive plan.
pub fn from_docker_plan(mut plan: Plan) -> Plan {
    plan.entries
        .retain(|e| !DOCKER_ONLY.contains(&e.path.as_str()));
    plan
}

/// Writes `plan` as a directory at `target`, which must not exist or be an empty directory.
/// `before_commit` runs once everything is written, before the directory takes its name.
pub fn write_dir(
    plan: &Plan,
    producer: &dyn BlobProducer,
    target: &Path,
    forbidden: &Path,
    jobs: usize,
    progress: &Progress,
    before_commit: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let target = absolute(target)?;
    refuse_inside(&target, forbidden)?;
    if let Ok(mut entries) = std::fs::read_dir(&target) {
        if entries.next().is_some() {
            bail!(
                "{} exists and is not empty; refusing to mix layouts",
                target.display()
            );
        }
    } else if target.exists() {
        bail!("{} exists and is not a directory", target.display());
    }
    let name = target
        .file_name()
        .with_context(|| format!("{} has no name", target.display()))?
        .to_string_lossy();
    let temp = target.with_file_name(format!(".{name}.{}.oci-export-partial", std::process::id()));
    let scratch = ScratchDir::create(temp)?;
    let temp = scratch.path();

    for entry in &plan.entries {
        let path = temp.join(&entry.path);
        match &entry.body {
            Body::Directory => std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?,
            Body::Bytes(bytes) => std::fs::write(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?,
            Body::Blob(_) => {}
        }
    }

    let blobs: Vec<(PathBuf, usize)> = plan
        .entries
        .iter()
        .filter_map(|e| match e.body {
            Body::Blob(i) => Some((temp.join(&e.path), i)),
            _ => None,
        })
        .collect();
    parallel::map(&blobs, jobs, |(path, blob)| {
        write_blob(path, *blob, producer, progress)
    })?;
    before_commit()?;

    if target.exists() {
        std::fs::remove_dir(&target)
            .with_context(|| format!("cannot replace the empty directory {}", target.display()))?;
    }
    scratch.persist_as(&target)
}

fn write_blob(
    path: &Path,
    blob: usize,
    producer: &dyn BlobProducer,
    progress: &Progress,
) -> Result<()> {
    let file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = CountingWriter { file, progress };
    producer.produce(blob, &mut out)?;
    Ok(())
}

struct CountingWriter<'a> {
    file: File,
    progress: &'a Progress,
}

impl BlockSink for CountingWriter<'_> {
    fn put(&mut self, block: Block) -> Result<()> {
        self.file.write_all(&block).context("writing a blob")?;
        self.progress
            .bytes
            .fetch_add(block.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}
