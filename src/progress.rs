//! Progress: counters the stages bump, and a display that draws them on a terminal.
//!
//! The hot paths only add to relaxed atomic counters ([`Progress`]): bytes per layer, and what
//! each layer is doing. When stderr is a terminal (and not `-q`), a [`Display`] thread reads
//! them a few times a second and draws, with indicatif, what users of docker, skopeo and crane
//! expect: one bar for the whole job (total, percentage, rate, time left) and a line per layer
//! while it is worked on, then one summary line. Anything else the program says meanwhile goes
//! through [`note`], which prints it above the bars instead of through them.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a layer is doing, as its line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Waiting = 0,
    /// Rebuilt from tar-split, or copied from the store, into the output.
    Writing,
    /// Rebuilt and compressed.
    Compressing,
    /// Decompressed from a stored blob.
    Decompressing,
    /// Verified against its digest (a cached or stored blob).
    Verifying,
    /// Sent to a registry.
    Uploading,
    /// Compressed, and sent to a registry as it is compressed.
    CompressingAndUploading,
    /// Finished: written, or uploaded.
    Done,
    /// The registry already had it.
    Exists,
    /// The registry linked it from another repository.
    Mounted,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        use Phase::*;
        [
            Waiting,
            Writing,
            Compressing,
            Decompressing,
            Verifying,
            Uploading,
            CompressingAndUploading,
            Done,
            Exists,
            Mounted,
        ]
        .get(usize::from(v))
        .copied()
        .unwrap_or(Waiting)
    }

    fn verb(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Writing => "writing",
            Phase::Compressing => "compressing",
            Phase::Decompressing => "decompressing",
            Phase::Verifying => "verifying",
            Phase::Uploading => "uploading",
            Phase::CompressingAndUploading => "compressing and uploading",
            Phase::Done => "done",
            Phase::Exists => "already in the registry",
            Phase::Mounted => "mounted",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, Phase::Done | Phase::Exists | Phase::Mounted)
    }
}

/// One layer's counters.
#[derive(Default)]
struct LayerCount {
    /// Bytes of this layer processed in its current phase.
    bytes: AtomicU64,
    /// The phase's total, 0 while unknown.
    total: AtomicU64,
    phase: AtomicU8,
}

/// What the stages count. Cheap to update from any thread; read by the [`Display`], if any.
#[derive(Default)]
pub struct Progress {
    /// Layer bytes processed, over all layers: the job's bar.
    bytes: AtomicU64,
    layers: Vec<LayerCount>,
}

impl Progress {
    /// Counters for a job of `layers` layers.
    pub fn new(layers: usize) -> Progress {
        Progress {
            bytes: AtomicU64::new(0),
            layers: (0..layers).map(|_| LayerCount::default()).collect(),
        }
    }

    /// `n` more bytes of layer `index` processed (and of the whole job).
    pub fn add(&self, index: usize, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(layer) = self.layers.get(index) {
            layer.bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Layer `index` starts `phase`, of `total` bytes if known; its byte count starts again.
    pub fn phase(&self, index: usize, phase: Phase, total: Option<u64>) {
        if let Some(layer) = self.layers.get(index) {
            layer.bytes.store(0, Ordering::Relaxed);
            layer.total.store(total.unwrap_or(0), Ordering::Relaxed);
            layer.phase.store(phase as u8, Ordering::Release);
        }
    }

    /// Layer `index` ends, as `outcome` (done, already in the registry, mounted); its line
    /// keeps its counts.
    pub fn finish(&self, index: usize, outcome: Phase) {
        if let Some(layer) = self.layers.get(index) {
            layer.phase.store(outcome as u8, Ordering::Release);
        }
    }

    /// Bytes of `index`'s current phase so far, without adding them to the job's total (an
    /// upload sends compressed bytes, which the job's bar, in layer bytes, does not count).
    pub fn set_phase_bytes(&self, index: usize, n: u64) {
        if let Some(layer) = self.layers.get(index) {
            layer.bytes.store(n, Ordering::Relaxed);
        }
    }

    /// Layer bytes processed so far, over all layers.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The bars on stderr, redrawn from a [`Progress`] until [`Display::finish`].
pub struct Display {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    multi: MultiProgress,
    started: Instant,
}

/// The one display drawing now, so that [`note`] can print above it.
static CURRENT: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Whether informational lines ([`info`]) are shown: only on a terminal, and not with `-q`.
static INFO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Shows [`info`] lines from now on (the caller checked that stderr is a terminal).
pub fn show_info(show: bool) {
    INFO.store(show, Ordering::Relaxed);
}

/// A line for a person watching, not for a log: printed (like [`note`]) only when stderr is a
/// terminal and `-q` was not given. A script's stderr gets nothing but warnings and errors.
pub fn info(line: &str) {
    if INFO.load(Ordering::Relaxed) {
        note(line);
    }
}

/// Prints `line` on stderr (prefixed `oci-export: `), above the bars when they are drawn:
/// warnings, and what must be said whoever reads (an image served by an unexpected store, a
/// layer regenerated).
pub fn note(line: &str) {
    let current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    match current.as_ref() {
        Some(multi) => multi.suspend(|| eprintln!("oci-export: {line}")),
        None => eprintln!("oci-export: {line}"),
    }
}

/// What the display shows: the job's name and total, and each layer's name.
pub struct Job {
    /// "myapp:1.4 → myapp.tar".
    pub title: String,
    /// Layer bytes the job will process, when known before the first byte.
    pub total: Option<u64>,
    /// A short name per layer ("1a2b3c4d5e6f"), in [`Progress`] order.
    pub layers: Vec<String>,
}

const REFRESH: Duration = Duration::from_millis(150);

/// Runs `work`, with a [`Display`] of `progress` for `job` when `show`; on success the display
/// ends with the line `summary` makes of the result and the time taken.
pub fn with_display<T>(
    show: bool,
    progress: &Arc<Progress>,
    job: impl FnOnce() -> Job,
    work: impl FnOnce() -> anyhow::Result<T>,
    summary: impl FnOnce(&T, Duration) -> String,
) -> anyhow::Result<T> {
    let display = show.then(|| Display::start(progress.clone(), job()));
    let result = work();
    if let Some(display) = display {
        let line = result
            .as_ref()
            .ok()
            .map(|done| summary(done, display.elapsed()));
        display.finish(line);
    }
    result
}

impl Display {
    /// Starts drawing `progress` for `job` on stderr (the caller checked it is a terminal).
    pub fn start(progress: Arc<Progress>, job: Job) -> Display {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let overall = multi.add(match job.total {
            Some(total) => ProgressBar::new(total).with_style(bar_style()),
            None => ProgressBar::no_length().with_style(spinner_style()),
        });
        overall.set_prefix(job.title.clone());
        *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(multi.clone());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (multi, stop) = (multi.clone(), stop.clone());
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || draw(&multi, &overall, &progress, &job.layers, &stop))
                .expect("spawning the progress thread")
        };
        Display {
            stop,
            thread: Some(thread),
            multi,
            started: Instant::now(),
        }
    }

    /// Seconds since the display started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops drawing; the bars are cleared and `summary` (if any) is printed in their place.
    pub fn finish(mut self, summary: Option<String>) {
        self.stop_drawing();
        if let Some(line) = summary {
            eprintln!("oci-export: {line}");
        }
    }

    fn stop_drawing(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = self.multi.clear();
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.stop_drawing();
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {spinner} {bytes} {binary_bytes_per_sec} {elapsed}")
        .expect("valid template")
}

fn layer_style(known: bool) -> ProgressStyle {
    let template = if known {
        "  {prefix} [{bar:20}] {percent:>3}% {bytes}/{total_bytes} {msg}"
    } else {
        "  {prefix} {bytes} {msg}"
    };
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

/// The drawing loop: each layer gets a line while it is worked on, which stays with its
/// outcome once it is done.
fn draw(
    multi: &MultiProgress,
    overall: &ProgressBar,
    progress: &Progress,
    names: &[String],
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut lines: Vec<Option<(ProgressBar, Phase, u64)>> = vec![None; names.len()];
    loop {
        let stopping = stop.load(Ordering::Acquire);
        overall.set_position(progress.bytes());
        for (index, layer) in progress.layers.iter().enumerate() {
            let phase = Phase::from_u8(layer.phase.load(Ordering::Acquire));
            if phase == Phase::Waiting {
                continue;
            }
            let total = layer.total.load(Ordering::Relaxed);
            let bytes = layer.bytes.load(Ordering::Relaxed);
            let line = &mut lines[index];
            let changed = line
                .as_ref()
                .is_none_or(|(_, p, t)| *p != phase || *t != total);
            if changed {
                let bar = match line.take() {
                    Some((bar, _, _)) => bar,
                    None => multi.insert_before(overall, ProgressBar::new(0)),
                };
                bar.set_style(layer_style(total > 0));
                bar.set_length(total);
                bar.set_prefix(names.get(index).cloned().unwrap_or_default());
                bar.set_message(phase.verb());
                *line = Some((bar, phase, total));
            }
            let (bar, phase, _) = line.as_ref().expect("set above");
            bar.set_position(bytes);
            if phase.is_final() && !bar.is_finished() {
                bar.finish();
            }
        }
        if stopping {
            return;
        }
        std::thread::sleep(REFRESH);
    }
}

/// `1.20 GiB`, for summaries, in the bars' units.
pub fn human_bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// `950 MB/s` over `elapsed`, for summaries.
pub fn human_rate(n: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!("{}/s", human_bytes((n as f64 / secs) as u64))
}
