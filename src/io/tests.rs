//! Both engines on failures that arrive many at a time: each must return the error, never hang.

use std::sync::mpsc;
use std::time::Duration;

use super::*;

/// Counts what it is given, and checks nothing.
#[derive(Default)]
struct Count {
    files: usize,
}

impl ReplaySink for Count {
    fn segment(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn file_data(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn file_end(&mut self, _: &FileEntry) -> Result<()> {
        self.files += 1;
        Ok(())
    }
}

fn file(name: &str, size: u64) -> Result<Entry, TarSplitError> {
    Ok(Entry::File(FileEntry {
        name: name.as_bytes().to_vec(),
        size,
        crc64: Some(0),
    }))
}

/// Replays `entries` against `dir` with each engine on a thread of its own, and returns each
/// engine's result; a replay that has not returned after 30 s fails the test.
fn replay_with_each_engine(
    dir: &std::path::Path,
    entries: impl Fn() -> Vec<Result<Entry, TarSplitError>>,
) -> Vec<(&'static str, Result<usize>)> {
    let mut results = Vec::new();
    for mode in [IoMode::Uring, IoMode::Sync] {
        let factory = EngineFactory::new(mode).expect("io_uring is available where tests run");
        let (tx, rx) = mpsc::channel();
        let (dir, list) = (dir.to_path_buf(), entries());
        std::thread::spawn(move || {
            let result = (|| {
                let layer = LayerDir::open(&dir)?;
                let mut sink = Count::default();
                factory
                    .create()?
                    .replay(&layer, &mut list.into_iter(), &mut sink)?;
                Ok(sink.files)
            })();
            let _ = tx.send(result);
        });
        let result = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{mode:?}: the replay hangs"));
        results.push((factory.name(), result));
    }
    results
}

#[test]
fn many_missing_files_fail_without_hanging() {
    // A hundred opens that fail together: their completions arrive in one batch, and the
    // engine must stop at the first without waiting for the rest again.
    let dir = tempfile::tempdir().unwrap();
    let entries = || (0..100).map(|i| file(&format!("gone{i}/f"), 10)).collect();
    for (engine, result) in replay_with_each_engine(dir.path(), entries) {
        let message = format!("{:#}", result.expect_err(engine));
        assert!(message.contains("gone0/f"), "[{engine}] {message}");
        assert!(message.contains("No such file"), "[{engine}] {message}");
    }
}

#[test]
fn truncated_files_in_one_batch_fail_without_hanging() {
    // Every file is shorter than recorded: the reads of many files end early together.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..64 {
        std::fs::write(dir.path().join(format!("f{i}")), [7u8; 100]).unwrap();
    }
    let entries = || (0..64).map(|i| file(&format!("f{i}"), 100)).collect();
    for (engine, result) in replay_with_each_engine(dir.path(), entries) {
        assert_eq!(result.unwrap(), 64, "[{engine}] the intact files replay");
    }
    for i in 0..64 {
        std::fs::write(dir.path().join(format!("f{i}")), [7u8; 60]).unwrap();
    }
    for (engine, result) in replay_with_each_engine(dir.path(), entries) {
        let message = format!("{:#}", result.expect_err(engine));
        assert!(message.contains("f0"), "[{engine}] {message}");
    }
}
