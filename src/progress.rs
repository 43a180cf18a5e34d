//! Progress on stderr, only when stderr is a terminal (the caller decides).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sink::writer::Progress;

/// A thread that redraws one status line until finished.
pub struct Reporter {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    /// Reports `progress` against `total` bytes, or without a total when it is not known.
    pub fn start(progress: &Progress, total: Option<u64>) -> Reporter {
        let done = Arc::new(AtomicBool::new(false));
        let bytes = progress.bytes.clone();
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let n = bytes.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                let done = match total {
                    Some(total) => format!("{} / {}", human(n), human(total)),
                    None => human(n),
                };
                eprint!(
                    "\r\x1b[Koci-export: {done} ({}/s)",
                    human((n as f64 / secs) as u64)
                );
                let _ = std::io::stderr().flush();
            }
        });
        Reporter {
            done,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self, ok: bool) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        eprint!("\r\x1b[K");
        if ok {
            eprintln!("oci-export: done");
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}
