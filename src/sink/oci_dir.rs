//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`), as read by
//! `skopeo … oci:DIR:TAG`, umoci and `crane push DIR`.
//!
//! It is the docker-archive plan without Docker's own additions (`manifest.json`,
//! `repositories`), written as files. The directory is assembled under a temporary name beside
//! the target and renamed into place when complete.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::output::{absolute, refuse_inside};
use super::plan::{Body, IncrementalPlan, Plan, PlanEntry, ReadyBlobs};
use super::writer::BlobProducer;
use crate::parallel;
use crate::progress::{Phase, Progress};
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

/// Writes `plan` into `dir`, producing its blobs `jobs` at a time. `before_commit` runs once
/// everything is written, before the directory takes its name.
pub fn write_dir(
    dir: PartialDir,
    plan: &Plan,
    producer: &dyn BlobProducer,
    jobs: usize,
    progress: &Progress,
    before_commit: impl FnOnce() -> Result<()>,
) -> Result<()> {
    dir.write_documents(&plan.entries)?;
    let blobs: Vec<(PathBuf, usize)> = plan
        .entries
        .iter()
        .filter_map(|e| match e.body {
            Body::Blob(i) => Some((dir.path_of(e), i)),
            _ => None,
        })
        .collect();
    parallel::map(&blobs, jobs, |(path, blob)| {
        let size = plan.blobs[*blob].size;
        write_blob(path, *blob, size, producer, progress)
    })?;
    dir.commit(before_commit)
}

/// Writes the OCI layout of `layout` into `dir` (see [`write_dir`]), copying each blob in as
/// soon as it is ready; the documents that need every digest follow.
pub fn write_dir_incrementally(
    dir: PartialDir,
    layout: &dyn IncrementalPlan,
    blobs: &mut dyn ReadyBlobs,
    before_commit: impl FnOnce() -> Result<()>,
) -> Result<()> {
    dir.write_documents(&layout.leading())?;
    let mut infos = Vec::with_capacity(blobs.count());
    for index in 0..blobs.count() {
        let ready = blobs.next()?;
        let path = dir.path_of(&layout.blob_entry(index, &ready.info));
        ready
            .copy_into(&mut create(&path)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        infos.push(ready.info);
    }
    let plan = from_docker_plan(layout.complete(infos));
    dir.write_documents(&plan.entries)?;
    dir.commit(before_commit)
}

/// The layout directory while it is being written, under a temporary name beside its target.
pub struct PartialDir {
    target: PathBuf,
    scratch: ScratchDir,
}

impl PartialDir {
    /// Checks `target` (it must not exist, or be an empty directory that is not a mount point;
    /// it must not be a symlink, `.` or `..`, nor lie inside any of `forbidden`) and creates
    /// the temporary directory beside it.
    pub fn begin(target: &Path, forbidden: &[PathBuf]) -> Result<Self> {
        refuse_dot_name(target)?;
        let target = absolute(target)?;
        refuse_inside(&target, forbidden)?;
        check_replaceable(&target)?;
        let name = target
            .file_name()
            .with_context(|| format!("{} has no name", target.display()))?
            .to_string_lossy();
        let temp =
            target.with_file_name(format!(".{name}.{}.oci-export-partial", std::process::id()));
        let scratch = ScratchDir::create(temp)?;
        Ok(PartialDir { target, scratch })
    }

    fn path_of(&self, entry: &PlanEntry) -> PathBuf {
        self.scratch.path().join(&entry.path)
    }

    /// Creates the directories and writes the documents among `entries`; blobs are left to
    /// the caller.
    fn write_documents(&self, entries: &[PlanEntry]) -> Result<()> {
        for entry in entries {
            let path = self.path_of(entry);
            match &entry.body {
                Body::Directory => DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
                Body::Bytes(bytes) => create(&path)?
                    .write_all(bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                Body::Blob(_) => {}
            }
        }
        Ok(())
    }

    /// Runs `before_commit`, then gives the directory its name.
    fn commit(self, before_commit: impl FnOnce() -> Result<()>) -> Result<()> {
        before_commit()?;
        if self.target.exists() {
            std::fs::remove_dir(&self.target).with_context(|| {
                format!(
                    "cannot replace the empty directory {}",
                    self.target.display()
                )
            })?;
        }
        self.scratch.persist_as(&self.target)
    }
}

/// `target` without trailing slashes (`/` stays `/`).
fn without_trailing_slashes(target: &Path) -> &Path {
    let bytes = target.as_os_str().as_bytes();
    match bytes.iter().rposition(|&b| b != b'/') {
        Some(last) => Path::new(std::ffi::OsStr::from_bytes(&bytes[..=last])),
        None => target,
    }
}

/// Refuses a target whose last component, as given, is `.` or `..`: the current directory or
/// one of its parents cannot be renamed over, which only the final rename would otherwise tell.
fn refuse_dot_name(target: &Path) -> Result<()> {
    let trimmed = without_trailing_slashes(target).as_os_str().as_bytes();
    let last = trimmed.rsplit(|&b| b == b'/').next().unwrap_or_default();
    if last == b"." || last == b".." {
        bail!(
            "{} names the current directory or a parent; give the layout directory by name",
            target.display()
        );
    }
    Ok(())
}

/// The target must not exist, or be an empty directory that the finished layout can replace.
/// Checked up front, so that a target the final rename cannot replace is refused before any
/// work is done.
fn check_replaceable(target: &Path) -> Result<()> {
    // `link/` would be looked at through the link; the rename at the end sees `link` itself.
    let meta = match std::fs::symlink_metadata(without_trailing_slashes(target)) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", target.display())),
    };
    if meta.file_type().is_symlink() {
        // The rename would replace the link, not fill the directory it leads to.
        bail!(
            "{} is a symbolic link; give the layout directory's own path",
            target.display()
        );
    }
    if !meta.is_dir() {
        bail!("{} exists and is not a directory", target.display());
    }
    let mut entries =
        std::fs::read_dir(target).with_context(|| format!("cannot read {}", target.display()))?;
    if entries.next().is_some() {
        bail!(
            "{} exists and is not empty; refusing to mix layouts",
            target.display()
        );
    }
    let parent = target.parent().unwrap_or(Path::new("/"));
    let parent_meta = std::fs::metadata(parent)
        .with_context(|| format!("cannot inspect {}", parent.display()))?;
    if parent_meta.dev() != meta.dev() {
        bail!(
            "{} is a mount point, which cannot be replaced; give a directory inside it",
            target.display()
        );
    }
    Ok(())
}

/// Files are private to the owner: layers can hold secrets, and we usually run as root.
fn create(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

fn write_blob(
    path: &Path,
    blob: usize,
    size: u64,
    producer: &dyn BlobProducer,
    progress: &Progress,
) -> Result<()> {
    let file = create(path)?;
    let mut out = CountingWriter {
        file,
        progress,
        blob,
    };
    progress.phase(blob, Phase::Writing, Some(size));
    producer.produce(blob, &mut out)?;
    progress.finish(blob, Phase::Done);
    Ok(())
}

struct CountingWriter<'a> {
    file: File,
    progress: &'a Progress,
    blob: usize,
}

impl BlockSink for CountingWriter<'_> {
    fn put(&mut self, block: Block) -> Result<()> {
        self.file.write_all(&block).context("writing a blob")?;
        self.progress.add(self.blob, block.len() as u64);
        Ok(())
    }
}
