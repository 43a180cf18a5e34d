//! The one worker-pool shape the exporter needs: items handed out in order to up to `jobs`
//! scoped threads, stopping at the first error.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Result;

/// Runs `work` on every item, `jobs` at a time, and returns its results in item order. After the
/// first error no new item is started, and that error is returned.
pub fn map<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<R>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    let result = work(item);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    // The first error in item order; items never started (after an error) are skipped.
    let mut out = Vec::with_capacity(items.len());
    for r in results {
        match r {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(out)
}

/// A counting semaphore: at most `n` holders of a [`Permit`] at once (e.g. compressions, while
/// more threads upload).
pub struct Permits {
    free: Mutex<usize>,
    returned: std::sync::Condvar,
}

/// One of [`Permits`], given back when dropped.
pub struct Permit<'a>(&'a Permits);

impl Permits {
    pub fn new(n: usize) -> Self {
        Permits {
            free: Mutex::new(n.max(1)),
            returned: std::sync::Condvar::new(),
        }
    }

    /// Waits for a permit.
    pub fn take(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.returned.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_reports_errors() {
        let items: Vec<u32> = (0..100).collect();
        assert_eq!(
            map(&items, 3, |&i| Ok(i * 2)).unwrap(),
            items.iter().map(|i| i * 2).collect::<Vec<_>>()
        );
        let err = map(&items, 2, |&i| {
            if i == 7 {
                anyhow::bail!("seven")
            } else {
                Ok(i)
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "seven");
        assert!(map(&[] as &[u32], 4, |&i| Ok(i)).unwrap().is_empty());
    }

    #[test]
    fn permits_bound_how_many_hold_one_at_once() {
        use std::sync::atomic::AtomicUsize;
        let permits = Permits::new(2);
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let items: Vec<u32> = (0..40).collect();
        map(&items, 6, |_| {
            let _p = permits.take();
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2));
            now.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
